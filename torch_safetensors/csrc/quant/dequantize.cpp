// Dequantization of each layout with ATen ops, on the device the stored parts are on. Values are
// computed in float32 and rounded once to the requested dtype, or directly in the requested dtype
// where that gives the same bits (integer codes times scales stored in that dtype: grouped_affine).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "check.h"
#include "quant/internal.h"

namespace torch::safetensors::quant {
namespace {

using detail::ceil_div;

// values x scale, in place in float32 (a same-dtype kernel), then rounded once to `dtype`.
at::Tensor scale_and_round(at::Tensor values, const at::Tensor& scale, at::ScalarType dtype,
                           at::IntArrayRef out_sizes) {
  values.mul_(scale);
  return values.reshape(out_sizes).to(dtype);
}

// On the CPU, out[r, c] = tables[table_of(r, c)][code(r, c)] for a [rows, cols] weight whose codes
// are bytes (`bits` 8: one code a byte) or nibbles (`bits` 4: two a byte, the first in the low
// nibble), where each run of `group` columns of a row shares one table of `table_size` values
// already in the output dtype, and row r's first table is (r / rows_per_table) * (cols / group).
// One read of the codes and one write of the output, the rows split over ATen's threads: what the
// ATen route does in several passes (codes to indices, index offsets, a gather).
at::Tensor lookup_tables(const at::Tensor& codes, int bits, int64_t rows, int64_t cols,
                         const at::Tensor& tables, int64_t group, int64_t rows_per_table) {
  const at::Tensor bytes = codes.contiguous().view(at::kByte);
  const at::Tensor table = tables.contiguous();
  const int64_t table_size = table.size(-1), groups = cols / group;
  at::Tensor out = at::empty({rows, cols}, table.options());
  const uint8_t* in = bytes.data_ptr<uint8_t>();
  const int64_t row_bytes = bits == 8 ? cols : cols / 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "lookup", [&] {
    const scalar_t* values = table.data_ptr<scalar_t>();
    scalar_t* result = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const uint8_t* code = in + r * row_bytes;
        scalar_t* dst = result + r * cols;
        const scalar_t* row_tables = values + (r / rows_per_table) * groups * table_size;
        for (int64_t g = 0; g < groups; ++g) {
          const scalar_t* t = row_tables + g * table_size;
          if (bits == 8) {
            for (int64_t c = 0; c < group; ++c) dst[c] = t[code[c]];
            code += group;
          } else {
            for (int64_t c = 0; c < group; c += 2, ++code) {
              dst[c] = t[*code & 15];
              dst[c + 1] = t[*code >> 4];
            }
          }
          dst += group;
        }
      }
    });
  });
  return out;
}

// FP8 (transformers integrations/finegrained_fp8.py `_dequantize_fp8_weight`; DeepSeek-V3's
// `weight_scale_inv` multiplies, despite its name): W = fp8 x the scale of its block, row or
// tensor. In float32, in place, then rounded once to `dtype`.
at::Tensor dequantize_fp8(const QuantizedWeight& weight, const at::Tensor& packed,
                          const at::Tensor& scale, at::ScalarType dtype) {
  // DeepSeek-V4 stores `.scale` as F8_E8M0: 2^(e - 127), never the byte itself.
  const at::Tensor scale32 = scale.scalar_type() == at::kFloat8_e8m0fnu
                                 ? detail::e8m0_to_float(scale)
                                 : scale.to(at::kFloat);
  const bool blocked = !weight.block_size.empty();
  // A 0-dim weight (one scale: check_layout allows nothing else) counts as one row.
  const int64_t out = packed.dim() ? packed.size(0) : 1;
  const int64_t in = blocked ? packed.size(1) : 0;
  const int64_t rows = blocked ? weight.block_size[0] : 0,
                cols = blocked ? weight.block_size[1] : 0;
  const bool whole_blocks = blocked && out % rows == 0 && in % cols == 0;
  if (packed.device().is_cpu() && (!blocked || whole_blocks)) {
    // On the CPU, one gather: every scale's 256 possible products (computed in float32 and
    // converted once, the same values as multiplying) indexed by scale x 256 + code. Converting F8
    // element by element is the slow part of the direct route there.
    const at::Tensor codes256 = at::arange(256, packed.options().dtype(at::kByte));
    const at::Tensor table =
        (scale32.reshape({-1, 1}) * detail::float8_to_float(codes256.view(packed.scalar_type())))
            .to(dtype)
            .flatten();
    if (whole_blocks) return lookup_tables(packed, 8, out, in, table.view({-1, 256}), cols, rows);
    at::Tensor index = packed.contiguous().view(at::kByte).to(at::kInt);
    const auto options = index.options();
    if (scale32.numel() != 1) {
      index.view({out, -1}).add_((at::arange(out, options) * 256).view({out, 1}));
    }
    return table.index_select(0, index.flatten()).view(packed.sizes());
  }
  at::Tensor values = detail::float8_to_float(packed);
  if (!blocked) {
    // One scale, or one per output channel (the first dimension).
    std::vector<int64_t> scale_sizes(packed.dim(), 1);
    if (scale32.numel() != 1) scale_sizes[0] = out;
    values.mul_(scale32.reshape(scale_sizes));
  } else if (whole_blocks) {
    values.view({out / rows, rows, in / cols, cols})
        .mul_(scale32.view({out / rows, 1, in / cols, 1}));
  } else {
    // Partial blocks at the edges: expand the scales to every value.
    values.mul_(
        scale32.repeat_interleave(rows, 0).narrow(0, 0, out).repeat_interleave(cols, 1).narrow(1, 0,
                                                                                               in));
  }
  return values.to(dtype);
}

