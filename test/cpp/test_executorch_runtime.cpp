// End to end through ExecuTorch's C++ runtime (libexecutorch.so and its optimized kernels): a
// program exported with external constants (python/make_executorch_program.py) runs with new
// weights written as safetensors, served once by our .ptd (ExecuTorch's FlatTensorDataMap reads
// it) and once by SafetensorsDataMap (no .ptd at all); both give eager PyTorch's output.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/extension/flat_tensor/flat_tensor_data_map.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/core/memory_allocator.h>
#include <executorch/runtime/executor/memory_manager.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/runtime.h>

#include "test_util.h"
#include "torch_safetensors/executorch.h"
#include "torch_safetensors/executorch_data_map.h"
#include "torch_safetensors/safetensors.h"

namespace ts = torch::safetensors;
namespace et = ::executorch::runtime;
using ::executorch::extension::FileDataLoader;
using ::executorch::extension::FlatTensorDataMap;
using ts_test::TempDir;

namespace {

// Runs `forward` of the program at `pte` on `x` with weights from `weights`.
at::Tensor run(const std::string& pte, const et::NamedDataMap* weights, const at::Tensor& x) {
  et::runtime_init();
  auto loader = FileDataLoader::from(pte.c_str());
  TORCH_CHECK(loader.ok(), "FileDataLoader: error ", int(loader.error()));
  auto program = et::Program::load(&loader.get());
  TORCH_CHECK(program.ok(), "Program::load: error ", int(program.error()));
  auto meta = program->method_meta("forward");
  TORCH_CHECK(meta.ok(), "method_meta: error ", int(meta.error()));
  std::vector<std::vector<uint8_t>> planned;
  std::vector<et::Span<uint8_t>> spans;
  for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
    planned.emplace_back(meta->memory_planned_buffer_size(i).get());
  }
  for (auto& buffer : planned) spans.emplace_back(buffer.data(), buffer.size());
  et::HierarchicalAllocator planned_memory({spans.data(), spans.size()});
  std::vector<uint8_t> pool(1 << 20);
  et::MemoryAllocator method_allocator(uint32_t(pool.size()), pool.data());
  et::MemoryManager memory(&method_allocator, &planned_memory);
  auto method = program->load_method("forward", &memory, nullptr, weights);
  TORCH_CHECK(method.ok(), "load_method: error ", int(method.error()));

  at::Tensor input = x.contiguous();
  std::vector<int32_t> sizes(input.sizes().begin(), input.sizes().end());
  std::vector<uint8_t> dim_order = {0, 1};
  std::vector<int32_t> strides = {int32_t(input.stride(0)), 1};
  ::executorch::aten::TensorImpl impl(::executorch::aten::ScalarType::Float, int64_t(sizes.size()),
                                      sizes.data(), input.data_ptr(), dim_order.data(),
                                      strides.data());
  TORCH_CHECK(method->set_input(et::EValue(::executorch::aten::Tensor(&impl)), 0) == et::Error::Ok);
  const et::Error status = method->execute();
  TORCH_CHECK(status == et::Error::Ok, "execute: error ", int(status));
  const ::executorch::aten::Tensor out = method->get_output(0).toTensor();
  std::vector<int64_t> out_sizes(out.sizes().begin(), out.sizes().end());
  return torch::from_blob(out.mutable_data_ptr(), out_sizes, torch::kFloat32).clone();
}

class ExecuTorchRuntime : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string skip;
    program_ = ts_test::cached_script_output(TS_EXECUTORCH_SCRIPT, TS_EXECUTORCH_CACHE,
                                             "io.safetensors", skip);
    if (program_.empty()) {
      GTEST_SKIP() << "the executorch Python package is not installed (scripts/setup.sh "
                      "installs it): cannot export a program. "
                   << skip;
    }
    ts::File io(program("io.safetensors"));
    x_ = io.tensor("x");
    y_ = io.tensor("y");
    y_original_ = io.tensor("y_original");
  }
  std::string program(const std::string& name) const { return program_ + "/" + name; }
  TempDir dir_;  // what the tests write
  std::string program_;
  at::Tensor x_, y_, y_original_;
};

}  // namespace

