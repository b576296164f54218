// Quantized layouts: each packed here by a plain loop written from the layout's description (not
// by the library's packers), dequantized by the library, compared exactly; round trips through
// quantize/save; the self-describing metadata; clear errors for bad companions.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "test_util.h"
#include "torch_safetensors/all.h"

namespace st = torch::safetensors;
namespace quant = torch::safetensors::quant;
using ts_test::TempDir;

namespace {

// Values of `bits` bits as one LSB-first bit stream over int32 words: value k at bits
// [k * bits, (k + 1) * bits) of the stream.
std::vector<int32_t> pack_stream(const std::vector<int64_t>& values, int bits) {
  std::vector<uint32_t> words((values.size() * bits + 31) / 32, 0);
  for (size_t k = 0; k < values.size(); ++k) {
    for (int b = 0; b < bits; ++b) {
      const size_t bit = k * bits + b;
      if ((values[k] >> b) & 1) words[bit / 32] |= uint32_t{1} << (bit % 32);
    }
  }
  return std::vector<int32_t>(words.begin(), words.end());
}

at::Tensor int32_matrix(const std::vector<std::vector<int32_t>>& rows) {
  at::Tensor t = at::empty({int64_t(rows.size()), int64_t(rows[0].size())}, at::kInt);
  for (size_t r = 0; r < rows.size(); ++r) {
    std::memcpy(t[r].data_ptr<int32_t>(), rows[r].data(), rows[r].size() * 4);
  }
  return t;
}

void write_config(const TempDir& dir, const std::string& quantization_config) {
  ts_test::write_file(
      dir.file("config.json"),
      "{\"model_type\": \"llama\", \"quantization_config\": " + quantization_config + "}");
}

struct GptqCase {
  int bits;
  int64_t out, in, group;
  bool act_order;
  bool v2;
};

class GptqLayout : public ::testing::TestWithParam<GptqCase> {};

TEST_P(GptqLayout, DequantizesExactly) {
  const auto c = GetParam();
  torch::manual_seed(c.bits * 100 + c.in);
  const int64_t groups = (c.in + c.group - 1) / c.group;
  const int64_t maxq = (1 << c.bits) - 1;
  at::Tensor q = torch::randint(0, maxq + 1, {c.in, c.out}, at::kLong);
  at::Tensor z = torch::randint(1, maxq + 1, {groups, c.out}, at::kLong);
  at::Tensor s = (torch::rand({groups, c.out}) * 0.1 + 0.01).to(at::kHalf);
  at::Tensor g_idx = torch::arange(c.in, at::kLong).div(c.group, "floor");
  if (c.act_order) g_idx = g_idx.index({torch::randperm(c.in)});
  // qweight [in * bits / 32, out]: column o is the bit stream of q[:, o].
  std::vector<std::vector<int32_t>> columns;
  for (int64_t o = 0; o < c.out; ++o) {
    const at::Tensor column = q.select(1, o).contiguous();
    const int64_t* begin = column.data_ptr<int64_t>();
    columns.push_back(pack_stream(std::vector<int64_t>(begin, begin + c.in), c.bits));
  }
  at::Tensor qweight = int32_matrix(columns).t().contiguous();
  std::vector<std::vector<int32_t>> zero_rows;
  for (int64_t g = 0; g < groups; ++g) {
    std::vector<int64_t> stored(c.out);
    for (int64_t o = 0; o < c.out; ++o) {
      stored[o] = (z[g][o].item<int64_t>() - (c.v2 ? 0 : 1)) & maxq;
    }
    zero_rows.push_back(pack_stream(stored, c.bits));
  }
  TempDir dir;
  st::save(st::NamedTensors{{"layer.qweight", qweight},
                            {"layer.qzeros", int32_matrix(zero_rows)},
                            {"layer.scales", s},
                            {"layer.g_idx", g_idx.to(at::kInt)},
                            {"layer.bias", torch::ones({c.out})}},
           dir.file("model.safetensors"));
  write_config(dir, "{\"quant_method\": \"gptq\", \"bits\": " + std::to_string(c.bits) +
                        ", \"group_size\": " + std::to_string(c.group) +
                        ", \"desc_act\": " + (c.act_order ? "true" : "false") +
                        (c.v2 ? ", \"checkpoint_format\": \"gptq_v2\"" : "") + "}");
  st::Checkpoint file(dir.file("model.safetensors"));
  const at::Tensor dense = quant::dequantize(file, "layer.weight", at::kFloat);
  ASSERT_EQ(dense.sizes(), (std::vector<int64_t>{c.out, c.in}));
  at::Tensor expected = at::empty({c.out, c.in});
  for (int64_t i = 0; i < c.in; ++i) {
    const int64_t g = g_idx[i].item<int64_t>();
    for (int64_t o = 0; o < c.out; ++o) {
      expected[o][i] =
          float(q[i][o].item<int64_t>() - z[g][o].item<int64_t>()) * s[g][o].item<at::Half>();
    }
  }
  EXPECT_TRUE(at::equal(dense, expected));
  const at::Tensor bf16 = quant::dequantize(file, "layer.weight");
  EXPECT_EQ(bf16.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(bf16, expected.to(at::kBFloat16)));
}

INSTANTIATE_TEST_SUITE_P(
    Bits, GptqLayout,
    ::testing::Values(GptqCase{4, 16, 256, 128, false, false}, GptqCase{4, 24, 96, 32, true, false},
                      GptqCase{8, 12, 64, 16, false, true}, GptqCase{2, 20, 128, 32, true, true},
                      GptqCase{3, 36, 128, 64, false, false}, GptqCase{3, 16, 96, 40, true, false},
                      GptqCase{4, 8, 72, 32, false, false}));

TEST(Awq, DequantizesExactly) {
  torch::manual_seed(3);
  const int64_t out = 32, in = 80, group = 32, groups = 3;
  const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  at::Tensor q = torch::randint(0, 16, {in, out}, at::kLong);
  at::Tensor z = torch::randint(0, 16, {groups, out}, at::kLong);
  at::Tensor s = (torch::rand({groups, out}) * 0.1 + 0.01).to(at::kHalf);
  auto pack_row = [&](const at::Tensor& row) {
    std::vector<int32_t> words(out / 8);
    for (int64_t w = 0; w < out / 8; ++w) {
      uint32_t word = 0;
      for (int k = 0; k < 8; ++k)
        word |= uint32_t(row[w * 8 + order[k]].item<int64_t>()) << (4 * k);
      words[w] = int32_t(word);
    }
    return words;
  };
  std::vector<std::vector<int32_t>> qrows, zrows;
  for (int64_t i = 0; i < in; ++i) qrows.push_back(pack_row(q[i]));
  for (int64_t g = 0; g < groups; ++g) zrows.push_back(pack_row(z[g]));
  TempDir dir;
  st::save(
      st::NamedTensors{
          {"m.qweight", int32_matrix(qrows)}, {"m.qzeros", int32_matrix(zrows)}, {"m.scales", s}},
      dir.file("model.safetensors"));
  write_config(dir, R"({"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm",
                       "zero_point": true})");
  const at::Tensor dense =
      quant::dequantize(st::Checkpoint(dir.file("model.safetensors")), "m.weight", at::kFloat);
  at::Tensor expected = at::empty({out, in});
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      expected[o][i] = float(q[i][o].item<int64_t>() - z[i / group][o].item<int64_t>()) *
                       s[i / group][o].item<at::Half>();
    }
  }
  EXPECT_TRUE(at::equal(dense, expected));
}

