// Optimizers through safetensors files: training resumed from a saved model and optimizer is
// bit-identical to training that never stopped, for every LibTorch optimizer; wrong and broken
// files are clear errors that change nothing.
#include <gtest/gtest.h>

#include <functional>

#include <ATen/Parallel.h>
#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "test_util.h"

namespace ts = torch::safetensors;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(6, 8));
    fc2 = register_module("fc2", torch::nn::Linear(8, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::tanh(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Net);

using MakeOptimizer = std::function<std::unique_ptr<torch::optim::Optimizer>(Net&)>;

// Two parameter groups where the optimizer allows it, with different options.
std::vector<std::pair<std::string, MakeOptimizer>> optimizers() {
  using namespace torch::optim;
  const auto groups = [](Net& net, auto options, auto other) {
    std::vector<OptimizerParamGroup> out;
    out.emplace_back(net->fc1->parameters(), std::make_unique<decltype(options)>(options));
    out.emplace_back(net->fc2->parameters(), std::make_unique<decltype(other)>(other));
    return out;
  };
  return {
      {"SGD",
       [=](Net& n) {
         return std::make_unique<SGD>(groups(n, SGDOptions(0.1).momentum(0.9).nesterov(true),
                                             SGDOptions(0.05).momentum(0.5).weight_decay(1e-3)),
                                      SGDOptions(0.1));
       }},
      {"Adam",
       [=](Net& n) {
         return std::make_unique<Adam>(
             groups(n, AdamOptions(1e-2).amsgrad(true), AdamOptions(3e-3).betas({0.8, 0.95})),
             AdamOptions());
       }},
      {"AdamW",
       [=](Net& n) {
         return std::make_unique<AdamW>(
             groups(n, AdamWOptions(1e-2), AdamWOptions(2e-3).weight_decay(0.1)), AdamWOptions());
       }},
      {"RMSprop",
       [=](Net& n) {
         return std::make_unique<RMSprop>(
             groups(n, RMSpropOptions(1e-2).centered(true).momentum(0.5), RMSpropOptions(1e-3)),
             RMSpropOptions());
       }},
      {"Adagrad",
       [=](Net& n) {
         return std::make_unique<Adagrad>(
             groups(n, AdagradOptions(0.1).lr_decay(1e-3), AdagradOptions(0.05)), AdagradOptions());
       }},
      {"LBFGS",
       [=](Net& n) {
         return std::make_unique<LBFGS>(
             n->parameters(), LBFGSOptions(0.5).history_size(4).line_search_fn("strong_wolfe"));
       }},
  };
}

Net make_net(int seed) {
  torch::manual_seed(seed);
  return Net();
}

void train(Net& net, torch::optim::Optimizer& optimizer, int steps, int first_step) {
  for (int s = first_step; s < first_step + steps; ++s) {
    torch::manual_seed(1000 + s);  // the same batch at the same step, interrupted or not
    const torch::Tensor x = torch::randn({16, 6}), y = torch::randn({16, 3});
    auto closure = [&] {
      optimizer.zero_grad();
      torch::Tensor loss = torch::mse_loss(net->forward(x), y);
      loss.backward();
      return loss;
    };
    optimizer.step(closure);
  }
}

bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() && a.dtype() == b.dtype() &&
         at::equal(a.contiguous().view(at::kByte), b.contiguous().view(at::kByte));
}

}  // namespace

TEST(Optimizer, ResumedTrainingIsBitIdenticalForEveryOptimizer) {
  at::set_num_threads(1);  // one summation order
  for (const auto& [name, make] : optimizers()) {
    SCOPED_TRACE(name);
    constexpr int kBefore = 4, kAfter = 5;
    Net straight = make_net(0);
    auto straight_optimizer = make(straight);
    train(straight, *straight_optimizer, kBefore + kAfter, 0);

    TempDir dir;
    {
      Net first = make_net(0);
      auto optimizer = make(first);
      train(first, *optimizer, kBefore, 0);
      ts::save(*first, dir.file("model.safetensors"));
      ts::save(*optimizer, dir.file("optimizer.safetensors"));
    }
    Net resumed = make_net(7);  // other weights, fresh state: all must come from the files
    auto optimizer = make(resumed);
    ts::load(*resumed, dir.file("model.safetensors"));
    ts::load(*optimizer, dir.file("optimizer.safetensors"));
    EXPECT_EQ(ts::File(dir.file("optimizer.safetensors")).metadata()->at("optimizer"), name);
    train(resumed, *optimizer, kAfter, kBefore);

    const auto expected = straight->named_parameters();
    for (const auto& p : resumed->named_parameters()) {
      EXPECT_TRUE(same_bits(p.value(), expected[p.key()])) << p.key();
    }
  }
}

