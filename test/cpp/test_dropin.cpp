// torch::safetensors::save / load as a drop-in for torch::save / torch::load: every value (modules
// by reference, shared_ptr and holder; a tensor; a vector of tensors; optimizers), every source
// and destination (paths, streams, bytes, read and write functions), the device argument, and
// clear errors when a file does not fit the value.
#include <gtest/gtest.h>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include <sstream>
#include <streambuf>

#include "test_util.h"

namespace st = torch::safetensors;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 8));
    norm = register_module("norm", torch::nn::BatchNorm1d(8));
    fc2 = register_module("fc2", torch::nn::Linear(8, 2));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(norm(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d norm{nullptr};
};
TORCH_MODULE(Net);

// A custom module used without a holder, through std::shared_ptr.
struct Plain : torch::nn::Module {
  Plain() {
    weight = register_parameter("weight", torch::randn({3, 5}));
    register_buffer("steps", torch::arange(4, torch::kLong));
  }
  torch::Tensor weight;
};

void expect_bit_equal(const torch::nn::Module& a, const torch::nn::Module& b) {
  const auto ta = a.named_parameters(), tb = b.named_parameters();
  ASSERT_EQ(ta.size(), tb.size());
  for (const auto& p : ta) {
    EXPECT_TRUE(torch::equal(p.value(), tb[p.key()])) << p.key();
    EXPECT_EQ(p.value().dtype(), tb[p.key()].dtype()) << p.key();
  }
  const auto ba = a.named_buffers(), bb = b.named_buffers();
  ASSERT_EQ(ba.size(), bb.size());
  for (const auto& p : ba) EXPECT_TRUE(torch::equal(p.value(), bb[p.key()])) << p.key();
}

void randomize(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.uniform_(-1, 1);
  for (auto& b : module.buffers()) {
    if (b.is_floating_point()) b.uniform_(0.5, 1.5);
  }
}

// An istream over a string that cannot seek: it must be read whole.
class ForwardOnlyBuffer : public std::streambuf {
 public:
  explicit ForwardOnlyBuffer(std::string bytes) : bytes_(std::move(bytes)) {
    setg(bytes_.data(), bytes_.data(), bytes_.data() + bytes_.size());
  }

 private:
  std::string bytes_;
};

}  // namespace

// The issue's code block, verbatim apart from the checks.
TEST(DropIn, TheIssuesCallsCompileAndRoundTripBitExactly) {
  TempDir dir;
  const std::string m = dir.file("m.safetensors"), t_path = dir.file("t.safetensors"),
                    v_path = dir.file("v.safetensors");

  torch::nn::Linear model(4, 2);
  st::save(model, m);
  torch::nn::Linear loaded_model(4, 2);
  st::load(loaded_model, m);
  expect_bit_equal(*model, *loaded_model);

  torch::Tensor t = torch::ones({3});
  st::save(t, t_path);
  torch::Tensor t_loaded;
  st::load(t_loaded, t_path);
  EXPECT_TRUE(torch::equal(t, t_loaded));
  EXPECT_EQ(st::File(t_path).keys(), std::vector<std::string>{"0"});

  std::vector<torch::Tensor> v{t, t};  // one tensor twice, as in the issue
  st::save(v, v_path);
  std::vector<torch::Tensor> v_loaded;
  st::load(v_loaded, v_path);
  ASSERT_EQ(v_loaded.size(), 2u);
  EXPECT_TRUE(torch::equal(v_loaded[0], v[0]));
  EXPECT_TRUE(torch::equal(v_loaded[1], v[1]));
  std::vector<torch::Tensor> views{t, t.narrow(0, 1, 2), t * 2};  // overlapping: copies written
  st::save(views, v_path);
  std::vector<torch::Tensor> views_loaded;
  st::load(views_loaded, v_path);
  ASSERT_EQ(views_loaded.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::equal(views_loaded[i], views[i])) << i;

  std::stringstream ss;
  st::save(*model, ss);
  torch::nn::Linear from_stream(4, 2);
  st::load(*from_stream, ss);
  expect_bit_equal(*model, *from_stream);

  torch::nn::Linear with_device(4, 2);
  st::load(*with_device, m, torch::Device("cpu"));
  expect_bit_equal(*model, *with_device);
}

