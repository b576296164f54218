// The slice planner against torch's own indexing: random indices compared byte for byte, then the
// errors and the shapes of runs that backends rely on.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <random>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>

#include <torch_safetensors/slice.h>

namespace ts = torch::safetensors;
namespace indexing = at::indexing;

namespace {

using Ranges = std::vector<std::pair<int64_t, int64_t>>;
using Index = std::vector<ts::IndexItem>;

ts::SlicePlan plan(std::vector<int64_t> sizes, int64_t element_size, const Index& index) {
  return ts::plan_slice(sizes, element_size, index, "model.safetensors", "w");
}

// The message of the exception of type E that `f` throws; another type propagates.
template <typename E>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what_without_backtrace();
  }
  return "<no error>";
}

bool takes_a_dimension(const ts::IndexItem& item) {
  return std::holds_alternative<int64_t>(item) || std::holds_alternative<ts::IndexRange>(item) ||
         std::holds_alternative<ts::Intervals>(item);
}

// The stored dimension each item indexes (-1 for `...`, None and bools).
std::vector<int64_t> stored_dims(int64_t ndim, const Index& index) {
  int64_t specified = 0;
  for (const auto& item : index) specified += takes_a_dimension(item);
  std::vector<int64_t> dims;
  int64_t d = 0;
  for (const auto& item : index) {
    if (takes_a_dimension(item)) {
      dims.push_back(d++);
    } else {
      dims.push_back(-1);
      if (std::holds_alternative<ts::EllipsisIndex>(item))
        d += std::max<int64_t>(ndim - specified, 0);
    }
  }
  return dims;
}

// How many ranges remain once empty ones are dropped and touching ones joined.
size_t joined_count(const Ranges& ranges) {
  size_t count = 0;
  int64_t end = -1;
  for (const auto& [b, e] : ranges) {
    if (b == e) continue;
    if (b != end) ++count;
    end = e;
  }
  return count;
}

// What torch returns for `index`: each Intervals item first becomes a cat of narrows of the
// stored tensor along its dimension, then a full slice in torch's index.
at::Tensor torch_result(const at::Tensor& t, const Index& index) {
  at::Tensor source = t;
  std::vector<indexing::TensorIndex> torch_index;
  const auto dims = stored_dims(t.dim(), index);
  auto symint = [](std::optional<int64_t> v) {
    return v ? std::optional<c10::SymInt>(*v) : std::nullopt;
  };
  for (size_t i = 0; i < index.size(); ++i) {
    const auto& item = index[i];
    if (const auto* integer = std::get_if<int64_t>(&item)) {
      torch_index.emplace_back(*integer);
    } else if (const auto* range = std::get_if<ts::IndexRange>(&item)) {
      torch_index.emplace_back(
          indexing::Slice(symint(range->start), symint(range->stop), c10::SymInt(range->step)));
    } else if (const auto* intervals = std::get_if<ts::Intervals>(&item)) {
      // Past the last dimension, torch's "too many indices" is the answer.
      if (dims[i] < t.dim()) {
        std::vector<at::Tensor> pieces;
        for (const auto& [b, e] : intervals->ranges) {
          pieces.push_back(source.narrow(dims[i], b, e - b));
        }
        source = pieces.empty() ? source.narrow(dims[i], 0, 0) : at::cat(pieces, dims[i]);
      }
      torch_index.emplace_back(indexing::Slice());
    } else if (std::holds_alternative<ts::EllipsisIndex>(item)) {
      torch_index.emplace_back(indexing::Ellipsis);
    } else if (std::holds_alternative<ts::NewAxis>(item)) {
      torch_index.emplace_back(indexing::None);
    } else {
      torch_index.emplace_back(std::get<bool>(item));
    }
  }
  // Tensor::index rejects an empty list; the empty index is the tensor itself.
  return torch_index.empty() ? source : source.index(torch_index);
}

std::string describe(const std::vector<int64_t>& sizes, int64_t element_size, const Index& index) {
  std::ostringstream out;
  out << "sizes " << c10::IntArrayRef(sizes) << ", element size " << element_size << ", index [";
  auto bound = [&](std::optional<int64_t> v) {
    if (v) out << *v;
  };
  for (size_t i = 0; i < index.size(); ++i) {
    out << (i ? ", " : "");
    const auto& item = index[i];
    if (const auto* integer = std::get_if<int64_t>(&item)) {
      out << *integer;
    } else if (const auto* range = std::get_if<ts::IndexRange>(&item)) {
      bound(range->start);
      out << ':';
      bound(range->stop);
      out << ':' << range->step;
    } else if (const auto* intervals = std::get_if<ts::Intervals>(&item)) {
      out << "Intervals{";
      for (const auto& [b, e] : intervals->ranges) out << '[' << b << ',' << e << ')';
      out << '}';
    } else if (std::holds_alternative<ts::EllipsisIndex>(item)) {
      out << "...";
    } else if (std::holds_alternative<ts::NewAxis>(item)) {
      out << "None";
    } else {
      out << (std::get<bool>(item) ? "True" : "False");
    }
  }
  return out.str() + "]";
}

