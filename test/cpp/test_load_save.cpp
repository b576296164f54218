// Files end to end: every dtype, zero-copy mapping and its lifetime, the pread backend, slices,
// atomic saves, in-memory bytes, and byte-identical output against the reference implementation.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <ATen/ATen.h>
#include <simdjson.h>
#include <torch/serialize.h>
#include <torch_safetensors/safetensors.h>

#include "test_dtypes.h"
#include "test_util.h"

namespace ts = torch::safetensors;
using ts_test::as_bytes;
using ts_test::error_of;
using ts_test::kTorchDtypes;
using ts_test::random_bytes_as;
using ts_test::same_bits;
using ts_test::TempDir;

namespace {}  // namespace

TEST(RoundTrip, EveryDtypeBothBackends) {
  TempDir dir;
  ts::NamedTensors tensors;
  for (auto dtype : kTorchDtypes) {
    tensors.emplace_back(std::string(c10::toString(dtype)), random_bytes_as(dtype, {3, 5}));
  }
  ts::save(tensors, dir.file("all.safetensors"), ts::Metadata{{"format", "pt"}});
  for (auto backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
    const auto loaded =
        ts::load(dir.file("all.safetensors"), ts::LoadOptions().with_backend(backend));
    ASSERT_EQ(loaded.size(), tensors.size());
    for (const auto& [name, tensor] : tensors) {
      EXPECT_TRUE(same_bits(loaded[name], tensor)) << name;
    }
  }
  ts::File file(dir.file("all.safetensors"));
  EXPECT_EQ(file.metadata()->at("format"), "pt");
  EXPECT_EQ(file.info("Float4_e2m1fn_x2").dtype, ts::Dtype::F4);
  EXPECT_EQ(c10::IntArrayRef(file.info("Float4_e2m1fn_x2").shape).vec(),
            (std::vector<int64_t>{3, 10}));  // values
  EXPECT_EQ(file.info("UInt64").dtype, ts::Dtype::U64);
}

TEST(RoundTrip, EdgeShapes) {
  TempDir dir;
  ts::NamedTensors tensors = {
      {"scalar", at::scalar_tensor(3.5)},
      {"empty", at::empty({0}, at::kFloat)},
      {"empty_middle", at::empty({4, 0, 2}, at::kLong)},
      {"many_dims", at::arange(32, at::kInt).reshape({2, 1, 2, 1, 2, 1, 2, 2})},
      {"large_dim", at::ones({1, 1 << 20}, at::kByte)},
  };
  ts::save(tensors, dir.file("edge.safetensors"));
  const auto loaded = ts::load(dir.file("edge.safetensors"));
  for (const auto& [name, tensor] : tensors) EXPECT_TRUE(same_bits(loaded[name], tensor)) << name;
  EXPECT_EQ(loaded["scalar"].dim(), 0);
  EXPECT_FALSE(ts::File(dir.file("edge.safetensors")).metadata().has_value());
}

TEST(RoundTrip, NonContiguousAndConjugateTensorsAreWrittenInLogicalOrder) {
  TempDir dir;
  at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  at::Tensor other = at::arange(24, at::kFloat).reshape({4, 6});
  at::Tensor complex = at::randn({3}, at::kComplexFloat);
  ts::save(
      ts::NamedTensors{
          {"t", base.t()}, {"strided", other.slice(1, 0, 6, 2)}, {"conj", complex.conj()}},
      dir.file("nc.safetensors"));
  const auto loaded = ts::load(dir.file("nc.safetensors"));
  EXPECT_TRUE(at::equal(loaded["t"], base.t().contiguous()));
  EXPECT_TRUE(at::equal(loaded["strided"], other.slice(1, 0, 6, 2).contiguous()));
  EXPECT_TRUE(at::equal(loaded["conj"], complex.conj().resolve_conj()));
}

TEST(RoundTrip, OrderedDictAndUnorderedMapOverloadsWriteTheSameFile) {
  TempDir dir;
  ts::TensorDict dict;
  dict.insert("b", at::ones({2}));
  dict.insert("a", at::zeros({3}, at::kHalf));
  std::unordered_map<std::string, at::Tensor> map = {{"a", dict["a"]}, {"b", dict["b"]}};
  ts::save(dict, dir.file("dict.safetensors"));
  ts::save(map, dir.file("map.safetensors"));
  EXPECT_EQ(ts_test::read_file(dir.file("dict.safetensors")),
            ts_test::read_file(dir.file("map.safetensors")));
}

