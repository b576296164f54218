// load_for_rank and reassembly over a c10d::ProcessGroup. Every exchange goes through the group's
// own collectives (broadcast, allgather, send/recv), so the backend is the application's: Gloo,
// NCCL, ... Failures are exchanged too: a rank that fails tells the others, which then fail with
// its message instead of waiting for it in the next collective.
#include "torch_safetensors/distributed_c10d.h"

#include <cstring>
#include <functional>
#include <map>
#include <optional>

#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>

#include "adapters/load_tensor.h"
#include "api/handle.h"
#include "distributed/plan.h"
#include "distributed/save_plan.h"
#include "distributed/wire.h"
#include "torch_safetensors/errors.h"

namespace torch::safetensors {
namespace {

using Writer = distributed::WireWriter;
using Reader = distributed::WireReader;

void write_piece(Writer& w, const Piece& piece, c10::ScalarType dtype) {
  w.str(piece.name);
  w.i64(int64_t(dtype));
  w.sizes(piece.full_sizes);
  w.i64(int64_t(piece.splits.size()));
  for (const DimSplit& split : piece.splits) {
    w.i64(split.dim);
    w.i64(int64_t(split.ranges.size()));
    for (const auto& [begin, end] : split.ranges) w.i64(begin), w.i64(end);
  }
}

std::pair<Piece, c10::ScalarType> read_piece(Reader& r) {
  Piece piece;
  piece.name = r.str();
  const auto dtype = c10::ScalarType(r.i64());
  piece.full_sizes = r.sizes();
  const int64_t splits = r.i64();
  TORCH_CHECK(splits >= 0 && splits <= int64_t(piece.full_sizes.size()),
              "safetensors: a rank sent a bad layout");
  for (int64_t k = 0; k < splits; ++k) {
    DimSplit split;
    split.dim = r.i64();
    const int64_t n = r.i64();
    TORCH_CHECK(n >= 0 && n < (int64_t(1) << 32), "safetensors: a rank sent a bad layout");
    for (int64_t i = 0; i < n; ++i) {
      const int64_t begin = r.i64();
      split.ranges.push_back({begin, r.i64()});
    }
    piece.splits.push_back(std::move(split));
  }
  return {std::move(piece), dtype};
}

// Runs one collective step, turning a failure of the group (a rank died, a timeout) into an
// error that says what this rank was doing.
struct Group {
  c10d::ProcessGroup& pg;
  std::string source;  // the checkpoint, for messages

  int rank() const { return pg.getRank(); }
  int size() const { return pg.getSize(); }

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& doing) {
    try {
      work->wait();
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "safetensors: ", source, ": rank ", rank(), ": the process group failed ",
                  doing, " (another rank died, failed or timed out): ", e.what());
    }
  }

