// Tensors that share memory: the overlap groups behind save's refusal, and the tie policy (which
// name of a shared group is kept) behind module save and load. One implementation, used by the C++
// API and bound for the Python package's `_find_shared_tensors` / `_remove_duplicate_names`.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "torch_safetensors/types.h"

namespace torch::safetensors::adapters {

// [first byte, one past the last byte) of the memory the tensor's elements span, holes between
// strided elements included; {data, data} when it has no elements (where torch's data pointer is
// null). The second is the reference's `_end_ptr` (bindings/python/py_src/safetensors/torch.py).
std::pair<uintptr_t, uintptr_t> byte_extent(const at::Tensor& tensor);

// True when the tensor's elements are exactly its storage: it starts at the storage's first byte
// and numel * element size is the storage's size (a strided view with holes is not). The
// reference's `_is_complete`; a tensor without storage (sparse) is not.
bool covers_storage(const at::Tensor& tensor);

// The reference's `_find_shared_tensors`: the tensors that have memory (not meta, a storage with a
// non-null address and a non-zero size), grouped by memory they share; each such tensor is in
// exactly one group, alone when it shares nothing. Tensors share memory when they are on one
// device and one storage (its address and size, as the reference keys it) and their byte extents
// overlap, directly or through a chain of overlapping extents; tensors without elements overlap
// nothing. Groups come in the reference's order: by the first appearance of their storage in
// `tensors`, then by address within a storage. (The reference compares each extent only with the
// previous one, so a view that follows a smaller view inside a larger tensor starts a group of its
// own; here it stays with the larger tensor that holds both.) Elements are indices into `tensors`.
std::vector<std::vector<size_t>> memory_groups(const NamedTensors& tensors);

// The groups of memory_groups with two or more tensors: what save refuses.
std::vector<std::vector<size_t>> overlapping_groups(const NamedTensors& tensors);

// The tie policy, the reference's `_remove_duplicate_names`: for each group of memory_groups,
// which name is kept when tensors sharing memory are stored once. Candidates are the names whose
// tensor covers its storage (covers_storage); among them the first in sorted order of those in
// `preferred`, else of those not in `discard`, else of all.
struct SharedNames {
  std::vector<std::string> names;            // the group, sorted
  std::optional<std::string> keep;           // nullopt: no name covers the whole storage
  std::vector<std::string> dropped() const;  // names without keep, sorted
};
std::vector<SharedNames> choose_kept_names(const NamedTensors& tensors,
                                           const std::unordered_set<std::string>& preferred = {},
                                           const std::unordered_set<std::string>& discard = {});

}  // namespace torch::safetensors::adapters
