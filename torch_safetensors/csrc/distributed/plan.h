// The steps of shard planning that load_for_rank and the collectives share (plan.cpp).
#pragma once

#include "torch_safetensors/export.h"

#include <string>
#include <string_view>
#include <vector>

#include "torch_safetensors/distributed.h"

namespace torch::safetensors::distributed {

// Where a rank sits: pipeline stage-major, tensor-parallel rank innermost.
struct TS_API RankLayout {
  int64_t stage, num_stages, tp_rank, tp_size;
};
// Checks rank and world size against the plan.
TS_API RankLayout rank_layout(const ShardPlan& plan, int64_t rank, int64_t world_size,
                              std::string_view source);

// The pipeline stage holding tensor `name` (0 without a pipeline), or -1 for a layer on no stage.
TS_API int64_t stage_of(const ShardPlan& plan, std::string_view name);

// Checks over names only (no headers needed): every tensor is on some stage; patterns and
// explicit tensors that match nothing are warnings (errors when strict).
TS_API void check_names(const std::vector<std::string>& names, const ShardPlan& plan,
                        std::string_view source, std::vector<std::string>* warnings);

// The tensor-parallel split of tensors already on this rank's stage.
TS_API std::vector<Piece> split_pieces(const std::vector<TensorShape>& tensors,
                                       const ShardPlan& plan, int64_t tp_rank, int64_t tp_size,
                                       std::string_view source);

// What reading `names` costs beyond their tensor bytes: the headers (length + JSON) of the shards
// holding them, plus the index when there is one (load_for_rank.cpp).
TS_API uint64_t header_bytes(const Checkpoint& checkpoint, const std::vector<std::string>& names);

// The index items that select `piece` from its full tensor.
TS_API std::vector<IndexItem> index_items(const Piece& piece);

}  // namespace torch::safetensors::distributed
