// The reverse of dequantize.cpp: a dense weight to the tensors each scheme stores, under the
// names that scheme's producers write. Scales follow the producers' usual choices (absmax per
// block or group); what matters for round trips is that dequantize(quantize(w)) is the nearest
// representable weight under those scales.
#include <cmath>

#include <ATen/ATen.h>

#include "check.h"
#include "quant/internal.h"

namespace torch::safetensors::quant {
namespace {

using detail::ceil_div;
constexpr std::string_view kSource = "quantize";

// "x.weight" -> "x."; any other name -> name + "." (where a scheme's companions go).
std::string prefix_of(std::string_view name) {
  constexpr std::string_view kWeight = "weight";
  if (name.size() > kWeight.size() && name.substr(name.size() - kWeight.size()) == kWeight &&
      name[name.size() - kWeight.size() - 1] == '.') {
    return std::string(name.substr(0, name.size() - kWeight.size()));
  }
  return std::string(name) + ".";
}

// Group of each input column: i / group_size, or by the act-order permutation (the k-th column
// of the permuted order belongs to group k / group_size, as GPTQ with desc_act assigns them).
at::Tensor group_index(int64_t in, int64_t group_size, const std::optional<at::Tensor>& act_order,
                       const at::Device device) {
  const auto options = at::TensorOptions().dtype(at::kLong).device(device);
  const at::Tensor plain = at::div(at::arange(in, options), group_size, "floor");
  if (!act_order) return plain;
  const at::Tensor perm = act_order->to(options);
  TS_CHECK(perm.dim() == 1 && perm.numel() == in &&
               at::equal(std::get<0>(perm.sort()), at::arange(in, options)),
           kSource, "act_order must be a permutation of the ", in, " input columns, found shape ",
           detail::sizes_string(perm.sizes()));
  return at::empty_like(plain).index_put_({perm}, plain);
}

// Per (row, group) minimum and maximum of w [out, in] over the columns of each group.
std::pair<at::Tensor, at::Tensor> group_min_max(const at::Tensor& w, const at::Tensor& groups,
                                                int64_t count) {
  const at::Tensor index = groups.unsqueeze(0).expand(w.sizes());
  const at::Tensor base = at::zeros({w.size(0), count}, w.options());
  return {base.scatter_reduce(1, index, w, "amin", /*include_self=*/false),
          base.scatter_reduce(1, index, w, "amax", /*include_self=*/false)};
}

struct IntegerGroups {
  at::Tensor q;       // [out, in] in [0, maxq]
  at::Tensor zeros;   // [out, groups] in [0, maxq]
  at::Tensor scales;  // [out, groups], as stored (rounded to the stored dtype)
};

// Unsigned integer quantization per group, as GPTQ and AWQ store it: q = round(w / s) + z in
// [0, 2^bits - 1]. Symmetric: z = 2^(bits-1), s = 2 max|w| / maxq (gptq `Quantizer.find_params`).
IntegerGroups quantize_groups(const at::Tensor& w, int bits, const at::Tensor& groups,
                              int64_t count, bool symmetric, at::ScalarType scale_dtype,
                              int64_t min_zero) {
  const double maxq = double((1 << bits) - 1);
  auto [low, high] = group_min_max(w, groups, count);
  low = at::clamp_max(low, 0.0);
  high = at::clamp_min(high, 0.0);
  at::Tensor scale, zero;
  if (symmetric) {
    const at::Tensor bound = at::maximum(low.abs(), high);
    scale = bound * 2 / maxq;
    zero = at::full_like(scale, double(1 << (bits - 1)));
  } else {
    scale = (high - low) / maxq;
    scale = at::where(scale == 0, at::ones_like(scale), scale);
    zero = at::clamp(at::round(-low / scale), double(min_zero), maxq);
  }
  scale = at::where(scale == 0, at::ones_like(scale), scale).to(scale_dtype);
  const at::Tensor scale32 = scale.to(at::kFloat);
  const at::Tensor q = at::clamp(
      at::round(w / scale32.index_select(1, groups)) + zero.index_select(1, groups), 0.0, maxq);
  return {q.to(at::kInt), zero.to(at::kInt), scale};
}

Quantized quantize_fp8(const at::Tensor& w, std::string_view name, const QuantizeOptions& options) {
  constexpr double kMax = 448.0;  // largest F8_E4M3 (fn) value
  const std::string prefix = prefix_of(name);
  Quantized result;
  result.weight.scheme = Scheme::kFp8;
  result.weight.bits = 8;
  at::Tensor scale, full;
  if (!options.block_size.empty()) {
    TS_CHECK(w.dim() == 2 && options.block_size.size() == 2 && options.block_size[0] > 0 &&
                 options.block_size[1] > 0,
             kSource, "fp8 block scales need a 2-D weight and a [rows, cols] block size, found ",
             "weight ", detail::sizes_string(w.sizes()), ", block size ",
             detail::sizes_string(options.block_size));
    const int64_t out = w.size(0), in = w.size(1);
    const int64_t rows = options.block_size[0], cols = options.block_size[1];
    const int64_t row_blocks = ceil_div(out, rows), col_blocks = ceil_div(in, cols);
    const at::Tensor padded =
        at::constant_pad_nd(w.abs(), {0, col_blocks * cols - in, 0, row_blocks * rows - out}, 0.0);
    const at::Tensor amax = padded.view({row_blocks, rows, col_blocks, cols}).amax({1, 3});
    scale = amax / kMax;
    scale = at::where(scale == 0, at::ones_like(scale), scale);
    full = scale.repeat_interleave(rows, 0).narrow(0, 0, out).repeat_interleave(cols, 1).narrow(
        1, 0, in);
    result.weight.block_size = options.block_size;
    result.tensors = {{prefix + "weight", at::Tensor()}, {prefix + "weight_scale_inv", scale}};
  } else {
    // One scale per output channel; a 0-dim weight has one value, so one scale.
    const int64_t rows = w.dim() ? w.size(0) : 1;
    const at::Tensor amax = w.abs().reshape({rows, -1}).amax(1, /*keepdim=*/true);
    scale = at::where(amax == 0, at::ones_like(amax), amax / kMax);  // [out, 1]
    std::vector<int64_t> sizes(w.dim(), 1);
    if (w.dim()) sizes[0] = rows;
    full = scale.view(sizes);
    result.tensors = {{prefix + "weight", at::Tensor()}, {prefix + "weight_scale", scale}};
  }
  result.tensors[0].second = at::clamp(w / full, -kMax, kMax).to(at::kFloat8_e4m3fn);
  result.weight.tensors = {{"packed", result.tensors[0].first}, {"scale", result.tensors[1].first}};
  return result;
}

Quantized quantize_gptq(const at::Tensor& w, std::string_view name,
                        const QuantizeOptions& options) {
  const int bits = options.bits;
  TS_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, kSource,
           "gptq stores 2, 3, 4 or 8 bits, found ", bits);
  const int64_t in = w.size(1);
  const int64_t group_size = options.group_size > 0 ? options.group_size : in;
  const int64_t count = ceil_div(in, group_size);
  const at::Tensor groups = group_index(in, group_size, options.act_order, w.device());
  // The original format stores z - 1 and cannot hold z = 0 (it would read back as 2^bits).
  const auto q = quantize_groups(w, bits, groups, count, options.symmetric, options.scale_dtype,
                                 options.zero_point_minus_one ? 1 : 0);
  const int64_t maxq = (1 << bits) - 1;
  const at::Tensor stored_zeros =
      at::bitwise_and(q.zeros - (options.zero_point_minus_one ? 1 : 0), maxq);
  const std::string prefix = prefix_of(name);
  Quantized result;
  result.tensors = {
      {prefix + "qweight", detail::pack_bits(q.q, bits).t().contiguous()},
      {prefix + "qzeros", detail::pack_bits(stored_zeros.t(), bits)},
      {prefix + "scales", q.scales.t().contiguous()},
      {prefix + "g_idx", groups.to(at::kInt)},
  };
  result.weight.scheme = Scheme::kGptq;
  result.weight.bits = bits;
  result.weight.group_size = group_size;
  result.weight.zero_point_minus_one = options.zero_point_minus_one;
  result.weight.tensors = {{"packed", prefix + "qweight"},
                           {"zero_point", prefix + "qzeros"},
                           {"scale", prefix + "scales"},
                           {"g_idx", prefix + "g_idx"}};
  return result;
}

// AWQ's nibble order (AutoAWQ awq/utils/packing_utils.py AWQ_ORDER): nibble k of a word holds
// column AWQ_ORDER[k] of its run of 8.
at::Tensor pack_awq(const at::Tensor& values) {
  const int64_t rows = values.size(0), columns = values.size(1);
  const at::Tensor order =
      at::tensor(std::vector<int64_t>{0, 2, 4, 6, 1, 3, 5, 7}).to(values.device());
  return detail::pack_bits(
      values.reshape({rows, columns / 8, 8}).index_select(-1, order).reshape({rows, columns}), 4);
}

Quantized quantize_awq(const at::Tensor& w, std::string_view name, const QuantizeOptions& options) {
  TS_CHECK(options.bits == 4, kSource, "awq's GEMM layout stores 4 bits, found ", options.bits);
  const int64_t out = w.size(0), in = w.size(1);
  TS_CHECK(out % 8 == 0, kSource, "awq packs 8 output columns a word: out (", out,
           ") must be a multiple of 8");
  const int64_t group_size = options.group_size > 0 ? options.group_size : in;
  const int64_t count = ceil_div(in, group_size);
  const at::Tensor groups = group_index(in, group_size, std::nullopt, w.device());
  const auto q = quantize_groups(w, 4, groups, count, /*symmetric=*/false, options.scale_dtype, 0);
  const std::string prefix = prefix_of(name);
  Quantized result;
  result.tensors = {
      {prefix + "qweight", pack_awq(q.q.t())},
      {prefix + "qzeros", pack_awq(q.zeros.t())},
      {prefix + "scales", q.scales.t().contiguous()},
  };
  result.weight.scheme = Scheme::kAwq;
  result.weight.bits = 4;
  result.weight.group_size = group_size;
  result.weight.tensors = {{"packed", prefix + "qweight"},
                           {"zero_point", prefix + "qzeros"},
                           {"scale", prefix + "scales"}};
  return result;
}

// compressed-tensors pack-quantized: signed q in [-2^(bits-1), 2^(bits-1) - 1]; symmetric
// s = 2 max|w| / (2^bits - 1), z = 0 (quantization/utils/helpers.py `calculate_qparams`).
Quantized quantize_pack_quantized(const at::Tensor& w, std::string_view name,
                                  const QuantizeOptions& options) {
  const int bits = options.bits;
  TS_CHECK(bits >= 1 && bits <= 8, kSource, "pack_quantized stores 1..8 bits, found ", bits);
  const int64_t out = w.size(0), in = w.size(1);
  const int64_t group_size = options.group_size > 0 ? options.group_size : in;
  const int64_t count = ceil_div(in, group_size);
  const at::Tensor groups = group_index(in, group_size, std::nullopt, w.device());
  const double qmin = -double(1 << (bits - 1)), qmax = double((1 << (bits - 1)) - 1);
  auto [low, high] = group_min_max(w, groups, count);
  low = at::clamp_max(low, 0.0);
  high = at::clamp_min(high, 0.0);
  const at::ScalarType scale_dtype = w.scalar_type() == at::kDouble ? at::kFloat : w.scalar_type();
  at::Tensor scale, zero;
  if (options.symmetric) {
    scale = at::maximum(low.abs(), high) * 2 / (qmax - qmin);
    zero = at::zeros_like(scale);
  } else {
    scale = (high - low) / (qmax - qmin);
    scale = at::where(scale == 0, at::ones_like(scale), scale);
    zero = at::clamp(at::round(qmin - low / scale), qmin, qmax);
  }
  scale = at::where(scale == 0, at::ones_like(scale), scale).to(scale_dtype);
  const at::Tensor scale32 = scale.to(at::kFloat);
  const at::Tensor q = at::clamp(
      at::round(w / scale32.index_select(1, groups)) + zero.index_select(1, groups), qmin, qmax);
  const int64_t offset = int64_t{1} << (bits - 1);
  const std::string prefix = prefix_of(name);
  Quantized result;
  result.tensors = {
      {prefix + "weight_packed", detail::pack_bits(q.to(at::kLong) + offset, bits)},
      {prefix + "weight_scale", options.group_size > 0 ? scale : scale.reshape({out, 1})},
      {prefix + "weight_shape", at::tensor(std::vector<int64_t>{out, in})},
  };
  result.weight.tensors = {{"packed", prefix + "weight_packed"},
                           {"scale", prefix + "weight_scale"},
                           {"shape", prefix + "weight_shape"}};
  if (!options.symmetric) {
    // Packed along the output dimension (pack_to_int32(..., packed_dim=0)).
    const at::Tensor packed_zero =
        detail::pack_bits(zero.to(at::kLong).t() + offset, bits).t().contiguous();
    result.tensors.emplace_back(prefix + "weight_zero_point", packed_zero);
    result.weight.tensors["zero_point"] = prefix + "weight_zero_point";
  }
  result.weight.scheme = Scheme::kPackQuantized;
  result.weight.bits = bits;
  result.weight.group_size = options.group_size > 0 ? group_size : 0;
  return result;
}

// NVFP4 scales, the two conventions for one idea: an F8_E4M3 scale per 16 values and a global
// factor chosen so that the largest block scale is 448. ModelOpt stores the factor (multiplies,
// qtensor/nvfp4_tensor.py `get_weights_scaling_factor_2` = amax / (6 x 448)); compressed-tensors
// stores its inverse (divides, `weight_global_scale` = 6 x 448 / amax).
Quantized quantize_nvfp4(const at::Tensor& w, std::string_view name, bool compressed_tensors) {
  constexpr int64_t kGroup = 16;
  TS_CHECK(w.dim() == 2 && w.size(1) % kGroup == 0, kSource,
           "nvfp4 needs a 2-D weight whose input dimension is a multiple of 16, found ",
           detail::sizes_string(w.sizes()));
  const int64_t out = w.size(0), in = w.size(1);
  const at::Tensor amax = w.abs().amax();
  const at::Tensor factor = at::where(amax == 0, at::ones_like(amax), amax / (6.0 * 448.0));
  const at::Tensor block_amax = w.abs().view({out, in / kGroup, kGroup}).amax(-1);
  at::Tensor scale =
      at::clamp(block_amax / (6.0 * factor), std::pow(2.0, -9), 448.0).to(at::kFloat8_e4m3fn);
  const at::Tensor effective = scale.to(at::kFloat) * factor;
  const at::Tensor packed =
      detail::fp4_pack(w.view({out, in / kGroup, kGroup}) / effective.unsqueeze(-1))
          .view({out, in / 2});
  const std::string prefix = prefix_of(name);
  Quantized result;
  result.weight.bits = 4;
  result.weight.group_size = kGroup;
  if (compressed_tensors) {
    const at::Tensor global = (1.0 / factor).reshape({1});
    result.tensors = {{prefix + "weight_packed", packed},
                      {prefix + "weight_scale", scale},
                      {prefix + "weight_global_scale", global}};
    result.weight.scheme = Scheme::kNvfp4PackQuantized;
  } else {
    result.tensors = {{prefix + "weight", packed},
                      {prefix + "weight_scale", scale},
                      {prefix + "weight_scale_2", factor.reshape({})}};
    result.weight.scheme = Scheme::kNvfp4;
  }
  result.weight.tensors = {{"packed", result.tensors[0].first},
                           {"scale", result.tensors[1].first},
                           {"global_scale", result.tensors[2].first}};
  return result;
}

// MXFP4 (OCP MX): a power-of-two scale per 32 values, stored as E8M0 (exponent + 127). The OCP
// spec's 2^(floor(log2 amax) - 2) clips values above 6 x scale; this takes the smallest power of
// two that keeps the block within +-6 instead, 2^ceil(log2(amax / 6)), so nothing clips.
// The same rule for MXFP6 and MXFP8 (largest E2M3 value 7.5, F8_E4M3 448, instead of 6).
// `scheme` picks the names: gpt-oss's `<name>_blocks`/`_scales`, compressed-tensors'
// `weight_packed`/`weight_scale` (FP4, FP6; `weight`/`weight_scale` for FP8).
Quantized quantize_mx(const at::Tensor& w, std::string_view name, Scheme scheme) {
  constexpr int64_t kBlock = 32;
  TS_CHECK(w.dim() >= 1 && w.size(-1) % kBlock == 0, kSource, scheme_name(scheme),
           " needs a last dimension that is a multiple of 32, found ",
           detail::sizes_string(w.sizes()));
  std::vector<int64_t> block_sizes = w.sizes().vec();
  block_sizes.back() = w.size(-1) / kBlock;
  block_sizes.push_back(kBlock);
  const at::Tensor blocks = w.reshape(block_sizes);
  const at::Tensor amax = blocks.abs().amax(-1);
  const bool fp8 = scheme == Scheme::kMxfp8Quantized, fp6 = scheme == Scheme::kMxfp6PackQuantized;
  const double largest = detail::largest_element(scheme, at::kFloat8_e4m3fn);
  at::Tensor exponent = at::ceil(at::log2(amax / largest));
  exponent = at::where(amax == 0, at::full_like(exponent, -127.0), exponent).clamp(-127.0, 127.0);
  const at::Tensor scaled = blocks / at::exp2(exponent).unsqueeze(-1);
  const at::Tensor scales = (exponent + 127).to(at::kByte);
  Quantized result;
  if (scheme != Scheme::kMxfp4) {
    const std::string prefix = prefix_of(name);
    std::vector<int64_t> packed_sizes = w.sizes().vec();
    packed_sizes.back() = packed_sizes.back() / (fp8 ? 1 : fp6 ? 4 : 2) * (fp6 ? 3 : 1);
    const at::Tensor packed =
        fp8   ? scaled.clamp(-largest, largest).to(at::kFloat8_e4m3fn).reshape(w.sizes())
        : fp6 ? detail::fp6_pack(scaled).reshape(packed_sizes)
              : detail::fp4_pack(scaled).reshape(packed_sizes);
    result.tensors = {{prefix + (fp8 ? "weight" : "weight_packed"), packed},
                      {prefix + "weight_scale", scales}};
    result.weight.scheme = scheme;
    result.weight.bits = fp8 ? 8 : fp6 ? 6 : 4;
    result.weight.group_size = kBlock;
    result.weight.tensors = {{"packed", result.tensors[0].first},
                             {"scale", result.tensors[1].first}};
    return result;
  }
  const at::Tensor packed = detail::fp4_pack(scaled);
  result.tensors = {{std::string(name) + "_blocks", packed},
                    {std::string(name) + "_scales", scales}};
  result.weight.scheme = Scheme::kMxfp4;
  result.weight.bits = 4;
  result.weight.group_size = kBlock;
  result.weight.tensors = {{"packed", result.tensors[0].first}, {"scale", result.tensors[1].first}};
  return result;
}

}  // namespace

