// Saving from many ranks (save_plan.h): the plan of the final huggingface-style files, and the
// save that runs it. The publishing rank (0) creates every file under a temporary name at its
// final size with its header, and the index; every rank then writes its own chunks' bytes at
// their final offsets; only once every rank has reported success does rank 0 rename the files
// into place (index last) and remove stale files of an earlier save. Any failure, on any rank,
// is reported to every rank, and rank 0 removes the temporary files: the previous checkpoint is
// left as it was.
#include "distributed/save_plan.h"
#include "distributed/wire.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <ATen/core/Tensor.h>

#include "adapters/load_tensor.h"
#include "api/checkpoint_files.h"
#include "check.h"
#include "format/checked_json.h"
#include "format/index.h"
#include "format/json_writer.h"
#include "storage/io.h"
#include "storage/parallel.h"
#include "torch_safetensors/dtype.h"
#include "torch_safetensors/file.h"
#include "torch_safetensors/header.h"
#include "torch_safetensors/serialize.h"

namespace torch::safetensors::distributed {
namespace {

int64_t numel_of(const std::vector<int64_t>& sizes) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

std::string shape_text(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

std::string chunk_text(const ChunkLayout& c) {
  return "at offsets " + shape_text(c.offsets) + " of size " + shape_text(c.sizes);
}

bool overlaps(const ChunkLayout& a, const ChunkLayout& b) {
  for (size_t d = 0; d < a.sizes.size(); ++d) {
    if (a.offsets[d] + a.sizes[d] <= b.offsets[d] || b.offsets[d] + b.sizes[d] <= a.offsets[d])
      return false;
  }
  return true;
}

}  // namespace

uint64_t ChunkWrite::nbytes() const {
  uint64_t n = 0;
  for (const ByteRun& run : runs) n += run.length;
  return n;
}

DistributedSavePlan plan_distributed_save(const std::vector<GlobalTensor>& tensors,
                                          const std::vector<std::vector<ChunkLayout>>& chunks,
                                          const ShardOptions& options, std::string_view source) {
  // The tensors: spec dtypes, header shapes and sizes, as save_sharded sees the gathered ones.
  std::vector<Dtype> dtypes;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<ShardSize> sizes;
  std::map<std::string, size_t> index_of;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const GlobalTensor& g = tensors[t];
    TS_CHECK(index_of.emplace(g.name, t).second, source, "tensor '", g.name, "' is given twice");
    int64_t bytes = int64_t(c10::elementSize(g.dtype));
    for (int64_t s : g.sizes) {
      TS_CHECK(s >= 0, source, "tensor '", g.name, "' has a negative size: ", shape_text(g.sizes));
      TS_CHECK(!__builtin_mul_overflow(bytes, s, &bytes), source, "tensor '", g.name, "' of sizes ",
               shape_text(g.sizes), " holds more than 2^63 bytes");
    }
    const auto dtype = from_scalar_type(g.dtype);
    TS_CHECK(dtype, source, "tensor '", g.name, "': torch dtype ", c10::toString(g.dtype),
             " has no safetensors dtype");
    const auto shape = logical_shape(*dtype, g.sizes);
    TS_CHECK(shape, source, "tensor '", g.name, "': no header shape for ", dtype_name(*dtype),
             " of sizes ", shape_text(g.sizes));
    dtypes.push_back(*dtype);
    shapes.push_back(*shape);
    sizes.push_back({g.name, uint64_t(numel_of(g.sizes)) * c10::elementSize(g.dtype), -1});
  }
  DistributedSavePlan plan;
  const ShardSplit split = plan_shards(sizes, options);
  plan.total_size = split.total_size;

