// `diff A B`: names on one side only, dtype and shape differences, and the largest absolute
// difference of each tensor whose values differ. Exit code 1 when anything differs. With
// --dequantize, quantized weights are compared by their dequantized values (quant.h).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <set>

#include <ATen/ATen.h>

#include "common.h"
#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/quant.h"

namespace torch::safetensors::cli {
namespace {

const char* kHelp =
    "usage: torch-safetensors diff A B [--atol TOLERANCE] [--dequantize]\n"
    "\n"
    "Compares two checkpoints (each a safetensors file, an index or a directory): names found on\n"
    "one side only, tensors whose dtype or shape differ, and for tensors whose values differ the\n"
    "largest absolute difference (NaN at the same place on both sides counts as equal). Exits 1\n"
    "when the checkpoints differ, 0 when they hold the same tensors with the same values.\n"
    "\n"
    "options:\n"
    "  --atol TOLERANCE   values differing by at most TOLERANCE count as equal (default 0)\n"
    "  --dequantize       compare quantized weights (fp8, GPTQ, AWQ, compressed-tensors, MX,\n"
    "                     NVFP4, DeepSeek-V4) by their dequantized values, under their dense\n"
    "                     names, against the other side (dense, or dequantized too): for each,\n"
    "                     max |A - B|, NMSE = sum (A - B)^2 / sum B^2 (against A when only B is\n"
    "                     quantized) and, for MX and NV formats, the scale blocks where the\n"
    "                     reference lies beyond the block's range (values clipped). One weight\n"
    "                     is in memory at a time.\n";

// Elements compared per step, so that a large tensor never needs its float64 copy at once.
constexpr int64_t kChunk = int64_t(1) << 22;

// The largest |a - b| over two tensors of one stored dtype and shape; +inf where one side is NaN
// or the dtype packs several values in a byte (F4, F6: the dtype table's values per group), whose
// torch elements are not values, so they are compared by bytes.
double max_abs_difference(Dtype stored, const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor flat_a = a.contiguous().view(-1), flat_b = b.contiguous().view(-1);
  if (std::memcmp(flat_a.data_ptr(), flat_b.data_ptr(), flat_a.nbytes()) == 0) return 0;
  if (values_per_group(stored) > 1) return INFINITY;
  const c10::ScalarType type = a.scalar_type();
  double largest = 0;
  for (int64_t begin = 0; begin < flat_a.numel(); begin += kChunk) {
    const int64_t end = std::min(flat_a.numel(), begin + kChunk);
    at::Tensor x = flat_a.slice(0, begin, end), y = flat_b.slice(0, begin, end);
    at::Tensor difference;
    if (type == c10::kBool) {
      difference = x.ne(y).to(at::kDouble);
    } else if (at::isComplexType(type)) {
      difference = (x.to(at::kComplexDouble) - y.to(at::kComplexDouble)).abs();
    } else {
      at::Tensor xd = x.to(at::kDouble), yd = y.to(at::kDouble);
      difference = (xd - yd).abs();
      // NaN on both sides is equal; NaN on one side is an infinite difference.
      difference.masked_fill_(xd.isnan() & yd.isnan(), 0);
      difference.masked_fill_(xd.isnan() ^ yd.isnan(), INFINITY);
      // inf - inf is NaN: equal infinities are equal.
      difference.masked_fill_(xd.eq(yd), 0);
    }
    largest = std::max(largest, difference.max().item<double>());
  }
  return largest;
}

std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.6g", value);
  return text;
}

// One tensor stored on both sides: its dtype, shape and values; 1 when they differ (reported).
size_t diff_stored(const Checkpoint& a, const Checkpoint& b, const std::string& name,
                   double tolerance, ProgressBar* progress = nullptr) {
  const TensorInfo& info_a = a.info(name);
  const TensorInfo& info_b = b.info(name);
  const auto report = [&] {
    if (progress) progress->finish();
  };
  if (info_a.dtype != info_b.dtype) {
    report();
    std::cout << "dtype differs: " << name << ": " << dtype_name(info_a.dtype) << " vs "
              << dtype_name(info_b.dtype) << "\n";
    return 1;
  }
  if (info_a.shape != info_b.shape) {
    report();
    std::cout << "shape differs: " << name << ": " << shape_text(info_a.shape) << " vs "
              << shape_text(info_b.shape) << "\n";
    return 1;
  }
  const double largest = max_abs_difference(info_a.dtype, a.tensor(name), b.tensor(name));
  if (largest <= tolerance) return 0;
  report();
  std::cout << "values differ: " << name << ": max |A - B| = " << number(largest) << "\n";
  return 1;
}

// One side of a --dequantize comparison: its dense view and, per dense name, its shape.
struct Side {
  explicit Side(const std::string& path) : dense(Checkpoint(path), at::kFloat) {}
  std::vector<int64_t> shape(const std::string& name) const {
    const auto found = dense.quantized().find(name);
    if (found != dense.quantized().end()) return found->second.shape;
    return dense.checkpoint().tensor(name).sizes().vec();  // a view of the mapping: nothing read
  }
  quant::DenseView dense;
};

// `diff --dequantize`: tensors that are quantized on either side are compared by value through
// quant::quantization_error; the others as without it.
size_t diff_quantized(const Side& a, const Side& b, const std::string& name, double tolerance) {
  const bool a_quantized = a.dense.is_quantized(name), b_quantized = b.dense.is_quantized(name);
  const std::vector<int64_t> shape_a = a.shape(name), shape_b = b.shape(name);
  if (shape_a != shape_b) {
    std::cout << "shape differs: " << name << ": " << shape_text(shape_a) << " vs "
              << shape_text(shape_b) << "\n";
    return 1;
  }
  // The quantized side is measured against the other, A's against B when both are.
  const Side& measured = a_quantized ? a : b;
  const Side& reference = a_quantized ? b : a;
  const quant::QuantizedWeight& weight = measured.dense.quantized().find(name)->second;
  const quant::QuantizationError error =
      quant::quantization_error(measured.dense.checkpoint(), weight, reference.dense.tensor(name));
  std::cout << "quantized: " << name << " ("
            << (a_quantized ? quant::scheme_name(weight.scheme) : std::string_view("dense"))
            << " vs "
            << (b_quantized ? quant::scheme_name(b.dense.quantized().find(name)->second.scheme)
                            : std::string_view("dense"))
            << "): max |A - B| = " << number(error.max_abs) << ", NMSE = " << number(error.nmse);
  if (error.blocks) {
    std::cout << ", saturated blocks " << error.saturated_blocks << " of " << error.blocks;
  }
  std::cout << "\n";
  return error.max_abs > tolerance ? 1 : 0;
}

}  // namespace

