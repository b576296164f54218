// The torch.save converter's reading side: the restricted unpickler on hand-made pickles (valid
// and hostile), and load_torch_checkpoint on archives written with LibTorch's zip writer. The
// end-to-end tests on files made by Python's torch.save are test/python/test_cli.py.
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <string>

#include "convert/torch_zip.h"
#include "convert/unpickler.h"
#include "storage/io.h"
#include "test_util.h"
#include "torch_safetensors/convert.h"

namespace st = torch::safetensors;
namespace convert = torch::safetensors::convert;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

// Pickle opcodes, spelled out so each test reads as the program it is.
std::string global(const std::string& module, const std::string& name) {
  return "c" + module + "\n" + name + "\n";
}
std::string text(const std::string& s) {
  std::string out = "X";
  const uint32_t n = uint32_t(s.size());
  out.append(reinterpret_cast<const char*>(&n), 4);
  return out + s;
}
std::string int1(uint8_t v) { return std::string("K") + char(v); }
std::string put(uint8_t memo) { return std::string("q") + char(memo); }  // BINPUT
std::string get(uint8_t memo) { return std::string("h") + char(memo); }  // BINGET
const std::string kProto = "\x80\x02";
const std::string kEmptyDict = "}", kMark = "(", kTuple = "t", kReduce = "R", kSetItem = "s",
                  kStop = ".", kFalse = "\x89", kBinPersId = "Q";

// ("storage", <storage type>, key, "cpu", numel) as a persistent id.
std::string storage(const std::string& type, const std::string& key, uint8_t numel) {
  return kMark + text("storage") + global("torch", type) + text(key) + text("cpu") + int1(numel) +
         kTuple + kBinPersId;
}
std::string ints(std::initializer_list<uint8_t> values) {
  std::string out = kMark;
  for (uint8_t v : values) out += int1(v);
  return out + kTuple;
}
std::string hooks() { return global("collections", "OrderedDict") + ")" + kReduce; }

// {name: _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())}
std::string v2_tensor(const std::string& storage_pid, uint8_t offset,
                      std::initializer_list<uint8_t> size, std::initializer_list<uint8_t> stride) {
  return global("torch._utils", "_rebuild_tensor_v2") + kMark + storage_pid + int1(offset) +
         ints(size) + ints(stride) + kFalse + hooks() + kTuple + kReduce;
}
std::string dict_of(const std::string& name, const std::string& value) {
  return kProto + kEmptyDict + text(name) + value + kSetItem + kStop;
}

// Storages of 0, 1, 2, ... bytes; counts the calls.
struct Loader {
  int calls = 0;
  convert::StorageLoader function() {
    return [this](const std::string&, uint64_t nbytes) {
      ++calls;
      at::Tensor bytes = at::arange(int64_t(nbytes), at::kByte);
      return bytes.storage();
    };
  }
};

std::string error_of_unpickle(const std::string& pickle) {
  Loader loader;
  return error_of([&] {
    convert::PickleTree tree = convert::unpickle(pickle, loader.function(), "t.pkl");
    convert::flatten_tensors(tree.root(), "t.pkl");
  });
}

}  // namespace

TEST(Unpickler, RebuildsAV2TensorInsideItsStorage) {
  Loader loader;
  const std::string pickle =
      dict_of("w", v2_tensor(storage("FloatStorage", "0", 8), 1, {2, 3}, {3, 1}));
  convert::PickleTree tree = convert::unpickle(pickle, loader.function(), "t.pkl");
  auto tensors = convert::flatten_tensors(tree.root(), "t.pkl");
  ASSERT_EQ(tensors.size(), 1u);
  EXPECT_EQ(tensors[0].first, "w");
  const at::Tensor& w = tensors[0].second;
  EXPECT_EQ(w.scalar_type(), at::kFloat);
  EXPECT_EQ(w.sizes(), at::IntArrayRef({2, 3}));
  EXPECT_EQ(w.storage_offset(), 1);
  EXPECT_EQ(w.storage().nbytes(), 32u);
  EXPECT_EQ(loader.calls, 1);
}

