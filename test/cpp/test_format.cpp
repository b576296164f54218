// The format layer alone: dtype table, header parsing, every validation rule, serialization.
#include <gtest/gtest.h>

#include <torch_safetensors/dtype.h>
#include <torch_safetensors/header.h>

#include "test_util.h"

namespace ts = torch::safetensors;
using ts_test::make_safetensors;

namespace {

// Parses `json` as the header of a file with `data_size` data bytes.
ts::Header parse(const std::string& json, uint64_t data_size = 0) {
  return ts::parse_header(json, 8 + json.size() + data_size, "test.safetensors");
}

// Expects parse to fail with a message that contains every fragment given.
void expect_invalid(const std::string& json, uint64_t data_size,
                    std::initializer_list<std::string> fragments) {
  try {
    parse(json, data_size);
    ADD_FAILURE() << "accepted invalid header: " << json;
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("test.safetensors"), std::string::npos) << msg;
    for (const auto& fragment : fragments) {
      EXPECT_NE(msg.find(fragment), std::string::npos)
          << "missing '" << fragment << "' in: " << msg;
    }
  }
}

}  // namespace

TEST(Dtype, NamesRoundTripAndAreCaseSensitive) {
  for (int i = 0; i < ts::kNumDtypes; ++i) {
    const auto dtype = static_cast<ts::Dtype>(i);
    const auto name = ts::dtype_name(dtype);
    ASSERT_EQ(ts::parse_dtype(name), dtype) << name;
    std::string lower(name);
    for (char& c : lower) c = char(std::tolower(c));
    if (lower != name) EXPECT_FALSE(ts::parse_dtype(lower).has_value()) << lower;
  }
  EXPECT_FALSE(ts::parse_dtype("F128").has_value());
  EXPECT_FALSE(ts::parse_dtype("").has_value());
}

TEST(Dtype, BitsAndTorchTypes) {
  EXPECT_EQ(ts::dtype_bits(ts::Dtype::F4), 4);
  EXPECT_EQ(ts::dtype_bits(ts::Dtype::F6_E2M3), 6);
  EXPECT_EQ(ts::dtype_bits(ts::Dtype::BF16), 16);
  EXPECT_EQ(ts::dtype_bits(ts::Dtype::C64), 64);
  EXPECT_EQ(ts::to_scalar_type(ts::Dtype::F8_E4M3), c10::ScalarType::Float8_e4m3fn);
  EXPECT_EQ(ts::to_scalar_type(ts::Dtype::F8_E8M0), c10::ScalarType::Float8_e8m0fnu);
  EXPECT_EQ(ts::to_scalar_type(ts::Dtype::F4), c10::ScalarType::Float4_e2m1fn_x2);
  EXPECT_EQ(ts::to_scalar_type(ts::Dtype::U64), c10::ScalarType::UInt64);
  EXPECT_EQ(ts::to_scalar_type(ts::Dtype::F6_E3M2), c10::ScalarType::Byte);  // raw bytes
  // Every dtype but F6 maps back onto itself.
  for (int i = 0; i < ts::kNumDtypes; ++i) {
    const auto dtype = static_cast<ts::Dtype>(i);
    if (dtype == ts::Dtype::F6_E2M3 || dtype == ts::Dtype::F6_E3M2) continue;
    EXPECT_EQ(ts::from_scalar_type(ts::to_scalar_type(dtype)), dtype) << ts::dtype_name(dtype);
  }
  EXPECT_FALSE(ts::from_scalar_type(c10::ScalarType::UInt4).has_value());
  EXPECT_FALSE(ts::from_scalar_type(c10::ScalarType::ComplexDouble).has_value());
  EXPECT_FALSE(ts::from_scalar_type(c10::ScalarType::QInt8).has_value());
}