std::string bytes_of(const at::Tensor& contiguous) {
  const size_t n = contiguous.numel() * contiguous.element_size();
  return n ? std::string(static_cast<const char*>(contiguous.data_ptr()), n) : std::string();
}

struct RandomCase {
  std::vector<int64_t> sizes;
  int64_t element_size;
  Index index;
};

RandomCase random_case(std::mt19937_64& rng) {
  auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  RandomCase c;
  const int64_t rank = uniform(0, 4);
  // Size 0 now and then, not so often that most tensors are empty.
  for (int64_t d = 0; d < rank; ++d) c.sizes.push_back(uniform(0, 19) == 0 ? 0 : uniform(1, 6));
  c.element_size = int64_t{1} << uniform(0, 3);

  // Kinds first: at most one `...`, and rarely more indices than dimensions.
  enum Kind { kInt, kRange, kIntervals, kEllipsis, kNone, kBool };
  const bool too_many = uniform(0, 49) == 0;
  std::vector<Kind> kinds;
  int64_t specified = 0;
  bool ellipsis = false;
  for (int64_t i = uniform(0, rank + 2); i > 0; --i) {
    const int64_t pick = uniform(0, 11);
    Kind kind = pick < 3    ? kInt
                : pick < 6  ? kRange
                : pick < 8  ? kIntervals
                : pick < 9  ? kEllipsis
                : pick < 10 ? kNone
                            : kBool;
    if (kind == kEllipsis && ellipsis) kind = kNone;
    if (kind <= kIntervals && specified == rank && !too_many) kind = kNone;
    ellipsis = ellipsis || kind == kEllipsis;
    specified += kind <= kIntervals;
    kinds.push_back(kind);
  }
  if (too_many) {
    for (; specified <= rank; ++specified) kinds.push_back(kRange);
  }

  // Values, knowing each item's dimension.
  int64_t d = 0;
  for (const Kind kind : kinds) {
    const int64_t size = kind <= kIntervals && d < rank ? c.sizes[d] : 0;
    switch (kind) {
      case kInt: {
        int64_t i = uniform(-size, size - 1);
        if (size == 0 || uniform(0, 29) == 0) i = uniform(0, 1) ? size : -size - 1;  // invalid
        c.index.emplace_back(i);
        break;
      }
      case kRange: {
        auto bound = [&]() -> std::optional<int64_t> {
          if (uniform(0, 2) == 0) return std::nullopt;
          return uniform(-size - 2, size + 2);
        };
        ts::IndexRange range;
        range.start = bound();
        range.stop = bound();
        // Mostly forwards, so that most ranges select something.
        auto forward = [&](int64_t v) { return v < 0 ? v + size : v; };
        if (range.start && range.stop && forward(*range.start) > forward(*range.stop) &&
            uniform(0, 3) != 0) {
          std::swap(range.start, range.stop);
        }
        range.step = uniform(0, 99) == 0 ? uniform(-1, 0) : uniform(1, 3);
        c.index.emplace_back(range);
        break;
      }
      case kIntervals: {
        ts::Intervals intervals;
        for (int64_t n = uniform(0, 7) == 0 ? 0 : uniform(1, 3); n > 0; --n) {
          const int64_t b = uniform(0, size);
          intervals.ranges.emplace_back(b, uniform(b, size));
        }
        c.index.emplace_back(std::move(intervals));
        break;
      }
      case kEllipsis:
        c.index.emplace_back(ts::EllipsisIndex{});
        d += std::max<int64_t>(rank - specified, 0);
        break;
      case kNone:
        c.index.emplace_back(ts::NewAxis{});
        break;
      case kBool:
        c.index.emplace_back(uniform(0, 5) != 0);
        break;
    }
    d += kind <= kIntervals;
  }
  return c;
}

at::ScalarType dtype_of_size(int64_t element_size) {
  switch (element_size) {
    case 1:
      return at::kByte;
    case 2:
      return at::kShort;
    case 4:
      return at::kInt;
    default:
      return at::kLong;
  }
}

