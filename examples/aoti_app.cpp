// Runs an AOTInductor package compiled without its weights (examples/aoti_export.py), with the
// weights from safetensors: mapped, checked against the package, and used in place.
//
//   aoti_app model.pt2 model.safetensors io.safetensors
//
// io.safetensors holds an input ("tokens") and eager PyTorch's output for it ("logits"); the app
// prints how far the package's output is from it, and fails beyond float32 rounding.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>
#include <torch_safetensors/aoti.h>
#include <torch_safetensors/safetensors.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " model.pt2 model.safetensors io.safetensors\n";
    return 2;
  }
  namespace ts = torch::safetensors;
  torch::inductor::AOTIModelPackageLoader package(argv[1]);
  // Strict: every constant the package asks for, each of its dtype and shape, nothing else.
  ts::load(package, argv[2]);

  ts::File io(argv[3]);
  at::Tensor logits = package.run({io.tensor("tokens")})[0];
  const double error = (logits - io.tensor("logits")).abs().max().item<double>();
  std::cout << "logits " << logits.sizes() << ", max abs difference from eager: " << error << "\n";
  return error < 1e-4 ? 0 : 1;
}
