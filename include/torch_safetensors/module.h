// torch::nn::Module integration: drop-in replacements for torch::load / torch::save on modules.
#pragma once

#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "torch_safetensors/serialize.h"

namespace torch::safetensors {

struct ModuleLoadReport {
  std::vector<std::string> missing;     // in the module, not in the file
  std::vector<std::string> unexpected;  // in the file, not in the module
  std::vector<std::string> mismatched;  // in both, with different shapes (left untouched)
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
};

// Module loading's options: the file's backend, and whether any missing, unexpected or
// shape-mismatched name is an error.
struct ModuleLoadOptions {
  Backend backend = Backend::kMmap;
  bool strict = true;

  ModuleLoadOptions& with_backend(Backend b) {
    backend = b;
    return *this;
  }
  ModuleLoadOptions& with_strict(bool s) {
    strict = s;
    return *this;
  }
};

// Fills the module's parameters and buffers (dotted names, as `named_parameters()` and
// `named_buffers()` give them) from a file, under NoGradGuard. A tensor already of the file's
// dtype on the CPU takes the loaded storage (`set_`, zero-copy, as torch::load does); otherwise
// the values are copied into it, so that every parameter keeps its device, dtype and
// requires_grad. Tied tensors (sharing memory) stay tied, and a file that stored only one of them
// (see save below) satisfies all. With options.strict (the default) any missing, unexpected or
// mismatched name throws a c10::Error listing them all; otherwise the report says.
ModuleLoadReport load(torch::nn::Module& module, const std::string& path,
                      const ModuleLoadOptions& options = {});

// Writes named_parameters() and named_buffers(). Tensors that share memory (tied weights) are
// saved once, like the reference's `save_model`: the first name in sorted order among those
// covering the whole storage is kept, and each dropped name is recorded in the metadata as
// dropped → kept (unless the caller's metadata already has that key).
void save(const torch::nn::Module& module, const std::string& path,
          const std::optional<Metadata>& metadata = std::nullopt);

}  // namespace torch::safetensors
