// The stored layouts: scheme names, bit and FP4 packing, the shape rules of every scheme, and
// detection of quantized weights from tensor names, dtypes and the quantization config.
#include <algorithm>
#include <array>
#include <sstream>

#include <ATen/ATen.h>

#include <limits>

#include "check.h"
#include "quant/internal.h"

namespace torch::safetensors::quant {
namespace {

constexpr std::array<std::pair<Scheme, std::string_view>, 10> kSchemeNames = {{
    {Scheme::kFp8, "fp8"},
    {Scheme::kGptq, "gptq"},
    {Scheme::kAwq, "awq"},
    {Scheme::kPackQuantized, "pack_quantized"},
    {Scheme::kNvfp4PackQuantized, "nvfp4_pack_quantized"},
    {Scheme::kMxfp4, "mxfp4"},
    {Scheme::kNvfp4, "nvfp4"},
    {Scheme::kMxfp4PackQuantized, "mxfp4_pack_quantized"},
    {Scheme::kMxfp6PackQuantized, "mxfp6_pack_quantized"},
    {Scheme::kMxfp8Quantized, "mxfp8_quantized"},
}};

bool is_float8(c10::ScalarType type) {
  return type == at::kFloat8_e4m3fn || type == at::kFloat8_e5m2 || type == at::kFloat8_e4m3fnuz ||
         type == at::kFloat8_e5m2fnuz;
}
bool is_real_floating(c10::ScalarType type) {
  return type == at::kFloat || type == at::kHalf || type == at::kBFloat16 || type == at::kDouble;
}
// E8M0 exponents: compressed-tensors stores them as U8 (mx_utils.py `compress_mx_scale`),
// gpt-oss as U8, DeepSeek-V4 as F8_E8M0.
bool is_e8m0(c10::ScalarType type) { return type == at::kByte || type == at::kFloat8_e8m0fnu; }
// FP4 two a byte: U8 (compressed-tensors, ModelOpt), I8 (DeepSeek-V4's experts) or the torch
// dtype F4 (Float4_e2m1fn_x2).
bool is_fp4_bytes(c10::ScalarType type) {
  return type == at::kByte || type == at::kChar || type == at::kFloat4_e2m1fn_x2;
}

}  // namespace

std::string_view scheme_name(Scheme scheme) {
  for (const auto& [value, name] : kSchemeNames) {
    if (value == scheme) return name;
  }
  return "?";
}

std::vector<std::string_view> scheme_names() {
  std::vector<std::string_view> out;
  for (const auto& [value, name] : kSchemeNames) out.push_back(name);
  return out;
}

std::optional<Scheme> parse_scheme(std::string_view name) {
  for (const auto& [value, known] : kSchemeNames) {
    if (known == name) return value;
  }
  return std::nullopt;
}

namespace detail {

std::string sizes_string(c10::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

void check_dimensions(c10::IntArrayRef sizes, std::string_view source, std::string_view what) {
  for (int64_t size : sizes) {
    TS_CHECK(size >= 0 && size <= kMaxDimension, source, what, ": shape ", sizes_string(sizes),
             " has a size outside [0, ", kMaxDimension, "]");
  }
}

int64_t saturating_numel(c10::IntArrayRef sizes) {
  int64_t n = 1;
  for (int64_t size : sizes) {
    if (size == 0) return 0;
    if (__builtin_mul_overflow(n, size, &n)) n = INT64_MAX;
  }
  return n;
}

at::Tensor unpack_bits(const at::Tensor& packed, int bits, int64_t count) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "quant: bits must be 1..8, found ", bits);
  // Flattened and viewed back: a "contiguous" tensor may keep a stride other than 1 on a size-1
  // last dimension (a transposed [1, n]), which the byte view below refuses.
  const at::Tensor words = packed.to(at::kInt).contiguous().reshape(-1).view(packed.sizes());
  const int64_t mask = (int64_t{1} << bits) - 1;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (8 % bits == 0) {
    // Whole values per byte, and the bytes of a little-endian word in stream order: unpack the
    // bytes (one-byte arithmetic, a quarter of the memory traffic of int32 shifts).
    const at::Tensor bytes = words.view(at::kByte);
    if (bits == 8) return bytes.narrow(-1, 0, count);
    const at::Tensor shifts = at::arange(0, 8, bits, bytes.options());
    const at::Tensor values =
        at::bitwise_and(at::bitwise_right_shift(bytes.unsqueeze(-1), shifts), mask);
    return values.flatten(-2).narrow(-1, 0, count);
  }
#endif
  if (32 % bits == 0) {
    // Whole values per word: value j of a word sits at bits [j * bits, (j + 1) * bits).
    const at::Tensor shifts = at::arange(0, 32, bits, words.options());
    at::Tensor values = at::bitwise_and(at::bitwise_right_shift(words.unsqueeze(-1), shifts), mask);
    return values.flatten(-2).narrow(-1, 0, count);
  }
  // Values straddle words: every `bits` words hold exactly 32 values.
  const int64_t word_count = words.size(-1);
  const int64_t runs = ceil_div(word_count, bits);
  at::Tensor padded = words;
  if (runs * bits != word_count) {
    std::vector<int64_t> pad_sizes = words.sizes().vec();
    pad_sizes.back() = runs * bits - word_count;
    padded = at::cat({words, at::zeros(pad_sizes, words.options())}, -1);
  }
  std::vector<int64_t> run_sizes = padded.sizes().vec();
  run_sizes.back() = runs;
  run_sizes.push_back(bits);
  const at::Tensor grouped = padded.view(run_sizes);
  std::vector<int64_t> word_index(32), next_index(32), offset(32), low_mask(32), high_mask(32);
  for (int i = 0; i < 32; ++i) {
    const int start = i * bits;
    const int low_bits = std::min(bits, 32 - start % 32);
    word_index[i] = start / 32;
    next_index[i] = std::min<int64_t>(start / 32 + 1, bits - 1);
    offset[i] = start % 32;
    low_mask[i] = (int64_t{1} << low_bits) - 1;
    high_mask[i] = ((int64_t{1} << (bits - low_bits)) - 1) << low_bits;  // 0 unless straddling
  }
  auto index = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(words.device());
  };
  const at::Tensor low =
      at::bitwise_and(at::bitwise_right_shift(grouped.index_select(-1, index(word_index)),
                                              index(offset).to(at::kInt)),
                      index(low_mask).to(at::kInt));
  // The high part of a straddling value is the next word's lowest bits, shifted above the low part.
  const std::vector<int64_t> low_width = [&] {
    std::vector<int64_t> w(32);
    for (int i = 0; i < 32; ++i) w[i] = std::min(bits, 32 - int(offset[i]));
    return w;
  }();
  const at::Tensor high =
      at::bitwise_and(at::bitwise_left_shift(grouped.index_select(-1, index(next_index)),
                                             index(low_width).to(at::kInt)),
                      index(high_mask).to(at::kInt));
  return at::bitwise_or(low, high).flatten(-2).narrow(-1, 0, count);
}

