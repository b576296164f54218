// AOTInductor packages with safetensors weights (aoti.h), end to end: a model packaged without its
// weights (python/make_aoti_package.py) runs with weights loaded from safetensors and matches eager
// PyTorch; a second set is loaded into the inactive buffer while another thread runs inference,
// then swapped in; every wrong file is refused before the package changes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <atomic>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"
#include "torch_safetensors/aoti.h"
#include "torch_safetensors/safetensors.h"

namespace ts = torch::safetensors;
using torch::inductor::AOTIModelPackageLoader;

namespace {

// The anonymous resident memory of this process (RssAnon in /proc/self/status), in bytes: what a
// copy of the weights adds, and a mapping of the file does not.
int64_t rss_anon() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    int64_t kb = 0;
    if (key == "RssAnon:" && status >> kb) return kb * 1024;
    status.ignore(1 << 20, '\n');
  }
  return -1;
}

class Aoti : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string skip;
    folder_ = ts_test::cached_script_output(TS_AOTI_SCRIPT, TS_AOTI_CACHE, "io.safetensors", skip);
    if (folder_.empty()) GTEST_SKIP() << "AOTInductor cannot compile here: " << skip;
    ts::File io(file("io.safetensors"));
    x_ = io.tensor("x");
    y_a_ = io.tensor("y_a");
    y_b_ = io.tensor("y_b");
  }
  std::string file(const std::string& name) const { return folder_ + "/" + name; }
  at::Tensor run(AOTIModelPackageLoader& package) const { return package.run({x_})[0]; }
  // weights_b with `change` applied, written to a file of its own.
  std::string edited(const std::function<void(std::map<std::string, at::Tensor>&)>& change) {
    std::map<std::string, at::Tensor> tensors;
    for (const auto& item : ts::Checkpoint(file("weights_b.safetensors")).tensors()) {
      tensors[item.key()] = item.value();
    }
    change(tensors);
    const std::string path = dir_.file("edited.safetensors");
    ts::save(tensors, path);
    return path;
  }

  ts_test::TempDir dir_;
  std::string folder_;
  at::Tensor x_, y_a_, y_b_;
};

TEST_F(Aoti, ConstantsAreDescribedByTheirFqnsWithSizesFromThePackage) {
  AOTIModelPackageLoader package(file("model.pt2"));
  const auto constants = ts::aoti_constants(package);
  std::map<std::string, ts::AotiConstant> by_fqn;
  for (const auto& constant : constants) by_fqn[constant.fqn] = constant;
  auto fqns = package.get_constant_fqns();
  ASSERT_EQ(constants.size(), fqns.size());
  for (const auto& fqn : fqns) ASSERT_TRUE(by_fqn.count(fqn)) << fqn;
  const auto& l1 = by_fqn.at("l1.weight");
  EXPECT_EQ(l1.dtype, at::kFloat);
  ASSERT_TRUE(l1.sizes.has_value());
  EXPECT_EQ(*l1.sizes, (std::vector<int64_t>{2048, 512}));
  EXPECT_EQ(*l1.strides, (std::vector<int64_t>{512, 1}));
  EXPECT_EQ(l1.nbytes, 2048u * 512 * 4);
  ASSERT_TRUE(by_fqn.count("scale"));  // a buffer
  // The tied pair is asked for once.
  EXPECT_EQ(by_fqn.count("embed.weight") + by_fqn.count("head.weight"), 1u);
}

TEST_F(Aoti, LoadsZeroCopyAndMatchesEager) {
  AOTIModelPackageLoader package(file("model.pt2"));
  const int64_t before = rss_anon();
  // weights_a holds the tied pair under the name the reference's save_model kept; __metadata__
  // names the other.
  const ts::ModuleLoadReport report = ts::load(package, file("weights_a.safetensors"));
  EXPECT_TRUE(report.ok());
  const at::Tensor y = run(package);
  const int64_t growth = rss_anon() - before;
  EXPECT_TRUE(torch::allclose(y, y_a_, 1e-4, 1e-4)) << (y - y_a_).abs().max();
  // The package reads the mapping itself: the 16 MB of weights are not copied.
  EXPECT_LT(growth, 6 << 20) << "RssAnon grew by " << growth;
  for (const auto& [fqn, tensor] : package.get_runner()->extract_constants_map(false)) {
    EXPECT_NE(ts_test::mapped_file_of(tensor.data_ptr()).find("weights_a.safetensors"),
              std::string::npos)
        << fqn;
  }
}

