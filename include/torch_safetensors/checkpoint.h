// Checkpoints: one handle over a single safetensors file or a sharded checkpoint (the
// `model.safetensors.index.json` layout that huggingface_hub, transformers and
// torch.distributed.checkpoint's HuggingFaceStorageWriter write), and sharded saving.
//
//   Checkpoint ckpt("Llama-3-8B/");              // a directory: its index, or its one file
//   at::Tensor w = ckpt.tensor("model.layers.0.mlp.up_proj.weight");  // opens that shard only
//   save_sharded(model, "out/", ShardOptions().with_max_shard_size("5GB"));
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "torch_safetensors/file.h"
#include "torch_safetensors/serialize.h"

namespace torch::safetensors {

// A lazy handle with File's interface over every tensor of a checkpoint. `path` is
//   - a directory: its `model.safetensors.index.json`, else its one `*.safetensors.index.json`,
//     else its one `*.safetensors` file (several candidates and no index is an error);
//   - a file whose name ends in `.json`: an index;
//   - any other file: a single safetensors file.
// An index is read and checked on open (every shard it names must exist inside the directory,
// symlinks included); each shard is opened on first use, once (one mapping per shard, shared by
// every tensor from it), and checked then against the index: it must hold exactly the tensors
// the index assigns to it. Errors name the index, the shard and the tensor. Thread-safe.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& path, const LoadOptions& options = {});
  // A single open file (any Source) as a checkpoint.
  explicit Checkpoint(File file);

  const std::string& path() const;       // as given
  const std::string& directory() const;  // the folder holding the files ("" for a non-file source)
  // The index file, when the checkpoint has one.
  const std::optional<std::string>& index_path() const;
  // The shard files, relative to directory(), sorted; one name for a single file.
  const std::vector<std::string>& shard_files() const;
  const LoadOptions& options() const;
  // A single file: its __metadata__. An index: its "metadata" object, "total_size" included
  // (values that are not strings as their JSON text).
  const std::optional<Metadata>& metadata() const;

  // Tensor names: a single file in data-offset order; an index shard by shard (in shard_files()
  // order), each shard's names in the order the index lists them.
  const std::vector<std::string>& keys() const;
  bool contains(std::string_view name) const;
  size_t size() const { return keys().size(); }
  // The shard holding `name`, relative to directory(), and that shard opened.
  const std::string& shard_file(std::string_view name) const;
  const File& file(std::string_view name) const;

  // As File's, through the shard holding `name`.
  const TensorInfo& info(std::string_view name) const;
  at::Tensor tensor(std::string_view name) const;
  at::Tensor slice(std::string_view name, at::ArrayRef<at::indexing::TensorIndex> indices) const;
  at::Tensor slice_intervals(std::string_view name, int64_t dim,
                             std::vector<std::pair<int64_t, int64_t>> ranges) const;
  RawTensor raw(std::string_view name) const;

  // Every tensor, in keys() order. With Backend::kPread every shard is read in one parallel pass
  // (chunks of all shards spread over the threads), not one file after another.
  TensorDict tensors() const;

  // File::check_intact of every shard opened so far.
  void check_intact() const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// huggingface_hub's size strings: "5GB" → 5'000'000'000 (units TB, GB, MB, KB, powers of 10,
// case-insensitive; a decimal value such as "1.5GB" is allowed). Anything else is a c10::Error.
uint64_t parse_size(std::string_view size);

struct ShardOptions {
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
ShardSplit plan_shards(const NamedTensors& tensors, const ShardOptions& options = {});

// Writes tensors as huggingface_hub's save_torch_state_dict does, with the same file names, the
// same split, an index with the same content and byte-identical files: tied tensors are stored
// once (the tie policy of save(Module), recorded in metadata as dropped → kept), then split by
// plan_shards. The directory is created if needed. Every file is written to a temporary file
// first and renamed into place only once all are written, so a failed save (full disk, bad
// tensor) changes nothing; then stale files of an earlier save are removed (remove_stale).
void save_sharded(const NamedTensors& tensors, const std::string& directory,
                  const ShardOptions& options = {});
// A module's parameters and buffers.
void save_sharded(const torch::nn::Module& module, const std::string& directory,
                  const ShardOptions& options = {});

}  // namespace torch::safetensors

namespace torch::safetensors {

// What load(from) opens: a path as Checkpoint(path) (a file, an index or a directory), any other
// source as its one file.
Checkpoint open_checkpoint(const LoadFrom& from, const LoadOptions& options = {});

}  // namespace torch::safetensors
