// A lazy handle on one safetensors file: the C++ analogue of the reference's `safe_open`.
//
// Opening reads and validates only the header. Tensors are produced on request: with the mmap
// backend as zero-copy views of one private (copy-on-write) mapping of the file, which stays
// alive as long as any tensor or handle uses it; with the pread backend as owned memory read with
// pread(2), so that only the bytes asked for are read and the file may change or vanish after.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/TensorIndexing.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/ordered_dict.h>

#include "torch_safetensors/header.h"

namespace torch::safetensors {

// Name → tensor, in the order of the tensors' bytes in the file.
using TensorDict = torch::OrderedDict<std::string, at::Tensor>;

enum class Backend {
  kMmap,   // zero-copy views of a private, writable copy-on-write mapping; pages fault lazily
  kPread,  // owned memory filled with pread(2); no mapping outlives the call
};

struct LoadOptions {
  Backend backend = Backend::kMmap;
  // Where tensors end up. CPU (the default) keeps mmap views zero-copy; any other device copies
  // each tensor there once.
  c10::Device device = c10::kCPU;
  // Module loading only: throw when names are missing, unexpected or shape-mismatched.
  bool strict = true;

  LoadOptions& with_backend(Backend b) {
    backend = b;
    return *this;
  }
  LoadOptions& with_device(c10::Device d) {
    device = d;
    return *this;
  }
  LoadOptions& with_strict(bool s) {
    strict = s;
    return *this;
  }
};

// A tensor's bytes exactly as stored, with its spec dtype and logical shape. The way to read and
// write dtypes torch cannot express (F6_E2M3, F6_E3M2) and to copy tensors without touching them.
struct RawTensor {
  Dtype dtype = Dtype::U8;
  std::vector<int64_t> shape;  // logical shape, as in the header
  at::Tensor bytes;            // 1-D uint8, exactly the stored bytes
};

class File {
 public:
  // Opens `path` and validates its header. Throws c10::Error (missing file, bad header, ...).
  explicit File(const std::string& path, const LoadOptions& options = {});

  const std::string& path() const;
  const LoadOptions& options() const;
  const Header& header() const;
  const std::optional<Metadata>& metadata() const { return header().metadata; }

  // Tensor names in data-offset order (`offset_keys` in the reference).
  std::vector<std::string> keys() const;
  bool contains(std::string_view name) const { return header().find(name) != nullptr; }
  const TensorInfo& info(std::string_view name) const;
  size_t size() const { return header().tensors.size(); }

  // One whole tensor. Packed dtypes (F4 as Float4_e2m1fn_x2, F6 as uint8 bytes) keep the logical
  // shape with the last dimension divided by the values per byte; when it does not divide evenly
  // the tensor comes back 1-D, one element per stored byte.
  at::Tensor tensor(std::string_view name) const;

  // `tensor(name).index(indices)`, but reading only the rows of the outermost indexed dimension
  // that the indices select (the pread backend reads just those bytes).
  at::Tensor slice(std::string_view name, at::ArrayRef<at::indexing::TensorIndex> indices) const;

  RawTensor raw(std::string_view name) const;

  // Every tensor, in file order.
  TensorDict tensors() const;

  // Throws if the file is now shorter than when it was opened. With the mmap backend, touching a
  // tensor whose pages lie past the new end raises SIGBUS (the OS's rule for mappings), so a
  // program that lets other processes rewrite files in place should call this first, or use the
  // pread backend, which turns a short read into a c10::Error. Files replaced by rename (as our
  // save and the reference's do) are safe: the mapping keeps the old contents.
  void check_intact() const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// Same as File(path, options).
inline File open(const std::string& path, const LoadOptions& options = {}) {
  return File(path, options);
}

}  // namespace torch::safetensors