// Which error, if any, `f` throws: the types torch's indexing uses.
std::string error_kind(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::IndexError&) {
    return "IndexError";
  } catch (const c10::ValueError&) {
    return "ValueError";
  }
  return "";
}

}  // namespace

TEST(SlicePlan, MatchesTorchIndexingOnRandomIndices) {
  std::mt19937_64 rng(20240611);
  at::manual_seed(20240611);
  int compared = 0, errors = 0, views = 0, empty = 0, multi_run = 0;
  for (int n = 0; n < 8000 && !HasFailure(); ++n) {
    const RandomCase c = random_case(rng);
    SCOPED_TRACE(describe(c.sizes, c.element_size, c.index));
    const int64_t numel = c10::multiply_integers(c.sizes);
    // Random bytes, so that every byte of the result is checked.
    const at::Tensor t = at::randint(0, 256, {numel * c.element_size}, at::kByte)
                             .view(dtype_of_size(c.element_size))
                             .reshape(c.sizes);

    at::Tensor expected;
    ts::SlicePlan p;
    const std::string torch_error = error_kind([&] { expected = torch_result(t, c.index); });
    const std::string plan_error = error_kind([&] { p = plan(c.sizes, c.element_size, c.index); });
    // Python's torch checks steps while reading the index, before anything else; C++'s only when
    // applying it. The planner follows Python (what the Python drop-in must match).
    const bool bad_step = std::any_of(c.index.begin(), c.index.end(), [](const ts::IndexItem& i) {
      const auto* range = std::get_if<ts::IndexRange>(&i);
      return range && range->step < 1;
    });
    ASSERT_EQ(plan_error, bad_step ? std::string("ValueError") : torch_error);
    if (!torch_error.empty()) {
      ++errors;
      continue;
    }
    ++compared;
    expected = expected.contiguous();
    ASSERT_EQ(p.sizes, expected.sizes().vec());
    const uint64_t result_bytes = expected.numel() * c.element_size;
    EXPECT_EQ(p.nbytes(), result_bytes);
    empty += result_bytes == 0;
    multi_run += p.runs.size() > 1;

    // Gather the runs from the stored bytes: in bounds, coalesced, and exactly torch's result.
    const uint64_t stored_bytes = numel * c.element_size;
    const char* stored = static_cast<const char*>(t.data_ptr());
    std::string gathered;
    for (size_t i = 0; i < p.runs.size(); ++i) {
      const ts::ByteRun& run = p.runs[i];
      ASSERT_GT(run.length, 0u);
      ASSERT_LE(run.offset + run.length, stored_bytes);
      if (i > 0) EXPECT_NE(run.offset, p.runs[i - 1].offset + p.runs[i - 1].length) << i;
      gathered.append(stored + run.offset, run.length);
    }
    EXPECT_EQ(gathered, bytes_of(expected));

    bool expressible = true;
    for (const auto& item : c.index) {
      if (const auto* intervals = std::get_if<ts::Intervals>(&item)) {
        expressible = expressible && joined_count(intervals->ranges) <= 1;
      }
    }
    ASSERT_EQ(p.view.has_value(), expressible);
    if (p.view) {
      ++views;
      EXPECT_EQ(p.view->sizes, p.sizes);
      const at::Tensor view = t.as_strided(p.view->sizes, p.view->strides, p.view->offset);
      EXPECT_EQ(bytes_of(view.contiguous()), bytes_of(expected));
    }
  }
  // The mix covers what it should (counts for this seed: 7586, 414, 7227, 2171, 681).
  EXPECT_GE(compared, 7000);
  EXPECT_GE(errors, 300);
  EXPECT_GE(views, 6500);
  EXPECT_GE(compared - views, 300);
  EXPECT_GE(empty, 1500);
  EXPECT_GE(multi_run, 500);
}

