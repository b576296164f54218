// ExecuTorch packaging: .ptd writing and reading (executorch.h), the layout ExecuTorch's serializer
// uses, and bad input: truncated files, offsets outside the file, unknown scalar types, missing
// keys, arbitrary corruption.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <random>

#include "executorch/flat_tensor.h"
#include "test_util.h"
#include "torch_safetensors/executorch.h"
#include "torch_safetensors/safetensors.h"

namespace ts = torch::safetensors;
using ts_test::error_of;
using ts_test::read_file;
using ts_test::TempDir;
using ts_test::write_file;

namespace {

template <typename T>
T get(const std::string& bytes, uint64_t at) {
  T value;
  std::memcpy(&value, bytes.data() + at, sizeof(T));
  return value;
}
template <typename T>
void put(std::string& bytes, uint64_t at, T value) {
  std::memcpy(&bytes[at], &value, sizeof(T));
}

// A minimal flatbuffer walker, to find the fields the corruption tests patch.
uint64_t deref(const std::string& b, uint64_t pos) { return pos + get<uint32_t>(b, pos); }
uint64_t field(const std::string& b, uint64_t table, int index) {
  const uint64_t vtable = table - get<int32_t>(b, table);
  return table + get<uint16_t>(b, vtable + 4 + 2 * index);
}
uint64_t root(const std::string& b) { return deref(b, 0); }
// FlatTensor.segments[i] / named_data[i] tables.
uint64_t element(const std::string& b, uint64_t table, int vector_field, int i) {
  const uint64_t vec = deref(b, field(b, table, vector_field));
  return deref(b, vec + 4 + 4 * i);
}
uint64_t segment_table(const std::string& b, int i) { return element(b, root(b), 1, i); }
uint64_t named_data_table(const std::string& b, int i) { return element(b, root(b), 2, i); }
uint64_t layout_table(const std::string& b, int i) {
  return deref(b, field(b, named_data_table(b, i), 2));
}

ts::NamedTensors sample() {
  return {{"linear.weight", torch::arange(12, torch::kFloat32).reshape({3, 4})},
          {"linear.bias", torch::tensor({1.5, -2.5, 3.5}, torch::kFloat32)},
          {"steps", torch::tensor(7, torch::kInt64)}};
}

void expect_same(const ts::NamedTensors& expected, const ts::TensorDict& got) {
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(got.keys()[i], expected[i].first);
    EXPECT_EQ(got.values()[i].scalar_type(), expected[i].second.scalar_type()) << i;
    EXPECT_TRUE(torch::equal(got.values()[i], expected[i].second)) << expected[i].first;
  }
}

}  // namespace

