"""torch_safetensors.quant: every layout packed by a plain loop written here from the layout's
description (and, where installed, by compressed-tensors' and transformers' own functions),
dequantized by ours, compared exactly; round trips; self-describing files; clear errors."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file as reference_save_file

import torch_safetensors
from torch_safetensors import quant

FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def pack_stream(values, bits):
    """Integers in [0, 2**bits) as one LSB-first bit stream over int32 words."""
    words = [0] * math.ceil(len(values) * bits / 32)
    for k, value in enumerate(values):
        for b in range(bits):
            if (int(value) >> b) & 1:
                bit = k * bits + b
                words[bit // 32] |= 1 << (bit % 32)
    return [w - (1 << 32) if w >= 1 << 31 else w for w in words]


def int32_rows(rows):
    return torch.tensor(rows, dtype=torch.int32)


def write_config(folder, quantization_config):
    (folder / "config.json").write_text(json.dumps({"quantization_config": quantization_config}))


@pytest.mark.parametrize(
    "bits,out,inp,group,act_order,v2",
    [(4, 16, 256, 128, False, False), (3, 16, 96, 40, True, False), (2, 8, 64, 16, True, True),
     (8, 12, 64, 64, False, True), (4, 8, 72, 32, True, False)],
)
def test_gptq_exact(tmp_path, bits, out, inp, group, act_order, v2):
    torch.manual_seed(bits + inp)
    groups = math.ceil(inp / group)
    maxq = 2**bits - 1
    q = torch.randint(0, maxq + 1, (inp, out))
    z = torch.randint(1, maxq + 1, (groups, out))
    s = (torch.rand(groups, out) * 0.1 + 0.01).half()
    g_idx = torch.arange(inp) // group
    if act_order:
        g_idx = g_idx[torch.randperm(inp)]
    qweight = int32_rows([pack_stream(q[:, o].tolist(), bits) for o in range(out)]).t().contiguous()
    stored_z = (z - (0 if v2 else 1)) & maxq
    qzeros = int32_rows([pack_stream(row.tolist(), bits) for row in stored_z])
    reference_save_file({"l.qweight": qweight, "l.qzeros": qzeros, "l.scales": s,
                         "l.g_idx": g_idx.int()}, str(tmp_path / "model.safetensors"))
    config = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": act_order}
    if v2:
        config["checkpoint_format"] = "gptq_v2"
    write_config(tmp_path, config)
    expected = ((q - z[g_idx]).float() * s[g_idx].float()).t()
    dense = quant.dequantize(tmp_path, "l.weight", torch.float32)
    assert torch.equal(dense, expected)
    assert torch.equal(quant.dequantize(tmp_path, "l.weight"), expected.bfloat16())


def test_awq_exact(tmp_path):
    torch.manual_seed(1)
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    out, inp, group = 24, 64, 32
    q = torch.randint(0, 16, (inp, out))
    z = torch.randint(0, 16, (inp // group, out))
    s = (torch.rand(inp // group, out) * 0.1).half()

    def pack(row):
        words = []
        for w in range(out // 8):
            word = sum(int(row[w * 8 + order[k]]) << (4 * k) for k in range(8))
            words.append(word - (1 << 32) if word >= 1 << 31 else word)
        return words

    reference_save_file({"m.qweight": int32_rows([pack(r) for r in q]),
                         "m.qzeros": int32_rows([pack(r) for r in z]), "m.scales": s},
                        str(tmp_path / "model.safetensors"))
    write_config(tmp_path, {"quant_method": "awq", "bits": 4, "group_size": group,
                            "version": "gemm", "zero_point": True})
    g = torch.arange(inp) // group
    expected = ((q - z[g]).float() * s[g].float()).t()
    assert torch.equal(quant.dequantize(tmp_path, "m.weight", torch.float32), expected)


@pytest.mark.parametrize("rows,cols", [(300, 200), (256, 384)])  # partial and whole blocks
def test_fp8_block_matches_transformers(tmp_path, rows, cols):
    torch.manual_seed(2)
    w8 = (torch.randn(rows, cols) * 50).to(torch.float8_e4m3fn)
    w8.view(torch.uint8)[0, :3] = torch.tensor([0x7F, 0x01, 0x80], dtype=torch.uint8)  # NaN, tiny, -0
    scale = torch.rand(math.ceil(rows / 128), math.ceil(cols / 128)) + 0.5
    reference_save_file({"a.weight": w8, "a.weight_scale_inv": scale},
                        str(tmp_path / "model.safetensors"))
    write_config(tmp_path, {"quant_method": "fp8", "weight_block_size": [128, 128]})
    expected = (w8.float() *
                scale.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols])
    dense = quant.dequantize(tmp_path, "a.weight", torch.float32)
    assert torch.equal(dense.nan_to_num(7.0), expected.nan_to_num(7.0))
    assert torch.isnan(dense[0, 0]) and torch.equal(
        quant.dequantize(tmp_path, "a.weight").nan_to_num(7.0),
        expected.bfloat16().nan_to_num(7.0))
    finegrained = pytest.importorskip("transformers.integrations.finegrained_fp8")
    peer = finegrained._dequantize_fp8_weight(w8, scale, [128, 128], torch.float32)
    assert torch.equal(dense.nan_to_num(7.0), peer.nan_to_num(7.0))


def test_mxfp4_matches_loop_and_transformers(tmp_path):
    torch.manual_seed(3)
    blocks = torch.randint(0, 256, (2, 5, 3, 16), dtype=torch.uint8)
    scales = torch.randint(115, 135, (2, 5, 3), dtype=torch.uint8)
    reference_save_file({"mlp.experts.gate_up_proj_blocks": blocks,
                         "mlp.experts.gate_up_proj_scales": scales},
                        str(tmp_path / "model.safetensors"))
    dense = quant.dequantize(tmp_path, "mlp.experts.gate_up_proj", torch.float32)
    expected = torch.empty(2, 5, 96)
    for e in range(2):
        for r in range(5):
            for g in range(3):
                for k in range(16):
                    byte, factor = int(blocks[e, r, g, k]), 2.0 ** (int(scales[e, r, g]) - 127)
                    expected[e, r, g * 32 + 2 * k] = FP4[byte & 15] * factor
                    expected[e, r, g * 32 + 2 * k + 1] = FP4[byte >> 4] * factor
    assert torch.equal(dense, expected)
    mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    # transformers transposes to its module's [experts, in, out]; ours keeps the stored order.
    peer = mxfp4.convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    assert torch.equal(dense.transpose(1, 2), peer)


def test_nvfp4_modelopt_exact(tmp_path):
    torch.manual_seed(4)
    packed = torch.randint(0, 256, (6, 32), dtype=torch.uint8)
    scale = (torch.rand(6, 4) * 3 + 0.5).to(torch.float8_e4m3fn)
    reference_save_file({"p.weight": packed, "p.weight_scale": scale,
                         "p.weight_scale_2": torch.tensor(0.5)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "hf_quant_config.json").write_text(
        json.dumps({"quantization": {"quant_algo": "NVFP4", "group_size": 16}}))
    codes = torch.stack([packed & 15, packed >> 4], -1).flatten(-2)
    values = torch.tensor(FP4)[codes.long()]
    expected = values * (scale.float() * 0.5).repeat_interleave(16, 1)
    assert torch.equal(quant.dequantize(tmp_path, "p.weight", torch.float32), expected)




def compressed_tensors():
    return pytest.importorskip("compressed_tensors")


@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, True), (8, 0, True), (4, 16, False),
                                                  (3, 16, True), (2, 32, False)])
def test_pack_quantized_matches_compressed_tensors(tmp_path, bits, group, symmetric):
    compressed_tensors()
    from compressed_tensors.compressors.pack_quantized.helpers import (
        pack_to_int32,
        unpack_from_int32,
    )

    torch.manual_seed(bits * 10 + group)
    out, inp = 24, 96
    groups = inp // group if group else 1
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.randint(low, high + 1, (out, inp), dtype=torch.int8)
    scale = torch.rand(out, groups) + 0.1
    tensors = {"x.weight_packed": pack_to_int32(q, bits), "x.weight_scale": scale,
               "x.weight_shape": torch.tensor([out, inp])}
    zero = torch.zeros(out, groups, dtype=torch.int8)
    if not symmetric:
        zero = torch.randint(low, high + 1, (out, groups), dtype=torch.int8)
        tensors["x.weight_zero_point"] = pack_to_int32(zero, bits, packed_dim=0)
    reference_save_file(tensors, str(tmp_path / "model.safetensors"))
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric,
               "strategy": "group" if group else "channel", "group_size": group or None}
    write_config(tmp_path, {"quant_method": "compressed-tensors", "format": "pack-quantized",
                            "config_groups": {"group_0": {"targets": ["Linear"],
                                                          "weights": weights}}})
    dense = quant.dequantize(tmp_path, "x.weight", torch.float32)
    unpacked = unpack_from_int32(tensors["x.weight_packed"], bits, torch.Size([out, inp]))
    assert torch.equal(unpacked, q)
    g = torch.arange(inp) // (group or inp)
    expected = (q.float() - zero.float()[:, g]) * scale[:, g]
    assert torch.equal(dense, expected)


def test_ours_quantized_reads_back_in_compressed_tensors(tmp_path):
    compressed_tensors()
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8

    torch.manual_seed(5)
    w = torch.randn(32, 64)
    q = quant.quantize(w, "pack_quantized", name="l.weight", bits=4, group_size=16)
    packed = q.tensors["l.weight_packed"]
    scale = q.tensors["l.weight_scale"]
    ints = unpack_from_int32(packed, 4, torch.Size([32, 64]))
    theirs = ints.float() * scale.repeat_interleave(16, 1)
    ours = quant.dequantize_tensors(
        q.weight, {role: q.tensors[name] for role, name in q.weight.tensors.items()}, torch.float32)
    assert torch.equal(ours, theirs)
    q4 = quant.quantize(w, "nvfp4_pack_quantized", name="n.weight")
    values = unpack_fp4_from_uint8(q4.tensors["n.weight_packed"], 32, 64, dtype=torch.float32)
    effective = q4.tensors["n.weight_scale"].float() / q4.tensors["n.weight_global_scale"]
    theirs4 = values * effective.repeat_interleave(16, 1)
    ours4 = quant.dequantize_tensors(
        q4.weight, {role: q4.tensors[name] for role, name in q4.weight.tensors.items()},
        torch.float32)
    assert torch.allclose(ours4, theirs4, rtol=1e-6, atol=0)
    assert (ours4 - w).abs().max() <= w.abs().max() / 5


@pytest.mark.parametrize(
    "scheme,options",
    [("gptq", dict(bits=4, group_size=32)), ("gptq", dict(bits=3, group_size=32, symmetric=False)),
     ("gptq", dict(bits=8, group_size=-1, zero_point_minus_one=False)), ("awq", dict(group_size=32)),
     ("pack_quantized", dict(bits=4, group_size=32)), ("pack_quantized", dict(bits=8, group_size=0)),
     ("nvfp4_pack_quantized", {}), ("nvfp4", {}), ("mxfp4", {}),
     ("fp8", dict(block_size=[16, 32])), ("fp8", {})],
)
def test_round_trip_self_describing(tmp_path, scheme, options):
    torch.manual_seed(6)
    w = torch.randn(48, 96)
    q = quant.quantize(w, scheme, name="layer.weight", **options)
    path = tmp_path / "q.safetensors"
    quant.save_file([q], {"norm.weight": torch.ones(96)}, path, metadata={"format": "pt"})
    with torch_safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata[quant.METADATA_KEY])["weights"]["layer.weight"]["scheme"] == scheme
    view = quant.DenseView(path, dtype=torch.float32)
    assert sorted(view) == ["layer.weight", "norm.weight"]
    assert view.is_quantized("layer.weight") and not view.is_quantized("norm.weight")
    assert "__metadata__" in view.config_source
    dense = view["layer.weight"]
    parts = {role: q.tensors[name] for role, name in q.weight.tensors.items()}
    assert torch.equal(dense, quant.dequantize_tensors(q.weight, parts, torch.float32))
    bound = (0.04 if q.weight.bits == 8 else 0.2) * w.abs().max()
    assert (dense - w).abs().max() <= bound
    layout = quant.describe(path)["layer.weight"]
    assert layout.tensors == q.weight.tensors and layout.shape == [48, 96]
    assert quant.parse_metadata_json(quant.metadata_json([layout]))["layer.weight"].bits == layout.bits


@pytest.mark.parametrize("scheme,options", [("gptq", dict(bits=3, group_size=32)),
                                            ("gptq", dict(bits=8, group_size=16)),
                                            ("awq", dict(group_size=64)),
                                            ("pack_quantized", dict(bits=4, group_size=32)),
                                            ("nvfp4", {}), ("mxfp4", {}), ("fp8", {})])
def test_detected_without_any_config(tmp_path, scheme, options):
    """No metadata entry, no config file: names, dtypes and shapes alone give the layout (GPTQ's
    bits from qzeros, group sizes from the scales, GPTQ and AWQ apart by qweight's columns)."""
    torch.manual_seed(7)
    q = quant.quantize(torch.randn(64, 128), scheme, name="blk.weight", **options)
    reference_save_file(q.tensors, str(tmp_path / "model.safetensors"))
    found = quant.describe(tmp_path)
    assert list(found) == ["blk.weight"]
    layout = found["blk.weight"]
    assert (layout.scheme, layout.bits, layout.group_size, layout.shape) == (
        q.weight.scheme, q.weight.bits, q.weight.group_size, q.weight.shape)
    parts = {role: q.tensors[name] for role, name in q.weight.tensors.items()}
    assert torch.equal(quant.dequantize(tmp_path, "blk.weight", torch.float32),
                       quant.dequantize_tensors(q.weight, parts, torch.float32))


def test_errors_name_the_part(tmp_path):
    q = quant.quantize(torch.randn(16, 64), "gptq", name="l.weight", bits=4, group_size=32)
    write_config(tmp_path, {"quant_method": "gptq", "bits": 4, "group_size": 32})
    bad = dict(q.tensors)
    bad["l.scales"] = bad["l.scales"][:1].clone()
    reference_save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(torch_safetensors.SafetensorError,
                       match=r"'l.scales' \(scale\) has shape \[1, 16\], expected \[2, 16\]"):
        quant.dequantize(tmp_path, "l.weight")
    missing = {k: v for k, v in q.tensors.items() if k != "l.qzeros"}
    reference_save_file(missing, str(tmp_path / "model.safetensors"))
    with pytest.raises(torch_safetensors.SafetensorError,
                       match="its zero_point tensor 'l.qzeros' is missing"):
        quant.dequantize(tmp_path, "l.weight")
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        quant.quantize(torch.randn(4, 4), "int3_magic")
    # A broken layout fails when the view opens, naming it; companions are hidden keys.
    with pytest.raises(torch_safetensors.SafetensorError, match="'l.qzeros' is missing"):
        quant.DenseView(tmp_path / "model.safetensors")
    reference_save_file(q.tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError):
        quant.DenseView(tmp_path / "model.safetensors")["l.qweight"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_dequantize_on_cuda(tmp_path):
    w = torch.randn(128, 256)
    for scheme in ["gptq", "awq", "fp8", "mxfp4", "nvfp4"]:
        q = quant.quantize(w, scheme, name="l.weight")
        quant.save_file([q], {}, tmp_path / "q.safetensors")
        cpu = quant.dequantize(tmp_path / "q.safetensors", "l.weight", torch.bfloat16)
        cuda = quant.dequantize(tmp_path / "q.safetensors", "l.weight", torch.bfloat16, "cuda")
        assert cuda.is_cuda and torch.equal(cuda.cpu(), cpu), scheme


# ---- hostile and unusual files (issue 22; issue 21's metadata key)

#: __metadata__ of fracast 0.1.0's fracast/weights/model.safetensors (PyPI), exactly; its
#: model.int8.safetensors differs only in "quantization".
FRACAST = {
    "source_checkpoint_sha256": "fb49b536fbd23c6356d0cdefb2014e2ea593246cbbf417c5a4c95c8ac5463372",
    "quantization": "none",
    "format": "pt",
    "model_name": "fracast-0",
    "parameter_count": "85001",
}


@pytest.mark.parametrize("value", ["none", "fracast-w8-symmetric-per-output-channel"])
def test_foreign_quantization_metadata_is_ignored(tmp_path, value):
    path = tmp_path / "model.safetensors"
    tensors = {"core.block.ffn.down.weight": torch.ones(64, 192),
               "core.block.ffn.down.weight.scale": torch.ones(64, 1),
               "core.block.dw_bias": torch.zeros(64)}
    torch_safetensors.save_file(tensors, path, metadata={**FRACAST, "quantization": value})
    assert quant.describe(path) == {}
    dense = quant.DenseView(path, dtype=torch.float32)
    assert sorted(dense) == sorted(tensors)
    assert torch.equal(dense["core.block.ffn.down.weight"], tensors["core.block.ffn.down.weight"])
    with pytest.raises(torch_safetensors.SafetensorError, match="is not a quantized weight") as e:
        quant.dequantize(path, "core.block.ffn.down.weight")
    assert "JSON" not in str(e.value)


def test_metadata_key_is_namespaced_and_02_files_still_read(tmp_path):
    assert quant.METADATA_KEY == "torch_safetensors.quantization"
    torch.manual_seed(3)
    q = quant.quantize(torch.randn(16, 64), "gptq", name="a.weight", group_size=32)
    quant.save_file([q], {}, tmp_path / "new.safetensors", metadata={"quantization": "none"})
    with torch_safetensors.safe_open(tmp_path / "new.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["quantization"] == "none"
    assert json.loads(metadata[quant.METADATA_KEY])["weights"]["a.weight"]["bits"] == 4
    expected = quant.dequantize(tmp_path / "new.safetensors", "a.weight", torch.float32)
    # 0.2 wrote our document under the plain key.
    torch_safetensors.save_file(q.tensors, tmp_path / "old.safetensors",
                                metadata={"quantization": quant.metadata_json([q.weight])})
    assert torch.equal(quant.dequantize(tmp_path / "old.safetensors", "a.weight", torch.float32),
                       expected)


def test_bare_file_name_finds_its_config(tmp_path, monkeypatch):
    """gptq_v2 read without its config.json would decode with zero points off by one."""
    torch.manual_seed(4)
    q = quant.quantize(torch.randn(16, 64), "gptq", name="a.weight", group_size=32,
                       zero_point_minus_one=False)
    torch_safetensors.save_file(q.tensors, tmp_path / "m.safetensors")
    write_config(tmp_path, {"quant_method": "gptq", "bits": 4, "group_size": 32,
                            "checkpoint_format": "gptq_v2"})
    expected = quant.dequantize_tensors(
        q.weight, {role: q.tensors[name] for role, name in q.weight.tensors.items()}, torch.float32)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert torch.equal(quant.dequantize("../m.safetensors", "a.weight", torch.float32), expected)
    monkeypatch.chdir(tmp_path)
    for spelling in ["m.safetensors", "./m.safetensors", ".", str(tmp_path / "m.safetensors")]:
        assert torch.equal(quant.dequantize(spelling, "a.weight", torch.float32), expected), spelling
        assert quant.DenseView(spelling).config_source.endswith("config.json"), spelling


def test_integers_are_range_checked_never_truncated(tmp_path):
    torch.manual_seed(5)
    q = quant.quantize(torch.randn(16, 64), "gptq", name="a.weight", group_size=32)
    torch_safetensors.save_file(q.tensors, tmp_path / "m.safetensors")
    for config, message in [
        ({"quant_method": "gptq", "bits": 4294967300, "group_size": 32},
         r"'bits' must be an integer in \[1, 8\], found 4294967300"),
        ({"quant_method": "gptq", "bits": 4, "group_size": 3.5},
         r"'group_size' must be an integer in \[-1, 281474976710656\], found 3.5"),
        ({"quant_method": "gptq", "bits": 4, "sym": "true"}, r"'sym' must be true or false"),
    ]:
        write_config(tmp_path, config)
        with pytest.raises(torch_safetensors.SafetensorError, match=message) as e:
            quant.DenseView(tmp_path / "m.safetensors")
        assert ": :" not in str(e.value)
    document = json.loads(quant.metadata_json([q.weight]))
    document["weights"]["a.weight"]["bits"] = 4294967300
    with pytest.raises(torch_safetensors.SafetensorError,
                       match=r"quantized weight 'a.weight': 'bits' must be an integer in \[1, 8\], found 4294967300") as e:
        quant.parse_metadata_json(json.dumps(document))
    assert ": :" not in str(e.value)


def test_zero_dim_fp8_weight(tmp_path):
    for scale in ["x.weight_scale", "x.weight_scale_inv"]:
        path = tmp_path / f"{scale}.safetensors"
        torch_safetensors.save_file(
            {"x.weight": torch.tensor(2.0).to(torch.float8_e4m3fn), scale: torch.tensor(3.0)}, path)
        assert quant.describe(path)["x.weight"].shape == []
        assert quant.dequantize(path, "x.weight", torch.float32).item() == 6.0
        assert quant.DenseView(path, dtype=torch.float32)["x.weight"].item() == 6.0
    path = tmp_path / "many.safetensors"
    torch_safetensors.save_file(
        {"x.weight": torch.tensor(2.0).to(torch.float8_e4m3fn), "x.weight_scale": torch.ones(3)}, path)
    with pytest.raises(torch_safetensors.SafetensorError, match="expected one value"):
        quant.describe(path)
