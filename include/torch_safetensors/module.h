// torch::nn::Module integration: drop-in replacements for torch::load / torch::save on modules,
// and the loading of a file into any set of named tensors behind them (and behind the Python
// package's `load_model`).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "torch_safetensors/serialize.h"

namespace torch::safetensors {

struct ModuleLoadOptions {
  Backend backend = Backend::kMmap;  // how the file is read (see Backend)
  // Throw, changing nothing, when a name is missing, unexpected or shape-mismatched.
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

struct SizeMismatch {
  std::string name;
  std::vector<int64_t> target_sizes;  // the module's tensor
  std::vector<int64_t> file_sizes;    // the file's tensor, as File::tensor returns it
};

struct ModuleLoadReport {
  // In the module, not in the file. A tied name (one sharing memory with others) whose group keeps
  // another name is never missing, like in the reference's load_model.
  std::vector<std::string> missing;
  // In the file, not in the module; then the tied names the file has but whose group keeps
  // another name (like the reference's load_model). Not loaded.
  std::vector<std::string> unexpected;
  std::vector<SizeMismatch> mismatched;  // in both, with different sizes (not loaded)
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
};

// Loading a file into named tensors in two steps: checking (which changes nothing) and applying.
//
// `targets` are the tensors to fill, by name: e.g. `named_parameters()` + `named_buffers()` of a
// module, or Python's `model.state_dict(keep_vars=True)`. Targets sharing memory (tied weights)
// are grouped by the tie policy (the reference's `_remove_duplicate_names`, with the file's names
// preferred): each group is loaded through the one name it keeps, which covers the whole storage,
// so the ties survive. A file's tensor fits its target when their sizes are equal, the sizes being
// those File::tensor returns (packed dtypes: see File::tensor).
class ModuleLoadPlan {
 public:
  // Opens the file (on the CPU) and checks names and sizes; changes nothing.
  ModuleLoadPlan(NamedTensors targets, const std::string& path, Backend backend = Backend::kMmap);

  const ModuleLoadReport& report() const { return report_; }
  // The groups of target names that share memory (each name in one group, most alone), with the
  // name each keeps; a group without one (no name covers the storage it shares) cannot be loaded
  // consistently: apply() leaves it untouched.
  struct TiedGroup {
    std::vector<std::string> names;   // sorted
    std::optional<std::string> keep;  // nullopt: no name covers the whole storage
  };
  const std::vector<TiedGroup>& ties() const { return ties_; }

  // Loads every target the file fits, under NoGradGuard. A CPU target of the file's dtype takes the
  // loaded storage with `set_` (zero-copy with the mmap backend, as torch::load does: it keeps its
  // identity and requires_grad, trains normally, and writes go to private pages, never the file);
  // so does a tied group whose names are all one tensor. Any other target (another device or
  // dtype, or tied through distinct tensors or views) gets the values with `copy_`, keeping its
  // device, dtype and ties.
  void apply() const;

 private:
  struct Assignment {
    at::Tensor target;
    std::string name;  // in the file
    bool zero_copy;
  };
  File file_;
  std::vector<Assignment> assignments_;
  ModuleLoadReport report_;
  std::vector<TiedGroup> ties_;
};

// ModuleLoadPlan(targets, path, options.backend), then: throws (a c10::Error naming every
// problem) when a group of two or more tied names has no name covering its storage, or with
// options.strict when the report is not ok; otherwise applies it and returns the report.
ModuleLoadReport load_into(const NamedTensors& targets, const std::string& path,
                           const ModuleLoadOptions& options = {});

// load_into the module's parameters and buffers (dotted names, as `named_parameters()` and
// `named_buffers()` give them).
ModuleLoadReport load(torch::nn::Module& module, const std::string& path,
                      const ModuleLoadOptions& options = {});

// Writes named_parameters() and named_buffers(). Tensors that share memory (tied weights) are
// saved once, like the reference's `save_model`: of each group the name the tie policy keeps (the
// first in sorted order among those covering the whole storage) is written, and each dropped name
// is recorded in the metadata as dropped → kept (unless the caller's metadata already has that
// key). A group of two or more names none of which covers the storage is refused.
void save(const torch::nn::Module& module, const std::string& path,
          const std::optional<Metadata>& metadata = std::nullopt);

}  // namespace torch::safetensors
