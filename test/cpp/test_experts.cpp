// Expert-parallel plans for mixture-of-experts checkpoints: per-expert tensors go to their
// expert's owner, stacked experts are read row by row, ownership by blocks, round-robin or an
// explicit assignment, EP × TP with companions and pipeline stages; bad plans fail before any
// tensor byte is read; each rank reads its experts, the replicated tensors and headers only.
#include <gtest/gtest.h>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "test_util.h"

namespace ts = torch::safetensors;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

constexpr int64_t kExperts = 4;

// Two MoE layers: attention, a router, a shared expert, per-expert (Mixtral-style) tensors in
// layer 0 with an FP8-style block scale, stacked (transformers' fused) experts in layer 1 with a
// gpt-oss-style companion of the gate_up projection.
ts::NamedTensors moe_like() {
  torch::manual_seed(0);
  ts::NamedTensors t;
  auto f = [](std::vector<int64_t> sizes) { return torch::randn(sizes); };
  t.emplace_back("model.embed_tokens.weight", f({32, 8}));
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "self_attn.q_proj.weight", f({8, 8}));
    t.emplace_back(p + "self_attn.o_proj.weight", f({8, 8}));
    t.emplace_back(p + "mlp.gate.weight", f({kExperts, 8}));
    t.emplace_back(p + "mlp.shared_experts.up_proj.weight", f({16, 8}));
    if (l == 0) {
      for (int e = 0; e < kExperts; ++e) {
        const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
        t.emplace_back(x + "w1.weight", f({16, 8}));
        t.emplace_back(x + "w2.weight", f({8, 16}).to(torch::kBFloat16));
        t.emplace_back(x + "w2.weight_scale_inv", f({2, 4}));  // 4x4 blocks
      }
    } else {
      t.emplace_back(p + "mlp.experts.gate_up_proj", f({kExperts, 32, 8}));
      t.emplace_back(p + "mlp.experts.gate_up_proj_bias", f({kExperts, 32}));
      t.emplace_back(p + "mlp.experts.down_proj", f({kExperts, 8, 16}));
    }
  }
  t.emplace_back("model.norm.weight", f({8}));
  t.emplace_back("lm_head.weight", f({32, 8}));
  return t;
}

ts::ShardPlan ep_plan(int64_t ep_size = 0,
                      ts::ExpertPlacement placement = ts::ExpertPlacement::kContiguous) {
  ts::ShardPlan plan;
  ts::ExpertPlan experts;
  experts.num_experts = kExperts;
  experts.ep_size = ep_size;
  experts.placement = placement;
  plan.experts = experts;
  return plan;
}

ts::ShardPlan ep_tp_plan(int64_t ep_size) {
  ts::ShardPlan plan = ep_plan(ep_size);
  plan.patterns = {{"layers.*.self_attn.q_proj", ts::ShardRule::parse("colwise")},
                   {"layers.*.self_attn.o_proj", ts::ShardRule::parse("rowwise")},
                   {"layers.*.mlp.experts.*.w1", ts::ShardRule::parse("colwise")},
                   {"layers.*.mlp.experts.*.w2", ts::ShardRule::parse("rowwise")},
                   {"layers.*.mlp.experts.gate_up_proj", ts::ShardRule::parse("packed_colwise")},
                   {"layers.*.mlp.experts.down_proj", ts::ShardRule::parse("rowwise")}};
  return plan;
}

class Experts : public ::testing::Test {
 protected:
  void SetUp() override {
    tensors_ = moe_like();
    ts::save_sharded(tensors_, dir_.path(), ts::ShardOptions().with_max_shard_size(1500));
  }
  const torch::Tensor& original(const std::string& name) const {
    for (const auto& [n, t] : tensors_)
      if (n == name) return t;
    throw std::runtime_error("no " + name);
  }
  // Every rank's load; each tensor reassembled from the ranks holding it equals the original.
  std::vector<ts::RankLoad> load_all(const ts::ShardPlan& plan, int64_t world,
                                     const ts::LoadOptions& options = {}) {
    ts::Checkpoint checkpoint(dir_.path(), options);
    std::vector<ts::RankLoad> loads;
    for (int64_t r = 0; r < world; ++r)
      loads.push_back(ts::load_for_rank(checkpoint, plan, r, world));
    for (const auto& [name, tensor] : tensors_) {
      std::vector<ts::Piece> pieces(world);
      std::vector<at::Tensor> parts(world);
      for (int64_t r = 0; r < world; ++r) {
        for (const ts::Piece& p : loads[r].pieces) {
          if (p.name != name) continue;
          pieces[r] = p;
          parts[r] = loads[r].tensors[name].cpu();
        }
      }
      EXPECT_TRUE(torch::equal(ts::assemble(pieces, parts), tensor)) << name;
    }
    return loads;
  }
  bool holds(const ts::RankLoad& load, const std::string& name) const {
    return load.tensors.contains(name);
  }
  TempDir dir_;
  ts::NamedTensors tensors_;
};