TEST(Ptd, RoundTripEveryExecuTorchDtype) {
  TempDir dir;
  ts::NamedTensors tensors;
  const std::vector<c10::ScalarType> types = {
      torch::kBool,           torch::kUInt8,       torch::kInt8,          torch::kInt16,
      torch::kUInt16,         torch::kFloat16,     torch::kBFloat16,      torch::kInt32,
      torch::kUInt32,         torch::kFloat32,     torch::kFloat64,       torch::kInt64,
      torch::kUInt64,         torch::kFloat8_e5m2, torch::kFloat8_e4m3fn, torch::kFloat8_e5m2fnuz,
      torch::kFloat8_e4m3fnuz};
  for (c10::ScalarType type : types) {
    tensors.emplace_back(std::string("t.") + c10::toString(type),
                         torch::arange(6, torch::kFloat32).reshape({2, 3}).to(type));
  }
  tensors.emplace_back("empty", torch::zeros({0, 5}));
  const std::string path = dir.file("all.ptd");
  ts::save_ptd(tensors, path);
  ts::PtdFile ptd(path);
  EXPECT_EQ(ptd.version(), 0u);
  EXPECT_EQ(ptd.num_segments(), tensors.size());
  expect_same(tensors, ptd.tensors());
  // ExecuTorch's codes (scalar_type.fbs) and layout: segments at multiples of 128.
  EXPECT_EQ(ptd.info("t.Float").executorch_scalar_type, 6);
  EXPECT_EQ(ptd.info("t.Bool").executorch_scalar_type, 11);
  EXPECT_EQ(ptd.info("t.BFloat16").executorch_scalar_type, 15);
  EXPECT_EQ(ptd.info("t.UInt64").executorch_scalar_type, 29);
  EXPECT_EQ(ptd.info("t.Float8_e4m3fn").executorch_scalar_type, 24);
  const std::string bytes = read_file(path);
  uint64_t end = 0;
  for (const std::string& key : ptd.keys()) {
    const ts::PtdTensorInfo& info = ptd.info(key);
    EXPECT_EQ(info.offset % 128, 0u) << key;
    EXPECT_EQ(info.dim_order, (std::vector<uint8_t>{0, 1})) << key;
    end = info.offset + info.nbytes;
  }
  EXPECT_EQ(bytes.size(), end);
  // The header as ExecuTorch writes it.
  EXPECT_EQ(bytes.substr(4, 4), "FT01");
  EXPECT_EQ(bytes.substr(8, 4), "FH01");
  EXPECT_EQ(get<uint32_t>(bytes, 12), 40u);
  EXPECT_EQ(get<uint64_t>(bytes, 16), 48u);
  EXPECT_EQ(get<uint64_t>(bytes, 32) % 128, 0u);
  // Views of the mapping, zero-copy; the pread backend reads the same.
  EXPECT_EQ(ts_test::mapped_file_of(ptd.tensor("t.Float").data_ptr()).empty(), false);
  expect_same(tensors, ts::PtdFile(path, ts::Backend::kPread).tensors());
  expect_same(tensors, ts::PtdFile(ts::memory_source(bytes)).tensors());
}

TEST(Ptd, AlignmentOption) {
  TempDir dir;
  ts::save_ptd(sample(), dir.file("a.ptd"), ts::PtdOptions().with_alignment(4096));
  ts::PtdFile ptd(dir.file("a.ptd"));
  for (const std::string& key : ptd.keys()) EXPECT_EQ(ptd.info(key).offset % 4096, 0u);
  expect_same(sample(), ptd.tensors());
  EXPECT_NE(error_of([&] {
              ts::save_ptd(sample(), dir.file("b.ptd"), ts::PtdOptions().with_alignment(48));
            }).find("alignment must be a power of two"),
            std::string::npos);
}

TEST(Ptd, FromCheckpointWithNames) {
  TempDir dir;
  ts::NamedTensors prefixed;
  for (const auto& [name, tensor] : sample()) prefixed.emplace_back("model." + name, tensor);
  ts::save(prefixed, dir.file("w.safetensors"));
  ts::save_ptd(ts::Checkpoint(dir.file("w.safetensors")), dir.file("w.ptd"),
               ts::PtdOptions().with_strip_prefix("model.").with_rename("model.steps", "n"));
  ts::PtdFile ptd(dir.file("w.ptd"));
  // In the checkpoint's order (safetensors orders by dtype, then name).
  EXPECT_EQ(ptd.keys(), (std::vector<std::string>{"n", "linear.bias", "linear.weight"}));
  EXPECT_TRUE(torch::equal(ptd.tensor("linear.weight"), sample()[0].second));
  EXPECT_TRUE(torch::equal(ptd.tensor("n"), sample()[2].second));

  // A sharded checkpoint, one tensor per shard.
  ts::save_sharded(sample(), dir.file("sharded"), ts::ShardOptions().with_max_shard_size(16));
  ts::save_ptd(ts::Checkpoint(dir.file("sharded")), dir.file("s.ptd"));
  ts::PtdFile sharded(dir.file("s.ptd"));
  for (const auto& [name, tensor] : sample())
    EXPECT_TRUE(torch::equal(sharded.tensor(name), tensor));

  const std::string clash = error_of([&] {
    ts::save_ptd(sample(), dir.file("c.ptd"), ts::PtdOptions().with_rename("steps", "linear.bias"));
  });
  EXPECT_NE(clash.find("tensors 'linear.bias' and 'steps' both map to key 'linear.bias'"),
            std::string::npos)
      << clash;
}