// (q - z) x s with q: [out, in] and z, s: [out, groups], where input column i belongs to group
// `group_of[i]` (nullopt: i / group_size). In float32 (q - z is exact there), in place, then
// rounded to `dtype`.
at::Tensor grouped_affine(const at::Tensor& q, const at::Tensor& zeros, const at::Tensor& scales,
                          const std::optional<at::Tensor>& group_of, int64_t group_size, int bits,
                          at::ScalarType dtype) {
  const int64_t out = q.size(0), in = q.size(1), groups = scales.size(1);
  const at::Tensor scale32 = scales.to(at::kFloat);
  const at::Tensor zeros32 = zeros.to(at::kFloat);
  if (!group_of && in == groups * group_size) {
    at::Tensor values;
    const bool small = bits < 8 && q.scalar_type() == at::kByte && q.is_contiguous() &&
                       zeros.max().item<int64_t>() < 128;
    if (small && scales.scalar_type() == dtype && (dtype == at::kBFloat16 || dtype == at::kHalf)) {
      // Scales stored in the output dtype (BF16 or F16): q - z (|q - z| < 128, exact there) times
      // a scale of 8 or 11 significant bits is exact in float32, so the output dtype's multiply
      // (ATen's is float32 and one round to nearest even) rounds it once, exactly as the float32
      // route does; it is computed there, at half the memory traffic.
      values = at::sub(q.view(at::kChar).view({out, groups, group_size}),
                       zeros.to(at::kChar).unsqueeze(-1))
                   .to(dtype);
      values.mul_(scales.unsqueeze(-1));
      return values.view({out, in});
    }
    if (small) {
      // Codes and zero points of up to 7 bits: q - z fits int8, so it is taken in one byte-wide
      // pass; the multiply reads those bytes and writes `dtype` straight away (ATen computes in
      // the common dtype, float32, and rounds once to the output's: the float32 route's bits,
      // without its float32 tensor).
      const at::Tensor centered = at::sub(q.view(at::kChar).view({out, groups, group_size}),
                                          zeros.to(at::kChar).unsqueeze(-1));
      at::Tensor result = at::empty({out, groups, group_size}, q.options().dtype(dtype));
      at::mul_out(result, centered, scale32.unsqueeze(-1));
      return result.view({out, in});
    } else {
      values = q.to(at::kFloat).contiguous().view({out, groups, group_size});
      values.sub_(zeros32.unsqueeze(-1)).mul_(scale32.unsqueeze(-1));
    }
    return values.view({out, in}).to(dtype);
  }
  at::Tensor values = q.to(at::kFloat).contiguous();
  const at::Tensor index =
      group_of ? group_of->to(at::kLong)
               : at::div(at::arange(in, q.options().dtype(at::kLong)), group_size, "floor");
  values.sub_(zeros32.index_select(1, index)).mul_(scale32.index_select(1, index));
  return values.to(dtype);
}

