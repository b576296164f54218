// The C++ of docs/migrating-from-torch-save.md: torch::save / torch::load calls with `torch::`
// replaced by `st::` and `.pt` by `.safetensors`, and what does not fit a safetensors file.
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "doc_example.h"
#include "doc_throws.h"

namespace st = torch::safetensors;

using doc_example::throws;

DOC_EXAMPLE(migrating_paths) {
  torch::nn::Linear model(4, 2);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::Tensor t = torch::arange(3);
  std::vector<torch::Tensor> v{torch::ones({2}), torch::zeros({3})};

  st::save(model, "model.safetensors");          // was torch::save(model, "model.pt")
  st::save(optimizer, "optimizer.safetensors");  // was torch::save(optimizer, "optimizer.pt")
  st::save(t, "tensor.safetensors");             // was torch::save(t, "tensor.pt"): key "0"
  st::save(v, "vector.safetensors");             // was torch::save(v, "vector.pt"): "0", "1"

  torch::nn::Linear loaded(4, 2);
  st::load(loaded, "model.safetensors");  // was torch::load(loaded, "model.pt")
  st::load(loaded, "model.safetensors", torch::Device(torch::kCPU));  // with a device
  st::load(optimizer, "optimizer.safetensors");  // was torch::load(optimizer, "optimizer.pt")
  torch::Tensor t2;
  st::load(t2, "tensor.safetensors");  // was torch::load(t2, "tensor.pt")
  std::vector<torch::Tensor> v2;
  st::load(v2, "vector.safetensors");  // appends, as torch::load does
  DOC_CHECK(torch::equal(loaded->weight, model->weight) && torch::equal(t2, t));
  DOC_CHECK(v2.size() == 2 && torch::equal(v2[1], v[1]));
}

DOC_EXAMPLE(migrating_streams_and_functions) {
  torch::nn::Linear model(4, 2);
  std::stringstream stream;
  st::save(model, stream);  // was torch::save(model, stream)
  torch::nn::Linear from_stream(4, 2);
  st::load(from_stream, stream);  // was torch::load(from_stream, stream)

  std::string bytes;
  st::save(model, [&](const void* data, size_t n) {  // was torch::save(model, write_func)
    bytes.append(static_cast<const char*>(data), n);
    return n;
  });
  torch::nn::Linear from_memory(4, 2);
  st::load(from_memory, bytes.data(), bytes.size());  // was torch::load(model, data, size)

  auto read = [&](uint64_t pos, void* buf, size_t n) {
    std::memcpy(buf, bytes.data() + pos, n);
    return n;
  };
  auto size = [&] { return bytes.size(); };
  torch::nn::Linear from_function(4, 2);
  st::load(from_function, read, size);  // was torch::load(model, read_func, size_func)
  DOC_CHECK(torch::equal(from_stream->weight, model->weight));
  DOC_CHECK(torch::equal(from_memory->bias, model->bias));
  DOC_CHECK(torch::equal(from_function->weight, model->weight));
}

DOC_EXAMPLE(migrating_archives) {
  torch::nn::Linear model(4, 2);
  st::OutputArchive archive;  // was torch::serialize::OutputArchive
  archive.write("weight", model->weight);
  archive.write("bias", model->bias, /*is_buffer=*/false);
  archive.save_to("archive.safetensors");

  st::InputArchive input;  // was torch::serialize::InputArchive
  input.load_from("archive.safetensors");
  at::Tensor weight;
  input.read("weight", weight);
  DOC_CHECK(torch::equal(weight, model->weight));
}

DOC_EXAMPLE(migrating_what_does_not_fit) {
  st::OutputArchive archive;
  DOC_CHECK(throws([&] { archive.write("epoch", c10::IValue(int64_t(3))); },
                   "the value for \"epoch\" is a Int, but safetensors files hold tensors only"));

  st::save(std::vector<torch::Tensor>{torch::ones({2}), torch::ones({2})}, "vector.safetensors");
  torch::nn::Linear model(4, 2);
  st::save(model, "model.safetensors");
  DOC_CHECK(throws([&] { st::load(model, "vector.safetensors"); }, "not in the module: 0, 1"));
  std::vector<torch::Tensor> v;
  DOC_CHECK(throws([&] { st::load(v, "model.safetensors"); }, "is not a vector element"));
  torch::Tensor t;
  DOC_CHECK(throws([&] { st::load(t, "model.safetensors"); }, "no tensor \"0\""));
}

DOC_EXAMPLE(migrating_shared_elements) {
  torch::Tensor t = torch::ones({2});
  st::save(std::vector<torch::Tensor>{t, t}, "vector.safetensors");  // each written in full
  std::vector<torch::Tensor> v;
  st::load(v, "vector.safetensors");
  DOC_CHECK(v.size() == 2 && !v[0].is_alias_of(v[1]));  // two tensors now
}