TEST(SlicePlan, IntegerOutOfRangeIsIndexError) {
  auto message = error_of<c10::IndexError>([] { plan({3}, 4, {int64_t{5}}); });
  EXPECT_NE(message.find("safetensors: model.safetensors: tensor 'w': "), std::string::npos)
      << message;
  EXPECT_NE(message.find("index 5 is out of bounds for dimension 0 with size 3"), std::string::npos)
      << message;
  message = error_of<c10::IndexError>([] { plan({2, 3}, 4, {int64_t{0}, int64_t{-4}}); });
  EXPECT_NE(message.find("index -4 is out of bounds for dimension 1 with size 3"),
            std::string::npos)
      << message;
  // The dimension is the stored tensor's (torch would count the None and say 1).
  message = error_of<c10::IndexError>([] { plan({3, 4}, 4, {ts::NewAxis{}, int64_t{5}}); });
  EXPECT_NE(message.find("index 5 is out of bounds for dimension 0 with size 3"), std::string::npos)
      << message;
  message = error_of<c10::IndexError>(
      [] { plan({3}, 1, {int64_t{std::numeric_limits<int64_t>::min()}}); });
  EXPECT_NE(message.find("is out of bounds for dimension 0 with size 3"), std::string::npos)
      << message;
}

TEST(SlicePlan, StepBelowOneIsValueError) {
  for (const int64_t step : {0, -1}) {
    const auto message = error_of<c10::ValueError>([&] {
      plan({4}, 4, {ts::IndexRange{std::nullopt, std::nullopt, step}});
    });
    EXPECT_NE(message.find("safetensors: model.safetensors: tensor 'w': "), std::string::npos)
        << message;
    EXPECT_NE(message.find("step must be greater than zero"), std::string::npos) << message;
  }
}

TEST(SlicePlan, TooManyIndicesAndTwoEllipsesAreIndexErrors) {
  auto message = error_of<c10::IndexError>([] {
    plan({2, 3}, 4, {int64_t{0}, ts::IndexRange{}, int64_t{0}});
  });
  EXPECT_NE(message.find("safetensors: model.safetensors: tensor 'w': "), std::string::npos)
      << message;
  EXPECT_NE(message.find("too many indices for tensor of dimension 2"), std::string::npos)
      << message;
  // A 0-d tensor takes no integer, nor a range.
  message = error_of<c10::IndexError>([] { plan({}, 4, {int64_t{0}}); });
  EXPECT_NE(message.find("too many indices for tensor of dimension 0"), std::string::npos)
      << message;
  message = error_of<c10::IndexError>([] { plan({}, 4, {ts::IndexRange{}}); });
  EXPECT_NE(message.find("too many indices for tensor of dimension 0"), std::string::npos)
      << message;
  message = error_of<c10::IndexError>([] {
    plan({2, 3}, 4, {ts::EllipsisIndex{}, int64_t{0}, ts::EllipsisIndex{}});
  });
  EXPECT_NE(message.find("safetensors: model.safetensors: tensor 'w': "), std::string::npos)
      << message;
  EXPECT_NE(message.find("an index can only have a single ellipsis"), std::string::npos) << message;
}

TEST(SlicePlan, IntervalsOutOfBoundsAreIndexErrors) {
  for (const auto& [range, text] : std::vector<std::pair<std::pair<int64_t, int64_t>, std::string>>{
           {{2, 9}, "[2, 9)"}, {{5, 3}, "[5, 3)"}, {{-1, 2}, "[-1, 2)"}}) {
    const std::pair<int64_t, int64_t> interval = range;  // C++17 lambdas capture no bindings
    const auto message = error_of<c10::IndexError>([&] {
      plan({4, 8}, 2, {ts::IndexRange{}, ts::Intervals{{{0, 2}, interval}}});
    });
    EXPECT_NE(message.find("safetensors: model.safetensors: tensor 'w': "), std::string::npos)
        << message;
    EXPECT_NE(message.find(text), std::string::npos) << message;
    EXPECT_NE(message.find("dimension 1 with size 8"), std::string::npos) << message;
  }
  // The ends themselves are fine.
  EXPECT_EQ(plan({8}, 2, {ts::Intervals{{{8, 8}, {0, 8}}}}).sizes, std::vector<int64_t>{8});
}

TEST(SlicePlan, OverflowThrowsInsteadOfWrapping) {
  constexpr int64_t kHuge = int64_t{1} << 62;
  EXPECT_THROW(plan({kHuge, 4}, 1, {}), c10::Error);     // element count
  EXPECT_THROW(plan({kHuge}, 4, {}), c10::Error);        // byte count
  EXPECT_THROW(plan({0, kHuge, 4}, 1, {}), c10::Error);  // strides, even when empty
  EXPECT_THROW(plan({4}, 0, {}), c10::Error);            // element size
  EXPECT_THROW(plan({kHuge}, 1, {ts::Intervals{{{0, kHuge}, {0, kHuge}}}}), c10::Error);
  // Repeating intervals is fine while the result's byte count fits.
  const auto p = plan({kHuge}, 1, {ts::Intervals{{{0, kHuge}, {0, kHuge / 2}}}});
  ASSERT_EQ(p.runs.size(), 2u);
  EXPECT_EQ(p.runs[1].offset, 0u);
  EXPECT_EQ(p.nbytes(), uint64_t(kHuge) + uint64_t(kHuge / 2));
  EXPECT_FALSE(p.view.has_value());
}

