// The slice planner: a basic index over a stored tensor's element grid, turned into byte runs and,
// where one exists, a strided view.
//
// Each stored dimension's selection becomes a list of segments (start, count, step). The runs come
// from the innermost suffix of dimensions taken whole, extended by the next dimension when its
// segments have step 1; the dimensions outside that are walked like an odometer.
#include "torch_safetensors/slice.h"

#include <algorithm>
#include <ostream>

#include <c10/util/SmallVector.h>

#include "check.h"

// TS_CHECK's prefix on the exception types torch's own indexing throws.
#define TS_CHECK_INDEX(cond, source, ...) \
  TORCH_CHECK_INDEX((cond), "safetensors: ", (source), ": ", __VA_ARGS__)
#define TS_CHECK_VALUE(cond, source, ...) \
  TORCH_CHECK_VALUE((cond), "safetensors: ", (source), ": ", __VA_ARGS__)

namespace torch::safetensors {
namespace {

// "tensor 'name': " in error messages.
struct Where {
  std::string_view name;
};
std::ostream& operator<<(std::ostream& out, const Where& w) {
  return out << "tensor '" << w.name << "': ";
}

// Positions start, start + step, ... (count of them) along one stored dimension.
struct Segment {
  int64_t start, count, step;
};

// What an index selects along one stored dimension: segments [first, last) of the plan's list.
struct DimSelection {
  size_t first, last;
  int64_t count;  // positions selected, all segments together
};

// A dimension of the result, before bools are merged.
struct ResultDim {
  enum Kind : uint8_t { kStored, kNewAxis, kBool } kind;
  int64_t size, stride;
};

// A run of elements, its offset relative to the odometer's position.
struct ElementRun {
  int64_t offset, length;
};

int64_t checked_mul(int64_t a, int64_t b, std::string_view source, const Where& where,
                    const char* what) {
  int64_t product = 0;
  TS_CHECK(!__builtin_mul_overflow(a, b, &product), source, where, what, " overflows int64");
  return product;
}

// Python's slice.indices for a positive step, as torch's slice does it.
int64_t clamp_bound(std::optional<int64_t> bound, int64_t missing, int64_t size) {
  if (!bound) return missing;
  int64_t value = *bound;
  if (value < 0) value = value + size < 0 ? 0 : value + size;  // no overflow: size >= 0
  return value > size ? size : value;
}

// Torch's bools become one dimension: size 0 if any is false. It stays in place when the bools
// are adjacent among the result's dimensions; else advanced indexing moves it to the front.
void merge_bools(c10::SmallVector<ResultDim, 8>& dims) {
  size_t first = dims.size(), last = 0, count = 0;
  bool all_true = true;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d].kind != ResultDim::kBool) continue;
    first = std::min(first, d);
    last = d;
    ++count;
    all_true = all_true && dims[d].size == 1;
  }
  if (count < 2) return;
  const size_t position = last - first + 1 == count ? first : 0;
  dims.erase(std::remove_if(dims.begin(), dims.end(),
                            [](const ResultDim& d) { return d.kind == ResultDim::kBool; }),
             dims.end());
  dims.insert(dims.begin() + position, ResultDim{ResultDim::kBool, all_true ? 1 : 0, 1});
}

// Walks the positions of the odometer dimensions in row-major order, calling emit(base) with each
// position's element offset. Amortized O(1) per position.
template <typename Emit>
void walk_odometer(const c10::SmallVector<DimSelection, 6>& dims, int64_t odometer_dims,
                   const std::vector<Segment>& segments, c10::IntArrayRef strides, Emit&& emit) {
  struct Wheel {
    const Segment* segment;
    int64_t step_index;
  };
  c10::SmallVector<Wheel, 6> wheels;
  int64_t base = 0;
  for (int64_t d = 0; d < odometer_dims; ++d) {
    wheels.push_back({&segments[dims[d].first], 0});
    base += segments[dims[d].first].start * strides[d];
  }
  while (true) {
    emit(base);
    int64_t d = odometer_dims - 1;
    for (; d >= 0; --d) {
      Wheel& wheel = wheels[d];
      const int64_t stride = strides[d];
      if (++wheel.step_index < wheel.segment->count) {
        base += wheel.segment->step * stride;
        break;
      }
      // Off the end of this segment: back to its start, then on to the next (or the first).
      base -=
          (wheel.segment->count - 1) * wheel.segment->step * stride + wheel.segment->start * stride;
      const Segment* next = wheel.segment + 1;
      const bool wraps = next == &segments[0] + dims[d].last;
      wheel.segment = wraps ? &segments[dims[d].first] : next;
      wheel.step_index = 0;
      base += wheel.segment->start * stride;
      if (!wraps) break;
    }
    if (d < 0) return;
  }
}

}  // namespace

uint64_t SlicePlan::nbytes() const {
  uint64_t total = 0;
  for (const ByteRun& run : runs) total += run.length;
  return total;
}