TEST(ZeroCopy, TensorsAreViewsOfOneMappingWithTheirOwnStorage) {
  TempDir dir;
  ts::save(ts::NamedTensors{{"a", at::randn({64, 64})}, {"b", at::randn({128})}},
           dir.file("z.safetensors"));
  ts::File file(dir.file("z.safetensors"));
  const auto a = file.tensor("a");
  const auto b = file.tensor("b");
  // One mapping: the two tensors sit at their file offsets relative to each other.
  const auto distance =
      static_cast<const char*>(a.data_ptr()) - static_cast<const char*>(b.data_ptr());
  EXPECT_EQ(distance, int64_t(file.info("a").begin) - int64_t(file.info("b").begin));
  // Each its own storage, exactly its own bytes (saving one never writes the whole file).
  EXPECT_NE(a.storage().data(), b.storage().data());
  EXPECT_EQ(a.storage().nbytes(), a.nbytes());
  EXPECT_EQ(b.storage().nbytes(), b.nbytes());
  // The same bytes again, not a copy.
  EXPECT_EQ(file.tensor("a").data_ptr(), a.data_ptr());
}

TEST(ZeroCopy, WritesAreCopyOnWriteAndNeverReachTheFile) {
  TempDir dir;
  const std::string path = dir.file("cow.safetensors");
  ts::save(ts::NamedTensors{{"x", at::zeros({1024})}}, path);
  const std::string before = ts_test::read_file(path);
  auto x = ts::load(path)["x"];
  x.fill_(7);
  EXPECT_EQ(x.sum().item<float>(), 7 * 1024);
  EXPECT_EQ(ts_test::read_file(path), before);
  EXPECT_EQ(ts::load(path)["x"].sum().item<float>(), 0);
}

TEST(ZeroCopy, TensorsOutliveTheHandleAndTheFile) {
  TempDir dir;
  const std::string path = dir.file("life.safetensors");
  const at::Tensor original = at::randn({256});
  ts::save(ts::NamedTensors{{"x", original}}, path);
  at::Tensor x;
  {
    ts::File file(path);
    x = file.tensor("x");
  }
  ASSERT_EQ(::unlink(path.c_str()), 0);
  EXPECT_TRUE(at::equal(x, original));
}

TEST(ZeroCopy, UnalignedOffsetsAreCopiedIntoAlignedMemory) {
  TempDir dir;
  // Header of 63 bytes (no padding) puts the data section at offset 71: misaligned for F32.
  std::string json = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  json.resize(63, ' ');
  const float values[2] = {1.5f, -2.25f};
  ts_test::write_file(
      dir.file("u.safetensors"),
      ts_test::make_safetensors(json, std::string(reinterpret_cast<const char*>(values), 8)));
  for (auto backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
    const auto x =
        ts::File(dir.file("u.safetensors"), ts::LoadOptions().with_backend(backend)).tensor("x");
    EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data_ptr()) % alignof(float), 0u);
    EXPECT_EQ(x[0].item<float>(), 1.5f);
    EXPECT_EQ(x[1].item<float>(), -2.25f);
  }
}

TEST(Pread, OwnsItsMemorySoTheFileMayBeOverwritten) {
  TempDir dir;
  const std::string path = dir.file("p.safetensors");
  const at::Tensor original = at::randn({128});
  ts::save(ts::NamedTensors{{"x", original}}, path);
  const auto x = ts::load(path, ts::LoadOptions().with_backend(ts::Backend::kPread))["x"];
  ts_test::write_file(path, "garbage");
  EXPECT_TRUE(at::equal(x, original));
}

TEST(Pread, TruncationAfterOpenIsAnErrorNotACrash) {
  TempDir dir;
  const std::string path = dir.file("t.safetensors");
  ts::save(ts::NamedTensors{{"a", at::randn({1024})}, {"b", at::randn({1024})}}, path);
  ts::File file(path, ts::LoadOptions().with_backend(ts::Backend::kPread));
  ASSERT_EQ(::truncate(path.c_str(), 100), 0);
  const std::string msg = error_of([&] { file.tensor("a"); }) + error_of([&] { file.tensor("b"); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { file.check_intact(); }).find("shrank"), std::string::npos);
}

