// JSON output exactly as serde_json (which the reference implementation uses) writes it, for the
// header and for the JSON documents kept in metadata (optimizer state); and as Python's json
// module writes it, for sharded checkpoint indexes (format/index.cpp).
#pragma once

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>

namespace torch::safetensors::format {

// The two-character escapes JSON has (\" \\ \b \f \n \r \t): appends one and returns true, or
// returns false for any other byte. Shared by both writers below.
inline bool append_short_escape(std::string& out, char c) {
  switch (c) {
    case '"':
      out += "\\\"";
      return true;
    case '\\':
      out += "\\\\";
      return true;
    case '\b':
      out += "\\b";
      return true;
    case '\f':
      out += "\\f";
      return true;
    case '\n':
      out += "\\n";
      return true;
    case '\r':
      out += "\\r";
      return true;
    case '\t':
      out += "\\t";
      return true;
    default:
      return false;
  }
}

inline void append_u_escape(std::string& out, uint32_t unit) {  // \uXXXX, lowercase hex
  static constexpr char kHex[] = "0123456789abcdef";
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4) out += kHex[(unit >> shift) & 0xF];
}

// JSON string escaping exactly as serde_json writes it (UTF-8 kept as is).
inline void append_json_string(std::string& out, std::string_view text) {
  out += '"';
  for (char c : text) {
    if (append_short_escape(out, c)) continue;
    if (static_cast<unsigned char>(c) < 0x20) {
      append_u_escape(out, static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  out += '"';
}

// JSON string escaping exactly as Python's json.dumps (ensure_ascii=True) writes it: ASCII out,
// everything else (and DEL) as \uXXXX, with surrogate pairs above U+FFFF. `utf8` must be valid.
inline void append_ascii_json_string(std::string& out, std::string_view utf8) {
  out += '"';
  for (size_t i = 0; i < utf8.size();) {
    const auto c = static_cast<unsigned char>(utf8[i]);
    if (c < 0x80) {
      ++i;
      if (append_short_escape(out, char(c))) continue;
      if (c < 0x20 || c == 0x7F) {
        append_u_escape(out, c);
      } else {
        out += char(c);
      }
      continue;
    }
    const int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
    uint32_t code = c & (0x3F >> extra);
    for (int k = 1; k <= extra && i + k < utf8.size(); ++k)
      code = (code << 6) | (static_cast<unsigned char>(utf8[i + k]) & 0x3F);
    i += size_t(extra) + 1;
    if (code >= 0x10000) {
      code -= 0x10000;
      append_u_escape(out, 0xD800 | (code >> 10));
      append_u_escape(out, 0xDC00 | (code & 0x3FF));
    } else {
      append_u_escape(out, code);
    }
  }
  out += '"';
}

inline void append_uint(std::string& out, uint64_t value) {
  char buffer[24];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, result.ptr);
}

}  // namespace torch::safetensors::format