TEST(Optimizer, OptionsAndStepsRoundTrip) {
  Net net = make_net(0);
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.25).betas({0.5, 0.75}));
  train(net, adam, 3, 0);
  TempDir dir;
  ts::save(adam, dir.file("adam.safetensors"));
  const ts::File file(dir.file("adam.safetensors"));
  // The layout optim.h documents: JSON in the metadata, state tensors by parameter index.
  EXPECT_NE(file.metadata()->at("param_groups").find(R"("params":[0,1,2,3],"lr":0.25,)"),
            std::string::npos)
      << file.metadata()->at("param_groups");
  EXPECT_NE(file.metadata()->at("state").find(R"("3":{"step":3})"), std::string::npos)
      << file.metadata()->at("state");
  EXPECT_TRUE(file.contains("state.0.exp_avg"));
  EXPECT_FALSE(file.contains("state.0.max_exp_avg_sq"));  // undefined without amsgrad

  Net other = make_net(1);
  torch::optim::Adam fresh(other->parameters(), torch::optim::AdamOptions(1.0));
  ts::load(fresh, dir.file("adam.safetensors"));
  const auto& options = static_cast<torch::optim::AdamOptions&>(fresh.param_groups()[0].options());
  EXPECT_EQ(options.lr(), 0.25);
  EXPECT_EQ(std::get<1>(options.betas()), 0.75);
  const auto& state = static_cast<torch::optim::AdamParamState&>(
      *fresh.state().at(other->parameters()[2].unsafeGetTensorImpl()));
  EXPECT_EQ(state.step(), 3);
}

TEST(Optimizer, WrongOrBrokenFilesAreClearErrorsThatChangeNothing) {
  TempDir dir;
  Net net = make_net(0);
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.5));
  train(net, adam, 2, 0);
  ts::save(adam, dir.file("adam.safetensors"));
  torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.1));
  EXPECT_NE(error_of([&] {
              ts::load(sgd, dir.file("adam.safetensors"));
            }).find("holds the state of a Adam optimizer, which cannot be loaded into a SGD"),
            std::string::npos);
  // A model file is not an optimizer's.
  ts::save(*net, dir.file("model.safetensors"));
  EXPECT_NE(error_of([&] {
              ts::load(adam, dir.file("model.safetensors"));
            }).find("not an optimizer's file"),
            std::string::npos);
  // Other group sizes.
  torch::optim::Adam split({torch::optim::OptimizerParamGroup(net->fc1->parameters()),
                            torch::optim::OptimizerParamGroup(net->fc2->parameters())},
                           torch::optim::AdamOptions(0.5));
  EXPECT_NE(error_of([&] {
              ts::load(split, dir.file("adam.safetensors"));
            }).find("the file has 1 parameter groups, the optimizer 2"),
            std::string::npos);
  // Malformed metadata: each is an error naming the key, and the optimizer keeps its state.
  const ts::OptimizerState good = ts::optimizer_state(adam);
  const auto broken = [&](const std::string& key, const std::string& value) {
    ts::Metadata metadata = good.metadata;
    metadata[key] = value;
    ts::save(good.entries, dir.file("broken.safetensors"), metadata);
    torch::optim::Adam target(net->parameters(), torch::optim::AdamOptions(0.125));
    const std::string error = error_of([&] { ts::load(target, dir.file("broken.safetensors")); });
    EXPECT_TRUE(target.state().empty()) << key << " = " << value;
    EXPECT_EQ(static_cast<torch::optim::AdamOptions&>(target.param_groups()[0].options()).lr(),
              0.125);
    return error;
  };
  EXPECT_NE(broken("param_groups", "[{").find("'param_groups' is not valid JSON"),
            std::string::npos);
  EXPECT_NE(broken("param_groups", R"([{"params":[0,1,2,3],"lr":"fast"}])")
                .find("param_groups[0] 'lr' must be a number"),
            std::string::npos);
  EXPECT_NE(broken("param_groups", R"([{"params":[0,1,2,3]}])").find("param_groups[0] has no 'lr'"),
            std::string::npos);
  EXPECT_NE(broken("param_groups", R"([{"params":[0,1]}])").find("must list 4 parameters"),
            std::string::npos);
  EXPECT_NE(broken("state", R"({"9":{"step":1}})").find("state[\"9\"] names no parameter"),
            std::string::npos);
  EXPECT_NE(broken("state", R"({"0":{"step":1.5}})").find("'step' must be an integer"),
            std::string::npos);
  EXPECT_NE(broken("state", "[]").find("'state' must be a JSON object"), std::string::npos);
}

