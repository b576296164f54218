// The README's migration example: torch::save / torch::load calls with `torch::` replaced by
// `st::` and `.pt` by `.safetensors`, nothing else changed.
#include <sstream>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

int main() {
  namespace st = torch::safetensors;
  torch::nn::Linear model(4, 2);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  torch::Tensor t = torch::ones({3});
  std::vector<torch::Tensor> v{t, t};

  st::save(model, "m.safetensors");        // was torch::save(model, "m.pt")
  st::save(optimizer, "opt.safetensors");  // was torch::save(optimizer, "opt.pt")
  st::save(t, "t.safetensors");            // key "0"
  st::save(v, "v.safetensors");            // keys "0", "1"
  std::stringstream stream;
  st::save(*model, stream);  // streams, write functions

  torch::nn::Linear loaded(4, 2);
  st::load(loaded, "m.safetensors", torch::Device("cpu"));
  st::load(optimizer, "opt.safetensors");
  torch::Tensor t2;
  st::load(t2, "t.safetensors");
  std::vector<torch::Tensor> v2;  // appended to, like torch::load
  st::load(v2, "v.safetensors");
  torch::nn::Linear from_stream(4, 2);
  st::load(*from_stream, stream);
  const bool same = torch::equal(loaded->weight, model->weight) && torch::equal(t2, t) &&
                    v2.size() == 2 && torch::equal(from_stream->bias, model->bias);
  std::cout << (same ? "migrated: identical" : "MISMATCH") << "\n";
  return same ? 0 : 1;
}
