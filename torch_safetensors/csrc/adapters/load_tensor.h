// Load side: at::Tensors over stored bytes, each with its own storage.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "torch_safetensors/file.h"
#include "torch_safetensors/header.h"

namespace torch::safetensors::adapters {

// The torch dtype and sizes a stored tensor loads as. Packed dtypes (F4 → Float4_e2m1fn_x2, F6 →
// raw bytes) divide the last dimension by the values per byte, or come back 1-D when it does not
// divide evenly. Throws when the linked torch lacks the dtype.
c10::ScalarType torch_dtype(const TensorInfo& info, std::string_view source);
std::vector<int64_t> torch_sizes(const TensorInfo& info);

// A CPU tensor with its own storage over `data` (info.nbytes() bytes) that keeps `owner` alive.
// Bytes not aligned to the element size are copied into fresh memory instead.
at::Tensor view_bytes(const TensorInfo& info, uint8_t* data, const std::shared_ptr<void>& owner,
                      std::string_view source);

// Throws, naming the tensor, when torch cannot lay out a contiguous tensor of `sizes`: each stride
// (the product of the later sizes, zeros counted as one) must fit in int64. Validation bounds the
// element count, not this, so only shapes with a zero dimension can pass it and still fail here
// (e.g. [0, 2^62, 2^62]); torch itself would throw a bare "Stride calculation overflowed".
void check_torch_sizes(const TensorInfo& info, const std::vector<int64_t>& sizes,
                       std::string_view source);

// An uninitialised owned CPU tensor to read `info`'s bytes into.
at::Tensor empty_for(const TensorInfo& info, std::string_view source);
// Uninitialised owned CPU tensors for `infos`, to be filled by reads: consecutive tensors share
// arenas of up to 64 MiB of fresh memory with transparent huge pages (alloc_huge), as
// page faults, one per 4 KiB otherwise, cost more than the reads themselves. An arena is freed
// when the last tensor in it is.
std::vector<at::Tensor> empty_for_read(const std::vector<TensorInfo>& infos,
                                       std::string_view source);

}  // namespace torch::safetensors::adapters
