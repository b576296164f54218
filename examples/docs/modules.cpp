// The C++ of docs/modules.md: torch::nn modules, tied weights, strict loading and the report,
// ModuleLoadPlan, optimizers, archives and TorchScript modules.
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "doc_example.h"
#include "doc_throws.h"

namespace st = torch::safetensors;

using doc_example::throws;

DOC_EXAMPLE(modules_save_and_load) {
  torch::nn::Linear model(4, 2);
  st::save(model, "linear.safetensors", {{"format", "pt"}});  // like torch::save(model, path)

  torch::nn::Linear fresh(4, 2);
  const at::Tensor weight = fresh->weight;  // the parameter, before the load
  st::ModuleLoadReport report = st::load(fresh, "linear.safetensors");  // strict
  DOC_CHECK(report.ok());
  DOC_CHECK(torch::equal(fresh->weight, model->weight));
  // The same parameter, now viewing the file's mapping (copy on write); still trainable.
  DOC_CHECK(fresh->weight.is_same(weight) && fresh->weight.requires_grad());
  DOC_CHECK(st::File("linear.safetensors").keys() == std::vector<std::string>({"bias", "weight"}));
}

DOC_EXAMPLE(modules_tied_weights) {
  auto make_model = [] {
    auto model = std::make_shared<torch::nn::Module>();
    at::Tensor embedding = model->register_parameter("embed", torch::randn({10, 4}));
    auto head = model->register_module("head", std::make_shared<torch::nn::Module>());
    head->register_parameter("weight", embedding);  // tied: one tensor, two names
    return model;
  };
  auto model = make_model();
  st::save(model, "tied.safetensors");
  st::File file("tied.safetensors");
  DOC_CHECK(file.keys() == std::vector<std::string>({"embed"}));  // stored once
  DOC_CHECK(file.metadata()->at("head.weight") == "embed");       // dropped -> kept

  auto fresh = make_model();
  DOC_CHECK(st::load(fresh, "tied.safetensors").ok());
  const auto params = fresh->named_parameters();
  DOC_CHECK(params["head.weight"].is_same(params["embed"]));  // still tied
  DOC_CHECK(torch::equal(params["embed"], model->named_parameters()["embed"]));
}

DOC_EXAMPLE(modules_owned_aligned_memory) {
  torch::nn::Sequential model(torch::nn::Linear(256, 256), torch::nn::ReLU(),
                              torch::nn::Linear(256, 256));
  st::save(model, "model.safetensors");
  torch::nn::Sequential fresh(torch::nn::Linear(256, 256), torch::nn::ReLU(),
                              torch::nn::Linear(256, 256));
  st::load(fresh, "model.safetensors", st::ModuleLoadOptions().with_backend(st::Backend::kPread));
  const at::Tensor x = torch::randn({1, 256});
  DOC_CHECK(torch::equal(fresh->forward(x), model->forward(x)));  // bit for bit
}

DOC_EXAMPLE(modules_strict_and_report) {
  torch::nn::Linear with_bias(4, 2);
  st::save(with_bias, "linear.safetensors");
  torch::nn::Linear no_bias(torch::nn::LinearOptions(4, 2).bias(false));
  const at::Tensor before = no_bias->weight.clone();

  // Strict (the default): every problem is listed and nothing is changed.
  DOC_CHECK(throws([&] { st::load(no_bias, "linear.safetensors"); }, "not in the module: bias"));
  DOC_CHECK(torch::equal(no_bias->weight, before));

  st::ModuleLoadReport report =
      st::load(no_bias, "linear.safetensors", st::ModuleLoadOptions().with_strict(false));
  DOC_CHECK(report.unexpected == std::vector<std::string>({"bias"}) && report.missing.empty());
  DOC_CHECK(torch::equal(no_bias->weight, with_bias->weight));  // what fits is loaded

  torch::nn::Linear wider(4, 3);
  report = st::load(wider, "linear.safetensors", st::ModuleLoadOptions().with_strict(false));
  DOC_CHECK(report.mismatched.size() == 2 && report.mismatched[0].name == "weight");
  DOC_CHECK(report.mismatched[0].file_sizes == std::vector<int64_t>({2, 4}));
}