TEST(Fp8, BlockScalesOddShapes) {
  torch::manual_seed(4);
  const int64_t out = 200, in = 300;
  const at::Tensor w8 = (torch::randn({out, in}) * 100).to(at::kFloat8_e4m3fn);
  const at::Tensor scale = torch::rand({2, 3}) + 0.5;
  TempDir dir;
  st::save(st::NamedTensors{{"a.weight", w8}, {"a.weight_scale_inv", scale}},
           dir.file("model.safetensors"));
  write_config(dir, R"({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]})");
  const at::Tensor dense =
      quant::dequantize(st::Checkpoint(dir.file("model.safetensors")), "a.weight", at::kFloat);
  const at::Tensor w = w8.to(at::kFloat);
  at::Tensor expected = at::empty({out, in});
  auto e = expected.accessor<float, 2>();
  auto wa = w.accessor<float, 2>();
  auto sa = scale.accessor<float, 2>();
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i) e[o][i] = wa[o][i] * sa[o / 128][i / 128];
  }
  EXPECT_TRUE(at::equal(dense, expected));
}

TEST(Fp8, PerTensorAndPerChannelWithoutConfig) {
  const at::Tensor w8 = (torch::randn({6, 10}) * 10).to(at::kFloat8_e4m3fn);
  const at::Tensor channel = torch::rand({6, 1}) + 0.5;
  const at::Tensor tensor_scale = torch::tensor({0.25f});
  TempDir dir;
  st::save(st::NamedTensors{{"c.weight", w8},
                            {"c.weight_scale", channel},
                            {"t.weight", w8.clone()},
                            {"t.weight_scale", tensor_scale}},
           dir.file("model.safetensors"));
  st::Checkpoint file(dir.file("model.safetensors"));
  EXPECT_TRUE(
      at::equal(quant::dequantize(file, "c.weight", at::kFloat), w8.to(at::kFloat) * channel));
  EXPECT_TRUE(at::equal(quant::dequantize(file, "t.weight", at::kFloat), w8.to(at::kFloat) * 0.25));
}

const float kFp4[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0f, -0.5, -1, -1.5, -2, -3, -4, -6};

TEST(Mxfp4, DequantizesExactly) {
  torch::manual_seed(5);
  const at::Tensor blocks = torch::randint(0, 256, {2, 3, 4, 16}, at::kByte);
  const at::Tensor scales = torch::randint(110, 140, {2, 3, 4}, at::kByte);
  TempDir dir;
  st::save(
      st::NamedTensors{{"experts.down_proj_blocks", blocks}, {"experts.down_proj_scales", scales}},
      dir.file("model.safetensors"));
  st::Checkpoint file(dir.file("model.safetensors"));
  const at::Tensor dense = quant::dequantize(file, "experts.down_proj", at::kFloat);
  ASSERT_EQ(dense.sizes(), (std::vector<int64_t>{2, 3, 128}));
  auto b = blocks.accessor<uint8_t, 4>();
  auto s = scales.accessor<uint8_t, 3>();
  at::Tensor expected = at::empty({2, 3, 128});
  auto e = expected.accessor<float, 3>();
  for (int x = 0; x < 2; ++x)
    for (int r = 0; r < 3; ++r)
      for (int g = 0; g < 4; ++g)
        for (int k = 0; k < 16; ++k) {
          const int exponent = int(s[x][r][g]) - 127;
          e[x][r][g * 32 + 2 * k] = std::ldexp(kFp4[b[x][r][g][k] & 15], exponent);
          e[x][r][g * 32 + 2 * k + 1] = std::ldexp(kFp4[b[x][r][g][k] >> 4], exponent);
        }
  EXPECT_TRUE(at::equal(dense, expected));
}

TEST(Nvfp4, ModelOptAndCompressedTensorsConventions) {
  torch::manual_seed(6);
  const int64_t out = 4, in = 64;
  const at::Tensor packed = torch::randint(0, 256, {out, in / 2}, at::kByte);
  const at::Tensor scale = (torch::rand({out, in / 16}) * 4 + 0.5).to(at::kFloat8_e4m3fn);
  TempDir dir;
  st::save(st::NamedTensors{{"mo.weight", packed},
                            {"mo.weight_scale", scale},
                            {"mo.weight_scale_2", torch::tensor(0.125f)},
                            {"ct.weight_packed", packed.clone()},
                            {"ct.weight_scale", scale.clone()},
                            {"ct.weight_global_scale", torch::tensor({8.0f})}},
           dir.file("model.safetensors"));
  st::Checkpoint file(dir.file("model.safetensors"));
  auto p = packed.accessor<uint8_t, 2>();
  const at::Tensor s32 = scale.to(at::kFloat);
  auto s = s32.accessor<float, 2>();
  at::Tensor expected = at::empty({out, in});
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      const uint8_t byte = p[o][i / 2];
      expected[o][i] = kFp4[i % 2 ? byte >> 4 : byte & 15] * (s[o][i / 16] * 0.125f);
    }
  const auto all = quant::find_quantized(file, quant::read_config(file));
  ASSERT_EQ(all.size(), 2u);
  EXPECT_TRUE(at::equal(quant::dequantize(file, "mo.weight", at::kFloat), expected));
  EXPECT_TRUE(at::equal(quant::dequantize(file, "ct.weight", at::kFloat), expected));
}