  // The files: the layout save_sharded writes ("format": "pt"; the metadata goes to the single
  // file, else to the index), and where each tensor's data begins in its file.
  Metadata file_metadata{{"format", "pt"}};
  if (!split.is_sharded() && options.metadata) {
    for (const auto& [key, value] : *options.metadata) file_metadata[key] = value;
  }
  std::vector<size_t> file_of(tensors.size());
  std::vector<uint64_t> data_begin(tensors.size());
  for (const auto& [file, names] : split.files) {
    std::vector<TensorInfo> infos;
    for (const auto& name : names) {
      const size_t t = index_of.at(name);
      TensorInfo info;
      info.name = tensors[t].name;
      info.dtype = dtypes[t];
      info.shape = c10::DimVector(shapes[t].begin(), shapes[t].end());
      infos.push_back(std::move(info));
    }
    const Layout layout = plan_layout(infos, file_metadata, file);
    PlannedFile planned;
    planned.name = file;
    planned.header = layout.header_bytes;
    planned.size = layout.header_bytes.size() + layout.header.data_size();
    for (size_t k = 0; k < layout.order.size(); ++k) {
      const size_t t = index_of.at(names[layout.order[k]]);
      file_of[t] = plan.files.size();
      data_begin[t] = layout.header_bytes.size() + layout.header.tensors()[k].begin;
    }
    plan.files.push_back(std::move(planned));
  }
  if (split.is_sharded()) {
    format::CheckpointIndex index;
    index.total_size = split.total_size;
    index.metadata = options.metadata.value_or(Metadata());
    for (const auto& [file, names] : split.files)
      for (const auto& name : names) index.weight_map.emplace_back(name, file);
    plan.index_name = index_file_name(options.filename_pattern);
    plan.index_json = format::index_json(index);
  }

