// The C++ of docs/sharded.md: save_sharded, the index, Checkpoint over a directory, and loading a
// sharded checkpoint with every loader.
#include <fstream>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "doc_example.h"
#include "doc_throws.h"

namespace st = torch::safetensors;

namespace {

torch::nn::Sequential make_model() {
  return torch::nn::Sequential(torch::nn::Linear(256, 256), torch::nn::ReLU(),
                               torch::nn::Linear(256, 256));
}

}  // namespace

using doc_example::throws;

DOC_EXAMPLE(sharded_save_and_open) {
  torch::nn::Sequential model = make_model();
  // Two weights of 262144 bytes and two biases: a new shard whenever the next tensor would pass
  // 300 KB.
  st::save_sharded(*model, "out", st::ShardOptions().with_max_shard_size("300KB"));

  st::Checkpoint checkpoint("out");  // reads and checks the index; no shard opened yet
  DOC_CHECK(checkpoint.index_path().has_value());
  DOC_CHECK(checkpoint.shard_files() ==
            std::vector<std::string>(
                {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}));
  DOC_CHECK(checkpoint.shard_file("2.weight") == "model-00002-of-00002.safetensors");
  at::Tensor w = checkpoint.tensor("2.weight");  // opens that shard (once): a zero-copy view
  DOC_CHECK(torch::equal(w, model[2]->as<torch::nn::Linear>()->weight));
  DOC_CHECK(checkpoint.metadata()->at("total_size") == std::to_string(2 * (262144 + 1024)));

  torch::nn::Sequential fresh = make_model();
  st::load(fresh, "out");  // or "out/model.safetensors.index.json"
  st::TensorDict tensors = st::load("out/model.safetensors.index.json");
  DOC_CHECK(tensors.size() == 4);
  for (const auto& item : model->named_parameters()) {
    DOC_CHECK(torch::equal(fresh->named_parameters()[item.key()], item.value()));
  }
}

DOC_EXAMPLE(sharded_small_save_is_one_file) {
  // Under 5GB: one file, no index.
  st::SaveReport report = st::save_sharded({{"w", torch::ones({4})}}, "small");
  DOC_CHECK(report.files == std::vector<std::string>({"model.safetensors"}) &&
            report.tensor_bytes == 16 && report.seconds > 0);
  st::Checkpoint checkpoint("small");  // a directory with one .safetensors
  DOC_CHECK(!checkpoint.index_path() &&
            checkpoint.shard_files() == std::vector<std::string>({"model.safetensors"}));
}

DOC_EXAMPLE(sharded_plan) {
  torch::nn::Sequential model = make_model();
  st::NamedTensors tensors;
  for (const auto& item : model->named_parameters()) tensors.emplace_back(item.key(), item.value());
  st::ShardSplit split = st::plan_shards(tensors, st::ShardOptions().with_max_shard_size(300'000));
  DOC_CHECK(split.is_sharded() && split.files.size() == 2);
  DOC_CHECK(split.files[0].second == std::vector<std::string>({"0.weight", "0.bias"}));
  DOC_CHECK(split.total_size == 2 * (262144 + 1024));
}

DOC_EXAMPLE(sharded_index_checks) {
  st::save_sharded(*make_model(), "out", st::ShardOptions().with_max_shard_size("300KB"));
  std::ofstream("out/model.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"0.weight": "../elsewhere.safetensors"}})";
  DOC_CHECK(throws([] { st::Checkpoint("out"); }, "has a '..' component"));
}
