// Memory budgets (LoadOptions::device_budget, host_budget): the estimate a load is planned with
// (owned tensors, views that cost nothing, casts, the staging ring), a BudgetError naming the
// largest tensor and the shortfall before anything is allocated or read, streaming loads in
// batches that fit, per-rank estimates, and a budget of zero refused.
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

// 6 tensors of 4 KiB (float32 32x32), one of 16 KiB: 40 KiB in all.
ts::NamedTensors model() {
  torch::manual_seed(0);
  ts::NamedTensors t;
  for (int i = 0; i < 6; ++i) t.emplace_back("layer." + std::to_string(i), torch::randn({32, 32}));
  t.emplace_back("big", torch::randn({64, 64}));
  return t;
}

uint64_t total_bytes(const ts::NamedTensors& t) {
  uint64_t n = 0;
  for (const auto& [name, tensor] : t) n += tensor.nbytes();
  return n;
}

class Budgets : public ::testing::Test {
 protected:
  void SetUp() override {
    tensors_ = model();
    path_ = dir_.file("m.safetensors");
    ts::save(tensors_, path_);
  }
  TempDir dir_;
  std::string path_;
  ts::NamedTensors tensors_;
};

TEST_F(Budgets, EstimatesFollowTheLoadsBranches) {
  const uint64_t total = total_bytes(tensors_);
  const auto pread = ts::Checkpoint(path_, ts::LoadOptions().with_backend(ts::Backend::kPread));
  EXPECT_EQ(pread.estimate_memory().host_bytes, total);
  EXPECT_EQ(pread.estimate_memory().device_bytes, 0u);
  EXPECT_EQ(pread.estimate_memory().largest, "big");
  EXPECT_EQ(pread.estimate_memory().largest_bytes, 64u * 64 * 4);
  EXPECT_EQ(pread.estimate_memory({"layer.1"}).host_bytes, 32u * 32 * 4);
  // Views of the mapping allocate nothing; a cast allocates the cast copy.
  EXPECT_EQ(ts::Checkpoint(path_).estimate_memory().host_bytes, 0u);
  EXPECT_EQ(ts::Checkpoint(path_, ts::LoadOptions().with_dtype(torch::kBFloat16))
                .estimate_memory()
                .host_bytes,
            total / 2);
  // Through the staging ring: the ring's buffers are host memory.
  ts::LoadOptions staged = ts::LoadOptions().with_backend(ts::Backend::kPread);
  ts::detail::LoadOptionsTesting::stage_on_cpu(staged);
  const ts::MemoryEstimate ring = ts::Checkpoint(path_, staged).estimate_memory();
  EXPECT_GT(ring.staging_bytes, 0u);
  EXPECT_EQ(ring.host_bytes, total + ring.staging_bytes);
}

TEST_F(Budgets, ALoadThatCannotFitFailsBeforeAnyByteIsRead) {
  const uint64_t total = total_bytes(tensors_);
  auto counting = std::make_shared<ts::CountingSource>(ts::file_source(path_, /*mapped=*/false));
  ts::Checkpoint checkpoint(ts::File(
      counting, ts::LoadOptions().with_backend(ts::Backend::kPread).with_host_budget(total - 100)));
  counting->reset();
  try {
    checkpoint.tensors();
    FAIL() << "expected a BudgetError";
  } catch (const ts::BudgetError& e) {
    EXPECT_EQ(e.memory(), "host");
    EXPECT_EQ(e.shortfall(), 100u);
    EXPECT_EQ(e.largest(), "big");
    const std::string message = e.what_without_backtrace();
    EXPECT_NE(message.find("the load needs " + std::to_string(total) +
                           " bytes of host memory, 100 more than its host budget of " +
                           std::to_string(total - 100) +
                           " bytes; its largest tensor is 'big' (16384 bytes)"),
              std::string::npos)
        << message;
  }
  EXPECT_EQ(counting->bytes_read(), 0u);
  // One tensor at a time too; a budget error is a c10::Error like every other.
  const ts::Checkpoint small(
      path_, ts::LoadOptions().with_backend(ts::Backend::kPread).with_host_budget(10000));
  EXPECT_NE(error_of([&] { small.tensor("big"); }).find("6384 more than its host budget"),
            std::string::npos);
  EXPECT_TRUE(torch::equal(small.tensor("layer.0"), tensors_[0].second));
}

