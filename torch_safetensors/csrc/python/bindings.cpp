// torch_safetensors._C: the Python binding of the C++ core. It only adapts types (str/dict/tuple
// <-> std::string/Metadata/SaveEntry) and errors (c10::Error -> SafetensorError & co); every
// byte of the format is read, validated and written by the core. The public API is the Python
// layer in torch_safetensors/__init__.py.
#include <torch/extension.h>

#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "torch_safetensors/safetensors.h"

namespace py = pybind11;
namespace ts = torch::safetensors;
using at::indexing::TensorIndex;

namespace {

// torch_safetensors.SafetensorError; created at import, lives as long as the interpreter.
PyObject* g_safetensor_error = nullptr;

ts::Backend parse_backend(const std::string& name) {
  if (name == "mmap") return ts::Backend::kMmap;
  if (name == "pread") return ts::Backend::kPread;
  throw py::value_error("backend \"" + name +
                        "\" is invalid (expected one of: \"mmap\", \"pread\")");
}

std::string type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

// Like the reference's argument extraction: only real str objects, else TypeError.
std::string as_str(py::handle obj, const char* what) {
  if (!PyUnicode_Check(obj.ptr())) {
    throw py::type_error(std::string("argument '") + what + "': '" + type_name(obj) +
                         "' object is not an instance of 'str'");
  }
  return obj.cast<std::string>();
}

// None -> no __metadata__; a dict (even empty) -> written as is, like the reference.
std::optional<ts::Metadata> to_metadata(py::handle obj) {
  if (obj.is_none()) return std::nullopt;
  if (!PyDict_Check(obj.ptr())) {
    throw py::type_error("argument 'metadata': '" + type_name(obj) +
                         "' object is not an instance of 'dict'");
  }
  ts::Metadata metadata;
  for (auto item : py::reinterpret_borrow<py::dict>(obj)) {
    metadata.emplace(as_str(item.first, "metadata"), as_str(item.second, "metadata"));
  }
  return metadata;
}

// A list of (name, value): value is a torch.Tensor, or a (dtype, shape, bytes) tuple for raw
// bytes (torch_safetensors.RawTensor).
std::vector<ts::SaveEntry> to_entries(const py::list& items) {
  std::vector<ts::SaveEntry> entries;
  entries.reserve(items.size());
  for (py::handle item : items) {
    auto pair = py::reinterpret_borrow<py::tuple>(item);
    std::string name = as_str(pair[0], "tensor_dict");
    py::handle value = pair[1];
    if (THPVariable_Check(value.ptr())) {
      entries.emplace_back(std::move(name), THPVariable_Unpack(value.ptr()));
      continue;
    }
    if (!PyTuple_Check(value.ptr()) || PyTuple_Size(value.ptr()) != 3) {
      throw py::type_error("'" + name + "': expected a torch.Tensor or a RawTensor, got '" +
                           type_name(value) + "'");
    }
    auto raw_tuple = py::reinterpret_borrow<py::tuple>(value);
    ts::RawTensor raw;
    const std::string dtype = as_str(raw_tuple[0], "dtype");
    auto parsed = ts::parse_dtype(dtype);
    TORCH_CHECK(parsed.has_value(), "safetensors: raw tensor '", name, "': unknown dtype '", dtype,
                "'");
    raw.dtype = *parsed;
    raw.shape = raw_tuple[1].cast<std::vector<int64_t>>();
    raw.bytes = raw_tuple[2].cast<at::Tensor>();
    entries.emplace_back(std::move(name), std::move(raw));
  }
  return entries;
}

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

py::dict to_dict(const ts::TensorDict& tensors) {
  py::dict out;
  for (const auto& item : tensors) out[py::str(item.key())] = py::cast(item.value());
  return out;
}

std::string dtype_str(ts::Dtype dtype) { return std::string(ts::dtype_name(dtype)); }

void translate(std::exception_ptr p) {
  // c10 errors keep their Python kind (IndexError, ValueError, ... as torch raises them); any
  // other core error is a SafetensorError. Messages drop the C++ backtrace.
  try {
    std::rethrow_exception(p);
  } catch (const c10::IndexError& e) {
    PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
  } catch (const c10::NotImplementedError& e) {
    PyErr_SetString(PyExc_NotImplementedError, e.what_without_backtrace());
  } catch (const c10::OutOfMemoryError& e) {
    PyErr_SetString(PyExc_MemoryError, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    PyErr_SetString(g_safetensor_error, e.what_without_backtrace());
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "torch_safetensors C++ core binding (private; use the torch_safetensors package)";
  m.attr("__version__") = TORCH_SAFETENSORS_VERSION;

  g_safetensor_error = PyErr_NewExceptionWithDoc(
      "torch_safetensors.SafetensorError",
      "Raised for invalid safetensors files and invalid save requests; the message names the "
      "file, the tensor and what is wrong.",
      PyExc_Exception, nullptr);
  if (g_safetensor_error == nullptr) throw py::error_already_set();
  m.attr("SafetensorError") = py::handle(g_safetensor_error);
  py::register_local_exception_translator(translate);

  py::class_<ts::File>(m, "File")
      .def(py::init([](const std::string& path, const std::string& backend, at::Device device) {
             ts::LoadOptions options;
             options.with_backend(parse_backend(backend)).with_device(device);
             py::gil_scoped_release release;
             return ts::File(path, options);
           }),
           py::arg("path"), py::arg("backend"), py::arg("device"))
      .def_property_readonly("path", &ts::File::path)
      .def("__len__", &ts::File::size)
      .def("__contains__",
           [](const ts::File& f, const std::string& name) { return f.contains(name); })
      .def("keys", &ts::File::keys, "Tensor names in file (data offset) order.")
      .def("metadata", [](const ts::File& f) { return f.metadata(); })
      .def("info",
           [](const ts::File& f, const std::string& name) {
             const ts::TensorInfo& info = f.info(name);
             return std::make_pair(dtype_str(info.dtype), c10::IntArrayRef(info.shape).vec());
           })
      .def("tensor", &ts::File::tensor, py::call_guard<py::gil_scoped_release>())
      .def("tensors",
           [](const ts::File& f) {
             ts::TensorDict tensors;
             {
               py::gil_scoped_release release;
               tensors = f.tensors();
             }
             return to_dict(tensors);
           })
      .def(
          "slice",
          [](const ts::File& f, const std::string& name, py::handle key) -> py::object {
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
      .def("raw", [](const ts::File& f, const std::string& name) {
        ts::RawTensor raw;
        {
          py::gil_scoped_release release;
          raw = f.raw(name);
        }
        return py::make_tuple(dtype_str(raw.dtype), raw.shape, raw.bytes);
      });

  m.def(
      "save_file",
      [](const py::list& items, const std::string& path, py::handle metadata) {
        auto entries = to_entries(items);
        auto md = to_metadata(metadata);
        py::gil_scoped_release release;
        ts::save(entries, path, md);
      },
      py::arg("items"), py::arg("path"), py::arg("metadata"));

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
      "spec_dtype",
      [](at::ScalarType type) -> std::optional<std::string> {
        auto dtype = ts::from_scalar_type(type);
        if (!dtype) return std::nullopt;
        return dtype_str(*dtype);
      },
      py::arg("dtype"), "The safetensors dtype name a torch dtype is saved as, or None.");
}
