// torch_safetensors._C's AOTInductor functions (torch_safetensors/aoti.py is the public API): they
// take the loader object torch._inductor.aoti_load_package wraps (torch's own binding of
// AOTIModelPackageLoader) and adapt arguments only; every check is the C++ library's (aoti.h).
#include "python/common.h"

#include <pybind11/stl.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/extension.h>

#include "torch_safetensors/aoti.h"

namespace py = pybind11;
namespace ts = torch::safetensors;
using torch::inductor::AOTIModelPackageLoader;

namespace torch::safetensors::python {
namespace {

// The C++ loader inside torch._C._aoti.AOTIModelPackageLoader. torch binds it as a subclass
// defined in its own .cpp (AOTIModelPackageLoaderPybind, torch/csrc/inductor/aoti_package/
// pybind.cpp: single, non-virtual inheritance) without declaring the base to pybind11, so a
// parameter of the base type does not accept it; the instance's value pointer, found through the
// pybind11 internals torch and this extension share, is the base's.
AOTIModelPackageLoader& loader_of(py::handle object) {
  const py::handle type = py::type::handle_of(object);
  const std::string module = py::str(type.attr("__module__"));
  const std::string name = py::str(type.attr("__name__"));
  const py::detail::type_info* info = py::detail::get_type_info(Py_TYPE(object.ptr()));
  TORCH_CHECK_TYPE(
      info != nullptr && module == "torch._C._aoti" && name == "AOTIModelPackageLoader",
      "expected torch._C._aoti.AOTIModelPackageLoader (what "
      "torch._inductor.aoti_load_package returns holds one as .loader), got ",
      module, ".", name);
  auto* instance = reinterpret_cast<py::detail::instance*>(object.ptr());
  void* value = instance->get_value_and_holder(info).value_ptr();
  TORCH_CHECK_VALUE(value != nullptr, "the AOTIModelPackageLoader is not initialized");
  return *static_cast<AOTIModelPackageLoader*>(value);
}

}  // namespace

void bind_aoti(py::module_& m) {
  m.def(
      "aoti_constants",
      [](py::handle package) {
        py::list out;
        for (const auto& constant : ts::aoti_constants(loader_of(package))) {
          py::dict item;
          item["fqn"] = constant.fqn;
          item["name"] = constant.name;
          item["dtype"] = py::cast(constant.dtype);
          item["nbytes"] = constant.nbytes;
          item["sizes"] = constant.sizes ? py::cast(*constant.sizes) : py::none();
          item["strides"] = constant.strides ? py::cast(*constant.strides) : py::none();
          out.append(item);
        }
        return out;
      },
      py::arg("package"));
  m.def(
      "aoti_load",
      [](py::handle package, const std::string& path, const ts::ModuleLoadOptions& options,
         bool inactive, bool copy, const std::map<std::string, std::string>& aliases) {
        ts::AotiLoadOptions aoti(options);
        aoti.strict = options.strict;
        aoti.inactive = inactive;
        aoti.copy = copy;
        aoti.aliases = aliases;
        AOTIModelPackageLoader& loader = loader_of(package);
        ts::ModuleLoadReport report;
        {
          py::gil_scoped_release release;
          report = ts::load(loader, path, aoti);
        }
        py::list mismatched;
        for (const auto& m : report.mismatched) {
          mismatched.append(py::make_tuple(m.name, m.target_sizes, m.file_sizes));
        }
        return py::make_tuple(report.missing, report.unexpected, mismatched);
      },
      py::arg("package"), py::arg("path"), py::arg("options"), py::arg("inactive"), py::arg("copy"),
      py::arg("aliases"));
  m.def(
      "aoti_swap",
      [](py::handle package) {
        AOTIModelPackageLoader& loader = loader_of(package);
        py::gil_scoped_release release;
        ts::swap_constants(loader);
      },
      py::arg("package"));
}

}  // namespace torch::safetensors::python
