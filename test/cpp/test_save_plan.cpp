// Saving from many ranks (distributed/save_plan.h): the plan of the final files is save_sharded's
// layout byte for byte, each chunk's runs put its bytes where the gathered tensor has them,
// replicas are written once, chunks that do not tile a tensor are refused naming it; and the save
// itself, over an in-process exchange between threads, writes the same directory as save_sharded
// and leaves the previous checkpoint untouched when a rank fails.
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "distributed/save_plan.h"
#include "test_util.h"

namespace ts = torch::safetensors;
namespace tsd = torch::safetensors::distributed;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

// A state dict and its split across `world` ranks: dim 0, dim 1, replicated, uneven, 0-d.
struct Case {
  ts::NamedTensors full;
  std::vector<std::vector<ts::LocalShard>> ranks;
};

Case make_case(int world) {
  torch::manual_seed(0);
  Case c;
  c.full.emplace_back("embed.weight", torch::randn({10, 6}));  // Shard(0), uneven for 4
  c.full.emplace_back("proj.weight", torch::randn({4, 12}).to(torch::kBFloat16));  // Shard(1)
  c.full.emplace_back("proj.bias", torch::randn({4}));                             // Replicate
  c.full.emplace_back("steps", torch::tensor(int64_t(7)));                         // 0-d, Replicate
  c.full.emplace_back("mask", torch::rand({8, 3}) > 0.5);                          // Shard(0), bool
  c.full.emplace_back("fp8", torch::randn({6, 8}).to(torch::kFloat8_e4m3fn));      // Shard(1)
  c.full.emplace_back("ids", torch::arange(9, torch::kInt32).reshape({3, 3}));     // Shard(0)
  c.ranks.resize(world);
  for (const auto& [name, t] : c.full) {
    const bool row = name == "embed.weight" || name == "mask" || name == "ids";
    const bool col = name == "proj.weight" || name == "fp8";
    for (int r = 0; r < world; ++r) {
      if (!row && !col) {
        c.ranks[r].emplace_back(name, t.clone());
        continue;
      }
      const int64_t d = row ? 0 : 1;
      const int64_t size = t.size(d), step = (size + world - 1) / world;
      const int64_t begin = std::min(size, r * step), end = std::min(size, begin + step);
      std::vector<int64_t> offsets(t.dim(), 0);
      offsets[d] = begin;
      c.ranks[r].emplace_back(name, t.narrow(d, begin, end - begin).contiguous(), t.sizes().vec(),
                              offsets);
    }
  }
  return c;
}

std::vector<tsd::GlobalTensor> globals(const ts::NamedTensors& full) {
  std::vector<tsd::GlobalTensor> out;
  for (const auto& [name, t] : full) out.push_back({name, t.scalar_type(), t.sizes().vec()});
  return out;
}

std::vector<std::vector<tsd::ChunkLayout>> layouts(const Case& c) {
  std::vector<std::vector<tsd::ChunkLayout>> out(c.ranks.size());
  for (size_t r = 0; r < c.ranks.size(); ++r) {
    for (size_t i = 0; i < c.ranks[r].size(); ++i) {
      const ts::LocalShard& s = c.ranks[r][i];
      std::vector<int64_t> offsets = s.offsets;
      if (offsets.empty()) offsets.assign(s.global_sizes.size(), 0);
      out[r].push_back({i, offsets, s.tensor.sizes().vec()});
    }
  }
  return out;
}

// The files the plan describes, assembled in memory from every rank's writes.
std::map<std::string, std::string> run_plan(const tsd::DistributedSavePlan& plan, const Case& c) {
  std::vector<std::string> files;
  for (const auto& f : plan.files) {
    std::string bytes(f.size, '\xAA');
    bytes.replace(0, f.header.size(), f.header);
    files.push_back(bytes);
  }
  for (size_t r = 0; r < plan.writes.size(); ++r) {
    for (const tsd::ChunkWrite& w : plan.writes[r]) {
      const at::Tensor t = c.ranks[r][w.chunk].tensor.contiguous();
      const char* data = static_cast<const char*>(t.data_ptr());
      uint64_t at = 0;
      for (const ts::ByteRun& run : w.runs) {
        files[w.file].replace(run.offset, run.length, data + at, run.length);
        at += run.length;
      }
      EXPECT_EQ(at, uint64_t(t.nbytes()));
    }
  }
  std::map<std::string, std::string> out;
  for (size_t i = 0; i < files.size(); ++i) out[plan.files[i].name] = files[i];
  if (!plan.index_name.empty()) out[plan.index_name] = plan.index_json;
  return out;
}

