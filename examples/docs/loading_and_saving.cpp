// The C++ of docs/loading-and-saving.md: files, the lazy handle, slices, backends, in-memory
// bytes, streams and write functions, errors.
#include <cerrno>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch_safetensors/safetensors.h>

#include "doc_example.h"

namespace st = torch::safetensors;

DOC_EXAMPLE(loading_save_and_load) {
  at::Tensor weight = torch::randn({4, 3});
  at::Tensor bias = torch::zeros({4});
  st::save({{"weight", weight}, {"bias", bias}}, "model.safetensors", {{"format", "pt"}});

  st::TensorDict tensors = st::load("model.safetensors");  // zero-copy views of the mapped file
  DOC_CHECK(torch::equal(tensors["weight"], weight) && torch::equal(tensors["bias"], bias));
  // In file order: by dtype, then by name, as the reference implementation writes them.
  DOC_CHECK(tensors.keys() == std::vector<std::string>({"bias", "weight"}));

  std::map<std::string, at::Tensor> by_name{{"a", torch::ones({2})}, {"b", torch::arange(3)}};
  st::save(by_name, "map.safetensors");                    // any range of (name, tensor) pairs
  st::save(tensors, "copy.safetensors");                   // a TensorDict
  DOC_CHECK(!st::File("map.safetensors").metadata());      // no metadata given: no __metadata__
  st::save(by_name, "empty.safetensors", st::Metadata{});  // writes "__metadata__": {}
  DOC_CHECK(st::File("empty.safetensors").metadata()->empty());
}

DOC_EXAMPLE(loading_lazy_file) {
  at::Tensor weight = torch::arange(12, torch::kFloat32).reshape({4, 3});
  st::save({{"weight", weight}, {"bias", torch::zeros({4})}}, "model.safetensors",
           {{"format", "pt"}});

  st::File file("model.safetensors");  // reads and validates the header only
  DOC_CHECK(file.keys() == std::vector<std::string>({"bias", "weight"}));
  DOC_CHECK(file.metadata()->at("format") == "pt");
  const st::TensorInfo& info = file.info("weight");  // dtype, shape, byte range
  DOC_CHECK(info.dtype == st::Dtype::F32 && info.nbytes() == 48);
  DOC_CHECK(c10::IntArrayRef(info.shape).vec() == std::vector<int64_t>({4, 3}));

  at::Tensor w = file.tensor("weight");
  at::Tensor row = file.slice("weight", {1});                             // weight[1]
  at::Tensor column = file.slice("weight", {at::indexing::Slice(), 2});   // weight[:, 2]
  at::Tensor rows = file.slice_intervals("weight", 0, {{0, 1}, {3, 4}});  // rows 0 and 3
  st::RawTensor raw = file.raw("bias");  // the stored bytes (1-D uint8) and the spec dtype
  DOC_CHECK(torch::equal(w, weight) && torch::equal(row, weight[1]));
  DOC_CHECK(torch::equal(column, weight.index({at::indexing::Slice(), 2})));
  DOC_CHECK(torch::equal(rows, torch::cat({weight.slice(0, 0, 1), weight.slice(0, 3, 4)})));
  DOC_CHECK(raw.dtype == st::Dtype::F32 && raw.bytes.numel() == 16);

  std::vector<std::string> seen;
  file.for_each([&](const std::string& name, at::Tensor tensor) { seen.push_back(name); });
  DOC_CHECK(seen == file.keys());
}

DOC_EXAMPLE(loading_slices_read_only_their_bytes) {
  st::save({{"w", torch::randn({256, 256})}}, "model.safetensors");
  auto counted = std::make_shared<st::CountingSource>(st::file_source("model.safetensors", false));
  st::File file(counted);  // reads the 8-byte length and the JSON header through the source
  DOC_CHECK(counted->bytes_read() == file.header().data_offset());
  counted->reset();
  at::Tensor cols = file.slice("w", {at::indexing::Slice(), at::indexing::Slice(0, 64)});
  DOC_CHECK(counted->bytes_read() == cols.nbytes());  // 64 columns of each row, nothing else
}

DOC_EXAMPLE(loading_backends) {
  const at::Tensor values = torch::arange(6).reshape({2, 3});
  st::save({{"w", values}}, "model.safetensors");

  at::Tensor view = st::load("model.safetensors")["w"];  // Backend::kMmap (the default)
  view.fill_(7);  // the mapping is private, copy on write: the file keeps its bytes
  DOC_CHECK(torch::equal(st::load("model.safetensors")["w"], values));

  st::LoadOptions pread = st::LoadOptions().with_backend(st::Backend::kPread);
  st::TensorDict owned = st::load("model.safetensors", pread);  // owned memory
  std::remove("model.safetensors");  // the file may change or vanish afterwards
  DOC_CHECK(torch::equal(owned["w"], values));
}

DOC_EXAMPLE(loading_memory_streams_functions) {
  const at::Tensor w = torch::randn({2, 2});
  std::string bytes = st::to_bytes({{"w", w}});        // the bytes a save would write
  st::TensorDict copies = st::from_bytes(bytes);       // owned copies: nothing refers to `bytes`
  st::File lazy(st::memory_source(std::move(bytes)));  // lazy, zero-copy and sliceable
  DOC_CHECK(torch::equal(copies["w"], w) && torch::equal(lazy.slice("w", {0}), w[0]));

  std::stringstream stream;
  st::save({{"w", w}}, stream);                   // to a std::ostream
  st::TensorDict from_stream = st::load(stream);  // from a std::istream
  DOC_CHECK(torch::equal(from_stream["w"], w));

  std::string written;
  st::save({{"w", w}}, [&](const void* data, size_t n) {  // to a write function
    written.append(static_cast<const char*>(data), n);
    return n;  // fewer bytes than `n` is an error
  });
  DOC_CHECK(written == st::to_bytes({{"w", w}}));
}

DOC_EXAMPLE(loading_errors) {
  st::save({{"w", torch::ones({2})}}, "model.safetensors");
  try {
    st::File file("missing.safetensors");
    DOC_CHECK(false);
  } catch (const st::OSError& error) {  // a c10::Error that keeps errno
    DOC_CHECK(error.error_number() == ENOENT);
    const std::string message = error.what_without_backtrace();
    DOC_CHECK(message.rfind("safetensors: missing.safetensors: ", 0) == 0);
  }
  try {
    st::File("model.safetensors").tensor("v");
    DOC_CHECK(false);
  } catch (const c10::Error& error) {
    const std::string message = error.what_without_backtrace();
    DOC_CHECK(message.find("safetensors: model.safetensors: no tensor named 'v'") == 0);
  }
}