TEST(Unpickler, RebuildsAV3TensorWithItsDtype) {
  Loader loader;
  const std::string v3 = global("torch._utils", "_rebuild_tensor_v3") + kMark +
                         storage("UntypedStorage", "0", 4) + int1(0) + ints({4}) + ints({1}) +
                         kFalse + hooks() + global("torch", "float8_e4m3fn") + kTuple + kReduce;
  convert::PickleTree tree = convert::unpickle(dict_of("f8", v3), loader.function(), "t.pkl");
  auto tensors = convert::flatten_tensors(tree.root(), "t.pkl");
  ASSERT_EQ(tensors.size(), 1u);
  EXPECT_EQ(tensors[0].second.scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(tensors[0].second.numel(), 4);
}

TEST(Unpickler, NestedDictsFlattenAndSharedTensorsStayShared) {
  Loader loader;
  // {"a": {"b": t}, "c": t} with t memoized: one storage, two names.
  const std::string tensor = v2_tensor(storage("FloatStorage", "0", 2), 0, {2}, {1}) + put(1);
  const std::string pickle = kProto + kEmptyDict + text("a") + kEmptyDict + text("b") + tensor +
                             kSetItem + kSetItem + text("c") + get(1) + kSetItem + kStop;
  convert::PickleTree tree = convert::unpickle(pickle, loader.function(), "t.pkl");
  auto tensors = convert::flatten_tensors(tree.root(), "t.pkl");
  ASSERT_EQ(tensors.size(), 2u);
  EXPECT_EQ(tensors[0].first, "a.b");
  EXPECT_EQ(tensors[1].first, "c");
  EXPECT_TRUE(tensors[0].second.is_same(tensors[1].second));
}

TEST(Unpickler, RefusesEveryOtherGlobalByNameBeforeAnythingRuns) {
  for (const auto& [module, name] :
       std::vector<std::pair<std::string, std::string>>{{"builtins", "eval"},
                                                        {"os", "system"},
                                                        {"posix", "system"},
                                                        {"builtins", "open"},
                                                        {"torch._utils", "_rebuild_qtensor"},
                                                        {"torch", "load"},
                                                        {"numpy", "array"}}) {
    Loader loader;
    // GLOBAL ... then a call with a string argument: the error comes at the GLOBAL.
    const std::string pickle =
        dict_of("w", global(module, name) + kMark + text("touch /tmp/x") + kTuple + kReduce);
    const std::string error = error_of_unpickle(pickle);
    EXPECT_NE(error.find("'" + module + "." + name + "'"), std::string::npos) << error;
    EXPECT_NE(error.find("t.pkl"), std::string::npos) << error;
    // The same with STACK_GLOBAL (protocol 4).
    const std::string stacked =
        dict_of("w", text(module) + text(name) + "\x93" + kMark + text("x") + kTuple + kReduce);
    EXPECT_NE(error_of_unpickle(stacked).find(module + "." + name), std::string::npos);
  }
}

TEST(Unpickler, RefusesTensorsOutsideTheirStorage) {
  // 4 floats at offset 5 of an 8-float storage: reaches element 8.
  EXPECT_NE(error_of_unpickle(dict_of("w", v2_tensor(storage("FloatStorage", "0", 8), 5, {4}, {1})))
                .find("reaches element 8 of a storage of 8"),
            std::string::npos);
  // A stride that walks past the end.
  EXPECT_NE(error_of_unpickle(
                dict_of("w", v2_tensor(storage("FloatStorage", "0", 8), 0, {2, 2}, {200, 1})))
                .find("reaches element"),
            std::string::npos);
  // Sizes and strides of different lengths.
  EXPECT_NE(
      error_of_unpickle(dict_of("w", v2_tensor(storage("FloatStorage", "0", 8), 0, {2, 2}, {1})))
          .find("dims"),
      std::string::npos);
  // An empty tensor may sit at the very end, not past it.
  EXPECT_EQ(
      error_of_unpickle(dict_of("w", v2_tensor(storage("FloatStorage", "0", 8), 8, {0}, {1}))), "");
  EXPECT_NE(error_of_unpickle(dict_of("w", v2_tensor(storage("FloatStorage", "0", 8), 9, {0}, {1})))
                .find("past the storage"),
            std::string::npos);
}

TEST(Unpickler, EveryPrefixOfAValidPickleFailsCleanly) {
  const std::string pickle =
      dict_of("w", v2_tensor(storage("FloatStorage", "0", 8), 1, {2, 3}, {3, 1}));
  for (size_t n = 0; n < pickle.size(); ++n) {
    const std::string error = error_of_unpickle(pickle.substr(0, n));
    EXPECT_NE(error.find("t.pkl"), std::string::npos) << "prefix " << n << ": " << error;
  }
}

TEST(Unpickler, HostileStructuresAreErrorsNotCrashes) {
  // A dict that contains itself: flattening stops at the depth limit.
  EXPECT_NE(error_of_unpickle(kProto + kEmptyDict + put(0) + text("a") + get(0) + kSetItem + kStop)
                .find("nested more than"),
            std::string::npos);
  // A list that contains itself, at the top.
  EXPECT_NE(error_of_unpickle(kProto + "]" + put(0) + get(0) + "a" + kStop).find("expected a dict"),
            std::string::npos);
  // 60000 nested lists: no recursion anywhere (the arena frees them flat).
  std::string deep = kProto + std::string(60000, ']') + std::string(59999, 'a') + kStop;
  EXPECT_NE(error_of_unpickle(deep).find("a list"), std::string::npos);
  // 200000 values on the stack: past the stack's limit.
  EXPECT_NE(error_of_unpickle(kProto + std::string(200000, ']') + kStop)
                .find("the stack is deeper than 65536 values"),
            std::string::npos);
  // Values that are not tensors are named by their dotted path.
  EXPECT_NE(error_of_unpickle(kProto + kEmptyDict + text("m") + kEmptyDict + text("epoch") +
                              int1(3) + kSetItem + kSetItem + kStop)
                .find("'m.epoch' is the int 3"),
            std::string::npos);
  // Opcodes a checkpoint does not use (INST runs a constructor by name).
  EXPECT_NE(error_of_unpickle(kProto + "ios\nsystem\n" + kStop).find("opcode 'i'"),
            std::string::npos);
  EXPECT_NE(error_of_unpickle(kProto + get(5) + kStop).find("never set"), std::string::npos);
  EXPECT_NE(error_of_unpickle(kProto + "\x8a\x09" + std::string(9, '\xff') + kStop)
                .find("does not fit in 64 bits"),
            std::string::npos);
  EXPECT_NE(error_of_unpickle(kProto + "s" + kStop).find("stack is empty"), std::string::npos);
  EXPECT_NE(error_of_unpickle(kProto + "t" + kStop).find("MARK"), std::string::npos);
  // A persistent id that is not a storage, and a storage type used as a callable.
  EXPECT_NE(error_of_unpickle(dict_of("w", text("x") + kBinPersId)).find("persistent id"),
            std::string::npos);
  EXPECT_NE(error_of_unpickle(dict_of("w", global("torch", "FloatStorage") + ")" + kReduce))
                .find("not callable"),
            std::string::npos);
}

namespace {

// A torch.save-shaped archive written with LibTorch's zip writer.
void write_archive(const std::string& path, const std::string& pickle,
                   const std::vector<std::pair<std::string, std::string>>& records) {
  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  writer.writeRecord("byteorder", "little", 6);
  for (const auto& [name, bytes] : records) writer.writeRecord(name, bytes.data(), bytes.size());
  writer.writeEndOfFile();
}

}  // namespace

TEST(TorchCheckpoint, ReadsAnArchiveZeroCopy) {
  TempDir dir;
  const std::string path = dir.file("model.pt");
  std::string values(24, '\0');
  for (int i = 0; i < 6; ++i) {
    const float v = float(i) * 1.5f;
    std::memcpy(&values[i * 4], &v, 4);
  }
  write_archive(path, dict_of("w", v2_tensor(storage("FloatStorage", "0", 6), 0, {2, 3}, {3, 1})),
                {{"data/0", values}});
  const st::NamedTensors tensors = st::load_torch_checkpoint(path);
  ASSERT_EQ(tensors.size(), 1u);
  EXPECT_TRUE(tensors[0].second.equal(at::arange(6, at::kFloat).mul(1.5).view({2, 3})));

  // And converted: the same values in a safetensors file.
  st::convert_torch_checkpoint(path, dir.file("model.safetensors"));
  EXPECT_TRUE(st::load(dir.file("model.safetensors")).begin()->value().equal(tensors[0].second));
}

TEST(TorchCheckpoint, RefusesMissingOrShortRecordsAndLegacyFiles) {
  TempDir dir;
  const std::string pickle =
      dict_of("w", v2_tensor(storage("FloatStorage", "0", 6), 0, {2, 3}, {3, 1}));
  write_archive(dir.file("missing.pt"), pickle, {});
  EXPECT_NE(error_of([&] {
              st::load_torch_checkpoint(dir.file("missing.pt"));
            }).find("has no record 'data/0'"),
            std::string::npos);
  write_archive(dir.file("short.pt"), pickle, {{"data/0", std::string(20, '\0')}});
  EXPECT_NE(error_of([&] {
              st::load_torch_checkpoint(dir.file("short.pt"));
            }).find("needs 24 bytes, its record has 20"),
            std::string::npos);
  std::ofstream(dir.file("legacy.pt"), std::ios::binary) << kProto << "\x8a\x0a";
  EXPECT_NE(error_of([&] { st::load_torch_checkpoint(dir.file("legacy.pt")); }).find("legacy"),
            std::string::npos);
  std::ofstream(dir.file("text.pt"), std::ios::binary) << "hello";
  EXPECT_NE(error_of([&] {
              st::load_torch_checkpoint(dir.file("text.pt"));
            }).find("expected a zip archive"),
            std::string::npos);
}

// ---- issue 22: the adversarial converter corpus (tools/gen_adversarial.py) ----

namespace {

struct ConvertCase {
  std::string file, expected;
};

std::vector<ConvertCase> convert_corpus() {
  std::ifstream in(std::string(TS_TEST_DATA_DIR) + "/adversarial_convert/MANIFEST.tsv");
  std::vector<ConvertCase> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t tab = line.find('\t');
    cases.push_back({line.substr(0, tab), line.substr(tab + 1)});
  }
  return cases;
}

}  // namespace

