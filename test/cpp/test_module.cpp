// Module integration: drop-in for torch::load/torch::save on torch::nn::Module.
#include <gtest/gtest.h>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

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

// dtype on load casts the file's tensors; each parameter keeps its dtype (a parameter of the
// stored dtype is not replaced by the cast tensor's storage).
TEST(Module, DtypeOnLoadCastsAndEachParameterKeepsItsDtype) {
  TempDir dir;
  Net source;
  ts::save(*source, dir.file("f32.safetensors"));
  Net f32_target;
  ts::load(*f32_target, dir.file("f32.safetensors"),
           ts::ModuleLoadOptions().with_strict(false).with_dtype(torch::kBFloat16));
  EXPECT_EQ(f32_target->fc1->weight.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(f32_target->fc1->weight,
                           source->fc1->weight.to(torch::kBFloat16).to(torch::kFloat)));
  Net bf16_target;
  bf16_target->to(torch::kBFloat16);
  ts::load(*bf16_target, dir.file("f32.safetensors"),
           ts::ModuleLoadOptions().with_cast_fp8().with_dtype(torch::kBFloat16).with_strict(true));
  EXPECT_EQ(bf16_target->fc1->weight.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(bf16_target->fc1->weight, source->fc1->weight.to(torch::kBFloat16)));
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
  ASSERT_EQ(report.mismatched.size(), 2u);
  EXPECT_EQ(report.mismatched[0].name, "0.weight");
  EXPECT_EQ(report.mismatched[0].target_sizes, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(report.mismatched[0].file_sizes, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(report.mismatched[1].name, "0.bias");
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

// A file that holds both names of a tie (a state dict saved as is, e.g. by torch.save of a
// Python model converted without dropping ties): equal copies load strictly, the tie intact;
// different copies are refused as what they are, not as an unknown name.
TEST(Module, FileWithBothTiedNamesLoadsWhenTheCopiesAreEqual) {
  TempDir dir;
  const std::string path = dir.file("both.safetensors");
  const at::Tensor weight = torch::randn({10, 4});
  ts::save({{"embed.weight", weight}, {"head.weight", weight.clone()}}, path);
  Tied target;
  EXPECT_TRUE(ts::load(*target, path).ok());
  EXPECT_TRUE(torch::equal(target->embed->weight, weight));
  EXPECT_TRUE(target->head->named_parameters()["weight"].is_same(target->embed->weight));

  ts::save({{"embed.weight", weight}, {"head.weight", weight + 1}}, path);
  const std::string message = error_of([&] { ts::load(*target, path); });
  EXPECT_EQ(message.find("not in the module"), std::string::npos) << message;
  EXPECT_NE(message.find("head.weight and embed.weight are one tensor in the module; the file "
                         "holds both, with different values"),
            std::string::npos)
      << message;
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

TEST(Module, TiedWeightsLoadZeroCopyWhenTheyAreOneTensor) {
  TempDir dir;
  const std::string path = dir.file("tied.safetensors");
  Tied source;
  ts::save(*source, path);
  Tied target;
  ASSERT_TRUE(ts::load(*target, path).ok());
  // One tensor under two names: set_ moves both, so it can take the mapping itself.
  EXPECT_EQ(ts_test::mapped_file_of(target->embed->weight.data_ptr()), path);
  EXPECT_TRUE(target->head->named_parameters()["weight"].is_same(target->embed->weight));
}

TEST(Module, LoadIntoNamedTensorsKeepsViewsTied) {
  TempDir dir;
  const std::string path = dir.file("views.safetensors");
  ts::save(ts::NamedTensors{{"whole", at::arange(10, at::kFloat)}}, path);
  const at::Tensor whole = at::zeros({10});
  const at::Tensor part = whole.slice(0, 2, 5);  // tied to `whole` through a view
  const ts::NamedTensors targets{{"part", part}, {"whole", whole}};

  // Planning changes nothing; it reports the tie and keeps the name that covers the storage.
  const ts::ModuleLoadPlan plan(targets, ts::Checkpoint(path));
  EXPECT_TRUE(plan.report().ok());
  ASSERT_EQ(plan.ties().size(), 1u);
  EXPECT_EQ(plan.ties()[0].names, (std::vector<std::string>{"part", "whole"}));
  EXPECT_EQ(plan.ties()[0].keep, "whole");
  EXPECT_TRUE(torch::equal(whole, at::zeros({10})));

  // Applying copies into `whole` (a view shares its storage: set_ would untie it).
  plan.apply();
  EXPECT_TRUE(torch::equal(whole, at::arange(10, at::kFloat)));
  EXPECT_TRUE(torch::equal(part, at::arange(2, 5, at::kFloat)));
  EXPECT_EQ(part.data_ptr<float>(), whole.data_ptr<float>() + 2);

  // A file that has the dropped name too, with the values the tie gives it: it loads, tie intact.
  ts::save(ts::NamedTensors{{"whole", at::arange(10, at::kFloat) * 2},
                            {"part", at::arange(2, 5, at::kFloat) * 2}},
           path);
  EXPECT_TRUE(ts::load_into(targets, path).ok());
  EXPECT_TRUE(torch::equal(part, at::arange(2, 5, at::kFloat) * 2));
  EXPECT_EQ(part.data_ptr<float>(), whole.data_ptr<float>() + 2);
  // With other values the module cannot hold both: a tied conflict, named as such (strict).
  ts::save(ts::NamedTensors{{"whole", at::ones({10})}, {"part", at::zeros({3})}}, path);
  const auto report = ts::load_into(targets, path, ts::ModuleLoadOptions().with_strict(false));
  EXPECT_EQ(report.tied_conflicts,
            (std::vector<std::pair<std::string, std::string>>{{"part", "whole"}}));
  EXPECT_TRUE(report.unexpected.empty());
  EXPECT_TRUE(report.missing.empty());
  const std::string conflict = error_of([&] { ts::load_into(targets, path); });
  EXPECT_NE(conflict.find("part and whole are one tensor in the module; the file holds both, "
                          "with different values"),
            std::string::npos)
      << conflict;
  // And the other way round: a file with only the dropped name leaves the group's keeper missing.
  ts::save(ts::NamedTensors{{"part", at::ones({3})}}, path);
  const auto only_part = ts::load_into(targets, path, ts::ModuleLoadOptions().with_strict(false));
  EXPECT_EQ(only_part.missing, std::vector<std::string>{"whole"});
  EXPECT_EQ(only_part.unexpected, std::vector<std::string>{"part"});
}

TEST(Module, RefusesTiesThatNoNameCovers) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  ts::save(ts::NamedTensors{{"x", at::ones({6})}, {"y", at::ones({6})}}, path);
  const at::Tensor buffer = at::zeros({10});
  const ts::NamedTensors targets{{"x", buffer.slice(0, 0, 6)}, {"y", buffer.slice(0, 4, 10)}};
  const std::string msg = error_of([&] { ts::load_into(targets, path); });
  EXPECT_NE(msg.find("none of them covers it all: [x, y]"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(buffer, at::zeros({10})));  // nothing changed

  torch::nn::Module module;
  module.register_buffer("x", targets[0].second);
  module.register_buffer("y", targets[1].second);
  EXPECT_NE(error_of([&] { ts::save(module, path); }).find("none of them covers it all"),
            std::string::npos);
  // A lone view is not a tie: it loads (by copy, which keeps it a view of its buffer).
  torch::nn::Module lone;
  lone.register_buffer("x", targets[0].second);
  EXPECT_EQ(ts::load(lone, path, ts::ModuleLoadOptions().with_strict(false)).unexpected,
            std::vector<std::string>{"y"});
  EXPECT_TRUE(torch::equal(buffer.slice(0, 0, 6), at::ones({6})));
}

// Packed dtypes load into buffers of the sizes File::tensor gives them: F4 as Float4_e2m1fn_x2
// with the last dimension halved (or 1-D bytes when it is odd), F6 as uint8 bytes (last dimension
// times 3/4, or 1-D bytes).
TEST(Module, PackedDtypesLoadIntoBuffersOfTheFilesTensorSizes) {
  TempDir dir;
  const std::string path = dir.file("packed.safetensors");
  const auto bytes = [](int64_t n, int seed) {
    return at::arange(n, at::kInt).mul(37).add(seed).remainder(256).to(at::kByte);
  };
  const std::vector<ts::SaveEntry> entries = {
      {"f4_even", ts::RawTensor{ts::Dtype::F4, {2, 6}, bytes(6, 1)}},        // [2, 3] fp4x2
      {"f4_odd", ts::RawTensor{ts::Dtype::F4, {2, 3}, bytes(3, 2)}},         // [3] fp4x2
      {"f6_e2m3", ts::RawTensor{ts::Dtype::F6_E2M3, {2, 4}, bytes(6, 3)}},   // [2, 3] uint8
      {"f6_e3m2", ts::RawTensor{ts::Dtype::F6_E3M2, {2, 2}, bytes(3, 4)}}};  // [3] uint8
  ts::save(entries, path);

  for (const auto backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
    const ts::File file(path, ts::LoadOptions().with_backend(backend));
    torch::nn::Module module;
    for (const auto& entry : entries) {
      const at::Tensor expected = file.tensor(entry.name);
      at::Tensor buffer = at::empty(expected.sizes(), expected.options());
      buffer.view(at::kByte).zero_();
      module.register_buffer(entry.name, buffer);
    }
    EXPECT_EQ(module.named_buffers()["f4_odd"].sizes(), c10::IntArrayRef({3}));
    EXPECT_EQ(module.named_buffers()["f6_e2m3"].sizes(), c10::IntArrayRef({2, 3}));
    ASSERT_TRUE(ts::load(module, path, ts::ModuleLoadOptions().with_backend(backend)).ok());
    for (const auto& entry : entries) {
      const at::Tensor loaded = module.named_buffers()[entry.name];
      EXPECT_EQ(loaded.scalar_type(), file.tensor(entry.name).scalar_type()) << entry.name;
      EXPECT_TRUE(torch::equal(loaded.view(at::kByte).reshape({-1}), entry.raw->bytes))
          << entry.name;
    }
  }

  // The logical (header) shape is not what the file's tensor loads as: a mismatch.
  torch::nn::Module logical;
  logical.register_buffer("f4_even", at::empty({2, 6}, at::ScalarType::Float4_e2m1fn_x2));
  const auto report = ts::load(logical, path, ts::ModuleLoadOptions().with_strict(false));
  ASSERT_EQ(report.mismatched.size(), 1u);
  EXPECT_EQ(report.mismatched[0].file_sizes, (std::vector<int64_t>{2, 3}));
}