TEST(ExpertPlan, PlacementsGiveEachExpertOneOwner) {
  ts::ExpertPlan plan;
  plan.num_experts = 10;
  EXPECT_EQ(plan.experts_of(0, 4), (std::vector<int64_t>{0, 1, 2}));  // 10 = 3 + 3 + 2 + 2
  EXPECT_EQ(plan.experts_of(1, 4), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(plan.experts_of(3, 4), (std::vector<int64_t>{8, 9}));
  plan.placement = ts::ExpertPlacement::kRoundRobin;
  EXPECT_EQ(plan.experts_of(1, 4), (std::vector<int64_t>{1, 5, 9}));
  plan.placement = ts::ExpertPlacement::kExplicit;
  plan.assignment = {{9, 0}, {1, 2, 3, 4, 5, 6, 7, 8}};
  EXPECT_EQ(plan.experts_of(0, 2), (std::vector<int64_t>{0, 9}));
  EXPECT_EQ(ts::ExpertPlan::parse_placement("round_robin"), ts::ExpertPlacement::kRoundRobin);
  EXPECT_NE(error_of([] {
              ts::ExpertPlan::parse_placement("random");
            }).find("unknown placement 'random'"),
            std::string::npos);
}

TEST(ExpertPlan, PlansNamesAndStackedRows) {
  ts::ShardPlan plan = ep_plan(0, ts::ExpertPlacement::kRoundRobin);
  const std::vector<ts::TensorShape> shapes = {
      {"m.layers.0.block_sparse_moe.experts.1.w1.weight", {4, 2}},    // Mixtral
      {"m.layers.0.mlp.experts.2.gate_proj.weight", {4, 2}},          // Qwen3-MoE
      {"layers.0.ffn.experts.3.w1.weight", {4, 2}},                   // DeepSeek
      {"m.layers.0.mlp.experts.gate_up_proj_blocks", {4, 6, 2, 16}},  // gpt-oss
      {"m.layers.0.mlp.shared_experts.w1.weight", {4, 2}},
      {"m.layers.0.mlp.router.weight", {4, 2}}};
  const auto pieces = ts::plan_for_rank(shapes, plan, 1, 2, "test");
  ASSERT_EQ(pieces.size(), 5u);  // expert 2 is rank 0's
  EXPECT_EQ(pieces[0].name, "m.layers.0.block_sparse_moe.experts.1.w1.weight");
  EXPECT_TRUE(pieces[0].whole());
  EXPECT_EQ(pieces[1].name, "layers.0.ffn.experts.3.w1.weight");
  EXPECT_EQ(pieces[2].splits.size(), 1u);  // rows 1 and 3: two runs
  EXPECT_EQ(pieces[2].splits[0].dim, 0);
  EXPECT_EQ(pieces[2].splits[0].ranges, (std::vector<std::pair<int64_t, int64_t>>{{1, 2}, {3, 4}}));
  EXPECT_EQ(pieces[2].sizes(), (std::vector<int64_t>{2, 6, 2, 16}));
  EXPECT_TRUE(pieces[3].whole());  // shared experts and the router: replicated
  EXPECT_TRUE(pieces[4].whole());
  EXPECT_NE(plan.to_string().find("experts 4 ep 0 round_robin"), std::string::npos);
}

TEST_F(Experts, ExpertParallelAloneReassemblesBitForBit) {
  for (int64_t world : {1, 2, 4}) {
    SCOPED_TRACE(world);
    const auto loads = load_all(ep_plan(), world);
    for (int64_t r = 0; r < world; ++r) {
      for (int64_t e = 0; e < kExperts; ++e) {
        const bool mine = e / (kExperts / world) == r;
        EXPECT_EQ(holds(loads[r], "model.layers.0.mlp.experts." + std::to_string(e) + ".w1.weight"),
                  mine);
        EXPECT_EQ(holds(loads[r],
                        "model.layers.0.mlp.experts." + std::to_string(e) + ".w2.weight_scale_inv"),
                  mine);
      }
      const auto stacked = loads[r].tensors["model.layers.1.mlp.experts.gate_up_proj"];
      EXPECT_TRUE(torch::equal(
          stacked, original("model.layers.1.mlp.experts.gate_up_proj").chunk(world, 0)[r]));
      EXPECT_TRUE(holds(loads[r], "model.layers.0.mlp.gate.weight"));
      EXPECT_TRUE(holds(loads[r], "model.layers.1.mlp.shared_experts.up_proj.weight"));
    }
  }
}

TEST_F(Experts, RoundRobinAndExplicitPlacements) {
  load_all(ep_plan(0, ts::ExpertPlacement::kRoundRobin), 2);
  ts::ShardPlan plan = ep_plan(0, ts::ExpertPlacement::kExplicit);
  plan.experts->assignment = {{3}, {0, 2}, {1}};
  const auto loads = load_all(plan, 3);
  EXPECT_TRUE(holds(loads[1], "model.layers.0.mlp.experts.2.w1.weight"));
  EXPECT_FALSE(holds(loads[1], "model.layers.0.mlp.experts.1.w1.weight"));
  EXPECT_EQ(loads[1].pieces.back().name, "lm_head.weight");
  EXPECT_TRUE(torch::equal(
      loads[1].tensors["model.layers.1.mlp.experts.down_proj"],
      original("model.layers.1.mlp.experts.down_proj").index({torch::tensor({0, 2})})));
}

TEST_F(Experts, ExpertTimesTensorParallelWithCompanionsAndStages) {
  // 4 ranks = 2 EP groups × 2 TP ranks.
  const auto loads = load_all(ep_tp_plan(2), 4);
  // Rank 3: EP rank 1 (experts 2, 3), TP rank 1.
  const auto& mine = loads[3].tensors;
  EXPECT_FALSE(mine.contains("model.layers.0.mlp.experts.1.w1.weight"));
  EXPECT_TRUE(torch::equal(mine["model.layers.0.mlp.experts.2.w1.weight"],
                           original("model.layers.0.mlp.experts.2.w1.weight").slice(0, 8, 16)));
  // rowwise w2 [8, 16] in 4x4 blocks: columns 8..16, block columns 2..4.
  EXPECT_TRUE(
      torch::equal(mine["model.layers.0.mlp.experts.3.w2.weight_scale_inv"],
                   original("model.layers.0.mlp.experts.3.w2.weight_scale_inv").slice(1, 2, 4)));
  // Stacked: rows 2..4 (experts), then each of gate and up's second half on dim 1.
  const auto& gu = original("model.layers.1.mlp.experts.gate_up_proj").slice(0, 2, 4);
  EXPECT_TRUE(torch::equal(mine["model.layers.1.mlp.experts.gate_up_proj"],
                           torch::cat({gu.slice(1, 8, 16), gu.slice(1, 24, 32)}, 1)));
  // The bias follows its projection (its name extends the pattern's by "_bias").
  EXPECT_EQ(mine["model.layers.1.mlp.experts.gate_up_proj_bias"].sizes(),
            (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(mine["model.layers.1.mlp.experts.down_proj"].sizes(), (std::vector<int64_t>{2, 8, 8}));
  // Attention splits over TP only: ranks 1 and 3 hold the same piece.
  EXPECT_TRUE(torch::equal(mine["model.layers.0.self_attn.q_proj.weight"],
                           loads[1].tensors["model.layers.0.self_attn.q_proj.weight"]));
  EXPECT_EQ(mine["model.layers.0.self_attn.q_proj.weight"].size(0), 4);

  // Pipeline on top: 8 ranks = 2 stages × 2 EP × 2 TP; stage 1 holds layer 1 and the head.
  ts::ShardPlan staged = ep_tp_plan(2);
  staged.pipeline = ts::PipelinePlan::even(2, 2);
  const auto eight = load_all(staged, 8);
  EXPECT_FALSE(eight[6].tensors.contains("model.layers.0.mlp.experts.2.w1.weight"));
  EXPECT_TRUE(eight[2].tensors.contains("model.layers.0.mlp.experts.2.w1.weight"));
  EXPECT_EQ(eight[6].tensors["model.layers.1.mlp.experts.down_proj"].sizes(),
            (std::vector<int64_t>{2, 8, 8}));
}

TEST_F(Experts, EachRankReadsItsExpertsReplicatedTensorsAndHeadersOnly) {
  auto bytes_of = [&](auto&& keep) {
    uint64_t n = 0;
    for (const auto& [name, t] : tensors_)
      if (keep(name)) n += t.nbytes();
    return n;
  };
  uint64_t stacked_total = 0, per_expert_total = 0;
  for (const auto& [name, t] : tensors_) {
    if (name.find("mlp.experts.") == std::string::npos) continue;
    (name.find("layers.1.") != std::string::npos ? stacked_total : per_expert_total) += t.nbytes();
  }
  const uint64_t replicated =
      bytes_of([](const std::string& n) { return n.find("mlp.experts.") == std::string::npos; });
  for (auto backend : {ts::Backend::kPread, ts::Backend::kMmap}) {
    const auto loads = load_all(ep_plan(), 4, ts::LoadOptions().with_backend(backend));
    for (int64_t r = 0; r < 4; ++r) {
      const std::string prefix = "model.layers.0.mlp.experts." + std::to_string(r) + ".";
      const uint64_t own = bytes_of([&](const std::string& n) { return n.rfind(prefix, 0) == 0; });
      EXPECT_EQ(loads[r].tensor_bytes, replicated + own + stacked_total / 4) << r;
      EXPECT_EQ(own, per_expert_total / 4);
      EXPECT_GT(loads[r].header_bytes, 0u);
    }
  }
}

TEST_F(Experts, BadPlansFailBeforeAnyTensorByteIsRead) {
  ts::Checkpoint checkpoint(dir_.path());
  auto error = [&](const ts::ShardPlan& plan, int64_t rank, int64_t world) {
    return error_of([&] { ts::load_for_rank(checkpoint, plan, rank, world); });
  };
  ts::ShardPlan fewer = ep_plan();
  fewer.experts->num_experts = 3;
  EXPECT_NE(error(fewer, 0, 1)
                .find("tensor 'model.layers.0.mlp.experts.3.w1.weight': expert "
                      "index 3 is outside the expert plan's 3 experts"),
            std::string::npos)
      << error(fewer, 0, 1);
  ts::ShardPlan more = ep_plan();
  more.experts->num_experts = 8;
  EXPECT_NE(error(more, 0, 2)
                .find("tensor 'model.layers.1.mlp.experts.gate_up_proj': stacked "
                      "experts hold one expert per row of dimension 0, expected 8 "
                      "(the expert plan's count), found size 4"),
            std::string::npos)
      << error(more, 0, 2);
  ts::ShardPlan twice = ep_plan(0, ts::ExpertPlacement::kExplicit);
  twice.experts->assignment = {{0, 1, 2}, {2, 3}};
  EXPECT_NE(error(twice, 1, 2).find("expert 2 is owned twice, by EP ranks 0 and 1"),
            std::string::npos);
  ts::ShardPlan unowned = ep_plan(0, ts::ExpertPlacement::kExplicit);
  unowned.experts->assignment = {{0, 1}, {3}};
  EXPECT_NE(error(unowned, 0, 2).find("expert 2 is owned by no EP rank"), std::string::npos);
  ts::ShardPlan odd = ep_tp_plan(3);
  EXPECT_NE(error(odd, 0, 4).find("expert-parallel size 3 does not divide the 4 ranks"),
            std::string::npos);
  ts::ShardPlan other = ep_plan();
  other.experts->segment = "moe_experts";
  other.strict = true;
  EXPECT_NE(error(other, 0, 2).find("segment 'moe_experts' is in no tensor's name"),
            std::string::npos);

  // The planning errors come before any tensor byte is read.
  TempDir dir;
  ts::save(ts::NamedTensors{{"m.experts.gate_up_proj", torch::ones({4, 8, 2})}},
           dir.file("m.safetensors"));
  auto counting = std::make_shared<ts::CountingSource>(
      ts::file_source(dir.file("m.safetensors"), /*mapped=*/false));
  ts::Checkpoint counted(ts::File(counting, ts::LoadOptions().with_backend(ts::Backend::kPread)));
  counting->reset();
  EXPECT_NE(error_of([&] { ts::load_for_rank(counted, more, 0, 2); }).find("expected 8"),
            std::string::npos);
  EXPECT_EQ(counting->bytes_read(), 0u);
}

}  // namespace
