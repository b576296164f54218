// docs/executorch.md: ExecuTorch .ptd files in C++ (library torch_safetensors_executorch).
#include <torch/torch.h>
#include <torch_safetensors/all.h>
#include <torch_safetensors/executorch.h>

#include "doc_example.h"

namespace st = torch::safetensors;

DOC_EXAMPLE(executorch_ptd_round_trip) {
  at::Tensor weight = torch::randn({3, 4});
  st::save({{"model.linear.weight", weight}, {"model.linear.bias", torch::zeros({3})}},
           "finetune.safetensors");

  st::save_ptd(st::Checkpoint("finetune.safetensors"), "model.ptd",
               st::PtdOptions().with_strip_prefix("model."));
  st::PtdFile ptd("model.ptd");  // verified on open
  DOC_CHECK(torch::equal(ptd.tensor("linear.weight"), weight));
  st::ptd_to_safetensors("model.ptd", "back.safetensors");
  DOC_CHECK(ptd.keys() == std::vector<std::string>({"linear.bias", "linear.weight"}));
  DOC_CHECK(torch::equal(st::load("back.safetensors")["linear.weight"], weight));
}
