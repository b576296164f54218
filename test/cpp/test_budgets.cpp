// Memory budgets (LoadOptions::device_budget, host_budget): the plan step's estimate (owned
// tensors, views that cost nothing, casts, the staging ring), a BudgetError naming the largest
// tensor and the shortfall before anything is allocated or read, streaming loads in batches that
// fit (stream_plan, and for_each following it), sharded checkpoints, per-rank estimates, and a
// budget of zero refused before any byte is read. All on the CPU (the staging ring through the
// tests' switch), with budgets smaller than the model.
#include <gtest/gtest.h>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "api/handle.h"
#include "device/staging_ring.h"
#include "test_util.h"

namespace ts = torch::safetensors;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

constexpr uint64_t kSmall = 32 * 32 * 4;  // each layer.i
constexpr uint64_t kBig = 64 * 64 * 4;
constexpr uint64_t kTotal = 6 * kSmall + kBig;  // 40 KiB
constexpr uint64_t kMiB = uint64_t(1) << 20;

// 6 tensors of 4 KiB (float32 32x32) and one of 16 KiB, which the file holds first.
ts::NamedTensors model() {
  torch::manual_seed(0);
  ts::NamedTensors t;
  for (int i = 0; i < 6; ++i) t.emplace_back("layer." + std::to_string(i), torch::randn({32, 32}));
  t.emplace_back("big", torch::randn({64, 64}));
  return t;
}

ts::LoadOptions pread() { return ts::LoadOptions().with_backend(ts::Backend::kPread); }

// CPU loads through the staging ring, with a 2 MiB ring (buffers of 1 MiB).
ts::LoadOptions staged() {
  ts::LoadOptions options = pread().with_staging_bytes(2 * kMiB);
  return ts::detail::LoadOptionsTesting::stage_on_cpu(options);
}

std::string message_of(const ts::BudgetError& e) { return e.what_without_backtrace(); }

class Budgets : public ::testing::Test {
 protected:
  void SetUp() override {
    tensors_ = model();
    path_ = dir_.file("m.safetensors");
    ts::save(tensors_, path_);
  }
  const at::Tensor& original(const std::string& name) const {
    for (const auto& [n, t] : tensors_)
      if (n == name) return t;
    throw std::runtime_error("no tensor " + name);
  }
  TempDir dir_;
  std::string path_;
  ts::NamedTensors tensors_;
};

TEST_F(Budgets, EstimatesFollowTheLoadsBranches) {
  const ts::MemoryEstimate owned = ts::Checkpoint(path_, pread()).estimate_memory();
  EXPECT_EQ(owned.host_bytes, kTotal);
  EXPECT_EQ(owned.device_bytes, 0u);
  EXPECT_EQ(owned.staging_bytes, 0u);
  EXPECT_EQ(owned.tensors, 7u);
  EXPECT_EQ(owned.largest, "big");
  EXPECT_EQ(owned.largest_bytes, kBig);
  EXPECT_EQ(ts::Checkpoint(path_, pread()).estimate_memory({"layer.1"}).host_bytes, kSmall);
  // Views of the mapping allocate nothing; a cast allocates its copy (beside owned bytes).
  EXPECT_EQ(ts::Checkpoint(path_).estimate_memory().host_bytes, 0u);
  EXPECT_EQ(ts::Checkpoint(path_, ts::LoadOptions().with_dtype(torch::kBFloat16))
                .estimate_memory()
                .host_bytes,
            kTotal / 2);
  EXPECT_EQ(
      ts::Checkpoint(path_, pread().with_dtype(torch::kBFloat16)).estimate_memory().host_bytes,
      kTotal + kTotal / 2);
  // Through the staging ring: its buffers are host memory, by the ring's own rule (two 1 MiB
  // buffers for 7 chunks; one for a single chunk).
  const ts::MemoryEstimate ring = ts::Checkpoint(path_, staged()).estimate_memory();
  EXPECT_EQ(ring.staging_bytes, 2 * kMiB);
  EXPECT_EQ(ring.host_bytes, kTotal + 2 * kMiB);
  EXPECT_EQ(ts::device::ring_host_bytes(std::vector<uint64_t>(7, kSmall), {2 * kMiB, 16 * kMiB}),
            2 * kMiB);
  EXPECT_EQ(ts::Checkpoint(path_, staged()).estimate_memory({"big"}).staging_bytes, kMiB);
  // The estimate matches what a load allocates: an unbudgeted load of the same tensors works.
  EXPECT_EQ(ts::Checkpoint(path_, staged()).tensors().size(), 7u);
}

