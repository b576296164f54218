// Loading many tensors, of one file or of the shards of a checkpoint, in one pass: the bulk path
// of File::tensors, Checkpoint::tensors and Checkpoint::for_each (implemented in file.cpp, beside
// File's single-tensor path).
#pragma once

#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "torch_safetensors/file.h"

namespace torch::safetensors {

struct LoadItem {
  const File* file;
  const TensorInfo* info;
  // Optional: fill this tensor in place instead of allocating (contiguous, of the stored dtype
  // and sizes, on the load's device): a module's parameters already on a device.
  at::Tensor into = {};
  // Optional: only these bytes of the tensor (a slice, a rank's piece), in the plan's sizes.
  const SlicePlan* plan = nullptr;
};

// Loads every item as `options` say (all items' files opened with the same options): views of
// mapped memory (a planned item when its plan is a strided view); owned memory filled by one
// parallel read over all files (kPread); or, for another device (or always_stage), device memory
// filled through one staging ring. Then the dtype cast. `on_loaded(i, tensor)`, when given, is
// called for each item in order as soon as it is ready (to a device: while later copies proceed);
// the tensors are also returned.
std::vector<at::Tensor> load_many(
    const std::vector<LoadItem>& items, const LoadOptions& options,
    const std::function<void(size_t, const at::Tensor&)>& on_loaded = {});

}  // namespace torch::safetensors