// GPTQ (gptqmodel nn_modules/qlinear/__init__.py `dequantize_weight`): qweight [in*bits/32, out]
// packed along the input dimension, LSB first; qzeros [groups, out*bits/32] packed along the
// output dimension; W[o, i] = scales[g_idx[i], o] x (q[i, o] - z[g_idx[i], o]). The original
// format stores z - 1 (utils/model.py `convert_gptq_v1_to_v2_format_module` adds the 1 back).
at::Tensor dequantize_gptq(const QuantizedWeight& weight,
                           const std::map<std::string, at::Tensor>& parts, at::ScalarType dtype,
                           std::string_view source) {
  const int64_t out = weight.shape[0], in = weight.shape[1];
  // Unpacking the transposed words gives [out, in] directly, the dense layout.
  const at::Tensor q = detail::unpack_bits(parts.at("packed").t().contiguous(), weight.bits, in);
  at::Tensor zeros = detail::unpack_bits(parts.at("zero_point"), weight.bits, out).to(at::kInt);
  if (weight.zero_point_minus_one) zeros = zeros + 1;
  const at::Tensor scales = parts.at("scale").t();
  std::optional<at::Tensor> group_of;
  const auto g_idx = parts.find("g_idx");
  if (g_idx != parts.end()) {
    const at::Tensor groups = g_idx->second.to(at::kLong);
    const int64_t count = scales.size(1);
    TS_CHECK(groups.numel() == 0 ||
                 (groups.min().item<int64_t>() >= 0 && groups.max().item<int64_t>() < count),
             source, "quantized weight '", weight.name, "' (gptq): g_idx '",
             weight.tensors.at("g_idx"), "' holds groups outside [0, ", count, ")");
    // The default order needs no gather: only act-order (desc_act) g_idx does.
    const at::Tensor plain = at::div(at::arange(in, groups.options()), weight.group_size, "floor");
    if (!at::equal(groups, plain)) group_of = groups;
  }
  return grouped_affine(q, zeros.t(), scales, group_of, weight.group_size, weight.bits, dtype);
}

// AWQ GEMM (AutoAWQ awq/utils/packing_utils.py `dequantize_gemm`, `AWQ_ORDER`): qweight
// [in, out/8], word j holding output columns 8j + AWQ_ORDER[k] in nibble k; qzeros the same over
// [groups, out/8]; W = (q - z) x s, no zero-point offset.
at::Tensor unpack_awq(const at::Tensor& packed, int64_t columns) {
  // Column c of a run of 8 sits in nibble AWQ_REVERSE_ORDER[c] = [0, 4, 1, 5, 2, 6, 3, 7][c].
  const at::Tensor nibbles = detail::unpack_bits(packed, 4, columns);
  const at::Tensor reverse =
      at::tensor(std::vector<int64_t>{0, 4, 1, 5, 2, 6, 3, 7}).to(packed.device());
  return nibbles.view({packed.size(0), columns / 8, 8})
      .index_select(-1, reverse)
      .view({packed.size(0), columns});
}

at::Tensor dequantize_awq(const QuantizedWeight& weight,
                          const std::map<std::string, at::Tensor>& parts, at::ScalarType dtype) {
  const int64_t out = weight.shape[0];
  const at::Tensor q = unpack_awq(parts.at("packed"), out);          // [in, out]
  const at::Tensor zeros = unpack_awq(parts.at("zero_point"), out);  // [groups, out]
  // The transposed values are made contiguous once, as [out, in], by grouped_affine's float copy.
  return grouped_affine(q.t(), zeros.t(), parts.at("scale").t(), std::nullopt, weight.group_size,
                        weight.bits, dtype);
}

