// The lazy handle: one class over a single safetensors file, a sharded checkpoint (the
// `model.safetensors.index.json` layout that huggingface_hub, transformers and
// torch.distributed.checkpoint's HuggingFaceStorageWriter write) or a directory holding either.
// File (file.h) is its single-file case, with the header and the source on top. Every accessor is
// implemented once, here, for both.
//
//   Checkpoint ckpt("Llama-3-8B/");              // a directory: its index, or its one file
//   at::Tensor w = ckpt.tensor("model.layers.0.mlp.up_proj.weight");  // opens that shard only
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "torch_safetensors/export.h"
#include "torch_safetensors/header.h"
#include "torch_safetensors/options.h"
#include "torch_safetensors/slice.h"
#include "torch_safetensors/source.h"
#include "torch_safetensors/types.h"

namespace at::indexing {
struct TensorIndex;  // ATen/TensorIndexing.h, which callers of slice() include (torch/torch.h does)
}

namespace torch::safetensors {

class File;
namespace detail {
struct CheckpointAccess;
}

// What a load will allocate, planned from the headers before anything is allocated or read
// (Checkpoint::estimate_memory, stream_plan, estimate_for_rank in distributed.h): on the device
// (`device` when not the CPU: the tensors) and on the host (owned CPU tensors and the staging
// ring's buffers; views of a mapping cost nothing). A dtype-on-load cast counts its copy beside
// the stored bytes it is made from. Tensor bytes, allocator rounding aside.
struct TS_API MemoryEstimate {
  uint64_t device_bytes = 0;
  uint64_t host_bytes = 0;     // staging included
  uint64_t staging_bytes = 0;  // of host_bytes: the staging ring's buffers
  size_t tensors = 0;          // how many tensors (or pieces) the load holds
  std::string largest;         // the tensor needing the most memory, and how much
  uint64_t largest_bytes = 0;
};

// One batch of a streaming load (Checkpoint::for_each): its tensors, loaded together, and what
// they allocate.
struct TS_API StreamBatch {
  std::vector<std::string> names;
  MemoryEstimate memory;
};

// Opening reads and validates only what names the tensors: a file's header, or an index (every
// shard it names must exist inside the directory). `path` is
//   - a directory: its `model.safetensors.index.json`, else its one `*.safetensors.index.json`,
//     else its one `*.safetensors` file (several candidates and no index is an error);
//   - a file whose name ends in `.json`: an index;
//   - any other file: a single safetensors file.
// Each shard of an index is opened on first use, once (one mapping per shard, shared by every
// tensor from it), and checked then against the index: it must hold exactly the tensors the index
// assigns to it. Tensors are produced on request, all through one read path: with Backend::kMmap
// and a source with addressable memory (a mapped file, owned bytes) they are zero-copy views of
// it, each with its own storage; otherwise owned memory filled with Source::read, reading only the
// bytes asked for; to a device, through the staging ring. Errors name the file (or the index,
// the shard) and the tensor. Thread-safe.
class TS_API Checkpoint {
 public:
  explicit Checkpoint(const PathArg& path, const LoadOptions& options = {});
  // A single file read from `source` (bytes in memory, a stream, a source of your own).
  explicit Checkpoint(std::shared_ptr<const Source> source, const LoadOptions& options = {});

  const std::string& path() const;       // as given (a source's name)
  const std::string& directory() const;  // the folder holding the files ("" for a non-file source)
  // The index file, when the checkpoint has one.
  const std::optional<std::string>& index_path() const;
  // The shard files, relative to directory(), sorted; one name for a single file.
  const std::vector<std::string>& shard_files() const;
  const LoadOptions& options() const;
  // A single file: its __metadata__. An index: its "metadata" object, "total_size" included
  // (values that are not strings as their JSON text).
  const std::optional<Metadata>& metadata() const;