TEST(ConvertCorpus, EveryCaseLoadsOrFailsWithItsError) {
  const std::vector<ConvertCase> cases = convert_corpus();
  ASSERT_GE(cases.size(), 50u) << "corpus missing? run python3 tools/gen_adversarial.py";
  for (const ConvertCase& c : cases) {
    const std::string path = std::string(TS_TEST_DATA_DIR) + "/adversarial_convert/" + c.file;
    std::string error = error_of([&] { st::load_torch_checkpoint(path); });
    if (c.expected == "OK") {
      EXPECT_EQ(error, "") << c.file;
      continue;
    }
    EXPECT_NE(error.find(c.expected), std::string::npos)
        << c.file << "\n  expected: " << c.expected << "\n  got: " << error;
    // Every error names the file the caller gave, and quotes no record at length.
    EXPECT_NE(error.find("safetensors: " + path + ": "), std::string::npos) << c.file << error;
    EXPECT_LT(error.size(), 1000u) << c.file;
  }
}

TEST(ConvertCorpus, NegatedAndConjugatedViewsAreMaterialized) {
  const std::string dir = std::string(TS_TEST_DATA_DIR) + "/adversarial_convert/";
  const at::Tensor stored = at::tensor({0.5f, -1.5f, 2.25f, 0.0f, -0.0f, 3.0f});
  const st::NamedTensors neg = st::load_torch_checkpoint(dir + "ok_neg_view.pt");
  ASSERT_EQ(neg.size(), 1u);
  // Bit for bit: -0.0 for 0.0 and the other way round.
  EXPECT_TRUE(neg[0].second.view(at::kInt).equal(stored.neg().view({2, 3}).view(at::kInt)));
  const st::NamedTensors conj = st::load_torch_checkpoint(dir + "ok_conj_view.pt");
  const at::Tensor z =
      at::view_as_complex(at::tensor({1.0f, 2.0f, -3.0f, 0.5f, 0.0f, -0.0f}).view({3, 2}));
  EXPECT_FALSE(conj[0].second.is_conj());
  EXPECT_TRUE(at::view_as_real(conj[0].second).equal(at::view_as_real(z.conj().resolve_conj())));
  // No metadata (None) is the stored values, untouched.
  const st::NamedTensors plain = st::load_torch_checkpoint(dir + "ok_metadata_none.pt");
  EXPECT_TRUE(plain[0].second.view(at::kInt).equal(stored.view(at::kInt)));
}

