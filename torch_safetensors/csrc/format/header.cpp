// Header parse, validation and serialization: the whole format, top to bottom.
//
// parse_header turns untrusted JSON into a Header and checks every rule of the format in one
// place; nothing downstream re-checks offsets. serialize_header writes exactly what the reference
// implementation (serde_json, compact) writes, so that saved files are byte-identical.
#include "torch_safetensors/header.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <sstream>
#include <unordered_set>

#include <simdjson.h>

#include "check.h"

namespace torch::safetensors {
namespace {

namespace dom = simdjson::dom;

std::string_view json_type_name(dom::element_type type) {
  switch (type) {
    case dom::element_type::ARRAY:
      return "an array";
    case dom::element_type::OBJECT:
      return "an object";
    case dom::element_type::INT64:
    case dom::element_type::UINT64:
      return "an integer";
    case dom::element_type::DOUBLE:
      return "a floating-point number";
    case dom::element_type::STRING:
      return "a string";
    case dom::element_type::BOOL:
      return "a boolean";
    case dom::element_type::NULL_VALUE:
      return "null";
  }
  return "an unknown value";
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

std::string known_dtypes() {
  std::string all;
  for (int i = 0; i < kNumDtypes; ++i) {
    all += (i ? ", " : "");
    all += dtype_name(static_cast<Dtype>(i));
  }
  return all;
}

// "tensor 'name': " in error messages. Streamed only when a check fails: building these strings
// eagerly cost more than the parse itself on 100,000-tensor headers.
struct Where {
  std::string_view name;
};
std::ostream& operator<<(std::ostream& out, const Where& w) {
  return out << "tensor '" << w.name << "': ";
}
// "tensor 'name': shape[2]" / "tensor 'name': data_offsets[0]".
struct Element {
  Where where;
  const char* field;
  size_t index;
};
std::ostream& operator<<(std::ostream& out, const Element& e) {
  return out << e.where << e.field << '[' << e.index << ']';
}

// A non-negative JSON integer, or an error naming `what`.
template <typename What>
uint64_t get_unsigned(dom::element value, std::string_view source, const What& what) {
  uint64_t out = 0;
  if (value.get_uint64().get(out) == simdjson::SUCCESS) return out;
  if (value.type() == dom::element_type::INT64) {
    TS_FAIL(source, what, " must be a non-negative integer, found ", int64_t(value));
  }
  TS_FAIL(source, what, " must be a non-negative integer, found ", json_type_name(value.type()));
}

Metadata parse_metadata(dom::element value, std::string_view source) {
  dom::object object;
  TS_CHECK(value.get_object().get(object) == simdjson::SUCCESS, source,
           "__metadata__ must be an object of strings, found ", json_type_name(value.type()));
  Metadata metadata;
  for (auto field : object) {
    std::string_view text;
    TS_CHECK(field.value.get_string().get(text) == simdjson::SUCCESS, source, "__metadata__ key '",
             field.key, "' must have a string value, found ", json_type_name(field.value.type()));
    bool inserted = metadata.emplace(std::string(field.key), std::string(text)).second;
    TS_CHECK(inserted, source, "__metadata__ has the key '", field.key, "' twice");
  }
  return metadata;
}

TensorInfo parse_tensor(std::string_view name, dom::element value, std::string_view source) {
  TensorInfo info;
  info.name = std::string(name);
  const Where where{name};
  dom::object object;
  TS_CHECK(value.get_object().get(object) == simdjson::SUCCESS, source, where,
           "expected an object with dtype, shape and data_offsets, found ",
           json_type_name(value.type()));

  bool has_dtype = false, has_shape = false, has_offsets = false;
  for (auto field : object) {
    if (field.key == "dtype") {
      TS_CHECK(!has_dtype, source, where, "'dtype' appears twice");
      has_dtype = true;
      std::string_view text;
      TS_CHECK(field.value.get_string().get(text) == simdjson::SUCCESS, source, where,
               "dtype must be a string, found ", json_type_name(field.value.type()));
      auto dtype = parse_dtype(text);
      TS_CHECK(dtype.has_value(), source, where, "unknown dtype '", text,
               "' (dtypes are case-sensitive; expected one of ", known_dtypes(), ")");
      info.dtype = *dtype;
    } else if (field.key == "shape") {
      TS_CHECK(!has_shape, source, where, "'shape' appears twice");
      has_shape = true;
      dom::array dims;
      TS_CHECK(field.value.get_array().get(dims) == simdjson::SUCCESS, source, where,
               "shape must be an array of integers, found ", json_type_name(field.value.type()));
      for (dom::element dim : dims) {
        const Element what{where, "shape", info.shape.size()};
        uint64_t size = get_unsigned(dim, source, what);
        TS_CHECK(size <= uint64_t(INT64_MAX), source, what, " = ", size, " is too large");
        info.shape.push_back(int64_t(size));
      }
    } else if (field.key == "data_offsets") {
      TS_CHECK(!has_offsets, source, where, "'data_offsets' appears twice");
      has_offsets = true;
      dom::array offsets;
      TS_CHECK(field.value.get_array().get(offsets) == simdjson::SUCCESS && offsets.size() == 2,
               source, where, "data_offsets must be an array of two integers [begin, end]");
      info.begin = get_unsigned(offsets.at(0), source, Element{where, "data_offsets", 0});
      info.end = get_unsigned(offsets.at(1), source, Element{where, "data_offsets", 1});
    }
    // Other fields are ignored, as the reference does, so that every file it reads we read too.
  }
  TS_CHECK(has_dtype, source, where, "missing 'dtype'");
  TS_CHECK(has_shape, source, where, "missing 'shape'");
  TS_CHECK(has_offsets, source, where, "missing 'data_offsets'");
  return info;
}

// The one place where offsets are checked against each other and against the file. Returns
// whether it had to reorder the tensors (headers written by save are in file order already).
bool validate_layout(std::vector<TensorInfo>& tensors, uint64_t data_size,
                     std::string_view source) {
  // File order. Stable, so that zero-size tensors sharing an offset keep their header order.
  const auto by_offset = [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  };
  const bool reorder = !std::is_sorted(tensors.begin(), tensors.end(), by_offset);
  if (reorder) std::stable_sort(tensors.begin(), tensors.end(), by_offset);
  uint64_t expected = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& info : tensors) {
    const Where where{info.name};
    TS_CHECK(info.begin <= info.end, source, where, "data_offsets [", info.begin, ", ", info.end,
             "] start after they end");
    TS_CHECK(info.end <= data_size, source, where, "data_offsets [", info.begin, ", ", info.end,
             "] extend beyond the data section of ", data_size, " bytes");
    if (info.begin < expected) {
      TS_FAIL(source, where, "data_offsets [", info.begin, ", ", info.end,
              "] overlap the previous tensor '", previous->name, "', which ends at ", expected);
    }
    if (info.begin > expected) {
      TS_FAIL(source, where, "data_offsets [", info.begin, ", ", info.end, "] leave a gap of ",
              info.begin - expected, " bytes ",
              previous ? "after the previous tensor '" + previous->name + "'"
                       : std::string("at the start of the data section"));
    }
    const uint64_t needed = tensor_nbytes(info.dtype, info.shape, source, info.name);
    TS_CHECK(needed == info.nbytes(), source, where, "dtype ", dtype_name(info.dtype),
             " and shape ", shape_str(info.shape), " need ", needed, " bytes, but data_offsets [",
             info.begin, ", ", info.end, "] span ", info.nbytes());
    expected = info.end;
    previous = &info;
  }
  TS_CHECK(expected == data_size, source, "the tensors cover ", expected,
           " bytes, but the data section has ", data_size,
           " bytes (the file has trailing bytes no tensor accounts for)");
  return reorder;
}

// JSON string escaping exactly as serde_json writes it.
void append_json_string(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (u < 0x20) {
          out += "\\u00";
          out += kHex[u >> 4];
          out += kHex[u & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void append_uint(std::string& out, uint64_t value) {
  char buffer[24];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, result.ptr);
}

void check_utf8(std::string_view text, std::string_view source, std::string_view what) {
  TS_CHECK(simdjson::validate_utf8(text.data(), text.size()), source, what,
           " is not valid UTF-8, which a JSON header cannot hold");
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated not to overflow
  return n;
}

Header::Header(const Header& other)
    : metadata(other.metadata), tensors(other.tensors), header_size(other.header_size) {
  index();
}

Header& Header::operator=(const Header& other) {
  if (this != &other) {
    metadata = other.metadata;
    tensors = other.tensors;
    header_size = other.header_size;
    index();
  }
  return *this;
}

bool Header::index() {
  by_name_.clear();
  by_name_.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) by_name_.emplace(tensors[i].name, i);
  return by_name_.size() == tensors.size();
}

const TensorInfo* Header::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors[it->second];
}

const TensorInfo& Header::at(std::string_view name, std::string_view source) const {
  if (const TensorInfo* info = find(name)) return *info;
  std::string some;
  for (size_t i = 0; i < tensors.size() && i < 5; ++i)
    some += (i ? ", '" : "'") + tensors[i].name + "'";
  if (tensors.size() > 5) some += ", ...";
  TS_FAIL(source, "no tensor named '", name, "' (the file has ", tensors.size(), " tensors",
          tensors.empty() ? "" : ": ", some, ")");
}

uint64_t tensor_nbytes(Dtype dtype, const std::vector<int64_t>& shape, std::string_view source,
                       std::string_view name) {
  uint64_t numel = 1;
  for (int64_t dim : shape) {
    TS_CHECK(dim >= 0, source, "tensor '", name, "': negative dimension ", dim);
    TS_CHECK(!__builtin_mul_overflow(numel, uint64_t(dim), &numel) && numel <= uint64_t(INT64_MAX),
             source, "tensor '", name, "': shape ", shape_str(shape),
             " has more elements than 64-bit sizes can count");
  }
  uint64_t bits = 0;
  TS_CHECK(!__builtin_mul_overflow(numel, uint64_t(dtype_bits(dtype)), &bits), source, "tensor '",
           name, "': shape ", shape_str(shape), " of ", dtype_name(dtype),
           " has more bits than 64-bit sizes can count");
  TS_CHECK(bits % 8 == 0, source, "tensor '", name, "': ", numel, " elements of ",
           dtype_name(dtype), " make ", bits, " bits, not a whole number of bytes");
  return bits / 8;
}

uint64_t parse_header_length(std::string_view first8, uint64_t file_size, std::string_view source) {
  TS_CHECK(first8.size() >= kHeaderLengthSize && file_size >= kHeaderLengthSize, source, "file is ",
           file_size, " bytes, too small to hold the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(first8[i]);  // LE
  TS_CHECK(n <= kMaxHeaderSize, source, "header length ", n, " exceeds the limit of ",
           kMaxHeaderSize, " bytes");
  TS_CHECK(n <= file_size - kHeaderLengthSize, source, "header length ", n,
           " exceeds the file: only ", file_size - kHeaderLengthSize,
           " bytes follow the length prefix (truncated file?)");
  return n;
}

Header parse_header(std::string_view json, uint64_t file_size, std::string_view source) {
  TS_CHECK(json.size() <= file_size - std::min(file_size, kHeaderLengthSize), source, "header of ",
           json.size(), " bytes does not fit in a file of ", file_size, " bytes");
  dom::parser parser;
  dom::element root;
  auto error = parser.parse(json.data(), json.size(), /*realloc_if_needed=*/true).get(root);
  TS_CHECK(error == simdjson::SUCCESS, source,
           "header is not valid JSON: ", simdjson::error_message(error));
  dom::object object;
  TS_CHECK(root.get_object().get(object) == simdjson::SUCCESS, source,
           "header must be a JSON object, found ", json_type_name(root.type()));

  Header header;
  header.header_size = json.size();
  header.tensors.reserve(object.size());
  bool has_metadata = false;
  for (auto field : object) {
    if (field.key == "__metadata__") {
      TS_CHECK(!has_metadata, source, "__metadata__ appears twice in the header");
      has_metadata = true;
      if (!field.value.is_null()) header.metadata = parse_metadata(field.value, source);
    } else {
      header.tensors.push_back(parse_tensor(field.key, field.value, source));
    }
  }
  if (!header.index()) {
    std::unordered_set<std::string_view> seen;
    for (const auto& info : header.tensors) {
      TS_CHECK(seen.insert(info.name).second, source, "tensor '", info.name,
               "' appears twice in the header (the reference would silently keep the last)");
    }
  }
  const uint64_t data_size = file_size - kHeaderLengthSize - json.size();
  if (validate_layout(header.tensors, data_size, source)) header.index();  // sorting moved names
  return header;
}

void sort_for_save(std::vector<TensorInfo>& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.dtype != b.dtype) return a.dtype > b.dtype;  // descending, like the reference
    return a.name < b.name;                            // bytewise
  });
}