  // Tensor names: a single file in data-offset order (`offset_keys` in the reference); an index
  // shard by shard (in shard_files() order), each shard's names in the order the index lists them.
  // A copy, as the reference's keys() is a new list: `for (auto& k : File(p).keys())` is safe.
  std::vector<std::string> keys() const;
  bool contains(std::string_view name) const;
  size_t size() const;
  // The shard holding `name`, relative to directory(), and that shard opened.
  const std::string& shard_file(std::string_view name) const;
  File file(std::string_view name) const;

  // A missing name is a c10::Error "no tensor named '<name>' (N tensors: ...)" naming the file or
  // the index, the same for every accessor and every kind of checkpoint.
  const TensorInfo& info(std::string_view name) const;

  // One whole tensor. Packed dtypes (F4 as Float4_e2m1fn_x2, F6 as uint8 bytes) keep the logical
  // shape with the last dimension counted in torch elements (stored_sizes in dtype.h); when it
  // does not hold whole groups the tensor comes back 1-D, one element per stored byte.
  at::Tensor tensor(std::string_view name) const;

  // `tensor(name).index(indices)`, reading only the bytes the result holds: integers, slices with
  // any positive step, `...`, None and booleans, on any dimension (see slice.h). A view when the
  // backend views memory, else exactly the selected bytes read into owned memory. Tensor indices
  // (advanced indexing) apply to the whole tensor.
  at::Tensor slice(std::string_view name, at::ArrayRef<at::indexing::TensorIndex> indices) const;
  // Several [begin, end) ranges of dimension `dim`, concatenated in order: a rank's share of a
  // fused weight (the q, k and v blocks of a qkv projection). Reads exactly those bytes.
  at::Tensor slice_intervals(std::string_view name, int64_t dim,
                             std::vector<std::pair<int64_t, int64_t>> ranges) const;

  RawTensor raw(std::string_view name) const;

  // Every tensor, in keys() order. With Backend::kPread every shard is read in one parallel pass
  // (chunks of all shards spread over the threads), not one file after another; to a device, all
  // shards go through one staging ring.
  TensorDict tensors() const;
  // The named tensors, in the order given, in one such pass.
  TensorDict tensors(const std::vector<std::string>& names) const;

  // The plan step: what loading these tensors (all of them: tensors()) will allocate with this
  // checkpoint's options; reads headers only (opening an index's shards). Every load checks its
  // estimate against the options' budgets before allocating (a BudgetError).
  MemoryEstimate estimate_memory(const std::vector<std::string>& names) const;
  MemoryEstimate estimate_memory() const;
  // The batches for_each will load, in order (with budgets, each fits them); a tensor that fits
  // no batch is a BudgetError here, as in for_each before it reads anything.
  std::vector<StreamBatch> stream_plan() const;

  // Streams every tensor, in file order (shard by shard), to `consume` as soon as it has landed —
  // the shape of the weight iterators inference engines consume. To a device, copies of later
  // tensors proceed while `consume` runs; pread loads go in batches of about staging_bytes. With
  // memory budgets, in batches that fit them (stream_plan; a tensor that fits no batch is a
  // BudgetError before anything is read); a budget bounds each batch, not what `consume` keeps.
  // An exception from `consume` stops the load.
  using Consumer = std::function<void(const std::string& name, at::Tensor tensor)>;
  void for_each(const Consumer& consume) const;

  // Throws if a file opened so far is now shorter than when it was opened. With the mmap backend,
  // touching a tensor whose pages lie past the new end raises SIGBUS (the OS's rule for mappings),
  // so a program that lets other processes rewrite files in place should call this first, or use
  // the pread backend, which turns a short read into a c10::Error. Files replaced by rename (as
  // our save and the reference's do) are safe: the mapping keeps the old contents.
  void check_intact() const;

  struct Impl;

 protected:
  explicit Checkpoint(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;

 private:
  friend struct detail::CheckpointAccess;
};

// What load(from) opens: a path as Checkpoint(path) (a file, an index or a directory), any other
// source as its one file.
class LoadFrom;
TS_API Checkpoint open_checkpoint(const LoadFrom& from, const LoadOptions& options = {});

}  // namespace torch::safetensors

// A checkpoint's file() is a File: complete wherever a Checkpoint is.
#include "torch_safetensors/file.h"  // IWYU pragma: export