TEST(Unpickler, CheapOpcodesCostBoundedMemory) {
  // 4 MB of NONE: one shared value, so only the stack grows, and it stops at its limit.
  EXPECT_NE(error_of_unpickle(kProto + std::string(4 << 20, 'N') + kStop)
                .find("the stack is deeper than 65536 values"),
            std::string::npos);
  // '}0' repeated: each dict is charged, and the budget (48 bytes per pickle byte + 4 MiB) stops
  // it; the error comes long before the end of the program.
  std::string dicts = kProto;
  for (int i = 0; i < (2 << 20); ++i) dicts += "}0";
  const std::string error = error_of_unpickle(dicts + "}" + kStop);
  EXPECT_NE(error.find("the pickle builds more than the"), std::string::npos) << error;
  // MEMOIZE of one value, over and over: each entry is charged (within the budget, which is
  // 48 bytes per byte), and the memo stops at its limit.
  std::string memo = kProto + "}" + std::string((4 << 20) + 1, '\x94') + kStop;
  EXPECT_NE(error_of_unpickle(memo).find("the memo holds more than 4194304 entries"),
            std::string::npos);
  // A string length past the program, and past the string limit.
  EXPECT_NE(error_of_unpickle(kProto + "X" + std::string("\xff\xff\xff\x7f", 4) + kStop)
                .find("more than the 65536"),
            std::string::npos);
}

