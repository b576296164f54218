// A strict JSON (RFC 8259) pull reader for the safetensors header.
//
// One forward pass over the text with no allocation and no tree: the header parser asks for the
// values it expects (an object, a string, an integer) and skip_value() checks everything else.
// A general-purpose DOM parser spent most of a 100,000-tensor parse building a tape and faulting
// in memory for it; this reads the same text in about a tenth of the time.
//
// Strict means: the text must be valid UTF-8 (checked up front by the caller), strings hold no
// raw control characters and only the escapes JSON defines (surrogate pairs combined, lone
// surrogates refused), numbers follow the JSON grammar (no NaN, no leading '+' or zeros),
// integers fit 64 bits, nesting is at most kMaxDepth deep, and only whitespace follows the value.
// Syntax errors throw JsonSyntaxError; the header parser adds the file name.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace torch::safetensors::format {

// The reader's per-token functions run millions of times on large headers: inline them.
#define TS_JSON_INLINE [[gnu::always_inline]] inline

struct JsonSyntaxError {
  size_t offset;     // byte offset in the text
  const char* what;  // static description
};

enum class JsonKind { kObject, kArray, kString, kNumber, kBool, kNull, kNone };

struct JsonNumber {
  bool negative = false;
  bool integral = true;    // no fraction and no exponent
  uint64_t magnitude = 0;  // |value|, when integral
};

class JsonReader {
 public:
  // As serde_json, which the reference implementation uses: deeper headers are refused by both.
  static constexpr int kMaxDepth = 128;

  explicit JsonReader(std::string_view text)
      : begin_(text.data()), p_(text.data()), end_(text.data() + text.size()) {}

  // The kind of the next value (after whitespace); kNone at the end of the text or on a
  // character that starts no value.
  TS_JSON_INLINE JsonKind peek() {
    skip_whitespace();
    if (p_ == end_) return JsonKind::kNone;
    switch (*p_) {
      case '{':
        return JsonKind::kObject;
      case '[':
        return JsonKind::kArray;
      case '"':
        return JsonKind::kString;
      case 't':
      case 'f':
        return JsonKind::kBool;
      case 'n':
        return JsonKind::kNull;
      default:
        return *p_ == '-' || is_digit(*p_) ? JsonKind::kNumber : JsonKind::kNone;
    }
  }

  // Objects and arrays: `begin_*` consumes the opening bracket and says whether a member
  // follows; `next_*` consumes the separator after a member and says whether another follows.
  //   if (r.begin_object()) do { key = r.string(s); r.colon(); ...value... } while
  //   (r.next_member());
  TS_JSON_INLINE bool begin_object() { return begin('{', '}'); }
  TS_JSON_INLINE bool next_member() { return next('}'); }
  TS_JSON_INLINE bool begin_array() { return begin('[', ']'); }
  TS_JSON_INLINE bool next_element() { return next(']'); }
  TS_JSON_INLINE void colon() { expect(':', "expected ':' after an object key"); }

  // A string. Without escapes, a view of the text itself; with escapes, unescaped into
  // `scratch` (overwritten) and a view of that.
  TS_JSON_INLINE std::string_view string(std::string& scratch) {
    skip_whitespace();
    if (p_ == end_ || *p_ != '"') fail("expected a string");
    const char* start = ++p_;
    skip_plain();
    if (p_ != end_ && *p_ == '"') return {start, size_t(p_++ - start)};
    return escaped_string(start, scratch);
  }

  TS_JSON_INLINE JsonNumber number() {
    skip_whitespace();
    // Fast path: a small non-negative integer followed by a delimiter, the usual shape and
    // offset. Anything else (a sign, a fraction, a leading zero, 19+ digits) takes the full path.
    const char* q = p_;
    uint64_t value = 0;
    while (q != end_ && is_digit(*q) && q - p_ < 18) value = value * 10 + uint64_t(*q++ - '0');
    if (q != p_ && q != end_ && (*q == ',' || *q == ']') && (*p_ != '0' || q - p_ == 1)) {
      p_ = q;
      return JsonNumber{false, true, value};
    }
    return full_number();
  }

