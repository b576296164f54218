// Header parse, validation and serialization: the whole format, top to bottom.
//
// parse_header turns untrusted JSON into a Header and checks every rule of the format in one
// place; nothing downstream re-checks offsets. serialize_header writes exactly what the reference
// implementation (serde_json, compact) writes, so that saved files are byte-identical.
#include "torch_safetensors/header.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <functional>
#include <sstream>
#include <unordered_set>

#include <simdjson.h>

#include "check.h"
#include "format/json_reader.h"
#include "huge_pages.h"

namespace torch::safetensors {
namespace {

using format::JsonKind;
using format::JsonNumber;
using format::JsonReader;

std::string_view kind_name(JsonKind kind) {
  switch (kind) {
    case JsonKind::kObject:
      return "an object";
    case JsonKind::kArray:
      return "an array";
    case JsonKind::kString:
      return "a string";
    case JsonKind::kNumber:
      return "a number";
    case JsonKind::kBool:
      return "a boolean";
    case JsonKind::kNull:
      return "null";
    case JsonKind::kNone:
      break;
  }
  return "no value";
}

// What the next value is, for an error message about finding it where something else belongs.
// Numbers are read to tell integers from floating-point ones.
std::string_view found(JsonReader& json) {
  const JsonKind kind = json.peek();
  if (kind != JsonKind::kNumber) return kind_name(kind);
  return json.number().integral ? "an integer" : "a floating-point number";
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
uint64_t get_unsigned(JsonReader& json, std::string_view source, const What& what) {
  if (json.peek() == JsonKind::kNumber) {
    const JsonNumber n = json.number();
    if (n.integral && !n.negative) return n.magnitude;
    if (n.integral) TS_FAIL(source, what, " must be a non-negative integer, found -", n.magnitude);
    TS_FAIL(source, what, " must be a non-negative integer, found a floating-point number");
  }
  TS_FAIL(source, what, " must be a non-negative integer, found ", found(json));
}

// Tensor names live here for as long as the Header (and its copies) does: one buffer the size
// of the JSON text, which no set of names can outgrow (unescaping only shortens them), instead
// of a heap string per tensor. Memory is only committed as names are written.
class NameStore {
 public:
  explicit NameStore(size_t capacity) : buffer_(shared_buffer(capacity)), capacity_(capacity) {}

  std::string_view add(std::string_view name) {
    TORCH_INTERNAL_ASSERT(name.size() <= capacity_ - used_);
    char* stored = buffer_.get() + used_;
    if (!name.empty()) std::memcpy(stored, name.data(), name.size());
    used_ += name.size();
    return {stored, name.size()};
  }
  std::shared_ptr<const void> owner() const { return buffer_; }

 private:
  std::shared_ptr<char> buffer_;
  size_t capacity_;
  size_t used_ = 0;
};

Metadata parse_metadata(JsonReader& json, std::string_view source) {
  TS_CHECK(json.peek() == JsonKind::kObject, source,
           "__metadata__ must be an object of strings, found ", found(json));
  Metadata metadata;
  std::string key_scratch, value_scratch;
  if (json.begin_object()) {
    do {
      const std::string key(json.string(key_scratch));
      json.colon();
      TS_CHECK(json.peek() == JsonKind::kString, source, "__metadata__ key '", key,
               "' must have a string value, found ", found(json));
      const std::string_view value = json.string(value_scratch);
      TS_CHECK(metadata.emplace(key, value).second, source, "__metadata__ has the key '", key,
               "' twice");
    } while (json.next_member());
  }
  return metadata;
}

// Scratch space reused from one tensor to the next.
struct Scratch {
  std::string text;
  // Headers use a few dtypes over and over: the last one read settles most lookups.
  std::string last_dtype_text;
  std::optional<Dtype> last_dtype;
};

void parse_dtype_field(JsonReader& json, TensorInfo& info, Scratch& scratch,
                       std::string_view source) {
  const Where where{info.name};
  TS_CHECK(json.peek() == JsonKind::kString, source, where, "dtype must be a string, found ",
           found(json));
  const std::string_view text = json.string(scratch.text);
  if (scratch.last_dtype && text == scratch.last_dtype_text) {
    info.dtype = *scratch.last_dtype;
    return;
  }
  const auto dtype = parse_dtype(text);
  TS_CHECK(dtype.has_value(), source, where, "unknown dtype '", text,
           "' (dtypes are case-sensitive; expected one of ", known_dtypes(), ")");
  info.dtype = *dtype;
  scratch.last_dtype_text.assign(text);
  scratch.last_dtype = *dtype;
}

void parse_shape_field(JsonReader& json, TensorInfo& info, std::string_view source) {
  const Where where{info.name};
  TS_CHECK(json.peek() == JsonKind::kArray, source, where,
           "shape must be an array of integers, found ", found(json));
  if (!json.begin_array()) return;
  do {
    const Element what{where, "shape", info.shape.size()};
    const uint64_t size = get_unsigned(json, source, what);
    TS_CHECK(size <= uint64_t(INT64_MAX), source, what, " = ", size, " is too large");
    info.shape.push_back(int64_t(size));
  } while (json.next_element());
}

void parse_offsets_field(JsonReader& json, TensorInfo& info, std::string_view source) {
  const Where where{info.name};
  const char* expected = "data_offsets must be an array of two integers [begin, end]";
  TS_CHECK(json.peek() == JsonKind::kArray && json.begin_array(), source, where, expected);
  info.begin = get_unsigned(json, source, Element{where, "data_offsets", 0});
  TS_CHECK(json.next_element(), source, where, expected);
  info.end = get_unsigned(json, source, Element{where, "data_offsets", 1});
  TS_CHECK(!json.next_element(), source, where, expected);
}

// One tensor's object. Fields other than dtype, shape and data_offsets are skipped, as the
// reference does, so that every file it reads we read too.
bool is(std::string_view key, const char (&word)[6]) {
  return key.size() == 5 && std::memcmp(key.data(), word, 5) == 0;
}
bool is(std::string_view key, const char (&word)[13]) {
  return key.size() == 12 && std::memcmp(key.data(), word, 12) == 0;
}

void parse_tensor(JsonReader& json, TensorInfo& info, Scratch& scratch, std::string_view source) {
  const Where where{info.name};
  TS_CHECK(json.peek() == JsonKind::kObject, source, where,
           "expected an object with dtype, shape and data_offsets, found ", found(json));
  bool has_dtype = false, has_shape = false, has_offsets = false;
  if (json.begin_object()) {
    do {
      const std::string_view key = json.string(scratch.text);
      json.colon();
      if (is(key, "dtype")) {
        TS_CHECK(!has_dtype, source, where, "'dtype' appears twice");
        has_dtype = true;
        parse_dtype_field(json, info, scratch, source);
      } else if (is(key, "shape")) {
        TS_CHECK(!has_shape, source, where, "'shape' appears twice");
        has_shape = true;
        parse_shape_field(json, info, source);
      } else if (is(key, "data_offsets")) {
        TS_CHECK(!has_offsets, source, where, "'data_offsets' appears twice");
        has_offsets = true;
        parse_offsets_field(json, info, source);
      } else {
        json.skip_value(/*depth=*/2);
      }
    } while (json.next_member());
  }
  TS_CHECK(has_dtype, source, where, "missing 'dtype'");
  TS_CHECK(has_shape, source, where, "missing 'shape'");
  TS_CHECK(has_offsets, source, where, "missing 'data_offsets'");
}

// The header object, read in one pass. Errors about content (a missing field, a bad dtype)
// may come before the reader has seen a later syntax error; parse_header sorts that out.
void read_header_object(JsonReader& json, NameStore& names, std::string_view source,
                        std::optional<Metadata>& metadata, std::vector<TensorInfo>& tensors) {
  TS_CHECK(json.peek() == JsonKind::kObject, source, "header must be a JSON object, found ",
           found(json));
  // Every tensor takes at least this many bytes of JSON: reserving for the most that fit costs
  // address space only, where growing the vector copied it and faulted in fresh pages each time.
  constexpr size_t kMinTensorJson = sizeof(R"("":{"dtype":"U8","shape":[],"data_offsets":[0,0]})");
  tensors.reserve(json.remaining() / kMinTensorJson + 1);
  prefer_huge_pages(tensors.data(), tensors.capacity() * sizeof(TensorInfo));
  bool has_metadata = false;
  Scratch scratch;
  if (json.begin_object()) {
    do {
      const std::string_view key = json.string(scratch.text);
      json.colon();
      if (key == "__metadata__") {
        TS_CHECK(!has_metadata, source, "__metadata__ appears twice in the header");
        has_metadata = true;
        if (json.peek() == JsonKind::kNull) {
          json.skip_value();
        } else {
          metadata = parse_metadata(json, source);
        }
      } else {
        TensorInfo& info = tensors.emplace_back();
        info.name = names.add(key);
        parse_tensor(json, info, scratch, source);
      }
    } while (json.next_member());
  }
  json.end();
}

[[noreturn]] void fail_syntax(const format::JsonSyntaxError& e, std::string_view source) {
  TS_FAIL(source, "header is not valid JSON: ", e.what, " at byte ", e.offset);
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
              previous ? "after the previous tensor '" + std::string(previous->name) + "'"
                       : std::string("at the start of the data section"));
    }
    const uint64_t needed = tensor_nbytes(info.dtype, info.shape, source, info.name);
    TS_CHECK(needed == info.nbytes(), source, where, "dtype ", dtype_name(info.dtype),
             " and shape ", c10::IntArrayRef(info.shape), " need ", needed,
             " bytes, but data_offsets [", info.begin, ", ", info.end, "] span ", info.nbytes());
    expected = info.end;
    previous = &info;
  }
  TS_CHECK(expected == data_size, source, "the tensors cover ", expected,
           " bytes, but the data section has ", data_size,
           " bytes (the file has trailing bytes no tensor accounts for)");
  return reorder;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated not to overflow
  return n;
}

