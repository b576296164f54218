// docs/quantized.md: quantized weights in C++.
#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "doc_example.h"

namespace st = torch::safetensors;

DOC_EXAMPLE(quantized_gptq_round_trip) {
  torch::manual_seed(0);
  at::Tensor w = torch::randn({256, 512});
  st::quant::QuantizeOptions options;
  options.scheme = st::quant::Scheme::kGptq;
  options.bits = 4;
  options.group_size = 128;
  st::quant::Quantized q = st::quant::quantize(w, "proj.weight", options);
  st::quant::save({q}, {{"norm.weight", torch::ones({512})}}, "q.safetensors");

  st::Checkpoint checkpoint("q.safetensors");  // a file, an index.json or a directory
  at::Tensor dense = st::quant::dequantize(checkpoint, "proj.weight", at::kFloat);
  st::quant::DenseView view(checkpoint, at::kBFloat16);  // name -> dense tensor, on access
  DOC_CHECK(view.is_quantized("proj.weight") && view.keys().size() == 2);
  DOC_CHECK(view.tensor("proj.weight").sizes() == w.sizes());
  DOC_CHECK((dense - w).abs().max().item<float>() < 0.5f);
}
