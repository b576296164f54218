// Tensor- and pipeline-parallel loading: every rank reads only its own bytes.
//
// A ShardPlan is data (no code): module-name patterns in the style of transformers'
// `base_model_tp_plan`, explicit per-tensor splits, and a pipeline filter. load_for_rank turns it
// into each tensor's slice for one rank and reads exactly those bytes, plus the headers of the
// files that hold them, through the checkpoint's one read path (any backend, any device).
//
//   ShardPlan plan;
//   plan.patterns = {{"layers.*.self_attn.q_proj", ShardRule::parse("colwise")},
//                    {"layers.*.self_attn.o_proj", ShardRule::parse("rowwise")}};
//   RankLoad mine = load_for_rank(Checkpoint("Llama/"), plan, rank, world_size);
//
// The collectives over a c10d::ProcessGroup (consistency checks, a single reader that scatters,
// reassembly) are in distributed_c10d.h, an optional target.
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/sharded.h"

namespace torch::safetensors {

// How a module's tensors are split across the tensor-parallel ranks. The split applies to the
// module's reference tensor (its `weight`, else its largest tensor); its other tensors follow:
// the same size on the split dimension splits alike (a bias, a per-channel scale), size 1 or a
// tensor of lower rank is replicated (a per-tensor scale, a rowwise bias), and a same-rank tensor
// with ceil(size / B) entries there splits on whole blocks of B (a 128×128 block scale, packed
// int4 words, group-wise scales) — a split that cuts a block is an error.
enum class ShardStyle {
  kReplicate,         // every rank holds everything ("replicate", "local", "gather")
  kColwise,           // dim 0 of the weight: nn.Linear's output features; bias split
  kRowwise,           // dim 1 of the weight: nn.Linear's input features; bias replicated
  kPackedColwise,     // colwise, each fused block (q/k/v, gate/up) split separately
  kPackedRowwise,     // rowwise, each fused block split separately
  kEmbedding,         // vocab-parallel: the embedding's rows (dim 0)
  kEmbeddingColwise,  // the embedding's columns (dim 1)
};

struct TS_API ShardRule {
  ShardStyle style = ShardStyle::kReplicate;
  // Packed styles: the fused blocks' sizes along the split dimension, in order (q, k, v). Empty:
  // two equal blocks, transformers' convention for a fused gate_up_proj.
  std::vector<int64_t> blocks;

  // transformers' names: "colwise" (also "colwise_rep", "local_colwise"), "rowwise" (also
  // "rowwise_rep", "local_rowwise"), "packed_colwise", "packed_rowwise" (also
  // "local_packed_rowwise"), "embedding" (also "embedding_rowwise", "vocab_parallel"),
  // "embedding_colwise", "replicate" (also "local", "gather", "sequence_parallel"). A packed
  // style may give its blocks: "packed_colwise:4096,1024,1024". Anything else is a c10::Error.
  static ShardRule parse(std::string_view text);
  std::string to_string() const;  // parse(to_string()) == *this
};

// One tensor's explicit split among the tensor-parallel ranks, like torch.tensor_split but with
// any offsets: rank r holds [ranges[r].first, ranges[r].first + ranges[r].second) of `dim`.
// Ranges may be empty or overlap; together they must cover the dimension.
struct TS_API TensorSplit {
  int64_t dim = 0;
  std::vector<std::pair<int64_t, int64_t>> ranges;  // (offset, length) per rank
};

// Which pipeline stage holds which tensors. A layer's tensors carry its index in the numeric
// path segment after `layers` ("model.layers.7.mlp..."); stage s holds layers
// [stages[s].first, stages[s].second). Other tensors go to the first stage when a pattern of
// `first_stage` matches their module (embeddings), else to the last (final norm, head).
struct TS_API PipelinePlan {
  std::string layers = "layers";
  std::vector<std::pair<int64_t, int64_t>> stages;
  std::vector<std::string> first_stage = {"embed_tokens", "embed_positions", "wte",
                                          "wpe",          "word_embeddings", "embeddings"};

