// The self-describing metadata entry (kMetadataKey), the producers' config files, and saving
// quantized weights with their description.
#include <simdjson.h>

#include "check.h"
#include "format/checked_json.h"
#include "format/json_writer.h"
#include "quant/internal.h"
#include "storage/io.h"
#include "torch_safetensors/serialize.h"

namespace torch::safetensors::quant {
namespace {

constexpr std::string_view kFormat = kMetadataKey;
constexpr uint64_t kVersion = 1;

std::string scheme_list() {
  std::string out;
  for (std::string_view name : scheme_names()) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

// Sizes and counts are written only if the reader would accept them back.
uint64_t checked_count(int64_t value, const QuantizedWeight& weight, std::string_view field) {
  TS_CHECK(value >= 0 && value <= detail::kMaxDimension, "quant::metadata_json",
           "quantized weight '", weight.name, "': ", field, " ", value, " is outside [0, ",
           detail::kMaxDimension, "]");
  return uint64_t(value);
}

void append_sizes(std::string& out, const std::vector<int64_t>& sizes,
                  const QuantizedWeight& weight, std::string_view field) {
  out += '[';
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) out += ',';
    format::append_uint(out, checked_count(sizes[i], weight, field));
  }
  out += ']';
}

// Accessors that name the document and key in their errors, every value range-checked
// (format/checked_json.h): a bit count of 4294967300 is refused, never truncated to 4. `where`
// names the document without a trailing separator.
struct JsonDoc {
  std::string where;