TEST(Dtype, PackedShapesFollowTheTable) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(ts::values_per_group(ts::Dtype::F4), 2);
  EXPECT_EQ(ts::bytes_per_group(ts::Dtype::F6_E3M2), 3);
  EXPECT_EQ(ts::bytes_per_group(ts::Dtype::F64), 8);
  // Loads: the last dimension in torch elements, or 1-D bytes when it holds no whole groups.
  EXPECT_EQ(ts::stored_sizes(ts::Dtype::F4, V{3, 8}, 12), (V{3, 4}));
  EXPECT_EQ(ts::stored_sizes(ts::Dtype::F4, V{2, 3}, 3), (V{3}));
  EXPECT_EQ(ts::stored_sizes(ts::Dtype::F6_E2M3, V{2, 8}, 12), (V{2, 6}));
  EXPECT_EQ(ts::stored_sizes(ts::Dtype::F6_E3M2, V{2, 2}, 3), (V{3}));
  EXPECT_EQ(ts::stored_sizes(ts::Dtype::F32, V{2, 3}, 24), (V{2, 3}));
  EXPECT_EQ(ts::stored_sizes(ts::Dtype::F4, V{}, 0), (V{0}));
  // Saves: the inverse, and none for a 0-d packed tensor.
  EXPECT_EQ(ts::logical_shape(ts::Dtype::F4, V{3, 4}), (V{3, 8}));
  EXPECT_EQ(ts::logical_shape(ts::Dtype::BF16, V{}), (V{}));
  EXPECT_FALSE(ts::logical_shape(ts::Dtype::F4, V{}).has_value());
  EXPECT_FALSE(ts::logical_shape(ts::Dtype::F4, V{INT64_MAX}).has_value());
  for (int i = 0; i < ts::kNumDtypes; ++i) {
    const auto dtype = static_cast<ts::Dtype>(i);
    const V shape{2, 4 * ts::values_per_group(dtype)};
    const uint64_t nbytes = ts::tensor_nbytes(dtype, shape, "f", "x");
    const V sizes = ts::stored_sizes(dtype, shape, nbytes);
    int64_t numel = 1;
    for (int64_t d : sizes) numel *= d;
    // Whatever the dtype, the loaded tensor holds exactly the stored bytes.
    EXPECT_EQ(uint64_t(numel) * c10::elementSize(ts::to_scalar_type(dtype)), nbytes)
        << ts::dtype_name(dtype);
    if (ts::from_scalar_type(ts::to_scalar_type(dtype)) == dtype) {
      EXPECT_EQ(ts::logical_shape(dtype, sizes), shape) << ts::dtype_name(dtype);
    }
  }
}

TEST(Header, ParsesTensorsInOffsetOrderWithMetadata) {
  const auto header = parse(
      R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("__metadata__":{"format":"pt"},"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4],"x":1}})",
      12);
  ASSERT_EQ(header.tensors().size(), 2u);
  EXPECT_EQ(header.tensors()[0].name, "a");  // first in the file, though second in the JSON
  EXPECT_EQ(header.tensors()[1].name, "b");
  EXPECT_EQ(header.tensors()[1].dtype, ts::Dtype::F32);
  EXPECT_EQ(c10::IntArrayRef(header.tensors()[1].shape).vec(), std::vector<int64_t>{2});
  ASSERT_TRUE(header.metadata().has_value());
  EXPECT_EQ(header.metadata()->at("format"), "pt");
  ASSERT_NE(header.find("b"), nullptr);
  EXPECT_EQ(header.find("b")->begin, 4u);
  EXPECT_EQ(header.find("c"), nullptr);
  EXPECT_EQ(header.data_size(), 12u);
  const ts::Header copy = header;  // the lookup must follow the copy
  EXPECT_EQ(copy.find("a"), &copy.tensors()[0]);
}

TEST(Header, AcceptsEmptyNullMetadataAndPadding) {
  EXPECT_TRUE(parse("{}").tensors().empty());
  EXPECT_FALSE(parse(R"({"__metadata__":null})").metadata().has_value());
  EXPECT_TRUE(parse(R"({"__metadata__":{}})").metadata()->empty());
  EXPECT_EQ(
      parse(R"({"x":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}      )", 1).tensors().size(),
      1u);
  // Zero-size tensors may share an offset.
  EXPECT_EQ(parse(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},)"
                  R"("f":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})")
                .tensors()
                .size(),
            2u);
}

