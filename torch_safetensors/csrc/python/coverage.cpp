// DCP chunk placement and coverage (distributed/coverage.h) for torch_safetensors.distributed._dcp, which
// raises ValueError for a checkpoint's bad metadata as torch's DCP readers do.
#include <pybind11/stl.h>

#include <c10/util/Exception.h>

#include "distributed/coverage.h"
#include "python/common.h"

namespace py = pybind11;

namespace torch::safetensors::python {
namespace {

template <typename F>
auto as_value_error(F&& f) {
  try {
    return f();
  } catch (const c10::Error& error) {
    throw py::value_error(error.what_without_backtrace());
  }
}

}  // namespace

void bind_coverage(py::module_& m) {
  m.def(
      "dcp_sharding_info",
      [](const std::string& json, const std::string& file) {
        return as_value_error([&] { return distributed::parse_sharding_info(json, file); });
      },
      py::arg("json"), py::arg("file"),
      "tensor -> saved_offsets from a file's DCP_SHARDING_INFO metadata (ValueError if bad).");
  m.def(
      "dcp_check_coverage",
      [](const std::string& tensor,
         const std::vector<std::tuple<std::string, std::vector<int64_t>, std::vector<int64_t>>>&
             chunks) {
        std::vector<distributed::StoredChunk> stored;
        stored.reserve(chunks.size());
        for (const auto& [file, offsets, sizes] : chunks) stored.push_back({file, offsets, sizes});
        return as_value_error([&] { return distributed::check_coverage(tensor, stored); });
      },
      py::arg("tensor"), py::arg("chunks"),
      "The global shape of `tensor` from its (file, offsets, sizes) chunks, after checking that "
      "they cover it exactly once (ValueError naming the file and the tensor if not).");
}

}  // namespace torch::safetensors::python
