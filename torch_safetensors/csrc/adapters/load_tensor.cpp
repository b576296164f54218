#include "adapters/load_tensor.h"

#include <algorithm>
#include <cstring>

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include "check.h"
#include "huge_pages.h"

namespace torch::safetensors::adapters {
namespace {

// Values per stored byte, for the packed dtypes; 0 for the others.
struct Packing {
  int64_t values;  // logical values per group
  int64_t bytes;   // bytes per group
};
std::optional<Packing> packing(Dtype dtype) {
  switch (dtype) {
    case Dtype::F4:
      return Packing{2, 1};
    case Dtype::F6_E2M3:
    case Dtype::F6_E3M2:
      return Packing{4, 3};
    default:
      return std::nullopt;
  }
}

void delete_owner(void* ctx) { delete static_cast<std::shared_ptr<void>*>(ctx); }

}  // namespace

c10::ScalarType torch_dtype(const TensorInfo& info, std::string_view source) {
  auto type = to_scalar_type(info.dtype);
  TS_CHECK(type.has_value(), source, "tensor '", info.name, "': dtype ", dtype_name(info.dtype),
           " needs a newer LibTorch than this one; read its bytes with File::raw");
  return *type;
}

std::vector<int64_t> torch_sizes(const TensorInfo& info) {
  std::vector<int64_t> sizes = c10::IntArrayRef(info.shape).vec();
  if (auto pack = packing(info.dtype)) {
    if (!sizes.empty() && sizes.back() % pack->values == 0) {
      sizes.back() = sizes.back() / pack->values * pack->bytes;
    } else {
      sizes = {int64_t(info.nbytes())};
    }
  }
  return sizes;
}

void check_torch_sizes(const TensorInfo& info, const std::vector<int64_t>& sizes,
                       std::string_view source) {
  int64_t stride = 1;
  for (size_t i = sizes.size(); i > 1; --i) {
    const bool overflow =
        __builtin_mul_overflow(stride, std::max<int64_t>(sizes[i - 1], 1), &stride);
    TS_CHECK(!overflow, source, "tensor '", info.name, "': shape ", c10::IntArrayRef(info.shape),
             " has no elements but cannot be a torch tensor: its strides overflow 64 bits");
  }
}

at::Tensor empty_for(const TensorInfo& info, std::string_view source) {
  const std::vector<int64_t> sizes = torch_sizes(info);
  check_torch_sizes(info, sizes, source);
  return at::empty(sizes, at::TensorOptions().dtype(torch_dtype(info, source)));
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
    if (size == 0) size = kAlign;  // only empty tensors: view_bytes copies nothing anyway
    void* p = alloc_huge(size);
    TS_CHECK(p != nullptr, source, "cannot allocate ", size, " bytes to read tensors into");
    const std::shared_ptr<void> arena(p, [size](void* q) { free_huge(q, size); });
    auto* at = static_cast<uint8_t*>(p);
    for (; i < j; ++i) {
      out.push_back(view_bytes(infos[i], at, arena, source));
      at += padded(infos[i].nbytes());
    }
  }
  return out;
}

at::Tensor view_bytes(const TensorInfo& info, uint8_t* data, const std::shared_ptr<void>& owner,
                      std::string_view source) {
  const auto dtype = torch_dtype(info, source);
  const auto itemsize = c10::elementSize(dtype);
  if (info.nbytes() == 0 || reinterpret_cast<uintptr_t>(data) % itemsize != 0) {
    // Unaligned data offsets are legal in the format but not for typed access: copy.
    at::Tensor owned = empty_for(info, source);
    if (info.nbytes()) std::memcpy(owned.data_ptr(), data, info.nbytes());
    return owned;
  }
  return at::for_blob(data, torch_sizes(info))
      .context(new std::shared_ptr<void>(owner), delete_owner)
      .options(at::TensorOptions().dtype(dtype))
      .target_device(c10::Device(c10::kCPU))
      .make_tensor();
}

}  // namespace torch::safetensors::adapters
