// The main demo: build a small transformer-style torch::nn::Module, save it as safetensors, load
// it back zero-copy into a fresh module, and inspect the file: a table of its tensors and timings.
//
//   demo [path]   (default: ./demo_model.safetensors)
#include <chrono>
#include <cstdio>
#include <iostream>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

namespace st = torch::safetensors;

// A small decoder-style stack: token embedding, N blocks of (norm, attention projections, MLP),
// final norm and an output head tied to the embedding, in bfloat16 like real checkpoints.
struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(int64_t d) {
    norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    qkv = register_module("qkv", torch::nn::Linear(d, 3 * d));
    proj = register_module("proj", torch::nn::Linear(d, d));
    norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    up = register_module("up", torch::nn::Linear(d, 4 * d));
    down = register_module("down", torch::nn::Linear(4 * d, d));
  }
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr}, up{nullptr}, down{nullptr};
};
TORCH_MODULE(Block);

struct TinyLMImpl : torch::nn::Module {
  TinyLMImpl(int64_t vocab, int64_t d, int64_t layers) {
    embed = register_module("embed", torch::nn::Embedding(vocab, d));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < layers; ++i) blocks->push_back(Block(d));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    head = register_module("head", std::make_shared<torch::nn::Module>());
    head->register_parameter("weight", embed->weight);  // tied, as in many language models
  }
  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  std::shared_ptr<torch::nn::Module> head;
};
TORCH_MODULE(TinyLM);

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "demo_model.safetensors";
  torch::manual_seed(0);
  TinyLM model(/*vocab=*/8192, /*d=*/512, /*layers=*/4);
  model->to(torch::kBFloat16);

  auto t0 = std::chrono::steady_clock::now();
  st::save(*model, path, st::Metadata{{"format", "pt"}, {"producer", "torch_safetensors demo"}});
  const double save_ms = ms_since(t0);

  TinyLM fresh(8192, 512, 4);
  fresh->to(torch::kBFloat16);
  t0 = std::chrono::steady_clock::now();
  st::load(*fresh, path);  // zero-copy: parameters now live in the mapped file (copy-on-write)
  const double load_ms = ms_since(t0);

  // Inspect the file through the lazy handle: the header only, no tensor bytes read.
  t0 = std::chrono::steady_clock::now();
  st::File file(path);
  const double open_ms = ms_since(t0);
  std::printf("%-28s %-6s %-14s %12s\n", "tensor", "dtype", "shape", "bytes");
  uint64_t total = 0;
  for (const auto& name : file.keys()) {
    const auto& info = file.info(name);
    std::string shape = "[";
    for (size_t i = 0; i < info.shape.size(); ++i)
      shape += (i ? "," : "") + std::to_string(info.shape[i]);
    shape += "]";
    std::printf("%-28s %-6s %-14s %12llu\n", name.c_str(),
                std::string(st::dtype_name(info.dtype)).c_str(), shape.c_str(),
                static_cast<unsigned long long>(info.nbytes()));
    total += info.nbytes();
  }
  std::printf("\n%zu tensors, %.1f MiB; metadata:", file.size(), total / 1048576.0);
  for (const auto& [key, value] : *file.metadata())
    std::printf(" %s=%s;", key.c_str(), value.c_str());

  // Check: every parameter equals the original, and the tie survived the round trip.
  bool same = true;
  const auto original = model->named_parameters();
  for (const auto& p : fresh->named_parameters())
    same &= torch::equal(p.value(), original[p.key()]);
  const bool tied =
      fresh->head->named_parameters()["weight"].data_ptr() == fresh->embed->weight.data_ptr();
  std::printf("\nsave %.2f ms | load into module %.2f ms (zero-copy) | open + header %.3f ms\n",
              save_ms, load_ms, open_ms);
  std::printf("round trip: %s, tied weights %s\n", same ? "identical" : "DIFFERENT",
              tied ? "still tied" : "UNTIED");
  return same && tied ? 0 : 1;
}
