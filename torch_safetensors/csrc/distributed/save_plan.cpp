// Saving from many ranks (save_plan.h): the plan of the final huggingface-style files, and the
// save that runs it. The publishing rank (0) creates every file under a temporary name at its
// final size with its header, and the index; every rank then writes its own chunks' bytes at
// their final offsets; only once every rank has reported success does rank 0 rename the files
// into place (index last) and remove stale files of an earlier save. Any failure, on any rank,
// is reported to every rank, and rank 0 removes the temporary files: the previous checkpoint is
// left as it was.
#include "distributed/save_plan.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <random>

#include <ATen/core/Tensor.h>

#include "api/checkpoint_files.h"
#include "check.h"
#include "format/index.h"
#include "storage/io.h"
#include "torch_safetensors/dtype.h"
#include "torch_safetensors/header.h"

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
    for (int64_t s : g.sizes)
      TS_CHECK(s >= 0, source, "tensor '", g.name, "' has a negative size: ", shape_text(g.sizes));
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

// What a rank tells the others about its state dict: little-endian int64s and strings.
class Writer {
 public:
  void i64(int64_t v) { bytes_.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void str(const std::string& s) { i64(int64_t(s.size())), bytes_ += s; }
  void sizes(const std::vector<int64_t>& v) {
    i64(int64_t(v.size()));
    for (int64_t x : v) i64(x);
  }
  std::string take() { return std::move(bytes_); }

 private:
  std::string bytes_;
};

class Reader {
 public:
  explicit Reader(const std::string& bytes) : bytes_(bytes) {}
  int64_t i64() {
    TORCH_CHECK(at_ + 8 <= bytes_.size(), "safetensors: a rank sent a truncated save layout");
    int64_t v;
    std::memcpy(&v, bytes_.data() + at_, 8);
    at_ += 8;
    return v;
  }
  std::string str() {
    const int64_t n = i64();
    TORCH_CHECK(n >= 0 && uint64_t(n) <= bytes_.size() - at_,
                "safetensors: a rank sent a truncated save layout");
    std::string s = bytes_.substr(at_, n);
    at_ += n;
    return s;
  }
  std::vector<int64_t> sizes() {
    const int64_t n = i64();
    TORCH_CHECK(n >= 0 && uint64_t(n) <= (bytes_.size() - at_) / 8,
                "safetensors: a rank sent a truncated save layout");
    std::vector<int64_t> v(n);
    for (auto& x : v) x = i64();
    return v;
  }

 private:
  const std::string& bytes_;
  size_t at_ = 0;
};

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

DistributedSaveReport save_from_ranks(const std::vector<LocalShard>& shards,
                                      const std::string& directory, Exchange& exchange,
                                      const ShardOptions& options) {
  const int rank = exchange.rank();
  const int world = exchange.size();
  // 1. Every rank's tensors and chunks, and rank 0's token for the temporary names.
  Writer w;
  std::string local_error;
  std::vector<size_t> shard_of_chunk;
  try {
    // The tensors, in the order of their first shard: several shards of one name are several
    // chunks of one tensor (a _StridedShard DTensor holds several blocks of it).
    std::vector<size_t> tensor_of_shard(shards.size());
    std::vector<size_t> first_shard;
    std::map<std::string, size_t> tensor_of_name;
    for (size_t i = 0; i < shards.size(); ++i) {
      const LocalShard& s = shards[i];
      const c10::ScalarType dtype = s.tensor.defined() ? s.tensor.scalar_type() : s.dtype;
      const auto [found, added] = tensor_of_name.emplace(s.name, first_shard.size());
      tensor_of_shard[i] = found->second;
      if (added) {
        first_shard.push_back(i);
        continue;
      }
      const LocalShard& first = shards[first_shard[found->second]];
      const c10::ScalarType first_dtype =
          first.tensor.defined() ? first.tensor.scalar_type() : first.dtype;
      TS_CHECK(dtype == first_dtype && s.global_sizes == first.global_sizes, directory, "tensor '",
               s.name, "': this rank's chunks of it disagree: ", c10::toString(first_dtype), " ",
               shape_text(first.global_sizes), " and ", c10::toString(dtype), " ",
               shape_text(s.global_sizes));
    }
    w.i64(int64_t(first_shard.size()));
    for (size_t i : first_shard) {
      const LocalShard& s = shards[i];
      const c10::ScalarType dtype = s.tensor.defined() ? s.tensor.scalar_type() : s.dtype;
      w.str(s.name);
      w.i64(int64_t(dtype));
      w.sizes(s.global_sizes);
    }
    Writer chunk_bytes;
    int64_t count = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      const LocalShard& s = shards[i];
      if (!s.tensor.defined()) continue;
      std::vector<int64_t> offsets = s.offsets;
      if (offsets.empty()) offsets.assign(s.global_sizes.size(), 0);
      chunk_bytes.i64(int64_t(tensor_of_shard[i]));
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

  DistributedSaveReport report;
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
      std::map<size_t, storage::PositionalFile> open;
      for (const ChunkWrite& write : plan.writes[rank]) {
        const LocalShard& shard = shards[shard_of_chunk[write.chunk]];
        const at::Tensor bytes = shard.tensor.cpu().contiguous();
        TS_CHECK(uint64_t(bytes.nbytes()) == write.nbytes(), directory, "tensor '", shard.name,
                 "': rank ", rank, "'s chunk holds ", bytes.nbytes(), " bytes, the plan ",
                 write.nbytes());
        auto found = open.find(write.file);
        if (found == open.end())
          found = open.emplace(write.file, storage::PositionalFile::open(temps[write.file])).first;
        const char* data = static_cast<const char*>(bytes.data_ptr());
        uint64_t at = 0;
        for (const ByteRun& run : write.runs) {
          found->second.write_at(data + at, run.length, run.offset);
          at += run.length;
        }
        report.tensor_bytes += write.nbytes();
      }
      for (auto& [f, file] : open) {
        if (options.durable) file.sync();
        file.close();
      }
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
  return report;
}

}  // namespace torch::safetensors::distributed