TEST(PackQuantized, AsymmetricOddBits) {
  torch::manual_seed(7);
  const int bits = 3;
  const int64_t out = 10, in = 45, group = 15, groups = 3, offset = 4;
  const at::Tensor q = torch::randint(-4, 4, {out, in}, at::kLong);
  const at::Tensor z = torch::randint(-4, 4, {out, groups}, at::kLong);
  const at::Tensor s = torch::rand({out, groups}).to(at::kBFloat16);
  std::vector<std::vector<int32_t>> rows;
  for (int64_t o = 0; o < out; ++o) {
    std::vector<int64_t> v(in);
    for (int64_t i = 0; i < in; ++i) v[i] = q[o][i].item<int64_t>() + offset;
    rows.push_back(pack_stream(v, bits));
  }
  std::vector<std::vector<int32_t>> zero_columns;  // packed along out, then transposed
  for (int64_t g = 0; g < groups; ++g) {
    std::vector<int64_t> v(out);
    for (int64_t o = 0; o < out; ++o) v[o] = z[o][g].item<int64_t>() + offset;
    zero_columns.push_back(pack_stream(v, bits));
  }
  TempDir dir;
  st::save(st::NamedTensors{{"p.weight_packed", int32_matrix(rows)},
                            {"p.weight_scale", s},
                            {"p.weight_zero_point", int32_matrix(zero_columns).t().contiguous()},
                            {"p.weight_shape", torch::tensor({out, in})}},
           dir.file("model.safetensors"));
  write_config(dir, R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 3,
      "type": "int", "symmetric": false, "strategy": "group", "group_size": 15}}}})");
  const at::Tensor dense =
      quant::dequantize(st::Checkpoint(dir.file("model.safetensors")), "p.weight", at::kFloat);
  at::Tensor expected = at::empty({out, in});
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      expected[o][i] = float(q[o][i].item<int64_t>() - z[o][i / group].item<int64_t>()) *
                       s[o][i / group].item<at::BFloat16>();
  EXPECT_TRUE(at::equal(dense, expected));
}

std::vector<quant::QuantizeOptions> every_scheme() {
  std::vector<quant::QuantizeOptions> all;
  auto add = [&](quant::Scheme scheme, int bits, int64_t group, bool symmetric) {
    quant::QuantizeOptions o;
    o.scheme = scheme;
    o.bits = bits;
    o.group_size = group;
    o.symmetric = symmetric;
    all.push_back(o);
  };
  add(quant::Scheme::kGptq, 4, 32, true);
  add(quant::Scheme::kGptq, 3, 32, false);
  add(quant::Scheme::kAwq, 4, 32, false);
  add(quant::Scheme::kPackQuantized, 4, 32, true);
  add(quant::Scheme::kPackQuantized, 8, 0, false);
  add(quant::Scheme::kNvfp4PackQuantized, 4, 16, true);
  add(quant::Scheme::kNvfp4, 4, 16, true);
  add(quant::Scheme::kMxfp4, 4, 32, true);
  add(quant::Scheme::kFp8, 8, 0, true);
  all.back().block_size = {16, 32};
  add(quant::Scheme::kFp8, 8, 0, true);
  return all;
}

TEST(RoundTrip, SelfDescribingFileNeedsNoConfig) {
  torch::manual_seed(8);
  const at::Tensor w = torch::randn({48, 96});
  std::vector<quant::Quantized> weights;
  int index = 0;
  for (const auto& options : every_scheme()) {
    const std::string name = "layer" + std::to_string(index++) + ".weight";
    weights.push_back(quant::quantize(w, name, options));
  }
  TempDir dir;
  quant::save(weights, {{"norm.weight", torch::ones({96})}}, dir.file("q.safetensors"),
              st::Metadata{{"format", "pt"}});
  st::Checkpoint file(dir.file("q.safetensors"));
  const quant::QuantConfig config = quant::read_config(file);
  ASSERT_EQ(config.weights.size(), weights.size());
  quant::DenseView dense(file, at::kFloat);
  EXPECT_EQ(dense.keys().size(), weights.size() + 1);
  EXPECT_TRUE(dense.contains("norm.weight"));
  EXPECT_FALSE(dense.contains("layer0.qweight"));
  for (const quant::Quantized& q : weights) {
    SCOPED_TRACE(q.weight.name);
    const auto& stored = config.weights.at(q.weight.name);
    EXPECT_EQ(stored.scheme, q.weight.scheme);
    EXPECT_EQ(stored.tensors, q.weight.tensors);
    EXPECT_EQ(stored.shape, q.weight.shape);
    std::map<std::string, at::Tensor> parts;
    for (const auto& [role, name] : q.weight.tensors) {
      for (const auto& [stored_name, tensor] : q.tensors) {
        if (stored_name == name) parts[role] = tensor;
      }
    }
    const at::Tensor from_tensors = quant::dequantize(q.weight, parts, at::kFloat);
    const at::Tensor from_file = dense.tensor(q.weight.name);
    EXPECT_TRUE(at::equal(from_tensors, from_file));
    // Each format's resolution bounds the error: 8-bit formats to a few percent of the largest
    // value (F8_E4M3 keeps 3 mantissa bits); 4-bit ones (16 levels, or FP4's top step of a third
    // of the block maximum) to a fifth of it.
    const double amax = w.abs().max().item<double>();
    const double tolerance = (q.weight.bits >= 8 ? 0.04 : 0.2) * amax;
    EXPECT_LT((from_file - w).abs().max().item<double>(), tolerance);
    EXPECT_LT((from_file - w).abs().mean().item<double>(), tolerance / 3);
  }
}