namespace {
// A slot of the name lookup: the high 32 bits of the name's hash, then 1 + the tensor's index
// (0 = empty). The hash bits settle most probes without reading the tensor's name, a cache
// miss each on large headers.
uint64_t make_slot(size_t hash, size_t index) {
  return (uint64_t(hash) & ~uint64_t(UINT32_MAX)) | (index + 1);
}
bool same_hash(uint64_t slot, size_t hash) { return (slot ^ uint64_t(hash)) >> 32 == 0; }
size_t slot_index(uint64_t slot) { return size_t(slot & UINT32_MAX) - 1; }
}  // namespace

bool Header::index() {
  // Open addressing with linear probing at a load factor of at most 1/2: one flat array, where
  // a node-based map cost a heap allocation per tensor.
  size_t capacity = 16;
  while (capacity < 2 * tensors_.size()) capacity *= 2;
  // A new array each time, so that copies of this Header keep theirs.
  std::shared_ptr<char> buffer = shared_buffer(capacity * sizeof(uint64_t));
  uint64_t* slots = reinterpret_cast<uint64_t*>(buffer.get());
  std::fill_n(slots, capacity, 0);
  slots_ = std::shared_ptr<const uint64_t>(buffer, slots);
  slot_count_ = capacity;
  const size_t mask = capacity - 1;
  bool unique = true;
  // Slots are hit at random: hash a few tensors ahead and prefetch their slots, so that cache
  // misses overlap instead of coming one after another.
  constexpr size_t kAhead = 8;
  size_t ahead[kAhead];
  const auto hash_of = [&](size_t i) { return std::hash<std::string_view>{}(tensors_[i].name); };
  for (size_t i = 0; i < kAhead && i < tensors_.size(); ++i) {
    ahead[i] = hash_of(i);
    __builtin_prefetch(slots + (ahead[i] & mask), 1);
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const size_t hash = ahead[i % kAhead];
    if (i + kAhead < tensors_.size()) {
      ahead[i % kAhead] = hash_of(i + kAhead);
      __builtin_prefetch(slots + (ahead[i % kAhead] & mask), 1);
    }
    size_t slot = hash & mask;
    for (; slots[slot] != 0; slot = (slot + 1) & mask) {
      if (same_hash(slots[slot], hash) &&
          tensors_[slot_index(slots[slot])].name == tensors_[i].name)
        unique = false;
    }
    slots[slot] = make_slot(hash, i);
  }
  return unique;
}

