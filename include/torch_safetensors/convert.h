// Converting torch.save checkpoints to safetensors without running any code from them: the
// optional library TorchSafetensors::torch_safetensors_convert (not part of the core library,
// and not included by safetensors.h).
//
//   st::convert_torch_checkpoint("pytorch_model.bin", "model.safetensors");
//   st::ConvertOptions options;
//   options.max_shard_size = st::parse_size("5GB");   // a directory of shards and an index
//   st::convert_torch_checkpoint("llama-bin/", "llama-st/", options);
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/header.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/sharded.h"

namespace torch::safetensors {

// The tensors of a torch.save checkpoint, read by a restricted unpickler that knows only tensors,
// (ordered) dicts and plain values, and never imports or calls anything. `path` is
//   - a zip-format torch.save file (`.pt`, `.pth`, `.bin`: torch 1.6 and later);
//   - a legacy (pre-1.6, non-zip) torch.save file, recognised by its first byte: read with the
//     same unpickler, every storage record checked against the file; storages saved from CUDA
//     are read as CPU bytes (convert/legacy_format.h);
//   - a `*.bin.index.json` (transformers' sharded `pytorch_model.bin.index.json`): every shard it
//     names, each checked to hold exactly the tensors the index assigns to it;
//   - a directory: its `pytorch_model.bin.index.json`, else its one `*.bin.index.json`, else its
//     one `.bin`/`.pt`/`.pth` file.
// Nested dicts flatten to dotted names ({"model": {"w": t}} → "model.w"); tensors sharing a
// storage in the file share one here (the tie policy of save() sees them). Storages are zero-copy
// views of the mapped file where the archive stores them uncompressed (as torch.save does).
// Anything else — a list, a number, an optimizer's param_groups, an object of any class (never
// imported or called), the tar format of torch before 0.4 — is a c10::Error naming it: this is
// read_torch_checkpoint with ExtractOptions::strict, which also reads training checkpoints,
// torch::save archives and TorchScript modules.
// Hostile files are errors, never guesses (docs/dev/hardening.md, "Converter limits"): the zip's
// central directory rules and every local header must agree with it; records, the unpickler's
// memory, stack, memo and strings are bounded; negated and conjugated tensors ({'neg': True},
// {'conj': True} in torch's rebuild metadata) come back materialized, any other metadata is
// refused by name; a view naming more bytes than its storage holds (stride 0, overlapping) is
// refused.
TS_API NamedTensors load_torch_checkpoint(const std::string& path);

// What to take from a checkpoint that holds more than a state dict: a training checkpoint
// ({"epoch", "state_dict", "optimizer_states", "hyper_parameters"}), a LibTorch torch::save
// archive or a TorchScript module (torch.jit.save; its data.pkl, never its code).
struct TS_API ExtractOptions {
  // A dotted path into the object ("state_dict", "model_state", "model"; a key holding dots
  // itself matches whole, the longest first): only the tensors under it are converted, named
  // relative to it. Empty: the whole object.
  std::string key;
  // true: the selected part must be (nested) dicts of tensors only, and anything else is an error
  // naming its path (and the global, for objects): load_torch_checkpoint(path)'s rule. false:
  // every tensor found in dicts, lists, tuples, sets and inside objects is converted (a list's
  // elements named by index, an object's attributes by name: a TorchScript module's `fc.weight`);
  // the rest is reported in ConvertReport::skipped / TorchCheckpoint::skipped. Objects of any
  // class are inert placeholders either way: nothing is imported or called.
  bool strict = false;
  // Ints, floats, bools and strings that are values of plain dicts in the selected part, or
  // beside the path to it (a training checkpoint's `step`, `epoch`), are kept as metadata
  // entries: the dotted path from the top of the object → the value as Python's str() writes it
  // ("3", "0.001", "True", "adam"). A name that is already a metadata key (`format`) is an error.
  bool metadata_scalars = false;
};

// A part of the checkpoint that was not converted: its dotted path from the top of the object
// (parts without tensors are reported whole: "hyper_parameters") and its type ("int", "list",
// "dict", or an object's qualified name such as "omegaconf.dictconfig.DictConfig").
struct TS_API SkippedValue {
  std::string path;
  std::string type;
};

struct TS_API TorchCheckpoint {
  NamedTensors tensors;
  std::vector<SkippedValue> skipped;  // in the order found; for an index, shard after shard
  Metadata scalars;                   // with metadata_scalars
};

// load_torch_checkpoint with a choice of what to take (`path` as there; a `key` applies to every
// shard of an index, and a shard whose tensors disagree with the index is refused as there).
TS_API TorchCheckpoint read_torch_checkpoint(const std::string& path,
                                             const ExtractOptions& options);

struct TS_API ConvertOptions : ExtractOptions {
  // Set: `to` is a directory written by save_sharded (shards of at most this many bytes and an
  // index). Unset: `to` is one safetensors file.
  std::optional<uint64_t> max_shard_size;
  // Set: F64, F32, F16 and BF16 tensors are cast to it (integers, bools, FP8 and complex tensors
  // keep their dtype); tensors sharing a storage still share one after the cast.
  std::optional<c10::ScalarType> dtype;
  // As transformers' conversions write it; tied names are added by the tie policy.
  std::optional<Metadata> metadata = Metadata{{"format", "pt"}};
  // fsync every file written and its directory before returning (SaveTo::durable).
  bool durable = false;
  // Called with (bytes written, bytes to write) while a single file is written.
  std::function<void(uint64_t done, uint64_t total)> on_progress;
};

struct TS_API ConvertReport {
  size_t tensors_read = 0;            // names in the checkpoint
  size_t tensors_written = 0;         // after dropping tied duplicates
  uint64_t bytes_written = 0;         // tensor data
  std::vector<std::string> files;     // written, relative to `to` when sharded
  std::vector<SkippedValue> skipped;  // what was not converted (ExtractOptions::strict false)
  size_t metadata_scalars = 0;        // metadata entries from scalars (metadata_scalars)
};

// Reads `from` as read_torch_checkpoint does (options' ExtractOptions), casts (options.dtype),
// adds the scalars to the metadata (metadata_scalars), and writes it as save(module)
// (one file) or save_sharded (a directory) write a module: tied tensors once, each dropped name
// recorded in the metadata as dropped → kept, a tie none of whose names covers its storage
// refused (the reference's save_model). Writes are atomic.
TS_API ConvertReport convert_torch_checkpoint(const std::string& from, const std::string& to,
                                              const ConvertOptions& options = {});

}  // namespace torch::safetensors