TEST(RoundTrip, GptqActOrderRecoversGroups) {
  torch::manual_seed(9);
  const at::Tensor w = torch::randn({16, 64});
  quant::QuantizeOptions options;
  options.scheme = quant::Scheme::kGptq;
  options.group_size = 16;
  options.act_order = torch::randperm(64);
  const auto q = quant::quantize(w, "x.weight", options);
  std::map<std::string, at::Tensor> parts;
  for (const auto& [role, name] : q.weight.tensors) {
    for (const auto& [stored, tensor] : q.tensors) {
      if (stored == name) parts[role] = tensor;
    }
  }
  const at::Tensor g_idx = parts.at("g_idx").to(at::kLong);
  EXPECT_FALSE(at::equal(g_idx, torch::arange(64).div(16, "floor")));
  EXPECT_LT((quant::dequantize(q.weight, parts, at::kFloat) - w).abs().max().item<double>(), 0.35);
}

// A 4-bit GPTQ weight [16, 64] in groups of 32, quantized from randn with `seed`.
quant::Quantized small_gptq(uint64_t seed, const std::string& name,
                            bool zero_point_minus_one = true) {
  torch::manual_seed(seed);
  quant::QuantizeOptions options;
  options.scheme = quant::Scheme::kGptq;
  options.group_size = 32;
  options.zero_point_minus_one = zero_point_minus_one;
  return quant::quantize(torch::randn({16, 64}), name, options);
}

// role -> stored tensor of `q`, as dequantize(weight, parts) takes them.
std::map<std::string, at::Tensor> parts_of(const quant::Quantized& q) {
  std::map<std::string, at::Tensor> parts;
  for (const auto& [role, name] : q.weight.tensors) {
    for (const auto& [stored, tensor] : q.tensors) {
      if (stored == name) parts[role] = tensor;
    }
  }
  return parts;
}

TEST(Errors, BadCompanionsAreNamed) {
  const auto q = small_gptq(10, "l.weight");
  TempDir dir;
  write_config(dir, R"({"quant_method": "gptq", "bits": 4, "group_size": 32})");
  // A scale of the wrong shape.
  st::NamedTensors tensors(q.tensors.begin(), q.tensors.end());
  for (auto& [name, tensor] : tensors) {
    if (name == "l.scales") tensor = tensor.narrow(0, 0, 1).contiguous();
  }
  st::save(tensors, dir.file("bad_scale.safetensors"));
  std::string message = ts_test::error_of(
      [&] { quant::dequantize(st::Checkpoint(dir.file("bad_scale.safetensors")), "l.weight"); });
  EXPECT_NE(message.find("'l.scales' (scale) has shape [1, 16], expected [2, 16]"),
            std::string::npos)
      << message;
  // A missing qzeros.
  st::NamedTensors without_zeros;
  for (const auto& [name, tensor] : q.tensors) {
    if (name != "l.qzeros") without_zeros.emplace_back(name, tensor);
  }
  st::save(without_zeros, dir.file("no_zeros.safetensors"));
  message = ts_test::error_of(
      [&] { quant::dequantize(st::Checkpoint(dir.file("no_zeros.safetensors")), "l.weight"); });
  EXPECT_NE(message.find("its zero_point tensor 'l.qzeros' is missing"), std::string::npos)
      << message;
  // Not quantized at all.
  message = ts_test::error_of(
      [&] { quant::dequantize(st::Checkpoint(dir.file("no_zeros.safetensors")), "nothing"); });
  EXPECT_NE(message.find("'nothing' is not a quantized weight"), std::string::npos) << message;
  // A config that disagrees with what is stored.
  write_config(dir, R"({"quant_method": "fp8", "weight_block_size": [128, 128]})");
  message = ts_test::error_of(
      [&] { quant::dequantize(st::Checkpoint(dir.file("bad_scale.safetensors")), "l.weight"); });
  EXPECT_NE(message.find("is stored as gptq, but"), std::string::npos) << message;
}

TEST(Metadata, JsonRoundTripAndStrictness) {
  quant::QuantizedWeight w;
  w.name = "a.weight";
  w.scheme = quant::Scheme::kGptq;
  w.bits = 3;
  w.group_size = 64;
  w.zero_point_minus_one = true;
  w.shape = {32, 128};
  w.tensors = {{"packed", "a.qweight"}, {"scale", "a.scales"}, {"zero_point", "a.qzeros"}};
  const std::string json = quant::metadata_json({w});
  const auto parsed = quant::parse_metadata_json(json, "test");
  ASSERT_EQ(parsed.size(), 1u);
  const auto& back = parsed.at("a.weight");
  EXPECT_EQ(back.bits, 3);
  EXPECT_EQ(back.group_size, 64);
  EXPECT_TRUE(back.zero_point_minus_one);
  EXPECT_EQ(back.tensors, w.tensors);
  EXPECT_EQ(back.shape, w.shape);
  std::string wrong = json;
  wrong.replace(wrong.find("int32_lsb_first"), 15, "int32_msb_first");
  EXPECT_NE(ts_test::error_of([&] {
              quant::parse_metadata_json(wrong, "test");
            }).find("packing 'int32_msb_first' is not gptq's"),
            std::string::npos);
  // The value found is quoted as input is ('...'), whatever it holds (a fuzz finding: a ": :"
  // inside it read as a doubled separator of ours).
  wrong = json;
  wrong.replace(wrong.find("stored_minus_one"), 16, "stored_minu: :ne");
  const std::string message = ts_test::error_of([&] { quant::parse_metadata_json(wrong, "test"); });
  EXPECT_NE(message.find("'zero_point' must be \"none\", \"stored\" or \"stored_minus_one\", "
                         "found 'stored_minu: :ne'"),
            std::string::npos)
      << message;
}

TEST(Device, DequantizesOnCudaLikeOnCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  quant::QuantizeOptions options;
  options.scheme = quant::Scheme::kGptq;
  const auto q = quant::quantize(torch::randn({64, 256}), "x.weight", options);
  TempDir dir;
  quant::save({q}, {}, dir.file("q.safetensors"));
  st::Checkpoint file(dir.file("q.safetensors"));
  const at::Tensor cpu = quant::dequantize(file, "x.weight", at::kBFloat16);
  const at::Tensor cuda = quant::dequantize(file, "x.weight", at::kBFloat16, at::kCUDA);
  EXPECT_TRUE(cuda.is_cuda());
  EXPECT_TRUE(at::equal(cuda.cpu(), cpu));
}

}  // namespace

