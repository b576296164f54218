// The common part of torch_safetensors._C's bindings: argument converters (str/dict/tuple ->
// std::string/Metadata/SaveEntry, TensorDict -> dict), the error translation (c10::Error ->
// SafetensorError & co, OSError -> Python's OSError) and each feature's bind_* function, which
// module.cpp calls. The bindings only adapt types and errors; every rule is the C++ core's.
#pragma once

#include <pybind11/pybind11.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torch_safetensors/all.h"

namespace torch::safetensors::python {

namespace py = pybind11;
namespace ts = torch::safetensors;

// Creates torch_safetensors.SafetensorError (as m.SafetensorError) and registers the translation
// of core errors into Python exceptions.
void bind_errors(py::module_& m);

// "mmap" / "pread" -> Backend; ValueError for anything else.
Backend parse_backend(const std::string& name);
std::string_view backend_name(Backend backend);

// The name of obj's type, for TypeError messages.
std::string type_name(py::handle obj);

// Like the reference's argument extraction: only real str objects, else TypeError.
std::string as_str(py::handle obj, const char* what);

// None -> no __metadata__; a dict (even empty) -> written as is, like the reference.
std::optional<Metadata> to_metadata(py::handle obj);

// A SaveReport as the dict the Python SaveReport (torch_safetensors._save) is made from.
py::dict report_dict(const SaveReport& report);

// A list of (name, value): value is a torch.Tensor, or a (dtype, shape, bytes) tuple for raw
// bytes (torch_safetensors.RawTensor).
std::vector<SaveEntry> to_entries(const py::list& items);

// A list of (name, torch.Tensor): a state dict's items.
NamedTensors to_named(const py::list& items);

py::dict to_dict(const TensorDict& tensors);

std::string dtype_str(Dtype dtype);

LoadOptions load_options(const std::string& backend, at::Device device,
                         std::optional<at::ScalarType> dtype, bool populate, uint64_t staging_bytes,
                         bool always_stage);

// [(names, the name kept or None)], for adapters::SharedNames and ModuleLoadPlan::TiedGroup.
template <typename Group>
py::list names_and_keep(const std::vector<Group>& groups) {
  py::list out;
  for (const auto& group : groups) {
    out.append(py::make_tuple(group.names, group.keep ? py::cast(*group.keep) : py::none()));
  }
  return out;
}

// One per feature, in the file of that name.
void bind_file(py::module_& m);         // LoadOptions, Checkpoint, File, check_device
void bind_save(py::module_& m);         // save_file, save_sharded, to/from bytes, tie rules
void bind_model(py::module_& m);        // ModuleLoad (the module-load plan and report)
void bind_cli(py::module_& m);          // cli_main
void bind_quant(py::module_& m);        // quant_*: layouts, dequantize, quantize
void bind_distributed(py::module_& m);  // shard plans, load_for_rank, the c10d collectives
void bind_executorch(py::module_& m);   // .ptd files
void bind_coverage(py::module_& m);     // DCP chunk placement and coverage
void bind_aoti(py::module_& m);         // AOTInductor packages' constants
void bind_convert(py::module_& m);      // torch checkpoints: read and convert

}  // namespace torch::safetensors::python