TEST_F(Budgets, ALoadThatCannotFitFailsBeforeAnyByteIsRead) {
  auto counting = std::make_shared<ts::CountingSource>(ts::file_source(path_, /*mapped=*/false));
  ts::Checkpoint checkpoint(ts::File(counting, pread().with_host_budget(kTotal - 100)));
  counting->reset();
  try {
    checkpoint.tensors();
    FAIL() << "expected a BudgetError";
  } catch (const ts::BudgetError& e) {
    EXPECT_EQ(e.memory(), "host");
    EXPECT_EQ(e.needed(), kTotal);
    EXPECT_EQ(e.budget(), kTotal - 100);
    EXPECT_EQ(e.shortfall(), 100u);
    EXPECT_EQ(e.largest(), "big");
    EXPECT_EQ(e.largest_bytes(), kBig);
    EXPECT_NE(message_of(e).find(": the load needs 40960 bytes of host memory, 100 more than the "
                                 "host budget of 40860 bytes; its largest tensor is 'big' (16384 "
                                 "bytes)"),
              std::string::npos)
        << message_of(e);
  }
  EXPECT_EQ(counting->bytes_read(), 0u);
  // The named tensors, one tensor, a slice: each checked; a BudgetError is a c10::Error.
  const ts::Checkpoint small(path_, pread().with_host_budget(10000));
  EXPECT_NE(error_of([&] {
              small.tensors({"layer.0", "layer.1", "layer.2"});
            })
                .find("2288 more than the host budget of 10000 bytes; its largest tensor is "
                      "'layer.0'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { small.tensor("big"); }).find("6384 more than the host budget of 10000"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              small.slice("big", {at::indexing::Slice(0, 40)});
            }).find("240 more than the host budget"),  // 40 rows of 256 bytes
            std::string::npos);
  EXPECT_TRUE(torch::equal(small.tensor("layer.0"), original("layer.0")));
  EXPECT_TRUE(torch::equal(small.slice("big", {at::indexing::Slice(0, 30)}),
                           original("big").slice(0, 0, 30)));
  // A budget big enough loads everything, bit-equal.
  const ts::TensorDict all = ts::Checkpoint(path_, pread().with_host_budget(kTotal)).tensors();
  for (const auto& [name, tensor] : tensors_) EXPECT_TRUE(torch::equal(all[name], tensor));
}