std::map<std::string, std::string> read_dir(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& name : ts_test::list_dir(dir)) out[name] = ts_test::read_file(dir + "/" + name);
  return out;
}

// An exchange between threads of one process: a barrier per all_gather.
class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : size_(size), slots_(size) {}
  std::vector<std::string> all_gather(int rank, const std::string& bytes) {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t round = round_;
    slots_[rank] = bytes;
    if (++arrived_ == size_) {
      result_ = slots_;
      arrived_ = 0;
      ++round_;
      done_.notify_all();
    } else {
      done_.wait(lock, [&] { return round_ != round; });
    }
    return result_;
  }

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable done_;
  std::vector<std::string> slots_, result_;
  int arrived_ = 0;
  uint64_t round_ = 0;
};

class ThreadExchange : public tsd::Exchange {
 public:
  ThreadExchange(ThreadGroup& group, int rank, int size) : g_(group), rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::vector<std::string> all_gather(const std::string& bytes, const std::string&) override {
    return g_.all_gather(rank_, bytes);
  }

 private:
  ThreadGroup& g_;
  int rank_, size_;
};

// Runs save_from_ranks on `world` threads; each rank's error ("" if none) and report.
std::vector<std::pair<std::string, ts::SaveReport>> save_threads(
    const std::vector<std::vector<ts::LocalShard>>& ranks, const std::string& dir,
    const ts::ShardOptions& options) {
  const int world = int(ranks.size());
  ThreadGroup group(world);
  std::vector<std::pair<std::string, ts::SaveReport>> out(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      ThreadExchange exchange(group, r, world);
      out[r].first =
          error_of([&] { out[r].second = tsd::save_from_ranks(ranks[r], dir, exchange, options); });
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

}  // namespace

TEST(SavePlan, FilesAreSaveShardedsByteForByte) {
  for (int world : {1, 2, 4}) {
    for (uint64_t max : {uint64_t(5'000'000'000), uint64_t(100)}) {
      SCOPED_TRACE("world " + std::to_string(world) + ", max " + std::to_string(max));
      const Case c = make_case(world);
      ts::ShardOptions options;
      options.max_shard_size = max;
      options.metadata = ts::Metadata{{"note", "x"}};
      const auto plan = tsd::plan_distributed_save(globals(c.full), layouts(c), options, "test");
      TempDir dir;
      ts::save_sharded(c.full, dir.path(), options);
      EXPECT_EQ(run_plan(plan, c), read_dir(dir.path()));
      EXPECT_EQ(plan.files.size() > 1, max == 100);
    }
  }
}

TEST(SavePlan, ReplicasAreWrittenOnceAndSpread) {
  const Case c = make_case(2);
  const auto plan = tsd::plan_distributed_save(globals(c.full), layouts(c), {}, "test");
  uint64_t total = 0;
  std::map<std::string, int> writers;
  for (size_t r = 0; r < plan.writes.size(); ++r) {
    for (const auto& w : plan.writes[r]) {
      total += w.nbytes();
      ++writers[c.ranks[r][w.chunk].name];
    }
  }
  EXPECT_EQ(total, plan.total_size);  // every byte once
  EXPECT_EQ(writers["proj.bias"], 1);
  EXPECT_EQ(writers["steps"], 1);
  EXPECT_EQ(writers["embed.weight"], 2);
  // A Shard(1) chunk is strided: one run per row.
  for (const auto& w : plan.writes[0]) {
    if (c.ranks[0][w.chunk].name == "proj.weight") EXPECT_EQ(w.runs.size(), 4u);
  }
}

TEST(SavePlan, ChunksMustTileTheTensor) {
  const Case c = make_case(2);
  auto chunks = layouts(c);
  // A gap: rank 1's rows of embed.weight dropped.
  auto gap = chunks;
  gap[1].erase(gap[1].begin());
  EXPECT_NE(error_of([&] { tsd::plan_distributed_save(globals(c.full), gap, {}, "out/"); })
                .find("tensor 'embed.weight' of sizes [10, 6]: the ranks' chunks cover 30 of its "
                      "60 elements"),
            std::string::npos);
  // An overlap: rank 1's rows start one earlier.
  auto overlap = chunks;
  overlap[1][0].offsets[0] -= 1;
  EXPECT_NE(error_of([&] { tsd::plan_distributed_save(globals(c.full), overlap, {}, "out/"); })
                .find("tensor 'embed.weight': the chunk at offsets [4, 0] of size [5, 6] of rank 1 "
                      "overlaps"),
            std::string::npos);
  // Outside the tensor.
  auto outside = chunks;
  outside[1][0].offsets[0] = 6;
  EXPECT_NE(error_of([&] {
              tsd::plan_distributed_save(globals(c.full), outside, {}, "out/");
            }).find("lies outside the tensor's sizes [10, 6]"),
            std::string::npos);
  auto dims = chunks;
  dims[0][0].sizes.pop_back();
  EXPECT_NE(error_of([&] {
              tsd::plan_distributed_save(globals(c.full), dims, {}, "out/");
            }).find("tensor 'embed.weight': rank 0's chunk has 1 dimensions"),
            std::string::npos);
}

TEST(SavePlan, SaveFromRanksWritesSaveShardedsDirectory) {
  for (int world : {1, 2, 4}) {
    SCOPED_TRACE("world " + std::to_string(world));
    const Case c = make_case(world);
    ts::ShardOptions options;
    options.max_shard_size = 200;
    TempDir expected, dir;
    ts::save_sharded(c.full, expected.path(), options);
    // A stale shard of an earlier, larger save goes.
    ts_test::write_file(dir.file("model-00009-of-00009.safetensors"), "old");
    const auto results = save_threads(c.ranks, dir.path(), options);
    uint64_t tensor_bytes = 0;
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(results[r].first, "");
      tensor_bytes += results[r].second.tensor_bytes;
      if (r > 0) EXPECT_EQ(results[r].second.header_bytes, 0u);
    }
    EXPECT_GT(results[0].second.header_bytes, 0u);
    EXPECT_EQ(read_dir(dir.path()), read_dir(expected.path()));
    uint64_t total = 0;
    for (const auto& [name, t] : c.full) total += t.nbytes();
    EXPECT_EQ(tensor_bytes, total);
  }
}

TEST(SavePlan, AFailedRankLeavesThePreviousCheckpoint) {
  const Case c = make_case(2);
  TempDir dir;
  ts::ShardOptions options;
  options.max_shard_size = 200;
  ts::save_sharded(c.full, dir.path(), options);
  const auto before = read_dir(dir.path());
  auto ranks = make_case(2).ranks;
  // Rank 1 holds a chunk of the wrong size for its place: the plan refuses on every rank.
  ranks[1][0].offsets[0] = 4;
  auto results = save_threads(ranks, dir.path(), options);
  for (const auto& [error, report] : results)
    EXPECT_NE(error.find("tensor 'embed.weight'"), std::string::npos) << error;
  EXPECT_EQ(read_dir(dir.path()), before);
  // Ranks that disagree on a tensor's dtype: refused on every rank, naming both.
  ranks = make_case(2).ranks;
  ranks[1][1].tensor = ranks[1][1].tensor.to(torch::kFloat32);
  results = save_threads(ranks, dir.path(), options);
  for (const auto& [error, report] : results) {
    EXPECT_NE(error.find("tensor 'proj.weight' is Float [4, 12] on rank 1 but BFloat16 [4, 12] on "
                         "rank 0"),
              std::string::npos)
        << error;
  }
  EXPECT_EQ(read_dir(dir.path()), before);
}

// Without a shared file system: a file per rank, then consolidate().
std::vector<std::string> rank_files(const std::vector<std::vector<ts::LocalShard>>& ranks,
                                    const TempDir& dir) {
  std::vector<std::string> files;
  for (size_t r = 0; r < ranks.size(); ++r) {
    files.push_back(dir.file("rank-" + std::to_string(r) + ".safetensors"));
    ts::save_rank_file(ranks[r], files.back());
  }
  return files;
}

TEST(Consolidate, WritesSaveShardedsDirectory) {
  for (int world : {1, 2, 4}) {
    SCOPED_TRACE("world " + std::to_string(world));
    const Case c = make_case(world);
    ts::ShardOptions options;
    options.max_shard_size = 200;
    options.metadata = ts::Metadata{{"step", "7"}};
    TempDir expected, parts, dir;
    ts::save_sharded(c.full, expected.path(), options);
    const auto files = rank_files(c.ranks, parts);
    for (unsigned threads : {1u, 3u}) {
      const ts::SaveReport report =
          ts::consolidate(files, dir.path(), ts::ShardOptions(options).with_threads(threads));
      EXPECT_EQ(read_dir(dir.path()), read_dir(expected.path()));
      uint64_t total = 0;
      for (const auto& [name, t] : c.full) total += t.nbytes();
      EXPECT_EQ(report.tensor_bytes, total);  // replicas once
      EXPECT_GT(report.header_bytes, 0u);
      EXPECT_GT(report.seconds, 0.0);
    }
    // A rank file is an ordinary safetensors file: each chunk under its tensor's name, with
    // torch's DCP_SHARDING_INFO offsets.
    ts::File first(files.back());
    EXPECT_TRUE(first.contains("embed.weight"));
    EXPECT_NE(first.metadata()->at("DCP_SHARDING_INFO").find("\"saved_offsets\""),
              std::string::npos);
  }
}

TEST(Consolidate, KeepsTheRecordedShapeAndRefusesWhatDoesNotTile) {
  // The trailing rows of a tensor that no rank holds (torch's consolidation would shrink it to
  // max(offset + size)): refused, never inferred.
  Case c = make_case(2);
  TempDir parts, dir;
  auto ranks = c.ranks;
  ranks[1][0].tensor = ranks[1][0].tensor.narrow(0, 0, 3).contiguous();
  auto files = rank_files(ranks, parts);
  EXPECT_NE(error_of([&] { ts::consolidate(files, dir.path()); })
                .find("tensor 'embed.weight' of sizes [10, 6]: the ranks' chunks cover 48 of its "
                      "60 elements"),
            std::string::npos);
  // A missing rank's file: the same.
  files = rank_files(c.ranks, parts);
  EXPECT_NE(error_of([&] { ts::consolidate({files[0]}, dir.path()); }).find("chunks cover"),
            std::string::npos);
  // Files of two different saves.
  Case other = make_case(2);
  other.ranks[1][1].global_sizes = {4, 13};
  other.ranks[1][1].tensor = torch::randn({4, 7}).to(torch::kBFloat16);
  const auto mixed = rank_files(other.ranks, parts);
  EXPECT_NE(error_of([&] {
              ts::consolidate({files[0], mixed[1]}, dir.path());
            }).find("tensor #1 is 'proj.weight' BFloat16 [4, 13], in "),
            std::string::npos);
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Consolidate, RefusesFilesThatAreNotRankFiles) {
  TempDir dir, out;
  const std::string plain = dir.file("plain.safetensors");
  ts::save({{"w", torch::ones({2})}}, plain);
  EXPECT_NE(error_of([&] {
              ts::consolidate({plain}, out.path());
            }).find("not a rank file: its metadata has no 'torch_safetensors.save_layout'"),
            std::string::npos);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"not json", "is not valid JSON"},
      {R"({"tensors": [], "chunk": []})", "must be an object with 'tensors' and 'chunks'"},
      {R"({"tensors": [["w", "F32"]], "chunks": []})",
       "'tensors[]' must be an array of 3 items, found an array of 2 items"},
      {R"({"tensors": [["w", "F32", [4611686018427387904, 4]]], "chunks": [["w", 0, [0, 0]]]})",
       "holds more than 2^63 bytes"},
      {R"({"tensors": [["w", "Q9", [2]]], "chunks": []})", "unknown dtype 'Q9'"},
      {R"({"tensors": [["w", "F32", [-2]]], "chunks": []})", "'tensors[][2]' must be an integer"},
      {R"({"tensors": [["w", "F32", [2]]], "chunks": [["w", 1, [0]]]})",
       "'chunks[][1]' must be an integer in [0, 0]"},
      {R"({"tensors": [["w", "F32", [2]]], "chunks": [["v", 0, [0]]]})",
       "lists a chunk 'v' of 'w' that the file does not hold"},
      {R"({"tensors": [["w", "F64", [2]]], "chunks": [["w", 0, [0]]]})",
       "chunk 'w' of 'w' is F32, the tensor is Double"},
      {R"({"tensors": [["w", "F32", [2]]], "chunks": []})", "holds 1 tensors, its layout lists 0"},
      {R"({"tensors": [["w", "F32", [4]]], "chunks": [["w", 0, [3]]]})",
       "lies outside the tensor's sizes [4]"},
  };
  for (const auto& [layout, expected] : bad) {
    SCOPED_TRACE(layout);
    const std::string path = dir.file("bad.safetensors");
    ts::save({{"w", torch::ones({2})}}, path,
             ts::Metadata{{"torch_safetensors.save_layout", layout}});
    EXPECT_NE(error_of([&] { ts::consolidate({path}, out.path()); }).find(expected),
              std::string::npos);
  }
  EXPECT_TRUE(out.entries().empty());
}

