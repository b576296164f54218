// torch_safetensors._C's module loading: ModuleLoad, the C++ ModuleLoadPlan (its report and ties,
// then apply).
#include "python/common.h"

#include <pybind11/stl.h>

#include <string>
#include <utility>

namespace torch::safetensors::python {

void bind_model(py::module_& m) {
  py::class_<ts::ModuleLoadPlan>(m, "ModuleLoad")
      .def(py::init([](const py::list& targets, const ts::Checkpoint& checkpoint) {
             auto named = to_named(targets);
             py::gil_scoped_release release;
             return ts::ModuleLoadPlan(std::move(named), checkpoint);
           }),
           py::arg("targets"), py::arg("checkpoint"))
      .def(py::init([](const py::list& targets, const std::string& path,
                       const ts::LoadOptions& options) {
             auto named = to_named(targets);
             py::gil_scoped_release release;
             return ts::ModuleLoadPlan(std::move(named), ts::Checkpoint(path, options));
           }),
           py::arg("targets"), py::arg("path"), py::arg("options"))
      .def_property_readonly("missing",
                             [](const ts::ModuleLoadPlan& p) { return p.report().missing; })
      .def_property_readonly("unexpected",
                             [](const ts::ModuleLoadPlan& p) { return p.report().unexpected; })
      .def_property_readonly("mismatched",
                             [](const ts::ModuleLoadPlan& p) {
                               py::list out;
                               for (const auto& m : p.report().mismatched) {
                                 out.append(py::make_tuple(m.name, m.target_sizes, m.file_sizes));
                               }
                               return out;
                             })
      .def_property_readonly("tied_conflicts",
                             [](const ts::ModuleLoadPlan& p) { return p.report().tied_conflicts; })
      .def_property_readonly("loaded_names", &ts::ModuleLoadPlan::loaded_names)
      .def_property_readonly("checkpoint", &ts::ModuleLoadPlan::checkpoint)
      .def_property_readonly("ties",
                             [](const ts::ModuleLoadPlan& p) { return names_and_keep(p.ties()); })
      .def("apply", &ts::ModuleLoadPlan::apply, py::call_guard<py::gil_scoped_release>());
}

}  // namespace torch::safetensors::python
