// The vocabulary of the library: what every layer above the format speaks (dtypes, tensor infos
// and metadata come from dtype.h and header.h; named tensors, raw tensors and save entries are
// here). Low on purpose: no nn, no jit, no indexing.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/ordered_dict.h>

#include "torch_safetensors/dtype.h"
#include "torch_safetensors/export.h"
#include "torch_safetensors/header.h"

namespace torch::safetensors {

// A path parameter: every spelling of a path converts to it (std::string, std::string_view,
// const char*, std::filesystem::path). The library itself never calls std::filesystem: CUDA
// builds of libtorch.so export copies of its functions that win symbol resolution and crash.
class PathArg {
 public:
  PathArg(const std::string& path) : path_(path) {}                     // NOLINT: implicit
  PathArg(const char* path) : path_(path) {}                            // NOLINT
  PathArg(std::string_view path) : path_(path) {}                       // NOLINT
  PathArg(const std::filesystem::path& path) : path_(path.string()) {}  // NOLINT
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

// Name → tensor, in the order of the tensors' bytes in the file.
using TensorDict = torch::OrderedDict<std::string, at::Tensor>;

// Named tensors in a given order: what save takes and what module loads fill.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// A tensor's bytes exactly as stored, with its spec dtype and logical shape. The way to read and
// write dtypes torch cannot express (F6_E2M3, F6_E3M2) and to copy tensors without touching them.
struct RawTensor {
  Dtype dtype = Dtype::U8;
  std::vector<int64_t> shape;  // logical shape, as in the header
  at::Tensor bytes;            // 1-D uint8, exactly the stored bytes
};

// One entry to write: a torch tensor, or raw bytes with their spec dtype (see RawTensor).
struct SaveEntry {
  std::string name;
  at::Tensor tensor;             // used when `raw` is empty
  std::optional<RawTensor> raw;  // written as is, after checking its size against dtype and shape

  SaveEntry(std::string n, at::Tensor t) : name(std::move(n)), tensor(std::move(t)) {}
  SaveEntry(std::string n, RawTensor r) : name(std::move(n)), raw(std::move(r)) {}
};

}  // namespace torch::safetensors