at::Tensor pack_bits(const at::Tensor& values, int bits) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "quant: bits must be 1..8, found ", bits);
  const int64_t count = values.size(-1);
  const int64_t runs = ceil_div(count, 32);
  at::Tensor padded = values.to(at::kLong);
  if (runs * 32 != count) {
    std::vector<int64_t> pad_sizes = padded.sizes().vec();
    pad_sizes.back() = runs * 32 - count;
    padded = at::cat({padded, at::zeros(pad_sizes, padded.options())}, -1);
  }
  std::vector<int64_t> run_sizes = padded.sizes().vec();
  run_sizes.back() = runs;
  run_sizes.push_back(32);
  const at::Tensor grouped = padded.view(run_sizes);
  std::vector<int64_t> out_sizes = grouped.sizes().vec();
  out_sizes.back() = bits;
  // Accumulated in int64 so that bit 31 sets no sign; the fields do not overlap, so adding them
  // is OR-ing them.
  at::Tensor words = at::zeros(out_sizes, grouped.options());
  const auto options = at::TensorOptions().dtype(at::kLong).device(values.device());
  std::vector<int64_t> word_index(32), offset(32), straddlers, straddler_next, straddler_shift;
  for (int i = 0; i < 32; ++i) {
    word_index[i] = (i * bits) / 32;
    offset[i] = (i * bits) % 32;
    if (offset[i] + bits > 32) {
      straddlers.push_back(i);
      straddler_next.push_back(word_index[i] + 1);
      straddler_shift.push_back(32 - offset[i]);
    }
  }
  const at::Tensor low = at::bitwise_and(
      at::bitwise_left_shift(grouped, at::tensor(offset, options)), int64_t{0xFFFFFFFF});
  words.index_add_(-1, at::tensor(word_index, options), low);
  if (!straddlers.empty()) {
    const at::Tensor high =
        at::bitwise_right_shift(grouped.index_select(-1, at::tensor(straddlers, options)),
                                at::tensor(straddler_shift, options));
    words.index_add_(-1, at::tensor(straddler_next, options), high);
  }
  // uint32 bit patterns -> int32 (two's complement).
  words = at::where(words >= (int64_t{1} << 31), words - (int64_t{1} << 32), words);
  return words.flatten(-2).narrow(-1, 0, ceil_div(count * bits, 32)).to(at::kInt).contiguous();
}