TEST(Header, SubByteDtypes) {
  EXPECT_EQ(
      parse(R"({"x":{"dtype":"F4","shape":[2,4],"data_offsets":[0,4]}})", 4).tensors()[0].nbytes(),
      4u);
  EXPECT_EQ(parse(R"({"x":{"dtype":"F6_E2M3","shape":[8],"data_offsets":[0,6]}})", 6)
                .tensors()[0]
                .nbytes(),
            6u);
  expect_invalid(R"({"x":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2,
                 {"'x'", "12 bits", "whole number of bytes"});
  expect_invalid(R"({"x":{"dtype":"F6_E3M2","shape":[2],"data_offsets":[0,2]}})", 2,
                 {"'x'", "whole number of bytes"});
}

TEST(Header, RejectsEachRuleAlone) {
  const std::string ok_tail = R"("data_offsets":[0,4]}})";
  expect_invalid("", 0, {"not valid JSON"});
  expect_invalid("[1,2]", 0, {"must be a JSON object", "array"});
  expect_invalid(R"({"x":1})", 0, {"'x'", "expected an object"});
  expect_invalid(R"({"__metadata__":{"k":1}})", 0, {"__metadata__", "'k'", "string value"});
  expect_invalid(R"({"__metadata__":[]})", 0, {"__metadata__ must be an object"});
  expect_invalid(R"({"x":{"shape":[1],)" + ok_tail, 4, {"'x'", "missing 'dtype'"});
  expect_invalid(R"({"x":{"dtype":"U8",)" + ok_tail, 4, {"'x'", "missing 'shape'"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[4]}})", 4, {"'x'", "missing 'data_offsets'"});
  expect_invalid(R"({"x":{"dtype":"f32","shape":[1],)" + ok_tail, 4,
                 {"'x'", "unknown dtype 'f32'", "case-sensitive"});
  expect_invalid(R"({"x":{"dtype":7,"shape":[1],)" + ok_tail, 4, {"dtype must be a string"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[-4],)" + ok_tail, 4,
                 {"'x'", "shape[0]", "non-negative integer", "-4"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[4.0],)" + ok_tail, 4,
                 {"shape[0]", "floating-point"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":4,)" + ok_tail, 4, {"shape must be an array"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[0]}})", 4, {"two integers"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4,8]}})", 4, {"two integers"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}})", 4,
                 {"'x'", "start after they end"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[0,8]}})", 4,
                 {"'x'", "beyond the data section of 4 bytes"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[3],"data_offsets":[0,4]}})", 4,
                 {"'x'", "need 3 bytes", "span 4"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", 4,
                 {"'x'", "gap of 2 bytes", "start of the data section"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                 R"("y":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                 4, {"'y'", "overlap", "'x'"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 4,
                 {"cover 2 bytes", "data section has 4"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                 R"("x":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                 4, {"'x'", "appears twice"});
  expect_invalid(R"({"x":{"dtype":"U8","dtype":"U8","shape":[4],)" + ok_tail, 4,
                 {"'dtype' appears twice"});
  expect_invalid(R"({"__metadata__":{},"__metadata__":{}})", 0, {"__metadata__ appears twice"});
}

TEST(Header, RejectsOverflowingShapes) {
  expect_invalid(R"({"x":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0,
                 {"'x'", "more elements than 64-bit"});
  expect_invalid(R"({"x":{"dtype":"F64","shape":[9223372036854775808],"data_offsets":[0,0]}})", 0,
                 {"'x'", "too large"});
  expect_invalid(R"({"x":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}})", 0,
                 {"'x'", "more bits than 64-bit"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}})", 1,
                 {"not valid JSON"});
}

TEST(Header, RejectsDeepNestingAndBadUtf8) {
  expect_invalid(std::string(5000, '[') + std::string(5000, ']'), 0, {"not valid JSON"});
  expect_invalid("{\"\xff\xfe\":{}}", 0, {"not valid JSON"});
}

