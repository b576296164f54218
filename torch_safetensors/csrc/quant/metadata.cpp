// The self-describing metadata entry (kMetadataKey), the producers' config files, and saving
// quantized weights with their description.
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include <simdjson.h>

#include "check.h"
#include "format/json_writer.h"
#include "quant/internal.h"
#include "torch_safetensors/serialize.h"

namespace torch::safetensors::quant {
namespace {

constexpr std::string_view kFormat = "torch_safetensors.quantization";
constexpr uint64_t kVersion = 1;

void append_sizes(std::string& out, const std::vector<int64_t>& sizes) {
  out += '[';
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) out += ',';
    format::append_uint(out, uint64_t(sizes[i]));
  }
  out += ']';
}

bool is_file(const std::string& path) {
  struct stat status;
  return ::stat(path.c_str(), &status) == 0 && S_ISREG(status.st_mode);
}

// Accessors that name the document and key in their errors.
struct JsonDoc {
  std::string where;

  int64_t integer(simdjson::dom::element element, std::string_view key) const {
    int64_t value = 0;
    if (element.get_int64().get(value)) {
      // Configs write 128.0 at times; whole floats are accepted.
      double number = 0;
      TS_CHECK(!element.get_double().get(number) && number == double(int64_t(number)), where, "'",
               key, "' must be an integer");
      value = int64_t(number);
    }
    return value;
  }
  std::string string(simdjson::dom::element element, std::string_view key) const {
    std::string_view value;
    TS_CHECK(!element.get_string().get(value), where, "'", key, "' must be a string");
    return std::string(value);
  }
  std::vector<int64_t> sizes(simdjson::dom::element element, std::string_view key) const {
    simdjson::dom::array array;
    TS_CHECK(!element.get_array().get(array), where, "'", key, "' must be an array of integers");
    std::vector<int64_t> out;
    for (simdjson::dom::element item : array) out.push_back(integer(item, key));
    return out;
  }
};

QuantizedWeight parse_weight(const JsonDoc& doc, std::string_view name,
                             simdjson::dom::object object) {
  const JsonDoc inner{doc.where + "quantized weight '" + std::string(name) + "': "};
  QuantizedWeight weight;
  weight.name = std::string(name);
  bool has_scheme = false;
  for (auto field : object) {
    const std::string_view key = field.key;
    if (key == "scheme") {
      const std::string scheme = inner.string(field.value, key);
      const auto parsed = parse_scheme(scheme);
      TS_CHECK(parsed.has_value(), inner.where, "unknown scheme '", scheme,
               "' (expected fp8, gptq, awq, pack_quantized, nvfp4_pack_quantized, mxfp4, nvfp4)");
      weight.scheme = *parsed;
      has_scheme = true;
    } else if (key == "bits") {
      weight.bits = int(inner.integer(field.value, key));
    } else if (key == "group_size") {
      weight.group_size = inner.integer(field.value, key);
    } else if (key == "block_size") {
      weight.block_size = inner.sizes(field.value, key);
    } else if (key == "shape") {
      weight.shape = inner.sizes(field.value, key);
    } else if (key == "zero_point") {
      const std::string mode = inner.string(field.value, key);
      TS_CHECK(mode == "stored" || mode == "stored_minus_one" || mode == "none", inner.where,
               "'zero_point' must be \"none\", \"stored\" or \"stored_minus_one\", found \"", mode,
               "\"");
      weight.zero_point_minus_one = mode == "stored_minus_one";
    } else if (key == "tensors") {
      simdjson::dom::object tensors;
      TS_CHECK(!field.value.get_object().get(tensors), inner.where,
               "'tensors' must be an object of role -> tensor name");
      for (auto entry : tensors) {
        weight.tensors[std::string(entry.key)] = inner.string(entry.value, entry.key);
      }
    } else if (key == "packing") {
      // Checked once the scheme is known (fields may come in any order).
    } else {
      TS_FAIL(inner.where, "unknown field '", key, "'");
    }
  }
  TS_CHECK(has_scheme, inner.where, "has no 'scheme'");
  simdjson::dom::element packing;
  if (!object["packing"].get(packing)) {
    const std::string value = inner.string(packing, "packing");
    TS_CHECK(value == detail::packing_name(weight.scheme), inner.where, "packing '", value,
             "' is not ", scheme_name(weight.scheme), "'s ('", detail::packing_name(weight.scheme),
             "')");
  }
  return weight;
}