at::Tensor float8_to(const at::Tensor& values, at::ScalarType dtype) {
  if (!values.device().is_cpu()) return values.to(dtype);
  const at::Tensor table =
      at::arange(256, at::TensorOptions().dtype(at::kByte)).view(values.scalar_type()).to(dtype);
  const at::Tensor codes = values.contiguous().view(at::kByte).flatten().to(at::kInt);
  return table.index_select(0, codes).view(values.sizes());
}

at::Tensor float8_to_float(const at::Tensor& values) { return float8_to(values, at::kFloat); }

at::Tensor e8m0_to_float(const at::Tensor& scale) {
  // compressed-tensors mx_utils.py `decompress_mx_scale`: 2 ** (scale.to(int32) - 127); the OCP
  // MX spec (and torch's Float8_e8m0fnu) make 255 NaN. Never the integer itself.
  return scale.contiguous().view(at::kFloat8_e8m0fnu).to(at::kFloat);
}

at::Tensor fp4_values(const at::Tensor& packed, at::ScalarType dtype) {
  static const std::vector<float> kValues = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                                             4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                                             -2.0f, -3.0f, -4.0f, -6.0f};
  // Byte b holds value 2k (low nibble) and 2k + 1 (high nibble): a [256, 2] table of both.
  static const std::vector<float> kPairs = [] {
    std::vector<float> pairs(512);
    for (int b = 0; b < 256; ++b) {
      pairs[2 * b] = kValues[b & 15];
      pairs[2 * b + 1] = kValues[b >> 4];
    }
    return pairs;
  }();
  const at::Tensor table = at::tensor(kPairs).to(packed.device()).to(dtype).view({256, 2});
  const at::Tensor bytes = packed.contiguous().view(at::kByte);
  std::vector<int64_t> sizes = bytes.sizes().vec();
  if (sizes.empty()) sizes.push_back(1);
  sizes.back() *= 2;
  return table.index_select(0, bytes.flatten().to(at::kInt)).view(sizes);
}

at::Tensor fp6_values(const at::Tensor& packed) {
  static const std::vector<float> kValues = [] {
    std::vector<float> values(64);
    for (int code = 0; code < 32; ++code) {
      const int m = code & 7, e = code >> 3;
      // e == 0: subnormal m / 8; else (1 + m / 8) x 2^(e - 1).
      values[code] = e == 0 ? float(m) / 8 : (1.0f + float(m) / 8) * float(1 << (e - 1));
      values[code + 32] = -values[code];
    }
    return values;
  }();
  const at::Tensor table = at::tensor(kValues).to(packed.device());
  const at::Tensor bytes = packed.contiguous().view(at::kByte);
  std::vector<int64_t> sizes = bytes.sizes().vec();
  const int64_t triples = sizes.back() / 3;
  sizes.back() = triples;
  sizes.push_back(3);
  const at::Tensor b = bytes.view(sizes).to(at::kInt);
  using at::indexing::Slice;
  const at::Tensor word = b.select(-1, 0)
                              .bitwise_or(b.select(-1, 1).bitwise_left_shift(8))
                              .bitwise_or(b.select(-1, 2).bitwise_left_shift(16));
  const at::Tensor shifts = at::tensor(std::vector<int>{0, 6, 12, 18}).to(packed.device());
  const at::Tensor codes = word.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(0x3F);
  std::vector<int64_t> out_sizes(sizes.begin(), sizes.end() - 1);
  out_sizes.back() = triples * 4;
  return table.index_select(0, codes.flatten().to(at::kLong)).view(out_sizes);
}

