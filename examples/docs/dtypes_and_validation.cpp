// docs/dtypes-and-validation.md: dtypes torch cannot express, as raw bytes.
#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "doc_example.h"

namespace st = torch::safetensors;

DOC_EXAMPLE(dtypes_f6_raw_round_trip) {
  // 2 x 4 F6_E2M3 values: 4 values pack into 3 bytes, so 6 bytes in all.
  at::Tensor packed = torch::arange(6, torch::kUInt8);
  st::RawTensor f6{st::Dtype::F6_E2M3, {2, 4}, packed};
  st::save(std::vector<st::SaveEntry>{{"f6", f6}}, "f6.safetensors");

  st::File file("f6.safetensors");
  DOC_CHECK(file.info("f6").dtype == st::Dtype::F6_E2M3);  // the spec dtype is kept

  DOC_CHECK(file.tensor("f6").sizes() == at::IntArrayRef({2, 3}));  // loads as its bytes
  st::RawTensor raw = file.raw("f6");                               // bit-exact copy
  DOC_CHECK(raw.shape == std::vector<int64_t>({2, 4}) && torch::equal(raw.bytes, packed));
}