TEST(Slice, ReadsTheSelectedRowsOnBothBackends) {
  TempDir dir;
  const at::Tensor w = at::arange(60, at::kFloat).reshape({10, 6});
  ts::save(ts::NamedTensors{{"w", w}, {"s", at::scalar_tensor(4.0)}}, dir.file("s.safetensors"));
  using at::indexing::Ellipsis;
  using at::indexing::None;
  using at::indexing::Slice;
  for (auto backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
    ts::File file(dir.file("s.safetensors"), ts::LoadOptions().with_backend(backend));
    EXPECT_TRUE(at::equal(file.slice("w", {Slice(2, 5)}), w.index({Slice(2, 5)})));
    EXPECT_TRUE(at::equal(file.slice("w", {Slice(1, 9, 3), Slice(None, None, 2)}),
                          w.index({Slice(1, 9, 3), Slice(None, None, 2)})));
    EXPECT_TRUE(at::equal(file.slice("w", {-1}), w.index({-1})));
    EXPECT_TRUE(at::equal(file.slice("w", {Slice(-3, None)}), w.index({Slice(-3, None)})));
    EXPECT_TRUE(at::equal(file.slice("w", {Slice(8, 100)}), w.index({Slice(8, 100)})));
    EXPECT_EQ(file.slice("w", {Slice(7, 2)}).size(0), 0);
    EXPECT_TRUE(at::equal(file.slice("w", {Ellipsis, 1}), w.index({Ellipsis, 1})));
    EXPECT_TRUE(at::equal(file.slice("s", {}), at::scalar_tensor(4.0)));
    EXPECT_THROW(file.slice("w", {10}), c10::IndexError);
  }
}

TEST(SubByte, F4PacksTheLastDimensionAndF6RoundTripsAsRawBytes) {
  TempDir dir;
  // F4 with an odd last dimension cannot be Float4_e2m1fn_x2-shaped: it comes back 1-D.
  const std::string f4_odd = R"({"x":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}})";
  ts_test::write_file(dir.file("f4.safetensors"),
                      ts_test::make_safetensors(f4_odd, "\x12\x34\x56"));
  const auto x = ts::load(dir.file("f4.safetensors"))["x"];
  EXPECT_EQ(x.scalar_type(), at::kFloat4_e2m1fn_x2);
  EXPECT_EQ(x.sizes(), at::IntArrayRef({3}));

  const std::string f6 = R"({"a":{"dtype":"F6_E2M3","shape":[2,4],"data_offsets":[0,6]},)"
                         R"("b":{"dtype":"F6_E3M2","shape":[4],"data_offsets":[6,9]}})";
  const std::string data = "\x01\x02\x03\x04\x05\x06\x07\x08\x09";
  const std::string original = ts_test::make_safetensors(f6, data);
  ts_test::write_file(dir.file("f6.safetensors"), original);
  ts::File file(dir.file("f6.safetensors"));
  const auto a = file.tensor("a");
  EXPECT_EQ(a.scalar_type(), at::kByte);
  EXPECT_EQ(a.sizes(), at::IntArrayRef({2, 3}));
  EXPECT_EQ(a[1][2].item<uint8_t>(), 6);
  // Raw entries keep dtype and shape: the re-saved file has the same tensors, bit for bit.
  std::vector<ts::SaveEntry> entries;
  for (const auto& name : file.keys()) entries.emplace_back(name, file.raw(name));
  ts::save(entries, dir.file("f6_copy.safetensors"));
  ts::File copy(dir.file("f6_copy.safetensors"));
  EXPECT_EQ(copy.info("a").dtype, ts::Dtype::F6_E2M3);
  EXPECT_EQ(c10::IntArrayRef(copy.info("b").shape).vec(), std::vector<int64_t>{4});
  EXPECT_TRUE(at::equal(copy.raw("a").bytes, file.raw("a").bytes));
  EXPECT_TRUE(at::equal(copy.raw("b").bytes, file.raw("b").bytes));
  // A raw entry whose bytes disagree with its dtype and shape is refused.
  ts::RawTensor bad{ts::Dtype::F6_E2M3, {8}, at::zeros({5}, at::kByte)};
  EXPECT_NE(error_of([&] {
              ts::save(std::vector<ts::SaveEntry>{{"bad", bad}}, dir.file("bad.safetensors"));
            }).find("need 6 bytes"),
            std::string::npos);
}

