// Which stored tensors form a quantized weight: from our metadata when the file has it, else from
// the names each producer writes, the tensors' dtypes and shapes, and the producer's config.
// Also reading one weight (dequantize(checkpoint, ...)) and the dense view of a checkpoint.
#include <algorithm>
#include <set>

#include <ATen/ATen.h>

#include "check.h"
#include "quant/internal.h"

namespace torch::safetensors::quant {
namespace {

using detail::ceil_div;

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// "x.weight" -> "x."; nullopt for names that are not a linear weight's.
std::optional<std::string> weight_prefix(std::string_view name) {
  if (!ends_with(name, ".weight")) return std::nullopt;
  return std::string(name.substr(0, name.size() - 6));
}

detail::PartInfos part_infos(const Checkpoint& checkpoint, const QuantizedWeight& weight) {
  detail::PartInfos infos;
  for (const auto& [role, name] : weight.tensors) {
    if (!checkpoint.contains(name)) continue;  // check_layout names what is missing
    const TensorInfo& info = checkpoint.info(name);
    infos.emplace(role,
                  detail::PartInfo{to_scalar_type(info.dtype),
                                   std::vector<int64_t>(info.shape.begin(), info.shape.end())});
  }
  return infos;
}

// A stored tensor's shape, every size within detail::kMaxDimension so that the arithmetic of
// detection (sizes x 32 or x 8) cannot overflow.
// An MX-style weight: codes in `name`, one E8M0 scale per 32 values in `scale`.
QuantizedWeight mx_weight(std::string_view name, Scheme scheme, int bits,
                          std::vector<int64_t> shape, const std::string& scale) {
  QuantizedWeight weight;
  weight.name = std::string(name);
  weight.scheme = scheme;
  weight.bits = bits;
  weight.group_size = 32;
  weight.shape = std::move(shape);
  weight.tensors = {{"packed", std::string(name)}, {"scale", scale}};
  return weight;
}

std::vector<int64_t> shape_of(const Checkpoint& checkpoint, const std::string& name) {
  const auto& shape = checkpoint.info(name).shape;
  detail::check_dimensions(shape, checkpoint.path(), "tensor '" + name + "'");
  return std::vector<int64_t>(shape.begin(), shape.end());
}

// The bits b (from `candidates`) for which ceil(count * b / 32) == words; 0 if none.
int infer_bits(int64_t count, int64_t words, std::initializer_list<int> candidates) {
  for (int bits : candidates) {
    if (ceil_div(count * bits, 32) == words) return bits;
  }
  return 0;
}

// A group size from a config (-1: one group per row) or, when there is none, from the count of
// scale groups.
int64_t resolve_group_size(int64_t configured, int64_t in, int64_t groups) {
  if (configured < 0) return in;
  if (configured > 0) return configured;
  return groups > 0 ? ceil_div(in, groups) : in;
}

// The layouts that use "<prefix>qweight": GPTQ and AWQ, told apart by the config or by shapes
// (GPTQ's qweight has `out` columns like its scales; AWQ's has out / 8).
std::optional<QuantizedWeight> describe_qweight(const Checkpoint& checkpoint, std::string_view name,
                                                const std::string& prefix,
                                                const QuantConfig& config) {
  QuantizedWeight weight;
  weight.name = std::string(name);
  weight.tensors = {{"packed", prefix + "qweight"},
                    {"scale", prefix + "scales"},
                    {"zero_point", prefix + "qzeros"}};
  auto packed = shape_of(checkpoint, prefix + "qweight");
  std::vector<int64_t> scales;
  if (checkpoint.contains(prefix + "scales")) scales = shape_of(checkpoint, prefix + "scales");
  // A 3-D stack of experts (experts on dim 0): every part has that leading dimension, and each
  // expert is the 2-D layout (check_layout checks both).
  std::vector<int64_t> experts;
  if (packed.size() == 3) {
    experts = {packed[0]};
    packed.erase(packed.begin());
    if (scales.size() == 3) scales.erase(scales.begin());
  }
  auto stack_shape = [&](std::vector<int64_t> shape) {
    shape.insert(shape.begin(), experts.begin(), experts.end());
    return shape;
  };
  auto strip = [&](std::vector<int64_t> sizes) {
    if (!experts.empty() && !sizes.empty()) sizes.erase(sizes.begin());
    return sizes;
  };
  bool awq = config.scheme == Scheme::kAwq;
  if (!config.scheme && packed.size() == 2 && scales.size() == 2) {
    awq = scales[1] == packed[1] * 8 && scales[1] != packed[1];
  }
  if (awq) {
    weight.scheme = Scheme::kAwq;
    weight.bits = config.bits ? config.bits : 4;
    if (packed.size() == 2) {
      const int64_t in = packed[0], out = packed[1] * 8;
      weight.shape = stack_shape({out, in});
      weight.group_size =
          resolve_group_size(config.group_size, in, scales.size() == 2 ? scales[0] : 0);
    }
    return weight;
  }
  weight.scheme = Scheme::kGptq;
  weight.zero_point_minus_one = config.zero_point_minus_one;
  if (checkpoint.contains(prefix + "g_idx")) weight.tensors["g_idx"] = prefix + "g_idx";
  if (packed.size() != 2) return weight;  // check_layout says what is wrong
  const int64_t out = packed[1];
  weight.bits = config.bits;
  if (!weight.bits && checkpoint.contains(prefix + "qzeros")) {
    const auto zeros = strip(shape_of(checkpoint, prefix + "qzeros"));
    if (zeros.size() == 2) weight.bits = infer_bits(out, zeros[1], {4, 8, 3, 2});
  }
  TS_CHECK(weight.bits, checkpoint.path(), "quantized weight '", name,
           "' (gptq): the number of bits is unknown (no quantization config, and no qzeros '",
           prefix, "qzeros' to infer it from)");
  int64_t in = packed[0] * 32 / weight.bits;
  if (weight.tensors.count("g_idx")) {
    const auto g_idx = strip(shape_of(checkpoint, prefix + "g_idx"));
    if (g_idx.size() == 1) in = g_idx[0];
  }
  weight.shape = stack_shape({out, in});
  weight.group_size = resolve_group_size(config.group_size, in, scales.size() == 2 ? scales[0] : 0);
  return weight;
}

std::optional<QuantizedWeight> describe_compressed(const Checkpoint& checkpoint,
                                                   std::string_view name, const std::string& prefix,
                                                   const QuantConfig& config) {
  QuantizedWeight weight;
  weight.name = std::string(name);
  const std::string packed_name = prefix + "weight_packed";
  const auto packed = shape_of(checkpoint, packed_name);
  weight.tensors = {{"packed", packed_name}, {"scale", prefix + "weight_scale"}};
  std::vector<int64_t> scale;
  if (checkpoint.contains(prefix + "weight_scale"))
    scale = shape_of(checkpoint, prefix + "weight_scale");
  const std::string scale_name = prefix + "weight_scale";
  const bool e8m0_scale =
      checkpoint.contains(scale_name) && (checkpoint.info(scale_name).dtype == Dtype::U8 ||
                                          checkpoint.info(scale_name).dtype == Dtype::F8_E8M0);
  const bool mx_config =
      config.scheme == Scheme::kMxfp4PackQuantized || config.scheme == Scheme::kMxfp6PackQuantized;
  if (checkpoint.info(packed_name).dtype == Dtype::U8 && (mx_config || e8m0_scale)) {
    // compressed-tensors mxfp4/mxfp6-pack-quantized: no global scale, E8M0 (U8) scales per 32
    // (compressors/mxfp4/base.py `compression_param_names`). Without a config, FP4 and FP6 are
    // told apart by the packed row: 16 bytes per block of 32 values for FP4, 24 for FP6.
    weight.scheme = Scheme::kMxfp4PackQuantized;
    if (config.scheme == Scheme::kMxfp6PackQuantized) {
      weight.scheme = Scheme::kMxfp6PackQuantized;
    } else if (!config.scheme && !packed.empty() && !scale.empty() &&
               scale.size() == packed.size() && packed.back() == scale.back() * 24) {
      weight.scheme = Scheme::kMxfp6PackQuantized;
    }
    const bool fp6 = weight.scheme == Scheme::kMxfp6PackQuantized;
    weight.bits = fp6 ? 6 : 4;
    weight.group_size = 32;
    if (!packed.empty()) {
      weight.shape = packed;
      weight.shape.back() = fp6 ? packed.back() / 3 * 4 : packed.back() * 2;
    }
    return weight;
  }
  if (checkpoint.info(packed_name).dtype == Dtype::U8) {
    weight.scheme = Scheme::kNvfp4PackQuantized;
    weight.bits = 4;
    weight.group_size = config.group_size > 0 ? config.group_size : 16;
    weight.tensors["global_scale"] = prefix + "weight_global_scale";
    if (packed.size() == 2) weight.shape = {packed[0], packed[1] * 2};
    return weight;
  }
  weight.scheme = Scheme::kPackQuantized;
  if (checkpoint.contains(prefix + "weight_zero_point")) {
    weight.tensors["zero_point"] = prefix + "weight_zero_point";
  }
  // 2-D [out, words], or a 3-D stack of experts [experts, out, words] (compressed-tensors
  // helpers.py `pack_to_int32` packs each 2-D slice of an N-D weight).
  if (packed.size() != 2 && packed.size() != 3) return weight;
  const size_t dims = packed.size();
  int64_t in = 0;
  const std::string shape_name = prefix + "weight_shape";
  if (checkpoint.contains(shape_name)) {
    weight.tensors["shape"] = shape_name;
    // dims integers: reading them is the one small read detection needs.
    const at::Tensor stored = checkpoint.tensor(shape_name);
    TS_CHECK(stored.numel() == int64_t(dims) && !at::isFloatingType(stored.scalar_type()),
             checkpoint.path(), "quantized weight '", name, "': '", shape_name, "' must hold ",
             dims, " integers (", dims == 2 ? "[out, in]" : "[experts, out, in]", "), found shape ",
             detail::sizes_string(stored.sizes()), " of ", stored.scalar_type());
    const at::Tensor values = stored.to(at::kLong).cpu().flatten();
    for (size_t d = 0; d + 1 < dims; ++d) {
      TS_CHECK(values[d].item<int64_t>() == packed[d], checkpoint.path(), "quantized weight '",
               name, "': '", shape_name, "' says size ", values[d].item<int64_t>(), " in dim ", d,
               ", but '", packed_name, "' has ", packed[d]);
    }
    in = values[dims - 1].item<int64_t>();
    TS_CHECK(in > 0 && in <= detail::kMaxDimension, checkpoint.path(), "quantized weight '", name,
             "': '", shape_name, "' says in = ", in, ", expected 1 to ", detail::kMaxDimension);
  }
  weight.bits = config.bits;
  if (!weight.bits && in) weight.bits = infer_bits(in, packed.back(), {8, 4, 2, 1, 3, 5, 6, 7});
  TS_CHECK(weight.bits, checkpoint.path(), "quantized weight '", name,
           "' (pack_quantized): the number of bits is unknown (no quantization config and no '",
           shape_name, "')");
  if (!in) in = packed.back() * 32 / weight.bits;
  weight.shape = packed;
  weight.shape.back() = in;
  const bool grouped = scale.size() == dims && scale.back() > 1;
  weight.group_size = grouped ? resolve_group_size(config.group_size, in, scale.back()) : 0;
  return weight;
}

std::optional<QuantizedWeight> describe_by_names(const Checkpoint& checkpoint,
                                                 std::string_view name, const QuantConfig& config) {
  // mxfp4: "<name>_blocks" + "<name>_scales" (gpt-oss writes no ".weight" suffix).
  const std::string blocks = std::string(name) + "_blocks";
  if (checkpoint.contains(blocks)) {
    QuantizedWeight weight;
    weight.name = std::string(name);
    weight.scheme = Scheme::kMxfp4;
    weight.bits = 4;
    weight.group_size = 32;
    weight.tensors = {{"packed", blocks}, {"scale", std::string(name) + "_scales"}};
    auto shape = shape_of(checkpoint, blocks);
    if (shape.size() >= 2) {
      const int64_t per_block = shape.back() * 2;
      shape.pop_back();
      shape.back() *= per_block;
      weight.shape = shape;
    }
    return weight;
  }
  const auto prefix = weight_prefix(name);
  if (!prefix) return std::nullopt;
  if (checkpoint.contains(*prefix + "qweight")) {
    return describe_qweight(checkpoint, name, *prefix, config);
  }
  if (checkpoint.contains(*prefix + "weight_packed")) {
    return describe_compressed(checkpoint, name, *prefix, config);
  }
  if (!checkpoint.contains(name)) return std::nullopt;
  const TensorInfo& info = checkpoint.info(name);
  const std::vector<int64_t> shape = shape_of(checkpoint, std::string(name));
  const c10::ScalarType type = to_scalar_type(info.dtype);
  const bool fp8 = type == at::kFloat8_e4m3fn || type == at::kFloat8_e5m2 ||
                   type == at::kFloat8_e4m3fnuz || type == at::kFloat8_e5m2fnuz;
  const std::string scale_inv = *prefix + "weight_scale_inv", scale = *prefix + "weight_scale";
  // DeepSeek-V4 (inference/model.py `Linear`: `self.weight.scale = self.scale`) names the scale
  // "<prefix>scale".
  const std::string short_scale = *prefix + "scale";
  const std::string* found_scale = checkpoint.contains(scale_inv)     ? &scale_inv
                                   : checkpoint.contains(scale)       ? &scale
                                   : checkpoint.contains(short_scale) ? &short_scale
                                                                      : nullptr;
  const c10::ScalarType scale_type =
      found_scale ? to_scalar_type(checkpoint.info(*found_scale).dtype) : at::kFloat;
  const bool e8m0_scale =
      found_scale && (scale_type == at::kByte || scale_type == at::kFloat8_e8m0fnu);
  if (found_scale && !shape.empty() &&
      (type == at::kChar || type == at::kFloat4_e2m1fn_x2 ||
       (type == at::kByte &&
        (scale_type == at::kFloat8_e8m0fnu || config.scheme == Scheme::kMxfp4PackQuantized))) &&
      e8m0_scale) {
    // DeepSeek-V4's routed experts (config `expert_dtype: fp4`): FP4 two a byte in I8 [out, in/2]
    // with an F8_E8M0 scale per 32 values [out, in/32] — the MXFP4 layout.
    auto unpacked = shape;
    unpacked.back() *= 2;
    return mx_weight(name, Scheme::kMxfp4PackQuantized, 4, std::move(unpacked), *found_scale);
  }
  if (fp8 && found_scale && type == at::kFloat8_e4m3fn && !shape.empty() && e8m0_scale) {
    // compressed-tensors mxfp8-quantized (compressors/mxfp8/base.py): `weight` F8_E4M3 and a U8
    // E8M0 `weight_scale` per 32 values. An F8_E8M0 scale of that shape is the same layout; one of
    // ceil(out / block) x ceil(in / block) is DeepSeek's block FP8 (below).
    const auto scale_shape = shape_of(checkpoint, *found_scale);
    std::vector<int64_t> per32(shape.begin(), shape.end() - 1);
    per32.push_back(shape.back() / 32);
    const bool blocks = shape.size() == 2 && scale_shape.size() == 2 &&
                        scale_shape[0] == ceil_div(shape[0], 128) &&
                        scale_shape[1] == ceil_div(shape[1], 128);
    if (config.scheme == Scheme::kMxfp8Quantized || scale_type == at::kByte ||
        (scale_shape == per32 && !blocks)) {
      return mx_weight(name, Scheme::kMxfp8Quantized, 8, shape, *found_scale);
    }
  }
  if (fp8 && found_scale) {
    QuantizedWeight weight;
    weight.name = std::string(name);
    weight.scheme = Scheme::kFp8;
    weight.bits = 8;
    weight.shape = shape;
    const std::string& scale_name = *found_scale;
    weight.tensors = {{"packed", std::string(name)}, {"scale", scale_name}};
    const auto scale_shape = shape_of(checkpoint, scale_name);
    const int64_t scale_count = detail::saturating_numel(scale_shape);
    // A 0-dim weight has no output channel: only one scale fits it (check_layout says so).
    const bool per_channel = !shape.empty() && (scale_shape == std::vector<int64_t>{shape[0], 1} ||
                                                scale_shape == std::vector<int64_t>{shape[0]});
    if (scale_count != 1 && !per_channel && shape.size() == 2) {
      // Block scales: the config's block size, else DeepSeek-V3's 128 x 128.
      weight.block_size =
          config.block_size.size() == 2 ? config.block_size : std::vector<int64_t>{128, 128};
    }
    return weight;
  }
  if (type == at::kByte && checkpoint.contains(scale) &&
      checkpoint.info(scale).dtype == Dtype::F8_E4M3) {
    QuantizedWeight weight;
    weight.name = std::string(name);
    weight.scheme = Scheme::kNvfp4;
    weight.bits = 4;
    weight.tensors = {{"packed", std::string(name)},
                      {"scale", scale},
                      {"global_scale", *prefix + "weight_scale_2"}};
    if (shape.size() == 2) {
      weight.shape = {shape[0], shape[1] * 2};
      const auto scale_shape = shape_of(checkpoint, scale);
      weight.group_size = config.group_size > 0 ? config.group_size
                          : scale_shape.size() == 2 && scale_shape[1] > 0
                              ? weight.shape[1] / scale_shape[1]
                              : 16;
    }
    return weight;
  }
  return std::nullopt;
}

}  // namespace

std::optional<QuantizedWeight> describe(const Checkpoint& checkpoint, std::string_view name,
                                        const QuantConfig& config) {
  std::optional<QuantizedWeight> weight;
  if (!config.weights.empty()) {
    // A self-described file says everything: names it does not list are ordinary tensors.
    const auto found = config.weights.find(std::string(name));
    if (found == config.weights.end()) return std::nullopt;
    weight = found->second;
  } else {
    weight = describe_by_names(checkpoint, name, config);
    if (!weight) return std::nullopt;
    TS_CHECK(!config.scheme || *config.scheme == weight->scheme, checkpoint.path(),
             "quantized weight '", name, "' is stored as ", scheme_name(weight->scheme), ", but ",
             config.source, " says ", scheme_name(*config.scheme));
  }
  detail::check_layout(*weight, part_infos(checkpoint, *weight), checkpoint.path());
  return weight;
}

std::vector<QuantizedWeight> find_quantized(const Checkpoint& checkpoint,
                                            const QuantConfig& config) {
  std::vector<QuantizedWeight> out;
  std::set<std::string> seen;
  auto add = [&](const std::string& name) {
    if (!seen.insert(name).second) return;
    if (auto weight = describe(checkpoint, name, config)) out.push_back(std::move(*weight));
  };
  if (!config.weights.empty()) {
    for (const auto& [name, weight] : config.weights) add(name);
    return out;
  }
  for (const std::string& key : checkpoint.keys()) {
    const TensorInfo& info = checkpoint.info(key);
    if (ends_with(key, ".qweight")) {
      add(key.substr(0, key.size() - 7) + "weight");
    } else if (ends_with(key, ".weight_packed")) {
      add(key.substr(0, key.size() - 13) + "weight");
    } else if (ends_with(key, "_blocks") && info.dtype == Dtype::U8) {
      add(key.substr(0, key.size() - 7));
    } else if (ends_with(key, ".weight")) {
      // FP8 and NVFP4 keep the dense name; describe() checks for their scales.
      add(key);
    }
  }
  return out;
}

namespace {

// The stored tensors of `weight` by role, on `device`.
std::map<std::string, at::Tensor> parts_of(const Checkpoint& checkpoint,
                                           const QuantizedWeight& weight, c10::Device device) {
  std::map<std::string, at::Tensor> parts;
  for (const auto& [role, name] : weight.tensors) {
    TS_CHECK(checkpoint.contains(name), checkpoint.path(), "quantized weight '", weight.name, "' (",
             scheme_name(weight.scheme), "): its ", role, " tensor '", name, "' is missing");
    // Only these tensors are read; they move to `device` packed (the smallest transfer) and are
    // dequantized there.
    parts.emplace(role, checkpoint.tensor(name).to(device));
  }
  return parts;
}

}  // namespace

at::Tensor dequantize(const Checkpoint& checkpoint, const QuantizedWeight& weight,
                      at::ScalarType dtype, c10::Device device) {
  return dequantize(weight, parts_of(checkpoint, weight, device), dtype, checkpoint.path());
}

QuantizationError quantization_error(const Checkpoint& checkpoint, const QuantizedWeight& weight,
                                     const at::Tensor& reference) {
  return quantization_error(weight, parts_of(checkpoint, weight, reference.device()), reference,
                            checkpoint.path());
}

at::Tensor dequantize(const Checkpoint& checkpoint, std::string_view name, at::ScalarType dtype,
                      c10::Device device) {
  const QuantConfig config = read_config(checkpoint);
  const auto weight = describe(checkpoint, name, config);
  TS_CHECK(weight.has_value(), checkpoint.path(), "'", name,
           "' is not a quantized weight (no quantized layout stores it",
           config.source.empty() ? std::string() : ", per " + config.source, ")");
  return dequantize(checkpoint, *weight, dtype, device);
}

DenseView::DenseView(Checkpoint checkpoint, at::ScalarType dtype, c10::Device device)
    : DenseView(checkpoint, read_config(checkpoint), dtype, device) {}

DenseView::DenseView(Checkpoint checkpoint, QuantConfig config, at::ScalarType dtype,
                     c10::Device device)
    : checkpoint_(std::move(checkpoint)),
      config_(std::move(config)),
      dtype_(dtype),
      device_(device) {
  std::set<std::string, std::less<>>& companions = companions_;
  for (QuantizedWeight& weight : find_quantized(checkpoint_, config_)) {
    for (const auto& [role, name] : weight.tensors) companions.insert(name);
    // Activation-only companions, which no dense model has as a weight: ModelOpt's `input_scale`
    // (and kv-cache `k_scale`/`v_scale`), compressed-tensors' `input_global_scale`,
    // `input_scale` and `input_zero_point`. Hidden, so that a strict load of the view works.
    if (const auto prefix = weight_prefix(weight.name)) {
      for (const char* activation :
           {"input_scale", "input_global_scale", "input_zero_point", "k_scale", "v_scale"}) {
        if (checkpoint_.contains(*prefix + activation)) companions.insert(*prefix + activation);
      }
    }
    std::string name = weight.name;
    quantized_.emplace(std::move(name), std::move(weight));
  }
  for (const auto& [name, weight] : quantized_) companions.erase(name);
  // Dense names where their packed tensor was, then every tensor that is no companion.
  std::set<std::string, std::less<>> listed;
  for (const std::string& key : checkpoint_.keys()) {
    if (companions.count(key)) {
      for (const auto& [name, weight] : quantized_) {
        if (weight.tensors.at("packed") == key && listed.insert(name).second) keys_.push_back(name);
      }
      continue;
    }
    if (listed.insert(key).second) keys_.push_back(key);
  }
}

bool DenseView::contains(std::string_view name) const {
  return quantized_.count(name) || (checkpoint_.contains(name) && !is_companion(name));
}

bool DenseView::is_quantized(std::string_view name) const { return quantized_.count(name) != 0; }

bool DenseView::is_companion(std::string_view name) const {
  return companions_.find(name) != companions_.end();
}

at::Tensor DenseView::tensor(std::string_view name) const {
  const auto found = quantized_.find(name);
  if (found != quantized_.end()) return dequantize(checkpoint_, found->second, dtype_, device_);
  TS_CHECK(
      !is_companion(name), checkpoint_.path(), "'", name,
      "' is part of a quantized weight; the dense view hides it (read it from the checkpoint)");
  return checkpoint_.tensor(name).to(device_);
}

}  // namespace torch::safetensors::quant
