#include "adapters/load_tensor.h"

#include <algorithm>

#include <ATen/EmptyTensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/strides.h>
#include <torch/utils.h>

#include "check.h"
#include "huge_pages.h"

namespace torch::safetensors::adapters {
namespace {

void delete_owner(void* ctx) { delete static_cast<std::shared_ptr<const void>*>(ctx); }

}  // namespace

std::vector<int64_t> torch_sizes(const TensorInfo& info, std::string_view source) {
  std::vector<int64_t> sizes = stored_sizes(info.dtype, info.shape, info.nbytes());
  int64_t stride = 1;
  for (size_t i = sizes.size(); i > 1; --i) {
    const bool overflow =
        __builtin_mul_overflow(stride, std::max<int64_t>(sizes[i - 1], 1), &stride);
    TS_CHECK(!overflow, source, "tensor '", info.name, "': shape ", c10::IntArrayRef(info.shape),
             " has no elements but cannot be a torch tensor: its strides overflow 64 bits");
  }
  return sizes;
}

at::Tensor view_memory(uint8_t* data, uint64_t storage_bytes, c10::ScalarType dtype,
                       c10::IntArrayRef sizes, c10::IntArrayRef strides,
                       std::shared_ptr<const void> owner) {
  if (!can_view_at(reinterpret_cast<uintptr_t>(data), dtype)) return at::Tensor();
  // The view never reaches past the bytes it was given (the tensor's region of the file).
  TORCH_INTERNAL_ASSERT(
      at::detail::computeStorageNbytes(sizes, strides, c10::elementSize(dtype)) <= storage_bytes,
      "safetensors: a view of ", storage_bytes, " bytes would reach past them");
  return at::for_blob(data, sizes)
      .strides(strides)
      .storage_offset(0)
      .context(new std::shared_ptr<const void>(std::move(owner)), delete_owner)
      .options(at::TensorOptions().dtype(dtype))
      .target_device(c10::Device(c10::kCPU))
      .make_tensor();
}

std::vector<at::Tensor> empty_for_read(const std::vector<TensorInfo>& infos,
                                       std::string_view source) {
  constexpr uint64_t kArena = uint64_t(64) << 20;
  constexpr uint64_t kAlign = 64;  // as the CPU allocator aligns
  const auto padded = [](uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  std::vector<at::Tensor> out;
  out.reserve(infos.size());
  for (size_t i = 0; i < infos.size();) {
    uint64_t size = 0;
    size_t j = i;
    do {
      size += padded(infos[j].nbytes());
      ++j;
    } while (j < infos.size() && size + padded(infos[j].nbytes()) <= kArena);
    if (size == 0) size = kAlign;  // only empty tensors
    void* p = alloc_huge(size);
    TS_CHECK(p != nullptr, source, "cannot allocate ", size, " bytes to read tensors into");
    const std::shared_ptr<const void> arena(
        p, [size](const void* q) { free_huge(const_cast<void*>(q), size); });
    auto* at = static_cast<uint8_t*>(p);
    for (; i < j; ++i) {
      const TensorInfo& info = infos[i];
      const std::vector<int64_t> sizes = torch_sizes(info, source);
      out.push_back(view_memory(at, info.nbytes(), to_scalar_type(info.dtype), sizes,
                                c10::contiguous_strides(sizes), arena));
      at += padded(info.nbytes());
    }
  }
  return out;
}

void assign_like_torch_load(at::Tensor& target, at::Tensor loaded) {
  torch::NoGradGuard no_grad;
  if (!target.defined()) {
    target = std::move(loaded);
  } else if (target.device() != loaded.device()) {
    target.set_data(loaded);
  } else {
    target.set_(loaded);
  }
}

}  // namespace torch::safetensors::adapters
