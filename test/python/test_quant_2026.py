"""The 2026 quantized layouts (issue 24): compressed-tensors' MX formats and pack-quantized at
every width, written by compressed-tensors' own compressors and dequantized exactly as its own
decompressors do; E8M0 scales as powers of two; DeepSeek-V4's native layout; ModelOpt NVFP4's
activation companions hidden from the dense view; clear errors before any byte is read."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file as reference_save_file

import torch_safetensors
from torch_safetensors import quant

FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def write_config(folder, quantization_config, **top):
    (folder / "config.json").write_text(
        json.dumps({"quantization_config": quantization_config, **top}))


def ct_config(fmt, weights):
    return {"quant_method": "compressed-tensors", "format": fmt,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}}


def compress(fmt, args, weight, scale, zero_point=None):
    """compressed-tensors' own compressor for `fmt`, on one module's state dict."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))
    compressor = BaseCompressor.get_value_from_registry(fmt)
    state = {"weight": weight, "weight_scale": scale}
    if zero_point is not None:
        state["weight_zero_point"] = zero_point
    stored = compressor.compress(state, scheme)
    return scheme, compressor, {k: v.contiguous() for k, v in stored.items()}


MX = {
    "mxfp4-pack-quantized": ("mxfp4_pack_quantized", 4),
    "mxfp6-pack-quantized": ("mxfp6_pack_quantized", 6),
    "mxfp8-quantized": ("mxfp8_quantized", 8),
}