TEST(DropIn, SharedPtrAndHolderOfACustomModule) {
  TempDir dir;
  auto plain = std::make_shared<Plain>();
  st::save(plain, dir.file("plain.safetensors"));
  auto plain_loaded = std::make_shared<Plain>();
  st::load(plain_loaded, dir.file("plain.safetensors"));
  expect_bit_equal(*plain, *plain_loaded);

  Net net;
  randomize(*net);
  st::save(net, dir.file("net.safetensors"));
  std::shared_ptr<NetImpl> as_pointer = Net().ptr();
  st::load(as_pointer, dir.file("net.safetensors"));
  expect_bit_equal(*net, *as_pointer);
  Net holder;
  st::load(holder, dir.file("net.safetensors"), torch::kCPU);
  expect_bit_equal(*net, *holder);
  // The same through torch's own API on the same values, for comparison: identical weights.
  torch::save(net, dir.file("net.pt"));
  Net from_torch;
  torch::load(from_torch, dir.file("net.pt"));
  expect_bit_equal(*from_torch, *holder);
}

TEST(DropIn, ParametersKeepTheirIdentityAndRequiresGrad) {
  TempDir dir;
  Net source;
  randomize(*source);
  st::save(source, dir.file("net.safetensors"));
  Net target;
  const torch::Tensor weight = target->fc1->weight;  // a handle the caller (an optimizer) keeps
  st::load(target, dir.file("net.safetensors"), torch::Device(torch::kCPU));
  EXPECT_EQ(weight.unsafeGetTensorImpl(), target->fc1->weight.unsafeGetTensorImpl());
  EXPECT_TRUE(torch::equal(weight, source->fc1->weight));
  EXPECT_TRUE(weight.requires_grad());
}

TEST(DropIn, NonStrictReportThroughTheOptionsOverload) {
  TempDir dir;
  torch::nn::Linear small(4, 2);
  st::save(small, dir.file("linear.safetensors"));
  Net net;
  const st::ModuleLoadReport report =
      st::load(net, dir.file("linear.safetensors"), st::ModuleLoadOptions().with_strict(false));
  EXPECT_FALSE(report.ok());
  EXPECT_FALSE(report.missing.empty());
}

TEST(DropIn, TensorLoadReplacesADefinedTensorInPlaceLikeTorchLoad) {
  TempDir dir;
  const torch::Tensor saved = torch::randn({2, 3}, torch::kFloat64);
  st::save(saved, dir.file("t.safetensors"));
  torch::Tensor target = torch::zeros({7}, torch::kFloat64);
  const torch::Tensor alias = target;  // same TensorImpl: set_ keeps the identity
  st::load(target, dir.file("t.safetensors"));
  EXPECT_EQ(alias.unsafeGetTensorImpl(), target.unsafeGetTensorImpl());
  EXPECT_TRUE(torch::equal(alias, saved));
}

TEST(DropIn, VectorLoadAppendsLikeTorchLoad) {
  TempDir dir;
  const std::vector<torch::Tensor> saved{torch::arange(3), torch::ones({2, 2}),
                                         torch::tensor({true, false})};
  st::save(saved, dir.file("v.safetensors"));
  torch::save(saved, dir.file("v.pt"));
  std::vector<torch::Tensor> ours{torch::zeros({1})}, theirs{torch::zeros({1})};
  st::load(ours, dir.file("v.safetensors"));
  torch::load(theirs, dir.file("v.pt"));
  ASSERT_EQ(ours.size(), theirs.size());
  ASSERT_EQ(ours.size(), 4u);
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_TRUE(torch::equal(ours[i], theirs[i])) << i;
    EXPECT_EQ(ours[i].dtype(), theirs[i].dtype()) << i;
  }
  // An empty vector round-trips as an empty file.
  st::save(std::vector<torch::Tensor>{}, dir.file("empty.safetensors"));
  std::vector<torch::Tensor> none;
  st::load(none, dir.file("empty.safetensors"));
  EXPECT_TRUE(none.empty());
}

