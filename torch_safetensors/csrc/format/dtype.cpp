#include "torch_safetensors/dtype.h"

#include <array>

#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

// Older LibTorch releases lack some dtypes; the GPU machines carry torch 2.11.
#if defined(TORCH_VERSION_MAJOR) && \
    (TORCH_VERSION_MAJOR < 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR < 8))
#define TS_HAVE_FLOAT4 0
#else
#define TS_HAVE_FLOAT4 1
#endif
#if defined(TORCH_VERSION_MAJOR) && \
    (TORCH_VERSION_MAJOR < 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR < 7))
#define TS_HAVE_FLOAT8_E8M0 0
#else
#define TS_HAVE_FLOAT8_E8M0 1
#endif

namespace torch::safetensors {
namespace {

struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  int bits;
  std::optional<c10::ScalarType> scalar_type;
};

using c10::ScalarType;
constexpr std::optional<ScalarType> kNoTorchType = std::nullopt;

// One row per spec dtype, in enum order.
const std::array<DtypeEntry, kNumDtypes> kTable = {{
    {Dtype::BOOL, "BOOL", 8, ScalarType::Bool},
#if TS_HAVE_FLOAT4
    {Dtype::F4, "F4", 4, ScalarType::Float4_e2m1fn_x2},
#else
    {Dtype::F4, "F4", 4, kNoTorchType},
#endif
    {Dtype::F6_E2M3, "F6_E2M3", 6, ScalarType::Byte},  // raw packed bytes
    {Dtype::F6_E3M2, "F6_E3M2", 6, ScalarType::Byte},  // raw packed bytes
    {Dtype::U8, "U8", 8, ScalarType::Byte},
    {Dtype::I8, "I8", 8, ScalarType::Char},
    {Dtype::F8_E5M2, "F8_E5M2", 8, ScalarType::Float8_e5m2},
    {Dtype::F8_E4M3, "F8_E4M3", 8, ScalarType::Float8_e4m3fn},
#if TS_HAVE_FLOAT8_E8M0
    {Dtype::F8_E8M0, "F8_E8M0", 8, ScalarType::Float8_e8m0fnu},
#else
    {Dtype::F8_E8M0, "F8_E8M0", 8, kNoTorchType},
#endif
    {Dtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8, ScalarType::Float8_e4m3fnuz},
    {Dtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8, ScalarType::Float8_e5m2fnuz},
    {Dtype::I16, "I16", 16, ScalarType::Short},
    {Dtype::U16, "U16", 16, ScalarType::UInt16},
    {Dtype::F16, "F16", 16, ScalarType::Half},
    {Dtype::BF16, "BF16", 16, ScalarType::BFloat16},
    {Dtype::I32, "I32", 32, ScalarType::Int},
    {Dtype::U32, "U32", 32, ScalarType::UInt32},
    {Dtype::F32, "F32", 32, ScalarType::Float},
    {Dtype::C64, "C64", 64, ScalarType::ComplexFloat},
    {Dtype::F64, "F64", 64, ScalarType::Double},
    {Dtype::I64, "I64", 64, ScalarType::Long},
    {Dtype::U64, "U64", 64, ScalarType::UInt64},
}};

const DtypeEntry& entry(Dtype dtype) { return kTable[static_cast<size_t>(dtype)]; }

}  // namespace

std::string_view dtype_name(Dtype dtype) { return entry(dtype).name; }

int dtype_bits(Dtype dtype) { return entry(dtype).bits; }

std::optional<Dtype> parse_dtype(std::string_view name) {
  // Bytewise rather than string_view ==: names are 2 to 11 bytes, and a memcmp call per table
  // entry was a measurable share of parsing 100,000-tensor headers.
  for (const auto& e : kTable) {
    if (e.name.size() != name.size()) continue;
    size_t i = 0;
    while (i < name.size() && e.name[i] == name[i]) ++i;
    if (i == name.size()) return e.dtype;
  }
  return std::nullopt;
}

std::optional<c10::ScalarType> to_scalar_type(Dtype dtype) { return entry(dtype).scalar_type; }

std::optional<Dtype> from_scalar_type(c10::ScalarType type) {
  if (type == ScalarType::Byte) return Dtype::U8;  // not F6: those are only written from RawTensor
  for (const auto& e : kTable) {
    if (e.scalar_type == type) return e.dtype;
  }
  return std::nullopt;
}

}  // namespace torch::safetensors