  // The chunks of each tensor: checked, replicas found, each distinct chunk given one writer.
  struct Held {
    size_t rank, chunk;
  };
  std::vector<std::vector<std::vector<Held>>> distinct(tensors.size());  // tensor → chunk → holders
  std::vector<std::vector<const ChunkLayout*>> layouts(tensors.size());
  for (size_t r = 0; r < chunks.size(); ++r) {
    for (size_t c = 0; c < chunks[r].size(); ++c) {
      const ChunkLayout& chunk = chunks[r][c];
      TS_CHECK(chunk.tensor < tensors.size(), source, "rank ", r, " gave a chunk of tensor #",
               chunk.tensor, " of ", tensors.size());
      const GlobalTensor& g = tensors[chunk.tensor];
      TS_CHECK(chunk.offsets.size() == g.sizes.size() && chunk.sizes.size() == g.sizes.size(),
               source, "tensor '", g.name, "': rank ", r, "'s chunk has ", chunk.sizes.size(),
               " dimensions and ", chunk.offsets.size(), " offsets, expected ", g.sizes.size(),
               " (the tensor is ", shape_text(g.sizes), ")");
      for (size_t d = 0; d < g.sizes.size(); ++d) {
        TS_CHECK(chunk.offsets[d] >= 0 && chunk.sizes[d] >= 0 &&
                     chunk.offsets[d] + chunk.sizes[d] <= g.sizes[d],
                 source, "tensor '", g.name, "': rank ", r, "'s chunk ", chunk_text(chunk),
                 " lies outside the tensor's sizes ", shape_text(g.sizes));
      }
      if (numel_of(chunk.sizes) == 0) continue;
      auto& mine = layouts[chunk.tensor];
      size_t k = 0;
      while (k < mine.size() &&
             !(mine[k]->offsets == chunk.offsets && mine[k]->sizes == chunk.sizes))
        ++k;
      if (k < mine.size()) {  // a replica: of another rank's chunk, not a second of its own
        for (const Held& h : distinct[chunk.tensor][k]) {
          TS_CHECK(h.rank != r, source, "tensor '", g.name, "': rank ", r, " gives the chunk ",
                   chunk_text(chunk), " twice (chunks must tile the tensor exactly)");
        }
      }
      if (k == mine.size()) {
        for (size_t o = 0; o < mine.size(); ++o) {
          TS_CHECK(!overlaps(*mine[o], chunk), source, "tensor '", g.name, "': the chunk ",
                   chunk_text(chunk), " of rank ", r, " overlaps the chunk ", chunk_text(*mine[o]),
                   " of rank ", distinct[chunk.tensor][o].front().rank,
                   " (chunks must tile the tensor exactly)");
        }
        mine.push_back(&chunk);
        distinct[chunk.tensor].emplace_back();
      }
      distinct[chunk.tensor][k].push_back({r, c});
    }
  }
  plan.writes.resize(chunks.size());
  std::vector<uint64_t> assigned(chunks.size(), 0);
  for (size_t t = 0; t < tensors.size(); ++t) {
    const GlobalTensor& g = tensors[t];
    int64_t covered = 0;
    for (const ChunkLayout* chunk : layouts[t]) covered += numel_of(chunk->sizes);
    TS_CHECK(covered == numel_of(g.sizes), source, "tensor '", g.name, "' of sizes ",
             shape_text(g.sizes), ": the ranks' chunks cover ", covered, " of its ",
             numel_of(g.sizes), " elements (chunks must tile the tensor exactly, with no gap)");
    const int64_t element = int64_t(c10::elementSize(g.dtype));
    for (size_t k = 0; k < layouts[t].size(); ++k) {
      const ChunkLayout& chunk = *layouts[t][k];
      // The replica's writer: the holder with the fewest bytes so far (the lowest rank on ties).
      Held owner = distinct[t][k].front();
      for (const Held& h : distinct[t][k])
        if (assigned[h.rank] < assigned[owner.rank]) owner = h;
      std::vector<IndexItem> index;
      for (size_t d = 0; d < chunk.sizes.size(); ++d)
        index.emplace_back(IndexRange{chunk.offsets[d], chunk.offsets[d] + chunk.sizes[d], 1});
      const SlicePlan slice = plan_slice(g.sizes, element, index, source, g.name);
      ChunkWrite write;
      write.rank = owner.rank;
      write.chunk = owner.chunk;
      write.file = file_of[t];
      write.runs = slice.runs;
      for (ByteRun& run : write.runs) run.offset += data_begin[t];
      assigned[owner.rank] += write.nbytes();
      plan.writes[owner.rank].push_back(std::move(write));
    }
  }
  return plan;
}

// ---------------------------------------------------------------------------------------------
// The save.

namespace {

using Writer = WireWriter;
using Reader = WireReader;

std::string error_text(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

// Runs `step` here and makes every rank fail if any did, each naming the failed rank.
template <typename F>
void together(Exchange& exchange, const std::string& directory, const std::string& doing,
              F&& step) {
  std::string error;
  try {
    step();
  } catch (...) {
    error = error_text(std::current_exception());
    if (error.empty()) error = "failed";
  }
  const std::vector<std::string> all = exchange.all_gather(error, doing);
  for (size_t r = 0; r < all.size(); ++r) {
    TS_CHECK(all[r].empty(), directory, "the save failed: rank ", r, " failed ", doing, ": ",
             all[r]);
  }
}

std::string random_token() {
  std::random_device device;
  std::mt19937_64 generator((uint64_t(device()) << 32) ^ device());
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(generator()));
  return text;
}

// A temporary name beside the final one that no checkpoint rule picks up (hidden, not ending in
// ".safetensors" or ".json").
std::string temp_name(const std::string& name, const std::string& token) {
  return "." + name + ".tmp-" + token;
}

}  // namespace

namespace {

using Clock = std::chrono::steady_clock;

// One chunk's write and where its bytes come from.
struct PendingWrite {
  const ChunkWrite* write;
  std::string name;                      // the tensor's, for messages
  std::function<at::Tensor()> bytes_of;  // the chunk (any strides, any device)
};

// Writes `writes` into the temporary files of `plan` (pwrite at their final offsets), with up to
// `threads` threads; the first error is rethrown after every thread has stopped.
uint64_t write_chunks(const std::vector<std::string>& temps,
                      const std::vector<PendingWrite>& writes, const std::string& directory,
                      bool durable, unsigned threads) {
  // One job per file, its chunks in order: buffered writes into one file serialize on its inode
  // (as fastsafetensors' saver notes), so the threads pay across files.
  std::map<size_t, std::vector<const PendingWrite*>> by_file;
  for (const PendingWrite& w : writes) by_file[w.write->file].push_back(&w);
  std::vector<std::pair<size_t, std::vector<const PendingWrite*>>> jobs(by_file.begin(),
                                                                        by_file.end());
  std::atomic<uint64_t> written{0};
  storage::run_parallel(jobs.size(), storage::io_threads(threads, jobs.size()), [&](size_t j) {
    storage::PositionalFile file = storage::PositionalFile::open(temps[jobs[j].first]);
    for (const PendingWrite* pending : jobs[j].second) {
      const ChunkWrite& write = *pending->write;
      const at::Tensor bytes = pending->bytes_of().cpu().contiguous();
      TS_CHECK(uint64_t(bytes.nbytes()) == write.nbytes(), directory, "tensor '", pending->name,
               "': the chunk holds ", bytes.nbytes(), " bytes, the plan ", write.nbytes());
      const char* data = static_cast<const char*>(bytes.data_ptr());
      uint64_t at = 0;
      for (const ByteRun& run : write.runs) {
        file.write_at(data + at, run.length, run.offset);
        at += run.length;
      }
      written += write.nbytes();
    }
    if (durable) file.sync();
    file.close();
  });
  return written;
}

// Runs `plan` in this process, rank `exchange.rank()` of the save: rank 0 creates the files
// under temporary names (`token`) and publishes them; this process writes `mine`. After each step
// the ranks agree, so a failure anywhere fails every rank, and rank 0 removes the temporary files.
// The report's time runs from `start`, when the caller began planning.
SaveReport run_plan(const DistributedSavePlan& plan, const std::string& directory,
                    Exchange& exchange, const std::string& token, const ShardOptions& options,
                    const std::vector<PendingWrite>& mine, Clock::time_point start) {
  const int rank = exchange.rank();
  SaveReport report;
  for (const PlannedFile& file : plan.files) report.files.push_back(file.name);
  if (!plan.index_name.empty()) report.files.push_back(plan.index_name);
  std::vector<std::string> temps;
  for (const std::string& name : report.files)
    temps.push_back(storage::join_path(directory, temp_name(name, token)));
  auto remove_temps = [&] {
    if (rank != 0) return;
    for (const std::string& temp : temps) storage::remove_file(temp);
  };

  try {
    // 2. Rank 0 creates the files, pre-sized, with their headers; and the index.
    together(exchange, directory, "creating the files", [&] {
      if (rank != 0) return;
      storage::make_directories(directory);
      for (size_t f = 0; f < plan.files.size(); ++f) {
        storage::PositionalFile file =
            storage::PositionalFile::create(temps[f], plan.files[f].size);
        file.write_at(plan.files[f].header.data(), plan.files[f].header.size(), 0);
        report.header_bytes += plan.files[f].header.size();
        file.close();
      }
      if (!plan.index_name.empty()) {
        storage::PositionalFile file =
            storage::PositionalFile::create(temps.back(), plan.index_json.size());
        file.write_at(plan.index_json.data(), plan.index_json.size(), 0);
        report.header_bytes += plan.index_json.size();
        if (options.durable) file.sync();
        file.close();
      }
    });
    // 3. Every rank writes its chunks' bytes where they go.
    together(exchange, directory, "writing its chunks", [&] {
      report.tensor_bytes = write_chunks(temps, mine, directory, options.durable, options.threads);
    });
    // 4. Rank 0 publishes: shards first, the index last, then stale files go.
    together(exchange, directory, "publishing the files", [&] {
      if (rank != 0) return;
      if (options.durable) {
        for (size_t f = 0; f < plan.files.size(); ++f) {
          storage::PositionalFile file = storage::PositionalFile::open(temps[f]);
          file.sync();
          file.close();
        }
      }
      for (size_t i = 0; i < temps.size(); ++i)
        storage::rename_file(temps[i], storage::join_path(directory, report.files[i]));
      if (options.durable) storage::sync_directory(directory);
      if (options.remove_stale)
        remove_stale_files(directory, options.filename_pattern, report.files, options.durable);
    });
  } catch (...) {
    remove_temps();
    throw;
  }
  report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return report;
}

// The tensors a rank's shards are chunks of, in the order of their first shard: several shards
// of one name are several chunks of one tensor (a _StridedShard DTensor holds several blocks of
// it), and must agree on its dtype and global sizes.
struct ShardTensors {
  std::vector<size_t> first_shard;      // per tensor, its first shard
  std::vector<size_t> tensor_of_shard;  // per shard, its tensor
};

c10::ScalarType dtype_of(const LocalShard& shard) {
  return shard.tensor.defined() ? shard.tensor.scalar_type() : shard.dtype;
}

ShardTensors group_by_tensor(const std::vector<LocalShard>& shards, const std::string& where) {
  ShardTensors out;
  out.tensor_of_shard.resize(shards.size());
  std::map<std::string, size_t> tensor_of_name;
  for (size_t i = 0; i < shards.size(); ++i) {
    const LocalShard& s = shards[i];
    const auto [found, added] = tensor_of_name.emplace(s.name, out.first_shard.size());
    out.tensor_of_shard[i] = found->second;
    if (added) {
      out.first_shard.push_back(i);
      continue;
    }
    const LocalShard& first = shards[out.first_shard[found->second]];
    TS_CHECK(dtype_of(s) == dtype_of(first) && s.global_sizes == first.global_sizes, where,
             "tensor '", s.name,
             "': this rank's chunks of it disagree: ", c10::toString(dtype_of(first)), " ",
             shape_text(first.global_sizes), " and ", c10::toString(dtype_of(s)), " ",
             shape_text(s.global_sizes));
  }
  return out;
}

}  // namespace

SaveReport save_from_ranks(const std::vector<LocalShard>& shards, const std::string& directory,
                           Exchange& exchange, const ShardOptions& options) {
  const auto start = Clock::now();
  const int rank = exchange.rank();
  const int world = exchange.size();
  // 1. Every rank's tensors and chunks, and rank 0's token for the temporary names.
  Writer w;
  std::string local_error;
  std::vector<size_t> shard_of_chunk;
  try {
    const ShardTensors grouped = group_by_tensor(shards, directory);
    w.i64(int64_t(grouped.first_shard.size()));
    for (size_t i : grouped.first_shard) {
      w.str(shards[i].name);
      w.i64(int64_t(dtype_of(shards[i])));
      w.sizes(shards[i].global_sizes);
    }
    Writer chunk_bytes;
    int64_t count = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      const LocalShard& s = shards[i];
      if (!s.tensor.defined()) continue;
      std::vector<int64_t> offsets = s.offsets;
      if (offsets.empty()) offsets.assign(s.global_sizes.size(), 0);
      chunk_bytes.i64(int64_t(grouped.tensor_of_shard[i]));
      chunk_bytes.sizes(offsets);
      chunk_bytes.sizes(s.tensor.sizes().vec());
      shard_of_chunk.push_back(i);
      ++count;
    }
    w.i64(count);
    const std::string chunk_text = chunk_bytes.take();
    w.str(chunk_text);
    w.str(rank == 0 ? random_token() : "");
  } catch (...) {
    local_error = error_text(std::current_exception());
  }
  Writer message;
  message.str(local_error);
  message.str(local_error.empty() ? w.take() : "");
  const std::vector<std::string> all =
      exchange.all_gather(message.take(), "exchanging the state dict's layout");
  std::vector<GlobalTensor> tensors;
  std::vector<std::vector<ChunkLayout>> chunks(world);
  std::string token;
  for (int r = 0; r < world; ++r) {
    Reader outer(all[r]);
    const std::string error = outer.str();
    TS_CHECK(error.empty(), directory, "the save failed: rank ", r,
             " failed describing its state dict: ", error);
    const std::string body = outer.str();
    Reader in(body);
    const int64_t n = in.i64();
    TORCH_CHECK(n >= 0 && n < (int64_t(1) << 40), "safetensors: a rank sent a bad save layout");
    std::vector<GlobalTensor> theirs(n);
    for (auto& g : theirs) {
      g.name = in.str();
      g.dtype = c10::ScalarType(in.i64());
      g.sizes = in.sizes();
    }
    if (r == 0) {
      tensors = std::move(theirs);
    } else {
      TS_CHECK(theirs.size() == tensors.size(), directory, "rank ", r, " saves ", theirs.size(),
               " tensors, rank 0 saves ", tensors.size(),
               " (every rank lists every tensor of the state dict, in the same order)");
      for (size_t t = 0; t < tensors.size(); ++t) {
        TS_CHECK(theirs[t].name == tensors[t].name, directory, "rank ", r, "'s tensor #", t,
                 " is '", theirs[t].name, "', rank 0's is '", tensors[t].name,
                 "' (every rank lists the tensors in the same order)");
        TS_CHECK(theirs[t].dtype == tensors[t].dtype && theirs[t].sizes == tensors[t].sizes,
                 directory, "tensor '", tensors[t].name, "' is ", c10::toString(theirs[t].dtype),
                 " ", shape_text(theirs[t].sizes), " on rank ", r, " but ",
                 c10::toString(tensors[t].dtype), " ", shape_text(tensors[t].sizes), " on rank 0");
      }
    }
    const int64_t count = in.i64();
    const std::string chunk_text = in.str();
    Reader chunk_in(chunk_text);
    for (int64_t c = 0; c < count; ++c) {
      ChunkLayout chunk;
      const int64_t t = chunk_in.i64();
      TORCH_CHECK(t >= 0 && size_t(t) < tensors.size(), "safetensors: a rank sent a bad layout");
      chunk.tensor = size_t(t);
      chunk.offsets = chunk_in.sizes();
      chunk.sizes = chunk_in.sizes();
      chunks[r].push_back(std::move(chunk));
    }
    const std::string their_token = in.str();
    if (r == 0) token = their_token;
  }
  // The same plan on every rank (or the same error).
  const DistributedSavePlan plan = plan_distributed_save(tensors, chunks, options, directory);
  std::vector<PendingWrite> mine;
  for (const ChunkWrite& write : plan.writes[rank]) {
    const LocalShard& shard = shards[shard_of_chunk[write.chunk]];
    mine.push_back({&write, shard.name, [&shard] { return shard.tensor; }});
  }
  return run_plan(plan, directory, exchange, token, options, mine, start);
}

