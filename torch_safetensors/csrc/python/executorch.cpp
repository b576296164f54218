// torch_safetensors._C's .ptd functions (torch_safetensors/executorch.py is the public API): they
// adapt arguments only; reading, writing and checking are the C++ library's (executorch.h).
#include "python/common.h"

#include <pybind11/stl.h>
#include <torch/extension.h>

#include "torch_safetensors/executorch.h"

namespace py = pybind11;
namespace ts = torch::safetensors;

namespace torch::safetensors::python {
namespace {

ts::PtdOptions ptd_options(const std::string& strip_prefix,
                           const std::unordered_map<std::string, std::string>& rename,
                           uint64_t alignment) {
  ts::PtdOptions options;
  options.strip_prefix = strip_prefix;
  options.rename = rename;
  options.alignment = alignment;
  return options;
}

py::dict info_dict(const ts::PtdTensorInfo& info) {
  py::dict out;
  out["dtype"] = std::string(ts::dtype_name(info.dtype));
  out["executorch_scalar_type"] = info.executorch_scalar_type;
  out["sizes"] = info.sizes;
  out["dim_order"] = std::vector<int>(info.dim_order.begin(), info.dim_order.end());
  out["has_layout"] = info.has_layout;
  out["segment"] = info.segment;
  out["offset"] = info.offset;
  out["nbytes"] = info.nbytes;
  return out;
}

}  // namespace

void bind_executorch(py::module_& m) {
  m.def(
      "save_ptd",
      [](const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& path,
         const std::string& strip_prefix,
         const std::unordered_map<std::string, std::string>& rename, uint64_t alignment) {
        const ts::PtdOptions options = ptd_options(strip_prefix, rename, alignment);
        py::gil_scoped_release release;
        ts::save_ptd(tensors, path, options);
      },
      py::arg("tensors"), py::arg("path"), py::arg("strip_prefix"), py::arg("rename"),
      py::arg("alignment"));
  m.def(
      "save_ptd_from_checkpoint",
      [](const std::string& checkpoint, const std::string& path, const std::string& strip_prefix,
         const std::unordered_map<std::string, std::string>& rename, uint64_t alignment) {
        const ts::PtdOptions options = ptd_options(strip_prefix, rename, alignment);
        py::gil_scoped_release release;
        const ts::Checkpoint source(checkpoint);
        ts::save_ptd(source, path, options);
        return source.size();
      },
      py::arg("checkpoint"), py::arg("path"), py::arg("strip_prefix"), py::arg("rename"),
      py::arg("alignment"));
  m.def(
      "load_ptd",
      [](const std::string& path) {
        std::vector<std::pair<std::string, at::Tensor>> out;
        {
          py::gil_scoped_release release;
          for (const auto& item : ts::load_ptd(path)) out.emplace_back(item.key(), item.value());
        }
        return out;
      },
      py::arg("path"));
  m.def(
      "ptd_info",
      [](const std::string& path) {
        const ts::PtdFile ptd(path);
        py::dict out;
        for (const std::string& key : ptd.keys()) out[py::str(key)] = info_dict(ptd.info(key));
        return out;
      },
      py::arg("path"));
  m.def(
      "ptd_to_safetensors",
      [](const std::string& ptd, const std::string& path,
         const std::optional<ts::Metadata>& metadata) {
        py::gil_scoped_release release;
        return ts::ptd_to_safetensors(ptd, path, metadata);
      },
      py::arg("ptd"), py::arg("path"), py::arg("metadata"));
}

}  // namespace torch::safetensors::python