const TensorInfo* Header::find(std::string_view name) const {
  if (slot_count_ == 0) return nullptr;
  const uint64_t* slots = slots_.get();
  const size_t hash = std::hash<std::string_view>{}(name);
  const size_t mask = slot_count_ - 1;
  for (size_t slot = hash & mask; slots[slot] != 0; slot = (slot + 1) & mask) {
    if (!same_hash(slots[slot], hash)) continue;
    const TensorInfo& info = tensors_[slot_index(slots[slot])];
    if (info.name == name) return &info;
  }
  return nullptr;
}

const TensorInfo& Header::at(std::string_view name, std::string_view source) const {
  if (const TensorInfo* info = find(name)) return *info;
  std::vector<std::string_view> first;
  for (size_t i = 0; i < tensors_.size() && i < 5; ++i) first.push_back(tensors_[i].name);
  throw_missing_tensor(source, name, tensors_.size(), first);
}

void throw_missing_tensor(std::string_view source, std::string_view name, size_t count,
                          c10::ArrayRef<std::string_view> first_names) {
  std::string some;
  for (size_t i = 0; i < first_names.size(); ++i)
    some += (i ? ", '" : "'") + std::string(first_names[i]) + "'";
  if (count > first_names.size()) some += ", ...";
  TS_FAIL(source, "no tensor named '", name, "' (", count, count == 1 ? " tensor" : " tensors",
          count ? ": " : "", some, ")");
}