  // Every rank's bytes. Lengths first, then the bytes padded to the longest.
  std::vector<std::string> all_gather(const std::string& bytes, const std::string& doing) {
    at::Tensor length = at::tensor({int64_t(bytes.size())}, at::kLong);
    std::vector<std::vector<at::Tensor>> lengths(1);
    for (int r = 0; r < size(); ++r) lengths[0].push_back(at::empty({1}, at::kLong));
    std::vector<at::Tensor> in{length};
    wait(pg.allgather(lengths, in), doing);
    int64_t longest = 0;
    for (const auto& l : lengths[0]) longest = std::max(longest, l.item<int64_t>());
    at::Tensor padded = at::zeros({std::max<int64_t>(longest, 1)}, at::kByte);
    std::memcpy(padded.data_ptr(), bytes.data(), bytes.size());
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < size(); ++r) out[0].push_back(at::empty_like(padded));
    std::vector<at::Tensor> in_bytes{padded};
    wait(pg.allgather(out, in_bytes), doing);
    std::vector<std::string> result;
    for (int r = 0; r < size(); ++r) {
      const int64_t n = lengths[0][r].item<int64_t>();
      result.emplace_back(static_cast<const char*>(out[0][r].data_ptr()), size_t(n));
    }
    return result;
  }

  // Runs `step` here and makes every rank fail if any did: the first failure's message, naming
  // its rank, on all of them; a BudgetError stays one (its figures are that rank's), so every
  // rank raises MemoryBudgetError in Python.
  template <typename F>
  void together(const std::string& doing, F&& step) {
    Writer failure;  // nothing: success; else the message, then a budget error's fields
    try {
      step();
    } catch (const BudgetError& e) {
      failure.str(e.what_without_backtrace());
      failure.str(e.memory());
      failure.i64(int64_t(e.needed()));
      failure.i64(int64_t(e.budget()));
      failure.str(e.largest());
      failure.i64(int64_t(e.largest_bytes()));
    } catch (const c10::Error& e) {
      failure.str(e.what_without_backtrace());
    } catch (const std::exception& e) {
      failure.str(e.what());
    }
    const auto all = all_gather(failure.take(), doing);
    for (int r = 0; r < size(); ++r) {
      if (all[r].empty()) continue;
      Reader theirs(all[r]);
      const std::string message =
          "safetensors: rank " + std::to_string(r) + " failed " + doing + ": " + theirs.str();
      if (theirs.done()) TORCH_CHECK(false, message);
      std::string memory = theirs.str();
      const auto needed = uint64_t(theirs.i64()), budget = uint64_t(theirs.i64());
      std::string largest = theirs.str();
      const auto largest_bytes = uint64_t(theirs.i64());
      throw BudgetError(std::move(memory), needed, budget, std::move(largest), largest_bytes,
                        message);
    }
  }

  void broadcast(at::Tensor& t, int64_t root, const std::string& doing) {
    std::vector<at::Tensor> tensors{t};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    wait(pg.broadcast(tensors, options), doing);
  }
  std::string broadcast(const std::string& bytes, int64_t root, const std::string& doing) {
    at::Tensor length = at::tensor({int64_t(bytes.size())}, at::kLong);
    broadcast(length, root, doing);
    at::Tensor data = at::empty({std::max<int64_t>(length.item<int64_t>(), 1)}, at::kByte);
    if (rank() == root) std::memcpy(data.data_ptr(), bytes.data(), bytes.size());
    broadcast(data, root, doing);
    return std::string(static_cast<const char*>(data.data_ptr()), size_t(length.item<int64_t>()));
  }
};

