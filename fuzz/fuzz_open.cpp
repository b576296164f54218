// libFuzzer target over the whole open-and-validate path.
//
// Each input is treated as a complete .safetensors file and goes through:
//   1. the format layer (parse_header_length + parse_header), with invariants of a valid header;
//   2. from_bytes (in-memory path);
//   3. File on a real file (a memfd, reopened through /proc/self/fd) and on a memory source, with
//      both backends: every tensor, raw bytes, slices on every dimension and intervals (the slice
//      planner) against torch's own indexing, tensors(), check_intact();
//   4. for files that load: a save round trip (to_bytes of the raw tensors) that must
//      parse back to the same names, dtypes, shapes and bytes;
//   5. for files that load: restoring them into optimizers (the optimizer metadata's reader);
//   6. the header's JSON text through simdjson, as an oracle for our own JSON reader: it must
//      call "not valid JSON" exactly what simdjson does, up to the documented differences
//      (our 128-level nesting limit; numbers at the edge of a double's range).
// c10::Error is the expected outcome for bad input; anything else (a crash, a sanitizer report, a
// different exception, a broken invariant, or the two load paths disagreeing) is a finding.
//
//   fuzz_open -max_len=65536 -timeout=10 corpus_dir fuzz/seeds
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include <ATen/Parallel.h>
#include <ATen/TensorIndexing.h>
#include <c10/util/Exception.h>
#include <simdjson.h>
#include <torch/optim/adam.h>
#include <torch/optim/lbfgs.h>

#include "torch_safetensors/all.h"

#ifndef TS_FUZZ_NO_CUSTOM_MUTATOR
#include "json_mutator.h"
#endif

namespace ts = torch::safetensors;