TEST(DropIn, EveryDestinationWritesTheSameBytes) {
  TempDir dir;
  Net net;
  randomize(*net);
  st::save(net, dir.file("net.safetensors"));
  const std::string file_bytes = ts_test::read_file(dir.file("net.safetensors"));

  std::ostringstream out;
  st::save(net, out);
  EXPECT_EQ(out.str(), file_bytes);

  std::string written;
  st::save(net, [&](const void* data, size_t n) -> size_t {
    written.append(static_cast<const char*>(data), n);
    return n;
  });
  EXPECT_EQ(written, file_bytes);
}

TEST(DropIn, EverySourceLoadsTheSameWeights) {
  TempDir dir;
  Net net;
  randomize(*net);
  std::ostringstream out;
  st::save(net, out);
  std::string bytes = out.str();

  {  // (data, size) is copied: changing the caller's bytes afterwards changes nothing loaded.
    Net target;
    st::load(target, bytes.data(), bytes.size());
    expect_bit_equal(*net, *target);
    std::fill(bytes.begin() + 100, bytes.end(), '\0');
    expect_bit_equal(*net, *target);
    bytes = out.str();
  }
  {  // with a device argument too
    Net target;
    st::load(target, bytes.data(), bytes.size(), torch::Device("cpu"));
    expect_bit_equal(*net, *target);
  }
  {  // read + size functions
    Net target;
    size_t calls = 0;
    st::load(
        target,
        [&](uint64_t pos, void* buf, size_t n) -> size_t {
          ++calls;
          const size_t available = std::min<size_t>(n, bytes.size() - pos);
          std::memcpy(buf, bytes.data() + pos, available);
          return available;
        },
        [&]() -> size_t { return bytes.size(); });
    expect_bit_equal(*net, *target);
    EXPECT_GT(calls, 0u);
  }
  {  // a stream that cannot seek is read whole
    ForwardOnlyBuffer buffer(bytes);
    std::istream forward_only(&buffer);
    Net target;
    st::load(target, forward_only);
    expect_bit_equal(*net, *target);
  }
  {  // whole-file load from a stream
    std::istringstream in(bytes);
    const st::TensorDict tensors = st::load(in);
    EXPECT_EQ(tensors.size(), net->named_parameters().size() + net->named_buffers().size());
  }
}

TEST(DropIn, ASeekableStreamReadsOnlyTheHeaderAndTheBytesAskedFor) {
  const torch::Tensor big = torch::randn({256, 256});
  const torch::Tensor small = torch::arange(8, torch::kFloat32);
  std::stringstream ss;
  st::save(st::NamedTensors{{"big", big}, {"small", small}}, ss);
  const uint64_t header = st::File(st::stream_source(ss)).header().data_offset();
  ss.clear();
  ss.seekg(0);
  auto counted = std::make_shared<st::CountingSource>(st::stream_source(ss));
  st::File file(counted);
  EXPECT_TRUE(torch::equal(file.tensor("small"), small));
  EXPECT_EQ(counted->bytes_read(), header + small.nbytes());
}

TEST(DropIn, OptimizerThroughStreamsBytesAndFunctions) {
  torch::manual_seed(0);
  Net net;
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.01));
  for (int step = 0; step < 3; ++step) {
    adam.zero_grad();
    net->forward(torch::randn({5, 4})).sum().backward();
    adam.step();
  }
  std::stringstream ss;
  st::save(adam, ss);
  const std::string bytes = ss.str();

  const auto restored_bytes = [&](torch::optim::Adam& fresh) {
    std::string out;
    st::save(fresh, [&](const void* data, size_t n) -> size_t {
      out.append(static_cast<const char*>(data), n);
      return n;
    });
    return out;
  };
  {
    torch::optim::Adam fresh(net->parameters(), torch::optim::AdamOptions(1.0));
    st::load(fresh, ss);
    EXPECT_EQ(restored_bytes(fresh), bytes);
  }
  {
    torch::optim::Adam fresh(net->parameters(), torch::optim::AdamOptions(1.0));
    st::load(fresh, bytes.data(), bytes.size());
    EXPECT_EQ(restored_bytes(fresh), bytes);
  }
  {
    torch::optim::Adam fresh(net->parameters(), torch::optim::AdamOptions(1.0));
    st::load(
        fresh,
        [&](uint64_t pos, void* buf, size_t n) -> size_t {
          std::memcpy(buf, bytes.data() + pos, n);
          return n;
        },
        [&]() -> size_t { return bytes.size(); }, torch::Device("cpu"));
    EXPECT_EQ(restored_bytes(fresh), bytes);
  }
  {  // the wrong optimizer type, through a stream: named, nothing changed
    torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.5));
    std::istringstream in(bytes);
    const std::string error = error_of([&] { st::load(sgd, in); });
    EXPECT_NE(error.find("<stream>"), std::string::npos) << error;
    EXPECT_NE(error.find("Adam"), std::string::npos) << error;
    EXPECT_EQ(sgd.param_groups()[0].options().get_lr(), 0.5);
  }
}