TEST(Save, RefusesWhatTheFormatCannotHold) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  auto save_error = [&](ts::NamedTensors tensors) {
    return error_of([&] { ts::save(tensors, path); });
  };
  EXPECT_NE(save_error({{"q", at::zeros({2}, at::kComplexDouble)}}).find("'q'"), std::string::npos);
  EXPECT_NE(save_error({{"q", at::zeros({2}, at::kComplexDouble)}}).find("cannot store"),
            std::string::npos);
  EXPECT_NE(save_error({{"__metadata__", at::zeros({2})}}).find("reserved"), std::string::npos);
  EXPECT_NE(save_error({{"x", at::zeros({2})}, {"x", at::ones({2})}}).find("given twice"),
            std::string::npos);
  EXPECT_NE(save_error({{"u", at::Tensor()}}).find("undefined"), std::string::npos);
  EXPECT_NE(save_error({{"sp", at::eye(3).to_sparse()}}).find("dense"), std::string::npos);
  const at::Tensor base = at::zeros({10});
  const std::string shared = save_error({{"whole", base}, {"part", base.slice(0, 2, 4)}});
  EXPECT_NE(shared.find("share memory"), std::string::npos) << shared;
  // Disjoint views of one storage do not overlap: allowed, like the reference.
  EXPECT_EQ(save_error({{"lo", base.slice(0, 0, 5)}, {"hi", base.slice(0, 5, 10)}}), "");
  EXPECT_NE(error_of([&] {
              ts::save(ts::NamedTensors{{"x", at::zeros({1})}}, dir.file("x.safetensors"),
                       ts::Metadata{{"\xff", "v"}});
            }).find("UTF-8"),
            std::string::npos);
}

TEST(Save, IsAtomic) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  ts::save(ts::NamedTensors{{"x", at::ones({4})}}, path);
  const std::string good = ts_test::read_file(path);
  EXPECT_THROW(
      ts::save(ts::NamedTensors{{"x", at::ones({4})}, {"bad", at::zeros({1}, at::kComplexDouble)}},
               path),
      c10::Error);
  EXPECT_EQ(ts_test::read_file(path), good);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});  // no temporary file
  EXPECT_NE(error_of([&] {
              ts::save(ts::NamedTensors{}, dir.file("no/such/dir/f.safetensors"));
            }).find("cannot create temporary file"),
            std::string::npos);
}

TEST(Save, OverTheFileThatLoadedTensorsStillMap) {
  TempDir dir;
  const std::string path = dir.file("o.safetensors");
  const at::Tensor first = at::randn({4096});
  ts::save(ts::NamedTensors{{"x", first}}, path);
  auto loaded = ts::load(path);
  // Save the loaded tensor (a view of the mapping) over its own file, twice, then something else.
  ts::save(loaded, path);
  ts::save(loaded, path);
  EXPECT_TRUE(at::equal(ts::load(path)["x"], first));
  ts::save(ts::NamedTensors{{"x", at::zeros({4096})}}, path);
  EXPECT_TRUE(at::equal(loaded["x"], first));  // old views keep the old contents
  EXPECT_EQ(ts::load(path)["x"].abs().sum().item<float>(), 0);
}

TEST(Bytes, RoundTripAndMatchTheFile) {
  TempDir dir;
  ts::NamedTensors tensors = {{"a", at::randn({3, 3})}, {"b", at::arange(5)}};
  const std::string bytes = ts::to_bytes(tensors, ts::Metadata{{"k", "v"}});
  ts::save(tensors, dir.file("f.safetensors"), ts::Metadata{{"k", "v"}});
  EXPECT_EQ(bytes, ts_test::read_file(dir.file("f.safetensors")));
  const auto back = ts::from_bytes(bytes);
  EXPECT_TRUE(at::equal(back["a"], tensors[0].second));
  EXPECT_TRUE(at::equal(back["b"], tensors[1].second));
  EXPECT_NE(error_of([&] { ts::from_bytes(bytes.substr(0, bytes.size() - 1)); }).find("<bytes>"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ts::from_bytes("1234567"); }).find("too small"), std::string::npos);
}