std::vector<IndexItem> dim_intervals(int64_t dim, std::vector<std::pair<int64_t, int64_t>> ranges) {
  TORCH_CHECK_INDEX(dim >= 0, "dim_intervals: the dimension must be non-negative, got ", dim);
  std::vector<IndexItem> index(dim, IndexItem{IndexRange{}});
  index.emplace_back(Intervals{std::move(ranges)});
  return index;
}

SlicePlan plan_slice(c10::IntArrayRef sizes, int64_t element_size, c10::ArrayRef<IndexItem> index,
                     std::string_view source, std::string_view name) {
  const Where where{name};
  const int64_t ndim = static_cast<int64_t>(sizes.size());
  TS_CHECK(element_size > 0, source, where, "element size must be positive, got ", element_size);

  // Row-major strides as torch gives a contiguous tensor (a size-0 dimension counts as 1), and
  // the stored byte count, which bounds every offset below.
  std::vector<int64_t> strides(ndim);
  int64_t stored_numel = 1;
  int64_t stride = 1;
  for (int64_t d = ndim - 1; d >= 0; --d) {
    TS_CHECK(sizes[d] >= 0, source, where, "negative size ", sizes[d], " in dimension ", d);
    strides[d] = stride;
    stride = checked_mul(stride, std::max<int64_t>(sizes[d], 1), source, where, "the shape");
    stored_numel *= sizes[d];  // <= stride
  }
  checked_mul(stored_numel, element_size, source, where, "the tensor's byte count");

  int64_t specified = 0, ellipses = 0;
  for (const IndexItem& item : index) {
    if (const auto* range = std::get_if<IndexRange>(&item)) {
      // Python's torch refuses a step below 1 while reading the index, before counting
      // dimensions: errors come in the same order here.
      TS_CHECK_VALUE(range->step >= 1, source, where, "step must be greater than zero");
    }
    if (std::holds_alternative<EllipsisIndex>(item)) {
      ++ellipses;
    } else if (!std::holds_alternative<NewAxis>(item) && !std::holds_alternative<bool>(item)) {
      ++specified;
    }
  }
  TS_CHECK_INDEX(specified <= ndim, source, where, "too many indices for tensor of dimension ",
                 ndim);
  TS_CHECK_INDEX(ellipses <= 1, source, where, "an index can only have a single ellipsis");

  std::vector<Segment> segments;
  c10::SmallVector<DimSelection, 6> selections;
  c10::SmallVector<ResultDim, 8> result_dims;
  // Appends dimension d's segments, dropping empty ones and joining touching step-1 ones.
  auto select = [&](const Segment* begin, const Segment* end) {
    DimSelection selection{segments.size(), segments.size(), 0};
    for (const Segment* s = begin; s != end; ++s) {
      if (s->count == 0) continue;
      const int64_t step = s->count == 1 ? 1 : s->step;
      // Repeated intervals can select more positions than the dimension has.
      // The builtin, as elsewhere: LibTorch 2.8's c10::add_overflows takes uint64_t only.
      TS_CHECK(!__builtin_add_overflow(selection.count, s->count, &selection.count), source, where,
               "the intervals' length overflows int64");
      if (selection.last > selection.first && step == 1) {
        Segment& previous = segments.back();
        if (previous.step == 1 && previous.start + previous.count == s->start) {
          previous.count += s->count;
          continue;
        }
      }
      segments.push_back({s->start, s->count, step});
      ++selection.last;
    }
    selections.push_back(selection);
  };
  auto keep = [&](int64_t d, int64_t size, int64_t step) {
    result_dims.push_back({ResultDim::kStored, size, strides[d] * step});
  };

  for (const IndexItem& item : index) {
    const int64_t d = static_cast<int64_t>(selections.size());  // the stored dimension next up
    if (const auto* integer = std::get_if<int64_t>(&item)) {
      const int64_t size = sizes[d];
      // As torch: -size <= i < size, written so that INT64_MIN does not overflow.
      TS_CHECK_INDEX(size > -1 - *integer && size > *integer, source, where, "index ", *integer,
                     " is out of bounds for dimension ", d, " with size ", size);
      const Segment position{*integer < 0 ? *integer + size : *integer, 1, 1};
      select(&position, &position + 1);
    } else if (const auto* range = std::get_if<IndexRange>(&item)) {
      TS_CHECK_VALUE(range->step >= 1, source, where, "step must be greater than zero");
      const int64_t size = sizes[d];
      const int64_t start = clamp_bound(range->start, 0, size);
      const int64_t stop = clamp_bound(range->stop, size, size);
      // (stop - start + step - 1) / step without overflowing on a huge step.
      const int64_t count = stop > start ? (stop - start - 1) / range->step + 1 : 0;
      const Segment positions{start, count, range->step};
      select(&positions, &positions + 1);
      // A stride past one position is never followed; this keeps it from overflowing.
      keep(d, count, count > 1 ? range->step : 1);
    } else if (const auto* intervals = std::get_if<Intervals>(&item)) {
      const int64_t size = sizes[d];
      std::vector<Segment> blocks;
      blocks.reserve(intervals->ranges.size());
      for (const auto& [begin, end] : intervals->ranges) {
        TS_CHECK_INDEX(begin <= end, source, where, "interval [", begin, ", ", end,
                       ") begins after its end (dimension ", d, " with size ", size, ")");
        TS_CHECK_INDEX(0 <= begin && end <= size, source, where, "interval [", begin, ", ", end,
                       ") is out of bounds for dimension ", d, " with size ", size);
        blocks.push_back({begin, end - begin, 1});
      }
      select(blocks.data(), blocks.data() + blocks.size());
      keep(d, selections.back().count, 1);
    } else if (std::holds_alternative<EllipsisIndex>(item)) {
      for (int64_t e = 0; e < ndim - specified; ++e) {
        const Segment whole{0, sizes[d + e], 1};
        select(&whole, &whole + 1);
        keep(d + e, sizes[d + e], 1);
      }
    } else if (std::holds_alternative<NewAxis>(item)) {
      result_dims.push_back({ResultDim::kNewAxis, 1, 1});
    } else {
      result_dims.push_back({ResultDim::kBool, std::get<bool>(item) ? 1 : 0, 1});
    }
  }
  for (int64_t d = static_cast<int64_t>(selections.size()); d < ndim; ++d) {
    const Segment whole{0, sizes[d], 1};
    select(&whole, &whole + 1);
    keep(d, sizes[d], 1);
  }
  merge_bools(result_dims);

  SlicePlan plan;
  plan.sizes.reserve(result_dims.size());
  int64_t result_numel = 1;
  for (const ResultDim& dim : result_dims) {
    plan.sizes.push_back(dim.size);
    result_numel = checked_mul(result_numel, dim.size, source, where, "the slice's element count");
  }
  checked_mul(result_numel, element_size, source, where, "the slice's byte count");

  // The view: one segment (or none) per stored dimension makes the result strided.
  bool strided = true;
  int64_t view_offset = 0;
  for (int64_t d = 0; d < ndim; ++d) {
    const DimSelection& selection = selections[d];
    strided = strided && selection.last - selection.first <= 1;
    if (selection.last > selection.first) {
      view_offset += segments[selection.first].start * strides[d];
    }
  }
  if (strided) {
    StridedView view;
    // An empty result's offset could point past the tensor; 0 keeps it in bounds.
    view.offset = result_numel == 0 ? 0 : view_offset;
    view.sizes = plan.sizes;
    view.strides.reserve(result_dims.size());
    for (const ResultDim& dim : result_dims) view.strides.push_back(dim.stride);
    plan.view = std::move(view);
  }
  if (result_numel == 0) return plan;

  // Runs. The innermost dimensions [whole_from, ndim) are taken whole: each run covers `inner`
  // elements per position of the dimensions before, or more when the dimension just before has
  // step-1 segments (then `pattern` holds its runs, and the odometer walks the dimensions above).
  auto is_whole = [&](int64_t d) {
    const DimSelection& selection = selections[d];
    return selection.last - selection.first == 1 && segments[selection.first].start == 0 &&
           segments[selection.first].count == sizes[d] && segments[selection.first].step == 1;
  };
  int64_t whole_from = ndim;
  while (whole_from > 0 && is_whole(whole_from - 1)) --whole_from;
  const int64_t inner = whole_from > 0 ? strides[whole_from - 1] : stored_numel;

  c10::SmallVector<ElementRun, 4> pattern;
  int64_t odometer_dims = whole_from;
  if (whole_from > 0) {
    const DimSelection& selection = selections[whole_from - 1];
    if (segments[selection.first].step == 1) {  // the step of every segment of that dimension
      for (size_t s = selection.first; s < selection.last; ++s) {
        pattern.push_back({segments[s].start * inner, segments[s].count * inner});
      }
      odometer_dims = whole_from - 1;
    }
  }
  if (pattern.empty()) pattern.push_back({0, inner});

  // Every run holds at least one element of the result, so this bound does not overflow.
  int64_t run_bound = static_cast<int64_t>(pattern.size());
  for (int64_t d = 0; d < odometer_dims; ++d) run_bound *= selections[d].count;
  plan.runs.reserve(run_bound);

  const uint64_t bytes = static_cast<uint64_t>(element_size);
  std::vector<ByteRun>& runs = plan.runs;
  uint64_t next_offset = UINT64_MAX;  // where the last run ends: the next one may extend it
  walk_odometer(selections, odometer_dims, segments, strides, [&](int64_t base) {
    for (const ElementRun& run : pattern) {
      const uint64_t offset = static_cast<uint64_t>(base + run.offset) * bytes;
      const uint64_t length = static_cast<uint64_t>(run.length) * bytes;
      if (offset == next_offset) {
        runs.back().length += length;
      } else {
        runs.push_back({offset, length});
      }
      next_offset = offset + length;
    }
  });
  return plan;
}

}  // namespace torch::safetensors
