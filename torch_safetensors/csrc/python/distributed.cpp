// torch_safetensors._C: the binding of shard plans, load_for_rank and the c10d collectives
// (distributed.h, distributed_c10d.h), registered by module.cpp. A process group comes in as the
// object torch.distributed made (torch registers c10d::ProcessGroup with pybind11; this extension
// shares its types).
#include <pybind11/stl.h>
#include <torch/extension.h>

#include "distributed/save_plan.h"
#include "python/common.h"
#include "torch_safetensors/distributed.h"
#include "torch_safetensors/distributed_c10d.h"

namespace py = pybind11;
namespace ts = torch::safetensors;

namespace {

ts::ShardPlan make_plan(
    const std::vector<std::pair<std::string, std::string>>& patterns,
    const std::vector<std::tuple<std::string, int64_t, std::vector<std::pair<int64_t, int64_t>>>>&
        tensors,
    const std::optional<std::vector<std::pair<int64_t, int64_t>>>& stages,
    const std::string& layers, const std::optional<std::vector<std::string>>& first_stage,
    bool strict,
    const std::optional<std::tuple<int64_t, int64_t, std::string, std::vector<std::vector<int64_t>>,
                                   std::string>>& experts) {
  ts::ShardPlan plan;
  for (const auto& [pattern, rule] : patterns)
    plan.patterns.push_back({pattern, ts::ShardRule::parse(rule)});
  for (const auto& [name, dim, ranges] : tensors)
    plan.tensors.push_back({name, ts::TensorSplit{dim, ranges}});
  if (stages) {
    ts::PipelinePlan pipeline;
    pipeline.layers = layers;
    pipeline.stages = *stages;
    if (first_stage) pipeline.first_stage = *first_stage;
    plan.pipeline = std::move(pipeline);
  }
  plan.strict = strict;
  if (experts) {
    const auto& [count, ep_size, placement, assignment, segment] = *experts;
    ts::ExpertPlan e;
    e.num_experts = count;
    e.ep_size = ep_size;
    e.placement = ts::ExpertPlan::parse_placement(placement);
    e.assignment = assignment;
    e.segment = segment;
    plan.experts = std::move(e);
  }
  return plan;
}

// Runs `load` without the GIL; its TORCH_WARNs (a pattern that matches nothing) become Python
// UserWarnings, as torch's own bindings do, instead of lines on stderr.
template <typename F>
ts::RankLoad with_python_warnings(F&& load) {
  torch::PyWarningHandler handler;
  try {
    py::gil_scoped_release release;
    return load();
  } catch (...) {
    handler.set_in_exception();
    throw;
  }
}

}  // namespace

