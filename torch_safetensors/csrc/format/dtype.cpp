// Every dtype fact, expanded from the one table in dtype.h.
#include "torch_safetensors/dtype.h"

#include <array>
#include <ostream>

#include <torch/version.h>

namespace torch::safetensors {
namespace {

struct DtypeEntry {
  std::string_view name;
  c10::ScalarType scalar_type;
  int64_t values;  // per group
  int64_t bytes;   // per group
  int release;     // LibTorch release that added the torch type
};

constexpr std::array<DtypeEntry, kNumDtypes> kTable = {{
#define TS_DTYPE_ENTRY(name, torch, values, bytes, release) \
  {#name, c10::ScalarType::torch, values, bytes, release},
    TS_FORALL_DTYPES(TS_DTYPE_ENTRY)
#undef TS_DTYPE_ENTRY
}};

constexpr int newest_release() {
  int newest = 0;
  for (const auto& e : kTable) newest = e.release > newest ? e.release : newest;
  return newest;
}
// Naming a missing c10::ScalarType above fails first; this says why.
static_assert(TORCH_VERSION_MAJOR * 100 + TORCH_VERSION_MINOR >= newest_release(),
              "torch_safetensors needs a LibTorch with every safetensors dtype (2.8 or newer)");

const DtypeEntry& entry(Dtype dtype) { return kTable[static_cast<size_t>(dtype)]; }

bool packed(const DtypeEntry& e) { return e.values > 1; }

// Torch elements per group: a packed group of `bytes` bytes is that many one-byte elements.
int64_t elements_per_group(const DtypeEntry& e) { return packed(e) ? e.bytes : 1; }

// Whether the torch type only carries the bytes: its elements do not hold whole values (F6: 4
// values in 3 bytes), so a torch tensor of that type is not a tensor of this dtype.
bool bytes_only(const DtypeEntry& e) { return e.values % elements_per_group(e) != 0; }

}  // namespace

std::string_view dtype_name(Dtype dtype) { return entry(dtype).name; }

int64_t values_per_group(Dtype dtype) { return entry(dtype).values; }
int64_t bytes_per_group(Dtype dtype) { return entry(dtype).bytes; }

int dtype_bits(Dtype dtype) { return int(entry(dtype).bytes * 8 / entry(dtype).values); }

std::optional<Dtype> parse_dtype(std::string_view name) {
  // Bytewise rather than string_view ==: names are 2 to 11 bytes, and a memcmp call per table
  // entry was a measurable share of parsing 100,000-tensor headers.
  for (size_t d = 0; d < kTable.size(); ++d) {
    const std::string_view candidate = kTable[d].name;
    if (candidate.size() != name.size()) continue;
    size_t i = 0;
    while (i < name.size() && candidate[i] == name[i]) ++i;
    if (i == name.size()) return static_cast<Dtype>(d);
  }
  return std::nullopt;
}

c10::ScalarType to_scalar_type(Dtype dtype) { return entry(dtype).scalar_type; }

bool can_view_at(uint64_t address, c10::ScalarType type) {
  return address % c10::elementSize(type) == 0;
}

std::optional<Dtype> from_scalar_type(c10::ScalarType type) {
  for (size_t d = 0; d < kTable.size(); ++d) {
    if (kTable[d].scalar_type == type && !bytes_only(kTable[d])) return static_cast<Dtype>(d);
  }
  return std::nullopt;
}

std::vector<int64_t> stored_sizes(Dtype dtype, c10::IntArrayRef shape, uint64_t nbytes) {
  std::vector<int64_t> sizes = shape.vec();
  const DtypeEntry& e = entry(dtype);
  if (!packed(e)) return sizes;
  if (!sizes.empty() && sizes.back() % e.values == 0) {
    sizes.back() = sizes.back() / e.values * elements_per_group(e);
  } else {
    sizes = {int64_t(nbytes)};
  }
  return sizes;
}

std::optional<std::vector<int64_t>> logical_shape(Dtype dtype, c10::IntArrayRef sizes) {
  std::vector<int64_t> shape = sizes.vec();
  const DtypeEntry& e = entry(dtype);
  if (!packed(e)) return shape;
  if (shape.empty() || shape.back() % elements_per_group(e) != 0) return std::nullopt;
  const int64_t groups = shape.back() / elements_per_group(e);
  if (__builtin_mul_overflow(groups, e.values, &shape.back())) return std::nullopt;
  return shape;
}

std::ostream& operator<<(std::ostream& out, Dtype dtype) { return out << dtype_name(dtype); }

bool is_cast_target(c10::ScalarType requested) {
  return requested == c10::kDouble || requested == c10::kFloat || requested == c10::kHalf ||
         requested == c10::kBFloat16;
}

bool cast_applies(c10::ScalarType stored, bool include_fp8) {
  if (is_cast_target(stored)) return true;
  switch (stored) {
    case c10::kFloat8_e4m3fn:
    case c10::kFloat8_e5m2:
    case c10::kFloat8_e4m3fnuz:
    case c10::kFloat8_e5m2fnuz:
      return include_fp8;
    default:
      return false;  // integers, bools, F8_E8M0 scales, packed sub-byte types
  }
}

}  // namespace torch::safetensors
