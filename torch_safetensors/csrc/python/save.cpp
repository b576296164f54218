// torch_safetensors._C's saving: save_file, save_sharded and their plans, bytes in and out, and
// the core's save checks and tie rules (adapters/save_item.h, adapters/shared_memory.h).
#include "python/common.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "adapters/save_item.h"
#include "adapters/shared_memory.h"
#include "api/checkpoint_files.h"

namespace torch::safetensors::python {

namespace {

const char* kind_name(ts::adapters::SaveProblemKind kind) {
  using Kind = ts::adapters::SaveProblemKind;
  switch (kind) {
    case Kind::kSparse:
      return "sparse";
    case Kind::kSharedMemory:
      return "shared_memory";
    case Kind::kNonContiguous:
      return "non_contiguous";
    case Kind::kMeta:
      return "meta";
    case Kind::kUnsupportedDtype:
      return "unsupported_dtype";
    case Kind::kFloat4Scalar:
      return "float4_scalar";
  }
  return "unknown";
}

}  // namespace

void bind_save(py::module_& m) {
  m.def(
      "save_sharded",
      [](const py::list& items, const std::string& directory, uint64_t max_shard_size,
         std::string filename_pattern, py::handle metadata, std::unordered_set<std::string> discard,
         bool remove_stale, bool durable, unsigned threads) {
        ts::ShardOptions options;
        options.with_max_shard_size(max_shard_size)
            .with_filename_pattern(std::move(filename_pattern))
            .with_threads(threads);
        options.metadata = to_metadata(metadata);
        options.discard = std::move(discard);
        options.remove_stale = remove_stale;
        options.durable = durable;
        auto named = to_named(items);
        ts::SaveReport report;
        {
          py::gil_scoped_release release;
          report = ts::save_sharded(named, directory, options);
        }
        return report_dict(report);
      },
      py::arg("items"), py::arg("directory"), py::arg("max_shard_size"),
      py::arg("filename_pattern"), py::arg("metadata"), py::arg("discard"), py::arg("remove_stale"),
      py::arg("durable"), py::arg("threads") = 0);
  m.def(
      "plan_shards",
      [](const py::list& items, uint64_t max_shard_size, std::string filename_pattern) {
        ts::ShardOptions options;
        options.with_max_shard_size(max_shard_size)
            .with_filename_pattern(std::move(filename_pattern));
        const ts::ShardSplit split = ts::plan_shards(to_named(items), options);
        return py::make_tuple(split.files, split.total_size);
      },
      py::arg("items"), py::arg("max_shard_size"), py::arg("filename_pattern"),
      "(files: [(file name, [tensor names])], total_size): huggingface_hub's split.");
  m.def("parse_size", &ts::parse_size, py::arg("size"), "huggingface_hub's \"5GB\" → bytes.");

  m.def(
      "save_file",
      [](const py::list& items, const std::string& path, py::handle metadata, bool durable) {
        auto entries = to_entries(items);
        auto md = to_metadata(metadata);
        py::gil_scoped_release release;
        ts::save(entries, ts::SaveTo(path).durable(durable), md);
      },
      py::arg("items"), py::arg("path"), py::arg("metadata"), py::arg("durable"));

  // The files of a sharded checkpoint as save_sharded names and writes them, for writers of their
  // own (the DCP StorageWriter): shard names, the index's bytes, stale files (checkpoint_files.h).
  m.def("shard_file_name", &ts::shard_file_name, py::arg("pattern"), py::arg("index"),
        py::arg("count"), "Shard index (from 0) of count: model-00001-of-00004.safetensors.");
  m.def(
      "write_index",
      [](const std::string& directory, const std::string& pattern,
         std::vector<std::pair<std::string, std::string>> weight_map, uint64_t total_size,
         py::handle metadata, bool durable) {
        ts::format::CheckpointIndex index;
        index.total_size = total_size;
        index.metadata = to_metadata(metadata).value_or(ts::Metadata());
        index.weight_map = std::move(weight_map);
        py::gil_scoped_release release;
        return ts::write_index(directory, pattern, index, durable);
      },
      py::arg("directory"), py::arg("pattern"), py::arg("weight_map"), py::arg("total_size"),
      py::arg("metadata"), py::arg("durable"),
      "Writes huggingface_hub's index (save_sharded's bytes) atomically; returns its file name.");
  m.def("remove_stale_files", &ts::remove_stale_files, py::arg("directory"), py::arg("pattern"),
        py::arg("written"), py::arg("durable"),
        "Removes files of an earlier save with pattern that are not in written.");

  m.def(
      "save_bytes",
      [](const py::list& items, py::handle metadata) {
        auto entries = to_entries(items);
        auto md = to_metadata(metadata);
        std::string out;
        {
          py::gil_scoped_release release;
          out = ts::to_bytes(entries, md);
        }
        return py::bytes(out);
      },
      py::arg("items"), py::arg("metadata"));

  m.def(
      "load_bytes",
      [](const py::bytes& data) {
        char* buffer = nullptr;
        Py_ssize_t size = 0;
        if (PyBytes_AsStringAndSize(data.ptr(), &buffer, &size) != 0) throw py::error_already_set();
        ts::TensorDict tensors;
        {
          // `data` is immutable and referenced by the caller for the whole call.
          py::gil_scoped_release release;
          tensors = ts::from_bytes(std::string_view(buffer, static_cast<size_t>(size)));
        }
        return to_dict(tensors);
      },
      py::arg("data"));

  m.def(
      "save_problem",
      [](const py::list& items, bool allow_non_contiguous) -> py::object {
        ts::NamedTensors tensors;
        for (auto& entry : to_entries(items)) {
          tensors.emplace_back(std::move(entry.name),
                               entry.raw ? entry.raw->bytes : std::move(entry.tensor));
        }
        const auto problem = ts::adapters::find_save_problem(
            tensors, ts::adapters::SaveRules().with_allow_non_contiguous(allow_non_contiguous));
        if (!problem) return py::none();
        return py::make_tuple(kind_name(problem->kind), problem->names);
      },
      py::arg("items"), py::arg("allow_non_contiguous"),
      "Why saving these (name, tensor) items is refused, as (kind, groups of names), or None: the "
      "C++ core's checks in the reference's order (adapters/save_item.h).");

  m.def(
      "memory_groups",
      [](const py::list& items) {
        const auto tensors = to_named(items);
        std::vector<std::vector<std::string>> out;
        for (const auto& group : ts::adapters::memory_groups(tensors)) {
          out.emplace_back();
          for (size_t i : group) out.back().push_back(tensors[i].first);
        }
        return out;
      },
      py::arg("items"),
      "Names grouped by the memory their tensors share, in the reference's order "
      "(adapters/shared_memory.h).");

  m.def(
      "kept_names",
      [](const py::list& items, const std::unordered_set<std::string>& preferred,
         const std::unordered_set<std::string>& discard) {
        return names_and_keep(ts::adapters::choose_kept_names(to_named(items), preferred, discard));
      },
      py::arg("items"), py::arg("preferred"), py::arg("discard"),
      "The tie policy: for each memory group, (sorted names, the name kept or None when none "
      "covers the storage).");

  m.def("covers_storage", &ts::adapters::covers_storage, py::arg("tensor"),
        "Whether the tensor's elements are exactly its whole storage.");
  m.def(
      "end_ptr", [](const at::Tensor& t) { return ts::adapters::byte_extent(t).second; },
      py::arg("tensor"), "One past the last byte the tensor's elements span.");
}

}  // namespace torch::safetensors::python
