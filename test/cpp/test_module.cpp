// Module integration: drop-in for torch::load/torch::save on torch::nn::Module.
#include <gtest/gtest.h>

#include <torch/torch.h>
#include <torch_safetensors/safetensors.h>

#include "test_util.h"

namespace ts = torch::safetensors;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 16));
    norm = register_module("norm", torch::nn::BatchNorm1d(16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 4));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(norm(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d norm{nullptr};
};
TORCH_MODULE(Net);

// An embedding tied to an output projection, as in language models: two names, one tensor.
struct TiedImpl : torch::nn::Module {
  TiedImpl() {
    embed = register_module("embed", torch::nn::Embedding(10, 4));
    head = register_module("head", std::make_shared<torch::nn::Module>());
    head->register_parameter("weight", embed->weight);
  }
  torch::nn::Embedding embed{nullptr};
  std::shared_ptr<torch::nn::Module> head;
};
TORCH_MODULE(Tied);

void expect_same_state(const torch::nn::Module& a, const torch::nn::Module& b) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  const auto ba = a.named_buffers(), bb = b.named_buffers();
  ASSERT_EQ(ba.size(), bb.size());
  for (const auto& p : ba) EXPECT_TRUE(torch::equal(p.value(), bb[p.key()])) << p.key();
}

}  // namespace

TEST(Module, SaveThenLoadIntoAFreshModuleZeroCopy) {
  TempDir dir;
  const std::string path = dir.file("net.safetensors");
  Net source;
  source->norm->running_mean.uniform_();  // buffers travel too
  ts::save(*source, path, ts::Metadata{{"format", "pt"}});
  ts::File file(path);
  EXPECT_EQ(file.size(), 4u + 5u);  // 2 Linear x 2 params; BatchNorm 2 params + 3 buffers
  EXPECT_EQ(file.metadata()->at("format"), "pt");

  Net target;
  EXPECT_TRUE(ts::load(*target, path).ok());
  expect_same_state(*source, *target);
  // Zero-copy: the parameter's memory is the mapped file itself, and it keeps its identity.
  const auto weight = target->fc1->weight;
  EXPECT_EQ(ts_test::mapped_file_of(weight.data_ptr()), path);
  EXPECT_EQ(weight.storage().nbytes(), weight.nbytes());
  EXPECT_TRUE(weight.requires_grad());
  // It still trains: gradients flow and an optimizer step updates it (copy-on-write, file intact).
  const std::string before = ts_test::read_file(path);
  torch::optim::SGD sgd(target->parameters(), 0.1);
  target->forward(torch::randn({5, 8})).sum().backward();
  ASSERT_TRUE(weight.grad().defined());
  sgd.step();
  EXPECT_FALSE(torch::equal(target->fc1->weight, source->fc1->weight));
  EXPECT_EQ(ts_test::read_file(path), before);
}

TEST(Module, DropInForTorchLoadAfterTorchSave) {
  TempDir dir;
  Net source, from_pickle, from_safetensors;
  torch::save(source, dir.file("net.pt"));
  ts::save(*source, dir.file("net.safetensors"));
  torch::load(from_pickle, dir.file("net.pt"));
  ts::load(*from_safetensors, dir.file("net.safetensors"));
  expect_same_state(*from_pickle, *from_safetensors);
}

TEST(Module, KeepsEachParametersDtype) {
  TempDir dir;
  Net source;
  ts::save(*source, dir.file("f32.safetensors"));
  Net target;
  target->to(torch::kDouble);
  ts::load(*target, dir.file("f32.safetensors"));
  EXPECT_EQ(target->fc1->weight.scalar_type(), torch::kDouble);
  EXPECT_TRUE(torch::allclose(target->fc1->weight.to(torch::kFloat), source->fc1->weight));
  EXPECT_TRUE(target->fc1->weight.requires_grad());
}

TEST(Module, StrictListsEveryProblemAndChangesNothing) {
  TempDir dir;
  torch::nn::Linear small(4, 2), big(4, 3);
  auto extra = std::make_shared<torch::nn::Module>();
  extra->register_parameter("alpha", torch::ones({1}));
  torch::nn::Module file_model, target;
  file_model.register_module("0", small);
  file_model.register_module("1", extra);
  ts::save(file_model, dir.file("m.safetensors"));
  target.register_module("0", big);                      // 0.*: shape mismatch
  target.register_module("1", torch::nn::Linear(2, 2));  // 1.*: missing
  const auto before = target.named_parameters()["0.weight"].clone();
  const std::string msg = error_of([&] { ts::load(target, dir.file("m.safetensors")); });
  EXPECT_NE(msg.find("m.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing from the file: 1.weight, 1.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not in the module: 1.alpha"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0.weight: module [3, 4], file [2, 4]"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(target.named_parameters()["0.weight"], before));

  const auto report =
      ts::load(target, dir.file("m.safetensors"), ts::ModuleLoadOptions().with_strict(false));
  EXPECT_EQ(report.missing, (std::vector<std::string>{"1.weight", "1.bias"}));
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"1.alpha"});
  EXPECT_EQ(report.mismatched, (std::vector<std::string>{"0.weight", "0.bias"}));
  EXPECT_FALSE(report.ok());
}

TEST(Module, TiedWeightsAreSavedOnceAndStayTiedOnLoad) {
  TempDir dir;
  const std::string path = dir.file("tied.safetensors");
  Tied source;
  ts::save(*source, path);
  ts::File file(path);
  EXPECT_EQ(file.keys(), std::vector<std::string>{"embed.weight"});
  EXPECT_EQ(file.metadata()->at("head.weight"), "embed.weight");  // like the reference's save_model

  Tied target;
  EXPECT_TRUE(ts::load(*target, path).ok());
  const auto embed = target->embed->weight;
  const auto head = target->head->named_parameters()["weight"];
  EXPECT_TRUE(torch::equal(embed, source->embed->weight));
  EXPECT_EQ(embed.data_ptr(), head.data_ptr());  // still one tensor
  // A plain save of tied tensors is refused, as in the reference's save_file.
  EXPECT_NE(error_of([&] {
              ts::save(ts::NamedTensors{{"a", embed}, {"b", head}}, dir.file("x.safetensors"));
            }).find("share memory"),
            std::string::npos);
}

TEST(Module, CudaParametersStayOnTheirDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  Net source;
  ts::save(*source, dir.file("net.safetensors"));
  Net target;
  target->to(torch::kCUDA);
  ts::load(*target, dir.file("net.safetensors"));
  EXPECT_TRUE(target->fc1->weight.is_cuda());
  EXPECT_TRUE(torch::equal(target->fc1->weight.cpu(), source->fc1->weight));
  // And back: saving CUDA parameters copies each to the CPU while writing.
  ts::save(*target, dir.file("from_gpu.safetensors"));
  EXPECT_EQ(ts_test::read_file(dir.file("from_gpu.safetensors")),
            ts_test::read_file(dir.file("net.safetensors")));
}