TEST_F(Budgets, StreamingLoadsGoInBatchesThatFit) {
  // 16 KiB: the big tensor alone, then four small ones, then two.
  auto counting = std::make_shared<ts::CountingSource>(ts::file_source(path_, /*mapped=*/false));
  const ts::Checkpoint fits(ts::File(counting, pread().with_host_budget(kBig)));
  const std::vector<ts::StreamBatch> plan = fits.stream_plan();
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].names, (std::vector<std::string>{"big"}));
  EXPECT_EQ(plan[1].names, (std::vector<std::string>{"layer.0", "layer.1", "layer.2", "layer.3"}));
  EXPECT_EQ(plan[2].names, (std::vector<std::string>{"layer.4", "layer.5"}));
  EXPECT_EQ(plan[0].memory.host_bytes, kBig);
  EXPECT_EQ(plan[1].memory.host_bytes, 4 * kSmall);
  EXPECT_EQ(plan[2].memory.host_bytes, 2 * kSmall);
  // for_each loads exactly those batches: each one is read whole before its first tensor is
  // handed over.
  counting->reset();
  std::vector<std::string> names;
  std::vector<uint64_t> read_when_consumed;
  fits.for_each([&](const std::string& name, at::Tensor t) {
    EXPECT_TRUE(torch::equal(t, original(name))) << name;
    names.push_back(name);
    read_when_consumed.push_back(counting->bytes_read());
  });
  EXPECT_EQ(names, (std::vector<std::string>{"big", "layer.0", "layer.1", "layer.2", "layer.3",
                                             "layer.4", "layer.5"}));
  constexpr uint64_t kFirst = kBig, kSecond = kBig + 4 * kSmall;
  EXPECT_EQ(read_when_consumed,
            (std::vector<uint64_t>{kFirst, kSecond, kSecond, kSecond, kSecond, kTotal, kTotal}));

  // 12 KiB: the big tensor fits no batch, which fails at plan time, before anything is read.
  const ts::Checkpoint small(ts::File(counting, pread().with_host_budget(12288)));
  counting->reset();
  size_t consumed = 0;
  const std::string error =
      error_of([&] { small.for_each([&](const std::string&, at::Tensor) { ++consumed; }); });
  EXPECT_NE(error.find("a streaming load's smallest batch (one tensor) needs 16384 bytes of host "
                       "memory, 4096 more than the host budget of 12288 bytes; its largest tensor "
                       "is 'big'"),
            std::string::npos)
      << error;
  EXPECT_EQ(consumed, 0u);
  EXPECT_EQ(counting->bytes_read(), 0u);
  EXPECT_NE(error_of([&] { small.stream_plan(); }), "");
  // Views allocate nothing: one batch whatever the budget.
  const ts::Checkpoint views(path_, ts::LoadOptions().with_host_budget(1));
  EXPECT_EQ(views.stream_plan().size(), 1u);
  consumed = 0;
  views.for_each([&](const std::string&, at::Tensor) { ++consumed; });
  EXPECT_EQ(consumed, 7u);
}

TEST_F(Budgets, StagedStreamingCountsEachBatchsRing) {
  // The ring of one chunk is one 1 MiB buffer, of several two: a budget of 1 MiB + 8 KiB fits one
  // small tensor a batch, and the big one not at all.
  const ts::Checkpoint tight(path_, ts::LoadOptions(staged()).with_host_budget(kMiB + 8192));
  const std::string error =
      error_of([&] { tight.for_each([](const std::string&, at::Tensor) {}); });
  EXPECT_NE(error.find("needs 1064960 bytes of host memory (1048576 of them staging buffers), "
                       "8192 more than the host budget of 1056768 bytes; its largest tensor is "
                       "'big'"),
            std::string::npos)
      << error;
  const ts::Checkpoint one_each(path_, ts::LoadOptions(staged()).with_host_budget(kMiB + kBig));
  const std::vector<ts::StreamBatch> plan = one_each.stream_plan();
  EXPECT_EQ(plan.size(), 7u);
  for (const ts::StreamBatch& batch : plan) {
    EXPECT_EQ(batch.names.size(), 1u);
    EXPECT_EQ(batch.memory.staging_bytes, kMiB);
    EXPECT_LE(batch.memory.host_bytes, kMiB + kBig);
  }
  // Two buffers: 2 MiB + 16 KiB takes the big tensor, then four small ones, then two.
  const ts::Checkpoint wider(path_, ts::LoadOptions(staged()).with_host_budget(2 * kMiB + kBig));
  std::vector<size_t> sizes;
  for (const ts::StreamBatch& batch : wider.stream_plan()) {
    sizes.push_back(batch.names.size());
    EXPECT_LE(batch.memory.host_bytes, 2 * kMiB + kBig);
  }
  EXPECT_EQ(sizes, (std::vector<size_t>{1, 4, 2}));
  size_t count = 0;
  wider.for_each([&](const std::string& name, at::Tensor t) {
    EXPECT_TRUE(torch::equal(t, original(name))) << name;
    ++count;
  });
  EXPECT_EQ(count, 7u);
  // A device budget bounds device memory only: a CPU load allocates none.
  EXPECT_EQ(ts::Checkpoint(path_, pread().with_device_budget(1)).tensors().size(), 7u);
}

