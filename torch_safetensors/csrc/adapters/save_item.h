// Save side: what each entry contributes to the header, and the tensor that holds its bytes.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "torch_safetensors/file.h"
#include "torch_safetensors/header.h"

namespace torch::safetensors::adapters {

// Save side: what one entry contributes to the header, and the tensor that holds its bytes.
struct SaveItem {
  TensorInfo info;    // name, dtype, logical shape; offsets are filled in by the layout
  at::Tensor source;  // as given: may be non-contiguous or on another device
};
SaveItem to_save_item(const std::string& name, const at::Tensor& tensor, std::string_view source);
SaveItem to_save_item(const std::string& name, const RawTensor& raw, std::string_view source);

// The item's bytes as a contiguous CPU tensor (a copy only when it is not one already).
at::Tensor contiguous_cpu_bytes(const SaveItem& item);

// Refuses tensors whose memory overlaps (as the reference's save_file does): saving both would
// duplicate the bytes and loading would silently untie them.
void check_no_overlap(const std::vector<SaveItem>& items, std::string_view source);

}  // namespace torch::safetensors::adapters
