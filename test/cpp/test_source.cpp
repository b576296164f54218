// Byte sources and the one read path: every slice, on any dimension and every backend, reads
// exactly the bytes it returns (counted through an instrumented source); files in memory are
// lazy, sliceable and zero-copy like mapped files.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch_safetensors/safetensors.h>

#include "test_util.h"

namespace ts = torch::safetensors;
using at::indexing::Ellipsis;
using at::indexing::None;
using at::indexing::Slice;
using at::indexing::TensorIndex;
using ts_test::TempDir;

namespace {

// One slice to check, and what it is.
struct Case {
  std::string what;
  std::vector<TensorIndex> index;
};

std::vector<Case> slices_on_every_dimension() {
  return {
      {"row", {2}},
      {"rows", {Slice(1, 4)}},
      {"rows with a step", {Slice(0, None, 2)}},
      {"middle dimension", {Slice(), 3}},
      {"middle range", {Slice(), Slice(1, 4)}},
      {"last dimension", {Ellipsis, 1}},
      {"last range with a step", {Ellipsis, Slice(1, None, 3)}},
      {"a block", {Slice(2, 5), Slice(1, 3), Slice(2, 6)}},
      {"negative and new axes", {None, -1, Slice(-2, None), None}},
      {"empty", {Slice(3, 3)}},
      {"everything", {Ellipsis}},
  };
}

uint64_t bytes_of(const at::Tensor& t) { return uint64_t(t.numel()) * t.element_size(); }

// The tensor's bytes in the storage it views (zero-copy results only).
uint64_t storage_bytes(const at::Tensor& t) { return t.storage().nbytes(); }

class SourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weight_ = at::arange(6 * 5 * 8, at::kFloat).reshape({6, 5, 8});
    ts::save(ts::NamedTensors{{"w", weight_}, {"b", at::arange(7, at::kLong)}}, path());
  }
  std::string path() const { return dir_.file("w.safetensors"); }

  TempDir dir_;
  at::Tensor weight_;
};

}  // namespace

TEST_F(SourceTest, SlicesReadExactlyTheirBytesOnEveryReadingSource) {
  const std::string bytes = ts_test::read_file(path());
  // Every source whose bytes are read, not viewed: pread on a file, a mapped file and bytes in
  // memory with views hidden (their gathers go through Source::read), and kPread over memory.
  const std::vector<std::pair<std::string, std::shared_ptr<const ts::Source>>> sources = {
      {"pread", ts::file_source(path(), /*mapped=*/false)},
      {"mapped", ts::file_source(path(), /*mapped=*/true)},
      {"memory", ts::memory_source(bytes)},
  };
  for (const auto& [kind, inner] : sources) {
    auto counting = std::make_shared<ts::CountingSource>(inner);
    const ts::File file(counting);
    for (const Case& c : slices_on_every_dimension()) {
      counting->reset();
      const at::Tensor got = file.slice("w", c.index);
      EXPECT_TRUE(at::equal(got, weight_.index(c.index))) << kind << ": " << c.what;
      EXPECT_EQ(counting->bytes_read(), bytes_of(got)) << kind << ": " << c.what;
    }
    // Fused-weight intervals: the q, k and v rows of a rank, along the first and the last dim.
    counting->reset();
    const at::Tensor qkv = file.slice_intervals("w", 0, {{0, 1}, {2, 3}, {4, 5}});
    EXPECT_TRUE(at::equal(
        qkv, at::cat({weight_.narrow(0, 0, 1), weight_.narrow(0, 2, 1), weight_.narrow(0, 4, 1)})));
    EXPECT_EQ(counting->bytes_read(), bytes_of(qkv)) << kind;
    counting->reset();
    const at::Tensor cols = file.slice_intervals("w", 2, {{6, 8}, {0, 2}});
    EXPECT_TRUE(at::equal(cols, at::cat({weight_.narrow(2, 6, 2), weight_.narrow(2, 0, 2)}, 2)));
    EXPECT_EQ(counting->bytes_read(), bytes_of(cols)) << kind;
    // Whole tensors and bulk loads read each byte once.
    counting->reset();
    EXPECT_TRUE(at::equal(file.tensor("w"), weight_));
    EXPECT_EQ(counting->bytes_read(), bytes_of(weight_));
    counting->reset();
    const ts::TensorDict all = file.tensors();
    EXPECT_EQ(counting->bytes_read(), file.header().data_size());
    EXPECT_TRUE(at::equal(all["b"], at::arange(7, at::kLong)));
  }
}

TEST_F(SourceTest, MmapSlicesAreViewsOfOnlyTheSelectedExtent) {
  auto counting = std::make_shared<ts::CountingSource>(ts::file_source(path(), true),
                                                       /*allow_views=*/true);
  const ts::File file(counting);
  const uint8_t* mapping = counting->data();
  ASSERT_NE(mapping, nullptr);
  for (const Case& c : slices_on_every_dimension()) {
    counting->reset();
    const at::Tensor got = file.slice("w", c.index);
    EXPECT_TRUE(at::equal(got, weight_.index(c.index))) << c.what;
    EXPECT_EQ(counting->bytes_read(), 0u) << c.what;  // nothing copied
    if (got.numel() == 0) continue;
    const auto* first = static_cast<const uint8_t*>(got.data_ptr());
    EXPECT_TRUE(first >= mapping && first < mapping + counting->size()) << c.what;
    // Its own storage, from its first to its last selected element: never the whole file.
    int64_t last = 0;
    for (int64_t d = 0; d < got.dim(); ++d) last += (got.size(d) - 1) * got.stride(d);
    EXPECT_EQ(storage_bytes(got), uint64_t(last + 1) * got.element_size()) << c.what;
    EXPECT_EQ(got.storage_offset(), 0) << c.what;
  }
  // Intervals that are not one stride apart cannot be a view: exactly their bytes are gathered.
  counting->reset();
  const at::Tensor qkv = file.slice_intervals("w", 1, {{0, 1}, {3, 5}});
  EXPECT_TRUE(at::equal(qkv, at::cat({weight_.narrow(1, 0, 1), weight_.narrow(1, 3, 2)}, 1)));
  EXPECT_EQ(counting->bytes_read(), bytes_of(qkv));
}

