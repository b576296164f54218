// Alignment: what a zero-copy load copies (only the tensors misaligned for their dtype), what the
// writer guarantees for every file it writes, and realign (serialize.h).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <set>

#include <ATen/ATen.h>
#include <torch_safetensors/safetensors.h>

#include "test_dtypes.h"
#include "test_util.h"

namespace ts = torch::safetensors;
using ts_test::error_of;
using ts_test::random_bytes_as;
using ts_test::same_bits;
using ts_test::TempDir;

namespace {

// A file whose header (padded so that the data section starts at a multiple of 64) puts "c", "d"
// and "e" at odd offsets: a (F32 [2]) 0-8, b (U8 [1]) 8-9, c (F32 [2]) 9-17, d (I16 [1]) 17-19,
// e (I16 [2]) 19-23, f (U8 [1]) 23-24.
std::string misaligned_file(std::string& data) {
  std::string json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"U8","shape":[1],"data_offsets":[8,9]},)"
                     R"("c":{"dtype":"F32","shape":[2],"data_offsets":[9,17]},)"
                     R"("d":{"dtype":"I16","shape":[1],"data_offsets":[17,19]},)"
                     R"("e":{"dtype":"I16","shape":[2],"data_offsets":[19,23]},)"
                     R"("f":{"dtype":"U8","shape":[1],"data_offsets":[23,24]},)"
                     R"("__metadata__":{"format":"pt"}})";
  json.resize((json.size() + 8 + 63) / 64 * 64 - 8, ' ');
  data.clear();
  for (int i = 0; i < 24; ++i) data += char(i * 7 + 1);
  return ts_test::make_safetensors(json, data);
}

}  // namespace

TEST(Alignment, TheLoadRuleIsTheElementSize) {
  EXPECT_TRUE(ts::can_view_at(64, at::kFloat));
  EXPECT_FALSE(ts::can_view_at(9, at::kFloat));
  EXPECT_TRUE(ts::can_view_at(9, at::kByte));
  EXPECT_FALSE(ts::can_view_at(4, at::kDouble));
  EXPECT_FALSE(ts::can_view_at(4, at::kComplexFloat));
  EXPECT_TRUE(ts::can_view_at(2, at::kBFloat16));
}

TEST(Alignment, OnlyTheMisalignedTensorsAreCopied) {
  TempDir dir;
  std::string data;
  const std::string path = dir.file("m.safetensors");
  ts_test::write_file(path, misaligned_file(data));
  const std::set<std::string> copied = {"c", "d", "e"};
  ts::File file(path);
  const uint64_t start = file.header().data_offset();
  ASSERT_EQ(start % 8, 0u);
  // One tensor at a time (tensor()) and all at once (tensors(), the bulk path).
  const ts::TensorDict all = file.tensors();
  for (const std::string name : {"a", "b", "c", "d", "e", "f"}) {
    const ts::TensorInfo& info = file.info(name);
    EXPECT_EQ(ts::can_view_at(start + info.begin, info.scalar_type()), copied.count(name) == 0);
    for (const at::Tensor& t : {file.tensor(name), all[name]}) {
      const std::string mapped = ts_test::mapped_file_of(t.data_ptr());
      if (copied.count(name)) {
        EXPECT_EQ(mapped, "") << name << " should be a copy";
        EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % t.element_size(), 0u) << name;
      } else {
        EXPECT_NE(mapped.find("m.safetensors"), std::string::npos) << name << " should be a view";
      }
      EXPECT_EQ(std::string(static_cast<const char*>(t.data_ptr()), info.nbytes()),
                data.substr(info.begin, info.nbytes()))
          << name;
    }
  }
}

TEST(Alignment, TheWriterAlignsEveryTensorToItsElementSize) {
  // Mixed dtypes of odd sizes, names chosen so that name order alone would misalign them.
  TempDir dir;
  ts::NamedTensors tensors;
  const std::vector<std::pair<c10::ScalarType, int64_t>> kinds = {
      {at::kByte, 3},  {at::kDouble, 3},        {at::kBool, 5}, {at::kFloat, 5},
      {at::kShort, 1}, {at::kBFloat16, 7},      {at::kLong, 1}, {at::kComplexFloat, 1},
      {at::kChar, 1},  {at::kFloat8_e4m3fn, 3}, {at::kInt, 3},  {at::kHalf, 1}};
  for (size_t i = 0; i < kinds.size(); ++i) {
    tensors.emplace_back(std::string(1, char('a' + i)),
                         random_bytes_as(kinds[i].first, {kinds[i].second}));
  }
  for (const std::string& name : {"x", "y"}) {
    tensors.emplace_back(name, random_bytes_as(at::kByte, {int64_t(name[0])}));  // odd-sized pads
  }
  for (const auto& metadata :
       {std::optional<ts::Metadata>(), std::optional<ts::Metadata>(ts::Metadata{{"k", "v"}})}) {
    const std::string path = dir.file("w.safetensors");
    ts::save(tensors, path, ts::SaveMetadata(metadata));
    ts::File file(path);
    EXPECT_EQ(file.header().data_offset() % ts::kReferenceAlignment, 0u);
    EXPECT_EQ(
        ts_test::read_file(path).substr(file.header().data_offset() - 1, 1).find_first_of("} "),
        0u);  // the header ends in '}' or the spaces that pad it
    for (const auto& [name, original] : tensors) {
      const ts::TensorInfo& info = file.info(name);
      EXPECT_EQ((file.header().data_offset() + info.begin) % original.element_size(), 0u) << name;
      const at::Tensor t = file.tensor(name);
      EXPECT_NE(ts_test::mapped_file_of(t.data_ptr()).find("w.safetensors"), std::string::npos)
          << name << " should be a view of the mapping";
      EXPECT_TRUE(same_bits(t, original)) << name;
    }
  }
}