TEST(Ptd, DtypesExecuTorchLacksNameTheTensor) {
  TempDir dir;
  const std::string complex = error_of([&] {
    ts::save_ptd({{"z", torch::zeros({2}, torch::kComplexFloat)}}, dir.file("z.ptd"));
  });
  EXPECT_NE(complex.find("tensor 'z' has dtype ComplexFloat, which ExecuTorch cannot express"),
            std::string::npos)
      << complex;
  EXPECT_NE(error_of([&] {
              ts::save_ptd({{"e", torch::zeros({2}, torch::kFloat8_e8m0fnu)}}, dir.file("e.ptd"));
            }).find("tensor 'e'"),
            std::string::npos);
  // F4 and F6 through a safetensors file (raw bytes).
  ts::save(
      std::vector<ts::SaveEntry>{
          {"f6", ts::RawTensor{ts::Dtype::F6_E2M3, {4}, torch::zeros({3}, torch::kUInt8)}},
          {"ok", torch::ones({2})}},
      dir.file("f6.safetensors"));
  const std::string f6 = error_of(
      [&] { ts::save_ptd(ts::Checkpoint(dir.file("f6.safetensors")), dir.file("f6.ptd")); });
  EXPECT_NE(f6.find("tensor 'f6' has dtype F6_E2M3, which ExecuTorch cannot express"),
            std::string::npos)
      << f6;
  EXPECT_EQ(ts_test::list_dir(dir.path()), (std::vector<std::string>{"f6.safetensors"}));
}

TEST(Ptd, ToSafetensorsAndBack) {
  TempDir dir;
  ts::save_ptd(sample(), dir.file("m.ptd"));
  EXPECT_TRUE(ts::is_ptd_file(dir.file("m.ptd")));
  EXPECT_EQ(ts::ptd_to_safetensors(dir.file("m.ptd"), dir.file("m.safetensors")), 3u);
  EXPECT_FALSE(ts::is_ptd_file(dir.file("m.safetensors")));
  EXPECT_FALSE(ts::is_ptd_file(dir.path()));
  ts::File file(dir.file("m.safetensors"));
  for (const auto& [name, tensor] : sample()) EXPECT_TRUE(torch::equal(file.tensor(name), tensor));
  expect_same(sample(), ts::load_ptd(dir.file("m.ptd")));
}

TEST(Ptd, DimOrderIsTheMemoryOrder) {
  // sizes [2, 3, 4] with dim_order (0, 2, 1): memory holds [2, 4, 3].
  TempDir dir;
  const at::Tensor memory = torch::arange(24, torch::kFloat32).reshape({2, 4, 3});
  ts::save_ptd({{"x", memory.permute({0, 2, 1})}}, dir.file("x.ptd"));
  std::string bytes = read_file(dir.file("x.ptd"));
  const uint64_t order = deref(bytes, field(bytes, layout_table(bytes, 0), 2)) + 4;
  bytes[order + 1] = 2, bytes[order + 2] = 1;
  // The writer wrote the permuted tensor contiguously; put the original memory back.
  const ts::PtdFile before(ts::memory_source(bytes));
  std::memcpy(&bytes[before.info("x").offset], memory.data_ptr(), 24 * 4);
  const ts::PtdFile ptd(ts::memory_source(bytes));
  EXPECT_EQ(ptd.info("x").dim_order, (std::vector<uint8_t>{0, 2, 1}));
  const at::Tensor x = ptd.tensor("x");
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_TRUE(torch::equal(x, memory.permute({0, 2, 1})));
  write_file(dir.file("y.ptd"), bytes);
  ts::ptd_to_safetensors(dir.file("y.ptd"), dir.file("y.safetensors"));
  EXPECT_TRUE(
      torch::equal(ts::File(dir.file("y.safetensors")).tensor("x"), memory.permute({0, 2, 1})));
}

