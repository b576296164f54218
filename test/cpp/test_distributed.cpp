// Tensor- and pipeline-parallel loading: shard plans (patterns, explicit splits, pipeline stages,
// quantized companions), load_for_rank reading only each rank's bytes on every backend, and
// reassembly of every rank's pieces into the original, bit for bit. The c10d collectives are
// driven through the Python binding with torch.distributed gloo (test/python/test_distributed.py):
// the wheel ships no gloo headers to build a ProcessGroupGloo here.
#include <gtest/gtest.h>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "api/handle.h"
#include "test_util.h"

namespace ts = torch::safetensors;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

// A two-layer Llama-like model: fused qkv (q 8 rows, k and v 4 each), o_proj, fused gate_up,
// down_proj, norms, embeddings and head; an FP8-style block scale on layer 1's down_proj.
ts::NamedTensors llama_like() {
  torch::manual_seed(0);
  ts::NamedTensors t;
  auto f = [](std::vector<int64_t> sizes) { return torch::randn(sizes); };
  t.emplace_back("model.embed_tokens.weight", f({32, 8}));
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "self_attn.qkv_proj.weight", f({16, 8}));
    t.emplace_back(p + "self_attn.qkv_proj.bias", f({16}));
    t.emplace_back(p + "self_attn.o_proj.weight", f({8, 8}));
    t.emplace_back(p + "self_attn.o_proj.bias", f({8}));
    t.emplace_back(p + "mlp.gate_up_proj.weight", f({24, 8}));
    t.emplace_back(p + "mlp.down_proj.weight", f({8, 16}).to(torch::kBFloat16));
    t.emplace_back(p + "input_layernorm.weight", f({8}));
  }
  t.emplace_back("model.layers.1.mlp.down_proj.weight_scale_inv", f({2, 4}));  // 4x4 blocks
  t.emplace_back("model.layers.1.mlp.down_proj.input_scale", f({}));
  t.emplace_back("model.norm.weight", f({8}));
  t.emplace_back("lm_head.weight", f({32, 8}));
  return t;
}

ts::ShardPlan tp_plan() {
  ts::ShardPlan plan;
  plan.patterns = {{"layers.*.self_attn.qkv_proj", ts::ShardRule::parse("packed_colwise:8,4,4")},
                   {"layers.*.self_attn.o_proj", ts::ShardRule::parse("rowwise")},
                   {"layers.*.mlp.gate_up_proj", ts::ShardRule::parse("packed_colwise")},
                   {"layers.*.mlp.down_proj", ts::ShardRule::parse("rowwise")},
                   {"embed_tokens", ts::ShardRule::parse("embedding")},
                   {"lm_head", ts::ShardRule::parse("colwise_rep")}};
  return plan;
}

class Distributed : public ::testing::Test {
 protected:
  void SetUp() override {
    tensors_ = llama_like();
    ts::save_sharded(tensors_, dir_.path(), ts::ShardOptions().with_max_shard_size(1500));
  }
  const torch::Tensor& original(const std::string& name) const {
    for (const auto& [n, t] : tensors_)
      if (n == name) return t;
    throw std::runtime_error("no " + name);
  }
  // Every rank's load, reassembled and compared with the original; returns the loads.
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
  TempDir dir_;
  ts::NamedTensors tensors_;
};

TEST(ShardRule, ParsesTransformersNamesAndBlocks) {
  EXPECT_EQ(ts::ShardRule::parse("colwise_rep").style, ts::ShardStyle::kColwise);
  EXPECT_EQ(ts::ShardRule::parse("local_rowwise").style, ts::ShardStyle::kRowwise);
  EXPECT_EQ(ts::ShardRule::parse("gather").style, ts::ShardStyle::kReplicate);
  const auto packed = ts::ShardRule::parse("packed_colwise:4096,1024,1024");
  EXPECT_EQ(packed.blocks, (std::vector<int64_t>{4096, 1024, 1024}));
  EXPECT_EQ(ts::ShardRule::parse(packed.to_string()).blocks, packed.blocks);
  EXPECT_NE(error_of([] { ts::ShardRule::parse("diagonal"); }).find("unknown style 'diagonal'"),
            std::string::npos);
  EXPECT_NE(error_of([] { ts::ShardRule::parse("colwise:4"); }).find("only packed styles"),
            std::string::npos);
  EXPECT_NE(error_of([] { ts::ShardRule::parse("packed_colwise:4,x"); }).find("block size 'x'"),
            std::string::npos);
}

