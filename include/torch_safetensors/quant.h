// Quantized weights: the stored layouts of FP8 (block, per-tensor, per-channel), GPTQ, AWQ,
// compressed-tensors (pack-quantized, nvfp4-pack-quantized), MXFP4 and NVFP4, read, dequantized,
// quantized and written, with a self-describing metadata entry (kMetadataKey) that needs no
// config file.
//
//   namespace quant = torch::safetensors::quant;
//   torch::safetensors::Checkpoint file("model/");   // a file, an index.json or a directory
//   at::Tensor w = quant::dequantize(file, "layers.0.mlp.down_proj.weight", at::kBFloat16);
//   quant::DenseView dense(file, at::kBFloat16);            // name -> dense tensor, on access
//
// Every computation is ATen ops on the tensors' device: dequantize(weight, parts, ...) is the
// pure-tensor core that on-device loading calls after moving the stored parts to the device.
#pragma once

#include "torch_safetensors/export.h"

#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/endpoints.h"
#include "torch_safetensors/file.h"
#include "torch_safetensors/header.h"
#include "torch_safetensors/sharded.h"

namespace torch::safetensors::quant {

// One layout per scheme; `scheme_name` gives the string used in metadata and Python.
enum class Scheme {
  kFp8,                 // "fp8": F8_E4M3/E5M2 weight x F32 scale (per tensor, channel or block)
  kGptq,                // "gptq": qweight/qzeros/scales/g_idx, 2/3/4/8 bits
  kAwq,                 // "awq": GEMM layout, 4 bits, interleaved nibbles
  kPackQuantized,       // "pack_quantized": compressed-tensors int1..8 in I32
  kNvfp4PackQuantized,  // "nvfp4_pack_quantized": compressed-tensors FP4 + F8 scale / global
  kMxfp4,               // "mxfp4": gpt-oss *_blocks + *_scales (E8M0 per 32)
  kNvfp4,               // "nvfp4": ModelOpt weight + weight_scale (F8 per 16) x weight_scale_2
  // "mxfp4_pack_quantized": FP4 two a byte [out, in/2] x an E8M0 scale per 32 [out, in/32]
  // (compressed-tensors mxfp4-pack-quantized; DeepSeek-V4's routed experts, I8 + `.scale`)
  kMxfp4PackQuantized,
  kMxfp6PackQuantized,  // "mxfp6_pack_quantized": FP6 E2M3 four in 3 bytes x E8M0 per 32
  kMxfp8Quantized,      // "mxfp8_quantized": F8_E4M3 [out, in] x E8M0 per 32 [out, in/32]
};

TS_API std::string_view scheme_name(Scheme scheme);
// Every scheme's name, in declaration order (what error messages and Python enumerate).
TS_API std::vector<std::string_view> scheme_names();
// nullopt for an unknown name.
TS_API std::optional<Scheme> parse_scheme(std::string_view name);

// One quantized weight: which stored tensors form it and how. Roles name the stored tensors
// independently of each project's spelling:
//   packed        fp8 `weight`, gptq/awq `qweight`, compressed-tensors `weight_packed`,
//                 mxfp4 `*_blocks`, nvfp4 `weight`
//   scale         `weight_scale_inv` / `weight_scale` / `scales` / `*_scales` / DeepSeek-V4
//                 `.scale`; E8M0 scales (U8 or F8_E8M0) always mean 2^(e - 127)
//   zero_point    gptq/awq `qzeros`, compressed-tensors `weight_zero_point` (asymmetric only)
//   g_idx         gptq act-order group of each input column (optional)
//   shape         compressed-tensors `weight_shape` (optional)
//   global_scale  compressed-tensors `weight_global_scale`, nvfp4 `weight_scale_2`
struct TS_API QuantizedWeight {
  std::string name;  // the dense weight's name: "x.weight" (mxfp4: "x.gate_up_proj")
  Scheme scheme = Scheme::kFp8;
  int bits = 0;                     // bits per stored value: 1..8, 4 for FP4, 6 for FP6, 8 for FP8
  int64_t group_size = 0;           // values sharing one scale along the input dim; 0: none
  std::vector<int64_t> block_size;  // fp8 only: [rows, cols] of a scale block; empty: none
  // gptq only: true for the original format, whose zero points are stored minus one
  // (`checkpoint_format` "gptq"); false for "gptq_v2", which stores them as they are.
  bool zero_point_minus_one = false;
  std::map<std::string, std::string> tensors;  // role -> stored tensor name
  std::vector<int64_t> shape;                  // dense shape; [out, in] for linear weights
};

// The quantization described by a checkpoint, from (first found) our metadata entry
// (kMetadataKey, else our document under kLegacyMetadataKey), `config.json`'s
// `quantization_config`, or `hf_quant_config.json` beside it (beside the file as the caller
// spelled its path: a bare file name looks in the working directory).
// Entries of `weights` come only from our metadata; the others describe every weight.
struct TS_API QuantConfig {
  std::optional<Scheme> scheme;  // nullopt: decided per weight from names and dtypes
  int bits = 0;                  // 0: unknown (inferred from shapes)
  int64_t group_size = 0;        // 0: unknown / none
  std::vector<int64_t> block_size;
  bool zero_point_minus_one = true;  // gptq: "gptq" (v1) unless "gptq_v2"
  bool symmetric = true;             // compressed-tensors weights.symmetric
  std::string scale_fmt;     // DeepSeek `scale_fmt` ("ue8m0": power-of-two scales), "" if none
  std::string expert_dtype;  // DeepSeek-V4 `expert_dtype` ("fp4": MXFP4 experts), "" if none
  std::string source;        // where it was read ("" if nowhere)
  std::map<std::string, QuantizedWeight> weights;  // from our metadata: name -> layout
};

// The metadata key of the self-describing convention (README, "Quantized weights"): namespaced,
// since other tools write their own values under plain names (fracast 0.1.0 stores
// "quantization": "none"). Its value's "format" field holds the same string.
inline constexpr std::string_view kMetadataKey = "torch_safetensors.quantization";
// Where version 0.2 wrote the entry. A value there is read only if it is our document (a JSON
// object whose "format" is kMetadataKey); any other value is another tool's and is ignored.
inline constexpr std::string_view kLegacyMetadataKey = "quantization";

TS_API QuantConfig read_config(const Checkpoint& checkpoint);

// The quantized weight named `name` (its dense name), or nullopt if the checkpoint stores `name`
// as an ordinary tensor or not at all. Checks every part's dtype and shape against the layout.
TS_API std::optional<QuantizedWeight> describe(const Checkpoint& checkpoint, std::string_view name,
                                               const QuantConfig& config);
// Every quantized weight of the checkpoint, in the order of their packed tensors.
TS_API std::vector<QuantizedWeight> find_quantized(const Checkpoint& checkpoint,
                                                   const QuantConfig& config);

// The dense weight, reading only the tensors that form it. Throws naming the checkpoint and the
// weight if `name` is not a quantized weight or a part has the wrong dtype or shape.
TS_API at::Tensor dequantize(const Checkpoint& checkpoint, std::string_view name,
                             at::ScalarType dtype = at::kBFloat16, c10::Device device = c10::kCPU);
TS_API at::Tensor dequantize(const Checkpoint& checkpoint, const QuantizedWeight& weight,
                             at::ScalarType dtype = at::kBFloat16, c10::Device device = c10::kCPU);
// The pure-tensor core: `parts` maps roles to the stored tensors (on any one device; the result
// is on theirs). `source` names the checkpoint in errors.
TS_API at::Tensor dequantize(const QuantizedWeight& weight,
                             const std::map<std::string, at::Tensor>& parts, at::ScalarType dtype,
                             std::string_view source = "<tensors>");

// How far a quantized weight is from a dense reference of its shape (the weight it was made from,
// or another checkpoint's dequantized one), computed in float64 one expert at a time.
struct TS_API QuantizationError {
  double max_abs = 0;  // max |dequantized - reference| (inf where exactly one side is NaN)
  double nmse = 0;     // sum (dequantized - reference)^2 / sum reference^2; 0 when both are 0
  // Microscaled formats (MX: 32 values a scale, NV: 16) only, else 0: the scale blocks, and those
  // where the reference leaves the block's range (a value clipped to the element format's largest
  // magnitude, E2M1's 6, E2M3's 7.5, E4M3's 448, times the block's scale).
  int64_t blocks = 0;
  int64_t saturated_blocks = 0;
};
TS_API QuantizationError quantization_error(const QuantizedWeight& weight,
                                            const std::map<std::string, at::Tensor>& parts,
                                            const at::Tensor& reference,
                                            std::string_view source = "<tensors>");
// The same, reading only the weight's stored tensors from `checkpoint`.
TS_API QuantizationError quantization_error(const Checkpoint& checkpoint,
                                            const QuantizedWeight& weight,
                                            const at::Tensor& reference);

// A checkpoint seen as dense tensors: quantized weights under their dense names (dequantized on
// access to `dtype`), their companions hidden (activation-only ones too: `input_scale`,
// `input_global_scale`, `input_zero_point`, `k_scale`, `v_scale` beside a quantized weight), every
// other tensor as stored (moved to `device`).
class TS_API DenseView {
 public:
  DenseView(Checkpoint checkpoint, at::ScalarType dtype = at::kBFloat16,
            c10::Device device = c10::kCPU);
  DenseView(Checkpoint checkpoint, QuantConfig config, at::ScalarType dtype, c10::Device device);