TEST(Errors, NameTheFileAndTheTensor) {
  TempDir dir;
  const std::string missing = error_of([&] { ts::load(dir.file("nope.safetensors")); });
  EXPECT_NE(missing.find("nope.safetensors"), std::string::npos);
  EXPECT_NE(missing.find("No such file"), std::string::npos);
  ts::save(ts::NamedTensors{{"w", at::ones({1})}}, dir.file("w.safetensors"));
  const std::string unknown = error_of([&] { ts::File(dir.file("w.safetensors")).tensor("v"); });
  EXPECT_NE(unknown.find("no tensor named 'v'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("'w'"), std::string::npos) << unknown;
  EXPECT_NE(error_of([&] { ts::File f(dir.path()); }).find(std::strerror(EISDIR)),
            std::string::npos);
  // load() takes directories (sharded checkpoints): this one holds a file, so it is that file.
  EXPECT_EQ(ts::load(dir.path()).size(), 1u);
}

// The spellings a LibTorch user types first all compile and do the obvious (a braced list, any
// range of pairs, every kind of path, an untyped metadata literal, printing a dtype).
TEST(Spellings, WhatUsersTypeFirstCompilesAndRoundTrips) {
  TempDir dir;
  const at::Tensor w = at::randn({3, 2}), b = at::randn({3});
  ts::save({{"weight", w}, {"bias", b}}, dir.file("braced.safetensors"));
  ts::save(std::map<std::string, at::Tensor>{{"weight", w}, {"bias", b}},
           std::filesystem::path(dir.file("map.safetensors")), {{"format", "pt"}});
  ts::save(std::vector<std::pair<std::string, at::Tensor>>{{"weight", w}, {"bias", b}},
           std::string_view(dir.file("vector.safetensors")));
  EXPECT_EQ(ts_test::read_file(dir.file("braced.safetensors")),
            ts_test::read_file(dir.file("vector.safetensors")));
  const ts::File file(std::filesystem::path(dir.file("map.safetensors")));
  EXPECT_EQ(file.metadata(), (ts::Metadata{{"format", "pt"}}));
  EXPECT_TRUE(torch::equal(file.tensor("weight"), w));
  const ts::Checkpoint checkpoint(std::string_view(dir.file("braced.safetensors")));
  EXPECT_TRUE(torch::equal(checkpoint.tensor("bias"), b));
  EXPECT_EQ(ts::load(std::filesystem::path(dir.file("braced.safetensors"))).size(), 2u);
  // {} is no metadata; Metadata{} an empty __metadata__, as the reference writes for metadata={}.
  ts::save({{"weight", w}}, dir.file("none.safetensors"), {});
  EXPECT_FALSE(ts::File(dir.file("none.safetensors")).metadata());
  ts::save({{"weight", w}}, dir.file("empty.safetensors"), ts::Metadata{});
  EXPECT_EQ(ts::File(dir.file("empty.safetensors")).metadata(), ts::Metadata{});

  const ts::TensorInfo& info = file.info("weight");
  EXPECT_EQ(info.scalar_type(), at::kFloat);
  std::ostringstream printed;
  printed << info.dtype << " " << ts::Dtype::F8_E4M3;
  EXPECT_EQ(printed.str(), "F32 F8_E4M3");
}

// Checkpoint and File are one handle: the same file gives the same answers, the same missing-name
// error (type and text) and the same slices.
TEST(OneHandle, FileAndCheckpointAgreeOnTheSameFile) {
  TempDir dir;
  const at::Tensor w = at::arange(24, at::kFloat).view({4, 6});
  ts::save({{"w", w}}, dir.file("w.safetensors"));
  const ts::File file(dir.file("w.safetensors"));
  const ts::Checkpoint checkpoint(dir.file("w.safetensors"));
  EXPECT_EQ(file.keys(), checkpoint.keys());
  using at::indexing::Slice;
  EXPECT_TRUE(torch::equal(file.slice("w", {Slice(), Slice(1, 3)}),
                           checkpoint.slice("w", {Slice(), Slice(1, 3)})));
  // The message of the missing-name error, which must be a plain c10::Error (not an IndexError).
  auto missing_name_error = [](const ts::Checkpoint& handle, const char* kind) {
    try {
      handle.tensor("x");
    } catch (const c10::IndexError&) {
      ADD_FAILURE() << "an IndexError from " << kind;
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string();
  };
  const std::string from_file = missing_name_error(file, "File");
  EXPECT_EQ(from_file, missing_name_error(checkpoint, "Checkpoint"));
  EXPECT_NE(from_file.find("no tensor named 'x' (1 tensor: 'w')"), std::string::npos) << from_file;
  // A File is a Checkpoint: it goes wherever one is taken.
  const ts::Checkpoint& as_checkpoint = file;
  EXPECT_EQ(as_checkpoint.shard_files(), std::vector<std::string>{"w.safetensors"});
  EXPECT_TRUE(torch::equal(as_checkpoint.file("w").tensor("w"), w));
  EXPECT_EQ(as_checkpoint.file("w").header().size(), 1u);
}

// A torch.save / torch::save archive or a legacy pickle handed to a safetensors call says what
// it is and how to convert it, instead of "header length ... exceeds the limit".
TEST(Errors, TorchArchivesAreRecognised) {
  TempDir dir;
  torch::serialize::OutputArchive archive;
  archive.write("w", at::ones({2}));
  archive.save_to(dir.file("model.pt"));
  ts_test::write_file(dir.file("legacy.pt"),
                      std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8", 12));
  for (const std::string name : {"model.pt", "legacy.pt"}) {
    const std::string message = error_of([&] { ts::load(dir.file(name)); });
    EXPECT_NE(message.find("torch.save"), std::string::npos) << message;
    EXPECT_NE(message.find("not safetensors"), std::string::npos) << message;
    EXPECT_NE(message.find("torch-safetensors convert"), std::string::npos) << message;
    EXPECT_EQ(message.find("exceeds the limit"), std::string::npos) << message;
  }
  EXPECT_NE(error_of([&] { ts::File(dir.file("model.pt")); }).find("a zip file"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ts::File(dir.file("legacy.pt")); }).find("legacy"), std::string::npos);
}

// --- Against the reference implementation ------------------------------------------------------

class Reference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string command =
        std::string(TS_PYTHON) + " " + TS_REFERENCE_SCRIPT + " " + dir_->path() + " > /dev/null";
    status_ = std::system(command.c_str());
  }
  static void TearDownTestSuite() { delete dir_; }
  void SetUp() override {
    if (WIFEXITED(status_) && WEXITSTATUS(status_) == 77) {
      GTEST_SKIP() << "the reference safetensors package is not installed";
    }
    ASSERT_EQ(status_, 0) << "make_reference_files.py failed";
  }
  static std::string file(const std::string& name) { return dir_->file(name); }

  static TempDir* dir_;
  static int status_;
};
TempDir* Reference::dir_ = nullptr;
int Reference::status_ = -1;

TEST_F(Reference, FilesLoadBitExactAndResaveByteIdentical) {
  for (const std::string name : {"all_dtypes", "edge_shapes", "names", "empty", "empty_metadata"}) {
    SCOPED_TRACE(name);
    const std::string path = file(name + ".safetensors");
    simdjson::dom::parser parser;
    simdjson::dom::element expected = parser.load(file(name + ".json"));
    ts::File loaded(path);

    // Values: every tensor's bytes are what the reference was given.
    simdjson::dom::object tensors = expected["tensors"];
    ASSERT_EQ(loaded.size(), tensors.size());
    for (auto field : tensors) {
      const at::Tensor t = loaded.tensor(field.key);
      std::string_view hex = field.value["hex"];
      const at::Tensor bytes = as_bytes(t);
      ASSERT_EQ(uint64_t(bytes.numel()) * 2, hex.size()) << field.key;
      for (int64_t i = 0; i < bytes.numel(); ++i) {
        ASSERT_EQ(bytes[i].item<uint8_t>(),
                  std::stoi(std::string(hex.substr(i * 2, 2)), nullptr, 16))
            << field.key << " byte " << i;
      }
      std::vector<int64_t> shape;
      for (int64_t d : field.value["shape"].get_array()) shape.push_back(d);
      EXPECT_EQ(t.sizes().vec(), shape) << field.key;
    }
    // Bytes: saving the same tensors and metadata writes the reference's file exactly.
    std::vector<ts::SaveEntry> entries;
    for (const auto& key : loaded.keys()) entries.emplace_back(key, loaded.tensor(key));
    const auto& metadata = loaded.metadata();
    EXPECT_EQ(expected["metadata"].is_null(), !metadata.has_value());
    ts::save(entries, dir_->file(name + ".ours"), metadata);
    EXPECT_EQ(ts_test::read_file(dir_->file(name + ".ours")), ts_test::read_file(path));
    EXPECT_EQ(ts::to_bytes(entries, metadata), ts_test::read_file(path));
  }
}

// Names and metadata with control characters: the reference writes them, this library loads them
// (bit-exact) but refuses to write them (docs/dtypes-and-validation.md).
TEST_F(Reference, ControlCharacterNamesLoadButAreNotWritten) {
  const std::string path = file("control_names.safetensors");
  ts::File loaded(path);
  EXPECT_EQ(loaded.keys(),
            (std::vector<std::string>{std::string("a\0b", 3), "\n\t\x01\x1f\x7f\xc2\x85"}));
  EXPECT_EQ(loaded.metadata()->at(std::string("k\0", 2)), "control \x07 chars");
  EXPECT_EQ(loaded.tensor(std::string("a\0b", 3)).numel(), 2);
  std::vector<ts::SaveEntry> entries;
  for (const auto& key : loaded.keys()) entries.emplace_back(key, loaded.tensor(key));
  const std::string out = dir_->file("control_names.ours");
  try {
    ts::save(entries, out, loaded.metadata());
    ADD_FAILURE() << "saved control characters";
  } catch (const c10::ValueError& e) {
    const std::string message = e.what_without_backtrace();
    EXPECT_NE(message.find(out + ": tensor name 'a\\u0000b' holds the control character U+0000"),
              std::string::npos)
        << message;
  }
  EXPECT_FALSE(std::ifstream(out).good());
}

// --- Devices ----------------------------------------------------------------------------------
// CI has no GPU: these skip there and run for real wherever LibTorch sees a CUDA device.

TEST(Device, LoadsStraightToCudaOnBothBackends) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  const at::Tensor w = at::randn({64, 32});
  ts::save(ts::NamedTensors{{"w", w}, {"gpu", w.to(at::kCUDA) * 2}}, dir.file("d.safetensors"));
  for (auto backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
    const auto options =
        ts::LoadOptions().with_backend(backend).with_device(at::Device(at::kCUDA, 0));
    const auto loaded = ts::load(dir.file("d.safetensors"), options);
    EXPECT_TRUE(loaded["w"].is_cuda());
    EXPECT_TRUE(at::equal(loaded["w"].cpu(), w));
    EXPECT_TRUE(at::equal(loaded["gpu"].cpu(), w * 2));
    ts::File file(dir.file("d.safetensors"), options);
    EXPECT_TRUE(at::equal(file.slice("w", {at::indexing::Slice(3, 9)}).cpu(), w.slice(0, 3, 9)));
  }
}

