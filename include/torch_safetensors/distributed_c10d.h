// Rank-local loading over a c10d::ProcessGroup (whatever backend the application built: Gloo on
// CPUs, NCCL on GPUs, ...): the ranks check each other, load their pieces (each reading its own,
// or one reader sending each rank its pieces), and can reassemble full tensors. Part of the
// optional target TorchSafetensors::torch_safetensors_distributed.
//
//   auto group = c10d::ProcessGroupGloo(...);  // or the group torch.distributed built
//   RankLoad mine = load_for_rank("Llama/", plan, *group);
#pragma once

#include "torch_safetensors/export.h"

#include <string>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "torch_safetensors/distributed.h"
#include "torch_safetensors/sharded.h"

namespace torch::safetensors {

struct TS_API CollectiveOptions {
  // The world size this rank's plan assumes; -1: the group's size. Ranks that disagree with
  // each other or with the group fail together.
  int64_t world_size = -1;
  // Storage only one rank can see: `source_rank` reads every piece and sends each rank its own
  // through the group (a broadcast for a tensor every rank holds whole), tensor by tensor, so no
  // rank ever holds the whole model. The other ranks read nothing.
  bool single_reader = false;
  int64_t source_rank = 0;
};

// Every rank of `group` calls this with the same plan and `path` (a file, an index or a
// directory, as Checkpoint). The ranks first agree, through the group, on world size and plan;
// then each loads its pieces. A failure on any rank (a bad plan, a missing file) is raised on
// every rank, naming the rank; a rank that dies or stops answering makes the others fail with a
// c10::Error within the group's timeout, never hang.
TS_API RankLoad load_for_rank(const std::string& path, const ShardPlan& plan,
                              c10d::ProcessGroup& group, const LoadOptions& options = {},
                              const CollectiveOptions& collective = {});

// Every full tensor, on every rank, from the pieces each rank loaded (`mine` on this rank): the
// ranks exchange their piece layouts, then each piece is broadcast by its holder. Tensors are in
// the order of first appearance, rank by rank.
TS_API TensorDict all_gather_tensors(const RankLoad& mine, c10d::ProcessGroup& group);

// Saving a sharded state dict from every rank straight to the huggingface layout: the same
// files, byte for byte, as save_sharded (sharded.h) of the gathered state dict, written in
// parallel. Every rank of `group` calls this with the same tensors in the same order, each
// holding its local chunks (LocalShard: the chunk, the global sizes, its offsets; a whole tensor
// for a replicated one; several, of one name, for a rank holding several blocks of a tensor, as a
// _StridedShard DTensor does). The ranks exchange their layouts and plan the files (the chunks must
// tile every tensor exactly; replicas are written once); rank 0 creates each file under a
// temporary name at its final size with its header, and the index; every rank writes its own
// chunks' bytes at their final offsets (`directory` must be one file system all ranks see, e.g.
// local or NFS); once every rank has reported success, rank 0 renames the files into place
// (index last) and removes stale files of an earlier save (options.remove_stale). A failure on
// any rank -- a bad layout, a full disk, a rank that dies -- raises on every rank (within the
// group's timeout) and leaves the directory's previous checkpoint as it was: no final-named file
// is touched before every byte is written. options.durable fsyncs every file (on every rank) and
// the directory before publishing. Returns this rank's bytes written.
TS_API SaveReport save_sharded(const std::vector<LocalShard>& shards, const std::string& directory,
                               c10d::ProcessGroup& group, const ShardOptions& options = {});

}  // namespace torch::safetensors