  const std::vector<std::string>& keys() const { return keys_; }
  bool contains(std::string_view name) const;
  bool is_quantized(std::string_view name) const;
  at::Tensor tensor(std::string_view name) const;
  const Checkpoint& checkpoint() const { return checkpoint_; }
  const QuantConfig& config() const { return config_; }
  const std::map<std::string, QuantizedWeight, std::less<>>& quantized() const {
    return quantized_;
  }

 private:
  bool is_companion(std::string_view name) const;

  Checkpoint checkpoint_;
  QuantConfig config_;
  at::ScalarType dtype_;
  c10::Device device_;
  std::vector<std::string> keys_;
  std::map<std::string, QuantizedWeight, std::less<>> quantized_;
  // Stored tensors that are parts of a quantized weight, or its activation-only companions.
  std::set<std::string, std::less<>> companions_;
};

// How to quantize one dense weight ([out, in]; mxfp4 and fp8 also take more leading dims).
struct TS_API QuantizeOptions {
  Scheme scheme = Scheme::kFp8;
  int bits = 4;                            // gptq: 2, 3, 4, 8; pack_quantized: 1..8; others fixed
  int64_t group_size = 128;                // gptq, awq, pack_quantized; <= 0: one group per row
  std::vector<int64_t> block_size;         // fp8: [rows, cols]; empty: one scale per output channel
  bool symmetric = true;                   // gptq, pack_quantized
  bool zero_point_minus_one = true;        // gptq: write the original format (else gptq_v2)
  std::optional<at::Tensor> act_order;     // gptq: a permutation of the input columns (desc_act)
  at::ScalarType scale_dtype = at::kHalf;  // gptq/awq scales (F16, as stored today)
};

struct TS_API Quantized {
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // stored name -> tensor
  QuantizedWeight weight;                                   // how they form the weight
};

// The stored tensors of `weight` under the names its scheme uses, `name` being the dense name.
TS_API Quantized quantize(const at::Tensor& weight, std::string_view name,
                          const QuantizeOptions& options);

// The JSON value of kMetadataKey describing `weights`, and its inverse (`source` names the file
// in errors).
TS_API std::string metadata_json(const std::vector<QuantizedWeight>& weights);
TS_API std::map<std::string, QuantizedWeight> parse_metadata_json(std::string_view json,
                                                                  std::string_view source);
// Whether `json` is our document (a JSON object whose "format" is kMetadataKey), whatever else
// it holds: how a value under kLegacyMetadataKey is told from another tool's.
TS_API bool is_metadata_json(std::string_view json);

// Saves quantized weights and ordinary tensors in one file, recording the quantized weights
// under kMetadataKey (added to `metadata`, which must not hold that key already).
TS_API void save(const std::vector<Quantized>& weights,
                 const std::vector<std::pair<std::string, at::Tensor>>& others, const SaveTo& to,
                 std::optional<Metadata> metadata = std::nullopt);

// The same as a sharded checkpoint in `directory`, split and named as save_sharded (sharded.h)
// does it; the description goes to the index's "metadata" (to the file's when one file holds
// everything), which Checkpoint reads back. `options.metadata` must not hold kMetadataKey.
TS_API void save_sharded(const std::vector<Quantized>& weights,
                         const std::vector<std::pair<std::string, at::Tensor>>& others,
                         const PathArg& directory, ShardOptions options = {});

}  // namespace torch::safetensors::quant