// The JSON reader: all of RFC 8259 that a header may use, nothing more.
TEST(HeaderJson, AcceptsWhitespaceEscapesAndUnknownFields) {
  const std::string pretty =
      "{\n  \"__metadata__\" : { \"k\" : \"v\\u00e9\\n\" },\n"
      "  \"a\\\"\\/\\u00e9\\ud83d\\ude00\" : {\n"
      "    \"\\u0064type\" : \"U8\", \"shape\" : [ 2 ] , \"data_offsets\" : [ 0 , 2 ],\n"
      "    \"extra\" : [ {\"x\": [true, false, null, -1.5e-3, 0, \"\\t\"]}, [] , {} ]\n"
      "  }\n}\r\n\t ";
  const auto header = parse(pretty, 2);
  ASSERT_EQ(header.tensors().size(), 1u);
  EXPECT_EQ(header.tensors()[0].name, "a\"/\xc3\xa9\xf0\x9f\x98\x80");  // é and U+1F600 in UTF-8
  EXPECT_EQ(header.tensors()[0].dtype, ts::Dtype::U8);
  EXPECT_EQ(header.metadata()->at("k"), "v\xc3\xa9\n");
  EXPECT_NE(header.find("a\"/\xc3\xa9\xf0\x9f\x98\x80"), nullptr);
}

TEST(HeaderJson, RejectsWhatJsonDoesNotAllow) {
  const std::string tail = R"(,"data_offsets":[0,1]}})";
  const std::string dim = R"({"x":{"dtype":"U8","shape":[)";
  for (const std::string bad :
       {"01", "1.", ".5", "+1", "1e", "-", "0x1", "1 2", "NaN", "-Infinity"})
    expect_invalid(dim + bad + "]" + tail, 1, {"not valid JSON"});
  for (const std::string bad : {R"("\x")", R"("\u12")", R"("\ud800")", R"("\udc00x")",
                                R"("\ud800\u0041")", "\"a\tb\"", "'a'", "tru", "nul"})
    expect_invalid(R"({"x":{"dtype":"U8","shape":[1],"y":)" + bad + tail, 1, {"not valid JSON"});
  expect_invalid(R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}} x)", 1,
                 {"not valid JSON", "after the top-level value"});
  const std::string truncated = R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]})";
  expect_invalid(truncated, 1, {"not valid JSON", "at byte " + std::to_string(truncated.size())});
  // Negative zero is negative: the reference refuses it as a dimension too.
  expect_invalid(dim + "-0]" + tail, 1, {"shape[0]", "non-negative integer", "-0"});
  expect_invalid(dim + "1e2]" + tail, 1, {"shape[0]", "floating-point"});
  expect_invalid(dim + "18446744073709551616]" + tail, 1, {"not valid JSON", "out of range"});
  expect_invalid(dim + "-9223372036854775809]" + tail, 1, {"not valid JSON", "out of range"});
  expect_invalid(dim + "1e309]" + tail, 1, {"not valid JSON", "out of range"});
  // Numbers a double holds, however written, are JSON (in a field nobody reads).
  EXPECT_EQ(parse(R"({"x":{"dtype":"U8","shape":[1],"y":[123456789012345678901234567890.5,)"
                  R"(1e-400,-9223372036854775808,1E+2,0.5e308],"data_offsets":[0,1]}})",
                  1)
                .tensors()
                .size(),
            1u);
}

TEST(HeaderJson, NestingIsLimitedTo128Levels) {
  const auto nested = [](int depth) {
    return R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"deep":)" +
           std::string(depth, '[') + std::string(depth, ']') + "}}";
  };
  EXPECT_EQ(parse(nested(126), 1).tensors().size(), 1u);  // 2 levels of objects + 126 arrays
  expect_invalid(nested(127), 1, {"not valid JSON", "deeper than 128"});
}

TEST(HeaderJson, SyntaxErrorsWinOverContentErrorsFoundFirst) {
  // The missing dtype is seen first, but the text is not JSON at all: say that.
  expect_invalid(R"({"x":{"shape":[1],"data_offsets":[0,1]}, oops})", 1, {"not valid JSON"});
  expect_invalid(R"({"x":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}})", 1,
                 {"unknown dtype 'Q8'"});
}