namespace {

TEST(Checkpoint, ShardedDirectoryWithConfig) {
  // A GPTQ weight whose companions land in different shards, read through a directory: each
  // part comes from the shard the index names.
  torch::manual_seed(11);
  quant::QuantizeOptions options;
  options.scheme = quant::Scheme::kGptq;
  options.group_size = 32;
  const auto q = quant::quantize(torch::randn({32, 64}), "model.proj.weight", options);
  TempDir dir;
  st::NamedTensors tensors(q.tensors.begin(), q.tensors.end());
  tensors.emplace_back("model.norm.weight", torch::ones({64}));
  st::save_sharded(tensors, dir.path(), st::ShardOptions().with_max_shard_size(1200));
  write_config(dir, R"({"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": true})");
  st::Checkpoint checkpoint(dir.path());
  ASSERT_GT(checkpoint.shard_files().size(), 1u);
  EXPECT_TRUE(at::equal(quant::dequantize(checkpoint, "model.proj.weight", at::kFloat),
                        quant::dequantize(q.weight, parts_of(q), at::kFloat)));
  quant::DenseView dense(checkpoint, at::kBFloat16);
  EXPECT_EQ(dense.keys().size(), 2u);
  EXPECT_EQ(dense.tensor("model.proj.weight").scalar_type(), at::kBFloat16);
  EXPECT_EQ(dense.tensor("model.norm.weight").scalar_type(), at::kFloat);
}

// ---- hostile and unusual files (issue 22): 0-dim tensors, integers out of range, foreign
// metadata, config files beside a bare file name.

// Every way of reading a checkpoint's quantization: describe (find_quantized), DenseView and
// dequantize of `name`. Returns the first error ("" if none); a crash fails the whole binary.
std::string quant_error(const std::string& path, const std::string& name) {
  return ts_test::error_of([&] {
    const st::Checkpoint checkpoint(path);
    const quant::QuantConfig config = quant::read_config(checkpoint);
    quant::find_quantized(checkpoint, config);
    quant::DenseView dense(checkpoint, at::kFloat);
    for (const std::string& key : dense.keys()) dense.tensor(key);
    quant::dequantize(checkpoint, name, at::kFloat);
  });
}

TEST(ZeroDim, Fp8WithOneScaleDequantizes) {
  TempDir dir;
  for (const std::string scale : {"x.weight_scale", "x.weight_scale_inv"}) {
    const std::string path = dir.file("fp8" + scale + ".safetensors");
    st::save(st::NamedTensors{{"x.weight", torch::tensor(2.0f).to(at::kFloat8_e4m3fn)},
                              {scale, torch::tensor(3.0f)}},
             path);
    const st::Checkpoint checkpoint(path);
    const auto weight = quant::describe(checkpoint, "x.weight", quant::read_config(checkpoint));
    ASSERT_TRUE(weight.has_value());
    EXPECT_TRUE(weight->shape.empty());
    const at::Tensor dense = quant::dequantize(checkpoint, "x.weight", at::kFloat);
    EXPECT_EQ(dense.dim(), 0);
    EXPECT_EQ(dense.item<float>(), 6.0f);
    quant::DenseView view(checkpoint, at::kFloat);
    EXPECT_EQ(view.keys(), std::vector<std::string>{"x.weight"});
    EXPECT_EQ(view.tensor("x.weight").item<float>(), 6.0f);
  }
  // quantize writes a 0-dim FP8 weight the same way: one scale.
  quant::QuantizeOptions fp8;
  fp8.scheme = quant::Scheme::kFp8;
  const auto q = quant::quantize(torch::tensor(3.0f), "s.weight", fp8);
  EXPECT_TRUE(q.weight.shape.empty());
  EXPECT_NEAR(quant::dequantize(q.weight, parts_of(q), at::kFloat).item<float>(), 3.0f, 1e-5);
  // A 0-dim weight has no output channel: a scale of several values is refused by name.
  const std::string path = dir.file("fp8_many.safetensors");
  st::save(st::NamedTensors{{"x.weight", torch::tensor(2.0f).to(at::kFloat8_e4m3fn)},
                            {"x.weight_scale_inv", torch::ones({4})}},
           path);
  const std::string error = quant_error(path, "x.weight");
  EXPECT_NE(error.find("'x.weight_scale_inv' has shape [4], expected one value (the weight is "
                       "0-dim)"),
            std::string::npos)
      << error;
}

TEST(ZeroDim, EverySchemeRefusesA0DimPartByName) {
  const at::Tensor i32 = torch::tensor(7, at::kInt), u8 = torch::tensor(7, at::kByte);
  struct Case {
    std::string scheme;
    st::NamedTensors tensors;
    std::string weight;
    std::string config;  // quantization_config, "" for none
  };
  const at::Tensor f8 = torch::tensor(1.0f).to(at::kFloat8_e4m3fn);
  const std::vector<Case> cases = {
      {"fp8 block",
       {{"x.weight", f8}, {"x.weight_scale_inv", torch::ones({2, 2})}},
       "x.weight",
       R"({"quant_method": "fp8", "weight_block_size": [128, 128]})"},
      {"gptq",
       {{"x.qweight", i32}, {"x.scales", torch::ones({1, 8})}, {"x.qzeros", i32.clone()}},
       "x.weight",
       R"({"quant_method": "gptq", "bits": 4, "group_size": 128})"},
      {"gptq 0-dim scales",
       {{"x.qweight", torch::zeros({4, 8}, at::kInt)},
        {"x.scales", torch::tensor(1.0f)},
        {"x.qzeros", torch::zeros({1, 1}, at::kInt)}},
       "x.weight",
       ""},
      {"awq",
       {{"x.qweight", i32}, {"x.scales", torch::ones({1, 8})}, {"x.qzeros", i32.clone()}},
       "x.weight",
       R"({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"})"},
      {"pack_quantized",
       {{"x.weight_packed", i32},
        {"x.weight_scale", torch::tensor(1.0f)},
        {"x.weight_shape", torch::tensor({1, 8})}},
       "x.weight",
       ""},
      {"nvfp4_pack_quantized",
       {{"x.weight_packed", u8},
        {"x.weight_scale", torch::tensor(1.0f).to(at::kFloat8_e4m3fn)},
        {"x.weight_global_scale", torch::tensor(1.0f)}},
       "x.weight",
       ""},
      {"mxfp4", {{"x_blocks", u8}, {"x_scales", u8.clone()}}, "x", ""},
      {"nvfp4",
       {{"x.weight", u8},
        {"x.weight_scale", torch::tensor(1.0f).to(at::kFloat8_e4m3fn)},
        {"x.weight_scale_2", torch::tensor(1.0f)}},
       "x.weight",
       ""},
  };
  for (const Case& c : cases) {
    TempDir dir;
    if (!c.config.empty()) write_config(dir, c.config);
    st::save(c.tensors, dir.file("m.safetensors"));
    const std::string error = quant_error(dir.file("m.safetensors"), c.weight);
    EXPECT_EQ(error.rfind("safetensors: ", 0), 0u) << c.scheme << ": " << error;
    EXPECT_EQ(error.find(": :"), std::string::npos) << c.scheme << ": " << error;
  }
  // The same 0-dim shape in our own metadata.
  quant::QuantizedWeight w;
  w.name = "x.weight";
  w.scheme = quant::Scheme::kGptq;
  w.bits = 4;
  w.group_size = 128;
  w.tensors = {{"packed", "x.qweight"}, {"scale", "x.scales"}, {"zero_point", "x.qzeros"}};
  const std::map<std::string, at::Tensor> parts = {
      {"packed", i32}, {"scale", torch::tensor(1.0f)}, {"zero_point", i32}};
  const std::string error =
      ts_test::error_of([&] { quant::dequantize(w, parts, at::kFloat, "parts"); });
  EXPECT_NE(error.find("its dense shape is unknown or 0-dim (gptq needs at least one dimension)"),
            std::string::npos)
      << error;
}

