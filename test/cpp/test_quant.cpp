// Quantized layouts: each packed here by a plain loop written from the layout's description (not
// by the library's packers), dequantized by the library, compared exactly; round trips through
// quantize/save; the self-describing metadata; clear errors for bad companions.
#include <gtest/gtest.h>
#include <torch/torch.h>

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

TEST(Errors, BadCompanionsAreNamed) {
  torch::manual_seed(10);
  quant::QuantizeOptions options;
  options.scheme = quant::Scheme::kGptq;
  options.group_size = 32;
  const auto q = quant::quantize(torch::randn({16, 64}), "l.weight", options);
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
  std::map<std::string, at::Tensor> parts;
  for (const auto& [role, name] : q.weight.tensors) {
    for (const auto& [stored, tensor] : q.tensors) {
      if (stored == name) parts[role] = tensor;
    }
  }
  EXPECT_TRUE(at::equal(quant::dequantize(checkpoint, "model.proj.weight", at::kFloat),
                        quant::dequantize(q.weight, parts, at::kFloat)));
  quant::DenseView dense(checkpoint, at::kBFloat16);
  EXPECT_EQ(dense.keys().size(), 2u);
  EXPECT_EQ(dense.tensor("model.proj.weight").scalar_type(), at::kBFloat16);
  EXPECT_EQ(dense.tensor("model.norm.weight").scalar_type(), at::kFloat);
}

}  // namespace