// ---- bad input ----

class PtdBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    ts::save_ptd(sample(), dir_.file("good.ptd"));
    good_ = read_file(dir_.file("good.ptd"));
  }
  // The message of opening `bytes` as a .ptd (and reading every tensor).
  std::string open_error(const std::string& bytes) {
    return error_of([&] { ts::PtdFile(ts::memory_source(bytes, "bad.ptd")).tensors(); });
  }
  TempDir dir_;
  std::string good_;
};

#define EXPECT_ERROR(bytes, text)                                            \
  do {                                                                       \
    const std::string message = open_error(bytes);                           \
    EXPECT_NE(message.find(text), std::string::npos) << "got: " << message;  \
    EXPECT_NE(message.find("ptd: bad.ptd: "), std::string::npos) << message; \
  } while (0)

TEST_F(PtdBadInput, TruncatedHeader) {
  EXPECT_ERROR(good_.substr(0, 20), "truncated header: 20 bytes");
  EXPECT_ERROR(std::string(), "truncated header: 0 bytes");
}

TEST_F(PtdBadInput, NotAPtd) {
  std::string bad = good_;
  bad[7] = '2';
  EXPECT_ERROR(bad, "the flatbuffer identifier is 'FT02', expected 'FT01'");
  bad = good_;
  bad[8] = 'X';
  EXPECT_ERROR(bad, "extended header magic is 'XH01'");
  EXPECT_ERROR(std::string(64, 'x'), "not an ExecuTorch .ptd file");
}

TEST_F(PtdBadInput, TruncatedData) {
  EXPECT_ERROR(good_.substr(0, good_.size() - 1), "lies outside the file of");
  std::string bad = good_;
  put<uint64_t>(bad, 32, UINT64_MAX - 4);  // segment_base_offset + size overflows
  EXPECT_ERROR(bad, "segment data [");
  bad = good_;
  put<uint64_t>(bad, 24, uint64_t(1) << 40);  // flatbuffer_size
  EXPECT_ERROR(bad, "flatbuffer [48 + 1099511627776) lies outside the file");
}

TEST_F(PtdBadInput, SegmentOutsideTheData) {
  std::string bad = good_;
  put<uint64_t>(bad, field(bad, segment_table(bad, 1), 0), 1 << 20);  // offset
  EXPECT_ERROR(bad, "segment 1 [1048576, +12) lies outside the segment data of");
  bad = good_;
  put<uint64_t>(bad, field(bad, segment_table(bad, 0), 1), UINT64_MAX);  // size
  EXPECT_ERROR(bad, "segment 0 [0, +18446744073709551615) lies outside");
  bad = good_;
  put<uint32_t>(bad, field(bad, named_data_table(bad, 2), 1), 3);  // segment_index
  EXPECT_ERROR(bad, "tensor 'steps' refers to segment 3, the file has 3");
  bad = good_;
  put<uint64_t>(bad, field(bad, segment_table(bad, 1), 1), 8);  // size below the layout's
  EXPECT_ERROR(bad, "tensor 'linear.bias' (F32, 3 elements) needs 12 bytes, its segment 1 holds 8");
}

TEST_F(PtdBadInput, ScalarTypes) {
  std::string bad = good_;
  put<int8_t>(bad, field(bad, layout_table(bad, 0), 0), 12);
  EXPECT_ERROR(bad, "tensor 'linear.weight' has scalar type 12 (QINT8), which has no safetensors");
  put<int8_t>(bad, field(bad, layout_table(bad, 0), 0), 9);
  EXPECT_ERROR(bad, "has scalar type 9 (unknown)");
  put<int8_t>(bad, field(bad, layout_table(bad, 0), 0), -1);
  EXPECT_ERROR(bad, "has scalar type -1 (unknown)");
}

