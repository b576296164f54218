// Load side: at::Tensors over stored bytes, each with its own storage (never a view into one
// whole-file storage), or owned memory for bytes to be read into.
#pragma once

#include "torch_safetensors/export.h"

#include <memory>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "torch_safetensors/header.h"

namespace torch::safetensors::adapters {

// The sizes a stored tensor loads as (stored_sizes in dtype.h). Throws, naming the tensor, when
// torch cannot lay them out: each stride (the product of the later sizes, zeros counted as one)
// must fit in int64. Validation bounds the element count, not this, so only shapes with a zero
// dimension can pass it and still fail here (e.g. [0, 2^62, 2^62]); torch itself would throw a
// bare "Stride calculation overflowed".
TS_API std::vector<int64_t> torch_sizes(const TensorInfo& info, std::string_view source);

// A CPU tensor of `sizes` and `strides` (elements) whose own storage is the `storage_bytes` bytes
// at `data`, keeping `owner` alive. Undefined when `data` is not aligned for `dtype` (legal in the
// format, not for typed access): the caller then reads into owned memory instead.
TS_API at::Tensor view_memory(uint8_t* data, uint64_t storage_bytes, c10::ScalarType dtype,
                              c10::IntArrayRef sizes, c10::IntArrayRef strides,
                              std::shared_ptr<const void> owner);

// Uninitialised owned CPU tensors for `infos`, to be filled by reads: consecutive tensors share
// arenas of up to 64 MiB of fresh memory with transparent huge pages (alloc_huge), as page faults,
// one per 4 KiB otherwise, cost more than the reads themselves. Each tensor has its own storage;
// an arena is freed when the last tensor in it is.
TS_API std::vector<at::Tensor> empty_for_read(const std::vector<TensorInfo>& infos,
                                              std::string_view source);

// Puts a loaded tensor into `target` as torch::load does (its InputArchive::read), under
// NoGradGuard: an undefined target is assigned; a defined one keeps its identity and takes the
// data with `set_` on the same device, `set_data` across devices.
TS_API void assign_like_torch_load(at::Tensor& target, at::Tensor loaded);

}  // namespace torch::safetensors::adapters