uint64_t tensor_nbytes(Dtype dtype, c10::IntArrayRef shape, std::string_view source,
                       std::string_view name) {
  uint64_t numel = 1;
  for (int64_t dim : shape) {
    TS_CHECK(dim >= 0, source, "tensor '", name, "': negative dimension ", dim);
    TS_CHECK(!__builtin_mul_overflow(numel, uint64_t(dim), &numel) && numel <= uint64_t(INT64_MAX),
             source, "tensor '", name, "': shape ", shape,
             " has more elements than 64-bit sizes can count");
  }
  uint64_t bits = 0;
  TS_CHECK(!__builtin_mul_overflow(numel, uint64_t(dtype_bits(dtype)), &bits), source, "tensor '",
           name, "': shape ", shape, " of ", dtype_name(dtype),
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
  if (n > kMaxHeaderSize) {
    // A file of another format read as safetensors: its first bytes are not a length. The torch
    // formats are recognised by their magic so that the error says what the file is.
    TS_CHECK(first8.substr(0, 4) != std::string_view("PK\x03\x04", 4), source,
             "this is a torch.save / torch::save archive (a zip file), not safetensors; convert "
             "it with `torch-safetensors convert ",
             source, " <output>.safetensors`");
    TS_CHECK(static_cast<unsigned char>(first8[0]) != 0x80 || first8[1] < 2 || first8[1] > 5,
             source,
             "this is a legacy torch.save archive (a pickle stream), not safetensors; convert it "
             "with `torch-safetensors convert ",
             source, " <output>.safetensors`");
    TS_FAIL(source, "header length ", n, " exceeds the limit of ", kMaxHeaderSize,
            " bytes (not a safetensors file?)");
  }
  TS_CHECK(n <= file_size - kHeaderLengthSize, source, "header length ", n,
           " exceeds the file: only ", file_size - kHeaderLengthSize,
           " bytes follow the length prefix (truncated file?)");
  return n;
}

namespace {

bool is_padding(char c) { return c == '\0' || c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Where the bytes after the JSON (NUL or whitespace) begin.
size_t padding_start(std::string_view json) {
  size_t end = json.size();
  while (end > 0 && is_padding(json[end - 1])) --end;
  return end;
}

}  // namespace

bool is_nul_padded(std::string_view json) {
  const size_t start = padding_start(json);
  // Nothing but padding is not a header at all.
  return start > 0 && json.find('\0', start) != std::string_view::npos;
}

std::string nul_padding_as_spaces(std::string_view json) {
  std::string out(json);
  for (size_t i = padding_start(json); i < out.size(); ++i) {
    if (out[i] == '\0') out[i] = ' ';
  }
  return out;
}

Header parse_header(std::string_view json, uint64_t file_size, std::string_view source) {
  TS_CHECK(json.size() <= file_size - std::min(file_size, kHeaderLengthSize), source, "header of ",
           json.size(), " bytes does not fit in a file of ", file_size, " bytes");
  // The bound also keeps tensor counts far below the name lookup's 32-bit indices.
  TS_CHECK(json.size() <= kMaxHeaderSize, source, "header length ", json.size(),
           " exceeds the limit of ", kMaxHeaderSize, " bytes");
  TS_CHECK(simdjson::validate_utf8(json.data(), json.size()), source,
           "header is not valid JSON: it is not valid UTF-8");
  TS_CHECK(!is_nul_padded(json), source,
           "header is not valid JSON: it is padded with NUL bytes; the format pads with spaces "
           "(0x20), and neither this library nor the reference reads NUL padding. "
           "`torch-safetensors convert ",
           source, " <output>.safetensors` rewrites the file with space padding");
  NameStore names(json.size());
  Header header;
  try {
    JsonReader reader(json);
    read_header_object(reader, names, source, header.metadata_, header.tensors_);
  } catch (const format::JsonSyntaxError& e) {
    fail_syntax(e, source);
  } catch (const c10::Error&) {
    // A content error found mid-way: if the text is not JSON at all, say that instead, as a
    // parse-then-validate reader would have.
    try {
      JsonReader whole(json);
      whole.skip_value();
      whole.end();
    } catch (const format::JsonSyntaxError& e) {
      fail_syntax(e, source);
    }
    throw;
  }
  header.header_size_ = json.size();
  header.names_ = names.owner();
  if (!header.index()) {
    std::unordered_set<std::string_view> seen;
    for (const auto& info : header.tensors_) {
      TS_CHECK(seen.insert(info.name).second, source, "tensor '", info.name,
               "' appears twice in the header (the reference would silently keep the last)");
    }
  }
  const uint64_t data_size = file_size - kHeaderLengthSize - json.size();
  if (validate_layout(header.tensors_, data_size, source)) header.index();  // sorting moved them
  return header;
}

}  // namespace torch::safetensors
