// libFuzzer target over the converter's readers of untrusted bytes: each input is a data.pkl for
// the restricted unpickler (convert/unpickler.h), or, when it starts with a zip local header
// ("PK\x03\x04"), a whole torch.save archive for the zip reader (convert/zip_reader.h) and
// everything after it. Storages are
// zero-filled buffers of the size the pickle asks for (capped); every tensor built must lie inside
// its storage (all its elements are read, so ASan sees any overrun), and extraction (with
// placeholders, without strict) and strict flattening must each either name tensors or fail.
// c10::Error naming the file is the expected outcome for bad input; a crash, a sanitizer report,
// another exception or an error without the file's name is a finding.
//
//   fuzz_unpickle -max_len=65536 -timeout=10 corpus_dir fuzz/seeds_pickle
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include "check.h"
#include "convert/torch_zip.h"
#include "convert/unpickler.h"
#include "torch_safetensors/source.h"

namespace convert = torch::safetensors::convert;

namespace {

constexpr uint64_t kMaxStorageBytes = uint64_t(1) << 20;

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "FUZZ FINDING: %s %s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  const std::string_view data(reinterpret_cast<const char*>(bytes), size);
  const std::string name = "<fuzz.pkl>";
  auto load = [&](const std::string& key, uint64_t nbytes) -> c10::Storage {
    TS_CHECK(nbytes <= kMaxStorageBytes, name, "storage '", key, "' too large for the fuzzer");
    return c10::Storage(c10::Storage::use_byte_size_t(), nbytes,
                        c10::GetDefaultCPUAllocator()->allocate(nbytes), nullptr, false);
  };
  auto check_error = [&](const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    if (message.find("safetensors: " + name) == std::string::npos) {
      finding("error does not name the file", message);
    }
  };
  auto check_tensors = [&](const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
    for (const auto& [tensor_name, tensor] : tensors) {
      if (tensor_name.empty() && tensors.size() > 1) finding("empty name among several", "");
      // Expanded (stride-0) tensors may be large views of a small storage: not copied here.
      if (tensor.numel() > (int64_t(1) << 22)) continue;
      // Reads every element through the tensor's own strides.
      at::Tensor copy = tensor.clone(at::MemoryFormat::Contiguous);
      if (copy.numel() != tensor.numel()) finding("clone changed numel", tensor_name);
    }
  };
  try {
    if (data.substr(0, 4) == std::string_view("PK\x03\x04", 4)) {
      const auto archive = torch::safetensors::memory_source(std::string(data), name);
      try {  // convert's default reading (placeholders), then the strict one
        check_tensors(convert::read_torch_archive(archive, name, "", false, true).tensors);
      } catch (const c10::Error& e) {
        check_error(e);
      }
      check_tensors(convert::load_torch_archive(archive, name));
      return 0;
    }
    convert::PickleTree tree = convert::unpickle(data, load, name);
    // Both readings of the tree: convert's default (placeholders looked into, the rest skipped,
    // scalars kept; a key when the first entry's key is a string) and the strict one.
    const convert::PickleValue& root = tree.root();
    const bool keyed = root.kind == convert::PickleValue::Kind::kDict && !root.entries.empty() &&
                       root.entries[0].first->kind == convert::PickleValue::Kind::kString;
    for (const std::string& key : {std::string(), keyed ? root.entries[0].first->text : ""}) {
      try {
        check_tensors(convert::extract_tensors(root, key, false, true, name).tensors);
      } catch (const c10::Error& e) {
        check_error(e);
      }
    }
    check_tensors(convert::flatten_tensors(root, name));
  } catch (const c10::Error& e) {
    check_error(e);
  }
  return 0;
}