// ---------------------------------------------------------------------------------------------
// Without a shared file system: a file per rank, then a consolidation.

namespace {

constexpr const char* kLayoutKey = "torch_safetensors.save_layout";
constexpr const char* kShardingInfoKey = "DCP_SHARDING_INFO";  // torch's, for its readers

void append_sizes(std::string& out, const std::vector<int64_t>& sizes) {
  out += '[';
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(sizes[i]);
  }
  out += ']';
}

// The key a rank file stores its `k`-th chunk of tensor `name` under.
std::string chunk_key(const std::string& name, size_t k) {
  return k == 0 ? name : name + "#" + std::to_string(k);
}

std::vector<int64_t> checked_sizes(simdjson::dom::element element, const std::string& where,
                                   std::string_view key) {
  simdjson::dom::array array;
  TS_CHECK(!element.get(array), where, "'", key, "' must be an array of integers, found a ",
           format::json_kind(element));
  std::vector<int64_t> out;
  for (simdjson::dom::element value : array)
    out.push_back(format::checked_integer(value, where, key, 0, INT64_MAX));
  return out;
}

simdjson::dom::array checked_array(simdjson::dom::element element, const std::string& where,
                                   std::string_view key, size_t length) {
  simdjson::dom::array array;
  const bool is_array = !element.get(array);
  TS_CHECK(is_array && (length == 0 || array.size() == length), where, "'", key,
           "' must be an array", length ? " of " + std::to_string(length) + " items" : "",
           ", found ",
           is_array ? "an array of " + std::to_string(array.size()) + " items"
                    : "a " + std::string(format::json_kind(element)));
  return array;
}

