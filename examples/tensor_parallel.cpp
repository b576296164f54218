// Tensor-parallel loading: each of 4 ranks reads only its pieces of a sharded checkpoint under a
// transformers-style plan, then the pieces are reassembled and checked against the original.
// (In a real job each rank is a process: see the README's torchrun example.)
//   ./tensor_parallel <directory>
#include <iostream>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

namespace ts = torch::safetensors;

int main(int argc, char** argv) {
  const std::string directory = argc > 1 ? argv[1] : "tp_model";
  torch::manual_seed(0);
  ts::NamedTensors model;
  model.emplace_back("model.embed_tokens.weight", torch::randn({256, 64}));
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    model.emplace_back(p + "self_attn.qkv_proj.weight", torch::randn({128, 64}));  // q 64, k/v 32
    model.emplace_back(p + "self_attn.o_proj.weight", torch::randn({64, 64}));
    model.emplace_back(p + "mlp.down_proj.weight", torch::randn({64, 128}));
    model.emplace_back(p + "input_layernorm.weight", torch::randn({64}));
  }
  model.emplace_back("lm_head.weight", torch::randn({256, 64}));
  ts::save_sharded(model, directory, ts::ShardOptions().with_max_shard_size("100KB"));

  ts::ShardPlan plan;
  plan.patterns = {{"embed_tokens", ts::ShardRule::parse("embedding")},
                   {"layers.*.self_attn.qkv_proj", ts::ShardRule::parse("packed_colwise:64,32,32")},
                   {"layers.*.self_attn.o_proj", ts::ShardRule::parse("rowwise")},
                   {"layers.*.mlp.down_proj", ts::ShardRule::parse("rowwise")},
                   {"lm_head", ts::ShardRule::parse("colwise")}};
  const int64_t world_size = 4;
  ts::Checkpoint checkpoint(directory, ts::LoadOptions().with_backend(ts::Backend::kPread));
  std::vector<ts::RankLoad> ranks;
  for (int64_t rank = 0; rank < world_size; ++rank) {
    ranks.push_back(ts::load_for_rank(checkpoint, plan, rank, world_size));
    std::cout << "rank " << rank << ": " << ranks.back().tensors.size() << " pieces, "
              << ranks.back().tensor_bytes << " tensor bytes + " << ranks.back().header_bytes
              << " header bytes read\n";
  }
  for (const auto& [name, original] : model) {
    std::vector<ts::Piece> pieces;
    std::vector<at::Tensor> parts;
    for (const auto& rank : ranks) {
      for (const auto& piece : rank.pieces)
        if (piece.name == name) pieces.push_back(piece), parts.push_back(rank.tensors[name]);
    }
    if (!torch::equal(ts::assemble(pieces, parts), original)) {
      std::cerr << name << ": the reassembled pieces differ from the original\n";
      return 1;
    }
  }
  std::cout << "every tensor reassembles bit for bit from " << world_size << " ranks\n";
}
