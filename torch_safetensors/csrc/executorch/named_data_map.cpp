// SafetensorsDataMap (executorch_data_map.h): ExecuTorch's NamedDataMap over a Checkpoint.
#include "torch_safetensors/executorch_data_map.h"

#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/platform/log.h>

#include "executorch/flat_tensor.h"

namespace torch::safetensors {

using ::executorch::runtime::Error;
using ::executorch::runtime::Result;
using EtScalarType = ::executorch::aten::ScalarType;

// The codec's table (flat_tensor.cpp) against the runtime's enum, for a few rows of each kind.
static_assert(int(EtScalarType::Byte) == 0 && int(EtScalarType::Float) == 6 &&
                  int(EtScalarType::Bool) == 11 && int(EtScalarType::BFloat16) == 15 &&
                  int(EtScalarType::Float8_e4m3fn) == 24 && int(EtScalarType::UInt64) == 29,
              "ExecuTorch's ScalarType numbering changed: update flat_tensor.cpp's table");

struct SafetensorsDataMap::Impl {
  struct Key {
    std::string key;
    std::string name;  // in the checkpoint
    std::optional<int8_t> scalar_type;
    Dtype dtype = Dtype::U8;
    std::vector<int32_t> sizes;
    std::vector<uint8_t> dim_order;
    uint64_t nbytes = 0;
    std::string layout_error;  // why there is no layout, when there is none
  };

  Checkpoint checkpoint;
  std::vector<Key> keys;
  std::unordered_map<std::string_view, size_t> by_key;  // views of keys[i].key
  mutable std::mutex mutex;
  mutable std::vector<at::Tensor> bytes;  // each key's stored bytes, read on first use

  explicit Impl(Checkpoint c) : checkpoint(std::move(c)) {}

  const Key* find(std::string_view key) const {
    auto it = by_key.find(key);
    if (it == by_key.end()) {
      ET_LOG(Error, "safetensors %s: no tensor for key '%.*s'", checkpoint.path().c_str(),
             int(key.size()), key.data());
      return nullptr;
    }
    return &keys[it->second];
  }

  // The bytes of `k`, kept for the map's life (a view of the mapping, or an owned copy).
  Result<const at::Tensor*> data(const Key& k) const {
    try {
      std::lock_guard<std::mutex> lock(mutex);
      at::Tensor& slot = bytes[&k - keys.data()];
      if (!slot.defined()) slot = checkpoint.raw(k.name).bytes;
      return &slot;
    } catch (const std::exception& e) {
      ET_LOG(Error, "safetensors %s: key '%s': %s", checkpoint.path().c_str(), k.key.c_str(),
             e.what());
      return Error::InvalidExternalData;
    }
  }
};

namespace {

std::unique_ptr<SafetensorsDataMap::Impl> make_impl(Checkpoint checkpoint,
                                                    const PtdOptions& names) {
  auto impl = std::make_unique<SafetensorsDataMap::Impl>(std::move(checkpoint));
  const Checkpoint& c = impl->checkpoint;
  impl->keys.reserve(c.size());
  std::unordered_map<std::string, const std::string*> taken;
  for (const std::string& name : c.keys()) {
    SafetensorsDataMap::Impl::Key k;
    k.key = names.key(name);
    k.name = name;
    auto [it, inserted] = taken.emplace(k.key, &name);
    TORCH_CHECK(inserted, "safetensors: ", c.path(), ": tensors '", *it->second, "' and '", name,
                "' both map to key '", k.key, "'");
    const TensorInfo& info = c.info(name);
    k.dtype = info.dtype;
    k.nbytes = info.nbytes();
    k.scalar_type = ptd::executorch_scalar_type(info.dtype);
    if (!k.scalar_type) {
      k.layout_error =
          "dtype " + std::string(dtype_name(info.dtype)) + " has no ExecuTorch scalar type";
    } else if (info.shape.size() > ptd::kMaxRank) {
      k.layout_error = "rank " + std::to_string(info.shape.size()) + " exceeds ExecuTorch's 16";
    }
    for (int64_t size : info.shape) {
      if (size > INT32_MAX) k.layout_error = "size " + std::to_string(size) + " exceeds int32";
      k.sizes.push_back(int32_t(size));
      k.dim_order.push_back(uint8_t(k.dim_order.size()));
    }
    impl->keys.push_back(std::move(k));
  }
  for (size_t i = 0; i < impl->keys.size(); ++i) impl->by_key.emplace(impl->keys[i].key, i);
  impl->bytes.resize(impl->keys.size());
  return impl;
}

}  // namespace

SafetensorsDataMap::SafetensorsDataMap(const std::string& path, const PtdOptions& names,
                                       const LoadOptions& options)
    : SafetensorsDataMap(Checkpoint(path, options), names) {}

SafetensorsDataMap::SafetensorsDataMap(Checkpoint checkpoint, const PtdOptions& names)
    : impl_(make_impl(std::move(checkpoint), names)) {}

SafetensorsDataMap::~SafetensorsDataMap() = default;

const Checkpoint& SafetensorsDataMap::checkpoint() const { return impl_->checkpoint; }

Result<const SafetensorsDataMap::TensorLayout> SafetensorsDataMap::get_tensor_layout(
    std::string_view key) const {
  const Impl::Key* k = impl_->find(key);
  if (k == nullptr) return Error::NotFound;
  if (!k->layout_error.empty()) {
    ET_LOG(Error, "safetensors %s: key '%s': %s", impl_->checkpoint.path().c_str(), k->key.c_str(),
           k->layout_error.c_str());
    return Error::NotSupported;
  }
  return TensorLayout::create({k->sizes.data(), k->sizes.size()},
                              {k->dim_order.data(), k->dim_order.size()},
                              static_cast<EtScalarType>(*k->scalar_type));
}

Result<SafetensorsDataMap::FreeableBuffer> SafetensorsDataMap::get_data(
    std::string_view key) const {
  const Impl::Key* k = impl_->find(key);
  if (k == nullptr) return Error::NotFound;
  Result<const at::Tensor*> bytes = impl_->data(*k);
  if (!bytes.ok()) return bytes.error();
  // Nothing to free: the bytes live as long as the map.
  return FreeableBuffer((*bytes)->data_ptr(), k->nbytes, nullptr);
}

Error SafetensorsDataMap::load_data_into(std::string_view key, void* buffer, size_t size) const {
  const Impl::Key* k = impl_->find(key);
  if (k == nullptr) return Error::NotFound;
  if (size < k->nbytes) {
    ET_LOG(Error, "safetensors %s: key '%s' holds %llu bytes, the buffer %zu",
           impl_->checkpoint.path().c_str(), k->key.c_str(), (unsigned long long)k->nbytes, size);
    return Error::InvalidArgument;
  }
  Result<const at::Tensor*> bytes = impl_->data(*k);
  if (!bytes.ok()) return bytes.error();
  if (k->nbytes > 0) std::memcpy(buffer, (*bytes)->data_ptr(), k->nbytes);
  return Error::Ok;
}

Result<uint32_t> SafetensorsDataMap::get_num_keys() const { return uint32_t(impl_->keys.size()); }

Result<const char*> SafetensorsDataMap::get_key(uint32_t index) const {
  if (index >= impl_->keys.size()) {
    ET_LOG(Error, "safetensors %s: key index %u out of range of %zu",
           impl_->checkpoint.path().c_str(), index, impl_->keys.size());
    return Error::InvalidArgument;
  }
  return impl_->keys[index].key.c_str();
}

}  // namespace torch::safetensors
