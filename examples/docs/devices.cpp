// The C++ of docs/devices.md: loading to a device, streaming tensor by tensor, memory budgets,
// dtype on load and populated mappings. Runs everywhere: the CUDA parts only where CUDA is
// available.
#include <string>
#include <vector>

#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "doc_example.h"
#include "doc_throws.h"

namespace st = torch::safetensors;

using doc_example::throws;

DOC_EXAMPLE(devices_load_to_a_device) {
  torch::nn::Sequential model(torch::nn::Linear(512, 512), torch::nn::Linear(512, 512));
  st::save_sharded(*model, "model", st::ShardOptions().with_max_shard_size("1MB"));

  if (torch::cuda::is_available()) {
    st::LoadOptions gpu = st::LoadOptions().with_device(torch::kCUDA).with_dtype(torch::kFloat16);
    st::TensorDict w = st::load("model", gpu);  // straight to the GPU, cast there
    DOC_CHECK(w["0.weight"].is_cuda() && w["0.weight"].scalar_type() == torch::kFloat16);

    torch::nn::Sequential on_gpu(torch::nn::Linear(512, 512), torch::nn::Linear(512, 512));
    on_gpu->to(torch::kCUDA);
    st::load(on_gpu, "model", torch::Device(torch::kCUDA));  // filled in place on the device
    DOC_CHECK(torch::equal(on_gpu[0]->as<torch::nn::Linear>()->weight.cpu(),
                           model[0]->as<torch::nn::Linear>()->weight));
  } else {
    // A device this LibTorch cannot reach is an error when the checkpoint is opened.
    DOC_CHECK(throws([] { st::Checkpoint("model", st::LoadOptions().with_device(torch::kCUDA)); },
                     "cannot load to cuda"));
  }
}

DOC_EXAMPLE(devices_streaming) {
  torch::nn::Sequential model(torch::nn::Linear(512, 512), torch::nn::Linear(512, 512));
  st::save_sharded(*model, "model", st::ShardOptions().with_max_shard_size("1MB"));
  const c10::Device device = torch::cuda::is_available() ? c10::Device(c10::kCUDA) : c10::kCPU;

  std::vector<std::string> names;
  st::Checkpoint("model", st::LoadOptions().with_device(device))
      .for_each([&](const std::string& name, at::Tensor tensor) {
        names.push_back(name);  // each tensor as soon as it has landed; later copies go on
        DOC_CHECK(tensor.device() == device);
      });
  DOC_CHECK(names.size() == 4);

  // The pread backend on the CPU reads in batches of about staging_bytes: memory stays bounded.
  st::LoadOptions batched =
      st::LoadOptions().with_backend(st::Backend::kPread).with_staging_bytes(64 << 20);
  int64_t bytes = 0;
  st::Checkpoint("model", batched).for_each([&](const std::string&, at::Tensor tensor) {
    bytes += tensor.nbytes();
  });
  DOC_CHECK(bytes == 2 * (512 * 512 + 512) * 4);
}

DOC_EXAMPLE(devices_memory_budgets) {
  torch::nn::Sequential model(torch::nn::Linear(512, 512), torch::nn::Linear(512, 512));
  st::save_sharded(*model, "model", st::ShardOptions().with_max_shard_size("1MB"));
  const st::LoadOptions pread = st::LoadOptions().with_backend(st::Backend::kPread);

  // The plan step: what a load will allocate, from the headers alone.
  const st::MemoryEstimate plan = st::Checkpoint("model", pread).estimate_memory();
  DOC_CHECK(plan.host_bytes == 2 * (512 * 512 + 512) * 4 && plan.device_bytes == 0);
  DOC_CHECK(plan.largest_bytes == 512 * 512 * 4);  // one of the weights

  // Half the model: a whole load fails at plan time, before anything is allocated or read...
  const uint64_t budget = plan.host_bytes / 2;
  const st::Checkpoint half("model", st::LoadOptions(pread).with_host_budget(budget));
  try {
    half.tensors();
    DOC_CHECK(false);
  } catch (const st::BudgetError& e) {  // a c10::Error
    DOC_CHECK(e.memory() == "host" && e.shortfall() == plan.host_bytes - budget);
  }
  // ...and streaming goes in batches that fit it.
  for (const st::StreamBatch& batch : half.stream_plan())
    DOC_CHECK(batch.memory.host_bytes <= budget);
  size_t count = 0;
  half.for_each([&](const std::string&, at::Tensor) { ++count; });
  DOC_CHECK(count == 4);

  // A budget of zero fits nothing: an error when the checkpoint is opened.
  DOC_CHECK(throws([] { st::Checkpoint("model", st::LoadOptions().with_host_budget(0)); },
                   "a host budget of 0 bytes fits nothing"));
}

DOC_EXAMPLE(devices_dtype_on_load) {
  st::save({{"weight", torch::randn({2, 2})},
            {"position_ids", torch::arange(4)},
            {"scale", torch::randn({2}).to(torch::kFloat8_e4m3fn)}},
           "model.safetensors");

  st::File file("model.safetensors", st::LoadOptions().with_dtype(torch::kBFloat16));
  DOC_CHECK(file.tensor("weight").scalar_type() == torch::kBFloat16);      // floating: cast
  DOC_CHECK(file.tensor("position_ids").scalar_type() == torch::kLong);    // integer: kept
  DOC_CHECK(file.tensor("scale").scalar_type() == torch::kFloat8_e4m3fn);  // FP8: kept...

  st::File fp8("model.safetensors", st::LoadOptions().with_dtype(torch::kBFloat16).with_cast_fp8());
  DOC_CHECK(fp8.tensor("scale").scalar_type() == torch::kBFloat16);  // ...unless asked

  DOC_CHECK(st::cast_applies(torch::kFloat) && !st::cast_applies(torch::kInt));
  DOC_CHECK(throws([] { st::File("model.safetensors", st::LoadOptions().with_dtype(torch::kInt)); },
                   "dtype on load must be a floating dtype"));
}

DOC_EXAMPLE(devices_populate) {
  st::save({{"w", torch::randn({1024, 256})}}, "model.safetensors");
  // Faulted in now, on every core, instead of page by page on first touch; still zero-copy.
  st::TensorDict resident = st::load("model.safetensors", st::LoadOptions().with_populate());
  DOC_CHECK(resident["w"].size(0) == 1024);
}