TEST(Unpickler, ExactlyOneValueAtStop) {
  const std::string good = dict_of("w", v2_tensor(storage("FloatStorage", "0", 8), 0, {8}, {1}));
  EXPECT_EQ(error_of_unpickle(good), "");
  EXPECT_NE(error_of_unpickle(kProto + "N" + good.substr(2)).find("leaves 1 more value(s)"),
            std::string::npos);
  EXPECT_NE(error_of_unpickle(kProto + kMark + good.substr(2)).find("1 mark(s)"),
            std::string::npos);
  EXPECT_NE(error_of_unpickle(good + "N").find("1 bytes follow STOP"), std::string::npos);
}

TEST(TorchCheckpoint, ErrorsNameTheOutputPathTheCallerGave) {
  TempDir dir;
  const std::string path = dir.file("model.pt");
  write_archive(path, dict_of("w", v2_tensor(storage("FloatStorage", "0", 6), 0, {6}, {1})),
                {{"data/0", std::string(24, '\0')}});
  // A destination in a folder that does not exist: the error names it as given.
  const std::string out = dir.file("missing/out.safetensors");
  const std::string error = error_of([&] { st::convert_torch_checkpoint(path, out); });
  EXPECT_NE(error.find(out), std::string::npos) << error;
  EXPECT_EQ(error.find("<write function>"), std::string::npos) << error;
}

// ---- the legacy (non-zip) format: zero-copy where a storage is aligned, a copy elsewhere ----

TEST(LegacyFormat, StoragesViewTheFileWhereAlignedAndAreCopiedElsewhere) {
  std::ifstream in(std::string(TS_TEST_DATA_DIR) + "/adversarial_convert/legacy_ok_two_storages.pt",
                   std::ios::binary);
  const std::string original((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  ASSERT_GT(original.size(), 23u);
  // FRAME opcodes (9 bytes each, a length hint the unpickler skips) after the system info's PROTO
  // shift the storages by 9 bytes each: one of four shifts puts the F32 storage on 4 bytes.
  int viewed = 0;
  for (int frames = 0; frames < 4; ++frames) {
    std::string bytes = original;
    for (int i = 0; i < frames; ++i) bytes.insert(23, std::string("\x95\0\0\0\0\0\0\0\0", 9));
    auto mapped = st::memory_source(bytes, "legacy.pt");
    const st::NamedTensors tensors = convert::load_torch_archive(mapped, "legacy.pt");
    const st::NamedTensors copied = convert::load_torch_archive(
        st::storage::borrowed_memory_source(bytes, "legacy.pt"), "legacy.pt");
    ASSERT_EQ(tensors.size(), 2u);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const at::Tensor& t = tensors[i].second;
      EXPECT_TRUE(t.view(at::kByte).equal(copied[i].second.view(at::kByte))) << tensors[i].first;
      const auto* p = static_cast<const uint8_t*>(t.data_ptr());
      const bool in_source = p >= mapped->data() && p < mapped->data() + bytes.size();
      // Viewed or copied, never misaligned.
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % t.element_size(), 0u) << tensors[i].first;
      if (tensors[i].first == "w" && in_source) ++viewed;
    }
    EXPECT_TRUE(tensors[1].second.equal(
        torch::tensor({0.5f, -1.5f, 2.25f, 0.0f, -0.0f, 3.0f}).view({2, 3})));
  }
  EXPECT_EQ(viewed, 1);
}
