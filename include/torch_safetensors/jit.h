// TorchScript modules (torch::jit::load'ed or scripted) by their named parameters and buffers:
// the same loading and saving as for torch::nn::Module (module.h), strict by default with the
// same report, ties kept, the same sources and destinations.
#pragma once

#include <optional>

#include <torch/csrc/jit/api/module.h>

#include "torch_safetensors/export.h"
#include "torch_safetensors/module.h"

namespace torch::safetensors {

// Every parameter and buffer, recursively, by dotted name ("fc1.weight"), as Python's
// `scripted.state_dict()` names them.
TS_API NamedTensors named_tensors(const torch::jit::Module& module);

TS_API ModuleLoadReport load(torch::jit::Module& module, const LoadFrom& from,
                             const ModuleLoadOptions& options = {});
TS_API ModuleLoadReport load(torch::jit::Module& module, const LoadFrom& from, c10::Device device);

TS_API void save(const torch::jit::Module& module, const SaveTo& to,
                 const SaveMetadata& metadata = {});

}  // namespace torch::safetensors