 private:
  // The complete JSON number grammar, with range checks.
  JsonNumber full_number() {
    JsonNumber n;
    const char* start = p_;
    if (p_ != end_ && *p_ == '-') {
      n.negative = true;
      ++p_;
    }
    const char* int_begin = p_;
    if (p_ == end_ || !is_digit(*p_)) fail("expected a digit");
    bool too_big = false;  // for 64 bits; fine if a fraction or exponent follows
    if (*p_ == '0') {
      ++p_;
    } else {
      for (; p_ != end_ && is_digit(*p_); ++p_) {
        const auto digit = uint64_t(*p_ - '0');
        too_big = too_big || n.magnitude > (UINT64_MAX - digit) / 10;
        if (!too_big) n.magnitude = n.magnitude * 10 + digit;
      }
    }
    const char* int_end = p_;
    if (p_ != end_ && *p_ == '.') {
      n.integral = false;
      ++p_;
      if (p_ == end_ || !is_digit(*p_)) fail("expected a digit after '.'");
      while (p_ != end_ && is_digit(*p_)) ++p_;
    }
    int64_t exponent = 0;
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      n.integral = false;
      ++p_;
      bool negative_exponent = false;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) negative_exponent = *p_++ == '-';
      if (p_ == end_ || !is_digit(*p_)) fail("expected a digit in the exponent");
      for (; p_ != end_ && is_digit(*p_); ++p_)
        exponent = std::min<int64_t>(exponent * 10 + (*p_ - '0'), 1 << 30);
      if (negative_exponent) exponent = -exponent;
    }
    if (n.integral) {
      if (too_big || (n.negative && n.magnitude > uint64_t(INT64_MAX) + 1)) overflow(start);
    } else {
      // Out of the range of a double (as serde_json and simdjson refuse): the leading digit's
      // decimal place plus the exponent. Tiny values round to zero and are accepted.
      const bool zero_int = int_end - int_begin == 1 && *int_begin == '0';
      if (!zero_int && (int_end - int_begin) - 1 + exponent > 308) overflow(start);
    }
    return n;
  }

 public:
  // Checks and passes over one value of any kind.
  void skip_value(int depth = 0) {
    switch (peek()) {
      case JsonKind::kObject: {
        if (++depth > kMaxDepth) fail("nesting deeper than 128 levels");
        std::string scratch;
        if (begin_object()) {
          do {
            string(scratch);
            colon();
            skip_value(depth);
          } while (next_member());
        }
        return;
      }
      case JsonKind::kArray:
        if (++depth > kMaxDepth) fail("nesting deeper than 128 levels");
        if (begin_array()) {
          do skip_value(depth);
          while (next_element());
        }
        return;
      case JsonKind::kString: {
        std::string scratch;
        string(scratch);
        return;
      }
      case JsonKind::kNumber:
        number();
        return;
      case JsonKind::kBool:
        if (!literal("true") && !literal("false")) fail("invalid literal");
        return;
      case JsonKind::kNull:
        if (!literal("null")) fail("invalid literal");
        return;
      case JsonKind::kNone:
        fail(p_ == end_ ? "unexpected end of the header" : "expected a JSON value");
    }
  }

  // Only whitespace may follow the top-level value (the format pads headers with spaces).
  void end() {
    skip_whitespace();
    if (p_ != end_) fail("unexpected bytes after the top-level value");
  }

  size_t offset() const { return size_t(p_ - begin_); }
  size_t remaining() const { return size_t(end_ - p_); }

 private:
  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  // A string byte needing no attention: not the closing quote, a backslash or a control char.
  static bool plain(char c) {
    return c != '"' && c != '\\' && static_cast<unsigned char>(c) >= 0x20;
  }

  [[noreturn]] void fail(const char* what) const { throw JsonSyntaxError{offset(), what}; }
  [[noreturn]] void overflow(const char* start) const {
    throw JsonSyntaxError{size_t(start - begin_), "number out of range"};
  }

  // Advances over plain string bytes, eight at a time while none of the eight needs attention
  // (bit tricks on a 64-bit word: a byte equal to '"' or '\\', or below 0x20), then bytewise.
  TS_JSON_INLINE void skip_plain() {
    constexpr uint64_t kOnes = 0x0101010101010101ull, kHighs = 0x8080808080808080ull;
    while (end_ - p_ >= 8) {
      uint64_t word;
      std::memcpy(&word, p_, 8);
      const uint64_t quote = word ^ (kOnes * '"'), backslash = word ^ (kOnes * '\\');
      const uint64_t special = ((quote - kOnes) & ~quote) | ((backslash - kOnes) & ~backslash) |
                               ((word - kOnes * 0x20) & ~word);
      if (special & kHighs) break;
      p_ += 8;
    }
    while (p_ != end_ && plain(*p_)) ++p_;
  }

  TS_JSON_INLINE void skip_whitespace() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  TS_JSON_INLINE void expect(char c, const char* what) {
    skip_whitespace();
    if (p_ == end_ || *p_ != c) fail(what);
    ++p_;
  }
  TS_JSON_INLINE bool begin(char open, char close) {
    expect(open, open == '{' ? "expected '{'" : "expected '['");
    skip_whitespace();
    if (p_ != end_ && *p_ == close) {
      ++p_;
      return false;
    }
    return true;
  }
  TS_JSON_INLINE bool next(char close) {
    skip_whitespace();
    if (p_ != end_ && *p_ == ',') {
      ++p_;
      return true;
    }
    if (p_ != end_ && *p_ == close) {
      ++p_;
      return false;
    }
    fail(close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
  }
  bool literal(std::string_view word) {
    if (size_t(end_ - p_) < word.size() || std::memcmp(p_, word.data(), word.size()) != 0)
      return false;
    p_ += word.size();
    return true;
  }

  // A string from `start` with p_ at the first byte that is not plain: unescaped into `out`.
  std::string_view escaped_string(const char* start, std::string& out) {
    out.assign(start, p_);
    unescape_rest(out);
    return out;
  }

  // Continues a string at p_ (a backslash, a control character or the end), appending the
  // unescaped rest to `out` and consuming the closing quote.
  void unescape_rest(std::string& out) {
    while (true) {
      if (p_ == end_) fail("unterminated string");
      const char c = *p_;
      if (c == '"') {
        ++p_;
        return;
      }
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        ++p_;
        continue;
      }
      if (++p_ == end_) fail("unterminated string");
      switch (*p_++) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u':
          append_utf8(out, code_point());
          break;
        default:
          --p_;
          fail("invalid escape in a string");
      }
    }
  }

  // After "\u": four hex digits, and a second \uXXXX when they are a high surrogate.
  uint32_t code_point() {
    const uint32_t first = hex4();
    if (first >= 0xDC00 && first <= 0xDFFF) fail("lone low surrogate in a \\u escape");
    if (first < 0xD800 || first > 0xDBFF) return first;
    if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') fail("lone high surrogate in a \\u escape");
    p_ += 2;
    const uint32_t second = hex4();
    if (second < 0xDC00 || second > 0xDFFF) fail("lone high surrogate in a \\u escape");
    return 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
  }
  uint32_t hex4() {
    if (end_ - p_ < 4) fail("truncated \\u escape");
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i, ++p_) {
      const char c = *p_;
      const int digit = is_digit(c)              ? c - '0'
                        : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                        : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                                 : -1;
      if (digit < 0) fail("invalid hex digit in a \\u escape");
      value = value * 16 + uint32_t(digit);
    }
    return value;
  }
  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  const char* begin_;
  const char* p_;
  const char* end_;
};

#undef TS_JSON_INLINE

}  // namespace torch::safetensors::format
