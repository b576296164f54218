// torch_safetensors._C's lazy handles: File (one .safetensors file) and Checkpoint (a file, an
// index or a directory), and LoadOptions.
#include "python/common.h"

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "adapters/load_tensor.h"

namespace torch::safetensors::python {

using at::indexing::TensorIndex;

namespace {

// An int that torch would use as an index; nullopt for anything else (bool included: torch
// indexes with a bool differently).
std::optional<int64_t> exact_int(py::handle obj) {
  if (!PyLong_Check(obj.ptr()) || PyBool_Check(obj.ptr())) return std::nullopt;
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(obj.ptr(), &overflow);
  if (overflow != 0) return std::nullopt;
  return static_cast<int64_t>(v);
}

std::optional<TensorIndex> simple_index(py::handle obj) {
  if (obj.ptr() == Py_Ellipsis) return TensorIndex(at::indexing::Ellipsis);
  if (obj.is_none()) return TensorIndex(at::indexing::None);
  if (PyBool_Check(obj.ptr())) return TensorIndex(obj.ptr() == Py_True);
  if (auto i = exact_int(obj)) return TensorIndex(*i);
  if (PySlice_Check(obj.ptr())) {
    auto* s = reinterpret_cast<PySliceObject*>(obj.ptr());
    std::optional<c10::SymInt> parts[3];
    PyObject* fields[3] = {s->start, s->stop, s->step};
    for (int k = 0; k < 3; ++k) {
      if (fields[k] == Py_None) continue;
      auto v = exact_int(fields[k]);
      if (!v) return std::nullopt;
      parts[k] = c10::SymInt(*v);
    }
    return TensorIndex(at::indexing::Slice(parts[0], parts[1], parts[2]));
  }
  return std::nullopt;
}

// The index as TensorIndex items when it consists only of ints, slices of ints, `...`, None and
// bools (alone or in a tuple). Anything else (lists, tensors, numpy scalars) gives nullopt: the
// Python layer then applies torch's own indexing to the whole (zero-copy) tensor, which is what
// the reference does for every index.
std::optional<std::vector<TensorIndex>> simple_indices(py::handle key) {
  std::vector<TensorIndex> out;
  if (PyTuple_Check(key.ptr())) {
    for (py::handle item : py::reinterpret_borrow<py::tuple>(key)) {
      auto index = simple_index(item);
      if (!index) return std::nullopt;
      out.push_back(std::move(*index));
    }
  } else {
    auto index = simple_index(key);
    if (!index) return std::nullopt;
    out.push_back(std::move(*index));
  }
  if (out.empty()) return std::nullopt;  // x[()] is x itself; Tensor::index rejects no indices
  return out;
}

// The lazy-handle methods File and Checkpoint share (the same names in C++).
template <typename Handle>
void bind_tensor_access(py::class_<Handle>& cls) {
  cls.def_property_readonly("path", &Handle::path)
      .def("__len__", &Handle::size)
      .def("__contains__",
           [](const Handle& f, const std::string& name) { return f.contains(name); })
      .def("metadata", [](const Handle& f) { return f.metadata(); })
      .def("info",
           [](const Handle& f, const std::string& name) {
             const ts::TensorInfo& info = f.info(name);
             return std::make_pair(dtype_str(info.dtype), c10::IntArrayRef(info.shape).vec());
           })
      .def(
          "torch_info",
          [](const Handle& f, const std::string& name) {
            // What the tensor loads as: its torch dtype (None where torch has none: F6, which
            // loads as its bytes) and sizes (a packed dtype's last dimension in torch elements).
            const ts::TensorInfo& info = f.info(name);
            const at::ScalarType type = ts::to_scalar_type(info.dtype);
            std::optional<at::ScalarType> dtype;
            if (ts::from_scalar_type(type) == info.dtype) dtype = type;
            return std::make_pair(dtype, ts::adapters::torch_sizes(info, f.path()));
          },
          py::arg("name"))
      .def("tensor", &Handle::tensor, py::call_guard<py::gil_scoped_release>())
      .def("tensors_of",
           [](const Handle& f, const std::vector<std::string>& names) {
             ts::TensorDict tensors;
             {
               py::gil_scoped_release release;
               tensors = f.tensors(names);
             }
             return to_dict(tensors);
           })
      .def("tensors",
           [](const Handle& f) {
             ts::TensorDict tensors;
             {
               py::gil_scoped_release release;
               tensors = f.tensors();
             }
             return to_dict(tensors);
           })
      .def(
          "slice",
          [](const Handle& f, const std::string& name, py::handle key) -> py::object {
            auto indices = simple_indices(key);
            if (!indices) return py::none();
            at::Tensor out;
            {
              py::gil_scoped_release release;
              out = f.slice(name, *indices);
            }
            return py::cast(out);
          },
          "The indexed tensor, or None when the index is not made of ints, slices, ... and None.")
      .def("raw", [](const Handle& f, const std::string& name) {
        ts::RawTensor raw;
        {
          py::gil_scoped_release release;
          raw = f.raw(name);
        }
        return py::make_tuple(dtype_str(raw.dtype), raw.shape, raw.bytes);
      });
}

}  // namespace

void bind_file(py::module_& m) {
  auto file = py::class_<ts::File>(m, "File").def(
      py::init([](const std::string& path, const std::string& backend, at::Device device,
                  std::optional<at::ScalarType> dtype, bool populate, uint64_t staging_bytes,
                  bool always_stage) {
        const ts::LoadOptions options =
            load_options(backend, device, dtype, populate, staging_bytes, always_stage);
        py::gil_scoped_release release;
        return ts::File(path, options);
      }),
      py::arg("path"), py::arg("backend"), py::arg("device"), py::arg("dtype") = py::none(),
      py::arg("populate") = false, py::arg("staging_bytes") = uint64_t(256) << 20,
      py::arg("always_stage") = false);
  bind_tensor_access(file);
  file.def("keys", &ts::File::keys, "Tensor names in file (data offset) order.");

  auto checkpoint =
      py::class_<ts::Checkpoint>(m, "Checkpoint")
          .def(py::init([](const std::string& path, const std::string& backend, at::Device device,
                           std::optional<at::ScalarType> dtype, bool populate,
                           uint64_t staging_bytes, bool always_stage) {
                 const ts::LoadOptions options =
                     load_options(backend, device, dtype, populate, staging_bytes, always_stage);
                 py::gil_scoped_release release;
                 return ts::Checkpoint(path, options);
               }),
               py::arg("path"), py::arg("backend"), py::arg("device"),
               py::arg("dtype") = py::none(), py::arg("populate") = false,
               py::arg("staging_bytes") = uint64_t(256) << 20, py::arg("always_stage") = false);
  bind_tensor_access(checkpoint);
  checkpoint.def("keys", &ts::Checkpoint::keys, "Tensor names, shard by shard.")
      .def_property_readonly("index_path", &ts::Checkpoint::index_path)
      .def_property_readonly("directory", &ts::Checkpoint::directory)
      .def_property_readonly("shard_files", &ts::Checkpoint::shard_files)
      .def("shard_file",
           [](const ts::Checkpoint& c, const std::string& name) { return c.shard_file(name); })
      .def(
          "for_each",
          [](const ts::Checkpoint& c, const std::function<void(std::string, at::Tensor)>& consume) {
            // Loads without the GIL; `consume` takes it for each call (pybind's function caster).
            py::gil_scoped_release release;
            c.for_each([&](const std::string& name, at::Tensor t) { consume(name, std::move(t)); });
          },
          py::arg("consume"), "Calls consume(name, tensor) for every tensor, in file order.");
  py::class_<ts::LoadOptions>(m, "LoadOptions")
      .def(py::init(&load_options), py::arg("backend"), py::arg("device"),
           py::arg("dtype") = py::none(), py::arg("populate") = false,
           py::arg("staging_bytes") = uint64_t(256) << 20, py::arg("always_stage") = false);
}

}  // namespace torch::safetensors::python
