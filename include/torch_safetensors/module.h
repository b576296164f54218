// torch::nn::Module integration: drop-in replacements for torch::load / torch::save on modules,
// and the loading of a file into any set of named tensors behind them (and behind the Python
// package's `load_model`).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/serialize.h"

namespace torch::safetensors {

struct ModuleLoadOptions {
  Backend backend = Backend::kMmap;  // how the file is read (see Backend)
  // Throw, changing nothing, when a name is missing, unexpected or shape-mismatched.
  bool strict = true;
  // torch::load's device argument. Set: tensors are loaded onto it, and a target on another device
  // takes them with `set_data` (it moves there, as with torch::load). Unset: every target keeps
  // its device (and dtype), taking the values with `copy_` where set_ cannot keep them.
  std::optional<c10::Device> device;

  ModuleLoadOptions& with_device(c10::Device d) {
    device = d;
    return *this;
  }
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
  // Opens the checkpoint (a file, an index or a directory; on the CPU) and checks names and
  // sizes; changes nothing.
  ModuleLoadPlan(NamedTensors targets, const std::string& path, Backend backend = Backend::kMmap);
  // The same over an open checkpoint. With `device` (the checkpoint opened with that device),
  // apply() moves targets on other devices there with set_data, like torch::load(module, source,
  // device).
  ModuleLoadPlan(NamedTensors targets, Checkpoint checkpoint,
                 std::optional<c10::Device> device = std::nullopt);
  ModuleLoadPlan(NamedTensors targets, File file, std::optional<c10::Device> device = std::nullopt)
      : ModuleLoadPlan(std::move(targets), Checkpoint(std::move(file)), device) {}

  const ModuleLoadReport& report() const { return report_; }
  // The groups of target names that share memory (each name in one group, most alone), with the
  // name each keeps; a group without one (no name covers the storage it shares) cannot be loaded
  // consistently: apply() leaves it untouched.
  struct TiedGroup {
    std::vector<std::string> names;   // sorted
    std::optional<std::string> keep;  // nullopt: no name covers the whole storage
  };
  const std::vector<TiedGroup>& ties() const { return ties_; }
  const Checkpoint& checkpoint() const { return checkpoint_; }

  // Loads every target the file fits, under NoGradGuard. A CPU target of the file's dtype takes the
  // loaded storage with `set_` (zero-copy with the mmap backend, as torch::load does: it keeps its
  // identity and requires_grad, trains normally, and writes go to private pages, never the file);
  // so does a tied group whose names are all one tensor. Any other target (another device or
  // dtype, or tied through distinct tensors or views) gets the values with `copy_`, keeping its
  // device, dtype and ties.
  void apply() const;

 private:
  enum class Mode {
    kSet,      // target.set_(loaded): same device and dtype, nothing else sees the old memory
    kSetData,  // target.set_data(loaded): to the requested device (torch::load's device argument)
    kCopy,     // target.copy_(loaded): keeps device, dtype and ties
  };
  struct Assignment {
    at::Tensor target;
    std::string name;  // in the file
    Mode mode;
  };
  Checkpoint checkpoint_;
  std::vector<Assignment> assignments_;
  ModuleLoadReport report_;
  std::vector<TiedGroup> ties_;
};

// ModuleLoadPlan over the source (a path — a file, an index or a directory —, a stream, any Source:
// see LoadFrom and open_checkpoint) opened with
// options.backend and options.device, then: throws (a c10::Error naming the source and every
// problem) when a group of two or more tied names has no name covering its storage, or with
// options.strict when the report is not ok; otherwise applies it and returns the report.
ModuleLoadReport load_into(const NamedTensors& targets, const LoadFrom& from,
                           const ModuleLoadOptions& options = {});

// torch::load(module, source[, device]): load_into the module's parameters and buffers (dotted
// names, as `named_parameters()` and `named_buffers()` give them), strict. The options overload
// gives the non-strict report, another backend or a device.
ModuleLoadReport load(torch::nn::Module& module, const LoadFrom& from,
                      const ModuleLoadOptions& options = {});
ModuleLoadReport load(torch::nn::Module& module, const LoadFrom& from, c10::Device device);

// Any module held by a std::shared_ptr or a ModuleHolder (torch::nn::Linear, TORCH_MODULE(Net)),
// as torch::load takes them.
template <typename M, typename... Rest,
          std::enable_if_t<std::is_base_of_v<torch::nn::Module, M>, int> = 0>
ModuleLoadReport load(const std::shared_ptr<M>& module, const LoadFrom& from, Rest&&... rest) {
  TORCH_CHECK(module, "safetensors: cannot load into a null module pointer");
  return load(static_cast<torch::nn::Module&>(*module), from, std::forward<Rest>(rest)...);
}
template <typename M, typename... Rest>
ModuleLoadReport load(const torch::nn::ModuleHolder<M>& module, const LoadFrom& from,
                      Rest&&... rest) {
  return load(module.ptr(), from, std::forward<Rest>(rest)...);
}

// Writes named_parameters() and named_buffers(). Tensors that share memory (tied weights) are
// saved once, like the reference's `save_model`: of each group the name the tie policy keeps (the
// first in sorted order among those covering the whole storage) is written, and each dropped name
// is recorded in the metadata as dropped → kept (unless the caller's metadata already has that
// key). A group of two or more names none of which covers the storage is refused.
void save(const torch::nn::Module& module, const SaveTo& to,
          const std::optional<Metadata>& metadata = std::nullopt);
template <typename M, std::enable_if_t<std::is_base_of_v<torch::nn::Module, M>, int> = 0>
void save(const std::shared_ptr<M>& module, const SaveTo& to,
          const std::optional<Metadata>& metadata = std::nullopt) {
  TORCH_CHECK(module, "safetensors: cannot save a null module pointer");
  save(static_cast<const torch::nn::Module&>(*module), to, metadata);
}
template <typename M>
void save(const torch::nn::ModuleHolder<M>& module, const SaveTo& to,
          const std::optional<Metadata>& metadata = std::nullopt) {
  save(module.ptr(), to, metadata);
}

}  // namespace torch::safetensors
