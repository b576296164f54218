// The save-side layout planner and header serialization: what every save writes, planned before
// any byte is, and written exactly as the reference implementation (serde_json, compact) writes
// it, so that saved files are byte-identical.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <unordered_set>

#include <simdjson.h>

#include "check.h"
#include "format/json_writer.h"
#include "torch_safetensors/header.h"

namespace torch::safetensors {
namespace {

void check_utf8(std::string_view text, std::string_view source, std::string_view what) {
  TS_CHECK(simdjson::validate_utf8(text.data(), text.size()), source, what,
           " is not valid UTF-8, which a JSON header cannot hold");
}

// The code point of the control character at `text[i]` (C0, DEL, or C1 as UTF-8 C2 80-9F), or
// -1 when there is none there.
int control_character_at(std::string_view text, size_t i) {
  const auto byte = static_cast<unsigned char>(text[i]);
  if (byte < 0x20 || byte == 0x7F) return byte;
  if (byte == 0xC2 && i + 1 < text.size()) {
    const auto next = static_cast<unsigned char>(text[i + 1]);
    if (next >= 0x80 && next <= 0x9F) return next;
  }
  return -1;
}

bool text_whitespace(int code_point) {
  return code_point == '\t' || code_point == '\n' || code_point == '\r';
}

}  // namespace

size_t find_control_character(std::string_view text, HeaderText kind) {
  for (size_t i = 0; i < text.size(); ++i) {
    const int code_point = control_character_at(text, i);
    if (code_point < 0) continue;
    if (kind == HeaderText::kMetadataValue && text_whitespace(code_point)) continue;
    return i;
  }
  return std::string_view::npos;
}

std::string escape_control_characters(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const int code_point = control_character_at(text, i);
    if (code_point < 0) {
      out += text[i];
      continue;
    }
    format::append_u_escape(out, uint32_t(code_point));
    if (code_point >= 0x80) ++i;  // the second byte of a C1 control
  }
  return out;
}

void check_header_text(std::string_view text, HeaderText kind, std::string_view source,
                       std::string_view what) {
  const size_t at = find_control_character(text, kind);
  if (at == std::string_view::npos) return;
  char code_point[8];
  std::snprintf(code_point, sizeof(code_point), "U+%04X", control_character_at(text, at));
  // Other tools truncate names at NUL, and a terminal runs escape sequences printed with them.
  TS_CHECK_VALUE(false, source, what, " '", escape_control_characters(text),
                 "' holds the control character ", code_point, " at byte ", at, "; ",
                 kind == HeaderText::kName
                     ? "names and metadata keys may hold no control character (U+0000-U+001F, "
                       "U+007F-U+009F)"
                     : "metadata values may hold tab, newline and carriage return but no other "
                       "control character",
                 ", which this library refuses to write although the reference writes them "
                 "(docs/dtypes-and-validation.md)");
}