TEST_F(Budgets, StreamingLoadsGoInBatchesThatFit) {
  // 12 KiB: three small tensors a batch, the big one cannot fit.
  for (auto backend : {ts::Backend::kPread, ts::Backend::kMmap}) {
    ts::Checkpoint small_budget(path_,
                                ts::LoadOptions().with_backend(backend).with_host_budget(12288));
    std::vector<std::string> seen;
    const std::string error = error_of([&] {
      small_budget.for_each([&](const std::string& name, at::Tensor) { seen.push_back(name); });
    });
    if (backend == ts::Backend::kPread) {
      EXPECT_NE(error.find("its largest tensor is 'big'"), std::string::npos) << error;
      EXPECT_TRUE(seen.empty());  // refused before anything is read
    } else {
      EXPECT_EQ(error, "");  // views: nothing allocated
    }
  }
  ts::Checkpoint fits(path_,
                      ts::LoadOptions().with_backend(ts::Backend::kPread).with_host_budget(16384));
  size_t count = 0;
  fits.for_each([&](const std::string& name, at::Tensor t) {
    for (const auto& [n, original] : tensors_)
      if (n == name) EXPECT_TRUE(torch::equal(t, original)) << name;
    ++count;
  });
  EXPECT_EQ(count, tensors_.size());
  // Staged (through the ring): each batch's ring counts too.
  ts::LoadOptions staged = ts::LoadOptions().with_backend(ts::Backend::kPread);
  ts::detail::LoadOptionsTesting::stage_on_cpu(staged);
  const uint64_t ring = ts::detail::staging_capacity(staged);
  EXPECT_GE(ring, ts::Checkpoint(path_, staged).estimate_memory().staging_bytes);
  EXPECT_NE(error_of([&] {
              ts::Checkpoint(path_, ts::LoadOptions(staged).with_host_budget(ring))
                  .for_each([](const std::string&, at::Tensor) {});
            }).find("staging buffers"),
            std::string::npos);
  staged.with_host_budget(ring + 16384);
  count = 0;
  ts::Checkpoint(path_, staged).for_each([&](const std::string&, at::Tensor) { ++count; });
  EXPECT_EQ(count, tensors_.size());
}

TEST_F(Budgets, ZeroIsAClearError) {
  EXPECT_NE(error_of([&] {
              ts::Checkpoint(path_, ts::LoadOptions().with_host_budget(0));
            }).find("a host budget of 0 bytes fits nothing"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              ts::Checkpoint(path_, ts::LoadOptions().with_device_budget(0));
            }).find("a device budget of 0 bytes fits nothing"),
            std::string::npos);
}

TEST_F(Budgets, RankLoadsReportAndCheckTheirEstimate) {
  ts::ShardPlan plan;
  plan.patterns = {{"layer", ts::ShardRule::parse("colwise")}};
  const auto options = ts::LoadOptions().with_backend(ts::Backend::kPread);
  const ts::Checkpoint checkpoint(path_, options);
  const ts::MemoryEstimate mine = ts::estimate_for_rank(checkpoint, plan, 1, 2);
  EXPECT_EQ(mine.host_bytes, 6u * 32 * 32 * 4 / 2 + 64 * 64 * 4);  // "big" is replicated
  const ts::RankLoad load = ts::load_for_rank(checkpoint, plan, 1, 2);
  EXPECT_EQ(load.memory.host_bytes, mine.host_bytes);
  EXPECT_EQ(load.tensor_bytes, mine.host_bytes);
  const ts::Checkpoint tight(path_, ts::LoadOptions(options).with_host_budget(mine.host_bytes - 1));
  try {
    ts::load_for_rank(tight, plan, 1, 2);
    FAIL() << "expected a BudgetError";
  } catch (const ts::BudgetError& e) {
    EXPECT_EQ(e.shortfall(), 1u);
    EXPECT_EQ(e.largest(), "big");
  }
}

}  // namespace
