// Internals of the one lazy handle (checkpoint.h): an open file, where a tensor lives, and the
// one load engine every load goes through (whole files, names, slices, rank pieces, module
// fills, streaming). Implemented in file.cpp (the read path) and checkpoint.cpp (the handle).
#pragma once

#include "torch_safetensors/export.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/file.h"

namespace torch::safetensors::detail {

// One open safetensors file: its source, its validated header and, when tensors view it, its
// memory. Shared by every handle and tensor view of it.
struct TS_API OpenFile {
  std::shared_ptr<const Source> source;
  Header header;
  uint8_t* memory = nullptr;  // the source's memory, when the backend views it

  const std::string& name() const { return source->name(); }
  uint64_t absolute(const TensorInfo& info) const { return header.data_offset() + info.begin; }
};

// Opens `source` as `options` say (checks the device, reads and validates the header, populates).
TS_API std::shared_ptr<const OpenFile> open_file(std::shared_ptr<const Source> source,
                                                 const LoadOptions& options);

// Where a tensor of a checkpoint lives: the shard, opened, and its entry.
struct TS_API Located {
  const OpenFile* file;
  const TensorInfo* info;
};

struct TS_API LoadItem {
  const OpenFile* file;
  const TensorInfo* info;
  // Optional: fill this tensor in place instead of allocating (contiguous, of the stored dtype
  // and sizes, on the load's device): a module's parameters already on a device.
  at::Tensor into = {};
  // Optional: only these bytes of the tensor (a slice, a rank's piece), in the plan's sizes.
  const SlicePlan* plan = nullptr;
};

// Loads every item as `options` say: views of mapped memory (a planned item when its plan is a
// strided view); owned memory filled by one parallel read over all files (kPread); or, for
// another device, device memory filled through one staging ring. Then the dtype-on-load cast.
// `on_loaded(i, tensor)`, when given, is called for each item in order as soon as it is ready (to
// a device: while later copies proceed); the tensors are also returned.
TS_API std::vector<at::Tensor> load_many(
    const std::vector<LoadItem>& items, const LoadOptions& options,
    const std::function<void(size_t, const at::Tensor&)>& on_loaded = {});

// The checks every load makes before it reads a byte (at open: a file's, or an index's): the
// device is reachable, the dtype on load is floating, budgets are not 0.
TS_API void check_load_options(const LoadOptions& options, std::string_view source);

// The plan step: what load_many(items, options) will allocate (the same branches; nothing is
// allocated or read), and its check against the options' budgets: a BudgetError naming `source`,
// `what` needs it, the shortfall and the largest tensor. load_many checks its items itself.
TS_API MemoryEstimate estimate_memory(const std::vector<LoadItem>& items,
                                      const LoadOptions& options);
TS_API void check_budgets(const MemoryEstimate& estimate, const LoadOptions& options,
                          std::string_view source, std::string_view what = "the load");

// A streaming load's batches of `items`, in order, each one load_many call: with budgets, the
// most items whose estimate (the ring included) fits them (a tensor that fits no batch is a
// BudgetError, here, before anything is read); without, reads into owned memory in batches of
// about staging_bytes, other loads in one batch.
struct TS_API LoadBatch {
  size_t begin, end;  // items[begin, end)
  MemoryEstimate memory;
};
TS_API std::vector<LoadBatch> plan_batches(const std::vector<LoadItem>& items,
                                           const LoadOptions& options, std::string_view source);

// A single tensor, a slice of one (only the selected bytes) and the stored bytes of one, as the
// handle's accessors return them.
TS_API at::Tensor load_one(const Located& tensor, const LoadOptions& options);
TS_API at::Tensor load_slice(const Located& tensor, at::ArrayRef<at::indexing::TensorIndex> indices,
                             const LoadOptions& options);
TS_API RawTensor load_raw(const Located& tensor);

// The one slice-planning call: which bytes of a stored tensor `index` selects.
TS_API SlicePlan plan_tensor_slice(const Located& tensor, c10::ArrayRef<IndexItem> index);

// The dtype-on-load rule (cast_applies in dtype.h): the dtype a tensor stored as `stored` loads as,
// and the rule applied to a loaded tensor.
TS_API c10::ScalarType loaded_dtype(c10::ScalarType stored, const LoadOptions& options);
TS_API at::Tensor cast_on_load(at::Tensor tensor, const LoadOptions& options);

// Tests only: routes CPU loads through the staging ring too (pageable buffers), so that the device
// path runs without a device. Not part of the public API.
struct TS_API LoadOptionsTesting {
  static LoadOptions& stage_on_cpu(LoadOptions& options, bool stage = true) {
    options.stage_on_cpu_ = stage;
    return options;
  }
  static bool stages_on_cpu(const LoadOptions& options) { return options.stage_on_cpu_; }
};

// Whether loads with `options` go through the staging ring (a device other than the CPU, or the
// test switch above).
inline bool staged(const LoadOptions& options) {
  return !options.target_device().is_cpu() || LoadOptionsTesting::stages_on_cpu(options);
}

struct TS_API CheckpointAccess {
  static const Checkpoint::Impl& impl(const Checkpoint& checkpoint) { return *checkpoint.impl_; }
};

// The shard holding `name`, opened (the one missing-name error otherwise).
TS_API Located locate(const Checkpoint& checkpoint, std::string_view name);
// The shard files opened so far, or every shard (opening them).
TS_API const OpenFile& shard(const Checkpoint& checkpoint, size_t index);

}  // namespace torch::safetensors::detail
