// Tensors of every dtype with arbitrary bit patterns, and bit-exact comparison: shared by the
// tests that round-trip every dtype (header-only, as only some tests need ATen here).
#pragma once

#include <vector>

#include <ATen/ATen.h>

namespace ts_test {

// Every dtype torch can express that the format stores.
inline const std::vector<c10::ScalarType> kTorchDtypes = {
    at::kBool,
    at::kByte,
    at::kChar,
    at::kShort,
    at::kUInt16,
    at::kInt,
    at::kUInt32,
    at::kLong,
    at::kUInt64,
    at::kHalf,
    at::kBFloat16,
    at::kFloat,
    at::kDouble,
    at::kComplexFloat,
    at::kFloat8_e4m3fn,
    at::kFloat8_e5m2,
    at::kFloat8_e4m3fnuz,
    at::kFloat8_e5m2fnuz,
    at::kFloat8_e8m0fnu,
    at::kFloat4_e2m1fn_x2,
};

// Random bytes viewed as `dtype` (NaN patterns included): round trips must keep every bit.
inline at::Tensor random_bytes_as(c10::ScalarType dtype, at::IntArrayRef shape) {
  const int64_t numel = c10::multiply_integers(shape);
  const int64_t itemsize = int64_t(c10::elementSize(dtype));
  at::Tensor raw = at::randint(0, 256, {numel * itemsize}, at::kByte);
  if (dtype == at::kBool) raw = raw.remainder(2);
  return raw.view(dtype).reshape(shape);
}

inline at::Tensor as_bytes(const at::Tensor& t) {
  return t.cpu().contiguous().reshape({-1}).view(at::kByte);
}

inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         at::equal(as_bytes(a), as_bytes(b));
}

}  // namespace ts_test
