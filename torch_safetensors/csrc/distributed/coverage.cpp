// DCP chunk placement and exact coverage (coverage.h).
#include "distributed/coverage.h"

#include <algorithm>
#include <numeric>
#include <sstream>

#include <simdjson.h>

#include "check.h"
#include "format/checked_json.h"

namespace torch::safetensors::distributed {
namespace {

std::string list(const std::vector<int64_t>& values) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  out << ']';
  return out.str();
}

// "[o0, o1] of size [s0, s1] in <file>", for messages.
std::string describe(const StoredChunk& chunk) {
  return "the chunk at offsets " + list(chunk.offsets) + " of size " + list(chunk.sizes) +
         " in " + chunk.file;
}

bool overlap(const StoredChunk& a, const StoredChunk& b) {
  for (size_t d = 0; d < a.offsets.size(); ++d) {
    // Ends fit int64 (checked before): [a0, a1) and [b0, b1) intersect iff max(begins) < min(ends).
    const int64_t begin = std::max(a.offsets[d], b.offsets[d]);
    const int64_t end = std::min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d]);
    if (begin >= end) return false;
  }
  return true;
}

}  // namespace

std::map<std::string, std::vector<int64_t>> parse_sharding_info(std::string_view json,
                                                                std::string_view file) {
  const std::string where =
      std::string(file) + ": __metadata__['" + std::string(kShardingInfoKey) + "']";
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  const auto error = parser.parse(json.data(), json.size()).get(root);
  TS_CHECK(!error, where, "is not valid JSON: ", simdjson::error_message(error));
  simdjson::dom::object tensors;
  TS_CHECK(!root.get_object().get(tensors), where, "must be an object of tensor -> {\"",
           kSavedOffsetsKey, "\": [offsets]}, found a ", format::json_kind(root));
  std::map<std::string, std::vector<int64_t>> out;
  for (auto entry : tensors) {
    const std::string name(entry.key);
    const std::string inner = where + ": tensor '" + name + "'";
    TS_CHECK(!out.count(name), where, "tensor '", name, "' is listed twice");
    simdjson::dom::object fields;
    simdjson::dom::element offsets_value;
    simdjson::dom::array offsets;
    TS_CHECK(!entry.value.get_object().get(fields) &&
                 !fields[kSavedOffsetsKey].get(offsets_value) &&
                 !offsets_value.get_array().get(offsets),
             inner, "must be {\"", kSavedOffsetsKey, "\": [offsets]}");
    std::vector<int64_t> values;
    for (simdjson::dom::element item : offsets) {
      TS_CHECK(values.size() < kMaxChunkDims, inner, "'", kSavedOffsetsKey, "' has more than ",
               kMaxChunkDims, " offsets");
      values.push_back(format::checked_integer(item, inner, kSavedOffsetsKey, 0, INT64_MAX));
    }
    out.emplace(name, std::move(values));
  }
  return out;
}

std::vector<int64_t> check_coverage(std::string_view tensor,
                                    const std::vector<StoredChunk>& chunks) {
  const std::string what = "tensor '" + std::string(tensor) + "'";
  TS_CHECK(!chunks.empty(), "DCP checkpoint", what, " has no stored chunk");
  const size_t rank = chunks.front().sizes.size();
  std::vector<int64_t> shape(rank, 0);
  for (const StoredChunk& chunk : chunks) {
    TS_CHECK(chunk.sizes.size() == rank, chunk.file, what, ": ", describe(chunk), " has ",
             chunk.sizes.size(), " dimensions, but ", describe(chunks.front()), " has ", rank);
    TS_CHECK(chunk.offsets.size() == rank, chunk.file, what, " has ", rank,
             " dimensions, but its saved_offsets ", list(chunk.offsets), " has ",
             chunk.offsets.size());
    for (size_t d = 0; d < rank; ++d) {
      int64_t end = 0;
      TS_CHECK(chunk.offsets[d] >= 0 && chunk.sizes[d] >= 0 &&
                   !__builtin_add_overflow(chunk.offsets[d], chunk.sizes[d], &end),
               chunk.file, what, ": ", describe(chunk), " does not fit 64-bit sizes in dimension ",
               d);
      shape[d] = std::max(shape[d], end);
    }
  }
  // Element counts in 128 bits: a sum of counts that each fit 64 bits cannot overflow them.
  auto count = [](const std::vector<int64_t>& sizes) {
    unsigned __int128 n = 1;
    for (int64_t s : sizes) {
      n *= uint64_t(s);
      if (n > uint64_t(INT64_MAX)) return (unsigned __int128)(uint64_t(INT64_MAX)) + 1;
    }
    return n;
  };
  const unsigned __int128 total = count(shape);
  TS_CHECK(total <= uint64_t(INT64_MAX), "DCP checkpoint", what, ": its shape ", list(shape),
           " has more elements than 64-bit sizes can count");
  // Chunks sorted by their first offset, so that the overlap scan stops at the first chunk that
  // starts past the current one's end in dimension 0.
  std::vector<size_t> order(chunks.size());
  std::iota(order.begin(), order.end(), 0);
  if (rank > 0) {
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return chunks[a].offsets[0] < chunks[b].offsets[0];
    });
  }
  unsigned __int128 covered = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const StoredChunk& a = chunks[order[i]];
    covered += count(a.sizes);
    if (count(a.sizes) == 0) continue;
    for (size_t j = i + 1; j < order.size(); ++j) {
      const StoredChunk& b = chunks[order[j]];
      if (rank > 0 && b.offsets[0] >= a.offsets[0] + a.sizes[0]) break;
      TS_CHECK(!overlap(a, b), b.file, what, ": ", describe(b), " overlaps ", describe(a),
               " (each element must be stored once)");
    }
  }
  TS_CHECK(covered == total, chunks.front().file, what, ": its ", chunks.size(),
           " stored chunks cover ", uint64_t(covered), " of the ", uint64_t(total),
           " elements of its shape ", list(shape), " (a chunk is missing)");
  return shape;
}

}  // namespace torch::safetensors::distributed
