// The safetensors dtypes: one table from which every fact about a dtype is expanded, in the style
// of c10/core/ScalarType.h. Nothing else in the library spells a dtype fact.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string_view>
#include <vector>

#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include "torch_safetensors/export.h"

namespace torch::safetensors {

// One row per dtype of the spec:
//   _(spec name, torch type, values per group, bytes per group, torch release that added the type)
// A group is the smallest run of values that fills whole bytes: 1 value for the byte-sized and
// larger dtypes, 2 values in 1 byte for F4, 4 values in 3 bytes for F6. The torch type is what a
// tensor loads as: F4 as Float4_e2m1fn_x2 (one element per byte, two values each, as the reference
// does); F6_E2M3/F6_E3M2 have no torch type and load as their packed bytes (Byte). The release
// (major * 100 + minor) is when LibTorch gained that c10::ScalarType; the most recent one is this
// library's minimum LibTorch.
//
// Rows are in the reference implementation's enum order: `save` sorts tensors by it (descending),
// then by name, and so must we to write byte-identical files.
#define TS_FORALL_DTYPES(_)                  \
  _(BOOL, Bool, 1, 1, 100)                   \
  _(F4, Float4_e2m1fn_x2, 2, 1, 208)         \
  _(F6_E2M3, Byte, 4, 3, 100)                \
  _(F6_E3M2, Byte, 4, 3, 100)                \
  _(U8, Byte, 1, 1, 100)                     \
  _(I8, Char, 1, 1, 100)                     \
  _(F8_E5M2, Float8_e5m2, 1, 1, 201)         \
  _(F8_E4M3, Float8_e4m3fn, 1, 1, 201)       \
  _(F8_E8M0, Float8_e8m0fnu, 1, 1, 207)      \
  _(F8_E4M3FNUZ, Float8_e4m3fnuz, 1, 1, 202) \
  _(F8_E5M2FNUZ, Float8_e5m2fnuz, 1, 1, 202) \
  _(I16, Short, 1, 2, 100)                   \
  _(U16, UInt16, 1, 2, 203)                  \
  _(F16, Half, 1, 2, 100)                    \
  _(BF16, BFloat16, 1, 2, 100)               \
  _(I32, Int, 1, 4, 100)                     \
  _(U32, UInt32, 1, 4, 203)                  \
  _(F32, Float, 1, 4, 100)                   \
  _(C64, ComplexFloat, 1, 8, 100)            \
  _(F64, Double, 1, 8, 100)                  \
  _(I64, Long, 1, 8, 100)                    \
  _(U64, UInt64, 1, 8, 203)

enum class Dtype : uint8_t {
#define TS_DTYPE_ENUM(name, torch, values, bytes, release) name,
  TS_FORALL_DTYPES(TS_DTYPE_ENUM)
#undef TS_DTYPE_ENUM
};

#define TS_DTYPE_COUNT(name, torch, values, bytes, release) +1
inline constexpr int kNumDtypes = 0 TS_FORALL_DTYPES(TS_DTYPE_COUNT);
#undef TS_DTYPE_COUNT

// The spec's name ("F32", "F8_E4M3", ...), exactly as written in headers.
TS_API std::string_view dtype_name(Dtype dtype);

// Parses a spec name; case-sensitive, like the reference. nullopt if unknown.
TS_API std::optional<Dtype> parse_dtype(std::string_view name);

// Logical values per group and bytes per group (see the table).
TS_API int64_t values_per_group(Dtype dtype);
TS_API int64_t bytes_per_group(Dtype dtype);

// Size of one value in bits: 4 (F4), 6 (F6_*), 8, 16, 32 or 64.
TS_API int dtype_bits(Dtype dtype);

// The torch dtype a tensor of this spec dtype loads as.
TS_API c10::ScalarType to_scalar_type(Dtype dtype);

// The one alignment rule of loading: a tensor of torch type `type` whose bytes start at `address`
// can be viewed in place only when `address` is a multiple of its element size (typed access needs
// it; the format does not guarantee it). Otherwise a load copies that tensor into aligned memory.
// A mapping starts on a page boundary, so a file offset answers as its mapped address does.
TS_API bool can_view_at(uint64_t address, c10::ScalarType type);

// The spec dtype a torch tensor of this type is saved as; nullopt for torch dtypes the spec lacks
// (UInt1..7, Bits*, quantized, ComplexHalf, ComplexDouble, ...). Byte saves as U8: the F6 dtypes
// are written only from raw bytes (RawTensor).
TS_API std::optional<Dtype> from_scalar_type(c10::ScalarType type);

// The sizes a stored tensor loads as, given its logical (header) shape and byte count: the
// logical shape, with a packed dtype's last dimension counted in torch elements instead of values
// (F4 [.., 2n] -> [.., n] Float4_e2m1fn_x2; F6 [.., 4n] -> [.., 3n] bytes). A packed tensor whose
// last dimension does not hold whole groups loads 1-D, one element per stored byte.
TS_API std::vector<int64_t> stored_sizes(Dtype dtype, c10::IntArrayRef shape, uint64_t nbytes);

// The logical (header) shape of a torch tensor of `sizes` saved as `dtype`: the inverse of
// stored_sizes. nullopt when there is none: a 0-d tensor of a packed dtype (no last dimension to
// hold the group) or a last dimension whose value count overflows int64.
TS_API std::optional<std::vector<int64_t>> logical_shape(Dtype dtype, c10::IntArrayRef sizes);

// "F32", "BF16", ...: the spec's name, so that `std::cout << info.dtype` prints what headers say.
TS_API std::ostream& operator<<(std::ostream& out, Dtype dtype);

// The dtype-on-load rule, the one place it is decided (LoadOptions::dtype, `convert --dtype`):
// whether a tensor stored as `stored` is cast to a requested dtype. The floating types F64, F32,
// F16 and BF16 are; the FP8 types only with `include_fp8` (they are usually quantized weights
// whose scale lives in another tensor, so a plain cast would give wrong values); everything else
// keeps its dtype: integers (position ids, GPTQ/AWQ packed words), bools, packed sub-byte types
// and F8_E8M0 block scales. This is what `module.to(dtype)` and transformers' `torch_dtype` do.
TS_API bool cast_applies(c10::ScalarType stored, bool include_fp8 = false);
// Whether a dtype may be requested for such a cast: F64, F32, F16 or BF16.
TS_API bool is_cast_target(c10::ScalarType requested);

}  // namespace torch::safetensors