// compressed-tensors pack-quantized (compressors/pack_quantized/base.py, helpers.py
// `unpack_from_int32`): signed values stored + 2^(bits-1), packed along the input dimension;
// an asymmetric zero point packed the same way along the output dimension; W = (q - z) x s
// (quantization/lifecycle/forward_helpers.py `_dequantize`).
at::Tensor dequantize_pack_quantized(const QuantizedWeight& weight,
                                     const std::map<std::string, at::Tensor>& parts,
                                     at::ScalarType dtype) {
  const int64_t out = weight.shape[0], in = weight.shape[1];
  const int64_t offset = int64_t{1} << (weight.bits - 1);
  // (q - offset) - (z - offset) = q - z: the stored (offset) values are used as they are, so the
  // unpacked codes go to grouped_affine without a pass of their own; a symmetric weight's zero
  // point is 0, stored as `offset`.
  const at::Tensor& scale = parts.at("scale");
  const int64_t groups = weight.group_size > 0 ? ceil_div(in, weight.group_size) : 1;
  const auto zero_point = parts.find("zero_point");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (weight.bits == 4 && parts.at("packed").device().is_cpu() && weight.group_size > 0 &&
      weight.group_size % 2 == 0 && in % weight.group_size == 0 && in % 8 == 0 &&
      scale.numel() == out * groups) {
    // Each group's 16 possible values, (code - z) x s in float32 rounded once to `dtype` (the
    // bits of the route below), then one lookup per value: the codes' little-endian bytes hold
    // value 2k in the low nibble, as unpack_bits reads them.
    const at::Tensor zeros32 =
        zero_point != parts.end()
            ? detail::unpack_bits(zero_point->second.t().contiguous(), 4, out).t().to(at::kFloat)
            : at::full({out, groups}, double(offset), scale.options().dtype(at::kFloat));
    const at::Tensor codes = at::arange(16, scale.options().dtype(at::kFloat));
    const at::Tensor tables = ((codes - zeros32.reshape({out, groups, 1})) *
                               scale.to(at::kFloat).reshape({out, groups, 1}))
                                  .to(dtype);
    return lookup_tables(parts.at("packed"), 4, out, in, tables.reshape({out * groups, 16}),
                         weight.group_size, 1);
  }
#endif
  const at::Tensor q = detail::unpack_bits(parts.at("packed"), weight.bits, in);
  at::Tensor zeros = at::full({out, groups}, offset, q.options().dtype(at::kInt));
  if (zero_point != parts.end()) {
    zeros = detail::unpack_bits(zero_point->second.t().contiguous(), weight.bits, out).t();
  }
  const at::Tensor scales =
      scale.numel() == 1 ? scale.reshape({1, 1}).expand({out, 1}) : scale.reshape({out, groups});
  return grouped_affine(q, zeros, scales, std::nullopt,
                        weight.group_size > 0 ? weight.group_size : in, weight.bits, dtype);
}

// FP4 with an F8_E4M3 scale per group of 16 and one global factor. ModelOpt NVFP4
// (qtensor/nvfp4_tensor.py `dequantize`): W = fp4 x (scale x weight_scale_2). compressed-tensors
// nvfp4-pack-quantized (compressors/nvfp4/base.py `decompress`, forward_helpers.py `_dequantize`):
// W = fp4 x (scale / global_scale).
at::Tensor dequantize_nvfp4(const QuantizedWeight& weight,
                            const std::map<std::string, at::Tensor>& parts, at::ScalarType dtype,
                            bool divide_by_global) {
  const int64_t out = weight.shape[0], in = weight.shape[1];
  const at::Tensor values = detail::fp4_values(parts.at("packed"));  // [out, in]
  const at::Tensor global = parts.at("global_scale").to(at::kFloat).reshape({});
  at::Tensor scale = parts.at("scale").to(at::kFloat);
  scale = divide_by_global ? scale / global : scale * global;
  const int64_t groups = in / weight.group_size;
  return scale_and_round(values.view({out, groups, weight.group_size}), scale.unsqueeze(-1), dtype,
                         {out, in});
}

// MXFP4 (transformers integrations/mxfp4.py `_convert_moe_packed_tensors`): blocks [..., G, 16]
// hold 32 FP4 values each, scales [..., G] are E8M0 exponents: W = fp4 x 2^(scale - 127). The
// result keeps the stored order [..., G * 32] (transformers then transposes for its module).
at::Tensor dequantize_mxfp4(const QuantizedWeight& weight,
                            const std::map<std::string, at::Tensor>& parts, at::ScalarType dtype) {
  const at::Tensor values = detail::fp4_values(parts.at("packed"));  // [..., G, 32]
  // E8M0 is the torch dtype Float8_e8m0fnu: 2^(e - 127), and 255 is NaN, as the OCP MX spec says.
  const at::Tensor scale = detail::e8m0_to_float(parts.at("scale")).unsqueeze(-1);
  return scale_and_round(values, scale, dtype, weight.shape);
}