@pytest.mark.parametrize("fmt", list(MX))
@pytest.mark.parametrize("with_config", [True, False])
def test_mx_formats_match_compressed_tensors(tmp_path, fmt, with_config):
    scheme_name, bits = MX[fmt]
    torch.manual_seed(bits)
    out, inp = 24, 128
    weight = torch.randn(out, inp) * 3
    amax = weight.view(out, inp // 32, 32).abs().amax(-1)
    largest = {4: 6.0, 6: 7.5, 8: 448.0}[bits]
    scale = 2.0 ** torch.ceil(torch.log2(amax / largest))  # powers of two: E8M0 holds them exactly
    args = dict(num_bits=bits, type="float", strategy="group", group_size=32,
                scale_dtype=torch.uint8)
    scheme, compressor, stored = compress(fmt, args, weight, scale)
    assert stored["weight_scale"].dtype == torch.uint8
    tensors = {f"model.proj.{k}": v for k, v in stored.items()}
    reference_save_file(tensors, str(tmp_path / "model.safetensors"))
    if with_config:
        write_config(tmp_path, ct_config(fmt, {k: v for k, v in args.items() if k != "scale_dtype"}))
    layout = quant.describe(tmp_path)["model.proj.weight"]
    # Without config.json, mxfp4 was reported as nvfp4_pack_quantized (and refused).
    assert (layout.scheme, layout.bits, layout.group_size, layout.shape) == (
        scheme_name, bits, 32, [out, inp])
    theirs = compressor.decompress(stored, scheme)["weight"]
    assert theirs.dtype == torch.bfloat16
    ours = quant.dequantize(tmp_path, "model.proj.weight", torch.bfloat16)
    assert torch.equal(ours, theirs)
    # The products are exact in float32 too.
    assert torch.equal(quant.dequantize(tmp_path, "model.proj.weight", torch.float32),
                       theirs.float())
    view = quant.DenseView(tmp_path)
    assert list(view) == ["model.proj.weight"]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("strategy,symmetric,scale_dtype",
                         [("group", True, torch.float32), ("group", False, torch.bfloat16),
                          ("channel", False, torch.float32)])
def test_pack_quantized_every_width_matches_compressed_tensors(tmp_path, bits, strategy,
                                                               symmetric, scale_dtype):
    """Values straddle 32-bit words at 3, 5, 6 and 7 bits (and the row length 100 of the channel
    case is no multiple of 32 values)."""
    torch.manual_seed(bits)
    out, inp = 20, 128 if strategy == "group" else 100
    groups = inp // 32 if strategy == "group" else 1
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.randint(low, high + 1, (out, inp)).float()
    scale = (torch.rand(out, groups) * 0.2 + 0.01).to(scale_dtype)
    zero = None if symmetric else torch.randint(low, high + 1, (out, groups), dtype=torch.int8)
    g = torch.arange(inp) // (32 if strategy == "group" else inp)
    weight = ((q - (0 if zero is None else zero.float()[:, g])) * scale.float()[:, g]).to(
        scale_dtype)
    args = dict(num_bits=bits, type="int", strategy=strategy, symmetric=symmetric)
    if strategy == "group":
        args["group_size"] = 32
    scheme, compressor, stored = compress("pack-quantized", args, weight, scale, zero)
    reference_save_file({f"l.{k}": v for k, v in stored.items()},
                        str(tmp_path / "model.safetensors"))
    write_config(tmp_path, ct_config("pack-quantized", args))
    theirs = compressor.decompress(stored, scheme)["weight"]
    ours = quant.dequantize(tmp_path, "l.weight", theirs.dtype)
    assert torch.equal(ours, theirs)
    # bf16 output from float32 scales: one rounding of the exact float32 product, as theirs.
    assert torch.equal(quant.dequantize(tmp_path, "l.weight", torch.bfloat16), theirs.bfloat16())


def test_e8m0_scale_is_a_power_of_two_never_the_integer(tmp_path):
    """Scale byte 120 is 2^(120 - 127) = 1/128, not 120.0."""
    out, inp = 4, 64
    codes = torch.arange(out * inp, dtype=torch.int64).remainder(16).view(out, inp)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
    scale = torch.full((out, inp // 32), 120, dtype=torch.uint8)
    scale[1, 1] = 127  # 1.0
    scale[2, 0] = 0  # 2^-127
    reference_save_file({"m.weight_packed": packed, "m.weight_scale": scale},
                        str(tmp_path / "model.safetensors"))
    dense = quant.dequantize(tmp_path, "m.weight", torch.float32)
    factor = torch.full((out, inp // 32), 2.0**-7, dtype=torch.float64)
    factor[1, 1], factor[2, 0] = 1.0, 2.0**-127
    expected = torch.tensor(FP4, dtype=torch.float64)[codes] * factor.repeat_interleave(32, 1)
    assert torch.equal(dense.double(), expected)
    assert dense[0, 7].item() == 6.0 / 128 and dense[0, 7].item() != 6.0 * 120
    # The same byte as DeepSeek-V4's F8_E8M0 block scale of an FP8 weight.
    w8 = torch.full((128, 128), 2.0).to(torch.float8_e4m3fn)
    e8m0 = torch.tensor([[120]], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    reference_save_file({"d.weight": w8, "d.scale": e8m0}, str(tmp_path / "model.safetensors"))
    assert torch.equal(quant.dequantize(tmp_path, "d.weight", torch.float32),
                       torch.full((128, 128), 2.0 / 128))


def deepseek_v4_checkpoint(folder, dense_scale_dtype):
    """Routed experts FP4 in I8 + F8_E8M0 `.scale` per 32; dense F8_E4M3 + `.scale` per 128 x 128
    tile (DeepSeek-V4 inference/model.py `Linear`)."""
    torch.manual_seed(11)
    out, inp = 64, 96
    codes = torch.randint(0, 16, (out, inp))
    expert = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).view(torch.int8)
    expert_scale = torch.randint(118, 136, (out, inp // 32), dtype=torch.uint8)
    w8 = (torch.randn(200, 300) * 20).to(torch.float8_e4m3fn)
    tiles = torch.randint(120, 132, (2, 3), dtype=torch.uint8)
    dense_scale = (tiles.view(torch.float8_e8m0fnu) if dense_scale_dtype == "e8m0"
                   else (2.0 ** (tiles.float() - 127)) * 1.5)
    reference_save_file({
        "layers.0.ffn.experts.0.w1.weight": expert,
        "layers.0.ffn.experts.0.w1.scale": expert_scale.view(torch.float8_e8m0fnu),
        "layers.0.attn.wq_a.weight": w8,
        "layers.0.attn.wq_a.scale": dense_scale,
        "layers.0.attn_norm.weight": torch.ones(8, dtype=torch.bfloat16),
    }, str(folder / "model.safetensors"))
    write_config(folder, {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                          "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
                 expert_dtype="fp4", model_type="deepseek_v4")
    expected_expert = (torch.tensor(FP4)[codes] *
                       (2.0 ** (expert_scale.float() - 127)).repeat_interleave(32, 1))
    scale32 = (2.0 ** (tiles.float() - 127)) if dense_scale_dtype == "e8m0" else dense_scale
    expected_dense = w8.float() * scale32.repeat_interleave(128, 0)[:200].repeat_interleave(
        128, 1)[:, :300]
    return expected_expert, expected_dense


@pytest.mark.parametrize("dense_scale_dtype", ["e8m0", "f32"])
def test_deepseek_v4_native_layout(tmp_path, dense_scale_dtype):
    expected_expert, expected_dense = deepseek_v4_checkpoint(tmp_path, dense_scale_dtype)
    found = quant.describe(tmp_path)
    expert = found["layers.0.ffn.experts.0.w1.weight"]
    assert (expert.scheme, expert.shape, expert.tensors["scale"]) == (
        "mxfp4_pack_quantized", [64, 96], "layers.0.ffn.experts.0.w1.scale")
    dense = found["layers.0.attn.wq_a.weight"]
    assert (dense.scheme, dense.block_size) == ("fp8", [128, 128])
    assert torch.equal(quant.dequantize(tmp_path, "layers.0.ffn.experts.0.w1.weight",
                                        torch.float32), expected_expert)
    assert torch.equal(quant.dequantize(tmp_path, "layers.0.attn.wq_a.weight", torch.float32),
                       expected_dense)
    view = quant.DenseView(tmp_path)
    assert sorted(view) == ["layers.0.attn.wq_a.weight", "layers.0.attn_norm.weight",
                            "layers.0.ffn.experts.0.w1.weight"]
    assert view["layers.0.attn.wq_a.weight"].dtype == torch.bfloat16


def test_deepseek_config_values_are_checked(tmp_path):
    deepseek_v4_checkpoint(tmp_path, "e8m0")
    write_config(tmp_path, {"quant_method": "fp8", "scale_fmt": "ue9m9"}, expert_dtype="fp4")
    with pytest.raises(torch_safetensors.SafetensorError, match="scale_fmt 'ue9m9'"):
        quant.describe(tmp_path)
    write_config(tmp_path, {"quant_method": "fp8"}, expert_dtype="int3")
    with pytest.raises(torch_safetensors.SafetensorError, match="expert_dtype 'int3'"):
        quant.describe(tmp_path)


def test_modelopt_nvfp4_activation_scales_hidden_and_strict_load(tmp_path):
    torch.manual_seed(4)
    packed = torch.randint(0, 256, (6, 32), dtype=torch.uint8)
    scale = (torch.rand(6, 4) * 3 + 0.5).to(torch.float8_e4m3fn)
    reference_save_file({"p.weight": packed, "p.weight_scale": scale,
                         "p.weight_scale_2": torch.tensor(0.5), "p.input_scale": torch.tensor(0.25),
                         "p.bias": torch.zeros(6)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "hf_quant_config.json").write_text(
        json.dumps({"quantization": {"quant_algo": "NVFP4", "group_size": 16}}))
    view = quant.DenseView(tmp_path, dtype=torch.float32)
    assert sorted(view) == ["p.bias", "p.weight"] and "p.input_scale" not in view
    codes = torch.stack([packed & 15, packed >> 4], -1).flatten(-2)
    expected = torch.tensor(FP4)[codes.long()] * (scale.float() * 0.5).repeat_interleave(16, 1)
    model = torch.nn.Module()
    model.p = torch.nn.Linear(64, 6)
    model.load_state_dict(dict(view), strict=True)
    assert torch.equal(model.p.weight.detach(), expected)


@pytest.mark.parametrize("layout", ["mxfp4", "fp8_block", "pack_quantized"])
def test_scale_count_mismatch_names_the_tensor_before_reading(tmp_path, layout):
    if layout == "mxfp4":
        tensors = {"a.weight_packed": torch.zeros(8, 32, dtype=torch.uint8),
                   "a.weight_scale": torch.zeros(8, 3, dtype=torch.uint8)}
        message = r"'a.weight_scale' \(scale\) has shape \[8, 3\], expected \[8, 2\]"
    elif layout == "fp8_block":
        tensors = {"a.weight": torch.zeros(256, 256).to(torch.float8_e4m3fn),
                   "a.scale": torch.ones(2, 3)}
        message = r"'a.scale' \(scale\) has shape \[2, 3\], expected \[2, 2\]"
    else:
        tensors = {"a.weight_packed": torch.zeros(8, 16, dtype=torch.int32),
                   "a.weight_scale": torch.ones(8, 3), "a.weight_shape": torch.tensor([8, 128])}
        message = r"'a.weight_scale' \(scale\) has shape \[8, 3\], expected \[8, 4\]"
        write_config(tmp_path, ct_config("pack-quantized", {"num_bits": 4, "group_size": 32}))
    reference_save_file(tensors, str(tmp_path / "model.safetensors"))
    # describe() reads headers only (and pack-quantized's two-integer weight_shape).
    with pytest.raises(torch_safetensors.SafetensorError, match=message):
        quant.describe(tmp_path)
    with pytest.raises(torch_safetensors.SafetensorError, match=message):
        quant.dequantize(tmp_path, "a.weight")


@pytest.mark.parametrize("scheme", ["mxfp4_pack_quantized", "mxfp6_pack_quantized",
                                    "mxfp8_quantized"])
def test_new_schemes_round_trip_self_describing(tmp_path, scheme):
    torch.manual_seed(9)
    w = torch.randn(32, 128)
    q = quant.quantize(w, scheme, name="layer.weight")
    assert scheme in quant.SCHEMES
    path = tmp_path / "q.safetensors"
    quant.save_file([q], {}, path)
    view = quant.DenseView(path, dtype=torch.float32)
    assert list(view) == ["layer.weight"]
    dense = view["layer.weight"]
    bound = (0.25 if scheme == "mxfp4_pack_quantized" else 0.07) * w.abs().max()
    assert (dense - w).abs().max() <= bound
    # Written under compressed-tensors' names, detected without our metadata too.
    (tmp_path / "plain").mkdir()
    reference_save_file(q.tensors, str(tmp_path / "plain" / "model.safetensors"))
    assert quant.describe(tmp_path / "plain")["layer.weight"].scheme == scheme
    assert torch.equal(quant.dequantize(tmp_path / "plain", "layer.weight", torch.float32), dense)


@pytest.mark.parametrize("fmt", list(MX))
def test_mx_quantize_writes_compressed_tensors_bytes(fmt):
    """Our quantize against compressed-tensors' own compressor given our scales: the same packed
    bytes, ties and saturation included (values placed on E2M3/E2M1 midpoints and past the
    largest value of their block's range)."""
    scheme_name, bits = MX[fmt]
    torch.manual_seed(bits + 1)
    w = torch.randn(8, 128) * 2
    q = quant.quantize(w, scheme_name, name="p.weight")
    packed_name = "p.weight" if bits == 8 else "p.weight_packed"
    scale = 2.0 ** (q.tensors["p.weight_scale"].to(torch.float32) - 127)
    # Midpoints between neighbouring codes (ties), in units of each block's scale.
    ties = torch.tensor({4: [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0],
                         6: [0.0625, 0.1875, 0.9375, 1.0625, 1.9375, 3.875, 7.25],
                         8: [1.0625, 17.0, 300.0]}[bits])
    w[:, 1:1 + len(ties)] = ties * scale[:, :1]
    w[:, 40:40 + len(ties)] = -ties * scale[:, 1:2]
    q = quant.quantize(w, scheme_name, name="p.weight")
    assert torch.equal(2.0 ** (q.tensors["p.weight_scale"].to(torch.float32) - 127), scale)
    args = dict(num_bits=bits, type="float", strategy="group", group_size=32,
                scale_dtype=torch.uint8)
    scheme, compressor, stored = compress(fmt, args, w, scale)
    theirs = stored["weight" if bits == 8 else "weight_packed"]
    ours = q.tensors[packed_name]
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8))
    assert torch.equal(q.tensors["p.weight_scale"], stored["weight_scale"])


@pytest.mark.parametrize("scheme,options", [("gptq", dict(bits=4, group_size=32)),
                                            ("gptq", dict(bits=3, group_size=32)),
                                            ("awq", dict(group_size=32)),
                                            ("pack_quantized", dict(bits=5, group_size=32))])
def test_expert_stacks_3d(tmp_path, scheme, options):
    """[experts, out, in] stacks: every part gains a leading experts dimension; each expert
    dequantizes as its own 2-D layout."""
    torch.manual_seed(13)
    experts = [quant.quantize(torch.randn(64, 64), scheme, name="mlp.experts.weight", **options)
               for _ in range(3)]
    stacked = {name: torch.stack([q.tensors[name] for q in experts]) for name in experts[0].tensors}
    if "mlp.experts.weight_shape" in stacked:
        stacked["mlp.experts.weight_shape"] = torch.tensor([3, 64, 64])
    reference_save_file(stacked, str(tmp_path / "model.safetensors"))
    layout = quant.describe(tmp_path)["mlp.experts.weight"]
    assert (layout.scheme, layout.shape) == (scheme, [3, 64, 64])
    expected = torch.stack([quant.dequantize_tensors(
        q.weight, {r: q.tensors[n] for r, n in q.weight.tensors.items()}, torch.float32)
        for q in experts])
    assert torch.equal(quant.dequantize(tmp_path, "mlp.experts.weight", torch.float32), expected)
    bad = dict(stacked)
    bad["mlp.experts." + ("scales" if scheme != "pack_quantized" else "weight_scale")] = \
        stacked["mlp.experts." + ("scales" if scheme != "pack_quantized" else "weight_scale")][:2]
    reference_save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(torch_safetensors.SafetensorError, match="leading dimension of 3"):
        quant.describe(tmp_path)


def test_pack_quantized_expert_stack_matches_compressed_tensors(tmp_path):
    torch.manual_seed(14)
    experts, out, inp, bits = 2, 8, 96, 3
    q = torch.randint(-4, 4, (experts, out, inp)).float()
    scale = torch.rand(experts, out, inp // 32) * 0.1 + 0.01
    weight = q * scale.repeat_interleave(32, -1)
    args = dict(num_bits=bits, type="int", strategy="group", group_size=32, symmetric=True)
    scheme, compressor, stored = compress("pack-quantized", args, weight, scale)
    assert stored["weight_packed"].shape == (experts, out, math.ceil(inp * bits / 32))
    reference_save_file({f"e.{k}": v for k, v in stored.items()},
                        str(tmp_path / "model.safetensors"))
    write_config(tmp_path, ct_config("pack-quantized", args))
    ours = quant.dequantize(tmp_path, "e.weight", torch.float32)
    assert torch.equal(ours, weight)
    assert torch.equal(ours, compressor.decompress(stored, scheme)["weight"])


def test_save_sharded_is_self_describing(tmp_path):
    torch.manual_seed(15)
    qs = [quant.quantize(torch.randn(64, 128), "gptq", name=f"layers.{i}.proj.weight", bits=4,
                         group_size=32) for i in range(3)]
    others = {"norm.weight": torch.ones(128)}
    quant.save_sharded(qs, others, tmp_path / "out", max_shard_size=6000)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "model.safetensors.index.json" in files and len(files) > 2
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert quant.METADATA_KEY in index["metadata"]
    view = quant.DenseView(tmp_path / "out", dtype=torch.float32)
    assert sorted(view) == ["layers.0.proj.weight", "layers.1.proj.weight",
                            "layers.2.proj.weight", "norm.weight"]
    for q in qs:
        parts = {r: q.tensors[n] for r, n in q.weight.tensors.items()}
        assert torch.equal(view[q.weight.name],
                           quant.dequantize_tensors(q.weight, parts, torch.float32))
    with pytest.raises(torch_safetensors.SafetensorError, match="already has the key"):
        quant.save_sharded(qs, others, tmp_path / "again", metadata={quant.METADATA_KEY: "x"})
