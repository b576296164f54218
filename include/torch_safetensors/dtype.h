// The safetensors dtypes and their mapping onto c10::ScalarType.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <c10/core/ScalarType.h>

namespace torch::safetensors {

// Every dtype of the safetensors spec. The declaration order is the reference implementation's:
// `save` sorts tensors by this order (descending), then by name, and so must we to write
// byte-identical files.
enum class Dtype : uint8_t {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  F8_E4M3FNUZ,
  F8_E5M2FNUZ,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};

inline constexpr int kNumDtypes = static_cast<int>(Dtype::U64) + 1;

// The spec's name ("F32", "F8_E4M3", ...), exactly as written in headers.
std::string_view dtype_name(Dtype dtype);

// Parses a spec name; case-sensitive, like the reference. nullopt if unknown.
std::optional<Dtype> parse_dtype(std::string_view name);

// Size of one element in bits: 4 (F4), 6 (F6_*), 8, 16, 32 or 64.
int dtype_bits(Dtype dtype);

// The torch dtype a tensor of this spec dtype loads as. F4 loads as Float4_e2m1fn_x2 (two values
// per element, like the reference); F6_E2M3/F6_E3M2 have no torch dtype and load as raw packed
// bytes (Byte). nullopt only when the linked torch lacks the dtype.
std::optional<c10::ScalarType> to_scalar_type(Dtype dtype);

// The spec dtype a torch dtype is saved as; nullopt for torch dtypes the spec lacks
// (UInt1..7, Bits*, quantized, ComplexHalf, ComplexDouble, ...).
std::optional<Dtype> from_scalar_type(c10::ScalarType type);

}  // namespace torch::safetensors
