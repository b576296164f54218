// Save side: what each entry contributes to the header, the tensor that holds its bytes, and the
// one set of rules a save request is checked against.
#pragma once

#include "torch_safetensors/export.h"

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torch_safetensors/header.h"
#include "torch_safetensors/types.h"

namespace torch::safetensors::adapters {

// What one entry contributes to the header, and the tensor that holds its bytes.
struct TS_API SaveItem {
  TensorInfo info;    // name, dtype, logical shape; offsets are filled in by the layout
  at::Tensor source;  // as given: may be non-contiguous or on another device
};

// Items are built without the checks of check_save (so that those run over all items, in the
// reference's order): an item is only meaningful once check_save has passed on all of them.
// Raw tensors are checked here (1-D uint8 bytes of the size their dtype and shape need).
TS_API SaveItem to_save_item(const std::string& name, const at::Tensor& tensor,
                             std::string_view source);
TS_API SaveItem to_save_item(const std::string& name, const RawTensor& raw,
                             std::string_view source);

// The item's bytes as a contiguous CPU tensor (a copy only when it is not one already).
TS_API at::Tensor contiguous_cpu_bytes(const SaveItem& item);

// Why a save request is refused. The checks, in the order the reference applies them
// (bindings/python/py_src/safetensors/torch.py: `_flatten_as_ptr`, then its Rust serializer):
//   1. kSparse: tensors not strided (all of them, in entry order);
//   2. kSharedMemory: tensors whose memory overlaps (overlapping_groups; saving both would store
//      the bytes twice and loading would untie them);
//   3. for each entry in order: kNonContiguous (unless the rules allow it), kMeta (no data),
//      kUnsupportedDtype (a torch dtype the format lacks);
//   4. kFloat4Scalar: a 0-d float4_e2m1fn_x2 tensor (its header shape needs a last dimension for
//      the two packed values).
enum class SaveProblemKind {
  kSparse,
  kSharedMemory,
  kNonContiguous,
  kMeta,
  kUnsupportedDtype,
  kFloat4Scalar
};
struct TS_API SaveProblem {
  SaveProblemKind kind;
  // kSparse: one group, every sparse tensor; kSharedMemory: each group of overlapping tensors;
  // otherwise one group holding the first tensor with the problem.
  std::vector<std::vector<std::string>> names;
};

struct TS_API SaveRules {
  // The C++ API writes a non-contiguous tensor in logical (row-major) order; the Python drop-in
  // refuses it like the reference.
  bool allow_non_contiguous = true;

  SaveRules& with_allow_non_contiguous(bool allow) {
    allow_non_contiguous = allow;
    return *this;
  }
};

// The first problem of a save request (name → the tensor to write; raw tensors: their bytes).
TS_API std::optional<SaveProblem> find_save_problem(const NamedTensors& tensors,
                                                    const SaveRules& rules = {});
// c10 errors naming `source` and the tensors: ValueError (sparse, non-contiguous),
// NotImplementedError (meta), c10::Error otherwise; Python raises them as their own kinds.
[[noreturn]] void throw_save_problem(const SaveProblem& problem, const NamedTensors& tensors,
                                     std::string_view source);
// find_save_problem over the items' sources, throwing what it finds.
TS_API void check_save(const std::vector<SaveItem>& items, const SaveRules& rules,
                       std::string_view source);

}  // namespace torch::safetensors::adapters
