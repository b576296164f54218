// The converters and the error translation every binding file shares (common.h).
#include "python/common.h"

#include <pybind11/stl.h>

#include <cstring>
#include <utility>

#include "torch_safetensors/errors.h"

namespace torch::safetensors::python {

namespace {

// torch_safetensors.SafetensorError; created at import, lives as long as the interpreter.
PyObject* g_safetensor_error = nullptr;
// torch_safetensors.MemoryBudgetError (a SafetensorError and a MemoryError), for BudgetError.
PyObject* g_budget_error = nullptr;
// Python OSError subclass → its subclass printed like the reference (os_error_type); a dict the
// module holds.
PyObject* g_os_error_types = nullptr;

// The subclass of `builtin` (FileNotFoundError, IsADirectoryError, PermissionError, ...) whose
// str() is "<strerror>: <filename>": for a missing file exactly the reference's message, "No such
// file or directory: <path>" (bindings/python/src/lib.rs, `Open::new`), where Python's own would be
// "[Errno 2] No such file or directory: '<path>'". Pickled, it becomes the builtin class again.
py::object os_error_type(py::handle builtin) {
  auto types = py::reinterpret_borrow<py::dict>(g_os_error_types);
  if (types.contains(builtin)) return types[builtin];
  py::dict body;
  body["__module__"] = "torch_safetensors";
  body["__doc__"] = builtin.attr("__doc__");
  py::object type = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(&PyType_Type));
  py::object cls = type(builtin.attr("__name__"), py::make_tuple(builtin), body);
  cls.attr("__str__") = py::cpp_function(
      [](py::handle self) {
        return py::str("{}: {}").format(self.attr("strerror"), self.attr("filename"));
      },
      py::name("__str__"), py::is_method(cls));
  cls.attr("__reduce__") = py::cpp_function(
      [builtin](py::handle self) {
        return py::make_tuple(builtin, py::make_tuple(self.attr("errno"), self.attr("strerror"),
                                                      self.attr("filename")));
      },
      py::name("__reduce__"), py::is_method(cls));
  types[builtin] = cls;
  return cls;
}

// OSError(errno, strerror, filename): Python picks the subclass from errno.
void raise_os_error(const ts::OSError& e) {
  const int number = e.error_number();
  py::object filename = py::reinterpret_steal<py::object>(
      PyUnicode_DecodeFSDefaultAndSize(e.path().data(), Py_ssize_t(e.path().size())));
  if (!filename) throw py::error_already_set();
  // The reference's words ("No such file or directory: <path>"), after our context if any.
  py::str strerror(e.context().empty() ? std::string(std::strerror(number))
                                       : e.context() + ": " + std::strerror(number));
  py::object builtin = py::type::of(py::handle(PyExc_OSError)(number, strerror, filename));
  py::object error = os_error_type(builtin)(number, strerror, filename);
  PyErr_SetObject(py::type::handle_of(error).ptr(), error.ptr());
}

// The BudgetError's message, with its fields as attributes (memory, needed, budget, shortfall,
// largest, largest_bytes).
void raise_budget_error(const ts::BudgetError& e) {
  py::object error = py::handle(g_budget_error)(e.what_without_backtrace());
  error.attr("memory") = e.memory();
  error.attr("needed") = e.needed();
  error.attr("budget") = e.budget();
  error.attr("shortfall") = e.shortfall();
  error.attr("largest") = e.largest();
  error.attr("largest_bytes") = e.largest_bytes();
  PyErr_SetObject(g_budget_error, error.ptr());
}

void translate(std::exception_ptr p) {
  // c10 errors keep their Python kind (IndexError, ValueError, ... as torch raises them); any
  // other core error is a SafetensorError. Messages drop the C++ backtrace.
  try {
    std::rethrow_exception(p);
  } catch (const ts::OSError& e) {
    try {
      raise_os_error(e);
    } catch (py::error_already_set& error) {
      error.restore();
    }
  } catch (const ts::BudgetError& e) {
    try {
      raise_budget_error(e);
    } catch (py::error_already_set& error) {
      error.restore();
    }
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

void bind_errors(py::module_& m) {
  g_safetensor_error = PyErr_NewExceptionWithDoc(
      "torch_safetensors.SafetensorError",
      "Raised for invalid safetensors files and invalid save requests; the message names the "
      "file, the tensor and what is wrong.",
      PyExc_Exception, nullptr);
  if (g_safetensor_error == nullptr) throw py::error_already_set();
  m.attr("SafetensorError") = py::handle(g_safetensor_error);
  py::tuple budget_bases =
      py::make_tuple(py::handle(g_safetensor_error), py::handle(PyExc_MemoryError));
  // The fields, None on the class; each raised error sets its own.
  py::dict budget_fields;
  for (const char* field : {"memory", "needed", "budget", "shortfall", "largest", "largest_bytes"})
    budget_fields[field] = py::none();
  g_budget_error = PyErr_NewExceptionWithDoc(
      "torch_safetensors.MemoryBudgetError",
      "Raised when a load does not fit its memory budget (device_budget, host_budget), when it "
      "is planned, before anything is allocated or read. A SafetensorError and a MemoryError; "
      "memory ('device' or 'host'), needed, budget, shortfall, largest (the tensor needing the "
      "most) and largest_bytes say by how much.",
      budget_bases.ptr(), budget_fields.ptr());
  if (g_budget_error == nullptr) throw py::error_already_set();
  m.attr("MemoryBudgetError") = py::handle(g_budget_error);
  py::dict os_error_types;
  g_os_error_types = os_error_types.ptr();
  m.attr("_os_error_types") = os_error_types;
  py::register_local_exception_translator(translate);
}

std::string_view backend_name(ts::Backend backend) {
  return backend == ts::Backend::kPread ? "pread" : "mmap";
}

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

py::dict report_dict(const ts::SaveReport& report) {
  py::dict out;
  out["tensor_bytes"] = report.tensor_bytes;
  out["header_bytes"] = report.header_bytes;
  out["files"] = report.files;
  out["seconds"] = report.seconds;
  return out;
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

// A list of (name, torch.Tensor): a state dict's items.
ts::NamedTensors to_named(const py::list& items) {
  ts::NamedTensors out;
  out.reserve(items.size());
  for (py::handle item : items) {
    auto pair = py::reinterpret_borrow<py::tuple>(item);
    std::string name = as_str(pair[0], "name");
    if (!THPVariable_Check(pair[1].ptr())) {
      throw py::type_error("'" + name + "': expected a torch.Tensor, got '" + type_name(pair[1]) +
                           "'");
    }
    out.emplace_back(std::move(name), THPVariable_Unpack(pair[1].ptr()));
  }
  return out;
}

py::dict to_dict(const ts::TensorDict& tensors) {
  py::dict out;
  for (const auto& item : tensors) out[py::str(item.key())] = py::cast(item.value());
  return out;
}

std::string dtype_str(ts::Dtype dtype) { return std::string(ts::dtype_name(dtype)); }

}  // namespace torch::safetensors::python