TEST(HeaderJson, CopiesKeepNamesAndLookupAfterTheOriginalIsGone) {
  std::string json = "{";
  for (int i = 0; i < 1000; ++i) {
    json += (i ? "," : "") + std::string("\"t") + std::to_string(i) +
            R"(":{"dtype":"U8","shape":[1],"data_offsets":[)" + std::to_string(i) + "," +
            std::to_string(i + 1) + "]}";
  }
  json += "}";
  auto original = std::make_unique<ts::Header>(parse(json, 1000));
  const ts::Header copy = *original;
  original.reset();
  for (int i = 0; i < 1000; ++i) {
    const ts::TensorInfo* info = copy.find("t" + std::to_string(i));
    ASSERT_NE(info, nullptr) << i;
    EXPECT_EQ(info->name, "t" + std::to_string(i));
    EXPECT_EQ(info->begin, uint64_t(i));
  }
  EXPECT_EQ(copy.find("t1000"), nullptr);
}

TEST(HeaderLength, ChecksBoundsAndFileSize) {
  auto length_error = [](const std::string& bytes, uint64_t file_size) {
    try {
      ts::parse_header_length(bytes, file_size, "f");
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string();
  };
  EXPECT_NE(length_error(std::string(7, '\0'), 7).find("too small"), std::string::npos);
  EXPECT_NE(length_error(std::string("\xff\xff\xff\xff\xff\xff\xff\xff", 8), 1000)
                .find("exceeds the limit"),
            std::string::npos);
  EXPECT_NE(length_error(std::string("\x10\0\0\0\0\0\0\0", 8), 20).find("exceeds the file"),
            std::string::npos);
  EXPECT_EQ(ts::parse_header_length(std::string("\x10\0\0\0\0\0\0\0", 8), 24, "f"), 16u);
  const uint64_t limit = ts::kMaxHeaderSize;
  std::string at_limit(8, '\0'), over(8, '\0');
  for (int i = 0; i < 8; ++i) at_limit[i] = char((limit >> (8 * i)) & 0xFF);
  for (int i = 0; i < 8; ++i) over[i] = char(((limit + 1) >> (8 * i)) & 0xFF);
  EXPECT_EQ(ts::parse_header_length(at_limit, limit + 8, "f"), limit);
  EXPECT_NE(length_error(over, limit + 9).find("exceeds the limit"), std::string::npos);
}

TEST(Serialize, MatchesTheReferenceLayout) {
  const std::vector<ts::TensorInfo> infos = {
      {"b", ts::Dtype::U8, {3}, 0, 0},
      {"a", ts::Dtype::F32, {}, 0, 0},
      {"c\"\\\xc3\xa9", ts::Dtype::F32, {1, 0}, 0, 0},
  };
  const ts::Layout layout = ts::plan_layout(infos, ts::Metadata{{"k", "v\t\n"}}, "f");
  // dtype descending, then name; order maps file positions back to the input.
  EXPECT_EQ(layout.order, (std::vector<size_t>{1, 2, 0}));
  const auto& tensors = layout.header.tensors();
  ASSERT_EQ(tensors.size(), 3u);
  EXPECT_EQ(tensors[0].name, "a");
  EXPECT_EQ(tensors[1].name, "c\"\\\xc3\xa9");
  EXPECT_EQ(tensors[2].name, "b");
  EXPECT_EQ(tensors[2].begin, 4u);  // consecutive offsets
  EXPECT_EQ(tensors[2].end, 7u);
  EXPECT_EQ(layout.header.find("b"), &tensors[2]);
  const std::string& bytes = layout.header_bytes;
  const std::string json = bytes.substr(8);
  EXPECT_EQ(json.size() % 8, 0u);
  EXPECT_EQ(layout.header.header_size(), json.size());
  EXPECT_EQ(uint64_t(uint8_t(bytes[0])) | uint64_t(uint8_t(bytes[1])) << 8, json.size());
  const std::string expected =
      R"({"__metadata__":{"k":"v\t\n"},"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
      "\"c\\\"\\\\\xc3\xa9\":{\"dtype\":\"F32\",\"shape\":[1,0],\"data_offsets\":[4,4]},"
      R"("b":{"dtype":"U8","shape":[3],"data_offsets":[4,7]}})";
  EXPECT_EQ(json.substr(0, expected.size()), expected);
  EXPECT_EQ(json.find_first_not_of(' ', expected.size()), std::string::npos);
  // The header it plans is the one a reader parses back.
  const ts::Header parsed = ts::parse_header(json, 8 + json.size() + 7, "f");
  EXPECT_EQ(ts::serialize_header(parsed, "f"), bytes);
}

TEST(Serialize, LayoutRefusesWhatNoFileMayHold) {
  using Infos = std::vector<ts::TensorInfo>;
  const auto error = [](const Infos& infos) {
    return ts_test::error_of([&] { ts::plan_layout(infos, std::nullopt, "f"); });
  };
  // Names must be valid UTF-8 to be JSON strings.
  EXPECT_NE(error(Infos{{"\xff", ts::Dtype::U8, {0}, 0, 0}}).find("UTF-8"), std::string::npos);
  EXPECT_NE(error(Infos{{"x", ts::Dtype::U8, {1}, 0, 0}, {"x", ts::Dtype::U8, {1}, 0, 0}})
                .find("'x' is given twice"),
            std::string::npos);
  EXPECT_NE(error(Infos{{"__metadata__", ts::Dtype::U8, {1}, 0, 0}}).find("reserved"),
            std::string::npos);
  EXPECT_NE(error(Infos{{"x", ts::Dtype::F4, {3}, 0, 0}}).find("not a whole number of bytes"),
            std::string::npos);
  // No metadata: no __metadata__ key; empty metadata: an empty object.
  EXPECT_EQ(ts::plan_layout({}, std::nullopt, "f").header_bytes.substr(8, 2), "{}");
  EXPECT_EQ(ts::plan_layout({}, ts::Metadata{}, "f").header_bytes.substr(8, 18),
            R"({"__metadata__":{})");
}

// Stricter than the reference (docs/dtypes-and-validation.md): no control character in a name or
// metadata key; none but tab, newline and carriage return in a metadata value.
TEST(Serialize, RefusesControlCharactersInNamesAndMetadata) {
  using Infos = std::vector<ts::TensorInfo>;
  const auto refused = [](const Infos& infos, const std::optional<ts::Metadata>& metadata) {
    try {
      ts::plan_layout(infos, metadata, "out.safetensors");
    } catch (const c10::ValueError& e) {
      return std::string(e.what_without_backtrace());
    }
    ADD_FAILURE() << "no ValueError";
    return std::string();
  };
  const auto one = [](std::string_view name) { return Infos{{name, ts::Dtype::U8, {0}, 0, 0}}; };
  const std::string nul = refused(one(std::string_view("a\0b", 3)), std::nullopt);
  EXPECT_NE(nul.find("safetensors: out.safetensors: tensor name 'a\\u0000b' holds the control "
                     "character U+0000 at byte 1"),
            std::string::npos)
      << nul;
  EXPECT_NE(nul.find("no control character"), std::string::npos) << nul;
  EXPECT_EQ(nul.find('\0'), std::string::npos) << "the message holds the NUL itself";
  // Every C0 control, DEL, and the C1 controls U+0080-U+009F (UTF-8 C2 80 .. C2 9F).
  for (int c = 0; c < 0x20; ++c) {
    const std::string name = "w" + std::string(1, char(c));
    EXPECT_NE(refused(one(name), std::nullopt).find("at byte 1"), std::string::npos) << c;
  }
  EXPECT_NE(refused(one("x\x7f"), std::nullopt)
                .find("'x\\u007f' holds the control character "
                      "U+007F"),
            std::string::npos);
  EXPECT_NE(refused(one("x\xc2\x85y"), std::nullopt)
                .find("'x\\u0085y' holds the control "
                      "character U+0085"),
            std::string::npos);
  EXPECT_NE(refused(one("\xc2\x9f"), std::nullopt).find("U+009F at byte 0"), std::string::npos);
  // The characters next to them are fine: U+00A0 (C2 A0), U+0100, and text around them.
  for (const char* fine : {"x\xc2\xa0", "\xc4\x80", "\xc2\xbfqu\xc3\xa9?", " ~"}) {
    EXPECT_NO_THROW(ts::plan_layout(one(fine), std::nullopt, "f")) << fine;
  }
  // Metadata: keys are names; values may hold the whitespace of text but nothing else.
  const Infos none;
  EXPECT_NE(refused(none, ts::Metadata{{std::string("k\n"), "v"}})
                .find("metadata key 'k\\u000a' holds the control character U+000A at byte 1"),
            std::string::npos);
  const std::string value = refused(none, ts::Metadata{{"k", std::string("v\0", 2)}});
  EXPECT_NE(value.find("metadata value of 'k': 'v\\u0000' holds the control character U+0000"),
            std::string::npos)
      << value;
  EXPECT_NE(value.find("tab, newline and carriage return"), std::string::npos) << value;
  EXPECT_NE(refused(none, ts::Metadata{{"k", "bell\x07"}}).find("U+0007"), std::string::npos);
  EXPECT_NE(refused(none, ts::Metadata{{"k", "\x7f"}}).find("U+007F"), std::string::npos);
  const ts::Layout text = ts::plan_layout(none, ts::Metadata{{"k", "a\tb\nc\r\n"}}, "f");
  EXPECT_NE(text.header_bytes.find(R"("k":"a\tb\nc\r\n")"), std::string::npos);
  // `__metadata__` is reserved, as a ValueError too.
  EXPECT_NE(refused(one("__metadata__"), std::nullopt).find("cannot be named '__metadata__'"),
            std::string::npos);
}

TEST(Serialize, ControlCharacterRuleAndEscaping) {
  using ts::HeaderText;
  constexpr size_t npos = std::string_view::npos;
  EXPECT_EQ(ts::find_control_character("plain.name", HeaderText::kName), npos);
  EXPECT_EQ(ts::find_control_character("a\tb", HeaderText::kName), 1u);
  EXPECT_EQ(ts::find_control_character("a\tb", HeaderText::kMetadataValue), npos);
  EXPECT_EQ(ts::find_control_character("a\tb\x1b[31m", HeaderText::kMetadataValue), 3u);
  EXPECT_EQ(ts::find_control_character("\xc2", HeaderText::kName), npos);  // a lone lead byte
  EXPECT_EQ(ts::escape_control_characters(std::string_view("\0\x1f\x7f\xc2\x80\xc2\xa0z", 8)),
            "\\u0000\\u001f\\u007f\\u0080\xc2\xa0z");
}

// Files holding such names still load (the reference writes them): refusing them would lock
// users out of their files. `verify` reports them.
TEST(Header, LoadsControlCharactersInNamesAndMetadata) {
  const ts::Header header = parse(
      R"({"__metadata__":{"k\u0000":"v\u0001"},"a\u0000b":{"dtype":"U8","shape":[1],)"
      R"("data_offsets":[0,1]},"\u007f\u0085":{"dtype":"U8","shape":[0],"data_offsets":[1,1]}})",
      1);
  ASSERT_EQ(header.size(), 2u);
  EXPECT_EQ(header.tensors()[0].name, std::string_view("a\0b", 3));
  EXPECT_EQ(header.tensors()[1].name, "\x7f\xc2\x85");
  EXPECT_EQ(header.metadata()->at(std::string("k\0", 2)), "v\x01");
}

TEST(Header, NulPaddingIsRefusedNamingTheCause) {
  const std::string json = R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  for (const std::string padding :
       {std::string(3, '\0'), std::string(" \0", 2), std::string("\0 \n", 3)}) {
    expect_invalid(
        json + padding, 1,
        {"header is not valid JSON: it is padded with NUL bytes", "pads with spaces (0x20)",
         "`torch-safetensors convert test.safetensors <output>.safetensors`"});
    EXPECT_TRUE(ts::is_nul_padded(json + padding));
  }
  EXPECT_FALSE(ts::is_nul_padded(json));
  EXPECT_FALSE(ts::is_nul_padded(json + "   "));
  EXPECT_FALSE(ts::is_nul_padded(std::string(8, '\0')));  // nothing but padding: no JSON at all
  // A NUL elsewhere is a plain JSON error.
  const std::string inside =
      R"({"x":{"dtype":"U8",)" + std::string(1, '\0') + R"("shape":[1],"data_offsets":[0,1]}})";
  EXPECT_FALSE(ts::is_nul_padded(inside));
  expect_invalid(inside, 1, {"not valid JSON"});
  // Space padding, the format's, parses.
  EXPECT_EQ(parse(json + "       ", 1).size(), 1u);
}