// A valid GPTQ metadata document with one field replaced by `value`.
std::string gptq_metadata_with(const std::string& field, const std::string& value) {
  std::string json =
      R"({"format":"torch_safetensors.quantization","version":1,"weights":{"a.weight":)"
      R"({"scheme":"gptq","bits":4,"group_size":32,"packing":"int32_lsb_first",)"
      R"("zero_point":"stored_minus_one","shape":[16,64],)"
      R"("tensors":{"packed":"a.qweight","scale":"a.scales","zero_point":"a.qzeros"}}}})";
  const std::string key = "\"" + field + "\":";
  const size_t at = json.find(key) + key.size();
  size_t end = at;
  int depth = 0;
  for (; end < json.size(); ++end) {
    const char ch = json[end];
    if (ch == '[' || ch == '{') ++depth;
    if (ch == ']' || ch == '}') {
      if (depth == 0) break;
      --depth;
    }
    if (ch == ',' && depth == 0) break;
  }
  return json.substr(0, at) + value + json.substr(end);
}

TEST(Integers, ConfigValuesAreRangeCheckedNeverTruncated) {
  const auto q = small_gptq(12, "a.weight");
  TempDir dir;
  st::save(st::NamedTensors(q.tensors.begin(), q.tensors.end()), dir.file("m.safetensors"));
  const std::pair<std::string, std::string> cases[] = {
      {R"({"quant_method": "gptq", "bits": 4294967300, "group_size": 32})",
       "'bits' must be an integer in [1, 8], found 4294967300"},
      {R"({"quant_method": "gptq", "bits": 18446744073709551615})",
       "'bits' must be an integer in [1, 8], found 18446744073709551615"},
      {R"({"quant_method": "gptq", "bits": 4.5})",
       "'bits' must be an integer in [1, 8], found 4.5"},
      {R"({"quant_method": "gptq", "bits": 1e300})", "'bits' must be an integer in [1, 8]"},
      {R"({"quant_method": "gptq", "bits": "4"})",
       "'bits' must be an integer in [1, 8], found a string"},
      {R"({"quant_method": "gptq", "bits": -4})", "'bits' must be an integer in [1, 8], found -4"},
      // Beyond 64 bits, simdjson refuses the document itself.
      {R"({"quant_method": "gptq", "bits": 4, "group_size": 1180591620717411303424})",
       "config.json: is not valid JSON: Problem while parsing a number"},
      {R"({"quant_method": "gptq", "bits": 4, "group_size": 9223372036854775808})",
       "'group_size' must be an integer in [-1, 281474976710656], found 9223372036854775808"},
      {R"({"quant_method": "gptq", "bits": 4, "group_size": -2})",
       "'group_size' must be an integer in [-1, 281474976710656], found -2"},
      {R"({"quant_method": "gptq", "bits": 4, "sym": "yes"})", "'sym' must be true or false"},
      {R"({"quant_method": "gptq", "bits": 4, "desc_act": 1})", "'desc_act' must be true or false"},
      {R"({"quant_method": "awq", "w_bit": 4294967300})", "'w_bit' must be an integer in [1, 8]"},
      {R"({"quant_method": "awq", "q_group_size": 9e18})", "'q_group_size' must be an integer"},
      {R"({"quant_method": "fp8", "weight_block_size": [128]})",
       "'weight_block_size' must have 2 elements, found 1"},
      {R"({"quant_method": "fp8", "weight_block_size": [128, 0]})",
       "'weight_block_size' must be an integer in [1, 281474976710656], found 0"},
      {R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups":
          {"group_0": {"weights": {"num_bits": 4294967300}}}})",
       "config_groups 'group_0': weights: 'num_bits' must be an integer in [1, 8], found "
       "4294967300"},
      {R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups":
          {"group_0": {"weights": {"num_bits": 4, "symmetric": 0}}}})",
       "'symmetric' must be true or false, found a number"},
      {R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups":
          {"group_0": {"weights": {"num_bits": 4, "strategy": 3}}}})",
       "'strategy' must be a string, found a number"},
      {R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups":
          {"group_0": {"weights": {"num_bits": 8, "block_structure": [128, -1]}}}})",
       "'block_structure' must be an integer in [1, 281474976710656], found -1"},
  };
  for (const auto& [config, expected] : cases) {
    write_config(dir, config);
    const std::string error = quant_error(dir.file("m.safetensors"), "a.weight");
    EXPECT_TRUE(error.find(dir.file("config.json") + ": 'quantization_config': ") !=
                    std::string::npos ||
                error.find("is not valid JSON") != std::string::npos)
        << config << ": " << error;
    EXPECT_NE(error.find(expected), std::string::npos) << config << ": " << error;
    EXPECT_EQ(error.find(": :"), std::string::npos) << error;
  }
}

