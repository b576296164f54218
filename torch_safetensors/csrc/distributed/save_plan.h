// Saving from many ranks straight to the huggingface layout (issue 25): the plan (pure, no I/O) of
// the final files from the global names, dtypes and sizes and every rank's local chunks, and the
// save that runs it over an exchange between the ranks (a c10d::ProcessGroup in c10d/, or one
// process alone). The plan uses save_sharded's split (plan_shards) and the one layout planner
// (plan_layout), so the files are byte-identical to save_sharded of the gathered state dict.
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <c10/core/ScalarType.h>

#include "torch_safetensors/distributed.h"
#include "torch_safetensors/sharded.h"
#include "torch_safetensors/slice.h"

namespace torch::safetensors::distributed {

// A tensor of the state dict as a whole: what every rank agrees on.
struct TS_API GlobalTensor {
  std::string name;
  c10::ScalarType dtype = c10::kFloat;
  std::vector<int64_t> sizes;  // torch's sizes of the full tensor
};

// The part of a tensor one rank holds: [offsets[d], offsets[d] + sizes[d]) on every dimension.
struct TS_API ChunkLayout {
  size_t tensor = 0;  // index into the global tensors
  std::vector<int64_t> offsets, sizes;
};

// One file of the final checkpoint: its name, its header (u64 length + JSON + padding, exactly
// as save_sharded writes it) and its full size.
struct TS_API PlannedFile {
  std::string name;
  std::string header;
  uint64_t size = 0;
};

// The bytes one chunk writes: runs of the chunk's contiguous bytes, in order, each at an
// absolute offset of file `file` (ByteRun::offset is the file offset here).
struct TS_API ChunkWrite {
  size_t rank = 0;   // who writes it
  size_t chunk = 0;  // index into that rank's chunks
  size_t file = 0;   // index into DistributedSavePlan::files
  std::vector<ByteRun> runs;
  uint64_t nbytes() const;
};

struct TS_API DistributedSavePlan {
  std::vector<PlannedFile> files;
  std::string index_name;  // "" when the checkpoint is a single file
  std::string index_json;
  uint64_t total_size = 0;  // tensor bytes, as the index's metadata.total_size
  // Per rank, the chunks it writes (replicated chunks: by one owner, the holders taking turns
  // tensor by tensor); chunks held by no one else but empty write nothing.
  std::vector<std::vector<ChunkWrite>> writes;
};

// Pure planning. `chunks[r]` are rank r's chunks. Checks that the chunks of each tensor tile it
// exactly (inside its sizes, no gap, no overlap; identical chunks on several ranks are replicas)
// and throws a c10::Error naming `source` and the tensor otherwise. Options as save_sharded's
// (max_shard_size, filename_pattern, metadata); ties do not arise (every tensor is its own).
TS_API DistributedSavePlan plan_distributed_save(
    const std::vector<GlobalTensor>& tensors, const std::vector<std::vector<ChunkLayout>>& chunks,
    const ShardOptions& options, std::string_view source);

// What the ranks exchange while saving: every rank's bytes, in rank order. A group that fails
// (a rank died, a timeout) throws c10::Error; never hangs past the group's timeout.
class TS_API Exchange {
 public:
  virtual ~Exchange() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::vector<std::string> all_gather(const std::string& bytes,
                                              const std::string& doing) = 0;
};

// One process alone: rank 0 of 1.
class TS_API SoloExchange : public Exchange {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::vector<std::string> all_gather(const std::string& bytes, const std::string&) override {
    return {bytes};
  }
};

// Every rank calls this with its local shards (distributed.h); see save_sharded in
// distributed_c10d.h for the protocol.
TS_API SaveReport save_from_ranks(const std::vector<LocalShard>& shards,
                                  const std::string& directory, Exchange& exchange,
                                  const ShardOptions& options);

}  // namespace torch::safetensors::distributed