TEST_F(SourceTest, PackedDtypesSliceByStoredElement) {
  // F4 [4, 8] values load as Float4_e2m1fn_x2 [4, 4]; a column slice reads 1 byte per row.
  const at::Tensor packed = at::randint(0, 256, {4, 4}, at::kByte);
  ts::save(std::vector<ts::SaveEntry>{{"f4",
                                       ts::RawTensor{ts::Dtype::F4, {4, 8}, packed.reshape({-1})}}},
           dir_.file("f4.safetensors"));
  auto counting =
      std::make_shared<ts::CountingSource>(ts::file_source(dir_.file("f4.safetensors"), false));
  const ts::File file(counting);
  counting->reset();
  const at::Tensor column = file.slice("f4", {Slice(), 2});
  EXPECT_EQ(column.scalar_type(), at::kFloat4_e2m1fn_x2);
  EXPECT_TRUE(at::equal(column.view(at::kByte), packed.index({Slice(), 2})));
  EXPECT_EQ(counting->bytes_read(), 4u);
}

TEST_F(SourceTest, FilesInMemoryAreLazyZeroCopyAndSliceable) {
  std::string bytes = ts_test::read_file(path());
  const ts::File file(ts::memory_source(bytes, "weights.bin"));
  EXPECT_EQ(file.path(), "weights.bin");
  EXPECT_EQ(file.keys(), (std::vector<std::string>{"b", "w"}));  // I64 before F32
  const uint8_t* memory = file.source().data();
  ASSERT_NE(memory, nullptr);
  // Views of the source's own copy: writable, and the caller's bytes are not involved.
  at::Tensor w = file.tensor("w");
  EXPECT_TRUE(at::equal(w, weight_));
  EXPECT_EQ(static_cast<const uint8_t*>(w.data_ptr()),
            memory + file.header().data_offset() + file.info("w").begin);
  w.fill_(0);
  EXPECT_TRUE(at::equal(ts::from_bytes(bytes)["w"], weight_));
  bytes.assign(bytes.size(), '\0');  // the source does not depend on the caller's string
  EXPECT_EQ(file.tensor("b").sum().item<int64_t>(), 21);
  EXPECT_TRUE(at::equal(file.slice("w", {Slice(), 1}), at::zeros({6, 8})));
  // Tensors keep the source alive after the handle is gone.
  at::Tensor b;
  {
    const ts::File scoped(ts::memory_source(ts_test::read_file(path())));
    b = scoped.tensor("b");
  }
  EXPECT_TRUE(at::equal(b, at::arange(7, at::kLong)));
  // The pread backend copies instead, from any source.
  const ts::File copies(ts::memory_source(ts_test::read_file(path())),
                        ts::LoadOptions().with_backend(ts::Backend::kPread));
  const at::Tensor copy = copies.tensor("w");
  EXPECT_NE(copy.storage().data(), nullptr);
  const auto* data = static_cast<const uint8_t*>(copy.data_ptr());
  const uint8_t* source_memory = copies.source().data();
  EXPECT_FALSE(data >= source_memory && data < source_memory + copies.source().size());
}

TEST_F(SourceTest, FromBytesCopiesAndValidates) {
  std::string bytes = ts_test::read_file(path());
  const ts::TensorDict loaded = ts::from_bytes(bytes);
  bytes.assign(bytes.size(), '\xff');  // nothing refers to the caller's bytes afterwards
  EXPECT_TRUE(at::equal(loaded["w"], weight_));
  EXPECT_NE(ts_test::error_of([&] {
              ts::from_bytes(std::string_view(bytes).substr(0, 4));
            }).find("<bytes>: file is 4 bytes, too small"),
            std::string::npos);
}

TEST(Source, ACustomSourceServesAFile) {
  // A source of one's own: here, bytes produced on demand by a function.
  class Generated : public ts::Source {
   public:
    explicit Generated(std::string bytes) : bytes_(std::move(bytes)) {}
    const std::string& name() const override { return name_; }
    uint64_t size() const override { return bytes_.size(); }
    void read(void* dst, uint64_t length, uint64_t offset) const override {
      TORCH_CHECK(offset + length <= bytes_.size(), "read past the end");
      std::memcpy(dst, bytes_.data() + offset, length);
    }

   private:
    std::string bytes_;
    std::string name_ = "generated";
  };
  const at::Tensor x = at::randn({3, 4});
  const ts::File file(std::make_shared<Generated>(ts::to_bytes(ts::NamedTensors{{"x", x}})));
  EXPECT_TRUE(at::equal(file.tensor("x"), x));
  EXPECT_TRUE(at::equal(file.slice("x", {Slice(), Slice(1, 3)}), x.index({Slice(), Slice(1, 3)})));
  EXPECT_NE(ts_test::error_of([&] { file.tensor("y"); }).find("generated: no tensor named 'y'"),
            std::string::npos);
}
