// The README's C++ example: save a module, load it back, open the file lazily and read a slice.
#include <torch/torch.h>
#include <torch_safetensors/all.h>

int main() {
  namespace st = torch::safetensors;
  using at::indexing::Slice;
  torch::nn::Linear model(4, 2);
  st::save(*model, "linear.safetensors", {{"format", "pt"}});  // like torch::save
  torch::nn::Linear fresh(4, 2);
  st::load(*fresh, "linear.safetensors");  // like torch::load; zero-copy
  TORCH_CHECK(torch::equal(fresh->weight, model->weight));
  st::TensorDict tensors = st::load("linear.safetensors");  // name -> tensor, mapped lazily
  st::File file("linear.safetensors");                      // like safe_open: reads the header only
  at::Tensor column = file.slice("weight", {Slice(), 1});   // reads only that column's bytes
  TORCH_CHECK(torch::equal(column, tensors["weight"].index({Slice(), 1})));
  TORCH_CHECK(file.metadata()->at("format") == "pt");
  std::cout << column << "\n";
}