at::Tensor fp4_pack(const at::Tensor& values) {
  const at::Tensor x = values.to(at::kFloat);
  const at::Tensor magnitude = x.abs();
  // Midpoints between neighbouring E2M1 magnitudes; a tie goes to the even code, which is the
  // upper neighbour at 0.75, 1.75 and 3.5 (as ModelOpt's `_cast_fp4` rounds).
  const at::Tensor bounds =
      at::tensor({0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f}).to(x.device());
  at::Tensor code = at::bucketize(magnitude, bounds, /*out_int32=*/false, /*right=*/false);
  code = code + (magnitude == 0.75).logical_or(magnitude == 1.75).logical_or(magnitude == 3.5);
  code = code + at::signbit(x).to(at::kLong) * 8;
  const at::Tensor pairs = code.to(at::kByte);
  using at::indexing::Slice;
  return at::bitwise_or(pairs.index({"...", Slice(0, c10::nullopt, 2)}),
                        at::bitwise_left_shift(pairs.index({"...", Slice(1, c10::nullopt, 2)}), 4))
      .contiguous();
}

at::Tensor element_values(Scheme scheme, const at::Tensor& packed, at::ScalarType dtype) {
  if (scheme == Scheme::kMxfp6PackQuantized) return fp6_values(packed).to(dtype);
  if (scheme == Scheme::kMxfp8Quantized) return float8_to(packed, dtype);
  return fp4_values(packed, dtype);
}

double largest_element(Scheme scheme, at::ScalarType packed_dtype) {
  if (scheme == Scheme::kMxfp6PackQuantized) return 7.5;
  if (scheme == Scheme::kMxfp8Quantized) {
    return packed_dtype == at::kFloat8_e5m2
               ? double(std::numeric_limits<c10::Float8_e5m2>::max())
               : double(std::numeric_limits<c10::Float8_e4m3fn>::max());
  }
  return 6.0;
}

at::Tensor fp6_pack(const at::Tensor& values) {
  const at::Tensor x = values.to(at::kFloat);
  const at::Tensor magnitude = x.abs();
  // The 32 E2M3 magnitudes in code order (fp6_values'), and the midpoints between neighbours.
  std::vector<float> levels, midpoints;
  for (int code = 0; code < 32; ++code) {
    const int m = code & 7, e = code >> 3;
    levels.push_back(e == 0 ? float(m) / 8 : (1.0f + float(m) / 8) * float(1 << (e - 1)));
    if (code) midpoints.push_back((levels[code - 1] + levels[code]) / 2);
  }
  const at::Tensor bounds = at::tensor(midpoints).to(x.device());
  // bucketize puts a midpoint with its lower neighbour; a tie goes to the even code instead, as
  // compressed-tensors' cast_to_fp6 rounds (torch.round of the value over its step), and values
  // past 7.5 saturate to code 31.
  at::Tensor code = at::bucketize(magnitude, bounds, /*out_int32=*/false, /*right=*/false);
  const at::Tensor at_midpoint =
      bounds.index_select(0, code.clamp_max(30).flatten()).view(code.sizes()) == magnitude;
  code = code + (at_midpoint & code.remainder(2).eq(1)).to(at::kLong);
  code = code.bitwise_or(at::signbit(x).to(at::kLong).bitwise_left_shift(5));
  // Four codes in one little-endian 24-bit word, code k in bits 6k..6k+5, as fp6_values reads.
  std::vector<int64_t> sizes = code.sizes().vec();
  const int64_t quads = sizes.back() / 4;
  sizes.back() = quads;
  sizes.push_back(4);
  const at::Tensor c = code.reshape(sizes);
  const at::Tensor word = c.select(-1, 0)
                              .bitwise_or(c.select(-1, 1).bitwise_left_shift(6))
                              .bitwise_or(c.select(-1, 2).bitwise_left_shift(12))
                              .bitwise_or(c.select(-1, 3).bitwise_left_shift(18));
  const at::Tensor bytes =
      at::stack({word, word.bitwise_right_shift(8), word.bitwise_right_shift(16)}, -1)
          .bitwise_and(0xFF)
          .to(at::kByte);
  std::vector<int64_t> out_sizes(sizes.begin(), sizes.end() - 1);
  out_sizes.back() = quads * 3;
  return bytes.reshape(out_sizes).contiguous();
}

