// The README's device-loading example: stream a checkpoint tensor by tensor (to the GPU when
// there is one), cast on load, and a populated mapping. Usage: streaming [directory]
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include <cstdio>

int main(int argc, char** argv) {
  namespace st = torch::safetensors;
  const std::string dir = argc > 1 ? argv[1] : "streamed_model";
  torch::nn::Sequential model(torch::nn::Linear(512, 512), torch::nn::Linear(512, 512));
  model->to(torch::kBFloat16);
  st::save_sharded(*model, dir, st::ShardOptions().with_max_shard_size("600KB"));

  const c10::Device device = torch::cuda::is_available() ? c10::Device(c10::kCUDA) : c10::kCPU;
  const st::LoadOptions options = st::LoadOptions().with_device(device).with_dtype(torch::kFloat16);
  int64_t bytes = 0;
  st::Checkpoint(dir, options).for_each([&](const std::string& name, at::Tensor t) {
    std::printf("%-10s %-12s on %s\n", name.c_str(), c10::toString(t.scalar_type()),
                t.device().str().c_str());  // each tensor as it lands; later copies go on
    bytes += t.nbytes();
  });
  const st::TensorDict resident =
      st::load(dir, st::LoadOptions().with_populate());  // faulted in now, zero-copy
  std::printf("%lld bytes streamed to %s; %zu tensors resident\n", static_cast<long long>(bytes),
              device.str().c_str(), resident.size());
  return resident.size() == 4 ? 0 : 1;
}
