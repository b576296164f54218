// OutputArchive / InputArchive: a type serialized through operator<< / operator>> on torch's
// archives ports by changing the archive type; nested archives are dotted prefixes.
#include <gtest/gtest.h>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include <sstream>

#include "test_util.h"

namespace st = torch::safetensors;
using ts_test::error_of;

namespace {

// A user type with its own serialization, written against an archive type.
struct Gaussian {
  torch::Tensor mean, log_std;
};
struct Mixture {
  Gaussian first, second;
  torch::Tensor weights;
};

template <typename Archive>
Archive& write_gaussian(Archive& archive, const Gaussian& g) {
  archive.write("mean", g.mean);
  archive.write("log_std", g.log_std);
  return archive;
}
st::OutputArchive& operator<<(st::OutputArchive& archive, const Mixture& m) {
  st::OutputArchive first, second;
  write_gaussian(first, m.first);
  write_gaussian(second, m.second);
  archive.write("first", first);
  archive.write("second", second);
  archive.write("weights", m.weights);
  return archive;
}
st::InputArchive& operator>>(st::InputArchive& archive, Mixture& m) {
  st::InputArchive first, second;
  archive.read("first", first);
  archive.read("second", second);
  first.read("mean", m.first.mean);
  first.read("log_std", m.first.log_std);
  second.read("mean", m.second.mean);
  second.read("log_std", m.second.log_std);
  archive.read("weights", m.weights);
  return archive;
}

Mixture random_mixture() {
  return {{torch::randn({3}), torch::randn({3})},
          {torch::randn({3}), torch::randn({3})},
          torch::softmax(torch::randn({2}), 0)};
}

}  // namespace

TEST(Archive, AUserTypeRoundTripsThroughNestedArchives) {
  const Mixture saved = random_mixture();
  st::OutputArchive out;
  out << saved;
  std::stringstream ss;
  out.save_to(ss);

  st::File file(st::stream_source(ss));
  const std::vector<std::string> expected{"first.log_std", "first.mean", "second.log_std",
                                          "second.mean", "weights"};
  std::vector<std::string> names = file.keys();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, expected);

  ss.clear();
  ss.seekg(0);
  st::InputArchive in;
  in.load_from(ss);
  std::vector<std::string> keys = in.keys();
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"first", "second", "weights"}));
  Mixture loaded = random_mixture();
  const torch::Tensor weights_handle = loaded.weights;
  in >> loaded;
  EXPECT_TRUE(torch::equal(loaded.first.mean, saved.first.mean));
  EXPECT_TRUE(torch::equal(loaded.first.log_std, saved.first.log_std));
  EXPECT_TRUE(torch::equal(loaded.second.mean, saved.second.mean));
  EXPECT_TRUE(torch::equal(loaded.second.log_std, saved.second.log_std));
  EXPECT_TRUE(torch::equal(loaded.weights, saved.weights));
  // A defined tensor keeps its identity (set_), as with torch's InputArchive.
  EXPECT_EQ(weights_handle.unsafeGetTensorImpl(), loaded.weights.unsafeGetTensorImpl());
}

TEST(Archive, TryReadAndErrorsNameTheKey) {
  st::OutputArchive out;
  out.write("a", torch::ones({2}));
  std::ostringstream bytes_out;
  out.save_to(bytes_out);
  const std::string bytes = bytes_out.str();

  st::InputArchive in;
  in.load_from(bytes.data(), bytes.size());
  torch::Tensor t;
  EXPECT_FALSE(in.try_read("b", t));
  EXPECT_FALSE(t.defined());
  EXPECT_TRUE(in.try_read("a", t));
  EXPECT_TRUE(torch::equal(t, torch::ones({2})));
  c10::IValue value;
  in.read("a", value);
  EXPECT_TRUE(value.isTensor());
  const std::string missing = error_of([&] { in.read("missing", t); });
  EXPECT_NE(missing.find("<bytes>"), std::string::npos) << missing;
  EXPECT_NE(missing.find("\"missing\""), std::string::npos) << missing;
  st::InputArchive nested;
  EXPECT_FALSE(in.try_read("a", nested));
  const std::string no_nested = error_of([&] { in.read("sub", nested); });
  EXPECT_NE(no_nested.find("\"sub.\""), std::string::npos) << no_nested;
}

TEST(Archive, NonTensorValuesAndDuplicateKeysAreRefused) {
  st::OutputArchive out;
  const std::string not_tensor = error_of([&] { out.write("step", c10::IValue(int64_t{3})); });
  EXPECT_NE(not_tensor.find("\"step\""), std::string::npos) << not_tensor;
  EXPECT_NE(not_tensor.find("tensors only"), std::string::npos) << not_tensor;
  out.write("x", c10::IValue(torch::zeros({1})));
  const std::string twice = error_of([&] { out.write("x", torch::zeros({1})); });
  EXPECT_NE(twice.find("\"x\" is written twice"), std::string::npos) << twice;
}