Layout plan_layout(c10::ArrayRef<TensorInfo> tensors, const std::optional<Metadata>& metadata,
                   std::string_view source, uint64_t alignment) {
  TS_CHECK_VALUE(alignment >= 1 && alignment <= kMaxAlignment && (alignment & (alignment - 1)) == 0,
                 source, "alignment must be a power of two of at most ", kMaxAlignment,
                 " bytes, found ", alignment);
  alignment = std::max(alignment, kReferenceAlignment);
  std::unordered_set<std::string_view> names;
  names.reserve(tensors.size());
  size_t name_bytes = 0;
  std::vector<uint64_t> sizes(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& info = tensors[i];
    // The reference writes such a file, then cannot read it.
    TS_CHECK_VALUE(info.name != "__metadata__", source,
                   "a tensor cannot be named '__metadata__' (the key is reserved for metadata)");
    check_header_text(info.name, HeaderText::kName, source, "tensor name");
    TS_CHECK(names.insert(info.name).second, source, "tensor '", info.name, "' is given twice");
    sizes[i] = tensor_nbytes(info.dtype, info.shape, source, info.name);
    name_bytes += info.name.size();
  }
  if (metadata) {
    for (const auto& [key, value] : *metadata) {
      check_header_text(key, HeaderText::kName, source, "metadata key");
      check_header_text(value, HeaderText::kMetadataValue, source,
                        "metadata value of '" + escape_control_characters(key) + "':");
    }
  }
  // The reference's order: dtype descending (its enum order), then name, bytewise. Above its
  // alignment, the tensors whose sizes are whole multiples of the alignment go first.
  const auto off_boundary = [&](size_t i) {
    return alignment > kReferenceAlignment && sizes[i] % alignment != 0;
  };
  Layout layout;
  layout.order.resize(tensors.size());
  std::iota(layout.order.begin(), layout.order.end(), size_t(0));
  std::stable_sort(layout.order.begin(), layout.order.end(), [&](size_t a, size_t b) {
    if (off_boundary(a) != off_boundary(b)) return off_boundary(b);
    if (tensors[a].dtype != tensors[b].dtype) return tensors[a].dtype > tensors[b].dtype;
    return tensors[a].name < tensors[b].name;
  });

  Header& header = layout.header;
  std::shared_ptr<char[]> name_buffer(new char[std::max<size_t>(name_bytes, 1)]);
  char* next_name = name_buffer.get();
  header.tensors_.reserve(tensors.size());
  uint64_t offset = 0;
  for (size_t i : layout.order) {
    TensorInfo info = tensors[i];
    if (!info.name.empty()) std::memcpy(next_name, info.name.data(), info.name.size());
    info.name = std::string_view(next_name, info.name.size());
    next_name += info.name.size();
    info.begin = offset;
    info.end = offset += sizes[i];
    header.tensors_.push_back(std::move(info));
  }
  header.names_ = std::move(name_buffer);
  header.metadata_ = metadata;
  header.index();  // names were checked unique above
  layout.header_bytes = serialize_header(header, source, alignment);
  header.header_size_ = layout.header_bytes.size() - kHeaderLengthSize;
  return layout;
}

std::string serialize_header(const Header& header, std::string_view source, uint64_t alignment) {
  TS_CHECK_VALUE(alignment >= kReferenceAlignment && alignment <= kMaxAlignment &&
                     (alignment & (alignment - 1)) == 0,
                 source, "header alignment must be a power of two from 8 to ", kMaxAlignment,
                 " bytes, found ", alignment);
  const auto& metadata = header.metadata();
  std::string out(kHeaderLengthSize, '\0');
  out.reserve(64 + header.size() * 96);
  out += '{';
  bool first = true;
  if (metadata) {
    out += "\"__metadata__\":{";
    bool first_key = true;
    for (const auto& [key, value] : *metadata) {
      check_utf8(key, source, "metadata key '" + key + "'");
      check_utf8(value, source, "metadata value of '" + key + "'");
      if (!first_key) out += ',';
      first_key = false;
      format::append_json_string(out, key);
      out += ':';
      format::append_json_string(out, value);
    }
    out += '}';
    first = false;
  }
  for (const TensorInfo& info : header.tensors()) {
    check_utf8(info.name, source, "tensor name '" + std::string(info.name) + "'");
    if (!first) out += ',';
    first = false;
    format::append_json_string(out, info.name);
    out += ":{\"dtype\":\"";
    out += dtype_name(info.dtype);
    out += "\",\"shape\":[";
    for (size_t i = 0; i < info.shape.size(); ++i) {
      if (i) out += ',';
      format::append_uint(out, uint64_t(info.shape[i]));
    }
    out += "],\"data_offsets\":[";
    format::append_uint(out, info.begin);
    out += ',';
    format::append_uint(out, info.end);
    out += "]}";
  }
  out += '}';
  const size_t json_size = out.size() - kHeaderLengthSize;
  // Spaces until the data section (after the u64 length and the JSON) starts on `alignment`.
  const size_t padded =
      (kHeaderLengthSize + json_size + alignment - 1) / alignment * alignment - kHeaderLengthSize;
  out.append(padded - json_size, ' ');
  TS_CHECK(padded <= kMaxHeaderSize, source, "header of ", padded, " bytes exceeds the limit of ",
           kMaxHeaderSize, " bytes (too many tensors or too much metadata)");
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((uint64_t(padded) >> (8 * i)) & 0xFF);
  return out;
}

}  // namespace torch::safetensors