// A rank file's layout: the whole state dict and the chunks it holds (key, tensor, offsets).
struct RankFileLayout {
  std::vector<GlobalTensor> tensors;
  std::vector<std::pair<std::string, ChunkLayout>> chunks;
};

RankFileLayout parse_layout(const File& file) {
  const std::string& where = file.path();
  const auto& metadata = file.metadata();
  const auto found = metadata ? metadata->find(kLayoutKey) : Metadata::const_iterator();
  TS_CHECK(metadata && found != metadata->end(), where, "not a rank file: its metadata has no '",
           kLayoutKey, "' (rank files are written by save_rank_file)");
  simdjson::dom::parser parser;
  const simdjson::padded_string padded(found->second);
  simdjson::dom::element root;
  const auto error = parser.parse(padded).get(root);
  TS_CHECK(!error, where, "'", kLayoutKey, "' is not valid JSON: ", simdjson::error_message(error));
  simdjson::dom::element tensors_value, chunks_value;
  TS_CHECK(!root["tensors"].get(tensors_value) && !root["chunks"].get(chunks_value), where, "'",
           kLayoutKey, "' must be an object with 'tensors' and 'chunks'");
  RankFileLayout layout;
  for (simdjson::dom::element item : checked_array(tensors_value, where, "tensors", 0)) {
    simdjson::dom::array entry = checked_array(item, where, "tensors[]", 3);
    GlobalTensor g;
    g.name = format::checked_string(entry.at(0), where, "tensors[][0]");
    const std::string dtype_text = format::checked_string(entry.at(1), where, "tensors[][1]");
    const auto dtype = parse_dtype(dtype_text);
    TS_CHECK(dtype, where, "tensor '", g.name, "': unknown dtype '", dtype_text, "'");
    g.dtype = to_scalar_type(*dtype);
    g.sizes = checked_sizes(entry.at(2), where, "tensors[][2]");
    layout.tensors.push_back(std::move(g));
  }
  for (simdjson::dom::element item : checked_array(chunks_value, where, "chunks", 0)) {
    simdjson::dom::array entry = checked_array(item, where, "chunks[]", 3);
    ChunkLayout chunk;
    std::string key = format::checked_string(entry.at(0), where, "chunks[][0]");
    chunk.tensor = size_t(format::checked_integer(entry.at(1), where, "chunks[][1]", 0,
                                                  int64_t(layout.tensors.size()) - 1));
    chunk.offsets = checked_sizes(entry.at(2), where, "chunks[][2]");
    layout.chunks.emplace_back(std::move(key), std::move(chunk));
  }
  return layout;
}

}  // namespace

}  // namespace torch::safetensors::distributed

