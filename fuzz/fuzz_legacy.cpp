// libFuzzer target over the legacy (pre-1.6, non-zip) torch.save reader (convert/legacy_format.h):
// each input is a whole legacy file, read twice — from memory that storages may view, and from a
// source they must copy from — and the two readings must agree: the same names, dtypes, shapes
// and bytes, or the same error. Every tensor built must lie inside its storage (all its elements
// are read, so ASan sees any overrun). c10::Error naming the file is the expected outcome for bad
// input; a crash, a sanitizer report, another exception, an error without the file's name or two
// readings that differ is a finding.
//
//   fuzz_legacy -max_len=65536 -timeout=10 corpus_dir fuzz/seeds_legacy
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "convert/legacy_format.h"
#include "storage/io.h"
#include "torch_safetensors/source.h"

namespace convert = torch::safetensors::convert;

namespace {

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "FUZZ FINDING: %s %s\n", what, detail.c_str());
  std::abort();
}

// The tensors of one reading (contiguous copies), or the error it ended with.
struct Reading {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::string error;
};

Reading read(const std::shared_ptr<const torch::safetensors::Source>& source,
             const std::string& name) {
  Reading reading;
  try {
    const convert::PickleTree tree = convert::read_legacy_torch_file(source, name);
    for (auto& [tensor_name, tensor] : convert::flatten_tensors(tree.root(), name)) {
      // Reads every element through the tensor's own strides (views are at most their storage's
      // bytes: flatten_tensors refuses more).
      reading.tensors.emplace_back(tensor_name, tensor.clone(at::MemoryFormat::Contiguous));
    }
  } catch (const c10::Error& e) {
    reading.error = e.what_without_backtrace();
    if (reading.error.find("safetensors: " + name) == std::string::npos) {
      finding("error does not name the file", reading.error);
    }
  }
  return reading;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  const std::string_view data(reinterpret_cast<const char*>(bytes), size);
  const std::string name = "<fuzz.pt>";
  const Reading viewed = read(torch::safetensors::memory_source(std::string(data), name), name);
  const Reading copied =
      read(torch::safetensors::storage::borrowed_memory_source(data, name), name);
  if (viewed.error != copied.error)
    finding("the readings fail differently", viewed.error + " | " + copied.error);
  if (viewed.tensors.size() != copied.tensors.size()) finding("the readings differ in count", "");
  for (size_t i = 0; i < viewed.tensors.size(); ++i) {
    const at::Tensor& a = viewed.tensors[i].second;
    const at::Tensor& b = copied.tensors[i].second;
    if (viewed.tensors[i].first != copied.tensors[i].first || a.dtype() != b.dtype() ||
        a.sizes() != b.sizes() ||
        (a.nbytes() != 0 && std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) != 0)) {
      finding("the readings differ at", viewed.tensors[i].first);
    }
  }
  return 0;
}