TEST_F(Budgets, ShardedCheckpointsAreCheckedAsAWhole) {
  TempDir dir;
  ts::save_sharded(tensors_, dir.path(), ts::ShardOptions().with_max_shard_size("20KB"));
  const ts::Checkpoint sharded(dir.path(), pread().with_host_budget(kTotal - 1));
  ASSERT_TRUE(sharded.index_path());
  EXPECT_EQ(sharded.estimate_memory().host_bytes, kTotal);
  const std::string error = error_of([&] { sharded.tensors(); });
  EXPECT_NE(error.find(*sharded.index_path() + ": the load needs 40960 bytes"), std::string::npos)
      << error;
  // Streaming goes shard by shard, in batches of each.
  size_t count = 0;
  uint64_t planned = 0;
  for (const ts::StreamBatch& batch : sharded.stream_plan()) {
    EXPECT_LE(batch.memory.host_bytes, kTotal - 1);
    planned += batch.memory.host_bytes;
  }
  EXPECT_EQ(planned, kTotal);
  sharded.for_each([&](const std::string& name, at::Tensor t) {
    EXPECT_TRUE(torch::equal(t, original(name))) << name;
    ++count;
  });
  EXPECT_EQ(count, 7u);
}

TEST_F(Budgets, ZeroIsAClearErrorBeforeAnyByteIsRead) {
  auto counting = std::make_shared<ts::CountingSource>(ts::file_source(path_, /*mapped=*/false));
  counting->reset();
  EXPECT_NE(error_of([&] { ts::File(counting, ts::LoadOptions().with_host_budget(0)); })
                .find("a host budget of 0 bytes fits nothing: expected a positive number of "
                      "bytes, or no host budget for no limit"),
            std::string::npos);
  EXPECT_EQ(counting->bytes_read(), 0u);
  EXPECT_NE(error_of([&] {
              ts::Checkpoint(path_, ts::LoadOptions().with_device_budget(0));
            }).find("a device budget of 0 bytes fits nothing"),
            std::string::npos);
  // An index: before it is read (this one is not even JSON).
  const std::string index = dir_.file("x.safetensors.index.json");
  ts_test::write_file(index, "not json");
  EXPECT_NE(error_of([&] {
              ts::Checkpoint(index, ts::LoadOptions().with_host_budget(0));
            }).find("a host budget of 0 bytes fits nothing"),
            std::string::npos);
  try {
    ts::Checkpoint(path_, ts::LoadOptions().with_host_budget(0));
    FAIL() << "expected a ValueError";
  } catch (const c10::ValueError&) {
  }
}

TEST_F(Budgets, RankLoadsReportAndCheckTheirEstimate) {
  ts::ShardPlan plan;
  plan.patterns = {{"layer", ts::ShardRule::parse("colwise")}};
  const ts::Checkpoint checkpoint(path_, pread());
  const ts::MemoryEstimate mine = ts::estimate_for_rank(checkpoint, plan, 1, 2);
  EXPECT_EQ(mine.host_bytes, 6 * kSmall / 2 + kBig);  // "big" is replicated
  EXPECT_EQ(mine.tensors, 7u);
  EXPECT_EQ(ts::estimate_for_rank(checkpoint, plan, 0, 2).host_bytes, mine.host_bytes);
  const ts::RankLoad load = ts::load_for_rank(checkpoint, plan, 1, 2);
  EXPECT_EQ(load.memory.host_bytes, mine.host_bytes);
  EXPECT_EQ(load.tensor_bytes, mine.host_bytes);
  const ts::Checkpoint tight(path_, pread().with_host_budget(mine.host_bytes - 1));
  try {
    ts::load_for_rank(tight, plan, 1, 2);
    FAIL() << "expected a BudgetError";
  } catch (const ts::BudgetError& e) {
    EXPECT_EQ(e.shortfall(), 1u);
    EXPECT_EQ(e.largest(), "big");
    EXPECT_NE(message_of(e).find("the rank's load needs 28672 bytes of host memory"),
              std::string::npos)
        << message_of(e);
  }
  // A budget the rank's pieces fit, though the model does not.
  const ts::Checkpoint enough(path_, pread().with_host_budget(mine.host_bytes));
  const ts::RankLoad fitted = ts::load_for_rank(enough, plan, 1, 2);
  EXPECT_TRUE(torch::equal(fitted.tensors["big"], original("big")));
  EXPECT_TRUE(torch::equal(fitted.tensors["layer.2"], original("layer.2").slice(0, 16, 32)));
}

}  // namespace