// `quantization_config` of config.json (or hf_quant_config.json's `quantization`).
void apply_producer_config(QuantConfig& config, const JsonDoc& doc, simdjson::dom::object object) {
  auto get = [&](std::string_view key, simdjson::dom::element& out) {
    return !object[key].get(out);
  };
  simdjson::dom::element value;
  std::string method;
  if (get("quant_method", value)) method = doc.string(value, "quant_method");
  if (get("quant_algo", value)) method = "modelopt:" + doc.string(value, "quant_algo");
  if (method == "fp8" || method == "fbgemm_fp8" || method == "modelopt:FP8") {
    config.scheme = Scheme::kFp8;
    if (get("weight_block_size", value) && !value.is_null()) {
      config.block_size = doc.sizes(value, "weight_block_size");
    }
  } else if (method == "gptq") {
    config.scheme = Scheme::kGptq;
    if (get("checkpoint_format", value)) {
      config.zero_point_minus_one = doc.string(value, "checkpoint_format") != "gptq_v2";
    }
  } else if (method == "awq") {
    config.scheme = Scheme::kAwq;
    if (get("version", value)) {
      const std::string version = doc.string(value, "version");
      TS_CHECK(version == "gemm" || version == "GEMM", doc.where, "AWQ version '", version,
               "' is not supported (expected the GEMM layout)");
    }
    if (get("zero_point", value)) {
      bool zero_point = true;
      TS_CHECK(!value.get_bool().get(zero_point) && zero_point, doc.where,
               "AWQ without zero points is not supported");
    }
  } else if (method == "mxfp4") {
    config.scheme = Scheme::kMxfp4;
  } else if (method == "modelopt:NVFP4") {
    config.scheme = Scheme::kNvfp4;
  } else if (method == "compressed-tensors") {
    std::string format;
    if (get("format", value)) format = doc.string(value, "format");
    if (format == "pack-quantized")
      config.scheme = Scheme::kPackQuantized;
    else if (format == "nvfp4-pack-quantized")
      config.scheme = Scheme::kNvfp4PackQuantized;
    else if (format == "float-quantized")
      config.scheme = Scheme::kFp8;
    else
      TS_FAIL(doc.where, "compressed-tensors format '", format,
              "' is not supported (expected pack-quantized, nvfp4-pack-quantized or "
              "float-quantized)");
    // The first config group's weights describe every weight (one group is what producers write).
    simdjson::dom::object groups;
    if (get("config_groups", value) && !value.get_object().get(groups)) {
      for (auto group : groups) {
        simdjson::dom::element weights;
        simdjson::dom::object args;
        if (group.value["weights"].get(weights) || weights.get_object().get(args)) continue;
        simdjson::dom::element field;
        if (!args["num_bits"].get(field)) config.bits = int(doc.integer(field, "num_bits"));
        if (!args["group_size"].get(field) && !field.is_null()) {
          config.group_size = doc.integer(field, "group_size");
        }
        if (!args["symmetric"].get(field)) {
          bool symmetric = true;
          if (!field.get_bool().get(symmetric)) config.symmetric = symmetric;
        }
        if (!args["block_structure"].get(field) && !field.is_null()) {
          config.block_size = doc.sizes(field, "block_structure");
        }
        break;
      }
    }
    return;
  } else if (method.empty()) {
    return;
  } else {
    TS_FAIL(doc.where, "quantization method '", method, "' is not supported");
  }
  if (get("bits", value)) config.bits = int(doc.integer(value, "bits"));
  if (get("w_bit", value)) config.bits = int(doc.integer(value, "w_bit"));
  if (get("group_size", value)) config.group_size = doc.integer(value, "group_size");
  if (get("q_group_size", value)) config.group_size = doc.integer(value, "q_group_size");
  if (get("sym", value)) {
    bool symmetric = true;
    if (!value.get_bool().get(symmetric)) config.symmetric = symmetric;
  }
}

bool read_config_file(QuantConfig& config, const std::string& path, std::string_view key) {
  if (!is_file(path)) return false;
  std::ifstream stream(path, std::ios::binary);
  std::stringstream text;
  text << stream.rdbuf();
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  const JsonDoc doc{path + ": "};
  const auto error = parser.parse(text.str()).get(root);
  TS_CHECK(!error, path, "is not valid JSON: ", simdjson::error_message(error));
  simdjson::dom::object section;
  if (root[key].get_object().get(section)) return false;
  config.source = path;
  apply_producer_config(config, JsonDoc{path + ": '" + std::string(key) + "': "}, section);
  return true;
}

}  // namespace

