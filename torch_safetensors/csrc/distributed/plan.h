// The steps of shard planning that load_for_rank and the collectives share (plan.cpp).
#pragma once

#include "torch_safetensors/export.h"

#include <string>
#include <string_view>
#include <vector>

#include "torch_safetensors/distributed.h"

namespace torch::safetensors::distributed {

// Where a rank sits: pipeline stage-major, then expert-parallel, tensor-parallel rank innermost
// (ep_size 1 without an expert plan). `experts`: the experts this rank holds (with an expert
// plan).
struct TS_API RankLayout {
  int64_t stage, num_stages, tp_rank, tp_size;
  int64_t ep_rank = 0, ep_size = 1;
  std::vector<int64_t> experts;
};
// Checks rank and world size against the plan (and the expert plan's assignment).
TS_API RankLayout rank_layout(const ShardPlan& plan, int64_t rank, int64_t world_size,
                              std::string_view source);

// What a tensor is to an expert plan: no expert tensor, one expert's (its index), or stacked
// (every expert's, on dim 0).
struct ExpertRole {
  enum Kind { kNone, kPerExpert, kStacked } kind = kNone;
  int64_t index = -1;
};
TS_API ExpertRole expert_role(const ShardPlan& plan, std::string_view name);

// Whether the rank may hold any of tensor `name`, from its name only: its pipeline stage, and for
// a per-expert tensor, its expert. Tensors it cannot hold need not even be located.
TS_API bool on_rank(const ShardPlan& plan, const RankLayout& layout, std::string_view name);

// The pipeline stage holding tensor `name` (0 without a pipeline), or -1 for a layer on no stage.
TS_API int64_t stage_of(const ShardPlan& plan, std::string_view name);

// Checks over names only (no headers needed): every tensor is on some stage; patterns and
// explicit tensors that match nothing are warnings (errors when strict).
TS_API void check_names(const std::vector<std::string>& names, const ShardPlan& plan,
                        std::string_view source, std::vector<std::string>* warnings);

// The rank's pieces of tensors that are on_rank: the expert split (stacked experts' rows) and
// the tensor-parallel split.
TS_API std::vector<Piece> split_pieces(const std::vector<TensorShape>& tensors,
                                       const ShardPlan& plan, const RankLayout& layout,
                                       std::string_view source);

// What reading `names` costs beyond their tensor bytes: the headers (length + JSON) of the shards
// holding them, plus the index when there is one (load_for_rank.cpp).
TS_API uint64_t header_bytes(const Checkpoint& checkpoint, const std::vector<std::string>& names);

// The index items that select `piece` from its full tensor.
TS_API std::vector<IndexItem> index_items(const Piece& piece);

}  // namespace torch::safetensors::distributed
