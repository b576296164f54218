// How a load reads and where its tensors go: one options type for every load (files,
// checkpoints, modules, TorchScript modules, optimizers, rank loads). Module loads extend it
// (ModuleLoadOptions in module.h); nothing replaces it.
#pragma once

#include <cstdint>
#include <optional>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace torch::safetensors {

namespace detail {
struct LoadOptionsTesting;
}

enum class Backend {
  kMmap,   // zero-copy views of a private, writable copy-on-write mapping; pages fault lazily
  kPread,  // owned memory filled with pread(2); no mapping outlives the call
};

// The host memory a load to a device stages through, all buffers together: its one place.
inline constexpr uint64_t kDefaultStagingBytes = uint64_t(256) << 20;

struct LoadOptions {
  // kMmap: views of the source's memory where it has any (a file is mapped privately, copy on
  // write; pages are read when first touched). kPread: owned memory, read with pread(2) from
  // files (which may then change or vanish) or copied from memory.
  Backend backend = Backend::kMmap;
  // Where tensors end up. Unset: the CPU, zero-copy where the backend allows (a module load: each
  // target keeps its own device). Any other device gets each tensor allocated there and filled
  // straight from the file through a ring of host buffers (pinned where an accelerator exists;
  // `staging_bytes` in all) with asynchronous copies on a dedicated stream, so host memory stays
  // bounded whatever the model's size. A device this LibTorch cannot reach is an error at open.
  std::optional<c10::Device> device;
  uint64_t staging_bytes = kDefaultStagingBytes;
  // Casts floating-point tensors (F64, F32, F16, BF16 and the FP8 types) to this floating dtype on
  // load, on the destination device after the raw copy, as `module.to(dtype)` and transformers'
  // `torch_dtype` do. Integers, bools, packed sub-byte dtypes (F4, F6) and therefore quantized
  // weights and their integer companions keep their stored dtype (cast_applies in dtype.h is the
  // rule). A dtype that is not floating is an error.
  std::optional<c10::ScalarType> dtype;
  // Also cast the FP8 types (F8_E4M3, F8_E5M2 and their FNUZ variants) to `dtype`: only for FP8
  // tensors that are plain values, not quantized weights with a scale beside them.
  bool cast_fp8 = false;
  // kMmap: fault the whole mapping in at open, on all cores (madvise(MADV_POPULATE_READ), or a read
  // per page where the kernel lacks it), so that tensors are resident at once instead of paging in
  // on first touch. Costs the file's read up front; pays off when every byte will be used.
  bool populate = false;
  // Memory budgets, in bytes, checked when a load is planned, before anything is allocated: what
  // the load allocates on its device (`device`, when not the CPU: the tensors) and on the host
  // (owned CPU tensors, the staging ring's buffers; views of a mapping cost none). A load that
  // does not fit is a BudgetError (errors.h) naming the largest tensor and the shortfall; a
  // streaming load (Checkpoint::for_each) goes in batches that fit. Unset: no limit; 0 is an
  // error (it fits nothing).
  std::optional<uint64_t> device_budget;
  std::optional<uint64_t> host_budget;

  // Where tensors of this load end up: `device`, else the CPU.
  c10::Device target_device() const { return device.value_or(c10::Device(c10::kCPU)); }

  LoadOptions& with_backend(Backend b) {
    backend = b;
    return *this;
  }
  LoadOptions& with_device(c10::Device d) {
    device = d;
    return *this;
  }
  LoadOptions& with_dtype(c10::ScalarType t) {
    dtype = t;
    return *this;
  }
  LoadOptions& with_cast_fp8(bool c = true) {
    cast_fp8 = c;
    return *this;
  }
  LoadOptions& with_staging_bytes(uint64_t bytes) {
    staging_bytes = bytes;
    return *this;
  }
  LoadOptions& with_populate(bool p = true) {
    populate = p;
    return *this;
  }
  LoadOptions& with_device_budget(uint64_t bytes) {
    device_budget = bytes;
    return *this;
  }
  LoadOptions& with_host_budget(uint64_t bytes) {
    host_budget = bytes;
    return *this;
  }

 private:
  friend struct detail::LoadOptionsTesting;
  bool stage_on_cpu_ = false;  // tests only: CPU loads through the staging ring (api/handle.h)
};

}  // namespace torch::safetensors