std::string metadata_json(const std::vector<QuantizedWeight>& weights) {
  std::string out = "{\"format\":";
  format::append_json_string(out, kFormat);
  out += ",\"version\":";
  format::append_uint(out, kVersion);
  out += ",\"weights\":{";
  bool first = true;
  for (const QuantizedWeight& weight : weights) {
    if (!first) out += ',';
    first = false;
    format::append_json_string(out, weight.name);
    out += ":{\"scheme\":";
    format::append_json_string(out, scheme_name(weight.scheme));
    out += ",\"bits\":";
    format::append_uint(out, uint64_t(weight.bits));
    out += ",\"group_size\":";
    format::append_uint(out, uint64_t(std::max<int64_t>(weight.group_size, 0)));
    if (!weight.block_size.empty()) {
      out += ",\"block_size\":";
      append_sizes(out, weight.block_size);
    }
    out += ",\"packing\":";
    format::append_json_string(out, detail::packing_name(weight.scheme));
    const bool has_zero = weight.tensors.count("zero_point") != 0;
    out += ",\"zero_point\":";
    format::append_json_string(out, !has_zero                     ? "none"
                                    : weight.zero_point_minus_one ? "stored_minus_one"
                                                                  : "stored");
    out += ",\"shape\":";
    append_sizes(out, weight.shape);
    out += ",\"tensors\":{";
    bool first_tensor = true;
    for (const auto& [role, tensor] : weight.tensors) {
      if (!first_tensor) out += ',';
      first_tensor = false;
      format::append_json_string(out, role);
      out += ':';
      format::append_json_string(out, tensor);
    }
    out += "}}";
  }
  out += "}}";
  return out;
}

std::map<std::string, QuantizedWeight> parse_metadata_json(std::string_view json,
                                                           std::string_view source) {
  const JsonDoc doc{std::string(source) + ": metadata '" + std::string(kMetadataKey) + "': "};
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  const auto error = parser.parse(json.data(), json.size()).get(root);
  TS_CHECK(!error, doc.where, "is not valid JSON: ", simdjson::error_message(error));
  simdjson::dom::object object;
  TS_CHECK(!root.get_object().get(object), doc.where, "must be a JSON object");
  simdjson::dom::element field;
  TS_CHECK(!object["format"].get(field) && doc.string(field, "format") == kFormat, doc.where,
           "'format' must be \"", kFormat, "\"");
  TS_CHECK(!object["version"].get(field) && doc.integer(field, "version") == int64_t(kVersion),
           doc.where, "'version' must be ", kVersion, " (this library reads version ", kVersion,
           ")");
  simdjson::dom::object weights;
  TS_CHECK(!object["weights"].get(field) && !field.get_object().get(weights), doc.where,
           "'weights' must be an object of dense name -> layout");
  std::map<std::string, QuantizedWeight> out;
  for (auto entry : weights) {
    simdjson::dom::object layout;
    TS_CHECK(!entry.value.get_object().get(layout), doc.where, "weight '", entry.key,
             "' must be an object");
    out.emplace(std::string(entry.key), parse_weight(doc, entry.key, layout));
  }
  return out;
}

QuantConfig read_config(const Checkpoint& checkpoint) {
  QuantConfig config;
  const auto& metadata = checkpoint.metadata();
  if (metadata) {
    const auto found = metadata->find(std::string(kMetadataKey));
    if (found != metadata->end()) {
      config.weights = parse_metadata_json(found->second, checkpoint.path());
      config.source = checkpoint.path() + ": __metadata__";
      return config;
    }
  }
  const std::string& directory = checkpoint.directory();
  if (directory.empty()) return config;
  if (read_config_file(config, directory + "/config.json", "quantization_config")) return config;
  read_config_file(config, directory + "/hf_quant_config.json", "quantization");
  return config;
}

void save(const std::vector<Quantized>& weights,
          const std::vector<std::pair<std::string, at::Tensor>>& others, const SaveTo& to,
          std::optional<Metadata> metadata) {
  std::vector<SaveEntry> entries;
  std::vector<QuantizedWeight> layouts;
  for (const Quantized& weight : weights) {
    for (const auto& [name, tensor] : weight.tensors) entries.emplace_back(name, tensor);
    layouts.push_back(weight.weight);
  }
  for (const auto& [name, tensor] : others) entries.emplace_back(name, tensor);
  if (!metadata) metadata.emplace();
  TS_CHECK(!metadata->count(std::string(kMetadataKey)), "quant::save",
           "metadata already has the key '", kMetadataKey, "', which save writes");
  metadata->emplace(std::string(kMetadataKey), metadata_json(layouts));
  torch::safetensors::save(entries, to, metadata);
}

}  // namespace torch::safetensors::quant