TEST(SlicePlan, ExtremeBoundsAndStepsClampWithoutOverflow) {
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  const auto p = plan({5, 3}, 4, {ts::IndexRange{kMin, kMax, kMax}, int64_t{-3}});
  EXPECT_EQ(p.sizes, std::vector<int64_t>{1});
  ASSERT_EQ(p.runs.size(), 1u);
  EXPECT_EQ(p.runs[0].offset, 0u);
  EXPECT_EQ(p.runs[0].length, 4u);
  EXPECT_EQ(plan({5}, 4, {ts::IndexRange{kMax, kMin}}).sizes, std::vector<int64_t>{0});
  EXPECT_EQ(plan({5}, 4, {ts::IndexRange{-2, kMax, 2}}).sizes, std::vector<int64_t>{1});
}

TEST(SlicePlan, ColumnSliceGivesOneRunPerRow) {
  const auto p = plan({5, 8}, 4, {ts::IndexRange{}, ts::IndexRange{2, 5}});
  EXPECT_EQ(p.sizes, (std::vector<int64_t>{5, 3}));
  ASSERT_EQ(p.runs.size(), 5u);
  for (uint64_t row = 0; row < 5; ++row) {
    EXPECT_EQ(p.runs[row].offset, (row * 8 + 2) * 4);
    EXPECT_EQ(p.runs[row].length, 3u * 4);
  }
  ASSERT_TRUE(p.view.has_value());
  EXPECT_EQ(p.view->offset, 2);
  EXPECT_EQ(p.view->strides, (std::vector<int64_t>{8, 1}));
}

TEST(SlicePlan, RowSliceGivesOneRun) {
  for (const Index& index :
       {Index{ts::IndexRange{1, 4}}, Index{ts::IndexRange{1, 4}, ts::EllipsisIndex{}},
        Index{ts::IndexRange{1, 4}, ts::IndexRange{}, ts::IndexRange{-9, 9}}}) {
    const auto p = plan({6, 8, 2}, 4, index);
    EXPECT_EQ(p.sizes, (std::vector<int64_t>{3, 8, 2}));
    ASSERT_EQ(p.runs.size(), 1u);
    EXPECT_EQ(p.runs[0].offset, 1u * 16 * 4);
    EXPECT_EQ(p.runs[0].length, 3u * 16 * 4);
  }
  // An integer too, and a size-1 dimension indexed by 0 counts as whole.
  const auto row = plan({6, 1, 8}, 2, {int64_t{-2}, int64_t{0}});
  EXPECT_EQ(row.sizes, std::vector<int64_t>{8});
  ASSERT_EQ(row.runs.size(), 1u);
  EXPECT_EQ(row.runs[0].offset, 4u * 8 * 2);
  EXPECT_EQ(row.runs[0].length, 8u * 2);
}

TEST(SlicePlan, FusedQkvIntervalsGiveOneRunPerBlock) {
  // Rank 1 of 4 takes rows [2, 4) of each 8-row block of a [24, 16] bf16 qkv weight.
  constexpr int64_t kBlock = 8, kCols = 16, kShard = 2, kRank = 1;
  Ranges ranges;
  for (int64_t block = 0; block < 3; ++block) {
    ranges.emplace_back(block * kBlock + kRank * kShard, block * kBlock + (kRank + 1) * kShard);
  }
  const auto rows = plan({3 * kBlock, kCols}, 2, ts::dim_intervals(0, ranges));
  EXPECT_EQ(rows.sizes, (std::vector<int64_t>{3 * kShard, kCols}));
  ASSERT_EQ(rows.runs.size(), 3u);
  for (uint64_t block = 0; block < 3; ++block) {
    EXPECT_EQ(rows.runs[block].offset, (block * kBlock + kRank * kShard) * kCols * 2);
    EXPECT_EQ(rows.runs[block].length, uint64_t(kShard * kCols * 2));
  }
  EXPECT_FALSE(rows.view.has_value());
  // Along the columns: one run per block per row.
  const Index by_column = ts::dim_intervals(1, ranges);
  ASSERT_EQ(by_column.size(), 2u);
  EXPECT_TRUE(std::holds_alternative<ts::IndexRange>(by_column[0]));
  const auto columns = plan({kCols, 3 * kBlock}, 2, by_column);
  EXPECT_EQ(columns.sizes, (std::vector<int64_t>{kCols, 3 * kShard}));
  EXPECT_EQ(columns.runs.size(), 3u * kCols);
}

