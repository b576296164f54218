#include "adapters/tensor_view.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>

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

SaveItem to_save_item(const std::string& name, const at::Tensor& tensor, std::string_view source) {
  TS_CHECK(tensor.defined(), source, "tensor '", name, "' is undefined");
  TS_CHECK(tensor.layout() == c10::kStrided, source, "tensor '", name, "' has layout ",
           tensor.layout(), "; only dense (strided) tensors can be saved (call .to_dense())");
  // NotImplementedError in Python, like the reference (which fails copying the meta tensor).
  TORCH_CHECK_NOT_IMPLEMENTED(!tensor.is_meta(), "safetensors: ", source, ": tensor '", name,
                              "' is a meta tensor and has no data");
  auto dtype = from_scalar_type(tensor.scalar_type());
  TS_CHECK(dtype.has_value(), source, "tensor '", name, "' has dtype ", tensor.scalar_type(),
           ", which the safetensors format cannot store");
  SaveItem item;
  item.info.name = name;
  item.info.dtype = *dtype;
  item.info.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
  if (*dtype == Dtype::F4) {
    // Two values per Float4_e2m1fn_x2 element: the header records values, as the reference does.
    // A 0-d tensor has no last dimension to double; the reference refuses it too.
    TS_CHECK(!item.info.shape.empty(), source, "tensor '", name,
             "': a 0-d float4_e2m1fn_x2 tensor cannot be saved (its header shape would need a "
             "last dimension holding the two packed values); reshape it to [1]");
    // Only a tensor with no elements can have a last dimension this large, but its header would
    // then hold a dimension of 2^63 or more, which no reader (this one included) accepts.
    TS_CHECK(item.info.shape.back() <= INT64_MAX / 2, source, "tensor '", name,
             "': last dimension ", item.info.shape.back(), " of ", tensor.scalar_type(),
             " holds more than 2^63 - 1 values");
    item.info.shape.back() *= 2;
  }
  item.info.end = uint64_t(tensor.numel()) * tensor.element_size();
  item.source = tensor;
  return item;
}

SaveItem to_save_item(const std::string& name, const RawTensor& raw, std::string_view source) {
  TS_CHECK(raw.bytes.defined() && raw.bytes.scalar_type() == c10::kByte && raw.bytes.dim() == 1,
           source, "raw tensor '", name, "' must hold its bytes in a 1-D uint8 tensor");
  SaveItem item;
  item.info.name = name;
  item.info.dtype = raw.dtype;
  item.info.shape.assign(raw.shape.begin(), raw.shape.end());
  const uint64_t needed = tensor_nbytes(raw.dtype, raw.shape, source, name);
  TS_CHECK(needed == uint64_t(raw.bytes.numel()), source, "raw tensor '", name, "': dtype ",
           dtype_name(raw.dtype), " and its shape need ", needed, " bytes, but ", raw.bytes.numel(),
           " were given");
  item.info.end = needed;
  item.source = raw.bytes;
  return item;
}

at::Tensor contiguous_cpu_bytes(const SaveItem& item) {
  at::Tensor t = item.source.resolve_conj().resolve_neg();
  if (!t.device().is_cpu()) t = t.cpu();
  return t.contiguous();
}

std::vector<std::vector<size_t>> overlapping_groups(const std::vector<at::Tensor>& tensors) {
  // (device, storage) → byte extents [first byte, past the last element) of the tensors using it.
  std::map<std::tuple<int, int, const void*>, std::vector<std::tuple<uintptr_t, uintptr_t, size_t>>>
      users;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    if (!t.defined() || t.numel() == 0 || !t.has_storage() || t.storage().data() == nullptr) {
      continue;
    }
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    uintptr_t extent = t.element_size();
    for (int64_t d = 0; d < t.dim(); ++d) {
      extent += (t.size(d) - 1) * t.stride(d) * t.element_size();
    }
    const auto key = std::make_tuple(int(t.device().type()), int(t.device().index()),
                                     static_cast<const void*>(t.storage().data()));
    users[key].emplace_back(begin, begin + extent, i);
  }
  std::vector<std::vector<size_t>> groups;
  for (auto& [key, extents] : users) {
    if (extents.size() < 2) continue;
    std::sort(extents.begin(), extents.end());
    std::vector<size_t> run;  // tensors whose extents chain into one overlapping stretch
    uintptr_t run_end = 0;
    for (const auto& [begin, end, index] : extents) {
      if (!run.empty() && begin >= run_end) {
        if (run.size() > 1) groups.push_back(run);
        run.clear();
      }
      run.push_back(index);
      run_end = run.size() == 1 ? end : std::max(run_end, end);
    }
    if (run.size() > 1) groups.push_back(run);
  }
  return groups;
}

void check_no_overlap(const std::vector<SaveItem>& items, std::string_view source) {
  std::vector<at::Tensor> tensors;
  tensors.reserve(items.size());
  for (const auto& item : items) tensors.push_back(item.source);
  for (const auto& group : overlapping_groups(tensors)) {
    TS_FAIL(source, "tensors '", items[group[0]].info.name, "' and '", items[group[1]].info.name,
            "' share memory; saving both would duplicate it and loading would untie them. "
            "Save one of them, clone the other, or save the module (which drops tied "
            "duplicates like the reference's save_model)");
  }
}

}  // namespace torch::safetensors::adapters
