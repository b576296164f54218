// An ExecuTorch NamedDataMap over safetensors: a program exported with external constants reads its
// weights straight from a safetensors file or sharded checkpoint, no .ptd needed.
//
//   SafetensorsDataMap weights("finetune/", PtdOptions().with_strip_prefix("model."));
//   auto method = program->load_method("forward", &memory_manager, nullptr, &weights);
//
// get_data hands out the checkpoint's mapped bytes (zero-copy; LoadOptions::backend kPread gives
// owned copies instead), valid for as long as the map lives. Keys are the checkpoint's names after
// PtdOptions' renaming; layouts use ExecuTorch's scalar types (a dtype it lacks, such as complex or
// F4, is Error::NotSupported for that key). Errors are ExecuTorch's Error codes, each logged with
// the key and the reason; nothing throws into the runtime. Thread-safe.
//
// Library torch_safetensors_executorch_runtime: built when ExecuTorch's headers and runtime are
// found (the executorch package's, see cmake/FindExecuTorchPackage.cmake).
#pragma once

#include "torch_safetensors/export.h"

#include <memory>
#include <string>
#include <string_view>

#include <executorch/runtime/core/named_data_map.h>

#include "torch_safetensors/executorch.h"

namespace torch::safetensors {

class TS_API SafetensorsDataMap final : public ::executorch::ET_RUNTIME_NAMESPACE::NamedDataMap {
 public:
  using Error = ::executorch::runtime::Error;
  template <typename T>
  using Result = ::executorch::runtime::Result<T>;
  using FreeableBuffer = ::executorch::runtime::FreeableBuffer;
  using TensorLayout = ::executorch::ET_RUNTIME_NAMESPACE::TensorLayout;

  // `path`: a safetensors file, an index or a directory (Checkpoint), opened with `options`.
  // Throws c10::Error for an unreadable checkpoint or two names mapping to one key.
  explicit SafetensorsDataMap(const std::string& path, const PtdOptions& names = {},
                              const LoadOptions& options = {});
  explicit SafetensorsDataMap(Checkpoint checkpoint, const PtdOptions& names = {});
  ~SafetensorsDataMap() override;

  ET_NODISCARD Result<const TensorLayout> get_tensor_layout(std::string_view key) const override;
  ET_NODISCARD Result<FreeableBuffer> get_data(std::string_view key) const override;
  ET_NODISCARD Error load_data_into(std::string_view key, void* buffer, size_t size) const override;
  ET_NODISCARD Result<uint32_t> get_num_keys() const override;
  ET_NODISCARD Result<const char*> get_key(uint32_t index) const override;

  const Checkpoint& checkpoint() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace torch::safetensors