// The MX layouts of compressed-tensors (compressors/mxfp4/base.py, mxfp6/base.py, mxfp8/base.py;
// scales through mx_utils.py `decompress_mx_scale`, 2 ** (e - 127)): W = value x scale of its
// 32 values along the row. Every such product is exact in float32 and in BF16 (a power of two
// times a value of at most 4 significant bits), so the result equals theirs bit for bit.
// DeepSeek-V4's routed experts (model.py `Linear`, float4_e2m1fn_x2 [out, in/2] with an
// F8_E8M0 scale [out, in/32]) are the FP4 layout.
at::Tensor dequantize_mx(const QuantizedWeight& weight,
                         const std::map<std::string, at::Tensor>& parts, at::ScalarType dtype) {
  const at::Tensor& packed = parts.at("packed");
  // BF16 and F32 have float32's exponent range, so every scale 2^(e - 127) and every product is
  // exact there: the values are made in `dtype` directly. F16 (and F64, for one rounding from
  // the exact float32 product) go through float32.
  const at::ScalarType work = dtype == at::kBFloat16 ? dtype : at::kFloat;
  const at::Tensor values = detail::element_values(weight.scheme, packed, work);
  std::vector<int64_t> grouped(weight.shape.begin(), weight.shape.end() - 1);
  grouped.push_back(weight.shape.back() / 32);
  const at::Tensor scale =
      detail::e8m0_to_float(parts.at("scale")).to(work).view(grouped).unsqueeze(-1);
  grouped.push_back(32);
  return scale_and_round(values.view(grouped), scale, dtype, weight.shape);
}

}  // namespace

at::Tensor dequantize(const QuantizedWeight& weight, const std::map<std::string, at::Tensor>& parts,
                      at::ScalarType dtype, std::string_view source) {
  TS_CHECK(at::isFloatingType(dtype) && !at::isFloat8Type(dtype), source, "quantized weight '",
           weight.name, "': dequantizing to ", dtype,
           " is not supported, expected a floating dtype (BF16, F16, F32, F64)");
  detail::PartInfos infos;
  for (const auto& [role, tensor] : parts) {
    TS_CHECK(tensor.defined(), source, "quantized weight '", weight.name, "': part '", role,
             "' is an undefined tensor");
    infos.emplace(role, detail::PartInfo{tensor.scalar_type(), tensor.sizes().vec()});
  }
  detail::check_layout(weight, infos, source);
  if (detail::is_expert_stack(weight)) {
    // One expert at a time, each its 2-D layout; stacked back on dim 0.
    QuantizedWeight slice = weight;
    slice.shape = {weight.shape[1], weight.shape[2]};
    std::vector<at::Tensor> experts;
    for (int64_t e = 0; e < weight.shape[0]; ++e) {
      std::map<std::string, at::Tensor> expert;
      for (const auto& [role, tensor] : parts) {
        expert.emplace(role, role == "shape" ? tensor.narrow(0, 1, 2) : tensor.select(0, e));
      }
      experts.push_back(dequantize(slice, expert, dtype, source));
    }
    if (experts.empty()) {
      return at::empty(weight.shape, parts.at("scale").options().dtype(dtype));
    }
    return at::stack(experts);
  }
  switch (weight.scheme) {
    case Scheme::kFp8:
      return dequantize_fp8(weight, parts.at("packed"), parts.at("scale"), dtype);
    case Scheme::kGptq:
      return dequantize_gptq(weight, parts, dtype, source);
    case Scheme::kAwq:
      return dequantize_awq(weight, parts, dtype);
    case Scheme::kPackQuantized:
      return dequantize_pack_quantized(weight, parts, dtype);
    case Scheme::kNvfp4PackQuantized:
      return dequantize_nvfp4(weight, parts, dtype, /*divide_by_global=*/true);
    case Scheme::kNvfp4:
      return dequantize_nvfp4(weight, parts, dtype, /*divide_by_global=*/false);
    case Scheme::kMxfp4:
      return dequantize_mxfp4(weight, parts, dtype);
    case Scheme::kMxfp4PackQuantized:
    case Scheme::kMxfp6PackQuantized:
    case Scheme::kMxfp8Quantized:
      return dequantize_mx(weight, parts, dtype);
  }
  TS_FAIL(source, "quantized weight '", weight.name, "': unknown scheme");
}

