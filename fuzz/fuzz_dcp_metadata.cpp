// libFuzzer target over DCP sharding metadata and the chunk coverage check (distributed/
// coverage.h). An input is the __metadata__["DCP_SHARDING_INFO"] of several files, separated by
// 0xFF bytes (never part of UTF-8 JSON): {"<tensor>": {"saved_offsets": [...], "sizes": [...]}}.
// "sizes" is this harness's own field (the stored shape a header would give; 1s if absent);
// parse_sharding_info ignores it. Every tensor's chunks then go through check_coverage, whose
// verdict is compared with a brute-force count of every element of the global shape whenever
// that shape is small: accepted must mean each element covered exactly once, refused must mean
// some element is not. c10::Error naming the file (parsing) or the tensor (coverage) is the
// expected outcome for bad input; a crash, a sanitizer report, another exception, an unnamed
// error or a wrong verdict is a finding.
//
//   fuzz_dcp_metadata -max_len=4096 corpus_dir fuzz/seeds_dcp
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <c10/util/Exception.h>
#include <simdjson.h>

#include "distributed/coverage.h"

namespace dist = torch::safetensors::distributed;

namespace {

[[noreturn]] void finding(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "FUZZ FINDING: %s %s\n", what, detail.c_str());
  std::abort();
}

// The harness's "sizes" of each tensor in `doc` (not checked by the library: any int64 >= 0).
std::map<std::string, std::vector<int64_t>> sizes_of(std::string_view doc) {
  std::map<std::string, std::vector<int64_t>> out;
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  simdjson::dom::object tensors;
  if (parser.parse(doc.data(), doc.size()).get(root) || root.get_object().get(tensors)) return out;
  for (auto entry : tensors) {
    simdjson::dom::array sizes;
    if (entry.value["sizes"].get_array().get(sizes)) continue;
    std::vector<int64_t> values;
    for (simdjson::dom::element item : sizes) {
      int64_t value = 0;
      values.push_back(!item.get_int64().get(value) && value >= 0 ? value : 1);
    }
    out[std::string(entry.key)] = std::move(values);
  }
  return out;
}

// Whether `chunks` tile their bounding box exactly once, counted element by element; nullopt if
// the box is too large to count (or the chunks are malformed in a way check_coverage must refuse,
// reported as false).
std::optional<bool> brute_force(const std::vector<dist::StoredChunk>& chunks) {
  const size_t rank = chunks.front().sizes.size();
  std::vector<int64_t> shape(rank, 0);
  for (const auto& chunk : chunks) {
    if (chunk.sizes.size() != rank || chunk.offsets.size() != rank) return false;
    for (size_t d = 0; d < rank; ++d) {
      int64_t end = 0;
      if (__builtin_add_overflow(chunk.offsets[d], chunk.sizes[d], &end)) return false;
      shape[d] = std::max(shape[d], end);
    }
  }
  uint64_t total = 1;
  for (int64_t s : shape) {
    if (s > (1 << 16) || (total *= uint64_t(s)) > (1 << 16)) return std::nullopt;
  }
  std::vector<uint32_t> count(total, 0);
  uint64_t visited = 0;
  for (const auto& chunk : chunks) {
    uint64_t volume = 1;
    for (int64_t s : chunk.sizes) volume *= uint64_t(s);
    if ((visited += volume) > (1 << 20)) return std::nullopt;
    std::vector<int64_t> at(rank, 0);
    for (uint64_t k = 0; k < volume; ++k) {
      uint64_t flat = 0;
      for (size_t d = 0; d < rank; ++d) {
        flat = flat * uint64_t(shape[d]) + uint64_t(chunk.offsets[d] + at[d]);
      }
      ++count[flat];
      for (size_t d = rank; d-- > 0;) {
        if (++at[d] < chunk.sizes[d]) break;
        at[d] = 0;
      }
    }
  }
  for (uint32_t c : count) {
    if (c != 1) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::map<std::string, std::vector<dist::StoredChunk>> chunks;
  size_t begin = 0;
  for (int file_index = 0; begin <= input.size() && file_index < 16; ++file_index) {
    size_t end = input.find('\xff', begin);
    if (end == std::string_view::npos) end = input.size();
    const std::string_view doc = input.substr(begin, end - begin);
    begin = end + 1;
    const std::string file = "f" + std::to_string(file_index) + ".safetensors";
    std::map<std::string, std::vector<int64_t>> offsets;
    try {
      offsets = dist::parse_sharding_info(doc, file);
    } catch (const c10::Error& error) {
      const std::string message = error.what_without_backtrace();
      if (message.find(file) == std::string::npos) finding("error without the file", message);
      continue;
    }
    const auto sizes = sizes_of(doc);
    for (auto& [name, values] : offsets) {
      for (int64_t v : values) {
        if (v < 0) finding("negative offset accepted", name);
      }
      const auto found = sizes.find(name);
      std::vector<int64_t> shape =
          found != sizes.end() ? found->second : std::vector<int64_t>(values.size(), 1);
      chunks[name].push_back({file, std::move(values), std::move(shape)});
    }
  }
  for (const auto& [name, list] : chunks) {
    bool accepted = false;
    try {
      const std::vector<int64_t> shape = dist::check_coverage(name, list);
      accepted = true;
      for (const auto& chunk : list) {
        for (size_t d = 0; d < shape.size(); ++d) {
          if (chunk.offsets[d] + chunk.sizes[d] > shape[d]) finding("chunk outside its shape", name);
        }
      }
    } catch (const c10::Error& error) {
      const std::string message = error.what_without_backtrace();
      if (message.find("tensor '" + name + "'") == std::string::npos) {
        finding("error without the tensor", message);
      }
    }
    const auto expected = brute_force(list);
    if (expected && *expected != accepted) {
      finding(accepted ? "accepted a gap or an overlap" : "refused an exact cover", name);
    }
  }
  return 0;
}
