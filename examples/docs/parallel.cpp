// docs/parallel.md: tensor- and pipeline-parallel loading in C++ (distributed.h, in the core).
#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "doc_example.h"

namespace st = torch::safetensors;

DOC_EXAMPLE(parallel_load_for_rank) {
  at::Tensor qkv = torch::randn({16, 8});  // fused q (8 rows), k and v (4 rows each)
  at::Tensor o = torch::randn({8, 8});
  st::save({{"model.layers.0.self_attn.qkv_proj.weight", qkv},
            {"model.layers.0.self_attn.o_proj.weight", o}},
           "model.safetensors");

  st::ShardPlan plan;
  plan.patterns = {{"layers.*.self_attn.qkv_proj", st::ShardRule::parse("packed_colwise:8,4,4")},
                   {"layers.*.self_attn.o_proj", st::ShardRule::parse("rowwise")}};
  st::Checkpoint checkpoint("model.safetensors");
  st::RankLoad rank0 = st::load_for_rank(checkpoint, plan, /*rank=*/0, /*world_size=*/2);
  st::RankLoad rank1 = st::load_for_rank(checkpoint, plan, /*rank=*/1, /*world_size=*/2);
  DOC_CHECK(rank0.tensors["model.layers.0.self_attn.o_proj.weight"].sizes() ==
            at::IntArrayRef({8, 4}));
  DOC_CHECK(rank0.tensor_bytes == (qkv.nbytes() + o.nbytes()) / 2);

  // Reassembly from every rank's piece (pieces are in checkpoint order: o_proj, then qkv_proj).
  const std::string name = "model.layers.0.self_attn.qkv_proj.weight";
  at::Tensor full =
      st::assemble({rank0.pieces[1], rank1.pieces[1]}, {rank0.tensors[name], rank1.tensors[name]});
  DOC_CHECK(rank0.pieces[1].name == name && torch::equal(full, qkv));
}