  // `num_layers` split into `num_stages` contiguous ranges, the first ones one layer longer when
  // it does not divide.
  static PipelinePlan even(int64_t num_layers, int64_t num_stages);
};

// How experts are placed on the ranks of an expert-parallel group.
enum class ExpertPlacement {
  kContiguous,  // EP rank r holds a contiguous block; the first E % P ranks one expert more
  kRoundRobin,  // expert e on EP rank e % P
  kExplicit,    // ExpertPlan::assignment
};

// Expert parallelism for mixture-of-experts checkpoints. Two layouts are recognised by the path
// segment `segment` ("experts"):
// - per-expert tensors, the segment followed by the expert's index ("...mlp.experts.5.w1.weight",
//   Mixtral, Qwen3-MoE, DeepSeek): held whole (or as the patterns split them) by the expert's
//   owner, by no other rank;
// - stacked experts, a tensor whose module ends in the segment ("...mlp.experts.gate_up_proj",
//   transformers' fused experts; gpt-oss "..._blocks", "..._scales", "..._bias"): dim 0 counts the
//   experts, and each rank reads the rows of its own. A pattern's rule applies to one expert's
//   matrix, so its split dimension is shifted by one (colwise splits dim 1, rowwise dim 2); a
//   pattern matches the name or, for companions, the name less a trailing "_<suffix>"
//   ("experts.gate_up_proj" plans "experts.gate_up_proj_scales" too, which follows it).
// Everything else (attention, the router, shared experts, norms) is planned as without experts:
// replicated across the EP group and split by the patterns within the TP group.
struct TS_API ExpertPlan {
  int64_t num_experts = 0;  // per MoE layer; an index >= this, or a dim 0 that differs, is an error
  // The expert-parallel group's size P; 0: all the ranks of a pipeline stage (no TP). The ranks
  // of a stage (W / S of them) are P groups of T = W / (S * P) tensor-parallel ranks: local rank l
  // is EP rank l / T and TP rank l % T.
  int64_t ep_size = 0;
  ExpertPlacement placement = ExpertPlacement::kContiguous;
  // kExplicit: assignment[r] = the experts EP rank r holds; every expert exactly once.
  std::vector<std::vector<int64_t>> assignment;
  std::string segment = "experts";

  // "contiguous", "round_robin"; anything else is a c10::Error.
  static ExpertPlacement parse_placement(std::string_view text);
  // The experts of EP rank `ep_rank` out of `ep_size`, ascending; checks the whole assignment
  // (an expert unowned or owned twice, an index outside [0, num_experts)).
  std::vector<int64_t> experts_of(int64_t ep_rank, int64_t ep_size) const;
};

// The whole plan. Ranks are laid out stage-major: with S pipeline stages and world size W
// (divisible by S), rank r is tensor-parallel rank r % (W / S) of stage r / (W / S) (with
// experts: see ExpertPlan for the EP × TP grid inside a stage).
struct TS_API ShardPlan {
  // Module-name pattern → rule. Patterns match a tensor's module path (its name without the last
  // segment), or its full name, by their last segments: "layers.*.mlp.up_proj" matches
  // "model.layers.3.mlp.up_proj.weight"; `*` matches one numeric segment. The longest pattern
  // wins (then the one with fewer `*`). Tensors no pattern matches are replicated.
  std::vector<std::pair<std::string, ShardRule>> patterns;
  // Tensor name → explicit split; overrides the patterns.
  std::vector<std::pair<std::string, TensorSplit>> tensors;
  std::optional<PipelinePlan> pipeline;
  std::optional<ExpertPlan> experts;
  // A pattern, or an explicit tensor, that matches nothing in the checkpoint: an error when
  // strict, else a warning (RankLoad::warnings, and TORCH_WARN).
  bool strict = false;

