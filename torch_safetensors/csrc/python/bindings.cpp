// torch_safetensors._C: the Python binding of the C++ core. It only adapts types (str/dict/tuple
// <-> std::string/Metadata/SaveEntry) and errors (c10::Error -> SafetensorError & co, OSError ->
// Python's OSError); every byte of the format is read, validated and written by the core, and the
// rules for saving, shared memory, ties and module loading are the core's. The public API is the
// Python package torch_safetensors, which adds only the reference's argument handling, exception
// types and message texts.
#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "adapters/load_tensor.h"
#include "adapters/save_item.h"
#include "adapters/shared_memory.h"
#include "python/distributed.h"
#include "python/executorch.h"
#include "torch_safetensors/errors.h"
#include "torch_safetensors/safetensors.h"
// The command line is a front end beside this one (cli/, at the repository root).
#include "../../../cli/cli.h"

namespace py = pybind11;
namespace ts = torch::safetensors;
using at::indexing::TensorIndex;

namespace {

// torch_safetensors.SafetensorError; created at import, lives as long as the interpreter.
PyObject* g_safetensor_error = nullptr;
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

// [(names, the name kept or None)], for adapters::SharedNames and ModuleLoadPlan::TiedGroup.
template <typename Group>
py::list names_and_keep(const std::vector<Group>& groups) {
  py::list out;
  for (const auto& group : groups) {
    out.append(py::make_tuple(group.names, group.keep ? py::cast(*group.keep) : py::none()));
  }
  return out;
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
  } catch (const ts::OSError& e) {
    try {
      raise_os_error(e);
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

ts::LoadOptions load_options(const std::string& backend, at::Device device,
                             std::optional<at::ScalarType> dtype, bool populate,
                             uint64_t staging_bytes, bool always_stage) {
  ts::LoadOptions options;
  options.with_backend(parse_backend(backend)).with_device(device);
  options.dtype = dtype;
  options.populate = populate;
  options.staging_bytes = staging_bytes;
  options.always_stage = always_stage;
  return options;
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

// torch_safetensors.quant: layouts as QuantizedWeight objects, tensors as (name, tensor) lists.
namespace quant = ts::quant;

quant::Scheme to_scheme(const std::string& name) {
  const auto scheme = quant::parse_scheme(name);
  if (!scheme) {
    throw py::value_error("unknown quantization scheme '" + name +
                          "' (expected fp8, gptq, awq, pack_quantized, nvfp4_pack_quantized, "
                          "mxfp4, nvfp4)");
  }
  return *scheme;
}

py::list to_pairs(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  py::list out;
  for (const auto& [name, tensor] : tensors) out.append(py::make_tuple(name, tensor));
  return out;
}

void bind_quant(py::module_& m) {
  py::class_<quant::QuantizedWeight>(m, "QuantizedWeight")
      .def(py::init<>())
      .def_readwrite("name", &quant::QuantizedWeight::name)
      .def_property(
          "scheme",
          [](const quant::QuantizedWeight& w) { return std::string(quant::scheme_name(w.scheme)); },
          [](quant::QuantizedWeight& w, const std::string& name) { w.scheme = to_scheme(name); })
      .def_readwrite("bits", &quant::QuantizedWeight::bits)
      .def_readwrite("group_size", &quant::QuantizedWeight::group_size)
      .def_readwrite("block_size", &quant::QuantizedWeight::block_size)
      .def_readwrite("zero_point_minus_one", &quant::QuantizedWeight::zero_point_minus_one)
      .def_readwrite("tensors", &quant::QuantizedWeight::tensors)
      .def_readwrite("shape", &quant::QuantizedWeight::shape)
      .def("to_json", [](const quant::QuantizedWeight& w) { return quant::metadata_json({w}); })
      .def("__repr__", [](const quant::QuantizedWeight& w) {
        return "QuantizedWeight(" + quant::metadata_json({w}) + ")";
      });

  py::class_<quant::DenseView>(m, "QuantView")
      .def(py::init([](const std::string& path, at::ScalarType dtype, at::Device device) {
             py::gil_scoped_release release;
             return quant::DenseView(ts::Checkpoint(path), dtype, device);
           }),
           py::arg("path"), py::arg("dtype"), py::arg("device"))
      .def("keys", &quant::DenseView::keys)
      .def("__len__", [](const quant::DenseView& v) { return v.keys().size(); })
      .def("__contains__",
           [](const quant::DenseView& v, const std::string& name) { return v.contains(name); })
      .def("is_quantized", &quant::DenseView::is_quantized)
      .def("tensor", &quant::DenseView::tensor, py::call_guard<py::gil_scoped_release>())
      .def("quantized",
           [](const quant::DenseView& v) {
             py::dict out;
             for (const auto& [name, weight] : v.quantized()) out[py::str(name)] = weight;
             return out;
           })
      .def_property_readonly("config_source",
                             [](const quant::DenseView& v) { return v.config().source; });

  m.def(
      "quant_dequantize",
      [](const std::string& path, const std::string& name, at::ScalarType dtype,
         at::Device device) {
        return quant::dequantize(ts::Checkpoint(path), name, dtype, device);
      },
      py::arg("path"), py::arg("name"), py::arg("dtype"), py::arg("device"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "quant_dequantize_tensors",
      [](const quant::QuantizedWeight& weight, const std::map<std::string, at::Tensor>& parts,
         at::ScalarType dtype) { return quant::dequantize(weight, parts, dtype); },
      py::arg("weight"), py::arg("parts"), py::arg("dtype"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "quant_quantize",
      [](const at::Tensor& weight, const std::string& name, const std::string& scheme, int bits,
         int64_t group_size, std::vector<int64_t> block_size, bool symmetric,
         bool zero_point_minus_one, std::optional<at::Tensor> act_order,
         at::ScalarType scale_dtype) {
        quant::QuantizeOptions options;
        options.scheme = to_scheme(scheme);
        options.bits = bits;
        options.group_size = group_size;
        options.block_size = std::move(block_size);
        options.symmetric = symmetric;
        options.zero_point_minus_one = zero_point_minus_one;
        options.act_order = std::move(act_order);
        options.scale_dtype = scale_dtype;
        quant::Quantized result;
        {
          py::gil_scoped_release release;
          result = quant::quantize(weight, name, options);
        }
        return py::make_tuple(to_pairs(result.tensors), result.weight);
      },
      py::arg("weight"), py::arg("name"), py::arg("scheme"), py::arg("bits"), py::arg("group_size"),
      py::arg("block_size"), py::arg("symmetric"), py::arg("zero_point_minus_one"),
      py::arg("act_order"), py::arg("scale_dtype"));
  m.def(
      "quant_save",
      [](const py::list& weights, const py::list& others, const std::string& path,
         py::handle metadata) {
        std::vector<quant::Quantized> quantized;
        for (py::handle item : weights) {
          auto pair = py::reinterpret_borrow<py::tuple>(item);
          quant::Quantized q;
          q.tensors = to_named(pair[0].cast<py::list>());
          q.weight = pair[1].cast<quant::QuantizedWeight>();
          quantized.push_back(std::move(q));
        }
        auto plain = to_named(others);
        auto parsed = to_metadata(metadata);
        py::gil_scoped_release release;
        quant::save(quantized, plain, path, std::move(parsed));
      },
      py::arg("weights"), py::arg("others"), py::arg("path"), py::arg("metadata"));
  m.def("quant_metadata_json", &quant::metadata_json, py::arg("weights"));
  m.def(
      "quant_parse_metadata_json",
      [](const std::string& json) {
        py::dict out;
        for (auto& [name, weight] : quant::parse_metadata_json(json, "<metadata>")) {
          out[py::str(name)] = weight;
        }
        return out;
      },
      py::arg("json"));
  m.attr("QUANT_METADATA_KEY") = std::string(quant::kMetadataKey);
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
  py::dict os_error_types;
  g_os_error_types = os_error_types.ptr();
  m.attr("_os_error_types") = os_error_types;
  py::register_local_exception_translator(translate);

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

  m.def(
      "save_sharded",
      [](const py::list& items, const std::string& directory, uint64_t max_shard_size,
         std::string filename_pattern, py::handle metadata, std::unordered_set<std::string> discard,
         bool remove_stale) {
        ts::ShardOptions options;
        options.with_max_shard_size(max_shard_size)
            .with_filename_pattern(std::move(filename_pattern));
        options.metadata = to_metadata(metadata);
        options.discard = std::move(discard);
        options.remove_stale = remove_stale;
        auto named = to_named(items);
        py::gil_scoped_release release;
        ts::save_sharded(named, directory, options);
      },
      py::arg("items"), py::arg("directory"), py::arg("max_shard_size"),
      py::arg("filename_pattern"), py::arg("metadata"), py::arg("discard"),
      py::arg("remove_stale"));
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

  py::class_<ts::ModuleLoadPlan>(m, "ModuleLoad")
      .def(py::init(
               [](const py::list& targets, const std::string& path, const std::string& backend) {
                 auto named = to_named(targets);
                 const auto parsed = parse_backend(backend);
                 py::gil_scoped_release release;
                 return ts::ModuleLoadPlan(std::move(named), path, parsed);
               }),
           py::arg("targets"), py::arg("path"), py::arg("backend"))
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
      .def_property_readonly("ties",
                             [](const ts::ModuleLoadPlan& p) { return names_and_keep(p.ties()); })
      .def("apply", &ts::ModuleLoadPlan::apply, py::call_guard<py::gil_scoped_release>());

  // The torch-safetensors command line (console script and `python -m torch_safetensors`): the
  // same C++ as the executable; it prints and returns the exit code, raising nothing.
  m.def(
      "cli_main",
      [](const std::vector<std::string>& args) {
        py::gil_scoped_release release;
        return ts::cli::run(args);
      },
      py::arg("args"));

  bind_quant(m);
  py::class_<ts::LoadOptions>(m, "LoadOptions")
      .def(py::init(&load_options), py::arg("backend"), py::arg("device"),
           py::arg("dtype") = py::none(), py::arg("populate") = false,
           py::arg("staging_bytes") = uint64_t(256) << 20, py::arg("always_stage") = false);
  ts::python::bind_distributed(m);
  ts::python::bind_coverage(m);
  ts::python::bind_executorch(m);
}