RankLoad single_reader(const std::string& path, const ShardPlan& plan, Group& group,
                       int64_t world_size, const LoadOptions& options, int64_t source_rank) {
  const bool reader = group.rank() == source_rank;
  std::optional<Checkpoint> checkpoint;
  std::string description;
  group.together("opening " + path, [&] {
    if (!reader) return;
    checkpoint.emplace(path, options);
    Writer w;
    for (const std::string& name : checkpoint->keys()) {
      const detail::Located tensor = detail::locate(*checkpoint, name);
      write_piece(w, Piece{name, adapters::torch_sizes(*tensor.info, tensor.file->name()), {}},
                  detail::loaded_dtype(tensor.info->scalar_type(), options));
    }
    description = w.take();
  });
  description = group.broadcast(description, source_rank, "sending the checkpoint's layout");
  std::vector<TensorShape> tensors;
  std::map<std::string, c10::ScalarType> dtypes;
  Reader r(description);
  while (!r.done()) {
    auto [piece, dtype] = read_piece(r);
    dtypes[piece.name] = dtype;
    tensors.push_back({piece.name, piece.full_sizes});
  }
  // Every rank's pieces (the reader sends them all; each rank needs its own).
  std::vector<std::map<std::string, Piece>> pieces_of(world_size);
  RankLoad out;
  group.together("planning", [&] {
    std::vector<std::string> names;
    for (const auto& t : tensors) names.push_back(t.name);
    distributed::check_names(names, plan, path, &out.warnings);
    for (int64_t rank = 0; rank < world_size; ++rank) {
      const auto layout = distributed::rank_layout(plan, rank, world_size, path);
      std::vector<TensorShape> on_stage;
      for (const auto& t : tensors)
        if (distributed::on_rank(plan, layout, t.name)) on_stage.push_back(t);
      for (Piece& piece : distributed::split_pieces(on_stage, plan, layout, path)) {
        pieces_of[rank].emplace(piece.name, std::move(piece));
      }
    }
  });
  const auto on_device = at::TensorOptions().device(options.target_device());
  for (size_t t = 0; t < tensors.size(); ++t) {
    const std::string& name = tensors[t].name;
    const std::string doing = "sending tensor '" + name + "'";
    std::vector<const Piece*> holders(world_size, nullptr);
    bool everyone_whole = true;
    for (int64_t rank = 0; rank < world_size; ++rank) {
      auto it = pieces_of[rank].find(name);
      if (it != pieces_of[rank].end()) holders[rank] = &it->second;
      everyone_whole = everyone_whole && holders[rank] && holders[rank]->whole();
    }
    const Piece* mine = holders[group.rank()];
    at::Tensor received;
    if (everyone_whole) {  // one read, one broadcast
      if (reader) {
        received = load_pieces(*checkpoint, {*mine}).begin()->value();
        out.tensor_bytes += received.nbytes();
      } else {
        received = at::empty(mine->sizes(), on_device.dtype(dtypes[name]));
      }
      group.broadcast(received, source_rank, doing);
    } else if (reader) {
      std::vector<c10::intrusive_ptr<c10d::Work>> sends;
      std::vector<at::Tensor> in_flight;
      for (int64_t rank = 0; rank < world_size; ++rank) {
        if (!holders[rank]) continue;
        at::Tensor piece = load_pieces(*checkpoint, {*holders[rank]}).begin()->value();
        out.tensor_bytes += piece.nbytes();
        if (rank == source_rank) {
          received = piece;
          continue;
        }
        in_flight.push_back(piece.contiguous());
        std::vector<at::Tensor> one{in_flight.back()};
        sends.push_back(group.pg.send(one, int(rank), int(t)));
      }
      for (const auto& work : sends) group.wait(work, doing);
    } else if (mine) {
      received = at::empty(mine->sizes(), on_device.dtype(dtypes[name]));
      std::vector<at::Tensor> one{received};
      group.wait(group.pg.recv(one, int(source_rank), int(t)), "receiving tensor '" + name + "'");
    }
    if (mine) {
      out.pieces.push_back(*mine);
      out.tensors.insert(name, std::move(received));
    }
  }
  if (reader) {
    std::vector<std::string> read;  // every rank's pieces, read here
    for (const auto& pieces : pieces_of)
      for (const auto& [name, piece] : pieces) read.push_back(name);
    out.header_bytes = distributed::header_bytes(*checkpoint, read);
  }
  return out;
}

}  // namespace

