// TorchScript: weights written by Python's save_model from a scripted model load into a
// torch::jit::load'ed copy whose weights were zeroed, giving the original's outputs bit for bit;
// C++ save/load of a jit::Module round-trips; a mismatch is the same strict report as nn::Module.
#include <gtest/gtest.h>

#include <torch/script.h>
#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include <sstream>

#include "test_util.h"

namespace st = torch::safetensors;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

// Runs test/python/make_jit_model.py into `dir`; asserts that it worked.
void make_python_files(const TempDir& dir) {
  const std::string command =
      std::string(TS_PYTHON) + " " + TS_JIT_SCRIPT + " " + dir.path() + " 2>&1";
  const int status = std::system(command.c_str());
  ASSERT_EQ(status, 0) << "`" << command << "` failed (exit status " << status
                       << "): the Python package torch_safetensors must be importable when the "
                          "C++ tests run (scripts/python.sh, or PYTHONPATH=<checkout> after an "
                          "in-place build_ext)";
}

void zero_weights(torch::jit::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto p : module.parameters()) p.zero_();
  for (auto b : module.buffers()) {
    if (b.is_floating_point()) b.zero_();
  }
}

torch::Tensor run(torch::jit::Module& module, const torch::Tensor& input) {
  torch::NoGradGuard no_grad;
  return module.forward({input}).toTensor();
}

}  // namespace

TEST(Jit, WeightsFromPythonSaveModelGiveIdenticalOutputs) {
  TempDir dir;
  make_python_files(dir);
  torch::jit::Module module = torch::jit::load(dir.file("model.pt"));
  module.eval();
  const st::TensorDict io = st::load(dir.file("io.safetensors"));
  const torch::Tensor input = io["input"], expected = io["output"];
  ASSERT_TRUE(torch::equal(run(module, input), expected));  // torch's own copy, as a baseline

  zero_weights(module);
  ASSERT_FALSE(torch::equal(run(module, input), expected));
  const st::ModuleLoadReport report = st::load(module, dir.file("weights.safetensors"));
  EXPECT_TRUE(report.ok());
  EXPECT_TRUE(torch::equal(run(module, input), expected));
}

TEST(Jit, SaveAndLoadRoundTripThroughEveryDestination) {
  TempDir dir;
  make_python_files(dir);
  torch::jit::Module source = torch::jit::load(dir.file("model.pt"));
  source.eval();
  std::stringstream ss;
  st::save(source, ss);
  st::save(source, dir.file("cpp.safetensors"));
  EXPECT_EQ(ss.str(), ts_test::read_file(dir.file("cpp.safetensors")));
  // The same bytes as Python's save_model of the same module.
  EXPECT_EQ(ss.str(), ts_test::read_file(dir.file("weights.safetensors")));

  torch::jit::Module target = torch::jit::load(dir.file("model.pt"));
  target.eval();
  zero_weights(target);
  st::load(target, ss, torch::Device("cpu"));
  const torch::Tensor input = st::load(dir.file("io.safetensors"))["input"];
  EXPECT_TRUE(torch::equal(run(target, input), run(source, input)));
}

TEST(Jit, StrictByDefaultWithTheModuleReport) {
  TempDir dir;
  make_python_files(dir);
  torch::jit::Module module = torch::jit::load(dir.file("model.pt"));
  st::save(std::vector<torch::Tensor>{torch::ones({2})}, dir.file("vector.safetensors"));
  const torch::Tensor before = module.attr("fc1").toModule().attr("weight").toTensor().clone();
  const std::string error = error_of([&] { st::load(module, dir.file("vector.safetensors")); });
  EXPECT_NE(error.find("vector.safetensors"), std::string::npos) << error;
  EXPECT_NE(error.find("missing from the file: fc1.weight"), std::string::npos) << error;
  EXPECT_NE(error.find("not in the module: 0"), std::string::npos) << error;
  EXPECT_TRUE(torch::equal(before, module.attr("fc1").toModule().attr("weight").toTensor()));
  const st::ModuleLoadReport report =
      st::load(module, dir.file("vector.safetensors"), st::ModuleLoadOptions().with_strict(false));
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"0"});
}