namespace {

bool is_microscaled(Scheme scheme) {
  switch (scheme) {
    case Scheme::kNvfp4PackQuantized:
    case Scheme::kNvfp4:
    case Scheme::kMxfp4:
    case Scheme::kMxfp4PackQuantized:
    case Scheme::kMxfp6PackQuantized:
    case Scheme::kMxfp8Quantized:
      return true;
    default:
      return false;
  }
}

void accumulate_error(const QuantizedWeight& weight, const std::map<std::string, at::Tensor>& parts,
                      const at::Tensor& reference, std::string_view source,
                      QuantizationError& error, double& squared, double& energy) {
  const at::Tensor dense = dequantize(weight, parts, at::kDouble, source);
  const at::Tensor ref = reference.to(at::kDouble).reshape(dense.sizes());
  at::Tensor difference = (dense - ref).abs();
  difference.masked_fill_(dense.isnan() & ref.isnan(), 0);
  difference.masked_fill_(dense.isnan() ^ ref.isnan(), INFINITY);
  difference.masked_fill_(dense.eq(ref), 0);  // equal infinities
  if (difference.numel()) error.max_abs = std::max(error.max_abs, difference.max().item<double>());
  squared += difference.square().sum().item<double>();
  energy += ref.square().sum().item<double>();
  if (!is_microscaled(weight.scheme)) return;
  const at::Tensor& packed = parts.at("packed");
  const at::Tensor values =
      detail::element_values(weight.scheme, packed.cpu(), at::kFloat).reshape(weight.shape);
  const double largest = detail::largest_element(weight.scheme, packed.scalar_type());
  const int64_t group = weight.group_size > 0 ? weight.group_size : 32;
  // Clipped: the element sits at the format's largest magnitude and the reference lies beyond.
  const at::Tensor clipped =
      values.abs().eq(largest).to(dense.device()) & ref.abs().gt(dense.abs());
  const at::Tensor per_block = clipped.reshape({-1, group});
  error.blocks += per_block.size(0);
  error.saturated_blocks += per_block.any(1).sum().item<int64_t>();
}

}  // namespace

QuantizationError quantization_error(const QuantizedWeight& weight,
                                     const std::map<std::string, at::Tensor>& parts,
                                     const at::Tensor& reference, std::string_view source) {
  TS_CHECK(reference.sizes().vec() == weight.shape, source, "quantized weight '", weight.name,
           "': the reference is ", detail::sizes_string(reference.sizes()), ", expected ",
           detail::sizes_string(weight.shape));
  TS_CHECK(at::isFloatingType(reference.scalar_type()), source, "quantized weight '", weight.name,
           "': the reference is ", reference.scalar_type(), ", expected a floating dtype");
  QuantizationError error;
  double squared = 0, energy = 0;
  if (detail::is_expert_stack(weight)) {
    // One expert at a time (dequantize's own split), so memory is one expert's float64 copies.
    QuantizedWeight slice = weight;
    slice.shape = {weight.shape[1], weight.shape[2]};
    for (int64_t e = 0; e < weight.shape[0]; ++e) {
      std::map<std::string, at::Tensor> expert;
      for (const auto& [role, tensor] : parts)
        expert.emplace(role, role == "shape" ? tensor.narrow(0, 1, 2) : tensor.select(0, e));
      accumulate_error(slice, expert, reference.select(0, e), source, error, squared, energy);
    }
  } else {
    accumulate_error(weight, parts, reference, source, error, squared, energy);
  }
  error.nmse = energy > 0 ? squared / energy : (squared > 0 ? INFINITY : 0);
  return error;
}

}  // namespace torch::safetensors::quant
