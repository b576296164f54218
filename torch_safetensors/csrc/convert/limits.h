// The converter's limits, each defined once here: what a tensor checkpoint can need, with room to
// spare, so that memory is bounded by what a file holds and not by what it claims. A limit that
// is reached is an error naming the file and the limit. docs/dev/hardening.md ("Converter
// limits") explains them; zip64 raises none of them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace torch::safetensors::convert {

// Entries in the zip's central directory: one per storage plus a few records (the largest
// published checkpoints hold well under 100,000 tensors per file), and the central directory's
// bytes (torch.save's entries take about 100 bytes each).
inline constexpr uint64_t kMaxZipEntries = uint64_t(1) << 18;
inline constexpr uint64_t kMaxCentralDirectoryBytes = uint64_t(64) << 20;

// data.pkl, inflated: torch.save writes ~120 bytes per tensor plus its name, so 32 MiB is a
// quarter of a million tensors. It is read whole (the unpickler needs it all).
inline constexpr uint64_t kMaxPickleBytes = uint64_t(32) << 20;

// Every other record read whole (byteorder, version): a few bytes each in torch.save's files.
// Errors quote at most a short prefix of any record.
inline constexpr uint64_t kMaxSmallRecordBytes = 64;

// A deflated record read whole may inflate at most this many times its compressed size (real
// pickles compress 4-6 times; torch.save itself never compresses), so that a few KB of file
// cannot become megabytes of pickle.
inline constexpr uint64_t kMaxRecordInflation = 64;

// The unpickler's own memory (its values, their items, the memo and dict indexes): every opcode
// is charged what it allocates, against a budget of kUnpicklerBytesPerPickleByte per byte of
// data.pkl plus kUnpicklerBaseBytes, and never more than kMaxUnpicklerBytes. torch.save's
// pickles cost 20-30 bytes per byte; a program of cheap opcodes that builds much ('}0'
// repeated) stops at the budget. None, True and False cost nothing (one value each), so a run
// of NONEs costs only its stack, which is bounded below.
inline constexpr uint64_t kUnpicklerBytesPerPickleByte = 48;
inline constexpr uint64_t kUnpicklerBaseBytes = uint64_t(4) << 20;
inline constexpr uint64_t kMaxUnpicklerBytes = uint64_t(1) << 30;

// The unpickler's stack and marks: torch.save's pickles batch at most 1000 dict items per
// SETITEMS, and nest no deeper than a state dict's modules.
inline constexpr size_t kMaxStackDepth = size_t(1) << 16;
inline constexpr size_t kMaxMarkDepth = 1024;

// Memo entries: torch.save memoizes each container, string and global once.
inline constexpr size_t kMaxMemoEntries = size_t(1) << 22;

// One string (BINUNICODE, SHORT_BINUNICODE, BINUNICODE8): a tensor name, a dict key, a storage
// key or a module path.
inline constexpr uint64_t kMaxStringBytes = uint64_t(64) << 10;

// One bytes value (BINBYTES and kin: a numpy array's data, an RNG state beside the tensors);
// charged to the unpickler's budget like every other value.
inline constexpr uint64_t kMaxBytesValue = uint64_t(16) << 20;

// Extraction (extract_tensors) visits each value once per path that reaches it; values shared
// many times over (a DAG of memoized containers) could make the paths exponential, so the visits
// and the bytes of the dotted paths built are bounded, far above what a checkpoint's tree needs
// (a quarter of a million tensors with their optimizer states: about 1.5 million visits).
inline constexpr uint64_t kMaxExtractVisits = uint64_t(1) << 22;
inline constexpr uint64_t kMaxExtractPathBytes = uint64_t(256) << 20;

// A tensor may name at most this many times the bytes of its storage: with 1, a stride-0 or
// overlapping view (torch.zeros(1).expand(8192, 8192)) is refused rather than materialized, and
// convert never writes a tensor larger than the storage the file holds for it.
inline constexpr uint64_t kMaxViewExpansion = 1;

}  // namespace torch::safetensors::convert