TEST(SlicePlan, OnlyExactlyAdjacentRunsCoalesce) {
  // Row r's [3, 4) ends where row r+1's [0, 1) begins.
  const auto p = plan({2, 4}, 1, ts::dim_intervals(1, {{0, 1}, {3, 4}}));
  ASSERT_EQ(p.runs.size(), 3u);
  EXPECT_EQ(p.runs[0].offset, 0u);
  EXPECT_EQ(p.runs[0].length, 1u);
  EXPECT_EQ(p.runs[1].offset, 3u);
  EXPECT_EQ(p.runs[1].length, 2u);
  EXPECT_EQ(p.runs[2].offset, 7u);
  EXPECT_EQ(p.runs[2].length, 1u);
  // Touching intervals join into one, which a view expresses.
  const auto joined = plan({2, 4}, 1, ts::dim_intervals(1, {{0, 1}, {1, 1}, {1, 3}}));
  EXPECT_EQ(joined.runs.size(), 2u);
  ASSERT_TRUE(joined.view.has_value());
  EXPECT_EQ(joined.view->sizes, (std::vector<int64_t>{2, 3}));
  // A step leaves gaps: one run per selected row.
  const auto stepped = plan({6, 4}, 4, {ts::IndexRange{std::nullopt, std::nullopt, 2}});
  ASSERT_EQ(stepped.runs.size(), 3u);
  EXPECT_EQ(stepped.runs[2].offset, 4u * 4 * 4);  // row 4
  EXPECT_EQ(stepped.view->strides, (std::vector<int64_t>{8, 1}));
}

TEST(SlicePlan, BoolsActAsTorchDoes) {
  const Index true_slice_true{true, ts::IndexRange{}, true};
  EXPECT_EQ(plan({3, 4}, 4, true_slice_true).sizes, (std::vector<int64_t>{1, 3, 4}));
  const auto false_true = plan({3, 4}, 4, {false, true});
  EXPECT_EQ(false_true.sizes, (std::vector<int64_t>{0, 3, 4}));
  EXPECT_TRUE(false_true.runs.empty());
  EXPECT_EQ(plan({3, 4}, 4, {true, int64_t{0}, true}).sizes, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(plan({3, 4}, 4, {ts::IndexRange{}, true, ts::IndexRange{}, false}).sizes,
            (std::vector<int64_t>{0, 3, 4}));
}

TEST(SlicePlan, ZeroDimAndEmptyResults) {
  for (const Index& index : {Index{}, Index{ts::EllipsisIndex{}}, Index{ts::NewAxis{}, true}}) {
    const auto p = plan({}, 8, index);
    ASSERT_EQ(p.runs.size(), 1u);
    EXPECT_EQ(p.runs[0].offset, 0u);
    EXPECT_EQ(p.runs[0].length, 8u);
  }
  const auto none = plan({}, 8, {false});
  EXPECT_EQ(none.sizes, std::vector<int64_t>{0});
  EXPECT_TRUE(none.runs.empty());
  EXPECT_EQ(none.nbytes(), 0u);
  // Starts past the end select nothing; the view's offset stays in bounds.
  const auto past =
      plan({2, 3}, 4, {ts::IndexRange{5, std::nullopt}, ts::IndexRange{2, std::nullopt}});
  EXPECT_EQ(past.sizes, (std::vector<int64_t>{0, 1}));
  EXPECT_TRUE(past.runs.empty());
  ASSERT_TRUE(past.view.has_value());
  EXPECT_EQ(past.view->offset, 0);
}

TEST(SlicePlan, MillionRowsColumnSlice) {
  constexpr int64_t kRows = 1'000'000;
  const auto p = plan({kRows, 4}, 4, {ts::IndexRange{}, ts::IndexRange{1, 2}});
  ASSERT_EQ(p.runs.size(), size_t(kRows));
  EXPECT_EQ(p.runs[0].offset, 4u);
  EXPECT_EQ(p.runs[kRows - 1].offset, uint64_t(kRows - 1) * 16 + 4);
  EXPECT_EQ(p.runs[kRows - 1].length, 4u);
  EXPECT_EQ(p.nbytes(), uint64_t(kRows) * 4);
}