TEST_F(PtdBadInput, Layouts) {
  std::string bad = good_;
  const uint64_t sizes = deref(bad, field(bad, layout_table(bad, 0), 1)) + 4;
  put<int32_t>(bad, sizes, -3);
  EXPECT_ERROR(bad, "tensor 'linear.weight' has size -3 in dimension 0");
  bad = good_;
  const uint64_t order = deref(bad, field(bad, layout_table(bad, 0), 2)) + 4;
  bad[order + 1] = 0;
  EXPECT_ERROR(bad, "dim_order that is not a permutation of 0..1");
  bad = good_;
  put<uint32_t>(bad, sizes - 4, 17);  // rank
  EXPECT_ERROR(bad, "has rank 17, ExecuTorch allows at most 16");
}

TEST_F(PtdBadInput, MalformedFlatbuffer) {
  std::string bad = good_;
  put<uint32_t>(bad, 0, uint32_t(bad.size()));  // the root outside the flatbuffer
  EXPECT_ERROR(bad, "malformed flatbuffer: root table");
  bad = good_;
  const uint64_t key = deref(bad, field(bad, named_data_table(bad, 0), 0));
  put<uint32_t>(bad, key, 1u << 30);  // the key's length
  EXPECT_ERROR(bad, "malformed flatbuffer: NamedData.key");
  bad = good_;
  bad[key + 4 + 13] = 'x';  // "linear.weight" loses its NUL
  EXPECT_ERROR(bad, "is not NUL-terminated");
  bad = good_;
  put<int32_t>(bad, root(bad), INT32_MAX);  // the vtable before the buffer
  EXPECT_ERROR(bad, "has its vtable before the buffer");
  bad = good_;
  put<uint32_t>(bad, field(bad, root(bad), 0), 1);  // version
  EXPECT_ERROR(bad, "FlatTensor version 1 is newer than this reader supports (0)");
}

TEST_F(PtdBadInput, DuplicateAndMissingKeys) {
  std::string bad = good_;
  // named_data[1] -> named_data[0]'s table: the same key twice.
  const uint64_t vec = deref(bad, field(bad, root(bad), 2));
  put<uint32_t>(bad, vec + 8, uint32_t(named_data_table(bad, 0) - (vec + 8)));
  EXPECT_ERROR(bad, "key 'linear.weight' appears twice");
  const ts::PtdFile ptd(ts::memory_source(good_, "good.ptd"));
  const std::string missing = error_of([&] { ptd.tensor("linear.wieght"); });
  EXPECT_NE(missing.find("ptd: good.ptd: no tensor named 'linear.wieght' (the file has 3 keys)"),
            std::string::npos)
      << missing;
}

TEST_F(PtdBadInput, RandomCorruptionNeverCrashes) {
  // Every outcome is a tensor dict or a c10::Error; ASan (hardening) checks the reads.
  std::mt19937 random(16);
  int opened = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string bad = good_;
    const int flips = 1 + int(random() % 4);
    for (int f = 0; f < flips; ++f) {
      // Mostly the header and flatbuffer, where every byte matters.
      const uint64_t at = random() % (random() % 4 ? 512 : bad.size());
      bad[at % bad.size()] = char(random());
    }
    if (random() % 8 == 0) bad.resize(random() % bad.size());
    try {
      const ts::TensorDict tensors = ts::PtdFile(ts::memory_source(bad, "bad.ptd")).tensors();
      for (const auto& item : tensors) (void)item.value().sum();
      ++opened;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what_without_backtrace()).find("ptd: bad.ptd: "), std::string::npos)
          << e.what_without_backtrace();
    }
  }
  EXPECT_GT(opened, 0);
}