TEST(ShardPlanning, LongestPatternWinsAndStarMatchesNumbersOnly) {
  ts::ShardPlan plan;
  plan.patterns = {{"q_proj", ts::ShardRule::parse("rowwise")},
                   {"layers.*.attn.q_proj", ts::ShardRule::parse("colwise")},
                   {"layers.0.attn.q_proj", ts::ShardRule::parse("replicate")}};
  const std::vector<ts::TensorShape> shapes = {{"m.layers.0.attn.q_proj.weight", {4, 6}},
                                               {"m.layers.1.attn.q_proj.weight", {4, 6}},
                                               {"m.layers.x.attn.q_proj.weight", {4, 6}}};
  const auto pieces = ts::plan_for_rank(shapes, plan, 1, 2, "test");
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_TRUE(pieces[0].whole());         // the literal pattern beats `*`
  EXPECT_EQ(pieces[1].splits[0].dim, 0);  // colwise
  EXPECT_EQ(pieces[1].splits[0].ranges[0], std::make_pair(int64_t(2), int64_t(4)));
  EXPECT_EQ(pieces[2].splits[0].dim, 1);  // `*` does not match "x": only "q_proj" does
}

TEST_F(Distributed, TensorParallelPiecesReassembleBitForBit) {
  for (int64_t world : {1, 2, 4}) {
    SCOPED_TRACE(world);
    const auto loads = load_all(tp_plan(), world);
    // A packed qkv: each rank holds its rows of q, then of k, then of v.
    const ts::Piece& qkv = loads.back().pieces[1];
    ASSERT_EQ(qkv.name, "model.layers.0.self_attn.qkv_proj.weight");
    if (world == 4) {
      EXPECT_EQ(qkv.splits[0].ranges,
                (std::vector<std::pair<int64_t, int64_t>>{{6, 8}, {11, 12}, {15, 16}}));
      const auto& w = original("model.layers.0.self_attn.qkv_proj.weight");
      EXPECT_TRUE(
          torch::equal(loads[3].tensors["model.layers.0.self_attn.qkv_proj.weight"],
                       torch::cat({w.slice(0, 6, 8), w.slice(0, 11, 12), w.slice(0, 15, 16)})));
    }
  }
}