// A rank holding several blocks of one tensor (a _StridedShard DTensor: FSDP2 over tensor
// parallel) gives several shards of one name; together the ranks' blocks tile the tensor.
TEST(SavePlan, SeveralChunksOfOneTensorPerRank) {
  torch::manual_seed(1);
  ts::NamedTensors full;
  full.emplace_back("w", torch::randn({10, 3}));  // rows: 2 blocks per rank, uneven, one empty
  full.emplace_back("b", torch::randn({4}));      // replicated
  // Rank r of 4 holds rows [r, r + 1) of the first half and the r-th quarter of the second
  // (rows 5..9 as 2, 1, 1, 1): as _StridedShard(0, 2) then Shard(0) would, give or take sizes.
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> rows = {
      {{0, 2}, {5, 7}}, {{2, 3}, {7, 8}}, {{3, 4}, {8, 9}}, {{4, 5}, {9, 10}}};
  auto ranks_of = [&](const std::vector<std::vector<std::pair<int64_t, int64_t>>>& blocks) {
    std::vector<std::vector<ts::LocalShard>> ranks(blocks.size());
    for (size_t r = 0; r < blocks.size(); ++r) {
      for (const auto& [begin, end] : blocks[r]) {
        ranks[r].emplace_back("w", full[0].second.narrow(0, begin, end - begin).contiguous(),
                              std::vector<int64_t>{10, 3}, std::vector<int64_t>{begin, 0});
      }
      ranks[r].emplace_back("b", full[1].second.clone());
    }
    return ranks;
  };
  ts::ShardOptions options;
  options.max_shard_size = 100;  // two files: w and b apart
  TempDir expected, dir;
  ts::save_sharded(full, expected.path(), options);
  auto results = save_threads(ranks_of(rows), dir.path(), options);
  uint64_t tensor_bytes = 0;
  for (const auto& [error, report] : results) {
    EXPECT_EQ(error, "");
    tensor_bytes += report.tensor_bytes;
  }
  EXPECT_EQ(tensor_bytes, uint64_t(full[0].second.nbytes() + full[1].second.nbytes()));
  EXPECT_EQ(read_dir(dir.path()), read_dir(expected.path()));
  // An empty block (uneven sizes leave one on some rank) writes nothing and is fine.
  auto with_empty = rows;
  with_empty[3].push_back({10, 10});
  TempDir empty_dir;
  results = save_threads(ranks_of(with_empty), empty_dir.path(), options);
  for (const auto& [error, report] : results) EXPECT_EQ(error, "");
  EXPECT_EQ(read_dir(empty_dir.path()), read_dir(expected.path()));

  // The plan: one write per block, at the block's rows.
  auto layout = [&](const std::vector<std::vector<std::pair<int64_t, int64_t>>>& blocks) {
    std::vector<std::vector<tsd::ChunkLayout>> out(blocks.size());
    for (size_t r = 0; r < blocks.size(); ++r)
      for (const auto& [begin, end] : blocks[r])
        out[r].push_back({0, {begin, 0}, {end - begin, 3}});
    return out;
  };
  const std::vector<tsd::GlobalTensor> w = {{"w", torch::kFloat, {10, 3}}};
  const auto plan = tsd::plan_distributed_save(w, layout(rows), {}, "out/");
  ASSERT_EQ(plan.writes[0].size(), 2u);
  EXPECT_EQ(plan.writes[0][1].chunk, 1u);
  EXPECT_EQ(plan.writes[0][1].runs.at(0).offset - plan.writes[0][0].runs.at(0).offset, 5 * 3 * 4u);
  // Blocks of one rank that overlap, repeat or leave a gap are refused like those of two ranks.
  auto overlap = rows;
  overlap[0][1] = {1, 3};
  EXPECT_NE(error_of([&] { tsd::plan_distributed_save(w, layout(overlap), {}, "out/"); })
                .find("tensor 'w': the chunk at offsets [1, 0] of size [2, 3] of rank 0 overlaps "
                      "the chunk at offsets [0, 0] of size [2, 3] of rank 0"),
            std::string::npos);
  auto twice = rows;
  twice[1].push_back({2, 3});
  EXPECT_NE(error_of([&] {
              tsd::plan_distributed_save(w, layout(twice), {}, "out/");
            }).find("tensor 'w': rank 1 gives the chunk at offsets [2, 0] of size [1, 3] twice"),
            std::string::npos);
  auto gap = rows;
  gap[2].pop_back();
  EXPECT_NE(error_of([&] {
              tsd::plan_distributed_save(w, layout(gap), {}, "out/");
            }).find("tensor 'w' of sizes [10, 3]: the ranks' chunks cover 27 of its 30"),
            std::string::npos);
  // Shards of one name that disagree on the tensor: refused on every rank, naming it.
  auto ranks = ranks_of(rows);
  ranks[2][1].global_sizes = {11, 3};
  TempDir bad;
  results = save_threads(ranks, bad.path(), options);
  for (const auto& [error, report] : results) {
    EXPECT_NE(error.find("tensor 'w': this rank's chunks of it disagree: Float [10, 3] and Float "
                         "[11, 3]"),
              std::string::npos)
        << error;
  }
  // Without a shared file system: each rank file holds its blocks (the later ones under
  // "w#1"...), and consolidate() writes the same checkpoint.
  TempDir parts, consolidated;
  ts::consolidate(rank_files(ranks_of(rows), parts), consolidated.path(), options);
  EXPECT_EQ(read_dir(consolidated.path()), read_dir(expected.path()));
  EXPECT_NE(error_of([&] {
              ts::save_rank_file(ranks[2], parts.path() + "/bad.safetensors");
            }).find("tensor 'w': this rank's chunks of it disagree"),
            std::string::npos);
}