TEST(Integers, MetadataValuesAreRangeCheckedNeverTruncated) {
  const std::pair<std::pair<std::string, std::string>, std::string> cases[] = {
      {{"bits", "4294967300"}, "'bits' must be an integer in [1, 8], found 4294967300"},
      {{"bits", "4.0"}, ""},  // a whole float is its integer
      {{"group_size", "-32"}, "'group_size' must be an integer in [0, 281474976710656], found -32"},
      {{"group_size", "true"},
       "'group_size' must be an integer in [0, 281474976710656], found a bool"},
      {{"shape", "[16, -64]"}, "'shape' must be an integer in [0, 281474976710656], found -64"},
      {{"shape", "[16, 36893488147419103232]"},
       "is not valid JSON: Problem while parsing a number"},
      {{"shape", "[16, 1e20]"}, "'shape' must be an integer in [0, 281474976710656], found 1e+20"},
      {{"version", "4294967297"}, "'version' is 4294967297, but this library reads version 1"},
      {{"version", "1.5"}, "'version' must be an integer in [0, 9223372036854775807], found 1.5"},
  };
  for (const auto& [edit, expected] : cases) {
    const std::string json = gptq_metadata_with(edit.first, edit.second);
    const std::string error =
        ts_test::error_of([&] { quant::parse_metadata_json(json, "m.safetensors"); });
    if (expected.empty()) {
      EXPECT_EQ(error, "") << json;
      continue;
    }
    EXPECT_NE(error.find(expected), std::string::npos) << json << ": " << error;
    EXPECT_EQ(error.find(": :"), std::string::npos) << error;
    EXPECT_NE(error.find("m.safetensors: metadata 'torch_safetensors.quantization'"),
              std::string::npos)
        << error;
  }
  EXPECT_EQ(quant::parse_metadata_json(gptq_metadata_with("bits", "4.0"), "m").at("a.weight").bits,
            4);
}

TEST(Metadata, ForeignValuesUnderThePlainKeyAreIgnored) {
  // fracast 0.1.0 (PyPI): fracast/weights/model.safetensors and model.int8.safetensors store
  // these __metadata__ exactly; neither is our document.
  const st::Metadata fracast = {
      {"source_checkpoint_sha256",
       "fb49b536fbd23c6356d0cdefb2014e2ea593246cbbf417c5a4c95c8ac5463372"},
      {"quantization", "none"},
      {"format", "pt"},
      {"model_name", "fracast-0"},
      {"parameter_count", "85001"}};
  st::Metadata fracast_int8 = fracast;
  fracast_int8["quantization"] = "fracast-w8-symmetric-per-output-channel";
  TempDir dir;
  for (const st::Metadata& metadata : {fracast, fracast_int8}) {
    const std::string path = dir.file("model.safetensors");
    st::save(st::NamedTensors{{"core.block.ffn.down.weight", torch::ones({64, 192})},
                              {"core.block.ffn.down.weight.scale", torch::ones({64, 1})},
                              {"core.block.dw_bias", torch::zeros({64})}},
             path, metadata);
    const st::Checkpoint checkpoint(path);
    const quant::QuantConfig config = quant::read_config(checkpoint);
    EXPECT_TRUE(config.weights.empty());
    EXPECT_EQ(config.source, "");
    EXPECT_TRUE(quant::find_quantized(checkpoint, config).empty());
    quant::DenseView dense(checkpoint, at::kFloat);
    EXPECT_EQ(dense.keys().size(), 3u);
    EXPECT_TRUE(at::equal(dense.tensor("core.block.ffn.down.weight"), torch::ones({64, 192})));
    const std::string error = ts_test::error_of(
        [&] { quant::dequantize(checkpoint, "core.block.ffn.down.weight", at::kFloat); });
    EXPECT_NE(error.find("'core.block.ffn.down.weight' is not a quantized weight"),
              std::string::npos)
        << error;
    EXPECT_EQ(error.find("JSON"), std::string::npos) << error;
  }
}

TEST(Metadata, NamespacedKeyAndFilesOf02) {
  const auto q = small_gptq(13, "a.weight");
  TempDir dir;
  // Written now: under the namespaced key, beside another tool's plain "quantization".
  quant::save({q}, {}, dir.file("new.safetensors"), st::Metadata{{"quantization", "none"}});
  const st::File file(dir.file("new.safetensors"));
  EXPECT_EQ(file.metadata()->count("torch_safetensors.quantization"), 1u);
  EXPECT_EQ(file.metadata()->at("quantization"), "none");
  const at::Tensor expected =
      quant::dequantize(st::Checkpoint(dir.file("new.safetensors")), "a.weight", at::kFloat);
  EXPECT_EQ(quant::read_config(st::Checkpoint(dir.file("new.safetensors"))).source,
            dir.file("new.safetensors") + ": __metadata__['torch_safetensors.quantization']");
  // Written by 0.2: our document under the plain key, still read.
  st::save(st::NamedTensors(q.tensors.begin(), q.tensors.end()), dir.file("old.safetensors"),
           st::Metadata{{"quantization", quant::metadata_json({q.weight})}});
  const st::Checkpoint old(dir.file("old.safetensors"));
  EXPECT_EQ(quant::read_config(old).weights.size(), 1u);
  EXPECT_TRUE(at::equal(quant::dequantize(old, "a.weight", at::kFloat), expected));
  // Our document with a bad field under the plain key is ours, so its error is reported.
  st::save(st::NamedTensors(q.tensors.begin(), q.tensors.end()), dir.file("bad.safetensors"),
           st::Metadata{{"quantization", gptq_metadata_with("bits", "4294967300")}});
  const std::string error = quant_error(dir.file("bad.safetensors"), "a.weight");
  EXPECT_NE(error.find("metadata 'quantization': quantized weight 'a.weight': 'bits' must be an "
                       "integer in [1, 8], found 4294967300"),
            std::string::npos)
      << error;
}

// Restores the working directory when it goes out of scope.
class WorkingDirectory {
 public:
  explicit WorkingDirectory(const std::string& path) {
    char buffer[4096];
    EXPECT_NE(::getcwd(buffer, sizeof buffer), nullptr);
    previous_ = buffer;
    EXPECT_EQ(::chdir(path.c_str()), 0);
  }
  ~WorkingDirectory() { EXPECT_EQ(::chdir(previous_.c_str()), 0); }

 private:
  std::string previous_;
};

