// Sharded checkpoints: Checkpoint over a file, an index or a directory; save_sharded with
// huggingface_hub's split, names and index; load/load(module) through all three forms; and the
// index's bad inputs (each a clear error naming the index, the shard and the tensor).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "test_util.h"

namespace ts = torch::safetensors;
using ts_test::error_of;
using ts_test::read_file;
using ts_test::TempDir;
using ts_test::write_file;

namespace {

// Tensors of 6, 6, 2, 6, 2, 2 KB (F32), in this order: huggingface_hub's documented example.
ts::NamedTensors six_tensors() {
  ts::NamedTensors out;
  const int64_t kb[] = {6, 6, 2, 6, 2, 2};
  for (int i = 0; i < 6; ++i) {
    out.emplace_back("t" + std::to_string(i), torch::arange(kb[i] * 250, torch::kFloat32) + i);
  }
  return out;
}

void expect_equal(const ts::TensorDict& loaded, const ts::NamedTensors& expected) {
  ASSERT_EQ(loaded.size(), expected.size());
  for (const auto& [name, tensor] : expected) {
    ASSERT_TRUE(loaded.contains(name)) << name;
    EXPECT_TRUE(torch::equal(loaded[name], tensor)) << name;
  }
}

std::string index_of(const std::vector<std::pair<std::string, std::string>>& weight_map) {
  std::string json = "{\"metadata\": {\"total_size\": 8}, \"weight_map\": {";
  for (size_t i = 0; i < weight_map.size(); ++i) {
    json += (i ? ", \"" : "\"") + weight_map[i].first + "\": \"" + weight_map[i].second + "\"";
  }
  return json + "}}";
}

// A directory with shards a.safetensors {x, y} and b.safetensors {z}, and an index.
struct TwoShards {
  TempDir dir;
  TwoShards() {
    ts::save(ts::NamedTensors{{"x", torch::ones({2})}, {"y", torch::zeros({3})}},
             dir.file("a.safetensors"));
    ts::save(ts::NamedTensors{{"z", torch::arange(4)}}, dir.file("b.safetensors"));
    write_index({{"x", "a.safetensors"}, {"y", "a.safetensors"}, {"z", "b.safetensors"}});
  }
  void write_index(const std::vector<std::pair<std::string, std::string>>& weight_map) {
    write_file(index(), index_of(weight_map));
  }
  std::string index() const { return dir.file("model.safetensors.index.json"); }
};

}  // namespace

