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
#include "torch_safetensors/export.h"
#include "torch_safetensors/options.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/sharded.h"

namespace torch::safetensors {

// LoadOptions, extended by what only a module load decides. `device` keeps torch::load's meaning:
// set, tensors are loaded onto it and a target on another device takes them with `set_data` (it
// moves there); unset, every target keeps its device (and dtype), taking the values with `copy_`
// where set_ cannot keep them.
struct TS_API ModuleLoadOptions : LoadOptions {
  // Throw, changing nothing, when a name is missing, unexpected or shape-mismatched.
  bool strict = true;

  ModuleLoadOptions() = default;
  ModuleLoadOptions(const LoadOptions& options) : LoadOptions(options) {}  // NOLINT: implicit

  ModuleLoadOptions& with_strict(bool s) {
    strict = s;
    return *this;
  }
  // LoadOptions' setters, returning this type so that they chain with with_strict.
  ModuleLoadOptions& with_backend(Backend b) {
    LoadOptions::with_backend(b);
    return *this;
  }
  ModuleLoadOptions& with_device(c10::Device d) {
    LoadOptions::with_device(d);
    return *this;
  }
  ModuleLoadOptions& with_dtype(c10::ScalarType t) {
    LoadOptions::with_dtype(t);
    return *this;
  }
  ModuleLoadOptions& with_cast_fp8(bool c = true) {
    LoadOptions::with_cast_fp8(c);
    return *this;
  }
  ModuleLoadOptions& with_staging_bytes(uint64_t bytes) {
    LoadOptions::with_staging_bytes(bytes);
    return *this;
  }
  ModuleLoadOptions& with_populate(bool p = true) {
    LoadOptions::with_populate(p);
    return *this;
  }
};

struct TS_API SizeMismatch {
  std::string name;
  std::vector<int64_t> target_sizes;  // the module's tensor
  std::vector<int64_t> file_sizes;    // the file's tensor, as File::tensor returns it
};

struct TS_API ModuleLoadReport {
  // In the module, not in the file. A tied name (one sharing memory with others) whose group keeps
  // another name is never missing, like in the reference's load_model.
  std::vector<std::string> missing;
  // In the file, not in the module. Not loaded.
  std::vector<std::string> unexpected;
  std::vector<SizeMismatch> mismatched;  // in both, with different sizes (not loaded)
  // (dropped, kept): names that are one tensor in the module (tied) and that the file holds both
  // of, with different values, so that the module cannot hold both. The kept name is loaded. A
  // file holding both names with equal values (a state dict saved without dropping ties) loads.
  std::vector<std::pair<std::string, std::string>> tied_conflicts;
  bool ok() const {
    return missing.empty() && unexpected.empty() && mismatched.empty() && tied_conflicts.empty();
  }
};

// Loading a file into named tensors in two steps: checking (which changes nothing) and applying.
//
// `targets` are the tensors to fill, by name: e.g. `named_parameters()` + `named_buffers()` of a
// module, or Python's `model.state_dict(keep_vars=True)`. Targets sharing memory (tied weights)
// are grouped by the tie policy (the reference's `_remove_duplicate_names`, with the file's names
// preferred): each group is loaded through the one name it keeps, which covers the whole storage,
// so the ties survive. A file's tensor fits its target when their sizes are equal, the sizes being
// those File::tensor returns (packed dtypes: see File::tensor).
class TS_API ModuleLoadPlan {
 public:
  // Checks names and sizes against an open checkpoint; changes nothing. With a device in the
  // checkpoint's options, apply() moves targets on other devices there with set_data, like
  // torch::load(module, source, device); without one, targets keep their devices.
  ModuleLoadPlan(NamedTensors targets, Checkpoint checkpoint);

  const ModuleLoadReport& report() const { return report_; }
  // The groups of target names that share memory (each name in one group, most alone), with the
  // name each keeps; a group without one (no name covers the storage it shares) cannot be loaded
  // consistently: apply() leaves it untouched.
  struct TiedGroup {
    std::vector<std::string> names;   // sorted
    std::optional<std::string> keep;  // nullopt: no name covers the whole storage
  };
  const std::vector<TiedGroup>& ties() const { return ties_; }
  // The names apply() loads, in target order: each in the file and fitting its target, a tied group
  // through the name it keeps. (A loader of its own, e.g. of DTensor shards, loads exactly these.)
  std::vector<std::string> loaded_names() const;
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
// see LoadFrom and open_checkpoint) opened with `options`, then: throws (a c10::Error naming the
// source and every problem) when a group of two or more tied names has no name covering its
// storage, or with options.strict when the report is not ok; otherwise applies it and returns the
// report.
TS_API ModuleLoadReport load_into(const NamedTensors& targets, const LoadFrom& from,
                                  const ModuleLoadOptions& options = {});

// torch::load(module, source[, device]): load_into the module's parameters and buffers (dotted
// names, as `named_parameters()` and `named_buffers()` give them), strict. The options overload
// gives the non-strict report, another backend, a device, a dtype.
TS_API ModuleLoadReport load(torch::nn::Module& module, const LoadFrom& from,
                             const ModuleLoadOptions& options = {});
TS_API ModuleLoadReport load(torch::nn::Module& module, const LoadFrom& from, c10::Device device);

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
TS_API void save(const torch::nn::Module& module, const SaveTo& to,
                 const SaveMetadata& metadata = {});
template <typename M, std::enable_if_t<std::is_base_of_v<torch::nn::Module, M>, int> = 0>
void save(const std::shared_ptr<M>& module, const SaveTo& to, const SaveMetadata& metadata = {}) {
  TORCH_CHECK(module, "safetensors: cannot save a null module pointer");
  save(static_cast<const torch::nn::Module&>(*module), to, metadata);
}
template <typename M>
void save(const torch::nn::ModuleHolder<M>& module, const SaveTo& to,
          const SaveMetadata& metadata = {}) {
  save(module.ptr(), to, metadata);
}

// save_sharded (sharded.h) of a module's parameters and buffers.
TS_API SaveReport save_sharded(const torch::nn::Module& module, const PathArg& directory,
                               const ShardOptions& options = {});

}  // namespace torch::safetensors
