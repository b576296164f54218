// TorchScript modules: their parameters and buffers through the nn::Module paths (module.cpp).
#include "torch_safetensors/jit.h"

#include "api/named_module.h"

namespace torch::safetensors {

NamedTensors named_tensors(const torch::jit::Module& module) {
  NamedTensors out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out.emplace_back(p.name, p.value);
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    if (b.value.defined()) out.emplace_back(b.name, b.value);
  }
  return out;
}

ModuleLoadReport load(torch::jit::Module& module, const LoadFrom& from,
                      const ModuleLoadOptions& options) {
  return load_into(named_tensors(module), from, options);
}

ModuleLoadReport load(torch::jit::Module& module, const LoadFrom& from, c10::Device device) {
  return load_into(named_tensors(module), from, ModuleLoadOptions().with_device(device));
}

void save(const torch::jit::Module& module, const SaveTo& to, const SaveMetadata& metadata) {
  save_named_module(named_tensors(module), to, metadata.value());
}

}  // namespace torch::safetensors