TEST_F(Aoti, LoadsFromAShardedCheckpoint) {
  std::map<std::string, at::Tensor> tensors;
  for (const auto& item : ts::Checkpoint(file("weights_b.safetensors")).tensors()) {
    tensors[item.key()] = item.value();
  }
  ts::save_sharded(tensors, dir_.file("sharded"), ts::ShardOptions().with_max_shard_size("5MB"));
  ASSERT_GT(ts::Checkpoint(dir_.file("sharded")).shard_files().size(), 2u);
  AOTIModelPackageLoader package(file("model.pt2"));
  EXPECT_TRUE(ts::load(package, dir_.file("sharded")).ok());
  EXPECT_TRUE(torch::allclose(run(package), y_b_, 1e-4, 1e-4));
}

TEST_F(Aoti, CopyModeGivesThePackageItsOwnMemory) {
  AOTIModelPackageLoader package(file("model.pt2"));
  const int64_t before = rss_anon();
  ts::load(package, file("weights_b.safetensors"), ts::AotiLoadOptions().with_copy());
  EXPECT_GT(rss_anon() - before, 16 << 20);
  EXPECT_TRUE(torch::allclose(run(package), y_b_, 1e-4, 1e-4));
  for (const auto& [fqn, tensor] : package.get_runner()->extract_constants_map(false)) {
    EXPECT_EQ(ts_test::mapped_file_of(tensor.data_ptr()), "") << fqn;
  }
}

TEST_F(Aoti, SwapsToTheInactiveSetWhileAnotherThreadRuns) {
  AOTIModelPackageLoader package(file("model.pt2"));
  ts::load(package, file("weights_a.safetensors"));
  std::atomic<bool> stop{false};
  std::atomic<int> runs{0}, saw_b{0}, neither{0};
  struct Join {  // also when an assertion below throws
    std::atomic<bool>& stop;
    std::thread thread;
    ~Join() {
      stop = true;
      if (thread.joinable()) thread.join();
    }
  } server{stop, std::thread([&] {
             while (!stop) {
               const at::Tensor y = run(package);
               if (torch::allclose(y, y_b_, 1e-4, 1e-4)) {
                 ++saw_b;
               } else if (!torch::allclose(y, y_a_, 1e-4, 1e-4)) {
                 ++neither;
               }
               ++runs;
             }
           })};
  while (runs < 3) std::this_thread::yield();
  EXPECT_EQ(saw_b, 0);
  ts::load(package, file("weights_b.safetensors"), ts::AotiLoadOptions().with_inactive());
  const int before_swap = runs;
  EXPECT_EQ(saw_b, 0);  // the active set kept serving
  ts::swap_constants(package);
  while (saw_b < 3) std::this_thread::yield();
  stop = true;
  server.thread.join();
  EXPECT_GE(before_swap, 3);
  EXPECT_EQ(neither, 0);  // every run saw one whole set
  EXPECT_TRUE(torch::allclose(run(package), y_b_, 1e-4, 1e-4));
  // Swapping again serves the first set, still in the (now inactive) buffer.
  ts::swap_constants(package);
  EXPECT_TRUE(torch::allclose(run(package), y_a_, 1e-4, 1e-4));
}

TEST_F(Aoti, ReplacedSetsAreReleased) {
  // AOTInductor never releases a user-managed constant; the library releases each once replaced,
  // so however many sets are swapped in, at most the two buffers' stay mapped.
  const std::string weights = ts_test::read_file(file("weights_b.safetensors"));
  const auto mapped = [&](int count) {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    std::set<std::string> files;
    while (std::getline(maps, line)) {
      for (int i = 0; i < count; ++i) {
        if (line.find(dir_.file("set" + std::to_string(i))) != std::string::npos) {
          files.insert(std::to_string(i));
        }
      }
    }
    return files.size();
  };
  AOTIModelPackageLoader package(file("model.pt2"));
  ts::load(package, file("weights_a.safetensors"));
  constexpr int kSets = 5;
  for (int i = 0; i < kSets; ++i) {
    const std::string path = dir_.file("set" + std::to_string(i) + ".safetensors");
    ts_test::write_file(path, weights);
    ts::load(package, path, ts::AotiLoadOptions().with_inactive());
    ts::swap_constants(package);
    EXPECT_TRUE(torch::allclose(run(package), y_b_, 1e-4, 1e-4));
  }
  EXPECT_LE(mapped(kSets), 2u);
}

