// A rank's pieces of a checkpoint: plan them (plan.cpp), turn each into a slice plan of its
// tensor, and read them all in one bulk load (api/handle.h) — the one read path of every
// load, so every backend and device works and only the pieces' bytes are read.
#include <algorithm>
#include <functional>
#include <set>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "adapters/load_tensor.h"
#include "api/handle.h"
#include "check.h"
#include "distributed/plan.h"

namespace torch::safetensors {
namespace distributed {

std::vector<IndexItem> index_items(const Piece& piece) {
  std::vector<DimSplit> splits = piece.splits;
  std::sort(splits.begin(), splits.end(),
            [](const DimSplit& a, const DimSplit& b) { return a.dim < b.dim; });
  std::vector<IndexItem> items;
  for (const DimSplit& split : splits) {
    TORCH_CHECK(split.dim >= int64_t(items.size()) && split.dim < int64_t(piece.full_sizes.size()),
                "safetensors: tensor '", piece.name, "': a piece splits dimension ", split.dim,
                " twice or outside its ", piece.full_sizes.size(), " dimensions");
    while (int64_t(items.size()) < split.dim) items.push_back(IndexRange{});
    if (split.ranges.size() == 1) {
      items.push_back(IndexRange{split.ranges[0].first, split.ranges[0].second, 1});
    } else {
      items.push_back(Intervals{split.ranges});
    }
  }
  return items;
}

uint64_t header_bytes(const Checkpoint& checkpoint, const std::vector<std::string>& names) {
  uint64_t bytes = 0;
  std::set<std::string_view> opened;
  for (const std::string& name : names) {
    if (opened.insert(checkpoint.shard_file(name)).second) {
      bytes += detail::locate(checkpoint, name).file->header.data_offset();
    }
  }
  if (checkpoint.index_path()) {
    bytes += file_source(*checkpoint.index_path(), /*mapped=*/false)->size();
  }
  return bytes;
}

}  // namespace distributed

namespace {

// The slice plans and load items of `pieces` (`plans` is reserved: the items point into it).
std::vector<detail::LoadItem> planned_items(const Checkpoint& checkpoint,
                                            const std::vector<Piece>& pieces,
                                            std::vector<SlicePlan>& plans) {
  plans.clear();
  plans.reserve(pieces.size());
  std::vector<detail::LoadItem> items;
  items.reserve(pieces.size());
  for (const Piece& piece : pieces) {
    const detail::Located tensor = detail::locate(checkpoint, piece.name);
    const std::string& source = tensor.file->name();
    const std::vector<int64_t> sizes = adapters::torch_sizes(*tensor.info, source);
    TS_CHECK(sizes == piece.full_sizes, source, "tensor '", piece.name, "': the piece is of a ",
             "tensor of sizes ", c10::IntArrayRef(piece.full_sizes), ", the file holds ",
             c10::IntArrayRef(sizes));
    plans.push_back(detail::plan_tensor_slice(tensor, distributed::index_items(piece)));
    items.push_back({tensor.file, tensor.info, {}, &plans.back()});
  }
  return items;
}

// Pieces in one bulk read; `tensor_bytes` gets the bytes they cover, `memory` what the load
// allocates (checked against the budgets before anything is).
TensorDict load_planned(const Checkpoint& checkpoint, const std::vector<Piece>& pieces,
                        uint64_t* tensor_bytes, MemoryEstimate* memory = nullptr) {
  std::vector<SlicePlan> plans;
  const std::vector<detail::LoadItem> items = planned_items(checkpoint, pieces, plans);
  if (tensor_bytes)
    for (const SlicePlan& plan : plans) *tensor_bytes += plan.nbytes();
  // The plan step: nothing is allocated unless the whole rank's load fits the budgets.
  const MemoryEstimate estimate = detail::estimate_memory(items, checkpoint.options());
  detail::check_budgets(estimate, checkpoint.options(),
                        checkpoint.index_path() ? *checkpoint.index_path() : checkpoint.path(),
                        "the rank's load");
  if (memory) *memory = estimate;
  std::vector<at::Tensor> loaded = detail::load_many(items, checkpoint.options());
  TensorDict out;
  out.reserve(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) out.insert(pieces[i].name, std::move(loaded[i]));
  return out;
}

// The rank's pieces, from names first (the index): only the shards of its tensors are opened.
std::vector<Piece> rank_pieces(const Checkpoint& checkpoint, const ShardPlan& plan, int64_t rank,
                               int64_t world_size, std::vector<std::string>* warnings) {
  const std::string& source =
      checkpoint.index_path() ? *checkpoint.index_path() : checkpoint.path();
  const auto layout = distributed::rank_layout(plan, rank, world_size, source);
  distributed::check_names(checkpoint.keys(), plan, source, warnings);
  std::vector<TensorShape> mine;
  for (const std::string& name : checkpoint.keys()) {
    if (!distributed::on_rank(plan, layout, name)) continue;  // not even located
    const detail::Located tensor = detail::locate(checkpoint, name);
    mine.push_back({name, adapters::torch_sizes(*tensor.info, tensor.file->name())});
  }
  return distributed::split_pieces(mine, plan, layout, source);
}

}  // namespace

TensorDict load_pieces(const Checkpoint& checkpoint, const std::vector<Piece>& pieces) {
  return load_planned(checkpoint, pieces, nullptr);
}

MemoryEstimate estimate_for_rank(const Checkpoint& checkpoint, const ShardPlan& plan, int64_t rank,
                                 int64_t world_size) {
  const std::vector<Piece> pieces = rank_pieces(checkpoint, plan, rank, world_size, nullptr);
  std::vector<SlicePlan> plans;
  return detail::estimate_memory(planned_items(checkpoint, pieces, plans), checkpoint.options());
}

RankLoad load_for_rank(const Checkpoint& checkpoint, const ShardPlan& plan, int64_t rank,
                       int64_t world_size) {
  RankLoad out;
  out.pieces = rank_pieces(checkpoint, plan, rank, world_size, &out.warnings);
  out.tensors = load_planned(checkpoint, out.pieces, &out.tensor_bytes, &out.memory);
  std::vector<std::string> names;
  for (const Piece& piece : out.pieces) names.push_back(piece.name);
  out.header_bytes = distributed::header_bytes(checkpoint, names);
  return out;
}

at::Tensor assemble(const std::vector<Piece>& pieces, const std::vector<at::Tensor>& tensors) {
  TORCH_CHECK(pieces.size() == tensors.size() && !pieces.empty(),
              "safetensors: assemble: expected one piece per tensor, found ", pieces.size(),
              " pieces and ", tensors.size(), " tensors");
  const Piece* first = nullptr;
  at::Tensor like;
  for (size_t r = 0; r < pieces.size(); ++r) {
    if (!tensors[r].defined()) continue;
    if (!first) first = &pieces[r], like = tensors[r];
    TORCH_CHECK(pieces[r].name == first->name && pieces[r].full_sizes == first->full_sizes,
                "safetensors: assemble: piece ", r, " is of '", pieces[r].name, "' ",
                c10::IntArrayRef(pieces[r].full_sizes), ", expected '", first->name, "' ",
                c10::IntArrayRef(first->full_sizes));
    TORCH_CHECK(tensors[r].sizes() == c10::IntArrayRef(pieces[r].sizes()),
                "safetensors: assemble: tensor '", pieces[r].name, "' from rank ", r, " has sizes ",
                tensors[r].sizes(), ", its piece ", c10::IntArrayRef(pieces[r].sizes()));
  }
  TORCH_CHECK(first, "safetensors: assemble: no rank holds any of the tensor");
  at::Tensor full = at::empty(first->full_sizes, like.options());
  at::Tensor covered = at::zeros(first->full_sizes, like.options().dtype(at::kBool));
  for (size_t r = 0; r < pieces.size(); ++r) {
    if (!tensors[r].defined()) continue;
    // Each split narrows both sides, range by range, dimension by dimension.
    std::function<void(at::Tensor, at::Tensor, at::Tensor, size_t)> place =
        [&](at::Tensor dst, at::Tensor mask, at::Tensor src, size_t k) {
          if (k == pieces[r].splits.size()) {
            dst.copy_(src);
            mask.fill_(true);
            return;
          }
          const DimSplit& split = pieces[r].splits[k];
          int64_t at = 0;
          for (const auto& [begin, end] : split.ranges) {
            place(dst.narrow(split.dim, begin, end - begin),
                  mask.narrow(split.dim, begin, end - begin),
                  src.narrow(split.dim, at, end - begin), k + 1);
            at += end - begin;
          }
        };
    place(full, covered, tensors[r], 0);
  }
  TORCH_CHECK(covered.all().item<bool>(), "safetensors: assemble: tensor '", first->name,
              "': the pieces leave elements on no rank");
  return full;
}

}  // namespace torch::safetensors
