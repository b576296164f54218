// The sharded checkpoint index: parse + validate, serialize. See index.h.
#include "format/index.h"

#include <unordered_set>

#include <simdjson.h>

#include "check.h"
#include "format/json_writer.h"

namespace torch::safetensors::format {
namespace {

std::string_view kind_name(simdjson::dom::element_type type) {
  using T = simdjson::dom::element_type;
  switch (type) {
    case T::OBJECT:
      return "an object";
    case T::ARRAY:
      return "an array";
    case T::STRING:
      return "a string";
    case T::INT64:
    case T::UINT64:
    case T::DOUBLE:
      return "a number";
    case T::BOOL:
      return "a boolean";
    case T::NULL_VALUE:
      return "null";
  }
  return "a JSON value";
}

}  // namespace

void check_shard_file_name(std::string_view file, const std::string& index_name,
                           std::string_view extension) {
  const std::string shown(file);
  TS_CHECK(!file.empty(), index_name, "a weight_map entry names an empty shard file");
  TS_CHECK(file.find('\0') == std::string_view::npos, index_name,
           "a weight_map entry names a shard file with a NUL character");
  TS_CHECK(file.front() != '/' && file.find('\\') == std::string_view::npos &&
               !(file.size() >= 2 && file[1] == ':'),
           index_name, "shard file '", shown,
           "' is not a relative path: shards must lie inside the index's folder");
  for (size_t begin = 0; begin <= file.size();) {
    size_t end = file.find('/', begin);
    if (end == std::string_view::npos) end = file.size();
    TS_CHECK(file.substr(begin, end - begin) != "..", index_name, "shard file '", shown,
             "' has a '..' component: shards must lie inside the index's folder");
    begin = end + 1;
  }
  TS_CHECK(file.size() > extension.size() &&
               file.substr(file.size() - extension.size()) == extension && file.back() != '/',
           index_name, "shard file '", shown, "' is not a '", extension, "' file");
}

CheckpointIndex parse_index(std::string_view json, const std::string& index_name,
                            std::string_view extension) {
  TS_CHECK(json.size() <= kMaxIndexSize, index_name, "index is ", json.size(),
           " bytes, more than the ", kMaxIndexSize, " bytes an index may have");
  TS_CHECK(simdjson::validate_utf8(json.data(), json.size()), index_name,
           "index is not valid UTF-8");
  simdjson::dom::parser parser;
  const simdjson::padded_string padded(json);
  simdjson::dom::element root;
  const auto error = parser.parse(padded).get(root);
  TS_CHECK(!error, index_name, "index is not valid JSON: ", simdjson::error_message(error));
  simdjson::dom::object top;
  TS_CHECK(!root.get(top), index_name, "index must be a JSON object, found ",
           kind_name(root.type()));

  CheckpointIndex index;
  bool seen_map = false, seen_metadata = false;
  for (auto [key, value] : top) {
    if (key == "weight_map") {
      TS_CHECK(!seen_map, index_name, "index has two 'weight_map' members");
      seen_map = true;
      simdjson::dom::object map;
      TS_CHECK(!value.get(map), index_name, "'weight_map' must be an object, found ",
               kind_name(value.type()));
      std::unordered_set<std::string_view> names;
      for (auto [name, file_value] : map) {
        std::string_view file;
        TS_CHECK(!file_value.get(file), index_name, "weight_map entry '", name,
                 "' must be a shard file name (a string), found ", kind_name(file_value.type()));
        TS_CHECK(names.insert(name).second, index_name, "tensor '", name,
                 "' is listed twice in weight_map");
        check_shard_file_name(file, index_name, extension);
        index.weight_map.emplace_back(std::string(name), std::string(file));
      }
    } else if (key == "metadata") {
      TS_CHECK(!seen_metadata, index_name, "index has two 'metadata' members");
      seen_metadata = true;
      simdjson::dom::object metadata;
      TS_CHECK(!value.get(metadata), index_name, "'metadata' must be an object, found ",
               kind_name(value.type()));
      for (auto [name, entry] : metadata) {
        uint64_t size = 0;
        std::string_view text;
        if (name == "total_size" && !entry.get(size)) {
          index.total_size = size;
        } else if (!entry.get(text)) {
          index.metadata[std::string(name)] = std::string(text);
        } else {
          index.metadata[std::string(name)] = simdjson::minify(entry);
        }
      }
    }
    // Other members are ignored, as huggingface_hub and transformers do.
  }
  TS_CHECK(seen_map, index_name, "index has no 'weight_map' object");
  return index;
}

std::string index_json(const CheckpointIndex& index) {
  std::string out = "{\n  \"metadata\": {";
  bool first = true;
  auto member = [&](std::string_view name, int indent) {
    out += first ? "\n" : ",\n";
    first = false;
    out.append(size_t(indent), ' ');
    append_ascii_json_string(out, name);
    out += ": ";
  };
  const auto overridden = index.metadata.find("total_size");
  if (overridden != index.metadata.end()) {
    member("total_size", 4);
    append_ascii_json_string(out, overridden->second);
  } else if (index.total_size) {
    member("total_size", 4);
    append_uint(out, *index.total_size);
  }
  for (const auto& [name, value] : index.metadata) {
    if (name == "total_size") continue;
    member(name, 4);
    append_ascii_json_string(out, value);
  }
  out += first ? "}" : "\n  }";
  out += ",\n  \"weight_map\": {";
  first = true;
  for (const auto& [name, file] : index.weight_map) {
    member(name, 4);
    append_ascii_json_string(out, file);
  }
  out += first ? "}" : "\n  }";
  out += "\n}";
  return out;
}

}  // namespace torch::safetensors::format