TEST(ConfigPaths, EverySpellingOfAPathFindsTheConfig) {
  // gptq_v2 stores zero points as they are; read without its config.json, the file would decode
  // as the original format (zero points + 1): wrong values, no error.
  const auto q = small_gptq(14, "a.weight", /*zero_point_minus_one=*/false);
  TempDir dir;
  for (const char* sub : {"/ckpt", "/other", "/linked"}) ::mkdir((dir.path() + sub).c_str(), 0755);
  const std::string folder = dir.path() + "/ckpt";
  st::save(st::NamedTensors(q.tensors.begin(), q.tensors.end()), folder + "/m.safetensors");
  const std::string config = R"({"quantization_config": {"quant_method": "gptq", "bits": 4,
                                 "group_size": 32, "checkpoint_format": "gptq_v2"}})";
  ts_test::write_file(folder + "/config.json", config);
  // As huggingface_hub's snapshots: the file a symlink, its config beside the symlink.
  ts_test::write_file(dir.path() + "/linked/config.json", config);
  ASSERT_EQ(::symlink("../ckpt/m.safetensors", (dir.path() + "/linked/m.safetensors").c_str()), 0);
  ASSERT_EQ(::symlink("ckpt", (dir.path() + "/dirlink").c_str()), 0);
  const at::Tensor expected = quant::dequantize(q.weight, parts_of(q), at::kFloat);
  {
    WorkingDirectory cwd(folder);
    for (const std::string& path : std::vector<std::string>{
             "m.safetensors", "./m.safetensors", "../ckpt/m.safetensors", folder + "/m.safetensors",
             ".", "./", folder, "../linked/m.safetensors", "../linked", "../dirlink",
             "../dirlink/m.safetensors"}) {
      const st::Checkpoint checkpoint(path);
      EXPECT_FALSE(quant::read_config(checkpoint).zero_point_minus_one) << path;
      EXPECT_TRUE(at::equal(quant::dequantize(checkpoint, "a.weight", at::kFloat), expected))
          << path;
    }
  }
  WorkingDirectory cwd(dir.path() + "/other");
  EXPECT_TRUE(
      at::equal(quant::dequantize(st::Checkpoint("../ckpt/m.safetensors"), "a.weight", at::kFloat),
                expected));
}

// compressed-tensors' MX layouts (issue 24): E8M0 scales are 2^(e - 127) (byte 120 is 1/128, never
// 120.0), FP4 low nibble first, FP6 E2M3 four codes in three little-endian bytes.
TEST(Mx, E8m0ScalesArePowersOfTwoNeverTheInteger) {
  const int64_t out = 2, in = 64;
  at::Tensor packed = at::empty({out, in / 2}, at::kByte);
  auto p = packed.accessor<uint8_t, 2>();
  for (int r = 0; r < out; ++r)
    for (int k = 0; k < in / 2; ++k) p[r][k] = uint8_t(((2 * k) & 15) | (((2 * k + 1) & 15) << 4));
  at::Tensor scale = at::full({out, in / 32}, 120, at::kByte);
  scale[1][1] = 127;
  quant::QuantizedWeight weight;
  weight.name = "m.weight";
  weight.scheme = quant::Scheme::kMxfp4PackQuantized;
  weight.bits = 4;
  weight.group_size = 32;
  weight.shape = {out, in};
  weight.tensors = {{"packed", "m.weight_packed"}, {"scale", "m.weight_scale"}};
  for (const at::Tensor& stored : {scale, scale.view(at::kFloat8_e8m0fnu)}) {
    const at::Tensor dense =
        quant::dequantize(weight, {{"packed", packed}, {"scale", stored}}, at::kFloat);
    auto d = dense.accessor<float, 2>();
    for (int r = 0; r < out; ++r)
      for (int i = 0; i < in; ++i) {
        const int exponent = (r == 1 && i >= 32) ? 0 : -7;
        ASSERT_EQ(d[r][i], std::ldexp(kFp4[i & 15], exponent)) << r << ", " << i;
      }
    EXPECT_EQ(d[0][7], 6.0f / 128);
  }
}

TEST(Mx, Fp6E2m3CodesInThreeBytes) {
  // Every one of the 64 codes, four per 24-bit little-endian word.
  const int64_t in = 64;
  at::Tensor packed = at::empty({1, in / 4 * 3}, at::kByte);
  auto p = packed.accessor<uint8_t, 2>();
  for (int w = 0; w < in / 4; ++w) {
    uint32_t word = 0;
    for (int k = 0; k < 4; ++k) word |= uint32_t(4 * w + k) << (6 * k);
    for (int b = 0; b < 3; ++b) p[0][3 * w + b] = uint8_t(word >> (8 * b));
  }
  quant::QuantizedWeight weight;
  weight.name = "m.weight";
  weight.scheme = quant::Scheme::kMxfp6PackQuantized;
  weight.bits = 6;
  weight.group_size = 32;
  weight.shape = {1, in};
  weight.tensors = {{"packed", "m.weight_packed"}, {"scale", "m.weight_scale"}};
  const at::Tensor scale = at::full({1, 2}, 127, at::kByte);
  const at::Tensor dense =
      quant::dequantize(weight, {{"packed", packed}, {"scale", scale}}, at::kFloat);
  auto d = dense.accessor<float, 2>();
  for (int code = 0; code < 64; ++code) {
    const int magnitude = code & 31, e = magnitude >> 3, m = magnitude & 7;
    // E2M3, exponent bias 1: subnormal m/8 x 2^0, else (1 + m/8) x 2^(e - 1).
    const float value = e == 0 ? m / 8.0f : std::ldexp(1.0f + m / 8.0f, e - 1);
    EXPECT_EQ(d[0][code], (code & 32) ? -value : value) << code;
  }
  EXPECT_EQ(d[0][31], 7.5f);
}

TEST(Schemes, EveryNameParsesBack) {
  const auto names = quant::scheme_names();
  EXPECT_EQ(names.size(), 10u);
  for (std::string_view name : names) {
    const auto scheme = quant::parse_scheme(name);
    ASSERT_TRUE(scheme.has_value()) << name;
    EXPECT_EQ(quant::scheme_name(*scheme), name);
  }
  EXPECT_FALSE(quant::parse_scheme("mxfp4-pack-quantized").has_value());
}

}  // namespace