TEST(PlanShards, SplitsLikeHuggingfaceHub) {
  // [6], [6+2], [6+2+2] for a 10 KB limit (not the optimal packing), as documented there.
  const ts::ShardSplit split =
      ts::plan_shards(six_tensors(), ts::ShardOptions().with_max_shard_size(10'000));
  ASSERT_EQ(split.files.size(), 3u);
  EXPECT_EQ(split.files[0].first, "model-00001-of-00003.safetensors");
  EXPECT_EQ(split.files[2].first, "model-00003-of-00003.safetensors");
  EXPECT_EQ(split.files[0].second, (std::vector<std::string>{"t0"}));
  EXPECT_EQ(split.files[1].second, (std::vector<std::string>{"t1", "t2"}));
  EXPECT_EQ(split.files[2].second, (std::vector<std::string>{"t3", "t4", "t5"}));
  EXPECT_EQ(split.total_size, 24'000u);
}

TEST(PlanShards, OversizedTensorGetsItsOwnShardAndOneShardHasNoSuffix) {
  auto split = ts::plan_shards(six_tensors(), ts::ShardOptions().with_max_shard_size(5'000));
  // 6 KB tensors exceed the limit: each alone; the 2 KB ones fill shards up to 5 KB.
  ASSERT_EQ(split.files.size(), 5u);
  EXPECT_EQ(split.files[1].second, (std::vector<std::string>{"t1"}));
  EXPECT_EQ(split.files[2].second, (std::vector<std::string>{"t3"}));
  EXPECT_EQ(split.files[1].first, "model-00002-of-00005.safetensors");
  split = ts::plan_shards(six_tensors());
  ASSERT_EQ(split.files.size(), 1u);
  EXPECT_EQ(split.files[0].first, "model.safetensors");
}

TEST(PlanShards, TensorsOnOneStorageFollowTheFirst) {
  const at::Tensor base = torch::zeros({2000});
  ts::NamedTensors tensors{{"a", base.narrow(0, 0, 1000)},
                           {"big", torch::zeros({2000})},
                           {"b", base.narrow(0, 1000, 1000)}};
  const auto split = ts::plan_shards(tensors, ts::ShardOptions().with_max_shard_size(8'000));
  ASSERT_EQ(split.files.size(), 2u);
  EXPECT_EQ(split.files[0].second, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(split.total_size, 16'000u);  // the shared storage counted once
}

TEST(ParseSize, HuggingfaceHubUnits) {
  EXPECT_EQ(ts::parse_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(ts::parse_size(" 500mb "), 500'000'000u);
  EXPECT_EQ(ts::parse_size("1.5KB"), 1'500u);
  EXPECT_EQ(ts::parse_size("2TB"), 2'000'000'000'000u);
  EXPECT_NE(error_of([] { ts::parse_size("5GiB"); }).find("unit 'IB' not supported"),
            std::string::npos);
  EXPECT_NE(error_of([] { ts::parse_size("fiveGB"); }).find("could not parse"), std::string::npos);
  EXPECT_NE(error_of([] { ts::parse_size("-1GB"); }).find("could not parse"), std::string::npos);
}

TEST(SaveSharded, WritesShardsAndIndexThatLoadBack) {
  TempDir dir;
  const auto tensors = six_tensors();
  const ts::SaveReport report =
      ts::save_sharded(tensors, dir.path(),
                       ts::ShardOptions().with_max_shard_size("10KB").with_metadata({{"k", "v"}}));
  EXPECT_EQ(dir.entries(),
            (std::vector<std::string>{
                "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));
  // The report: the files as written, every byte of them counted once, tensors apart.
  EXPECT_EQ(report.files, dir.entries());
  uint64_t on_disk = 0;
  for (const std::string& name : report.files) on_disk += read_file(dir.file(name)).size();
  EXPECT_EQ(report.tensor_bytes, 24000u);
  EXPECT_EQ(report.bytes_written(), on_disk);
  EXPECT_GT(report.header_bytes, 0u);
  EXPECT_GT(report.seconds, 0.0);
  EXPECT_DOUBLE_EQ(report.gb_per_second(), 24000 / report.seconds / 1e9);
  // Shards carry {"format": "pt"} only; user metadata goes to the index.
  EXPECT_EQ(ts::File(dir.file("model-00002-of-00003.safetensors")).metadata(),
            (ts::Metadata{{"format", "pt"}}));
  const std::string index = read_file(dir.file("model.safetensors.index.json"));
  EXPECT_EQ(index.rfind("{\n  \"metadata\": {\n    \"total_size\": 24000,\n    \"k\": \"v\"\n  },\n"
                        "  \"weight_map\": {\n    \"t0\": \"model-00001-of-00003.safetensors\",\n",
                        0),
            0u)
      << index;

  for (const std::string& path : {dir.path(), dir.file("model.safetensors.index.json")}) {
    const ts::Checkpoint ckpt(path);
    EXPECT_EQ(ckpt.index_path(), dir.file("model.safetensors.index.json"));
    EXPECT_EQ(ckpt.keys(), (std::vector<std::string>{"t0", "t1", "t2", "t3", "t4", "t5"}));
    EXPECT_EQ(ckpt.shard_file("t4"), "model-00003-of-00003.safetensors");
    EXPECT_EQ(ckpt.metadata()->at("total_size"), "24000");
    EXPECT_EQ(ckpt.metadata()->at("k"), "v");
    expect_equal(ckpt.tensors(), tensors);
    expect_equal(ts::load(path), tensors);
    expect_equal(ts::load(path, ts::LoadOptions().with_backend(ts::Backend::kPread)), tensors);
  }
}

TEST(SaveSharded, SingleShardIsOneFileWithTheMetadata) {
  TempDir dir;
  ts::save_sharded(six_tensors(), dir.path(), ts::ShardOptions().with_metadata({{"k", "v"}}));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"model.safetensors"}));
  EXPECT_EQ(ts::File(dir.file("model.safetensors")).metadata(),
            (ts::Metadata{{"format", "pt"}, {"k", "v"}}));
  const ts::Checkpoint ckpt(dir.path());  // a directory with one file and no index
  EXPECT_FALSE(ckpt.index_path());
  expect_equal(ckpt.tensors(), six_tensors());
}

TEST(SaveSharded, ReplacesAnEarlierSaveAndRemovesItsStaleFiles) {
  TempDir dir;
  ts::save_sharded(six_tensors(), dir.path(), ts::ShardOptions().with_max_shard_size("10KB"));
  write_file(dir.file("README.md"), "kept");
  ts::save_sharded(six_tensors(), dir.path());
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"README.md", "model.safetensors"}));
}

TEST(SaveSharded, AFailedSaveChangesNothing) {
  TempDir dir;
  ts::save_sharded(six_tensors(), dir.path(), ts::ShardOptions().with_max_shard_size("10KB"));
  const auto before = dir.entries();
  const std::string shard = read_file(dir.file("model-00001-of-00003.safetensors"));
  // The last shard cannot be written (complex half has no safetensors dtype); the first two were.
  auto tensors = six_tensors();
  tensors.emplace_back("bad", torch::zeros({2}, torch::kComplexHalf));
  const std::string error = error_of([&] {
    ts::save_sharded(tensors, dir.path(), ts::ShardOptions().with_max_shard_size("10KB"));
  });
  EXPECT_NE(error.find("bad"), std::string::npos) << error;
  EXPECT_EQ(dir.entries(), before);  // no temporary files either
  EXPECT_EQ(read_file(dir.file("model-00001-of-00003.safetensors")), shard);
}

TEST(SaveSharded, ModuleWithTiedWeightsLoadsBackTied) {
  // An embedding tied to an output projection, as in language models: two names, one tensor.
  struct Tied : torch::nn::Module {
    Tied() {
      embed = register_module("embed", torch::nn::Embedding(1000, 8));
      head = register_module("head", std::make_shared<torch::nn::Module>());
      head->register_parameter("weight", embed->weight);
      head->register_parameter("bias", torch::randn({1000}));
    }
    torch::nn::Embedding embed{nullptr};
    std::shared_ptr<torch::nn::Module> head;
  };
  TempDir dir;
  Tied saved;
  ts::save_sharded(saved, dir.path(), ts::ShardOptions().with_max_shard_size("20KB"));
  const ts::Checkpoint ckpt(dir.path());
  EXPECT_GT(ckpt.shard_files().size(), 1u);
  EXPECT_FALSE(ckpt.contains("head.weight"));  // stored once, as embed.weight
  EXPECT_EQ(ckpt.metadata()->at("head.weight"), "embed.weight");
  Tied loaded;
  const ts::ModuleLoadReport report = ts::load(loaded, dir.path());
  EXPECT_TRUE(report.ok());
  EXPECT_TRUE(torch::equal(loaded.embed->weight, saved.embed->weight));
  EXPECT_TRUE(torch::equal(loaded.head->named_parameters()["bias"],
                           saved.head->named_parameters()["bias"]));
  EXPECT_EQ(loaded.head->named_parameters()["weight"].data_ptr(), loaded.embed->weight.data_ptr());
}

TEST(Checkpoint, OpensShardsOnFirstUseAndChecksThem) {
  TwoShards two;
  const ts::Checkpoint ckpt(two.dir.path());
  EXPECT_EQ(ckpt.shard_files(), (std::vector<std::string>{"a.safetensors", "b.safetensors"}));
  EXPECT_EQ(ckpt.keys(), (std::vector<std::string>{"x", "y", "z"}));
  EXPECT_TRUE(torch::equal(ckpt.tensor("z"), torch::arange(4)));
  EXPECT_TRUE(torch::equal(ckpt.slice("z", {torch::indexing::Slice(1, 3)}), torch::arange(1, 3)));
  EXPECT_EQ(ckpt.info("y").shape[0], 3);
  EXPECT_EQ(ckpt.raw("x").bytes.numel(), 8);
  EXPECT_NE(error_of([&] { ckpt.tensor("w"); }).find("no tensor named 'w'"), std::string::npos);
  // A shard replaced after open is checked when first used.
  ts::save(ts::NamedTensors{{"z", torch::arange(4)}, {"extra", torch::ones({1})}},
           two.dir.file("b.safetensors"));
  const ts::Checkpoint again(two.index());
  EXPECT_TRUE(torch::equal(again.tensor("x"), torch::ones({2})));  // a.safetensors is fine
  const std::string error = error_of([&] { again.tensor("z"); });
  EXPECT_NE(error.find("model.safetensors.index.json: shard 'b.safetensors' holds tensor 'extra', "
                       "which the index does not list"),
            std::string::npos)
      << error;
}

TEST(Checkpoint, LoadsIntoModulesAndTensorsFromEveryForm) {
  TempDir dir;
  torch::nn::Linear saved(64, 64);
  ts::save_sharded(*saved, dir.path(), ts::ShardOptions().with_max_shard_size("1KB"));
  for (const std::string& path : {dir.path(), dir.file("model.safetensors.index.json")}) {
    torch::nn::Linear loaded(64, 64);
    ts::load(loaded, path);
    EXPECT_TRUE(torch::equal(loaded->weight, saved->weight));
    EXPECT_TRUE(torch::equal(loaded->bias, saved->bias));
  }
  TempDir one;
  ts::save(torch::arange(5), one.file("t.safetensors"));
  at::Tensor t;
  ts::load(t, one.path());  // a directory with one file
  EXPECT_TRUE(torch::equal(t, torch::arange(5)));
}

TEST(CheckpointErrors, DirectoryWithoutAClearCheckpoint) {
  TempDir dir;
  EXPECT_NE(error_of([&] { ts::Checkpoint c(dir.path()); }).find("no checkpoint here"),
            std::string::npos);
  ts::save(torch::arange(2), dir.file("a.safetensors"));
  ts::save(torch::arange(2), dir.file("b.safetensors"));
  EXPECT_NE(error_of([&] {
              ts::Checkpoint c(dir.path());
            }).find("several .safetensors files and no index: a.safetensors, b.safetensors"),
            std::string::npos);
}

TEST(CheckpointErrors, MissingShard) {
  TwoShards two;
  ::unlink(two.dir.file("b.safetensors").c_str());
  try {
    ts::Checkpoint c(two.dir.path());
    FAIL() << "opened";
  } catch (const ts::OSError& e) {
    EXPECT_EQ(e.error_number(), ENOENT);
    const std::string what = e.what_without_backtrace();
    EXPECT_NE(what.find("model.safetensors.index.json: shard 'b.safetensors' of tensor 'z'"),
              std::string::npos)
        << what;
  }
}

TEST(CheckpointErrors, TensorListedInAShardThatDoesNotHoldIt) {
  TwoShards two;
  two.write_index({{"x", "a.safetensors"}, {"y", "b.safetensors"}, {"z", "b.safetensors"}});
  const ts::Checkpoint ckpt(two.dir.path());
  EXPECT_NE(error_of([&] {
              ckpt.tensor("z");
            }).find("the index lists tensor 'y' in shard 'b.safetensors', which does not hold it"),
            std::string::npos);
}

TEST(CheckpointErrors, TensorHeldByTwoShards) {
  TwoShards two;
  ts::save(ts::NamedTensors{{"x", torch::ones({2})}, {"z", torch::arange(4)}},
           two.dir.file("b.safetensors"));
  const ts::Checkpoint ckpt(two.dir.path());
  EXPECT_NE(error_of([&] { ckpt.tensors(); })
                .find("shard 'b.safetensors' holds tensor 'x', which the index assigns to shard "
                      "'a.safetensors'"),
            std::string::npos);
}

TEST(CheckpointErrors, TensorListedTwice) {
  TwoShards two;
  write_file(two.index(), "{\"weight_map\": {\"x\": \"a.safetensors\", \"x\": \"b.safetensors\"}}");
  EXPECT_NE(error_of([&] {
              ts::Checkpoint c(two.dir.path());
            }).find("tensor 'x' is listed twice in weight_map"),
            std::string::npos);
}

TEST(CheckpointErrors, ShardPathsThatEscapeTheDirectory) {
  TwoShards two;
  TempDir outside;
  ts::save(ts::NamedTensors{{"z", torch::arange(4)}}, outside.file("b.safetensors"));
  const std::pair<std::string, std::string> cases[] = {
      {"../b.safetensors", "has a '..' component"},
      {"sub/../../b.safetensors", "has a '..' component"},
      {outside.file("b.safetensors"), "is not a relative path"},
      {"C:\\\\b.safetensors", "is not a relative path"},
      {"b.bin", "is not a '.safetensors' file"},
  };
  for (const auto& [file, expected] : cases) {
    two.write_index({{"x", "a.safetensors"}, {"y", "a.safetensors"}, {"z", file}});
    const std::string error = error_of([&] { ts::Checkpoint c(two.dir.path()); });
    EXPECT_NE(error.find(expected), std::string::npos) << file << ": " << error;
  }
  // A symlink inside the directory that points outside it.
  ASSERT_EQ(
      ::symlink(outside.file("b.safetensors").c_str(), two.dir.file("link.safetensors").c_str()),
      0);
  two.write_index({{"x", "a.safetensors"}, {"y", "a.safetensors"}, {"z", "link.safetensors"}});
  const std::string error = error_of([&] { ts::Checkpoint c(two.dir.path()); });
  EXPECT_NE(error.find("shard 'link.safetensors' resolves outside the index's folder"),
            std::string::npos)
      << error;
  ::unlink(two.dir.file("link.safetensors").c_str());
}

TEST(CheckpointErrors, IndexThatIsNotAnIndex) {
  TwoShards two;
  const std::pair<std::string, std::string> cases[] = {
      {"not json", "index is not valid JSON"},
      {"[1, 2]", "index must be a JSON object, found an array"},
      {"{\"metadata\": {}}", "index has no 'weight_map' object"},
      {"{\"weight_map\": [\"x\"]}", "'weight_map' must be an object, found an array"},
      {"{\"weight_map\": {\"x\": 3}}", "weight_map entry 'x' must be a shard file name"},
      {"{\"weight_map\": {}, \"metadata\": \"m\"}", "'metadata' must be an object"},
      {"{\"weight_map\": {\"x\": \"\"}}", "empty shard file"},
      {std::string("{\"weight_map\": {\"x\": \"a\\u0000.safetensors\"}}"), "NUL character"},
      {"\xff\xfe{}", "not valid UTF-8"},
  };
  for (const auto& [json, expected] : cases) {
    write_file(two.index(), json);
    const std::string error = error_of([&] { ts::Checkpoint c(two.dir.path()); });
    EXPECT_NE(error.find(expected), std::string::npos) << json << ": " << error;
    EXPECT_NE(error.find("model.safetensors.index.json"), std::string::npos) << error;
  }
  write_file(two.index(), std::string(11 << 20, ' '));
  EXPECT_NE(error_of([&] { ts::Checkpoint c(two.dir.path()); }).find("more than the 10485760"),
            std::string::npos);
}

TEST(CheckpointErrors, EmptyIndexIsAnEmptyCheckpoint) {
  TempDir dir;
  write_file(dir.file("model.safetensors.index.json"), "{\"weight_map\": {}}");
  const ts::Checkpoint ckpt(dir.path());
  EXPECT_EQ(ckpt.size(), 0u);
  EXPECT_EQ(ckpt.tensors().size(), 0u);
}

// tools/gen_adversarial.py's index corpus: each index opened and fully loaded gives its error.
TEST(AdversarialIndexCorpus, EveryIndexGivesItsError) {
  const std::string dir = std::string(TS_TEST_DATA_DIR) + "/adversarial_index";
  std::ifstream manifest(dir + "/MANIFEST.tsv");
  std::string line;
  size_t cases = 0;
  while (std::getline(manifest, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t tab = line.find('\t');
    const std::string file = line.substr(0, tab), expected = line.substr(tab + 1);
    ++cases;
    for (const ts::Backend backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
      const std::string error = error_of([&] {
        const ts::Checkpoint ckpt(dir + "/" + file, ts::LoadOptions().with_backend(backend));
        const ts::TensorDict tensors = ckpt.tensors();
        EXPECT_EQ(tensors.size(), ckpt.size());
      });
      if (expected == "OK") {
        EXPECT_EQ(error, "") << file;
      } else {
        EXPECT_NE(error.find(expected), std::string::npos) << file << ": " << error;
        EXPECT_NE(error.find(file), std::string::npos) << "names the index: " << error;
      }
    }
  }
  EXPECT_GE(cases, 25u) << "corpus missing? run tools/gen_adversarial.py";
}

TEST(SaveSharded, RefusesALoneViewOfALargerStorageLikeHuggingfaceHub) {
  TempDir dir;
  const at::Tensor base = torch::zeros({400});
  const std::string error = error_of([&] {
    ts::save_sharded(ts::NamedTensors{{"lo", base.narrow(0, 0, 200)}}, dir.path());
  });
  EXPECT_NE(error.find("none of them covers it all: [lo]"), std::string::npos) << error;
  EXPECT_EQ(dir.entries(), std::vector<std::string>{});
}

// ---- containment when each shard is opened, and the huggingface_hub cache (issue 22)

namespace {

void make_directories(const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    ::mkdir(path.substr(0, slash).c_str(), 0755);
  }
  ::mkdir(path.c_str(), 0755);
}

std::vector<std::string> files_in(const std::string& folder) {
  std::vector<std::string> out;
  for (const std::string& name : ts_test::list_dir(folder)) {
    struct stat st {};
    if (::stat((folder + "/" + name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) out.push_back(name);
  }
  return out;
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string real_path(const std::string& path) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  std::string out = resolved ? resolved : "";
  std::free(resolved);
  return out;
}

TEST(CheckpointErrors, ShardSwappedForAnOutsideSymlinkAfterOpenIsRefused) {
  TwoShards two;
  TempDir outside;
  ts::save(ts::NamedTensors{{"z", torch::arange(4) * 100}}, outside.file("b.safetensors"));
  const ts::Checkpoint ckpt(two.dir.path());  // shards are checked here, opened lazily
  ASSERT_EQ(::unlink(two.dir.file("b.safetensors").c_str()), 0);
  ASSERT_EQ(::symlink(outside.file("b.safetensors").c_str(), two.dir.file("b.safetensors").c_str()),
            0);
  const std::string error = error_of([&] { ckpt.tensor("z"); });
  EXPECT_NE(error.find("shard 'b.safetensors' resolves outside the index's folder (to " +
                       real_path(outside.file("b.safetensors")) + ")"),
            std::string::npos)
      << error;
  EXPECT_TRUE(torch::equal(ckpt.tensor("x"), torch::ones({2})));  // a.safetensors is unchanged
}

// A huggingface_hub cache (file_download.py: `_create_symlink`, `_cache_commit_hash_for_specific
// _revision`): <cache>/models--<org>--<name>/refs/main holds the commit hash,
// blobs/<sha256> the files, snapshots/<commit>/<file> is a relative symlink ../../blobs/<sha256>.
struct HubCache {
  TempDir cache;
  static constexpr const char* kCommit = "0123456789abcdef0123456789abcdef01234567";

  std::string repository(const std::string& name) const {
    return cache.path() + "/models--org--" + name;
  }
  std::string snapshot(const std::string& name) const {
    return repository(name) + "/snapshots/" + kCommit;
  }
  // A 64-hex-digit blob name for `bytes` (huggingface_hub uses their sha256; any name of that
  // form exercises the same paths).
  static std::string blob_name(const std::string& bytes) {
    char out[65];
    const size_t h = std::hash<std::string>()(bytes);
    for (int i = 0; i < 64; ++i) out[i] = "0123456789abcdef"[(h >> ((i % 16) * 4)) & 15];
    out[64] = 0;
    return out;
  }
  // Moves every file of `folder` into repository `name` as blobs and links them from its snapshot.
  void add(const std::string& name, const std::string& folder) const {
    make_directories(repository(name) + "/refs");
    make_directories(repository(name) + "/blobs");
    make_directories(snapshot(name));
    write_file(repository(name) + "/refs/main", kCommit);
    for (const std::string& file : files_in(folder)) {
      const std::string bytes = read_file(folder + "/" + file);
      const std::string blob = blob_name(bytes);
      write_file(repository(name) + "/blobs/" + blob, bytes);
      EXPECT_EQ(::symlink(("../../blobs/" + blob).c_str(), (snapshot(name) + "/" + file).c_str()),
                0);
    }
  }
  void relink(const std::string& name, const std::string& file, const std::string& target) const {
    ::unlink((snapshot(name) + "/" + file).c_str());
    EXPECT_EQ(::symlink(target.c_str(), (snapshot(name) + "/" + file).c_str()), 0);
  }
};

}  // namespace

TEST(HubCache, ShardedAndSingleFileSnapshotsLoad) {
  HubCache hub;
  TempDir sharded, single;
  ts::save_sharded(six_tensors(), sharded.path(), ts::ShardOptions().with_max_shard_size(10000));
  ts::save(six_tensors(), single.file("model.safetensors"));
  hub.add("sharded", sharded.path());
  hub.add("single", single.path());
  for (const std::string& path :
       {hub.snapshot("sharded"), hub.snapshot("sharded") + "/model.safetensors.index.json",
        hub.snapshot("single"), hub.snapshot("single") + "/model.safetensors"}) {
    const ts::Checkpoint ckpt = ts::open_checkpoint(path);
    expect_equal(ckpt.tensors(), six_tensors());
    EXPECT_TRUE(torch::equal(ckpt.tensor("t3"), six_tensors()[3].second)) << path;
  }
  EXPECT_GT(ts::open_checkpoint(hub.snapshot("sharded")).shard_files().size(), 1u);
  // Through a symlinked cache root (~/.cache -> /data/cache): the repository is still itself.
  TempDir elsewhere;
  const std::string root = elsewhere.path() + "/cache";
  ASSERT_EQ(::symlink(hub.cache.path().c_str(), root.c_str()), 0);
  const std::string via_root = root + "/models--org--sharded/snapshots/" + HubCache::kCommit;
  expect_equal(ts::open_checkpoint(via_root).tensors(), six_tensors());
}

TEST(HubCache, EveryEscapeIsRefused) {
  HubCache hub;
  TempDir shards, other, outside;
  ts::save_sharded(six_tensors(), shards.path(), ts::ShardOptions().with_max_shard_size(10000));
  const std::string shard = "model-00002-of-00003.safetensors";
  ASSERT_TRUE(is_file(shards.path() + "/" + shard));
  const std::string bytes = read_file(shards.path() + "/" + shard);
  hub.add("a", shards.path());
  hub.add("b", shards.path());  // another repository holding the same blobs
  write_file(outside.file("x.safetensors"), bytes);
  const std::string blob = HubCache::blob_name(bytes);
  auto refused = [&](const std::string& path, const std::string& expected) {
    const std::string error = error_of([&] { ts::open_checkpoint(path).tensors(); });
    EXPECT_NE(error.find(expected), std::string::npos) << path << ": " << error;
  };
  const std::string outside_message = "shard '" + shard + "' resolves outside the index's folder";
  // A blob of another repository.
  hub.relink("a", shard, "../../../models--org--b/blobs/" + blob);
  refused(hub.snapshot("a"), outside_message);
  // A file outside the cache, directly or through a blob that is itself a symlink.
  hub.relink("a", shard, outside.file("x.safetensors"));
  refused(hub.snapshot("a"), outside_message);
  const std::string blob_path = hub.repository("a") + "/blobs/" + blob;
  ::unlink(blob_path.c_str());
  ASSERT_EQ(::symlink(outside.file("x.safetensors").c_str(), blob_path.c_str()), 0);
  hub.relink("a", shard, "../../blobs/" + blob);
  refused(hub.snapshot("a"), outside_message);
  // A file in a folder below blobs/ (blobs are its direct files).
  make_directories(hub.repository("a") + "/blobs/sub");
  write_file(hub.repository("a") + "/blobs/sub/" + blob, bytes);
  hub.relink("a", shard, "../../blobs/sub/" + blob);
  refused(hub.snapshot("a"), outside_message);
  // blobs/ itself a symlink to an outside folder.
  const std::string repo_c = hub.repository("c");
  hub.add("c", shards.path());
  make_directories(other.path() + "/blobs");
  for (const std::string& file : files_in(repo_c + "/blobs")) {
    write_file(other.path() + "/blobs/" + file, read_file(repo_c + "/blobs/" + file));
  }
  const std::string moved = repo_c + "/blobs-moved";
  ASSERT_EQ(::rename((repo_c + "/blobs").c_str(), moved.c_str()), 0);
  ASSERT_EQ(::symlink((other.path() + "/blobs").c_str(), (repo_c + "/blobs").c_str()), 0);
  refused(hub.snapshot("c"), "resolves outside the index's folder");
  // A snapshot folder that is a symlink to another repository's snapshot.
  const std::string snapshot_d = hub.snapshot("d");
  make_directories(hub.repository("d") + "/snapshots");
  ASSERT_EQ(::symlink(hub.snapshot("b").c_str(), snapshot_d.c_str()), 0);
  refused(snapshot_d, "resolves outside the index's folder");
  // Not a cache layout at all (the folder above is not "snapshots"): the plain rule.
  TempDir plain;
  make_directories(plain.path() + "/blobs");
  make_directories(plain.path() + "/x/y");
  write_file(plain.path() + "/blobs/" + blob, bytes);
  for (const std::string& file : files_in(hub.snapshot("b"))) {
    if (file == shard) {
      ASSERT_EQ(::symlink(("../../blobs/" + blob).c_str(), (plain.path() + "/x/y/" + file).c_str()),
                0);
    } else {
      write_file(plain.path() + "/x/y/" + file, read_file(hub.snapshot("b") + "/" + file));
    }
  }
  refused(plain.path() + "/x/y", outside_message);
  // The untouched repository still loads.
  expect_equal(ts::open_checkpoint(hub.snapshot("b")).tensors(), six_tensors());
}
