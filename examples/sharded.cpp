// The README's sharded checkpoint example: save a model in shards (huggingface_hub's layout),
// open the directory lazily, load it into a fresh model. Usage: sharded [directory]
#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include <cstdio>

int main(int argc, char** argv) {
  namespace st = torch::safetensors;
  const std::string dir = argc > 1 ? argv[1] : "sharded_model";
  torch::nn::Sequential model(torch::nn::Linear(256, 256), torch::nn::ReLU(),
                              torch::nn::Linear(256, 256));
  // model-00001-of-00003.safetensors ... + model.safetensors.index.json
  st::save_sharded(*model, dir, st::ShardOptions().with_max_shard_size("200KB"));

  st::Checkpoint checkpoint(dir);  // reads the index; each shard opens on first use
  for (const std::string& name : checkpoint.keys()) {
    std::printf("%-10s %-34s %s\n", name.c_str(), checkpoint.shard_file(name).c_str(),
                st::dtype_name(checkpoint.info(name).dtype).data());
  }
  std::printf("total_size: %s bytes\n", checkpoint.metadata()->at("total_size").c_str());

  torch::nn::Sequential fresh(torch::nn::Linear(256, 256), torch::nn::ReLU(),
                              torch::nn::Linear(256, 256));
  st::load(fresh, dir);  // a directory, an index or a file: all the same to load
  const at::Tensor x = torch::randn({1, 256});
  return torch::equal(fresh->forward(x), model->forward(x)) ? 0 : 1;
}