TEST(DropIn, FilesThatDoNotFitTheValueAreErrorsNamingTheKey) {
  TempDir dir;
  const std::string vector_file = dir.file("v.safetensors"),
                    module_file = dir.file("m.safetensors");
  st::save(std::vector<torch::Tensor>{torch::ones({2}), torch::ones({3})}, vector_file);
  Net net;
  st::save(net, module_file);

  {  // a vector file into a module: strict, nothing half-loaded
    Net target;
    const torch::Tensor before = target->fc1->weight.clone();
    const std::string error = error_of([&] { st::load(target, vector_file); });
    EXPECT_NE(error.find(vector_file), std::string::npos) << error;
    EXPECT_NE(error.find("fc1.weight"), std::string::npos) << error;
    EXPECT_NE(error.find("not in the module: 0, 1"), std::string::npos) << error;
    EXPECT_TRUE(torch::equal(before, target->fc1->weight));
  }
  {  // a module file into a vector
    std::vector<torch::Tensor> v;
    const std::string error = error_of([&] { st::load(v, module_file); });
    EXPECT_NE(error.find(module_file), std::string::npos) << error;
    EXPECT_NE(error.find("is not a vector element"), std::string::npos) << error;
    EXPECT_TRUE(v.empty());
  }
  {  // a module file into a tensor
    torch::Tensor t;
    const std::string error = error_of([&] { st::load(t, module_file); });
    EXPECT_NE(error.find(module_file), std::string::npos) << error;
    EXPECT_NE(error.find("no tensor \"0\""), std::string::npos) << error;
  }
}

TEST(DropIn, ShortStreamsReadsAndWritesAreErrorsNamingTheSource) {
  Net net;
  std::ostringstream out;
  st::save(net, out);
  const std::string bytes = out.str();

  {  // a stream that ends early
    std::istringstream in(bytes.substr(0, bytes.size() - 10));
    Net target;
    const std::string error = error_of([&] { st::load(target, in); });
    EXPECT_NE(error.find("<stream>"), std::string::npos) << error;
  }
  {  // a read function that returns short (its size says the whole file)
    Net target;
    const torch::Tensor before = target->fc2->weight.clone();
    const std::string error = error_of([&] {
      st::load(
          target,
          [&](uint64_t pos, void* buf, size_t n) -> size_t {
            const size_t available = std::min<size_t>(n, 64);
            std::memcpy(buf, bytes.data() + pos, available);
            return pos == 0 && n <= 8 ? n : available;
          },
          [&]() -> size_t { return bytes.size(); });
    });
    EXPECT_NE(error.find("<read function>"), std::string::npos) << error;
    EXPECT_NE(error.find("returned 64 bytes at offset 8"), std::string::npos) << error;
    EXPECT_TRUE(torch::equal(before, target->fc2->weight));
  }
  {  // a write function that takes less
    const std::string error =
        error_of([&] { st::save(net, [](const void*, size_t n) -> size_t { return n / 2; }); });
    EXPECT_NE(error.find("<write function>"), std::string::npos) << error;
    EXPECT_NE(error.find("at offset 0"), std::string::npos) << error;
  }
  {  // a stream that fails
    std::ostringstream failed;
    failed.setstate(std::ios::badbit);
    const std::string error = error_of([&] { st::save(net, failed); });
    EXPECT_NE(error.find("<stream>"), std::string::npos) << error;
  }
}