namespace {

// A broken invariant: print it and abort so libFuzzer saves the input.
[[noreturn]] void finding(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "FUZZ FINDING: %s %.*s\n", what, int(detail.size()), detail.data());
  std::abort();
}
#define FUZZ_ASSERT(cond, ...)                                       \
  do {                                                               \
    if (!(cond)) finding("assertion failed: " #cond, ##__VA_ARGS__); \
  } while (0)

int g_memfd = -1;
std::string g_path;

// Errors must come from our checks (they name the file), never raw from torch or the OS layer.
void check_error(const c10::Error& e, std::string_view source) {
  const std::string message = e.what_without_backtrace();
  if (message.find("safetensors: ") == std::string::npos ||
      message.find(std::string(source)) == std::string::npos) {
    finding("error does not name the file", message);
  }
}

void check_header_invariants(const ts::Header& header, uint64_t file_size) {
  uint64_t expected = 0;
  for (const auto& info : header.tensors()) {
    FUZZ_ASSERT(info.begin == expected, info.name);
    FUZZ_ASSERT(info.begin <= info.end, info.name);
    FUZZ_ASSERT(ts::tensor_nbytes(info.dtype, info.shape, "<fuzz>", info.name) == info.nbytes(),
                info.name);
    FUZZ_ASSERT(header.find(info.name) == &info, info.name);
    for (int64_t d : info.shape) FUZZ_ASSERT(d >= 0, info.name);
    expected = info.end;
  }
  FUZZ_ASSERT(header.data_offset() + header.data_size() == file_size);
}

// Bytes of a CPU tensor, in logical order.
std::string bytes_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  if (c.nbytes() == 0) return {};
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

bool sliceable(const at::Tensor& t) {
  // Packed and sub-byte types have no indexing kernels; slicing them is not part of the contract.
  const auto type = t.scalar_type();
  return t.dim() > 0 && type != c10::ScalarType::Float4_e2m1fn_x2;
}

// slice() is `tensor(name).index(indices)`: indexing errors are torch's (as for any tensor), but
// when both succeed the planned read must give the same bytes, on every dimension, as must
// slice_intervals against concatenated narrows.
// Torch computes the expected bytes on an integer view of the same element size: copies of bool
// (and float) tensors may change bit patterns (a stored bool byte of 0x4f comes out as 0x01),
// while our reads must return the stored bytes exactly.
at::Tensor as_bits(const at::Tensor& t) {
  return t.view(t.element_size() == 1   ? at::kByte
                : t.element_size() == 2 ? at::kShort
                : t.element_size() == 4 ? at::kInt
                                        : at::kLong);
}

void check_slices(const ts::File& file, const std::string& name, const at::Tensor& stored) {
  const at::Tensor t = as_bits(stored);
  using at::indexing::Ellipsis;
  using at::indexing::Slice;
  using at::indexing::TensorIndex;
  std::vector<std::vector<TensorIndex>> cases = {{Ellipsis, Slice(-2, 5)}};
  for (int64_t d = 0; d < std::min<int64_t>(t.dim(), 4); ++d) {
    const std::vector<TensorIndex> before(size_t(d), TensorIndex{Slice()});
    cases.push_back(before);
    cases.back().push_back(Slice(1, c10::nullopt, 2));
    if (t.size(d) > 0) {
      cases.push_back(before);
      cases.back().push_back(TensorIndex(t.size(d) - 1));
    }
  }
  for (const auto& indices : cases) {
    std::string expected;
    try {
      expected = bytes_of(t.index(indices));
    } catch (const c10::Error&) {
      continue;  // torch cannot index this tensor (e.g. strides of huge zero-size shapes)
    }
    FUZZ_ASSERT(bytes_of(as_bits(file.slice(name, indices))) == expected, name);
  }
  const int64_t last = t.dim() - 1, size = t.size(last);
  try {
    const at::Tensor expected =
        at::cat({t.narrow(last, size / 2, size - size / 2), t.narrow(last, 0, size / 2)}, last);
    const at::Tensor got = file.slice_intervals(name, last, {{size / 2, size}, {0, size / 2}});
    FUZZ_ASSERT(bytes_of(as_bits(got)) == bytes_of(expected), name);
  } catch (const c10::Error&) {
    // as above: shapes torch itself cannot concatenate
  }
}

// `source` nullptr: the file at g_path; else that source (bytes in memory).
void exercise_file(std::string_view data, ts::Backend backend, bool expect_valid,
                   std::shared_ptr<const ts::Source> source = nullptr) {
  const std::string where = source ? source->name() : g_path;
  ts::File file = [&] {
    try {
      const auto options = ts::LoadOptions().with_backend(backend);
      return source ? ts::File(source, options) : ts::File(g_path, options);
    } catch (const c10::Error& e) {
      check_error(e, where);
      FUZZ_ASSERT(!expect_valid, "File rejected what from_bytes accepted");
      throw;
    }
  }();
  FUZZ_ASSERT(expect_valid, "File accepted what from_bytes rejected");
  check_header_invariants(file.header(), data.size());
  for (const auto& name : file.keys()) {
    const ts::TensorInfo& info = file.info(name);
    const std::string_view stored =
        data.substr(file.header().data_offset() + info.begin, info.nbytes());
    ts::RawTensor raw = file.raw(name);
    FUZZ_ASSERT(raw.dtype == info.dtype && raw.shape == c10::IntArrayRef(info.shape).vec(), name);
    FUZZ_ASSERT(bytes_of(raw.bytes) == stored, name);
    at::Tensor t;
    try {
      t = file.tensor(name);
    } catch (const c10::Error& e) {
      // Some headers are valid but have no torch tensor (e.g. shapes whose strides overflow).
      check_error(e, where);
      continue;
    }
    FUZZ_ASSERT(t.nbytes() == info.nbytes(), name);
    FUZZ_ASSERT(bytes_of(t) == stored, name);
    if (sliceable(t)) check_slices(file, name, t);
  }
  FUZZ_ASSERT(file.tensors().size() == file.size());
  file.check_intact();
}

// Our JSON reader against simdjson's, on the header text. `ours` is the message of our error
// ("" when the header parsed).
void compare_with_simdjson(std::string_view json, const std::string& ours) {
  simdjson::dom::parser parser;
  const simdjson::padded_string padded(json.data(), json.size());
  const simdjson::error_code theirs = parser.parse(padded).error();
  // Our syntax errors, and only those, start like this (a tensor name may say anything).
  const std::string prefix = "safetensors: <fuzz>: header is not valid JSON: ";
  const bool ours_json_error = ours.rfind(prefix, 0) == 0;
  const std::string reason = ours_json_error ? ours.substr(prefix.size()) : "";
  // simdjson refuses some numbers a double can still hold approximately (and we accept), and
  // nests up to 1024 levels where we stop at 128, as serde_json does.
  const bool number_edge =
      theirs == simdjson::NUMBER_ERROR || reason.rfind("number out of range", 0) == 0;
  const bool depth_edge = reason.rfind("nesting deeper than 128", 0) == 0;
  if (theirs != simdjson::SUCCESS && !ours_json_error && !number_edge) {
    finding("simdjson rejects JSON that we read", simdjson::error_message(theirs));
  }
  if (theirs == simdjson::SUCCESS && ours_json_error && !number_edge && !depth_edge) {
    finding("we reject JSON that simdjson reads", ours);
  }
}

// Files that load must survive a save round trip unchanged.
void round_trip(std::string_view data) {
  const ts::Header header = [&] {
    const uint64_t n = ts::parse_header_length(data.substr(0, 8), data.size(), "<fuzz>");
    return ts::parse_header(data.substr(8, n), data.size(), "<fuzz>");
  }();
  std::vector<ts::SaveEntry> entries;
  for (const auto& info : header.tensors()) {
    ts::RawTensor raw;
    raw.dtype = info.dtype;
    raw.shape = c10::IntArrayRef(info.shape).vec();
    raw.bytes = at::empty({int64_t(info.nbytes())}, at::kByte);
    if (info.nbytes() > 0) {
      std::memcpy(raw.bytes.data_ptr(), data.data() + header.data_offset() + info.begin,
                  info.nbytes());
    }
    entries.emplace_back(std::string(info.name), std::move(raw));
  }
  // A file may load with names or metadata that save refuses (control characters: stricter than
  // the reference, header.h); then the save must refuse with a ValueError, and nothing else.
  bool refused_text = false;
  for (const auto& info : header.tensors()) {
    refused_text |=
        ts::find_control_character(info.name, ts::HeaderText::kName) != std::string_view::npos;
  }
  if (header.metadata()) {
    for (const auto& [key, value] : *header.metadata()) {
      refused_text |=
          ts::find_control_character(key, ts::HeaderText::kName) != std::string_view::npos ||
          ts::find_control_character(value, ts::HeaderText::kMetadataValue) !=
              std::string_view::npos;
    }
  }
  if (refused_text) {
    bool value_error = false;
    try {
      ts::to_bytes(entries, header.metadata());
    } catch (const c10::ValueError&) {
      value_error = true;
    }
    FUZZ_ASSERT(value_error, "a name or metadata with control characters was saved");
    return;
  }
  const std::string saved = ts::to_bytes(entries, header.metadata());
  const uint64_t n = ts::parse_header_length(saved.substr(0, 8), saved.size(), "<saved>");
  const ts::Header again =
      ts::parse_header(std::string_view(saved).substr(8, n), saved.size(), "<saved>");
  FUZZ_ASSERT(again.tensors().size() == header.tensors().size());
  FUZZ_ASSERT(again.metadata() == header.metadata());
  for (const auto& info : again.tensors()) {
    const ts::TensorInfo* before = header.find(info.name);
    FUZZ_ASSERT(before != nullptr, info.name);
    FUZZ_ASSERT(before->dtype == info.dtype && before->shape == info.shape, info.name);
    FUZZ_ASSERT(std::string_view(saved).substr(again.data_offset() + info.begin, info.nbytes()) ==
                    data.substr(header.data_offset() + before->begin, before->nbytes()),
                info.name);
  }
}

// Restores the file at g_path into an Adam and an LBFGS optimizer over parameters of 4 and 2
// floats: anything but a c10::Error naming the file is a finding.
void restore_optimizers() {
  std::vector<at::Tensor> params = {at::zeros({4}), at::zeros({2})};
  torch::optim::Adam adam(params);
  torch::optim::LBFGS lbfgs(params);
  for (torch::optim::Optimizer* optimizer : {static_cast<torch::optim::Optimizer*>(&adam),
                                             static_cast<torch::optim::Optimizer*>(&lbfgs)}) {
    try {
      ts::restore_optimizer(*optimizer, ts::File(g_path));
    } catch (const c10::Error& e) {
      check_error(e, g_path);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);  // deterministic, and keeps OpenMP out of the picture
  g_memfd = memfd_create("fuzz_open", MFD_CLOEXEC);
  if (g_memfd < 0) {
    std::perror("memfd_create");
    std::abort();
  }
  g_path = "/proc/self/fd/" + std::to_string(g_memfd);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  const std::string_view data(reinterpret_cast<const char*>(bytes), size);

  // 1 + 2: the format layer and the in-memory path agree on validity.
  bool valid = false;
  size_t tensor_count = 0;
  std::optional<std::string_view> json;  // the header text, once its length checks out
  std::string error;
  try {
    const uint64_t n = ts::parse_header_length(data.substr(0, 8), size, "<fuzz>");
    json = data.substr(8, n);
    const ts::Header header = ts::parse_header(*json, size, "<fuzz>");
    check_header_invariants(header, size);
    valid = true;
    tensor_count = header.tensors().size();
  } catch (const c10::Error& e) {
    check_error(e, "<fuzz>");
    error = e.what_without_backtrace();
  }
  if (json) compare_with_simdjson(*json, valid ? "" : error);
  try {
    const ts::TensorDict loaded = ts::from_bytes(data);
    FUZZ_ASSERT(valid, "from_bytes accepted what parse_header rejected");
    FUZZ_ASSERT(loaded.size() == tensor_count);
  } catch (const c10::Error& e) {
    check_error(e, "<bytes>");
    // Valid headers whose tensors torch cannot represent fail here too; only that is allowed.
  }

  // 3: the file path, both backends.
  if (ftruncate(g_memfd, 0) != 0 || pwrite(g_memfd, bytes, size, 0) != ssize_t(size)) {
    std::perror("memfd write");
    std::abort();
  }
  for (ts::Backend backend : {ts::Backend::kPread, ts::Backend::kMmap}) {
    try {
      exercise_file(data, backend, valid);
    } catch (const c10::Error& e) {
      check_error(e, g_path);
    }
  }
  // 3b: the same bytes as a source in memory (views with kMmap, copies with kPread).
  const auto memory = ts::memory_source(std::string(data), "<memory>");
  for (ts::Backend backend : {ts::Backend::kPread, ts::Backend::kMmap}) {
    try {
      exercise_file(data, backend, valid, memory);
    } catch (const c10::Error& e) {
      check_error(e, "<memory>");
    }
  }

  // 4: round trip.
  if (valid) round_trip(data);

  // 5: the optimizer metadata's reader (optim.h), on every file that opens.
  if (valid) restore_optimizers();
  return 0;
}
