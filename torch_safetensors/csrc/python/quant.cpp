// torch_safetensors._C's quant_* functions (torch_safetensors/quant.py is the public API): layouts
// as QuantizedWeight objects, tensors as (name, tensor) lists.
#include "python/common.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace torch::safetensors::python {

namespace {

quant::Scheme to_scheme(const std::string& name) {
  const auto scheme = quant::parse_scheme(name);
  if (!scheme) {
    std::string known;
    for (std::string_view scheme : quant::scheme_names()) {
      known += (known.empty() ? "" : ", ") + std::string(scheme);
    }
    throw py::value_error("unknown quantization scheme '" + name + "' (expected one of " + known +
                          ")");
  }
  return *scheme;
}

py::list to_pairs(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  py::list out;
  for (const auto& [name, tensor] : tensors) out.append(py::make_tuple(name, tensor));
  return out;
}

// The (tensors, description) pairs that quant.save_file and quant.save_sharded pass.
std::vector<quant::Quantized> to_quantized(const py::list& weights) {
  std::vector<quant::Quantized> quantized;
  for (py::handle item : weights) {
    auto pair = py::reinterpret_borrow<py::tuple>(item);
    quant::Quantized q;
    q.tensors = to_named(pair[0].cast<py::list>());
    q.weight = pair[1].cast<quant::QuantizedWeight>();
    quantized.push_back(std::move(q));
  }
  return quantized;
}

}  // namespace

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

  m.def("quant_scheme_names", [] {
    std::vector<std::string> out;
    for (std::string_view name : quant::scheme_names()) out.emplace_back(name);
    return out;
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
        auto quantized = to_quantized(weights);
        auto plain = to_named(others);
        auto parsed = to_metadata(metadata);
        py::gil_scoped_release release;
        quant::save(quantized, plain, path, std::move(parsed));
      },
      py::arg("weights"), py::arg("others"), py::arg("path"), py::arg("metadata"));
  m.def(
      "quant_save_sharded",
      [](const py::list& weights, const py::list& others, const std::string& directory,
         uint64_t max_shard_size, const std::string& pattern, py::handle metadata) {
        auto quantized = to_quantized(weights);
        auto plain = to_named(others);
        ts::ShardOptions options;
        options.max_shard_size = max_shard_size;
        options.filename_pattern = pattern;
        options.metadata = to_metadata(metadata);
        py::gil_scoped_release release;
        quant::save_sharded(quantized, plain, directory, std::move(options));
      },
      py::arg("weights"), py::arg("others"), py::arg("directory"), py::arg("max_shard_size"),
      py::arg("filename_pattern"), py::arg("metadata"));
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

}  // namespace torch::safetensors::python