const std::vector<std::string>& required_roles(Scheme scheme) {
  static const std::vector<std::string> kPackedScale = {"packed", "scale"};
  static const std::vector<std::string> kWithZero = {"packed", "scale", "zero_point"};
  static const std::vector<std::string> kWithGlobal = {"packed", "scale", "global_scale"};
  switch (scheme) {
    case Scheme::kGptq:
    case Scheme::kAwq:
      return kWithZero;
    case Scheme::kNvfp4:
    case Scheme::kNvfp4PackQuantized:
      return kWithGlobal;
    default:
      return kPackedScale;
  }
}

const std::vector<std::string>& optional_roles(Scheme scheme) {
  static const std::vector<std::string> kNone;
  static const std::vector<std::string> kGptqOptional = {"g_idx"};
  static const std::vector<std::string> kPackOptional = {"zero_point", "shape"};
  if (scheme == Scheme::kGptq) return kGptqOptional;
  if (scheme == Scheme::kPackQuantized) return kPackOptional;
  return kNone;
}

std::string_view packing_name(Scheme scheme) {
  switch (scheme) {
    case Scheme::kFp8:
      return "none";
    case Scheme::kGptq:
      return "int32_lsb_first";
    case Scheme::kAwq:
      return "int32_awq_order_02461357";
    case Scheme::kPackQuantized:
      return "int32_lsb_first_offset";
    case Scheme::kNvfp4PackQuantized:
    case Scheme::kMxfp4:
    case Scheme::kNvfp4:
    case Scheme::kMxfp4PackQuantized:
      return "fp4_e2m1_low_nibble_first";
    case Scheme::kMxfp6PackQuantized:
      return "fp6_e2m3_4_in_3_bytes_lsb_first";
    case Scheme::kMxfp8Quantized:
      return "none";
  }
  return "?";
}

bool is_expert_stack(const QuantizedWeight& weight) {
  return weight.shape.size() == 3 &&
         (weight.scheme == Scheme::kGptq || weight.scheme == Scheme::kAwq ||
          weight.scheme == Scheme::kPackQuantized);
}

