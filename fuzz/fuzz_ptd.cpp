// libFuzzer target over ExecuTorch .ptd files (executorch/flat_tensor.cpp, executorch.h): each
// input is a whole .ptd, opened as a PtdFile over memory; every tensor is read (each byte touched,
// so a view reaching outside the input is an ASan report), and a file that opens is converted to
// safetensors bytes, read back, and must give the same tensors. The writer's own output must open
// again with the same keys and bytes. c10::Error naming the file is the expected outcome for bad
// input; a crash, a sanitizer report, another exception or a broken invariant is a finding.
//
//   fuzz_ptd -max_len=65536 corpus_dir fuzz/seeds_ptd
#include <cstdio>
#include <cstdlib>
#include <string>

#include <ATen/ops/equal.h>
#include <c10/util/Exception.h>

#include "torch_safetensors/executorch.h"
#include "torch_safetensors/safetensors.h"

namespace ts = torch::safetensors;

namespace {

[[noreturn]] void finding(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "FUZZ FINDING: %s %s\n", what, detail.c_str());
  std::abort();
}

uint64_t touch(const at::Tensor& tensor) {
  const at::Tensor bytes = tensor.contiguous().reshape({-1}).view(at::kByte);
  uint64_t sum = 0;
  const uint8_t* data = bytes.data_ptr<uint8_t>();
  for (int64_t i = 0; i < bytes.numel(); ++i) sum += data[i];
  return sum;
}

bool same(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         at::equal(a.contiguous().reshape({-1}).view(at::kByte),
                   b.contiguous().reshape({-1}).view(at::kByte));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string name = "fuzz.ptd";
  ts::NamedTensors tensors;
  uint64_t total = 0;
  try {
    const ts::PtdFile ptd(
        ts::memory_source(std::string(reinterpret_cast<const char*>(data), size), name));
    for (const std::string& key : ptd.keys()) {
      const ts::PtdTensorInfo& info = ptd.info(key);
      if (info.offset + info.nbytes > size) finding("tensor outside the input", key);
      at::Tensor tensor = ptd.tensor(key);
      if (uint64_t(tensor.nbytes()) != info.nbytes) finding("tensor size differs", key);
      touch(tensor);
      total += info.nbytes;
      tensors.emplace_back(key, std::move(tensor));
    }
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    if (message.find(name) == std::string::npos) finding("error without the file name", message);
    return 0;
  } catch (const std::exception& e) {
    finding("unexpected exception", e.what());
  }
  // A file that opens: through the writer and the reader again (entries sharing bytes are
  // copied first, as ptd_to_safetensors does; a bounded total keeps the run fast).
  if (total > (uint64_t(1) << 24)) return 0;
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].second = tensors[i].second.clone();
  try {
    std::string written;
    ts::save_ptd(tensors, [&](const void* bytes, size_t n) {
      written.append(static_cast<const char*>(bytes), n);
      return n;
    });
    const ts::PtdFile again(ts::memory_source(written, "again.ptd"));
    if (again.size() != tensors.size()) finding("round trip lost tensors");
    for (const auto& [key, tensor] : tensors) {
      if (!same(again.tensor(key), tensor)) finding("round trip changed a tensor", key);
    }
  } catch (const c10::Error& e) {
    finding("a file that opens does not round trip", e.what_without_backtrace());
  }
  // And as safetensors, whose rules on names are stricter (UTF-8, no "__metadata__"): a c10::Error
  // is allowed there, a changed tensor is not.
  try {
    const ts::TensorDict back = ts::from_bytes(ts::to_bytes(tensors));
    for (const auto& [key, tensor] : tensors) {
      if (!same(back[key], tensor)) finding("safetensors round trip changed a tensor", key);
    }
  } catch (const c10::Error&) {
  }
  return 0;
}