namespace {
// A language-model-like module whose output projection is its embedding (a tied weight):
// Module::parameters() lists that tensor twice, so an optimizer built from it holds it twice.
struct TiedLmImpl : torch::nn::Module {
  TiedLmImpl() {
    embed = register_module("embed", torch::nn::Embedding(12, 5));
    head = register_module("head", std::make_shared<torch::nn::Module>());
    head->register_parameter("weight", embed->weight);
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    return torch::linear(embed(ids), head->named_parameters()["weight"]);
  }
  torch::nn::Embedding embed{nullptr};
  std::shared_ptr<torch::nn::Module> head;
};
TORCH_MODULE(TiedLm);

void train_step(TiedLm& model, torch::optim::Optimizer& optimizer, int64_t seed) {
  torch::manual_seed(seed);
  const torch::Tensor ids = torch::randint(0, 12, {4, 3});
  optimizer.zero_grad();
  model->forward(ids).pow(2).mean().backward();
  optimizer.step();
}
}  // namespace

// As torch::save/torch::load: the tied tensor's state is written once, and loading restores it
// for every index that names the tensor; training then resumes bit for bit.
TEST(Optimizer, ATensorListedTwiceSavesOnceAndResumesExactly) {
  TempDir dir;
  TiedLm model;
  const auto params = model->parameters();
  ASSERT_EQ(params.size(), 2u);
  ASSERT_TRUE(params[0].is_same(params[1]));  // LibTorch lists the tied tensor twice
  torch::optim::Adam adam(params, torch::optim::AdamOptions(1e-2));
  train_step(model, adam, 1);
  ts::save(*model, dir.file("model.safetensors"));
  ts::save(adam, dir.file("adam.safetensors"));
  const ts::File file(dir.file("adam.safetensors"));
  EXPECT_TRUE(file.contains("state.0.exp_avg"));
  EXPECT_FALSE(file.contains("state.1.exp_avg"));  // the same tensor: written once

  TiedLm resumed;
  ts::load(*resumed, dir.file("model.safetensors"));
  torch::optim::Adam resumed_adam(resumed->parameters(), torch::optim::AdamOptions(1e-2));
  ts::load(resumed_adam, dir.file("adam.safetensors"));
  for (int64_t step = 2; step < 5; ++step) {
    train_step(model, adam, step);
    train_step(resumed, resumed_adam, step);
  }
  EXPECT_TRUE(torch::equal(model->embed->weight, resumed->embed->weight));
  EXPECT_TRUE(resumed->head->named_parameters()["weight"].is_same(resumed->embed->weight));
}

// load(optimizer, source, device) reads the state there (then to each parameter's device).
TEST(Optimizer, LoadHonoursTheDevice) {
  TempDir dir;
  Net net;
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
  torch::manual_seed(0);
  adam.zero_grad();
  net->forward(torch::randn({2, 6})).sum().backward();
  adam.step();
  ts::save(adam, dir.file("adam.safetensors"));
  Net other;
  torch::optim::Adam restored(other->parameters(), torch::optim::AdamOptions(1e-2));
  ts::load(restored, dir.file("adam.safetensors"), torch::Device(torch::kCPU));
  const auto& state = static_cast<torch::optim::AdamParamState&>(
      *restored.state().at(other->parameters()[0].unsafeGetTensorImpl()));
  EXPECT_TRUE(state.exp_avg().is_cpu());
  // A device this LibTorch cannot reach is refused, naming it, before anything changes.
  if (!torch::cuda::is_available()) {
    const std::string message = error_of([&] {
      ts::load(restored, dir.file("adam.safetensors"), torch::Device(torch::kCUDA));
    });
    EXPECT_NE(message.find("cuda"), std::string::npos) << message;
  }
}