namespace torch::safetensors {

void save_rank_file(const std::vector<LocalShard>& shards, const std::string& path, bool durable) {
  const distributed::ShardTensors grouped = distributed::group_by_tensor(shards, path);
  std::string tensors = "[", chunks = "[", sharding = "{";
  for (size_t t = 0; t < grouped.first_shard.size(); ++t) {
    const LocalShard& s = shards[grouped.first_shard[t]];
    const auto dtype = from_scalar_type(distributed::dtype_of(s));
    TS_CHECK(dtype, path, "tensor '", s.name, "': torch dtype ",
             c10::toString(distributed::dtype_of(s)), " has no safetensors dtype");
    if (t) tensors += ',';
    tensors += '[';
    format::append_json_string(tensors, s.name);
    tensors += ',';
    format::append_json_string(tensors, dtype_name(*dtype));
    tensors += ',';
    distributed::append_sizes(tensors, s.global_sizes);
    tensors += ']';
  }
  std::vector<SaveEntry> entries;
  std::map<std::string, size_t> chunks_of, written_chunks_of;
  for (const LocalShard& s : shards) written_chunks_of[s.name] += s.tensor.defined();
  for (size_t i = 0; i < shards.size(); ++i) {
    const LocalShard& s = shards[i];
    if (!s.tensor.defined()) continue;
    std::vector<int64_t> offsets = s.offsets;
    if (offsets.empty()) offsets.assign(s.global_sizes.size(), 0);
    const std::string key = distributed::chunk_key(s.name, chunks_of[s.name]++);
    if (!entries.empty()) chunks += ',', sharding += ',';
    chunks += '[';
    format::append_json_string(chunks, key);
    chunks += ',' + std::to_string(grouped.tensor_of_shard[i]) + ',';
    distributed::append_sizes(chunks, offsets);
    chunks += ']';
    format::append_json_string(sharding, key);
    sharding += ":{\"saved_offsets\":";
    distributed::append_sizes(sharding, offsets);
    sharding += '}';
    // Several chunks of one tensor are views of one local shard (a _StridedShard DTensor's), and
    // save() refuses entries sharing memory as it refuses ties: each is written from a copy.
    entries.emplace_back(key, written_chunks_of[s.name] > 1 ? s.tensor.clone() : s.tensor);
  }
  Metadata metadata{{"format", "pt"}};
  metadata[distributed::kLayoutKey] = "{\"tensors\":" + tensors + "],\"chunks\":" + chunks + "]}";
  metadata[distributed::kShardingInfoKey] = sharding + "}";
  save(TensorsToSave(std::move(entries)), SaveTo(path).durable(durable), metadata);
}

SaveReport consolidate(const std::vector<std::string>& rank_files, const std::string& directory,
                       const ShardOptions& options) {
  const auto start = distributed::Clock::now();
  using namespace distributed;
  TS_CHECK(!rank_files.empty(), directory, "consolidate needs at least one rank file");
  std::vector<File> files;
  std::vector<GlobalTensor> tensors;
  std::vector<std::vector<ChunkLayout>> chunks(rank_files.size());
  std::vector<std::vector<std::string>> keys(rank_files.size());
  for (size_t r = 0; r < rank_files.size(); ++r) {
    files.emplace_back(rank_files[r]);
    const File& file = files.back();
    RankFileLayout layout = parse_layout(file);
    if (r == 0) {
      tensors = std::move(layout.tensors);
    } else {
      TS_CHECK(layout.tensors.size() == tensors.size(), file.path(), "lists ",
               layout.tensors.size(), " tensors, ", rank_files[0], " lists ", tensors.size(),
               " (the rank files of one save list the same state dict)");
      for (size_t t = 0; t < tensors.size(); ++t) {
        const GlobalTensor &theirs = layout.tensors[t], &first = tensors[t];
        TS_CHECK(
            theirs.name == first.name && theirs.dtype == first.dtype && theirs.sizes == first.sizes,
            file.path(), "tensor #", t, " is '", theirs.name, "' ", c10::toString(theirs.dtype),
            " ", shape_text(theirs.sizes), ", in ", rank_files[0], " '", first.name, "' ",
            c10::toString(first.dtype), " ", shape_text(first.sizes),
            " (the rank files of one save list the same state dict)");
      }
    }
    std::set<std::string> listed;
    for (auto& [key, chunk] : layout.chunks) {
      const GlobalTensor& g = tensors[chunk.tensor];
      TS_CHECK(file.contains(key), file.path(), "the layout lists a chunk '", key, "' of '", g.name,
               "' that the file does not hold");
      TS_CHECK(listed.insert(key).second, file.path(), "the layout lists chunk '", key, "' twice");
      const TensorInfo& info = file.info(key);
      TS_CHECK(from_scalar_type(g.dtype) == info.dtype, file.path(), "chunk '", key, "' of '",
               g.name, "' is ", dtype_name(info.dtype), ", the tensor is ", c10::toString(g.dtype));
      chunk.sizes = adapters::torch_sizes(info, file.path());
      chunks[r].push_back(chunk);
      keys[r].push_back(key);
    }
    TS_CHECK(listed.size() == file.size(), file.path(), "holds ", file.size(),
             " tensors, its layout lists ", listed.size(), " chunks");
  }
  const DistributedSavePlan plan = plan_distributed_save(tensors, chunks, options, directory);
  std::vector<PendingWrite> writes;
  for (size_t r = 0; r < plan.writes.size(); ++r) {
    for (const ChunkWrite& write : plan.writes[r]) {
      const File* file = &files[r];
      const std::string* key = &keys[r][write.chunk];
      writes.push_back({&write, *key, [file, key] { return file->tensor(*key); }});
    }
  }
  SoloExchange solo;
  return run_plan(plan, directory, solo, random_token(), options, writes, start);
}

SaveReport save_sharded(const std::vector<StreamedTensor>& tensors, const PathArg& directory_arg,
                        const ShardOptions& options) {
  const auto start = distributed::Clock::now();
  const std::string& directory = directory_arg.str();
  using namespace distributed;
  std::vector<GlobalTensor> globals;
  std::vector<std::vector<ChunkLayout>> chunks(1);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const StreamedTensor& t = tensors[i];
    globals.push_back({t.name, t.dtype, t.sizes});
    chunks[0].push_back({i, std::vector<int64_t>(t.sizes.size(), 0), t.sizes});
  }
  const DistributedSavePlan plan = plan_distributed_save(globals, chunks, options, directory);
  std::vector<PendingWrite> writes;
  for (const ChunkWrite& write : plan.writes[0]) {
    const StreamedTensor* t = &tensors[write.chunk];
    writes.push_back({&write, t->name, [t, &directory] {
                        at::Tensor made = t->make();
                        TS_CHECK(made.defined() && made.scalar_type() == t->dtype &&
                                     made.sizes().vec() == t->sizes,
                                 directory, "tensor '", t->name, "': made as ",
                                 made.defined() ? c10::toString(made.scalar_type()) : "undefined",
                                 " ", made.defined() ? shape_text(made.sizes().vec()) : "",
                                 ", declared ", c10::toString(t->dtype), " ", shape_text(t->sizes));
                        return made;
                      }});
  }
  SoloExchange solo;
  return run_plan(plan, directory, solo, random_token(), options, writes, start);
}

}  // namespace torch::safetensors
