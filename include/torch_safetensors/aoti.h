// AOTInductor packages with safetensors weights: a `.pt2` compiled without its weights
// (`aot_inductor.package_constants_in_so=False`) gets them from a safetensors file or a sharded
// checkpoint, zero-copy on the CPU.
//
//   torch::inductor::AOTIModelPackageLoader package("model.pt2");
//   torch::safetensors::load(package, "model.safetensors");      // checked, then borrowed
//   auto out = package.run({input});
//   torch::safetensors::load(package, "finetune.safetensors",    // while `run` keeps serving
//                            AotiLoadOptions().with_inactive());
//   torch::safetensors::swap_constants(package);                 // the fine-tune serves now
//
// Names: the package asks for its constants by their original FQN (get_constant_fqns()), the
// names of the exported module's state_dict, plus the lifted constants' names. A tied group is
// asked for once, by one of its names (AotiLoadOptions::aliases maps it to the name a file holds);
// constants AOTInductor folded into the code at compile time (0-d, and 1-D of up to 8 values,
// unless compiled with always_keep_tensor_constants=True) or computes itself (runtime constant
// folding) are not asked for. See docs/aoti.md.
//
// Library torch_safetensors_aoti (component `aoti`): LibTorch's AOTInductor runtime only.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "torch_safetensors/endpoints.h"
#include "torch_safetensors/export.h"
#include "torch_safetensors/module.h"

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace torch::safetensors {

// One constant a package takes from outside, as the package describes it.
struct TS_API AotiConstant {
  std::string fqn;   // the name it is asked for (its original FQN)
  std::string name;  // the package's own name for it
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  uint64_t nbytes = 0;  // the bytes the package reads
  // From the package's generated source, which AOTInductor packages beside the library; nullopt
  // when the package holds no source (then only dtype and nbytes are checked).
  std::optional<std::vector<int64_t>> sizes;
  std::optional<std::vector<int64_t>> strides;
};

// The constants `package` takes from outside (the folded ones excluded), in the package's order.
TS_API std::vector<AotiConstant> aoti_constants(torch::inductor::AOTIModelPackageLoader& package);

struct TS_API AotiLoadOptions : ModuleLoadOptions {
  // Fill the inactive constant buffer (a second set of weights for swap_constants) instead of the
  // active one, which keeps serving meanwhile.
  bool inactive = false;
  // Let the package copy the tensors into memory of its own. Default: it borrows ours (the
  // mapping's pages on the CPU: zero-copy; the loaded device tensors on a device), which stay
  // alive as long as the package uses them.
  bool copy = false;
  // Package FQN -> the name the file holds it under: a tied group the package asks for under
  // another name than the file kept.
  std::map<std::string, std::string> aliases;

  AotiLoadOptions() = default;
  AotiLoadOptions(const LoadOptions& options) : ModuleLoadOptions(options) {}  // NOLINT: implicit

  AotiLoadOptions& with_inactive(bool i = true) {
    inactive = i;
    return *this;
  }
  AotiLoadOptions& with_copy(bool c = true) {
    copy = c;
    return *this;
  }
  AotiLoadOptions& with_alias(std::string fqn, std::string file_name) {
    aliases[std::move(fqn)] = std::move(file_name);
    return *this;
  }
  AotiLoadOptions& with_strict(bool s) {
    strict = s;
    return *this;
  }
  AotiLoadOptions& with_backend(Backend b) {
    LoadOptions::with_backend(b);
    return *this;
  }
  AotiLoadOptions& with_device(c10::Device d) {
    LoadOptions::with_device(d);
    return *this;
  }
  AotiLoadOptions& with_dtype(c10::ScalarType t) {
    LoadOptions::with_dtype(t);
    return *this;
  }
  AotiLoadOptions& with_cast_fp8(bool c = true) {
    LoadOptions::with_cast_fp8(c);
    return *this;
  }
  AotiLoadOptions& with_staging_bytes(uint64_t bytes) {
    LoadOptions::with_staging_bytes(bytes);
    return *this;
  }
  AotiLoadOptions& with_populate(bool p = true) {
    LoadOptions::with_populate(p);
    return *this;
  }
};

// Loads the package's constants from `from` (a file, an index or a directory; a stream; any
// Source) into its active buffer, or with options.inactive its inactive one. Everything is checked
// before the package changes: each constant's dtype, sizes (or byte count) against the package's,
// a c10::Error naming the tensor, expected vs found. A constant the file lacks is an error unless
// the buffer already holds it (a partial update, strict=false); with options.strict (the default)
// the report must be ok: no constant missing, none mismatched, and no tensor in the file the
// package does not take (it would be silently ignored: a folded constant keeps its compiled-in
// value). The tensors go to the package's device (LoadOptions::device overrides).
TS_API ModuleLoadReport load(torch::inductor::AOTIModelPackageLoader& package, const LoadFrom& from,
                             const AotiLoadOptions& options = {});

// Makes the inactive buffer (filled with options.inactive) the active one; the previously active
// set becomes the inactive one. Runs already in flight finish on the old set.
TS_API void swap_constants(torch::inductor::AOTIModelPackageLoader& package);

}  // namespace torch::safetensors