// Tensors made only when written (convert --dequantize): save_sharded's files byte for byte, each
// tensor made once; a tensor made other than declared fails the save and keeps the old files.
TEST(StreamedSave, WritesSaveShardedsFilesMakingEachTensorOnce) {
  torch::manual_seed(3);
  ts::NamedTensors full;
  for (int i = 0; i < 6; ++i) full.emplace_back("t" + std::to_string(i), torch::randn({40, i + 1}));
  full.emplace_back("ids", torch::arange(9, torch::kInt32));
  full.emplace_back("empty", torch::zeros({0, 3}));
  for (const uint64_t max_shard_size : {uint64_t(400), uint64_t(UINT64_MAX)}) {
    ts::ShardOptions options;
    options.max_shard_size = max_shard_size;
    options.metadata = ts::Metadata{{"k", "v"}};
    TempDir expected, dir;
    ts::save_sharded(full, expected.path(), options);
    std::mutex mutex;
    std::map<std::string, int> made;
    std::vector<ts::StreamedTensor> streamed;
    for (const auto& entry : full) {
      const std::string name = entry.first;  // a copy: lambdas cannot capture bindings (C++17)
      const at::Tensor tensor = entry.second;
      streamed.push_back({name, tensor.scalar_type(), tensor.sizes().vec(), [&, name, tensor] {
                            std::lock_guard<std::mutex> lock(mutex);
                            ++made[name];
                            return tensor.clone();
                          }});
    }
    const ts::SaveReport report = ts::save_sharded(streamed, dir.path(), options);
    EXPECT_EQ(read_dir(dir.path()), read_dir(expected.path()));
    EXPECT_EQ(report.files.size(), read_dir(dir.path()).size());
    for (const auto& [name, tensor] : full) EXPECT_EQ(made[name], tensor.numel() ? 1 : 0) << name;

    streamed[2].make = [] { return torch::zeros({40, 2}, torch::kDouble); };
    const auto before = read_dir(dir.path());
    EXPECT_NE(error_of([&] {
                ts::save_sharded(streamed, dir.path(), options);
              }).find("tensor 't2': made as Double [40, 2], declared Float [40, 3]"),
              std::string::npos);
    EXPECT_EQ(read_dir(dir.path()), before);
  }
}