  // The plan as canonical text: equal plans, equal text (ranks compare it through the group).
  std::string to_string() const;
};

// One split of a piece: [begin, end) ranges along `dim`, concatenated in order.
struct TS_API DimSplit {
  int64_t dim = 0;
  std::vector<std::pair<int64_t, int64_t>> ranges;
};

// Where a rank's piece of a tensor lies in the full tensor: the full (torch) sizes and the splits,
// none for a whole (replicated) tensor.
struct TS_API Piece {
  std::string name;
  std::vector<int64_t> full_sizes;
  std::vector<DimSplit> splits;
  bool whole() const { return splits.empty(); }
  std::vector<int64_t> sizes() const;  // the piece's own sizes
};

// A tensor's name and its sizes as torch sees them: what planning needs.
struct TS_API TensorShape {
  std::string name;
  std::vector<int64_t> sizes;
};

// Pure planning (no I/O): rank `rank`'s pieces of `tensors`, in their order; tensors of other
// pipeline stages are left out. Checks the plan for every rank first (a dimension that does not
// divide, packed blocks that do not add up, a split that cuts a block, an explicit split with the
// wrong number of ranges or leaving part of a dimension on no rank, a layer on no stage, a rank
// outside [0, world_size)); errors name `source`, the tensor, and expected vs found.
TS_API std::vector<Piece> plan_for_rank(const std::vector<TensorShape>& tensors,
                                        const ShardPlan& plan, int64_t rank, int64_t world_size,
                                        std::string_view source,
                                        std::vector<std::string>* warnings = nullptr);

struct TS_API RankLoad {
  TensorDict tensors;         // this rank's pieces, in checkpoint order
  std::vector<Piece> pieces;  // the same order
  // Tensor bytes this load read (or viewed): exactly its pieces' bytes, nothing of other ranks'.
  uint64_t tensor_bytes = 0;
  // Headers (8-byte length + JSON) of the files opened, plus the index when there is one.
  uint64_t header_bytes = 0;
  std::vector<std::string> warnings;
  // What the load allocated (planned, and checked against the options' budgets, first).
  MemoryEstimate memory;
  uint64_t bytes_read() const { return tensor_bytes + header_bytes; }
};

// The plan step of load_for_rank: what rank `rank`'s load would allocate on the device and on
// the host (staging included), from the headers only; nothing is allocated or read. With a
// budget in the checkpoint's options, load_for_rank fails with a BudgetError at this point.
TS_API MemoryEstimate estimate_for_rank(const Checkpoint& checkpoint, const ShardPlan& plan,
                                        int64_t rank, int64_t world_size);

// Rank `rank`'s pieces of `checkpoint` under `plan`, reading only their bytes: only the shards
// holding them are opened, through the checkpoint's options (backend, device, dtype).
TS_API RankLoad load_for_rank(const Checkpoint& checkpoint, const ShardPlan& plan, int64_t rank,
                              int64_t world_size);

// The given pieces (any splits: a DTensor's local shard on a 2-D mesh) in one bulk read.
TS_API TensorDict load_pieces(const Checkpoint& checkpoint, const std::vector<Piece>& pieces);

// Reassembly: the full tensor from every rank's piece of it (`pieces[r]` and `tensors[r]` from
// rank r; ranks holding none of it pass an undefined tensor). Every element must be covered.
TS_API at::Tensor assemble(const std::vector<Piece>& pieces,
                           const std::vector<at::Tensor>& tensors);

// Saving from many ranks (distributed_c10d.h's save_sharded): one rank's part of one tensor of
// the state dict. Every rank lists the same tensors (name, dtype, global sizes) in the same order;
// `tensor` is the local chunk at `offsets` (any strides, any device), or undefined where this rank
// writes nothing of it (DCP's planner gave a replica to another rank). A rank holding several
// blocks of a tensor (a _StridedShard DTensor) gives one LocalShard per block, with the same name;
// the tensors are listed in the order of their first block.
struct TS_API LocalShard {
  std::string name;
  at::Tensor tensor;
  std::vector<int64_t> global_sizes;
  std::vector<int64_t> offsets;         // empty: all zeros (a whole tensor, replicated)
  c10::ScalarType dtype = c10::kFloat;  // used when `tensor` is undefined

  LocalShard() = default;
  // A whole (replicated) tensor.
  LocalShard(std::string n, at::Tensor t)
      : name(std::move(n)),
        tensor(std::move(t)),
        global_sizes(tensor.sizes().vec()),
        dtype(tensor.scalar_type()) {}
  // A chunk of a larger tensor.
  LocalShard(std::string n, at::Tensor t, std::vector<int64_t> global, std::vector<int64_t> at)
      : name(std::move(n)),
        tensor(std::move(t)),
        global_sizes(std::move(global)),
        offsets(std::move(at)),
        dtype(tensor.scalar_type()) {}
};

// Saving without a shared file system: every rank saves its local shards to a file of its own
// (save_rank_file: each chunk under its tensor's name, the whole state dict's names, dtypes and
// global sizes recorded in "torch_safetensors.save_layout", and torch's "DCP_SHARDING_INFO"
// offsets, so DCP readers read the files as they are); once the files are in one place,
// consolidate() writes the checkpoint distributed_c10d.h's save_sharded would have written, byte
// for byte, reading each chunk from its mapped file with up to `options.threads` threads and
// publishing atomically as save_sharded does. The global sizes come from the record, never
// from the chunks; every rank file must list the same state dict and the chunks must tile each
// tensor exactly (replicas, held by several files, are written once).
TS_API void save_rank_file(const std::vector<LocalShard>& shards, const std::string& path,
                           bool durable = false);
TS_API SaveReport consolidate(const std::vector<std::string>& rank_files,
                              const std::string& directory, const ShardOptions& options = {});

}  // namespace torch::safetensors
