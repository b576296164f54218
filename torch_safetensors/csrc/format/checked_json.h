// Typed, range-checked values of a simdjson DOM (config files, metadata entries): the one place
// where a JSON number becomes a C++ integer, so that no reader truncates, wraps or rounds one.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include <simdjson.h>

#include "check.h"

namespace torch::safetensors::format {

// "array", "object", "string", "bool", "null" or "number", for messages.
inline std::string_view json_kind(simdjson::dom::element element) {
  switch (element.type()) {
    case simdjson::dom::element_type::ARRAY:
      return "array";
    case simdjson::dom::element_type::OBJECT:
      return "object";
    case simdjson::dom::element_type::STRING:
      return "string";
    case simdjson::dom::element_type::BOOL:
      return "bool";
    case simdjson::dom::element_type::NULL_VALUE:
      return "null";
    default:
      return "number";
  }
}

// The integer `element` holds, within [min, max]: an int64, a uint64 or a whole double (configs
// write 128.0 at times). Anything else -- a fraction, a string, a bool, a value outside the range
// (4294967300 for a bit count) -- is a c10::Error "safetensors: <where>: '<key>' ...", naming the
// value found and the range expected. `where` names the document and the value's place in it,
// without a trailing separator (TS_CHECK adds ": ").
inline int64_t checked_integer(simdjson::dom::element element, std::string_view where,
                               std::string_view key, int64_t min, int64_t max) {
  auto fail_range = [&](const auto& found) {
    TS_FAIL(where, "'", key, "' must be an ",
            "integer in [", min, ", ", max, "], found ", found);
  };
  int64_t value = 0;
  uint64_t big = 0;
  double number = 0;
  if (!element.get_int64().get(value)) {
    if (value < min || value > max) fail_range(value);
    return value;
  }
  if (!element.get_uint64().get(big)) fail_range(big);  // above INT64_MAX
  if (!element.get_double().get(number)) {
    // Compared as doubles first: converting one outside int64's range is undefined.
    const bool whole = std::isfinite(number) && number == std::floor(number);
    if (!whole) fail_range(number);
    if (!(number >= -9223372036854775808.0 && number < 9223372036854775808.0)) fail_range(number);
    value = int64_t(number);
    if (value < min || value > max) fail_range(number);
    return value;
  }
  fail_range(std::string("a ") + std::string(json_kind(element)));
  return 0;  // unreachable
}

inline bool checked_bool(simdjson::dom::element element, std::string_view where,
                         std::string_view key) {
  bool value = false;
  TS_CHECK(!element.get_bool().get(value), where,
           "'", key, "' must be true or false, found a ", json_kind(element));
  return value;
}

inline std::string checked_string(simdjson::dom::element element, std::string_view where,
                                  std::string_view key) {
  std::string_view value;
  TS_CHECK(!element.get_string().get(value),
           where, "'", key,
           "' must be a string, found a ", json_kind(element));
  return std::string(value);
}

}  // namespace torch::safetensors::format
