// Tensors that share memory: the overlap detector behind save's refusal and module tie handling.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "torch_safetensors/file.h"
#include "torch_safetensors/header.h"

namespace torch::safetensors::adapters {

// Groups of two or more tensors (indices into `tensors`) whose bytes overlap: same device and
// storage, overlapping extents (chained), as the reference's shared-tensor detection. Tensors
// with no elements are never in a group.
std::vector<std::vector<size_t>> overlapping_groups(const std::vector<at::Tensor>& tensors);

}  // namespace torch::safetensors::adapters
