// torch_safetensors._C's lazy handles: File (one .safetensors file) and Checkpoint (a file, an
// index or a directory), and LoadOptions.
#include "python/common.h"

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "adapters/load_tensor.h"
#include "api/checkpoint_files.h"
#include "api/handle.h"
#include "device/staging_ring.h"

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

// LoadOptions(**fields): the C++ defaults, then each given field through its property setter, so
// that every default and every conversion has one place.
template <typename Options>
Options options_from(const py::kwargs& fields) {
  Options options;
  py::object self = py::cast(&options, py::return_value_policy::reference);
  for (auto item : fields) {
    const std::string name = py::str(item.first);
    if (!py::hasattr(py::type::of(self), name.c_str())) {
      throw py::type_error(type_name(self) + "() got an unexpected keyword argument '" + name +
                           "'");
    }
    py::setattr(self, item.first, item.second);
  }
  return options;
}

template <typename Options>
std::string options_repr(const Options& options) {
  py::object self = py::cast(options);
  std::string out = type_name(self) + "(backend=" + std::string(backend_name(options.backend));
  for (const char* field : {"device", "dtype", "cast_fp8", "populate", "staging_bytes",
                            "device_budget", "host_budget"}) {
    out += std::string(", ") + field + "=" + std::string(py::repr(self.attr(field)));
  }
  if constexpr (std::is_same_v<Options, ts::ModuleLoadOptions>) {
    out += std::string(", strict=") + (options.strict ? "True" : "False");
  }
  return out + ")";
}

}  // namespace