DOC_EXAMPLE(modules_plan) {
  torch::nn::Linear model(4, 2);
  st::save(model, "linear.safetensors");
  torch::nn::Linear fresh(4, 2);
  st::NamedTensors targets;
  for (const auto& item : fresh->named_parameters()) targets.emplace_back(item.key(), item.value());

  st::ModuleLoadPlan plan(targets, st::Checkpoint("linear.safetensors"));  // checks only
  DOC_CHECK(plan.report().ok() && plan.loaded_names().size() == 2);
  DOC_CHECK(!torch::equal(fresh->weight, model->weight));
  plan.apply();  // loads
  DOC_CHECK(torch::equal(fresh->weight, model->weight));
}

DOC_EXAMPLE(modules_optimizer) {
  torch::nn::Linear model(4, 2);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  model->forward(torch::randn({3, 4})).sum().backward();
  optimizer.step();
  st::save(optimizer, "optimizer.safetensors");  // like torch::save(optimizer, path)

  st::File file("optimizer.safetensors");
  DOC_CHECK(file.metadata()->at("optimizer") == "Adam" && file.contains("state.0.exp_avg"));

  torch::optim::Adam resumed(model->parameters(), torch::optim::AdamOptions(0.5));
  st::load(resumed, "optimizer.safetensors");  // options and per-parameter state restored
  DOC_CHECK(resumed.param_groups()[0].options().get_lr() == 1e-3);
  DOC_CHECK(resumed.state().size() == 2);

  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1));
  DOC_CHECK(throws([&] { st::load(sgd, "optimizer.safetensors"); }, "state of a Adam"));
}

DOC_EXAMPLE(modules_archive) {
  st::OutputArchive encoder;
  encoder.write("weight", torch::ones({2, 2}));
  st::OutputArchive archive;
  archive.write("step", torch::tensor(10));
  archive.write("encoder", encoder);  // nested: "encoder.weight"
  archive.save_to("archive.safetensors");
  DOC_CHECK(throws([&] { archive.write("epoch", c10::IValue(int64_t(3))); }, "tensors only"));

  st::InputArchive input;
  input.load_from("archive.safetensors");
  at::Tensor step;
  input.read("step", step);
  st::InputArchive nested;
  input.read("encoder", nested);
  at::Tensor weight;
  nested.read("weight", weight);
  DOC_CHECK(step.item<int64_t>() == 10 && torch::equal(weight, torch::ones({2, 2})));
  DOC_CHECK(input.keys() == std::vector<std::string>({"step", "encoder"}));  // file order
}

DOC_EXAMPLE(modules_torchscript) {
  // Stands for a torch::jit::load'ed module: parameters and buffers by dotted name.
  auto make_module = [](at::Tensor weight) {
    torch::jit::Module fc(c10::QualifiedName("fc"));
    fc.register_parameter("weight", weight, /*is_buffer=*/false);
    torch::jit::Module net(c10::QualifiedName("Net"));
    net.register_module("fc", fc);
    return net;
  };
  torch::jit::Module scripted = make_module(torch::randn({2, 4}));
  st::save(scripted, "scripted.safetensors");

  torch::jit::Module fresh = make_module(torch::zeros({2, 4}));
  DOC_CHECK(st::load(fresh, "scripted.safetensors").ok());
  DOC_CHECK(st::named_tensors(fresh)[0].first == "fc.weight");
  DOC_CHECK(torch::equal(fresh.attr("fc").toModule().attr("weight").toTensor(),
                         scripted.attr("fc").toModule().attr("weight").toTensor()));
}