Quantized quantize(const at::Tensor& weight, std::string_view name,
                   const QuantizeOptions& options) {
  TS_CHECK(weight.defined() && at::isFloatingType(weight.scalar_type()), kSource, "weight '", name,
           "' must be a floating-point tensor, found ",
           weight.defined() ? c10::toString(weight.scalar_type()) : "an undefined tensor");
  const bool linear = options.scheme != Scheme::kMxfp4 && options.scheme != Scheme::kFp8 &&
                      options.scheme != Scheme::kMxfp4PackQuantized &&
                      options.scheme != Scheme::kMxfp6PackQuantized &&
                      options.scheme != Scheme::kMxfp8Quantized;
  TS_CHECK(!linear || weight.dim() == 2, kSource, "weight '", name, "' (",
           scheme_name(options.scheme), ") must be 2-D [out, in], found shape ",
           detail::sizes_string(weight.sizes()));
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  Quantized result;
  switch (options.scheme) {
    case Scheme::kFp8:
      result = quantize_fp8(w, name, options);
      break;
    case Scheme::kGptq:
      result = quantize_gptq(w, name, options);
      break;
    case Scheme::kAwq:
      result = quantize_awq(w, name, options);
      break;
    case Scheme::kPackQuantized:
      result = quantize_pack_quantized(w, name, options);
      break;
    case Scheme::kNvfp4PackQuantized:
      result = quantize_nvfp4(w, name, /*compressed_tensors=*/true);
      break;
    case Scheme::kNvfp4:
      result = quantize_nvfp4(w, name, /*compressed_tensors=*/false);
      break;
    case Scheme::kMxfp4:
    case Scheme::kMxfp4PackQuantized:
    case Scheme::kMxfp6PackQuantized:
    case Scheme::kMxfp8Quantized:
      result = quantize_mx(w, name, options.scheme);
      break;
  }
  result.weight.name = std::string(name);
  result.weight.shape = weight.sizes().vec();
  return result;
}

}  // namespace torch::safetensors::quant
