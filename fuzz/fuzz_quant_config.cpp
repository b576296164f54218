// libFuzzer target over the quantization config and metadata readers (quant/metadata.cpp,
// quant/detect.cpp). Each input is a JSON text used three ways, chosen by its first byte:
//   - as config.json (or hf_quant_config.json) beside a file holding small weights of every
//     scheme (GPTQ, AWQ-shaped, FP8, pack-quantized, MXFP4, a 0-dim FP8 weight): read_config,
//     find_quantized, DenseView (every tensor), dequantize;
//   - as our metadata entry, under the namespaced key or under 0.2's plain key, of that file;
//   - directly: parse_metadata_json / is_metadata_json, and for an accepted document the round
//     trip metadata_json -> parse_metadata_json, which must give the same layouts back.
// c10::Error is the expected outcome for bad input, with a message that starts "safetensors: "
// and has no doubled separator (": :"); a crash, a sanitizer report, another exception or a
// broken round trip is a finding.
//
//   fuzz_quant_config -max_len=8192 corpus_dir fuzz/seeds_quant   (any working directory)
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include "torch_safetensors/quant.h"
#include "torch_safetensors/safetensors.h"

namespace st = torch::safetensors;
namespace quant = torch::safetensors::quant;

namespace {

[[noreturn]] void finding(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "FUZZ FINDING: %s %s\n", what, detail.c_str());
  std::abort();
}

std::string g_dir;
st::NamedTensors g_tensors;

void set_up() {
  char pattern[] = "/tmp/fuzz_quant_XXXXXX";
  if (!::mkdtemp(pattern)) finding("mkdtemp failed");
  g_dir = pattern;
  torch::manual_seed(0);
  auto add = [](const quant::Quantized& q) {
    for (const auto& [name, tensor] : q.tensors) g_tensors.emplace_back(name, tensor);
  };
  quant::QuantizeOptions options;
  options.scheme = quant::Scheme::kGptq;
  options.group_size = 16;
  add(quant::quantize(torch::randn({8, 32}), "g.weight", options));
  options.scheme = quant::Scheme::kAwq;
  add(quant::quantize(torch::randn({8, 32}), "a.weight", options));
  options.scheme = quant::Scheme::kPackQuantized;
  add(quant::quantize(torch::randn({8, 32}), "p.weight", options));
  options.scheme = quant::Scheme::kFp8;
  options.block_size = {4, 16};
  add(quant::quantize(torch::randn({8, 32}), "f.weight", options));
  options.scheme = quant::Scheme::kMxfp4;
  add(quant::quantize(torch::randn({2, 64}), "m", options));
  g_tensors.emplace_back("z.weight", torch::tensor(1.5f).to(at::kFloat8_e4m3fn));
  g_tensors.emplace_back("z.weight_scale", torch::tensor(2.0f));
  g_tensors.emplace_back("norm.weight", torch::ones({8}));
}

void write(const std::string& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), std::streamsize(text.size()));
  if (!out) finding("cannot write", path);
}

template <typename F>
void expect_clean(F&& f, const char* what) {
  try {
    f();
  } catch (const c10::Error& error) {
    const std::string message = error.what_without_backtrace();
    if (message.rfind("safetensors: ", 0) != 0) finding("error without the prefix", message);
    // A doubled separator of ours; what the input holds is quoted ('...') and may be anything.
    std::string unquoted;
    bool quoted = false;
    for (char c : message) {
      if (c == '\'') quoted = !quoted;
      if (!quoted) unquoted += c;
    }
    if (unquoted.find(": :") != std::string::npos) finding("doubled separator", message);
  }
  (void)what;
}

void read_everything(const std::string& path) {
  const st::Checkpoint checkpoint(path);
  const quant::QuantConfig config = quant::read_config(checkpoint);
  quant::find_quantized(checkpoint, config);
  const quant::DenseView dense(checkpoint, config, at::kFloat, c10::kCPU);
  for (const std::string& key : dense.keys()) {
    const at::Tensor t = dense.tensor(key);
    if (!t.defined()) finding("undefined tensor", key);
  }
}

void same_layouts(const std::map<std::string, quant::QuantizedWeight>& a,
                  const std::map<std::string, quant::QuantizedWeight>& b) {
  if (a.size() != b.size()) finding("round trip lost weights");
  for (const auto& [name, w] : a) {
    const auto found = b.find(name);
    if (found == b.end()) finding("round trip lost", name);
    const quant::QuantizedWeight& v = found->second;
    if (v.scheme != w.scheme || v.bits != w.bits || v.group_size != w.group_size ||
        v.block_size != w.block_size || v.shape != w.shape || v.tensors != w.tensors ||
        (w.tensors.count("zero_point") && v.zero_point_minus_one != w.zero_point_minus_one)) {
      finding("round trip changed", name);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool ready = (set_up(), true);
  (void)ready;
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string_view json(reinterpret_cast<const char*>(data) + 1, size - 1);

  expect_clean(
      [&] {
        quant::is_metadata_json(json);
        const auto parsed = quant::parse_metadata_json(json, "fuzz");
        std::vector<quant::QuantizedWeight> weights;
        for (const auto& [name, weight] : parsed) weights.push_back(weight);
        same_layouts(parsed, quant::parse_metadata_json(quant::metadata_json(weights), "again"));
      },
      "parse");

  const std::string file = g_dir + "/m.safetensors";
  ::unlink((g_dir + "/config.json").c_str());
  ::unlink((g_dir + "/hf_quant_config.json").c_str());
  if (mode % 4 < 2) {
    expect_clean([&] { st::save(g_tensors, file); }, "save");
    write(g_dir + (mode % 2 ? "/hf_quant_config.json" : "/config.json"), json);
  } else {
    const std::string key(mode % 2 ? quant::kLegacyMetadataKey : quant::kMetadataKey);
    // Metadata with control characters is refused on save (stricter than the reference,
    // header.h), with an error quoting the input: nothing further to read.
    if (st::find_control_character(json, st::HeaderText::kMetadataValue) != std::string::npos) {
      bool refused = false;
      try {
        st::save(g_tensors, file, st::Metadata{{key, std::string(json)}});
      } catch (const c10::Error&) {
        refused = true;
      }
      if (!refused) finding("metadata with control characters was saved", std::string(json));
      return 0;
    }
    expect_clean(
        [&] {
          st::save(g_tensors, file, st::Metadata{{key, std::string(json)}});
        },
        "save");
  }
  expect_clean([&] { read_everything(file); }, "read");
  return 0;
}