TEST_F(Distributed, CompanionsFollowTheirWeight) {
  const auto loads = load_all(tp_plan(), 2);
  const auto& mine = loads[1].tensors;
  // rowwise: the weight's columns, the bias whole, the 4x4 block scale's block columns, the
  // per-tensor scale whole.
  EXPECT_EQ(mine["model.layers.0.self_attn.o_proj.weight"].sizes(), (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(mine["model.layers.0.self_attn.o_proj.bias"].sizes(), (std::vector<int64_t>{8}));
  EXPECT_TRUE(
      torch::equal(mine["model.layers.1.mlp.down_proj.weight_scale_inv"],
                   original("model.layers.1.mlp.down_proj.weight_scale_inv").slice(1, 2, 4)));
  EXPECT_EQ(mine["model.layers.1.mlp.down_proj.input_scale"].dim(), 0);
  // colwise (packed) bias splits like its weight.
  EXPECT_EQ(mine["model.layers.0.self_attn.qkv_proj.bias"].sizes(), (std::vector<int64_t>{8}));
  EXPECT_EQ(mine["model.norm.weight"].sizes(), (std::vector<int64_t>{8}));  // no pattern: whole
}

TEST(DistributedBlocks, ASplitThatCutsABlockIsAnError) {
  // 16 input columns in 8x8 blocks (2 of them): 4 ranks of 4 columns cut blocks.
  TempDir dir;
  ts::save(ts::NamedTensors{{"down.weight", torch::ones({4, 16})},
                            {"down.weight_scale_inv", torch::ones({1, 2})}},
           dir.file("m.safetensors"));
  ts::ShardPlan plan;
  plan.patterns = {{"down", ts::ShardRule::parse("rowwise")}};
  ts::Checkpoint checkpoint(dir.file("m.safetensors"));
  EXPECT_EQ(ts::load_for_rank(checkpoint, plan, 1, 2).tensors["down.weight_scale_inv"].size(1), 1);
  const std::string error = error_of([&] { ts::load_for_rank(checkpoint, plan, 0, 4); });
  EXPECT_NE(error.find("tensor 'down.weight_scale_inv': the split [0, 4) of its module cuts a "
                       "block of 8 (dimension 1 of size 2 holds one entry per block)"),
            std::string::npos)
      << error;
}

TEST_F(Distributed, ReadsOnlyItsBytesOnEveryBackend) {
  uint64_t total = 0;
  for (const auto& [name, t] : tensors_) total += t.nbytes();
  for (auto options : {ts::LoadOptions().with_backend(ts::Backend::kPread),
                       ts::LoadOptions().with_backend(ts::Backend::kMmap)}) {
    const auto loads = load_all(tp_plan(), 4, options);
    uint64_t sum = 0;
    for (const auto& load : loads) {
      uint64_t held = 0;
      for (const auto& item : load.tensors) held += item.value().nbytes();
      EXPECT_EQ(load.tensor_bytes, held);  // exactly its pieces
      sum += load.tensor_bytes;
    }
    // Each rank's share of the split tensors; replicated ones on every rank.
    EXPECT_LT(sum, 4 * total);
    EXPECT_GT(sum, total);
  }
  ts::LoadOptions staged;
  ts::detail::LoadOptionsTesting::stage_on_cpu(staged);
  load_all(tp_plan(), 2, staged);
}

TEST(DistributedCounting, PreadReadsExactlyThePiecesAndTheHeader) {
  TempDir dir;
  const auto w = torch::arange(64 * 16, torch::kFloat32).reshape({64, 16});
  ts::save(ts::NamedTensors{{"layer.weight", w}}, dir.file("m.safetensors"));
  ts::ShardPlan plan;
  plan.patterns = {{"layer", ts::ShardRule::parse("rowwise")}};
  for (int64_t world : {1, 2, 4}) {
    auto counting = std::make_shared<ts::CountingSource>(
        ts::file_source(dir.file("m.safetensors"), /*mapped=*/false));
    ts::Checkpoint checkpoint(
        ts::File(counting, ts::LoadOptions().with_backend(ts::Backend::kPread)));
    const uint64_t header = checkpoint.file("layer.weight").header().data_offset();
    counting->reset();
    const auto load = ts::load_for_rank(checkpoint, plan, world - 1, world);
    EXPECT_EQ(counting->bytes_read(), w.nbytes() / world) << world;
    EXPECT_EQ(load.tensor_bytes, w.nbytes() / world);
    EXPECT_EQ(load.header_bytes, header);
    EXPECT_TRUE(torch::equal(load.tensors["layer.weight"], w.chunk(world, 1)[world - 1]));
  }
}

TEST_F(Distributed, PipelineStagesHoldTheirLayersAndEnds) {
  ts::ShardPlan plan = tp_plan();
  plan.pipeline = ts::PipelinePlan::even(2, 2);
  const auto loads = load_all(plan, 4);  // 2 stages × 2 tensor-parallel ranks
  auto names = [](const ts::RankLoad& l) {
    std::vector<std::string> out;
    for (const auto& p : l.pieces) out.push_back(p.name);
    return out;
  };
  const auto first = names(loads[1]), last = names(loads[2]);
  EXPECT_EQ(first.front(), "model.embed_tokens.weight");
  for (const auto& n : first) EXPECT_EQ(n.find("layers.1."), std::string::npos) << n;
  for (const auto& n : last) EXPECT_EQ(n.find("layers.0."), std::string::npos) << n;
  EXPECT_NE(std::find(last.begin(), last.end(), "lm_head.weight"), last.end());
  EXPECT_NE(std::find(last.begin(), last.end(), "model.norm.weight"), last.end());
  // A stage opens only the shards holding its tensors: fewer headers than the whole checkpoint's.
  ts::Checkpoint checkpoint(dir_.path());
  ASSERT_GT(checkpoint.shard_files().size(), 2u);
  uint64_t all_headers = ts::file_source(*checkpoint.index_path(), false)->size();
  for (const auto& [name, t] : tensors_) (void)checkpoint.file(name);
  for (const auto& shard : checkpoint.shard_files()) {
    all_headers += ts::File(dir_.file(shard)).header().data_offset();
  }
  EXPECT_LT(loads[0].header_bytes, all_headers);
  EXPECT_LT(loads[2].header_bytes, all_headers);
}

TEST_F(Distributed, ExplicitPlansSplitUnevenly) {
  ts::ShardPlan plan;
  plan.tensors = {{"lm_head.weight", ts::TensorSplit{0, {{0, 20}, {20, 12}}}},
                  {"model.norm.weight", ts::TensorSplit{0, {{0, 8}, {0, 8}}}}};
  const auto loads = load_all(plan, 2);
  EXPECT_EQ(loads[0].tensors["lm_head.weight"].size(0), 20);
  EXPECT_EQ(loads[1].tensors["lm_head.weight"].size(0), 12);
}

TEST_F(Distributed, BadPlansAreClearErrors) {
  ts::Checkpoint checkpoint(dir_.path());
  auto error = [&](const ts::ShardPlan& plan, int64_t rank, int64_t world) {
    return error_of([&] { ts::load_for_rank(checkpoint, plan, rank, world); });
  };
  ts::ShardPlan plan = tp_plan();
  plan.patterns.resize(1);  // the packed qkv only
  EXPECT_NE(error(plan, 0, 3)
                .find("qkv_proj.weight': dimension 0 block of size 8 does not divide "
                      "evenly into 3 ranks"),
            std::string::npos)
      << error(plan, 0, 3);
  EXPECT_NE(error(plan, 2, 2).find("rank 2 is outside [0, 2)"), std::string::npos);
  EXPECT_NE(error(plan, -1, 2).find("rank -1 is outside [0, 2)"), std::string::npos);
  ts::ShardPlan packed;
  packed.patterns = {{"qkv_proj", ts::ShardRule::parse("packed_colwise:8,4,2")}};
  EXPECT_NE(error(packed, 0, 2).find("add up to 14, expected dimension 0's size 16"),
            std::string::npos);
  ts::ShardPlan explicit_plan;
  explicit_plan.tensors = {{"lm_head.weight", ts::TensorSplit{0, {{0, 10}, {12, 20}}}}};
  EXPECT_NE(error(explicit_plan, 0, 2).find("leaves [10, 12) of dimension 0 on no rank"),
            std::string::npos);
  EXPECT_NE(error(explicit_plan, 0, 4).find("gives 2 ranges, expected one per rank (4)"),
            std::string::npos);
  explicit_plan.tensors = {{"lm_head.weight", ts::TensorSplit{2, {{0, 32}}}}};
  EXPECT_NE(error(explicit_plan, 0, 1).find("dimension 2, expected one of its 2 dimensions"),
            std::string::npos);
  ts::ShardPlan stages;
  stages.pipeline = ts::PipelinePlan();
  stages.pipeline->stages = {{0, 1}, {2, 3}};
  EXPECT_NE(error(stages, 0, 2).find("layer 1 is on no pipeline stage"), std::string::npos);
  EXPECT_NE(error(stages, 0, 3).find("world size 3 does not divide into the pipeline's 2 stages"),
            std::string::npos);
  // A pattern matching nothing: a warning, or an error when strict.
  ts::ShardPlan unused;
  unused.patterns = {{"layers.*.nothing", ts::ShardRule::parse("colwise")}};
  const auto load = ts::load_for_rank(checkpoint, unused, 0, 2);
  ASSERT_EQ(load.warnings.size(), 1u);
  EXPECT_NE(load.warnings[0].find("'layers.*.nothing' matches no tensor"), std::string::npos);
  unused.strict = true;
  EXPECT_NE(error(unused, 0, 2).find("matches no tensor (strict plan)"), std::string::npos);
}

}  // namespace