TEST_F(ExecuTorchRuntime, OurPtdThroughFlatTensorDataMap) {
  ts::save_ptd(ts::Checkpoint(program("weights.safetensors")), dir_.file("ours.ptd"));
  for (const std::string& ptd : {program("reference.ptd"), dir_.file("ours.ptd")}) {
    auto loader = FileDataLoader::from(ptd.c_str());
    ASSERT_TRUE(loader.ok());
    auto map = FlatTensorDataMap::load(&loader.get());
    ASSERT_TRUE(map.ok()) << ptd << ": error " << int(map.error());
    const at::Tensor y = run(program("model.pte"), &map.get(), x_);
    const at::Tensor& expected = ptd == dir_.file("ours.ptd") ? y_ : y_original_;
    EXPECT_TRUE(torch::allclose(y, expected, 1e-5, 1e-6)) << ptd << "\n" << y << "\n" << expected;
  }
  EXPECT_FALSE(torch::allclose(y_, y_original_));
}

TEST_F(ExecuTorchRuntime, SafetensorsDataMapServesTheCheckpoint) {
  ts::SafetensorsDataMap weights(program("weights.safetensors"));
  ASSERT_EQ(weights.get_num_keys().get(), 5u);
  EXPECT_TRUE(torch::allclose(run(program("model.pte"), &weights, x_), y_, 1e-5, 1e-6));

  // Zero-copy: the data is the checkpoint's mapping.
  auto data = weights.get_data("linear.weight");
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(data->size(), 8u * 4 * 4);
  EXPECT_NE(ts_test::mapped_file_of(data->data()).find("weights.safetensors"), std::string::npos);
  auto layout = weights.get_tensor_layout("linear.weight");
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->scalar_type(), ::executorch::aten::ScalarType::Float);
  EXPECT_EQ(layout->sizes().size(), 2u);
  EXPECT_EQ(layout->sizes()[0], 8);
  EXPECT_EQ(layout->nbytes(), 128u);
  EXPECT_EQ(weights.get_data("no.such.key").error(), et::Error::NotFound);
  EXPECT_EQ(weights.get_key(5).error(), et::Error::InvalidArgument);
  std::vector<float> copy(32);
  EXPECT_EQ(weights.load_data_into("linear.weight", copy.data(), 64), et::Error::InvalidArgument);
  ASSERT_EQ(weights.load_data_into("linear.weight", copy.data(), 128), et::Error::Ok);
  EXPECT_TRUE(torch::equal(torch::from_blob(copy.data(), {8, 4}),
                           ts::File(program("weights.safetensors")).tensor("linear.weight")));
}

TEST_F(ExecuTorchRuntime, SafetensorsDataMapServesAShardedCheckpoint) {
  ts::NamedTensors tensors;
  for (const auto& item : ts::load(program("weights.safetensors"))) {
    tensors.emplace_back(item.key(), item.value());
  }
  ts::save_sharded(tensors, dir_.file("sharded"), ts::ShardOptions().with_max_shard_size(64));
  ts::SafetensorsDataMap weights(dir_.file("sharded"));
  ASSERT_GT(weights.checkpoint().shard_files().size(), 2u);
  EXPECT_TRUE(torch::allclose(run(program("model.pte"), &weights, x_), y_, 1e-5, 1e-6));
}

TEST_F(ExecuTorchRuntime, SafetensorsDataMapRenamesAndRefuses) {
  // A checkpoint whose names carry a prefix (a Hugging Face style "model."), served by stripping
  // it.
  ts::NamedTensors prefixed;
  for (const auto& item : ts::load(program("weights.safetensors"))) {
    prefixed.emplace_back("model." + item.key(), item.value());
  }
  prefixed.emplace_back("model.extra", torch::zeros({2}, torch::kComplexFloat));
  ts::save(prefixed, dir_.file("prefixed.safetensors"));
  ts::SafetensorsDataMap weights(dir_.file("prefixed.safetensors"),
                                 ts::PtdOptions().with_strip_prefix("model."));
  EXPECT_TRUE(torch::allclose(run(program("model.pte"), &weights, x_), y_, 1e-5, 1e-6));
  // A dtype ExecuTorch lacks: that key has no layout; the others are served.
  EXPECT_EQ(weights.get_tensor_layout("extra").error(), et::Error::NotSupported);
  // Without the prefix stripped, the program's keys are missing: load_method fails.
  ts::SafetensorsDataMap unstripped(dir_.file("prefixed.safetensors"));
  EXPECT_NE(ts_test::error_of([&] {
              run(program("model.pte"), &unstripped, x_);
            }).find("load_method: error"),
            std::string::npos);
}
