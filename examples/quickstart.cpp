// The README's 10-line example.
#include <torch/torch.h>
#include <torch_safetensors/all.h>

int main() {
  namespace st = torch::safetensors;
  torch::nn::Linear model(4, 2);
  st::save(*model, "linear.safetensors", st::Metadata{{"format", "pt"}});  // like torch::save
  torch::nn::Linear fresh(4, 2);
  st::load(*fresh, "linear.safetensors");         // like torch::load, zero-copy
  auto tensors = st::load("linear.safetensors");  // name -> tensor, lazy mmap
  std::cout << tensors["weight"] << "\n"
            << st::File("linear.safetensors").metadata()->at("format") << "\n";
  return torch::equal(fresh->weight, model->weight) ? 0 : 1;
}