TEST(Alignment, PlanLayoutPadsTheHeaderAndPutsWholeMultiplesFirst) {
  std::vector<ts::TensorInfo> infos;
  auto add = [&](std::string_view name, ts::Dtype dtype, int64_t n) {
    ts::TensorInfo info;
    info.name = name;
    info.dtype = dtype;
    info.shape = {n};
    infos.push_back(info);
  };
  add("big", ts::Dtype::F32, 1024);  // 4096 bytes
  add("odd", ts::Dtype::F32, 3);     // 12
  add("half", ts::Dtype::F16, 64);   // 128
  add("byte", ts::Dtype::U8, 5);     // 5
  add("wide", ts::Dtype::F64, 7);    // 56
  const ts::Layout reference = ts::plan_layout(infos, std::nullopt, "t");
  EXPECT_EQ(ts::plan_layout(infos, std::nullopt, "t", 8).header_bytes, reference.header_bytes);
  EXPECT_EQ(ts::plan_layout(infos, std::nullopt, "t", 1).header_bytes, reference.header_bytes);
  for (uint64_t alignment : {64, 4096}) {
    const ts::Layout layout = ts::plan_layout(infos, ts::Metadata{{"a", "b"}}, "t", alignment);
    const ts::Header& header = layout.header;
    EXPECT_EQ(header.data_offset() % alignment, 0u);
    EXPECT_EQ(layout.header_bytes.size(), header.data_offset());
    // The padding is spaces, and the bytes parse back to the same header.
    const std::string json = layout.header_bytes.substr(8);
    EXPECT_EQ(json.find_last_not_of(' '), json.find_last_of('}'));
    const ts::Header parsed =
        ts::parse_header(json, header.data_offset() + header.data_size(), "t");
    EXPECT_EQ(parsed.data_offset(), header.data_offset());
    for (const ts::TensorInfo& info : header.tensors()) {
      const uint64_t at = header.data_offset() + info.begin;
      EXPECT_TRUE(ts::can_view_at(at, info.scalar_type())) << info.name;
      if (info.nbytes() % alignment == 0) EXPECT_EQ(at % alignment, 0u) << info.name;
      EXPECT_EQ(parsed.find(info.name)->begin, info.begin);
    }
  }
  EXPECT_NE(error_of([&] { ts::plan_layout(infos, std::nullopt, "t", 48); }).find("power of two"),
            std::string::npos);
}

TEST(Realign, AlignsCopiesExactlyAndReplacesInPlace) {
  TempDir dir;
  std::string data;
  const std::string path = dir.file("m.safetensors");
  ts_test::write_file(path, misaligned_file(data));
  const ts::TensorDict before =
      ts::File(path, ts::LoadOptions().with_backend(ts::Backend::kPread)).tensors();
  const std::string out = dir.file("aligned.safetensors");
  const ts::RealignReport report = ts::realign(path, out, 64);
  EXPECT_EQ(report.tensors, 6u);
  EXPECT_EQ(report.bytes, 24u);
  EXPECT_EQ(report.data_offset % 64, 0u);
  ts::File aligned(out);
  EXPECT_EQ(aligned.header().data_offset(), report.data_offset);
  EXPECT_EQ(aligned.metadata(), (std::optional<ts::Metadata>(ts::Metadata{{"format", "pt"}})));
  uint64_t off_boundary = 0;
  for (const auto& item : before) {
    const std::string& name = item.key();
    const at::Tensor& original = item.value();
    const at::Tensor t = aligned.tensor(name);
    EXPECT_NE(ts_test::mapped_file_of(t.data_ptr()).find("aligned.safetensors"), std::string::npos)
        << name;
    EXPECT_TRUE(same_bits(t, original)) << name;
    EXPECT_EQ(aligned.info(name).shape, ts::File(path).info(name).shape);
    off_boundary += (report.data_offset + aligned.info(name).begin) % 64 != 0;
  }
  EXPECT_EQ(off_boundary, report.off_boundary);
  // In place: the same bytes as to another path, and no temporary file left.
  ts::realign(path, path, 64);
  EXPECT_EQ(ts_test::read_file(path), ts_test::read_file(out));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"aligned.safetensors", "m.safetensors"}));
}

TEST(Realign, AFailureLeavesTheDestinationAsItWas) {
  TempDir dir;
  std::string data;
  const std::string path = dir.file("m.safetensors");
  const std::string original = misaligned_file(data);
  ts_test::write_file(path, original);
  // The destination is a directory: everything is written and checked, then the rename fails.
  ASSERT_EQ(::mkdir(dir.file("taken").c_str(), 0755), 0);
  ts_test::write_file(dir.file("taken/keep"), "x");
  EXPECT_NE(error_of([&] { ts::realign(path, dir.file("taken"), 64); }), "");
  EXPECT_EQ(ts_test::read_file(dir.file("taken/keep")), "x");
  // A boundary that is not a power of two is refused before anything is written.
  EXPECT_NE(error_of([&] { ts::realign(path, path, 96); }).find("power of two"), std::string::npos);
  EXPECT_EQ(ts_test::read_file(path), original);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"m.safetensors", "taken"}));
}