TEST_F(Aoti, WrongFilesAreRefusedBeforeThePackageChanges) {
  AOTIModelPackageLoader package(file("model.pt2"));
  ts::load(package, file("weights_a.safetensors"));
  at::Tensor serving = y_a_;  // what the package computes
  const auto refused = [&](const std::string& path, const ts::AotiLoadOptions& options = {}) {
    const std::string error = ts_test::error_of([&] { ts::load(package, path, options); });
    EXPECT_TRUE(torch::allclose(run(package), serving, 1e-4, 1e-4)) << "changed by " << error;
    return error;
  };
  std::string error =
      refused(edited([](auto& t) { t["l1.weight"] = t["l1.weight"].to(at::kDouble); }));
  EXPECT_NE(error.find("tensor 'l1.weight' is Double, the package's constant 'l1.weight' is Float"),
            std::string::npos)
      << error;
  error = refused(edited([](auto& t) { t["l1.weight"] = t["l1.weight"].t().contiguous(); }));
  EXPECT_NE(error.find("shape mismatch: l1.weight: package [2048, 512], file [512, 2048]"),
            std::string::npos)
      << error;
  error = refused(edited([](auto& t) { t.erase("l2.bias"); }));
  EXPECT_NE(error.find("missing from the file: l2.bias"), std::string::npos) << error;
  error = refused(edited([](auto& t) { t["extra"] = torch::ones({3}); }));
  EXPECT_NE(error.find("not taken by the package: extra"), std::string::npos) << error;
  error = refused(file("weights_b.safetensors"), ts::AotiLoadOptions().with_device(c10::kMeta));
  EXPECT_NE(error.find("the package runs on cpu, its constants cannot be loaded to meta"),
            std::string::npos)
      << error;
  // Not strict: an unexpected name is reported and skipped, a missing one keeps its value.
  const std::string partial = edited([](auto& t) {
    t = {{"l1.bias", torch::zeros({2048})}, {"extra", torch::ones({3})}};
  });
  const auto report = ts::load(package, partial, ts::AotiLoadOptions().with_strict(false));
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"extra"});
  EXPECT_EQ(report.missing.size(), ts::aoti_constants(package).size() - 1);
  serving = run(package);
  EXPECT_FALSE(torch::allclose(serving, y_a_, 1e-4, 1e-4));  // l1.bias changed
  // The inactive buffer is empty: a partial set cannot fill it.
  error = refused(partial, ts::AotiLoadOptions().with_strict(false).with_inactive());
  EXPECT_NE(error.find("inactive constant buffer does not hold either"), std::string::npos)
      << error;
}

TEST_F(Aoti, AnAliasNamesATiedWeightTheFileHoldsUnderAnotherName) {
  AOTIModelPackageLoader package(file("model.pt2"));
  std::string asked, other;
  for (const auto& constant : ts::aoti_constants(package)) {
    if (constant.fqn == "embed.weight") asked = "embed.weight", other = "head.weight";
    if (constant.fqn == "head.weight") asked = "head.weight", other = "embed.weight";
  }
  ASSERT_FALSE(asked.empty());
  const std::string renamed = edited([&](auto& t) {
    t["tied"] = t[asked];
    t.erase("embed.weight");
    t.erase("head.weight");
  });
  EXPECT_NE(ts_test::error_of([&] { ts::load(package, renamed); }).find("AotiLoadOptions::aliases"),
            std::string::npos);
  ts::load(package, renamed, ts::AotiLoadOptions().with_alias(asked, "tied"));
  EXPECT_TRUE(torch::allclose(run(package), y_b_, 1e-4, 1e-4));
}

}  // namespace