RankLoad load_for_rank(const std::string& path, const ShardPlan& plan, c10d::ProcessGroup& pg,
                       const LoadOptions& options, const CollectiveOptions& collective) {
  Group group{pg, path};
  const int64_t world_size = collective.world_size < 0 ? group.size() : collective.world_size;
  // Agreement first: world size, plan, reader.
  Writer w;
  w.i64(world_size);
  w.i64(collective.single_reader ? collective.source_rank : -1);
  w.str(plan.to_string());
  const std::string mine = w.take();
  const auto all = group.all_gather(mine, "checking that the ranks agree");
  std::string worlds;  // "rank 0: 2, rank 1: 3"
  bool worlds_agree = true;
  for (int r = 0; r < group.size(); ++r) {
    const int64_t their_world = Reader(all[r]).i64();
    worlds += (r ? ", rank " : "rank ") + std::to_string(r) + ": " + std::to_string(their_world);
    worlds_agree = worlds_agree && their_world == group.size();
  }
  TORCH_CHECK(worlds_agree, "safetensors: ", path, ": the ranks load for world sizes ", worlds,
              ", but the process group has ", group.size(), " ranks");
  for (int r = 0; r < group.size(); ++r) {
    Reader theirs(all[r]);
    theirs.i64();
    const int64_t their_reader = theirs.i64();
    const std::string their_plan = theirs.str();
    TORCH_CHECK(their_plan == plan.to_string(), "safetensors: ", path, ": rank ", r,
                " has another shard plan than rank ", group.rank(), ":\n", their_plan, "expected\n",
                plan.to_string());
    TORCH_CHECK(all[r] == mine, "safetensors: ", path, ": rank ", r, " reads with source rank ",
                their_reader, " (-1: every rank reads), rank ", group.rank(), " with ",
                collective.single_reader ? collective.source_rank : -1);
  }
  if (collective.single_reader) {
    TORCH_CHECK(collective.source_rank >= 0 && collective.source_rank < world_size,
                "safetensors: ", path, ": source rank ", collective.source_rank, " is outside [0, ",
                world_size, ")");
    return single_reader(path, plan, group, world_size, options, collective.source_rank);
  }
  // The plan step first, on every rank: a load that does not fit a rank's budgets fails them all
  // before any of them allocates or reads tensor bytes.
  std::optional<Checkpoint> checkpoint;
  group.together("planning the memory of its pieces of " + path, [&] {
    checkpoint.emplace(path, options);
    detail::check_budgets(estimate_for_rank(*checkpoint, plan, group.rank(), world_size), options,
                          checkpoint->index_path() ? *checkpoint->index_path() : path,
                          "the rank's load");
  });
  RankLoad out;
  group.together("loading its pieces of " + path,
                 [&] { out = load_for_rank(*checkpoint, plan, group.rank(), world_size); });
  return out;
}

TensorDict all_gather_tensors(const RankLoad& mine, c10d::ProcessGroup& pg) {
  Group group{pg, "all_gather_tensors"};
  Writer w;
  for (const Piece& piece : mine.pieces)
    write_piece(w, piece, mine.tensors[piece.name].scalar_type());
  const auto all = group.all_gather(w.take(), "exchanging piece layouts");
  // name → per rank: the piece and its dtype; names in order of first appearance.
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::optional<std::pair<Piece, c10::ScalarType>>>> layout;
  for (int r = 0; r < group.size(); ++r) {
    Reader reader(all[r]);
    while (!reader.done()) {
      auto piece = read_piece(reader);
      auto& ranks = layout[piece.first.name];
      if (ranks.empty()) {
        ranks.resize(group.size());
        order.push_back(piece.first.name);
      }
      ranks[r] = std::move(piece);
    }
  }
  const c10::Device device =
      mine.tensors.is_empty() ? c10::Device(c10::kCPU) : mine.tensors.begin()->value().device();
  TensorDict out;
  for (const std::string& name : order) {
    const auto& ranks = layout[name];
    std::vector<Piece> pieces(group.size());
    std::vector<at::Tensor> tensors(group.size());
    for (int r = 0; r < group.size(); ++r) {
      if (!ranks[r]) continue;
      pieces[r] = ranks[r]->first;
      tensors[r] = r == group.rank()
                       ? mine.tensors[name].contiguous()
                       : at::empty(pieces[r].sizes(),
                                   at::TensorOptions().device(device).dtype(ranks[r]->second));
      group.broadcast(tensors[r], r, "gathering tensor '" + name + "'");
    }
    out.insert(name, assemble(pieces, tensors));
  }
  return out;
}

namespace {

// The save's exchange over the group: its allgather, failures naming what the rank was doing.
class GroupExchange : public distributed::Exchange {
 public:
  GroupExchange(c10d::ProcessGroup& pg, const std::string& directory) : group_{pg, directory} {}
  int rank() const override { return group_.rank(); }
  int size() const override { return group_.size(); }
  std::vector<std::string> all_gather(const std::string& bytes, const std::string& doing) override {
    return group_.all_gather(bytes, doing);
  }

 private:
  Group group_;
};

}  // namespace

SaveReport save_sharded(const std::vector<LocalShard>& shards, const std::string& directory,
                        c10d::ProcessGroup& group, const ShardOptions& options) {
  GroupExchange exchange(group, directory);
  return distributed::save_from_ranks(shards, directory, exchange, options);
}

}  // namespace torch::safetensors