void check_layout(const QuantizedWeight& weight, const PartInfos& parts, std::string_view source) {
  const std::string what =
      "quantized weight '" + weight.name + "' (" + std::string(scheme_name(weight.scheme)) + ")";
  auto stored = [&](const std::string& role) {
    const auto found = weight.tensors.find(role);
    return found == weight.tensors.end() ? role : "'" + found->second + "'";
  };
  for (const std::string& role : required_roles(weight.scheme)) {
    TS_CHECK(
        parts.count(role) && weight.tensors.count(role), source, what, ": its ", role, " tensor ",
        weight.tensors.count(role) ? stored(role) + " is missing" : std::string("is not named"));
  }
  for (const auto& [role, info] : parts) {
    const auto& required = required_roles(weight.scheme);
    const auto& optional = optional_roles(weight.scheme);
    TS_CHECK(std::count(required.begin(), required.end(), role) ||
                 std::count(optional.begin(), optional.end(), role),
             source, what, ": unexpected part '", role, "'");
  }
  const std::vector<int64_t>& shape = weight.shape;
  check_dimensions(shape, source, what + ": its dense shape");
  for (const auto& [role, info] : parts) {
    check_dimensions(info.sizes, source, what + ": " + stored(role));
  }
  if (is_expert_stack(weight)) {
    // [experts, out, in]: every part has the experts as its leading dimension (weight_shape
    // holds three integers), and each expert's parts form the 2-D layout.
    const int64_t experts = shape[0];
    QuantizedWeight slice = weight;
    slice.shape = {shape[1], shape[2]};
    PartInfos sliced;
    for (const auto& [role, info] : parts) {
      if (role == "shape") {
        TS_CHECK(info.sizes == std::vector<int64_t>{3}, source, what, ": ", stored(role),
                 " has shape ", sizes_string(info.sizes), ", expected [3] ([experts, out, in])");
        sliced.emplace(role, PartInfo{info.dtype, {2}});
        continue;
      }
      TS_CHECK(!info.sizes.empty() && info.sizes[0] == experts, source, what, ": ", stored(role),
               " (", role, ") has shape ", sizes_string(info.sizes),
               ", expected a leading dimension of ", experts, " (the experts of a 3-D stack)");
      sliced.emplace(role, PartInfo{info.dtype, {info.sizes.begin() + 1, info.sizes.end()}});
    }
    check_layout(slice, sliced, source);
    return;
  }
  // Only FP8 with one scale has a meaning for a 0-dim weight; every other rule needs dimensions.
  const bool scalar_fp8 = weight.scheme == Scheme::kFp8 && weight.block_size.empty();
  TS_CHECK(!shape.empty() || scalar_fp8, source, what, ": its dense shape is unknown or 0-dim ",
           "(", scheme_name(weight.scheme), " needs at least one dimension)");
  auto expect_dtype = [&](const std::string& role, bool ok, std::string_view expected) {
    TS_CHECK(ok, source, what, ": ", stored(role), " (", role, ") has dtype ", parts.at(role).dtype,
             ", expected ", expected);
  };
  auto expect_sizes = [&](const std::string& role, const std::vector<int64_t>& expected,
                          std::string_view formula) {
    const auto& found = parts.at(role).sizes;
    TS_CHECK(found == expected, source, what, ": ", stored(role), " (", role, ") has shape ",
             sizes_string(found), ", expected ", sizes_string(expected), " (", formula, ")");
  };
  auto numel = [](const std::vector<int64_t>& sizes) { return saturating_numel(sizes); };
  const bool two_d = shape.size() == 2;
  // 1 for a 0-dim FP8 weight, the only scheme that reaches here without a dimension.
  const int64_t out = shape.empty() ? 1 : shape.front();
  const int64_t in = shape.empty() ? 1 : shape.back();
  auto require_2d = [&] {
    TS_CHECK(two_d, source, what, ": expected a 2-D [out, in] weight, found shape ",
             sizes_string(shape));
  };
  auto group_count = [&]() -> int64_t {
    TS_CHECK(weight.group_size > 0, source, what, ": group size must be positive, found ",
             weight.group_size);
    return ceil_div(in, weight.group_size);
  };
  switch (weight.scheme) {
    case Scheme::kFp8: {
      expect_dtype("packed", is_float8(parts.at("packed").dtype), "a float8 dtype (F8_E4M3, ...)");
      expect_sizes("packed", shape, "the dense shape");
      // F8_E8M0: DeepSeek-V4's `.scale` (config `scale_fmt: ue8m0`), decoded as 2^(e - 127).
      expect_dtype("scale",
                   is_real_floating(parts.at("scale").dtype) ||
                       parts.at("scale").dtype == at::kFloat8_e8m0fnu,
                   "F32, BF16, F16, F64 or F8_E8M0");
      const auto& scale = parts.at("scale").sizes;
      if (!weight.block_size.empty()) {
        require_2d();
        TS_CHECK(
            weight.block_size.size() == 2 && weight.block_size[0] > 0 && weight.block_size[1] > 0,
            source, what, ": block size must be two positive numbers, found ",
            sizes_string(weight.block_size));
        expect_sizes("scale",
                     {ceil_div(out, weight.block_size[0]), ceil_div(in, weight.block_size[1])},
                     "ceil(out / block rows), ceil(in / block cols)");
      } else {
        const bool per_tensor = numel(scale) == 1;
        const bool per_channel = !shape.empty() && (scale == std::vector<int64_t>{out, 1} ||
                                                    scale == std::vector<int64_t>{out});
        if (shape.empty()) {
          TS_CHECK(per_tensor, source, what, ": ", stored("scale"), " has shape ",
                   sizes_string(scale), ", expected one value (the weight is 0-dim)");
        }
        TS_CHECK(per_tensor || per_channel, source, what, ": ", stored("scale"), " has shape ",
                 sizes_string(scale), ", expected one value, [", out, ", 1] or [", out,
                 "] (per tensor or per output channel; block scales need a block size)");
      }
      break;
    }
    case Scheme::kGptq: {
      require_2d();
      TS_CHECK(weight.bits == 2 || weight.bits == 3 || weight.bits == 4 || weight.bits == 8, source,
               what, ": bits must be 2, 3, 4 or 8, found ", weight.bits);
      const int64_t groups = group_count();
      expect_dtype("packed", parts.at("packed").dtype == at::kInt, "I32");
      expect_sizes("packed", {ceil_div(in * weight.bits, 32), out}, "in * bits / 32, out");
      expect_dtype("zero_point", parts.at("zero_point").dtype == at::kInt, "I32");
      expect_sizes("zero_point", {groups, ceil_div(out * weight.bits, 32)},
                   "ceil(in / group_size), out * bits / 32");
      expect_dtype("scale", is_real_floating(parts.at("scale").dtype), "F16, BF16 or F32");
      expect_sizes("scale", {groups, out}, "ceil(in / group_size), out");
      if (parts.count("g_idx")) {
        const auto type = parts.at("g_idx").dtype;
        expect_dtype("g_idx", type == at::kInt || type == at::kLong, "I32 or I64");
        expect_sizes("g_idx", {in}, "in");
      }
      break;
    }
    case Scheme::kAwq: {
      require_2d();
      TS_CHECK(weight.bits == 4, source, what, ": AWQ's GEMM layout holds 4 bits, found ",
               weight.bits);
      TS_CHECK(out % 8 == 0, source, what, ": out (", out, ") must be a multiple of 8");
      const int64_t groups = group_count();
      expect_dtype("packed", parts.at("packed").dtype == at::kInt, "I32");
      expect_sizes("packed", {in, out / 8}, "in, out / 8");
      expect_dtype("zero_point", parts.at("zero_point").dtype == at::kInt, "I32");
      expect_sizes("zero_point", {groups, out / 8}, "ceil(in / group_size), out / 8");
      expect_dtype("scale", is_real_floating(parts.at("scale").dtype), "F16, BF16 or F32");
      expect_sizes("scale", {groups, out}, "ceil(in / group_size), out");
      break;
    }
    case Scheme::kPackQuantized: {
      require_2d();
      TS_CHECK(weight.bits >= 1 && weight.bits <= 8, source, what, ": bits must be 1..8, found ",
               weight.bits);
      expect_dtype("packed", parts.at("packed").dtype == at::kInt, "I32");
      expect_sizes("packed", {out, ceil_div(in * weight.bits, 32)}, "out, in * bits / 32");
      expect_dtype("scale", is_real_floating(parts.at("scale").dtype), "F16, BF16 or F32");
      const int64_t groups = weight.group_size > 0 ? group_count() : 1;
      const auto& scale = parts.at("scale").sizes;
      if (weight.group_size > 0) {
        expect_sizes("scale", {out, groups}, "out, ceil(in / group_size)");
      } else {
        const bool per_channel = scale == std::vector<int64_t>{out, 1};
        TS_CHECK(numel(scale) == 1 || per_channel, source, what, ": ", stored("scale"),
                 " has shape ", sizes_string(scale), ", expected [", out,
                 ", 1] or one value (per channel or per tensor)");
      }
      if (parts.count("zero_point")) {
        expect_dtype("zero_point", parts.at("zero_point").dtype == at::kInt, "I32");
        expect_sizes("zero_point", {ceil_div(out * weight.bits, 32), groups},
                     "out * bits / 32, groups: packed along the output dimension");
      }
      if (parts.count("shape")) {
        expect_sizes("shape", {2}, "[out, in]");
      }
      break;
    }
    case Scheme::kNvfp4:
    case Scheme::kNvfp4PackQuantized: {
      require_2d();
      TS_CHECK(weight.group_size > 0 && in % weight.group_size == 0 && in % 2 == 0, source, what,
               ": in (", in, ") must be a multiple of the group size (", weight.group_size, ")");
      expect_dtype("packed", parts.at("packed").dtype == at::kByte, "U8 (two FP4 values a byte)");
      expect_sizes("packed", {out, in / 2}, "out, in / 2");
      expect_dtype("scale", parts.at("scale").dtype == at::kFloat8_e4m3fn, "F8_E4M3");
      expect_sizes("scale", {out, in / weight.group_size}, "out, in / group_size");
      expect_dtype("global_scale", is_real_floating(parts.at("global_scale").dtype), "F32");
      TS_CHECK(numel(parts.at("global_scale").sizes) == 1, source, what, ": ",
               stored("global_scale"), " has shape ", sizes_string(parts.at("global_scale").sizes),
               ", expected one value");
      break;
    }
    case Scheme::kMxfp4PackQuantized:
    case Scheme::kMxfp6PackQuantized:
    case Scheme::kMxfp8Quantized: {
      // [..., out, in] (leading dims: expert stacks), one E8M0 scale per 32 values of a row.
      TS_CHECK(weight.group_size == 32 && in % 32 == 0, source, what,
               ": MX blocks hold 32 values; the last dimension (", in,
               ") must be a multiple of 32 and the group size 32, found ", weight.group_size);
      std::vector<int64_t> scale_sizes(shape.begin(), shape.end() - 1);
      scale_sizes.push_back(in / 32);
      expect_dtype("scale", is_e8m0(parts.at("scale").dtype), "U8 or F8_E8M0 (E8M0 exponents)");
      expect_sizes("scale", scale_sizes, "..., in / 32: one scale per 32 values");
      std::vector<int64_t> packed_sizes(shape.begin(), shape.end() - 1);
      if (weight.scheme == Scheme::kMxfp4PackQuantized) {
        expect_dtype("packed", is_fp4_bytes(parts.at("packed").dtype),
                     "U8, I8 or F4 (two FP4 values a byte)");
        packed_sizes.push_back(in / 2);
        expect_sizes("packed", packed_sizes, "..., in / 2");
      } else if (weight.scheme == Scheme::kMxfp6PackQuantized) {
        expect_dtype("packed", parts.at("packed").dtype == at::kByte,
                     "U8 (four FP6 values in three bytes)");
        packed_sizes.push_back(in / 4 * 3);
        expect_sizes("packed", packed_sizes, "..., in * 3 / 4");
      } else {
        expect_dtype("packed", parts.at("packed").dtype == at::kFloat8_e4m3fn, "F8_E4M3");
        expect_sizes("packed", shape, "the dense shape");
      }
      break;
    }
    case Scheme::kMxfp4: {
      TS_CHECK(weight.group_size == 32 && in % 32 == 0, source, what,
               ": MXFP4 blocks hold 32 values; the last dimension (", in,
               ") must be a multiple of 32 and the group size 32, found ", weight.group_size);
      std::vector<int64_t> blocks(shape.begin(), shape.end() - 1);
      blocks.push_back(in / 32);
      expect_dtype("scale", parts.at("scale").dtype == at::kByte, "U8 (E8M0 exponents)");
      expect_sizes("scale", blocks, "..., in / 32");
      blocks.push_back(16);
      expect_dtype("packed", parts.at("packed").dtype == at::kByte, "U8 (two FP4 values a byte)");
      expect_sizes("packed", blocks, "..., in / 32, 16");
      break;
    }
  }
}

}  // namespace detail
}  // namespace torch::safetensors::quant
