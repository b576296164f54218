// The slice planner: which bytes of a stored tensor a basic index selects, as pure planning.
//
// Every backend (mmap view, pread, in-memory) reads through the same plan, so that a slice reads
// only the bytes it returns. Nothing here does I/O or touches at::Tensor.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <c10/util/ArrayRef.h>

#include "torch_safetensors/export.h"

namespace torch::safetensors {

// Python slice semantics: start/stop default to the ends, negative values count from the end,
// clamped to [0, size]; step >= 1.
struct IndexRange {
  std::optional<int64_t> start, stop;
  int64_t step = 1;
};
// The strided-interval form for fused weights: several [begin, end) ranges along one dimension,
// concatenated in the given order (e.g. a rank's rows of the q, k and v blocks of a fused qkv
// projection). Each range must lie within [0, size] with begin <= end.
struct Intervals {
  std::vector<std::pair<int64_t, int64_t>> ranges;
};
struct EllipsisIndex {};  // `...`
struct NewAxis {};        // `None`: inserts a dimension of size 1
// One item of a basic index: an integer (negative counts from the end; removes the dimension), a
// range, intervals, `...`, `None`, or a bool (as torch: true inserts a dimension of size 1, false
// one of size 0). Several bools act together as torch's do: they become a single dimension (size
// 0 if any is false), in place when nothing but bools separates them, else in front.
using IndexItem = std::variant<int64_t, IndexRange, Intervals, EllipsisIndex, NewAxis, bool>;

struct ByteRun {
  uint64_t offset;  // relative to the tensor's first byte
  uint64_t length;
};
// In elements, relative to the tensor's first element.
struct StridedView {
  int64_t offset;
  std::vector<int64_t> sizes, strides;
};

struct TS_API SlicePlan {
  std::vector<int64_t> sizes;  // the result's sizes
  // In destination order: the result, contiguous, is their concatenation. Exactly adjacent runs
  // are coalesced; there is no slack (bytes read == bytes returned). Empty for an empty result.
  std::vector<ByteRun> runs;
  // The result as a strided view of the stored (contiguous) tensor, when expressible: always for
  // indices without Intervals, and for Intervals whose ranges, once empty ones are dropped and
  // touching ones joined, are at most one. An empty result's view has offset 0.
  std::optional<StridedView> view;

  uint64_t nbytes() const;  // sum of run lengths == product of sizes * element size
};

// `sizes` are the stored tensor's sizes as torch sees them (contiguous, row-major),
// `element_size` the bytes per element. Errors start "safetensors: <source>: tensor '<name>': ":
//  - an integer out of range: c10::IndexError "index 5 is out of bounds for dimension 0 with size
//    3" (the dimension of the stored tensor);
//  - a step < 1: c10::ValueError "step must be greater than zero";
//  - more indices than dimensions: c10::IndexError "too many indices for tensor of dimension N";
//  - two ellipses: c10::IndexError "an index can only have a single ellipsis";
//  - an Intervals range outside [0, size] or with begin > end: c10::IndexError naming the range
//    and the dimension's size;
//  - a result whose byte count overflows int64: c10::Error.
TS_API SlicePlan plan_slice(c10::IntArrayRef sizes, int64_t element_size,
                            c10::ArrayRef<IndexItem> index, std::string_view source,
                            std::string_view name);

// "These intervals along dimension `dim`": `dim` full ranges, then Intervals{ranges}.
TS_API std::vector<IndexItem> dim_intervals(int64_t dim,
                                            std::vector<std::pair<int64_t, int64_t>> ranges);

}  // namespace torch::safetensors