int diff_command(const std::vector<std::string>& args) {
  auto parsed = parse_args(args, {{"--atol", true}, {"--dequantize", false}}, kHelp, 2, 2);
  if (!parsed) return 0;
  double tolerance = 0;
  if (auto text = parsed->value("--atol")) {
    tolerance = parse_non_negative_option("--atol", *text, "a finite non-negative number");
  }
  const std::string& path_a = parsed->positional[0];
  const std::string& path_b = parsed->positional[1];
  if (parsed->flag("--dequantize")) {
    const Side a(path_a), b(path_b);
    size_t differences = 0, compared = 0;
    for (const std::string& name : a.dense.keys()) {
      if (!b.dense.contains(name)) std::cout << "only in A: " << name << "\n", ++differences;
    }
    for (const std::string& name : b.dense.keys()) {
      if (!a.dense.contains(name)) std::cout << "only in B: " << name << "\n", ++differences;
    }
    for (const std::string& name : a.dense.keys()) {
      if (!b.dense.contains(name)) continue;
      ++compared;
      if (a.dense.is_quantized(name) || b.dense.is_quantized(name)) {
        differences += diff_quantized(a, b, name, tolerance);
        continue;
      }
      differences += diff_stored(a.dense.checkpoint(), b.dense.checkpoint(), name, tolerance);
    }
    std::cout << (differences ? "DIFFERENT: " : "SAME: ") << compared << " tensors compared, "
              << differences << " difference(s)\n";
    return differences ? 1 : 0;
  }
  const Checkpoint a(path_a), b(path_b);

  size_t differences = 0, compared = 0;
  for (const std::string& name : a.keys()) {
    if (!b.contains(name)) {
      std::cout << "only in A: " << name << "\n";
      ++differences;
    }
  }
  for (const std::string& name : b.keys()) {
    if (!a.contains(name)) {
      std::cout << "only in B: " << name << "\n";
      ++differences;
    }
  }
  uint64_t total = 0;
  for (const std::string& name : a.keys()) {
    if (b.contains(name)) total += a.info(name).nbytes();
  }
  ProgressBar progress("diff", total);
  uint64_t done = 0;
  for (const std::string& name : a.keys()) {
    if (!b.contains(name)) continue;
    done += a.info(name).nbytes();
    ++compared;
    const size_t found = diff_stored(a, b, name, tolerance, &progress);
    progress.update(done);
    differences += found;
  }
  progress.finish();
  std::cout << (differences ? "DIFFERENT: " : "SAME: ") << compared << " tensors compared, "
            << differences << " difference(s)\n";
  return differences ? 1 : 0;
}

}  // namespace torch::safetensors::cli