  int64_t integer(simdjson::dom::element element, std::string_view key, int64_t min,
                  int64_t max) const {
    return format::checked_integer(element, where, key, min, max);
  }
  int bits(simdjson::dom::element element, std::string_view key) const {
    return int(integer(element, key, 1, 8));  // every scheme stores 1..8 bits a value
  }
  bool boolean(simdjson::dom::element element, std::string_view key) const {
    return format::checked_bool(element, where, key);
  }
  std::string string(simdjson::dom::element element, std::string_view key) const {
    return format::checked_string(element, where, key);
  }
  // An array of sizes, each in [min, detail::kMaxDimension]; `count` elements unless 0.
  std::vector<int64_t> sizes(simdjson::dom::element element, std::string_view key, int64_t min,
                             size_t count = 0) const {
    simdjson::dom::array array;
    TS_CHECK(!element.get_array().get(array), where, "'", key,
             "' must be an array of integers, found a ", format::json_kind(element));
    std::vector<int64_t> out;
    for (simdjson::dom::element item : array) {
      TS_CHECK(out.size() < 64, where, "'", key, "' has more than 64 elements");
      out.push_back(integer(item, key, min, detail::kMaxDimension));
    }
    TS_CHECK(!count || out.size() == count, where, "'", key, "' must have ", count,
             " elements, found ", out.size());
    return out;
  }
  // A group size: -1 (one group per row, as GPTQ writes it) or 0..kMaxDimension.
  int64_t group_size(simdjson::dom::element element, std::string_view key) const {
    return integer(element, key, -1, detail::kMaxDimension);
  }
  // `key` of `object`, if present.
  static bool get(simdjson::dom::object object, std::string_view key, simdjson::dom::element& out) {
    return !object[key].get(out);
  }
};

QuantizedWeight parse_weight(const JsonDoc& doc, std::string_view name,
                             simdjson::dom::object object) {
  const JsonDoc inner{doc.where + ": quantized weight '" + std::string(name) + "'"};
  QuantizedWeight weight;
  weight.name = std::string(name);
  bool has_scheme = false;
  for (auto field : object) {
    const std::string_view key = field.key;
    if (key == "scheme") {
      const std::string scheme = inner.string(field.value, key);
      const auto parsed = parse_scheme(scheme);
      TS_CHECK(parsed.has_value(), inner.where, "unknown scheme '", scheme, "' (expected one of ",
               scheme_list(), ")");
      weight.scheme = *parsed;
      has_scheme = true;
    } else if (key == "bits") {
      weight.bits = inner.bits(field.value, key);
    } else if (key == "group_size") {
      weight.group_size = inner.integer(field.value, key, 0, detail::kMaxDimension);
    } else if (key == "block_size") {
      weight.block_size = inner.sizes(field.value, key, 1, 2);
    } else if (key == "shape") {
      weight.shape = inner.sizes(field.value, key, 0);
    } else if (key == "zero_point") {
      const std::string mode = inner.string(field.value, key);
      TS_CHECK(mode == "stored" || mode == "stored_minus_one" || mode == "none", inner.where,
               "'zero_point' must be \"none\", \"stored\" or \"stored_minus_one\", found '", mode,
               "'");
      weight.zero_point_minus_one = mode == "stored_minus_one";
    } else if (key == "tensors") {
      simdjson::dom::object tensors;
      TS_CHECK(!field.value.get_object().get(tensors), inner.where,
               "'tensors' must be an object of role -> tensor name, found a ",
               format::json_kind(field.value));
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

// DeepSeek-V4's `expert_dtype` (inference/model.py `ModelArgs`; config.json's top level or its
// quantization_config): "fp4" routed experts are MXFP4 beside FP8 dense weights, so the scheme is
// then decided per weight.
void set_expert_dtype(QuantConfig& config, const JsonDoc& doc, const std::string& value) {
  TS_CHECK(value == "fp4" || value == "fp8" || value == "bf16", doc.where, "expert_dtype '", value,
           "' is not supported (expected fp4, fp8 or bf16)");
  config.expert_dtype = value;
  if (value != "fp8") config.scheme.reset();
}

// `quantization_config` of config.json (or hf_quant_config.json's `quantization`). Every field
// read is type- and range-checked; fields this reader does not use are left alone, except the
// few whose type decides the layout (sym, desc_act, symmetric, strategy), which are type-checked.
void apply_producer_config(QuantConfig& config, const JsonDoc& doc, simdjson::dom::object object) {
  auto get = [&](std::string_view key, simdjson::dom::element& out) {
    return JsonDoc::get(object, key, out);
  };
  simdjson::dom::element value;
  std::string method;
  if (get("quant_method", value)) method = doc.string(value, "quant_method");
  if (get("quant_algo", value)) method = "modelopt:" + doc.string(value, "quant_algo");
  if (method == "fp8" || method == "fbgemm_fp8" || method == "modelopt:FP8") {
    config.scheme = Scheme::kFp8;
    if (get("weight_block_size", value) && !value.is_null()) {
      config.block_size = doc.sizes(value, "weight_block_size", 1, 2);
    }
    // DeepSeek-V3.1/V4: "ue8m0" says the scales are powers of two (V4 stores them as F8_E8M0,
    // read as 2^(e - 127) whatever this says); any other value is refused, not guessed at.
    if (get("scale_fmt", value) && !value.is_null()) {
      config.scale_fmt = doc.string(value, "scale_fmt");
      TS_CHECK(config.scale_fmt == "ue8m0", doc.where, "scale_fmt '", config.scale_fmt,
               "' is not supported (expected \"ue8m0\" or none)");
    }
    if (get("expert_dtype", value) && !value.is_null()) {
      set_expert_dtype(config, doc, doc.string(value, "expert_dtype"));
    }
  } else if (method == "gptq") {
    config.scheme = Scheme::kGptq;
    if (get("checkpoint_format", value)) {
      config.zero_point_minus_one = doc.string(value, "checkpoint_format") != "gptq_v2";
    }
    // Act-order is read from g_idx itself; the flag's type is still checked.
    if (get("desc_act", value) && !value.is_null()) doc.boolean(value, "desc_act");
  } else if (method == "awq") {
    config.scheme = Scheme::kAwq;
    if (get("version", value)) {
      const std::string version = doc.string(value, "version");
      TS_CHECK(version == "gemm" || version == "GEMM", doc.where, "AWQ version '", version,
               "' is not supported (expected the GEMM layout)");
    }
    if (get("zero_point", value)) {
      TS_CHECK(doc.boolean(value, "zero_point"), doc.where,
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
    else if (format == "mxfp4-pack-quantized")
      config.scheme = Scheme::kMxfp4PackQuantized;
    else if (format == "mxfp6-pack-quantized")
      config.scheme = Scheme::kMxfp6PackQuantized;
    else if (format == "mxfp8-quantized")
      config.scheme = Scheme::kMxfp8Quantized;
    else
      TS_FAIL(doc.where, "compressed-tensors format '", format,
              "' is not supported (expected pack-quantized, nvfp4-pack-quantized, "
              "mxfp4-pack-quantized, mxfp6-pack-quantized, mxfp8-quantized or float-quantized)");
    // The first config group's weights describe every weight (one group is what producers write).
    simdjson::dom::object groups;
    if (get("config_groups", value) && !value.get_object().get(groups)) {
      for (auto group : groups) {
        simdjson::dom::element weights;
        simdjson::dom::object args;
        if (group.value["weights"].get(weights) || weights.get_object().get(args)) continue;
        const JsonDoc inner{doc.where + ": config_groups '" + std::string(group.key) +
                            "': weights"};
        simdjson::dom::element field;
        if (JsonDoc::get(args, "num_bits", field)) config.bits = inner.bits(field, "num_bits");
        if (JsonDoc::get(args, "group_size", field) && !field.is_null()) {
          config.group_size = inner.group_size(field, "group_size");
        }
        if (JsonDoc::get(args, "symmetric", field) && !field.is_null()) {
          config.symmetric = inner.boolean(field, "symmetric");
        }
        if (JsonDoc::get(args, "strategy", field) && !field.is_null()) {
          inner.string(field, "strategy");
        }
        if (JsonDoc::get(args, "block_structure", field) && !field.is_null()) {
          config.block_size = inner.sizes(field, "block_structure", 1, 2);
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
  if (get("bits", value)) config.bits = doc.bits(value, "bits");
  if (get("w_bit", value)) config.bits = doc.bits(value, "w_bit");
  if (get("group_size", value)) config.group_size = doc.group_size(value, "group_size");
  if (get("q_group_size", value)) config.group_size = doc.group_size(value, "q_group_size");
  if (get("sym", value) && !value.is_null()) config.symmetric = doc.boolean(value, "sym");
}

// Config files are small; a larger one is refused before it is read.
constexpr uint64_t kMaxConfigSize = uint64_t(16) << 20;

bool read_config_file(QuantConfig& config, const std::string& path, std::string_view key) {
  if (!storage::is_regular_file(path)) return false;
  const auto source = file_source(path, /*mapped=*/false);
  TS_CHECK(source->size() <= kMaxConfigSize, path, "is ", source->size(), " bytes, more than the ",
           kMaxConfigSize, " bytes a config file may have");
  std::string text(source->size(), '\0');
  source->read(text.data(), text.size(), 0);
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  const auto error = parser.parse(text).get(root);
  TS_CHECK(!error, path, "is not valid JSON: ", simdjson::error_message(error));
  simdjson::dom::object section;
  if (root[key].get_object().get(section)) return false;
  config.source = path;
  apply_producer_config(config, JsonDoc{path + ": '" + std::string(key) + "'"}, section);
  // DeepSeek-V4 (inference/model.py `ModelArgs.expert_dtype`, config.json top level): "fp4"
  // routed experts are MXFP4 beside FP8 dense weights, so the scheme is decided per weight.
  simdjson::dom::element expert_dtype;
  if (!root["expert_dtype"].get(expert_dtype) && !expert_dtype.is_null()) {
    const JsonDoc doc{path};
    set_expert_dtype(config, doc, doc.string(expert_dtype, "expert_dtype"));
  }
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
    TS_CHECK(weight.bits >= 1 && weight.bits <= 8, "quant::metadata_json", "quantized weight '",
             weight.name, "': bits ", weight.bits, " is outside [1, 8]");
    format::append_uint(out, uint64_t(weight.bits));
    out += ",\"group_size\":";
    format::append_uint(
        out, checked_count(std::max<int64_t>(weight.group_size, 0), weight, "group_size"));
    if (!weight.block_size.empty()) {
      out += ",\"block_size\":";
      append_sizes(out, weight.block_size, weight, "block_size");
    }
    out += ",\"packing\":";
    format::append_json_string(out, detail::packing_name(weight.scheme));
    const bool has_zero = weight.tensors.count("zero_point") != 0;
    out += ",\"zero_point\":";
    format::append_json_string(out, !has_zero                     ? "none"
                                    : weight.zero_point_minus_one ? "stored_minus_one"
                                                                  : "stored");
    out += ",\"shape\":";
    append_sizes(out, weight.shape, weight, "shape");
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

namespace {

std::map<std::string, QuantizedWeight> parse_metadata(std::string_view json,
                                                      std::string_view source,
                                                      std::string_view key) {
  const JsonDoc doc{std::string(source) + ": metadata '" + std::string(key) + "'"};
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  const auto error = parser.parse(json.data(), json.size()).get(root);
  TS_CHECK(!error, doc.where, "is not valid JSON: ", simdjson::error_message(error));
  simdjson::dom::object object;
  TS_CHECK(!root.get_object().get(object), doc.where, "must be a JSON object, found a ",
           format::json_kind(root));
  simdjson::dom::element field;
  TS_CHECK(JsonDoc::get(object, "format", field) && doc.string(field, "format") == kFormat,
           doc.where, "'format' must be \"", kFormat, "\"");
  TS_CHECK(JsonDoc::get(object, "version", field), doc.where, "has no 'version'");
  const int64_t version = doc.integer(field, "version", 0, INT64_MAX);
  TS_CHECK(version == int64_t(kVersion), doc.where, "'version' is ", version, ", but this library ",
           "reads version ", kVersion);
  simdjson::dom::object weights;
  TS_CHECK(JsonDoc::get(object, "weights", field) && !field.get_object().get(weights), doc.where,
           "'weights' must be an object of dense name -> layout");
  std::map<std::string, QuantizedWeight> out;
  for (auto entry : weights) {
    simdjson::dom::object layout;
    TS_CHECK(!entry.value.get_object().get(layout), doc.where, "weight '", entry.key,
             "' must be an object, found a ", format::json_kind(entry.value));
    TS_CHECK(!out.count(std::string(entry.key)), doc.where, "weight '", entry.key,
             "' is described twice");
    out.emplace(std::string(entry.key), parse_weight(doc, entry.key, layout));
  }
  return out;
}

}  // namespace

std::map<std::string, QuantizedWeight> parse_metadata_json(std::string_view json,
                                                           std::string_view source) {
  return parse_metadata(json, source, kMetadataKey);
}

bool is_metadata_json(std::string_view json) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  simdjson::dom::object object;
  simdjson::dom::element format;
  std::string_view value;
  return !parser.parse(json.data(), json.size()).get(root) && !root.get_object().get(object) &&
         !object["format"].get(format) && !format.get_string().get(value) && value == kFormat;
}

QuantConfig read_config(const Checkpoint& checkpoint) {
  QuantConfig config;
  const auto& metadata = checkpoint.metadata();
  if (metadata) {
    // Ours under the namespaced key; under 0.2's plain key only if it is our document, since
    // other tools put their own values there ("quantization": "none").
    for (std::string_view key : {kMetadataKey, kLegacyMetadataKey}) {
      const auto found = metadata->find(std::string(key));
      if (found == metadata->end()) continue;
      if (key == kLegacyMetadataKey && !is_metadata_json(found->second)) continue;
      config.weights = parse_metadata(found->second, checkpoint.path(), key);
      config.source = checkpoint.path() + ": __metadata__['" + std::string(key) + "']";
      return config;
    }
  }
  const std::string& directory = checkpoint.directory();
  if (directory.empty()) return config;  // not a file (bytes, a stream): no folder to look in
  if (read_config_file(config, storage::join_path(directory, "config.json"),
                       "quantization_config")) {
    return config;
  }
  read_config_file(config, storage::join_path(directory, "hf_quant_config.json"), "quantization");
  return config;
}

namespace {

// The entries to write and the metadata with our description added.
std::vector<SaveEntry> entries_with_description(
    const std::vector<Quantized>& weights,
    const std::vector<std::pair<std::string, at::Tensor>>& others,
    std::optional<Metadata>& metadata, std::string_view caller) {
  std::vector<SaveEntry> entries;
  std::vector<QuantizedWeight> layouts;
  for (const Quantized& weight : weights) {
    for (const auto& [name, tensor] : weight.tensors) entries.emplace_back(name, tensor);
    layouts.push_back(weight.weight);
  }
  for (const auto& [name, tensor] : others) entries.emplace_back(name, tensor);
  if (!metadata) metadata.emplace();
  TS_CHECK(!metadata->count(std::string(kMetadataKey)), caller, "metadata already has the key '",
           kMetadataKey, "', which ", caller, " writes");
  metadata->emplace(std::string(kMetadataKey), metadata_json(layouts));
  return entries;
}

}  // namespace

void save(const std::vector<Quantized>& weights,
          const std::vector<std::pair<std::string, at::Tensor>>& others, const SaveTo& to,
          std::optional<Metadata> metadata) {
  auto entries = entries_with_description(weights, others, metadata, "quant::save");
  torch::safetensors::save(entries, to, metadata);
}

void save_sharded(const std::vector<Quantized>& weights,
                  const std::vector<std::pair<std::string, at::Tensor>>& others,
                  const PathArg& directory, ShardOptions options) {
  auto entries = entries_with_description(weights, others, options.metadata, "quant::save_sharded");
  torch::safetensors::save_sharded(std::move(entries), directory, options);
}

}  // namespace torch::safetensors::quant