void bind_file(py::module_& m) {
  py::class_<ts::LoadOptions>(m, "LoadOptions",
                              "How a load reads and where its tensors go (options.h); fields not "
                              "given keep the C++ defaults.")
      .def(py::init(&options_from<ts::LoadOptions>))
      .def_property(
          "backend", [](const ts::LoadOptions& o) { return std::string(backend_name(o.backend)); },
          [](ts::LoadOptions& o, const std::string& name) { o.backend = parse_backend(name); })
      .def_readwrite("device", &ts::LoadOptions::device)
      .def_property(
          "dtype", [](const ts::LoadOptions& o) { return o.dtype; },
          [](ts::LoadOptions& o, std::optional<at::ScalarType> dtype) { o.dtype = dtype; })
      .def_readwrite("cast_fp8", &ts::LoadOptions::cast_fp8)
      .def_readwrite("populate", &ts::LoadOptions::populate)
      .def_readwrite("staging_bytes", &ts::LoadOptions::staging_bytes)
      .def_readwrite("device_budget", &ts::LoadOptions::device_budget,
                     "Bytes a load may allocate on its device (None: no limit).")
      .def_readwrite("host_budget", &ts::LoadOptions::host_budget,
                     "Bytes a load may allocate on the host, staging buffers included (None: no "
                     "limit).")
      .def("__repr__", &options_repr<ts::LoadOptions>);
  py::class_<ts::ModuleLoadOptions, ts::LoadOptions>(
      m, "ModuleLoadOptions", "LoadOptions and what only a module load decides (module.h).")
      .def(py::init(&options_from<ts::ModuleLoadOptions>))
      .def_readwrite("strict", &ts::ModuleLoadOptions::strict)
      .def("__repr__", &options_repr<ts::ModuleLoadOptions>);
  m.def(
      "_testing_stage_on_cpu",
      [](ts::LoadOptions options) { return ts::detail::LoadOptionsTesting::stage_on_cpu(options); },
      py::arg("options"),
      "Tests only: a copy of options whose CPU loads go through the staging ring.");

  m.def(
      "check_device",
      [](at::Device device, const std::string& source) {
        ts::device::check_device(device, source);
      },
      py::arg("device"), py::arg("source"),
      "A SafetensorError naming source unless this LibTorch can reach device (the check every "
      "load makes at open).");

  py::class_<ts::MemoryEstimate>(
      m, "MemoryEstimate",
      "What a load will allocate, planned from the headers before anything is (checkpoint.h).")
      .def_readonly("device_bytes", &ts::MemoryEstimate::device_bytes)
      .def_readonly("host_bytes", &ts::MemoryEstimate::host_bytes)
      .def_readonly("staging_bytes", &ts::MemoryEstimate::staging_bytes)
      .def_readonly("tensors", &ts::MemoryEstimate::tensors)
      .def_readonly("largest", &ts::MemoryEstimate::largest)
      .def_readonly("largest_bytes", &ts::MemoryEstimate::largest_bytes)
      .def("__repr__", [](const ts::MemoryEstimate& e) {
        return "MemoryEstimate(device_bytes=" + std::to_string(e.device_bytes) +
               ", host_bytes=" + std::to_string(e.host_bytes) +
               ", staging_bytes=" + std::to_string(e.staging_bytes) +
               ", tensors=" + std::to_string(e.tensors) +
               ", largest=" + std::string(py::repr(py::str(e.largest))) +
               ", largest_bytes=" + std::to_string(e.largest_bytes) + ")";
      });
  py::class_<ts::StreamBatch>(m, "StreamBatch",
                              "One batch of a streaming load: its tensors and what they allocate.")
      .def_readonly("names", &ts::StreamBatch::names)
      .def_readonly("memory", &ts::StreamBatch::memory)
      .def("__repr__", [](const ts::StreamBatch& b) {
        return "StreamBatch(names=" + std::string(py::repr(py::cast(b.names))) +
               ", memory=" + std::string(py::repr(py::cast(b.memory))) + ")";
      });

  auto checkpoint = py::class_<ts::Checkpoint>(m, "Checkpoint")
                        .def(py::init([](const std::string& path, const ts::LoadOptions& options) {
                               py::gil_scoped_release release;
                               return ts::Checkpoint(path, options);
                             }),
                             py::arg("path"), py::arg("options") = ts::LoadOptions());
  bind_tensor_access(checkpoint);
  checkpoint
      .def("keys", &ts::Checkpoint::keys,
           "Tensor names: a file's in data-offset order, an index's shard by shard.")
      .def_property_readonly("index_path", &ts::Checkpoint::index_path)
      .def_property_readonly("directory", &ts::Checkpoint::directory)
      .def_property_readonly("shard_files", &ts::Checkpoint::shard_files)
      .def_property_readonly("options", &ts::Checkpoint::options)
      .def("shard_file",
           [](const ts::Checkpoint& c, const std::string& name) { return c.shard_file(name); })
      .def(
          "memory_plan",
          [](const ts::Checkpoint& c, const std::optional<std::vector<std::string>>& names) {
            return names ? c.estimate_memory(*names) : c.estimate_memory();
          },
          py::arg("names") = py::none(), py::call_guard<py::gil_scoped_release>(),
          "What loading these tensors (None: all) will allocate; reads headers only.")
      .def("stream_plan", &ts::Checkpoint::stream_plan, py::call_guard<py::gil_scoped_release>(),
           "The batches for_each loads, in order; MemoryBudgetError for a tensor that fits none.")
      .def(
          "for_each",
          [](const ts::Checkpoint& c, const std::function<void(std::string, at::Tensor)>& consume) {
            // Loads without the GIL; `consume` takes it for each call (pybind's function caster).
            py::gil_scoped_release release;
            c.for_each([&](const std::string& name, at::Tensor t) { consume(name, std::move(t)); });
          },
          py::arg("consume"), "Calls consume(name, tensor) for every tensor, in file order.");

  py::class_<ts::File, ts::Checkpoint>(m, "File", "A Checkpoint of one safetensors file.")
      .def(py::init([](const std::string& path, const ts::LoadOptions& options) {
             py::gil_scoped_release release;
             return ts::File(path, options);
           }),
           py::arg("path"), py::arg("options") = ts::LoadOptions());

  m.def(
      "checkpoint_files",
      [](const std::string& directory) {
        ts::CheckpointFiles found = ts::list_checkpoint_files(directory);
        return py::make_tuple(std::move(found.indexes), std::move(found.files));
      },
      py::arg("directory"),
      "(indexes, safetensors files) in a directory, each sorted: what Checkpoint chooses from.");
}

}  // namespace torch::safetensors::python