namespace torch::safetensors::python {

namespace {

// A saving entry from Python: name, local chunk (a meta tensor: none here), global sizes,
// offsets.
using ChunkEntry = std::tuple<std::string, at::Tensor, std::vector<int64_t>, std::vector<int64_t>>;

std::vector<ts::LocalShard> local_shards(const std::vector<ChunkEntry>& entries) {
  std::vector<ts::LocalShard> shards;
  shards.reserve(entries.size());
  for (const auto& [name, tensor, global, offsets] : entries) {
    if (tensor.is_meta()) {
      ts::LocalShard shard;
      shard.name = name;
      shard.global_sizes = global;
      shard.offsets = offsets;
      shard.dtype = tensor.scalar_type();
      shards.push_back(std::move(shard));
    } else {
      shards.emplace_back(name, tensor, global, offsets);
    }
  }
  return shards;
}

ts::ShardOptions shard_options(uint64_t max_shard_size, std::string filename_pattern,
                               py::handle metadata, bool remove_stale, bool durable) {
  ts::ShardOptions options;
  options.with_max_shard_size(max_shard_size).with_filename_pattern(std::move(filename_pattern));
  options.metadata = to_metadata(metadata);
  options.remove_stale = remove_stale;
  options.durable = durable;
  return options;
}

}  // namespace

void bind_distributed(py::module_& m) {
  py::class_<ts::ShardPlan>(m, "ShardPlan")
      .def(py::init(&make_plan), py::arg("patterns"), py::arg("tensors"), py::arg("stages"),
           py::arg("layers"), py::arg("first_stage"), py::arg("strict"),
           py::arg("experts") = py::none())
      .def("__str__", &ts::ShardPlan::to_string);
  m.def(
      "even_stages",
      [](int64_t layers, int64_t stages) { return ts::PipelinePlan::even(layers, stages).stages; },
      py::arg("num_layers"), py::arg("num_stages"));

  py::class_<ts::DimSplit>(m, "DimSplit")
      .def(py::init([](int64_t dim, std::vector<std::pair<int64_t, int64_t>> ranges) {
             return ts::DimSplit{dim, std::move(ranges)};
           }),
           py::arg("dim"), py::arg("ranges"))
      .def_readonly("dim", &ts::DimSplit::dim)
      .def_readonly("ranges", &ts::DimSplit::ranges);
  py::class_<ts::Piece>(m, "Piece")
      .def(py::init([](std::string name, std::vector<int64_t> full_sizes,
                       std::vector<ts::DimSplit> splits) {
             return ts::Piece{std::move(name), std::move(full_sizes), std::move(splits)};
           }),
           py::arg("name"), py::arg("full_sizes"), py::arg("splits"))
      .def_readonly("name", &ts::Piece::name)
      .def_readonly("full_sizes", &ts::Piece::full_sizes)
      .def_readonly("splits", &ts::Piece::splits)
      .def("sizes", &ts::Piece::sizes)
      .def("whole", &ts::Piece::whole);
  py::class_<ts::RankLoad>(m, "RankLoad")
      .def_property_readonly("tensors", [](const ts::RankLoad& r) { return to_dict(r.tensors); })
      .def_readonly("pieces", &ts::RankLoad::pieces)
      .def_readonly("tensor_bytes", &ts::RankLoad::tensor_bytes)
      .def_readonly("header_bytes", &ts::RankLoad::header_bytes)
      .def_readonly("warnings", &ts::RankLoad::warnings)
      .def_readonly("memory", &ts::RankLoad::memory);

  m.def(
      "plan_for_rank",
      [](const std::vector<std::pair<std::string, std::vector<int64_t>>>& shapes,
         const ts::ShardPlan& plan, int64_t rank, int64_t world_size) {
        std::vector<ts::TensorShape> tensors;
        for (const auto& [name, sizes] : shapes) tensors.push_back({name, sizes});
        return ts::plan_for_rank(tensors, plan, rank, world_size, "shard plan");
      },
      py::arg("shapes"), py::arg("plan"), py::arg("rank"), py::arg("world_size"));
  m.def(
      "load_for_rank",
      [](const ts::Checkpoint& c, const ts::ShardPlan& plan, int64_t rank, int64_t world_size) {
        return with_python_warnings([&] { return ts::load_for_rank(c, plan, rank, world_size); });
      },
      py::arg("checkpoint"), py::arg("plan"), py::arg("rank"), py::arg("world_size"));
  m.def("estimate_for_rank", &ts::estimate_for_rank, py::arg("checkpoint"), py::arg("plan"),
        py::arg("rank"), py::arg("world_size"), py::call_guard<py::gil_scoped_release>(),
        "The plan step of load_for_rank: what the rank's load will allocate on the device and on "
        "the host (staging included), from the headers only.");
  m.def(
      "load_pieces",
      [](const ts::Checkpoint& c, const std::vector<ts::Piece>& pieces) {
        ts::TensorDict out;
        {
          py::gil_scoped_release release;
          out = ts::load_pieces(c, pieces);
        }
        return to_dict(out);
      },
      py::arg("checkpoint"), py::arg("pieces"));
  m.def("assemble", &ts::assemble, py::arg("pieces"), py::arg("tensors"));
  m.def(
      "load_for_rank_group",
      [](const std::string& path, const ts::ShardPlan& plan,
         const c10::intrusive_ptr<c10d::ProcessGroup>& group, const ts::LoadOptions& options,
         int64_t world_size, bool single_reader, int64_t source_rank) {
        ts::CollectiveOptions collective;
        collective.world_size = world_size;
        collective.single_reader = single_reader;
        collective.source_rank = source_rank;
        return with_python_warnings(
            [&] { return ts::load_for_rank(path, plan, *group, options, collective); });
      },
      py::arg("path"), py::arg("plan"), py::arg("group"), py::arg("options"), py::arg("world_size"),
      py::arg("single_reader"), py::arg("source_rank"));
  m.def(
      "all_gather_tensors",
      [](const ts::RankLoad& mine, const c10::intrusive_ptr<c10d::ProcessGroup>& group) {
        ts::TensorDict out;
        {
          py::gil_scoped_release release;
          out = ts::all_gather_tensors(mine, *group);
        }
        return to_dict(out);
      },
      py::arg("mine"), py::arg("group"));

  // Saving from many ranks (distributed_c10d.h's save_sharded): entries are (name, local chunk,
  // global sizes, offsets); a meta tensor stands for a tensor this rank writes nothing of (its
  // dtype is the tensor's). Without a group, one process saves alone.
  m.def(
      "save_sharded_group",
      [](const std::vector<ChunkEntry>& entries, const std::string& directory,
         const std::optional<c10::intrusive_ptr<c10d::ProcessGroup>>& group,
         uint64_t max_shard_size, std::string filename_pattern, py::handle metadata,
         bool remove_stale, bool durable) {
        const ts::ShardOptions options = shard_options(max_shard_size, std::move(filename_pattern),
                                                       metadata, remove_stale, durable);
        const std::vector<ts::LocalShard> shards = local_shards(entries);
        ts::SaveReport report;
        {
          py::gil_scoped_release release;
          if (group && *group) {
            report = ts::save_sharded(shards, directory, **group, options);
          } else {
            ts::distributed::SoloExchange solo;
            report = ts::distributed::save_from_ranks(shards, directory, solo, options);
          }
        }
        return report_dict(report);
      },
      py::arg("entries"), py::arg("directory"), py::arg("group"), py::arg("max_shard_size"),
      py::arg("filename_pattern"), py::arg("metadata"), py::arg("remove_stale"),
      py::arg("durable"));
  // Without a shared file system (distributed.h): a file per rank, then a consolidation.
  m.def(
      "save_rank_file",
      [](const std::vector<ChunkEntry>& entries, const std::string& path, bool durable) {
        const std::vector<ts::LocalShard> shards = local_shards(entries);
        py::gil_scoped_release release;
        ts::save_rank_file(shards, path, durable);
      },
      py::arg("entries"), py::arg("path"), py::arg("durable"));
  m.def(
      "consolidate",
      [](const std::vector<std::string>& rank_files, const std::string& directory,
         uint64_t max_shard_size, std::string filename_pattern, py::handle metadata,
         bool remove_stale, bool durable, unsigned threads) {
        ts::ShardOptions options = shard_options(max_shard_size, std::move(filename_pattern),
                                                 metadata, remove_stale, durable);
        options.threads = threads;
        ts::SaveReport report;
        {
          py::gil_scoped_release release;
          report = ts::consolidate(rank_files, directory, options);
        }
        return report_dict(report);
      },
      py::arg("rank_files"), py::arg("directory"), py::arg("max_shard_size"),
      py::arg("filename_pattern"), py::arg("metadata"), py::arg("remove_stale"), py::arg("durable"),
      py::arg("threads"));
}

}  // namespace torch::safetensors::python
