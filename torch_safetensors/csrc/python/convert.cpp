// torch_safetensors.convert's binding: torch checkpoints (torch.save, torch::save, TorchScript)
// read by the restricted unpickler and converted (convert.h). Only arguments and results are
// adapted here; what is read, skipped and refused is the core's.
#include "python/common.h"

#include <pybind11/stl.h>

#include "torch_safetensors/convert.h"

namespace torch::safetensors::python {
namespace {

ts::ExtractOptions extract_options(const std::string& key, bool strict, bool metadata_scalars) {
  ts::ExtractOptions options;
  options.key = key;
  options.strict = strict;
  options.metadata_scalars = metadata_scalars;
  return options;
}

py::list skipped_list(const std::vector<ts::SkippedValue>& skipped) {
  py::list out;
  for (const ts::SkippedValue& value : skipped) out.append(py::make_tuple(value.path, value.type));
  return out;
}

}  // namespace

void bind_convert(py::module_& m) {
  m.def(
      "read_torch_checkpoint",
      [](const std::string& path, const std::string& key, bool strict, bool metadata_scalars) {
        ts::TorchCheckpoint contents;
        {
          py::gil_scoped_release release;
          contents =
              ts::read_torch_checkpoint(path, extract_options(key, strict, metadata_scalars));
        }
        py::dict tensors;
        for (const auto& [name, tensor] : contents.tensors) tensors[py::str(name)] = tensor;
        return py::make_tuple(tensors, skipped_list(contents.skipped), contents.scalars);
      },
      py::arg("path"), py::arg("key"), py::arg("strict"), py::arg("metadata_scalars"));
  m.def(
      "convert_torch_checkpoint",
      [](const std::string& from, const std::string& to, const std::string& key, bool strict,
         bool metadata_scalars, std::optional<uint64_t> max_shard_size,
         std::optional<at::ScalarType> dtype, py::object metadata, bool durable) {
        ts::ConvertOptions options;
        static_cast<ts::ExtractOptions&>(options) = extract_options(key, strict, metadata_scalars);
        options.max_shard_size = max_shard_size;
        options.dtype = dtype;
        options.metadata = to_metadata(metadata);
        options.durable = durable;
        ts::ConvertReport report;
        {
          py::gil_scoped_release release;
          report = ts::convert_torch_checkpoint(from, to, options);
        }
        py::dict out;
        out["tensors_read"] = report.tensors_read;
        out["tensors_written"] = report.tensors_written;
        out["bytes_written"] = report.bytes_written;
        out["files"] = report.files;
        out["skipped"] = skipped_list(report.skipped);
        out["metadata_scalars"] = report.metadata_scalars;
        return out;
      },
      py::arg("source"), py::arg("destination"), py::arg("key"), py::arg("strict"),
      py::arg("metadata_scalars"), py::arg("max_shard_size"), py::arg("dtype"), py::arg("metadata"),
      py::arg("durable"));
}

}  // namespace torch::safetensors::python
