// Sharded saving, as huggingface_hub's save_torch_state_dict does it: the same split, file names,
// index and byte-identical files. Checkpoint (checkpoint.h) reads what it writes.
//
//   save_sharded(tensors, "out/", ShardOptions().with_max_shard_size("5GB"));
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "torch_safetensors/export.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/types.h"

namespace torch::safetensors {

// huggingface_hub's size strings: "5GB" → 5'000'000'000 (units TB, GB, MB, KB, powers of 10,
// case-insensitive; a decimal value such as "1.5GB" is allowed). Anything else is a c10::Error.
TS_API uint64_t parse_size(std::string_view size);

// What a save wrote: save_sharded's, and one rank's part of a distributed save
// (distributed_c10d.h) or of a consolidation (distributed.h).
struct TS_API SaveReport {
  uint64_t tensor_bytes = 0;       // tensor data written (a replica once, by one of its holders)
  uint64_t header_bytes = 0;       // file headers and the index (0 on ranks that publish none)
  std::vector<std::string> files;  // the checkpoint's files, the index last when sharded
  double seconds = 0;              // from the call to the files published
  uint64_t bytes_written() const { return tensor_bytes + header_bytes; }
  // Tensor bytes per second, in GB (10^9) as storage is rated; 0 for an instant save.
  double gb_per_second() const { return seconds > 0 ? double(tensor_bytes) / seconds / 1e9 : 0; }
};

struct TS_API ShardOptions {
  uint64_t max_shard_size = 5'000'000'000;  // "5GB", huggingface_hub's default
  // `{suffix}` becomes "" for a single file, "-00001-of-00004" for shards; the index is the
  // single file's name plus ".index.json".
  std::string filename_pattern = "model{suffix}.safetensors";
  // Written to the index's "metadata" (after "total_size") when sharded, else to the file.
  std::optional<Metadata> metadata;
  // Names of tied tensors to drop rather than keep when there is a choice (huggingface_hub's
  // shared_tensors_to_discard).
  std::unordered_set<std::string> discard;
  // Remove files of an earlier save with this pattern (shards, index) that this one did not
  // write (huggingface_hub's is_main_process).
  bool remove_stale = true;
  // fsync every file and the directory before the save reports success (SaveTo::durable).
  bool durable = false;
  // Called after each file is written with (bytes of tensor data written, total): progress bars.
  // Files are written by several threads; the calls come one at a time, as files complete.
  std::function<void(uint64_t done, uint64_t total)> on_progress;
  // How many files are written at once (buffered writes into one file serialize on its inode, so
  // the threads pay across files); 0: up to 8, as this machine has cores. The output is the same.
  unsigned threads = 0;

  ShardOptions& with_max_shard_size(uint64_t bytes) {
    max_shard_size = bytes;
    return *this;
  }
  ShardOptions& with_max_shard_size(std::string_view size) {
    max_shard_size = parse_size(size);
    return *this;
  }
  ShardOptions& with_filename_pattern(std::string pattern) {
    filename_pattern = std::move(pattern);
    return *this;
  }
  ShardOptions& with_threads(unsigned n) {
    threads = n;
    return *this;
  }
  ShardOptions& with_durable(bool d = true) {
    durable = d;
    return *this;
  }
  ShardOptions& with_metadata(Metadata m) {
    metadata = std::move(m);
    return *this;
  }
};

// huggingface_hub's StateDictSplit: which tensors go to which file.
struct ShardSplit {
  // File name → tensor names, in file order.
  std::vector<std::pair<std::string, std::vector<std::string>>> files;
  uint64_t total_size = 0;  // bytes, each storage counted once
  bool is_sharded() const { return files.size() > 1; }
};

// huggingface_hub's split_torch_state_dict_into_shards, exactly: tensors are taken in order and a
// new shard starts when the next tensor would pass max_shard_size (a larger tensor gets a shard of
// its own); sizes are storage sizes, and tensors on one storage go with the first of them.
TS_API ShardSplit plan_shards(const TensorsToSave& tensors, const ShardOptions& options = {});

// The same split over sizes alone (the tensors need not exist: a sharded save from many ranks
// plans it from global shapes): `size` is the storage size in bytes; `follows` is the index of an
// earlier entry on the same storage (which this one joins, adding nothing), -1 for none.
struct ShardSize {
  std::string name;
  uint64_t size = 0;
  int64_t follows = -1;
};
TS_API ShardSplit plan_shards(const std::vector<ShardSize>& sizes,
                              const ShardOptions& options = {});

// Writes tensors as huggingface_hub's save_torch_state_dict does, with the same file names, the
// same split, an index with the same content and byte-identical files: tied tensors are stored
// once (the tie policy of save(Module), recorded in metadata as dropped → kept; a tensor that
// shares memory with no name covering it all, alone or in a group, is refused), then split by
// plan_shards. The directory is created if needed. Every file is written to a temporary file
// first and renamed into place only once all are written, so a failed save (full disk, bad
// tensor) changes nothing; then stale files of an earlier save are removed (remove_stale).
// Returns what it wrote and how long it took (the save's GB/s).
TS_API SaveReport save_sharded(const TensorsToSave& tensors, const PathArg& directory,
                               const ShardOptions& options = {});

// A tensor made only when its bytes are written (a weight dequantized, converted or read from
// elsewhere): `make` is called once, must return `dtype` and `sizes` (any strides, any device), and
// its result is dropped once written.
struct TS_API StreamedTensor {
  std::string name;
  c10::ScalarType dtype = c10::kFloat;
  std::vector<int64_t> sizes;
  std::function<at::Tensor()> make;
};

// save_sharded's checkpoint (the same split, names, index and bytes as save_sharded of the made
// tensors) from tensors made one at a time: memory holds at most `options.threads` of them (one
// per file being written) on top of the headers. Published atomically as save_sharded does.
TS_API SaveReport save_sharded(const std::vector<StreamedTensor>& tensors, const PathArg& directory,
                               const ShardOptions& options = {});
}  // namespace torch::safetensors