TEST(Device, EveryDtypeLoadsToCudaAndSavesFromCudaBitExact) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  ts::NamedTensors on_cpu, on_cuda;
  for (auto dtype : kTorchDtypes) {
    const at::Tensor t = random_bytes_as(dtype, {4, 6});
    on_cpu.emplace_back(std::string(c10::toString(dtype)), t);
    on_cuda.emplace_back(std::string(c10::toString(dtype)), t.to(at::kCUDA));
  }
  ts::save(on_cpu, dir.file("cpu.safetensors"));
  ts::save(on_cuda, dir.file("cuda.safetensors"));
  EXPECT_EQ(ts_test::read_file(dir.file("cuda.safetensors")),
            ts_test::read_file(dir.file("cpu.safetensors")));
  EXPECT_EQ(ts::to_bytes(on_cuda), ts_test::read_file(dir.file("cpu.safetensors")));
  for (auto backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
    const auto options = ts::LoadOptions().with_backend(backend).with_device(at::kCUDA);
    const auto loaded = ts::load(dir.file("cpu.safetensors"), options);
    for (const auto& [name, tensor] : on_cpu) {
      ASSERT_TRUE(loaded[name].is_cuda()) << name;
      EXPECT_TRUE(same_bits(loaded[name].cpu(), tensor)) << name;
    }
  }
}