std::string serialize_header(const std::vector<TensorInfo>& tensors, const Metadata* metadata,
                             std::string_view source) {
  std::string out(kHeaderLengthSize, '\0');
  out.reserve(64 + tensors.size() * 96);
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
      append_json_string(out, key);
      out += ':';
      append_json_string(out, value);
    }
    out += '}';
    first = false;
  }
  for (const TensorInfo& info : tensors) {
    check_utf8(info.name, source, "tensor name '" + info.name + "'");
    if (!first) out += ',';
    first = false;
    append_json_string(out, info.name);
    out += ":{\"dtype\":\"";
    out += dtype_name(info.dtype);
    out += "\",\"shape\":[";
    for (size_t i = 0; i < info.shape.size(); ++i) {
      if (i) out += ',';
      append_uint(out, uint64_t(info.shape[i]));
    }
    out += "],\"data_offsets\":[";
    append_uint(out, info.begin);
    out += ',';
    append_uint(out, info.end);
    out += "]}";
  }
  out += '}';
  const size_t json_size = out.size() - kHeaderLengthSize;
  const size_t padded = (json_size + 7) / 8 * 8;
  out.append(padded - json_size, ' ');
  TS_CHECK(padded <= kMaxHeaderSize, source, "header of ", padded, " bytes exceeds the limit of ",
           kMaxHeaderSize, " bytes (too many tensors or too much metadata)");
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((uint64_t(padded) >> (8 * i)) & 0xFF);
  return out;
}

}  // namespace torch::safetensors
