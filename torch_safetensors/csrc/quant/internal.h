// What the quant/ sources share: bit packing, FP4 E2M1 codes, the layout checks. ATen ops only,
// so that everything runs on the tensors' device.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include "torch_safetensors/quant.h"

namespace torch::safetensors::quant::detail {

// Values of `bits` bits (1..8) packed densely into int32 words along the last dimension, least
// significant bit first; a value may straddle two words (3 bits: value 10 of 32 uses bits 30-31
// of one word and bit 0 of the next). This is GPTQ's packing (gptqmodel/nn_modules/qlinear/
// __init__.py, `pack_original`: 2/4/8 bits per word, 3 bits in 32-value runs over 3 words) and
// compressed-tensors' (compressors/pack_quantized/helpers.py, `pack_to_int32`).
// unpack_bits: [..., words] int32 -> [..., count] integers (uint8 or int32) in [0, 2^bits).
at::Tensor unpack_bits(const at::Tensor& packed, int bits, int64_t count);
// pack_bits: [..., n] integers in [0, 2^bits) -> [..., ceil(n * bits / 32)] int32.
at::Tensor pack_bits(const at::Tensor& values, int bits);

// FP4 E2M1: code = sign << 3 | magnitude index into {0, 0.5, 1, 1.5, 2, 3, 4, 6}; two codes per
// byte, the first value in the low nibble (transformers integrations/mxfp4.py `FP4_VALUES`,
// ModelOpt qtensor/nvfp4_tensor.py `_unpack_tensor`, compressed-tensors nvfp4/helpers.py).
// fp4_values: [..., n] uint8 -> [..., 2n] of `dtype` (every E2M1 value is exact in each floating
// dtype), one table lookup per byte (both of its values at once).
at::Tensor fp4_values(const at::Tensor& packed, at::ScalarType dtype = at::kFloat);
// fp4_pack: float [..., 2n] -> uint8 [..., n], each value rounded to the nearest E2M1 value
// (ties to the even code, saturating at +-6).
at::Tensor fp4_pack(const at::Tensor& values);

// FP6 E2M3 (compressed-tensors mxfp6/helpers.py `unpack_fp6_from_uint8`): four 6-bit codes in
// three bytes, read as one little-endian 24-bit word, code k in bits 6k..6k+5; bit 5 of a code is
// the sign, its low 5 bits index the magnitudes {m/8 : m < 8} then {(1 + m/8) 2^e : e < 3, m < 8}.
// fp6_values: [..., 3n] uint8 -> [..., 4n] float32.
at::Tensor fp6_values(const at::Tensor& packed);
// fp6_pack: float [..., 4n] -> uint8 [..., 3n], each value rounded to the nearest E2M3 value
// (ties to the even code, saturating at +-7.5: compressed-tensors' fp6_utils.py `cast_to_fp6`,
// then `pack_fp6_to_uint8`).
at::Tensor fp6_pack(const at::Tensor& values);

// The element values of a microscaled scheme (MX: mxfp4, mxfp4/6 pack-quantized, mxfp8; NV:
// nvfp4, nvfp4 pack-quantized) before their block's scale, in `dtype` (exact in each floating
// dtype), in the packing's order (FP4 two a byte, FP6 four in three bytes, FP8 one a byte); and
// the element format's largest magnitude (OCP MX spec: E2M1 6, E2M3 7.5, E4M3 448, E5M2 57344),
// what quantizing scales blocks to and what saturation is measured against.
at::Tensor element_values(Scheme scheme, const at::Tensor& packed, at::ScalarType dtype);
double largest_element(Scheme scheme, at::ScalarType packed_dtype);

// E8M0 scales (U8 or F8_E8M0 bytes) as float32 2^(e - 127); 255 is NaN.
at::Tensor e8m0_to_float(const at::Tensor& scale);

// F8 values as float32, exactly (NaN included). On the CPU through a 256-entry table, which is
// faster there than ATen's element-wise conversion.
at::Tensor float8_to_float(const at::Tensor& values);
// The same in `dtype` (exact for BF16, F16, F32 and F64: F8 values fit each).
at::Tensor float8_to(const at::Tensor& values, at::ScalarType dtype);

// Dtype and sizes of a stored part, from a header or a tensor.
struct PartInfo {
  c10::ScalarType dtype;
  std::vector<int64_t> sizes;
};
using PartInfos = std::map<std::string, PartInfo>;

// Checks that `parts` (role -> dtype and sizes) form `weight`: every required role present,
// dtypes and sizes as the scheme stores them. Throws naming `source`, the weight, the part's
// stored name, and what was expected versus found.
// A 3-D [experts, out, in] stack is each expert's 2-D layout with a leading experts dimension on
// every part (GPTQ, AWQ and pack_quantized; the MX schemes take leading dimensions directly).
void check_layout(const QuantizedWeight& weight, const PartInfos& parts, std::string_view source);
bool is_expert_stack(const QuantizedWeight& weight);

// The roles a scheme requires, then those it may have.
const std::vector<std::string>& required_roles(Scheme scheme);
const std::vector<std::string>& optional_roles(Scheme scheme);
// The documented `packing` value of a scheme in the metadata convention.
std::string_view packing_name(Scheme scheme);

std::string sizes_string(c10::IntArrayRef sizes);
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The largest dimension of a quantized weight or of one of its parts: far beyond any model, and
// small enough that the layout arithmetic (a dimension x 32 bits, x 8 values a word) cannot
// overflow. Header shapes may hold larger ones beside a 0 (no elements); they are refused here.
inline constexpr int64_t kMaxDimension = int64_t{1} << 48;
// Throws naming `source` and `what` unless every size is in [0, kMaxDimension].
void check_dimensions(c10::IntArrayRef sizes, std::string_view source, std::string_view what);
// The element count, saturating at INT64_MAX instead of overflowing.
int64_t saturating_numel(c10::IntArrayRef sizes);

}  // namespace torch::safetensors::quant::detail
