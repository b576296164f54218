// What saving any module is, once its tensors are named: shared by nn::Module and TorchScript.
#pragma once

#include <optional>

#include "torch_safetensors/serialize.h"

namespace torch::safetensors {

// Writes `tensors` with tied ones once: of each group sharing memory the name the tie policy
// keeps is written and each dropped name recorded in the metadata as dropped → kept (the
// reference's save_model); a group none of whose names covers its storage is refused.
void save_named_module(const NamedTensors& tensors, const SaveTo& to,
                       const std::optional<Metadata>& metadata);

}  // namespace torch::safetensors
