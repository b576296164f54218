"""The torch-safetensors command line (cli/, through the extension): convert checkpoints that
torch.save writes during the run and compare with torch.load(weights_only=True); inspect --json,
verify and diff exit codes and output; errors on stderr; the progress bar only on a terminal."""

import json
import os
import pty
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import torch_safetensors

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(torch_safetensors.__file__)))


def run_cli(*args, cwd=None, stderr=subprocess.PIPE):
    """`python -m torch_safetensors ARGS` in a fresh process, as a user runs it."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    return subprocess.run([sys.executable, "-m", "torch_safetensors", *map(str, args)], cwd=cwd,
                          env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300)


def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def same_bits(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape and
            torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                        b.contiguous().reshape(-1).view(torch.uint8)))


def assert_converted_exactly(source, converted):
    """Every tensor torch.load finds is in the converted file, bit for bit (tied names through
    the metadata's dropped -> kept entries)."""
    expected = flatten(torch.load(source, weights_only=True))
    loaded = safetensors.torch.load_file(converted)
    with safetensors.safe_open(converted, "pt") as f:
        metadata = f.metadata() or {}
    assert metadata.get("format") == "pt"
    for name, tensor in expected.items():
        stored = name if name in loaded else metadata[name]
        assert same_bits(loaded[stored], tensor), name
    assert set(loaded) <= set(expected)
    return loaded, metadata


class TiedModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.body = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.arange(4, dtype=torch.int64))


def test_plain_state_dict(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    torch.save(model.state_dict(), tmp_path / "model.bin")
    result = run_cli("convert", tmp_path / "model.bin", tmp_path / "model.safetensors")
    assert result.returncode == 0, result.stderr
    assert "4 tensors" in result.stdout
    assert result.stderr == ""  # not a terminal: no progress bar
    loaded, _ = assert_converted_exactly(tmp_path / "model.bin", tmp_path / "model.safetensors")
    assert sorted(loaded) == sorted(model.state_dict())


def test_nested_dicts_flatten_to_dotted_names(tmp_path):
    checkpoint = {"model": {"encoder": {"w": torch.randn(3, 2)}, "b": torch.randn(2)},
                  "ema": {"w": torch.randn(4)}}
    torch.save(checkpoint, tmp_path / "nested.pt")
    result = run_cli("convert", tmp_path / "nested.pt", tmp_path / "nested.safetensors")
    assert result.returncode == 0, result.stderr
    loaded, _ = assert_converted_exactly(tmp_path / "nested.pt", tmp_path / "nested.safetensors")
    assert sorted(loaded) == ["ema.w", "model.b", "model.encoder.w"]


def test_tied_weights_are_stored_once_as_save_model_does(tmp_path):
    torch.manual_seed(1)
    model = TiedModel()
    torch.save(model.state_dict(), tmp_path / "tied.pth")
    result = run_cli("convert", tmp_path / "tied.pth", tmp_path / "tied.safetensors")
    assert result.returncode == 0, result.stderr
    assert "1 tied duplicates dropped" in result.stdout
    loaded, metadata = assert_converted_exactly(tmp_path / "tied.pth",
                                                tmp_path / "tied.safetensors")
    # The reference's save_model on the same module keeps the same name and metadata.
    safetensors.torch.save_model(model, str(tmp_path / "reference.safetensors"),
                                 metadata={"format": "pt"})
    reference = safetensors.torch.load_file(tmp_path / "reference.safetensors")
    with safetensors.safe_open(tmp_path / "reference.safetensors", "pt") as f:
        assert f.metadata() == metadata
    assert sorted(reference) == sorted(loaded)
    # And the module loads back from it.
    fresh = TiedModel()
    safetensors.torch.load_model(fresh, tmp_path / "tied.safetensors")
    assert torch.equal(fresh.head.weight, model.embed.weight)


def test_bf16_fp8_and_v3_dtypes(tmp_path):
    torch.manual_seed(2)
    state = {
        "bf16": torch.randn(4, 3).to(torch.bfloat16),
        "f16": torch.randn(5).to(torch.float16),
        "e4m3": torch.randn(8, 2).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(7).to(torch.float8_e5m2),
        "u16": torch.randint(0, 60000, (6,), dtype=torch.int32).to(torch.uint16),
        "view": torch.arange(12, dtype=torch.float32)[3:9].view(2, 3),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
    }
    state["transposed"] = torch.randn(3, 5).t()
    torch.save(state, tmp_path / "dtypes.pt")
    result = run_cli("convert", tmp_path / "dtypes.pt", tmp_path / "dtypes.safetensors")
    assert result.returncode == 0, result.stderr
    assert_converted_exactly(tmp_path / "dtypes.pt", tmp_path / "dtypes.safetensors")


def test_sharded_bin_directory(tmp_path):
    torch.manual_seed(3)
    source = tmp_path / "bin"
    source.mkdir()
    tensors = {f"layers.{i}.weight": torch.randn(32, 32) for i in range(6)}
    shards = {"pytorch_model-00001-of-00002.bin": list(tensors)[:3],
              "pytorch_model-00002-of-00002.bin": list(tensors)[3:]}
    weight_map = {}
    for shard, names in shards.items():
        torch.save({n: tensors[n] for n in names}, source / shard)
        weight_map.update({n: shard for n in names})
    (source / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 6 * 32 * 32 * 4}, "weight_map": weight_map}))

    # To one file.
    result = run_cli("convert", source, tmp_path / "one.safetensors")
    assert result.returncode == 0, result.stderr
    loaded = safetensors.torch.load_file(tmp_path / "one.safetensors")
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert same_bits(loaded[name], tensor)

    # To shards of at most ~2 tensors, from the index file itself.
    out = tmp_path / "sharded"
    result = run_cli("convert", source / "pytorch_model.bin.index.json", out,
                     "--max-shard-size", "9KB")
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    for name, tensor in tensors.items():
        shard = safetensors.torch.load_file(out / index["weight_map"][name])
        assert same_bits(shard[name], tensor)


def test_sharded_bin_with_a_shard_disagreeing_with_its_index(tmp_path):
    torch.save({"a": torch.ones(2), "stray": torch.ones(1)}, tmp_path / "s1.bin")
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"a": "s1.bin"}}))
    result = run_cli("convert", tmp_path, tmp_path / "out.safetensors")
    assert result.returncode == 1
    assert "'stray'" in result.stderr and "s1.bin" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_dtype_cast_keeps_ties_and_integers(tmp_path):
    torch.manual_seed(4)
    model = TiedModel()
    torch.save(model.state_dict(), tmp_path / "tied.bin")
    result = run_cli("convert", tmp_path / "tied.bin", tmp_path / "bf16.safetensors",
                     "--dtype", "bf16")
    assert result.returncode == 0, result.stderr
    loaded = safetensors.torch.load_file(tmp_path / "bf16.safetensors")
    for name, tensor in model.state_dict().items():
        if name == "head.weight":
            assert name not in loaded  # still tied after the cast
            continue
        expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert same_bits(loaded[name], expected), name

    bad = run_cli("convert", tmp_path / "tied.bin", tmp_path / "x.safetensors", "--dtype", "I8")
    assert bad.returncode == 2 and "--dtype" in bad.stderr


class Payload:
    """What an attacker puts in a checkpoint: unpickling calls open(marker, 'w')."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.ones(2), "evil": Payload(marker)}, tmp_path / "evil.bin")
    result = run_cli("convert", tmp_path / "evil.bin", tmp_path / "evil.safetensors", "--strict")
    assert result.returncode == 1
    assert "'io.open'" in result.stderr and "evil.bin" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()
    assert result.stdout == ""
    # Without --strict the object is an inert placeholder: skipped and reported, never called.
    result = run_cli("convert", tmp_path / "evil.bin", tmp_path / "evil.safetensors")
    assert result.returncode == 0 and "skipped evil (io.open)\n" in result.stderr
    assert list(safetensors.torch.load_file(tmp_path / "evil.safetensors")) == ["weight"]
    assert not marker.exists()
    # The payload is real: Python's own unpickler runs it.
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content,named", [
    ({"model": {"w": torch.ones(1)}, "epoch": 3}, "'epoch' is the int 3"),
    ({"opt": {"param_groups": [{"lr": 0.1}]}}, "'opt.param_groups' is a list"),
    ({"w": torch.ones(1), 5: torch.ones(1)}, "the int 5"),
])
def test_non_tensor_content_is_an_error_naming_it_with_strict(tmp_path, content, named):
    torch.save(content, tmp_path / "c.pt")
    result = run_cli("convert", tmp_path / "c.pt", tmp_path / "c.safetensors", "--strict")
    assert result.returncode == 1
    assert named in result.stderr


def test_top_level_tensor_is_refused_and_legacy_format_converts(tmp_path):
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    result = run_cli("convert", tmp_path / "tensor.pt", tmp_path / "t.safetensors")
    assert result.returncode == 1 and "expected a dict of tensors" in result.stderr

    # The legacy format (test_convert_legacy.py has the rest).
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    result = run_cli("convert", tmp_path / "legacy.pt", tmp_path / "l.safetensors")
    assert result.returncode == 0, result.stderr
    assert_converted_exactly(tmp_path / "legacy.pt", tmp_path / "l.safetensors")


def make_checkpoint(tmp_path):
    torch.manual_seed(5)
    tensors = {"a.weight": torch.randn(4, 4), "a.bias": torch.randn(4),
               "emb": torch.randn(10, 4).to(torch.bfloat16), "ids": torch.arange(6)}
    path = tmp_path / "ck.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"note": "hi"})
    return path, tensors


def test_inspect_json_matches_the_file(tmp_path):
    path, tensors = make_checkpoint(tmp_path)
    result = run_cli("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metadata"] == {"note": "hi"}
    assert report["files"] == ["ck.safetensors"]
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    rows = {row["name"]: row for row in report["tensors"]}
    assert sorted(rows) == sorted(tensors)
    for name, tensor in tensors.items():
        assert rows[name]["shape"] == list(tensor.shape)
        assert rows[name]["dtype"] == header[name]["dtype"]
        assert rows[name]["offsets"] == header[name]["data_offsets"]
        assert rows[name]["bytes"] == tensor.nbytes
    assert report["total"]["tensors"] == 4
    assert report["total"]["bytes"] == sum(t.nbytes for t in tensors.values())
    assert report["total"]["parameters"] == sum(t.numel() for t in tensors.values())
    assert report["dtypes"]["F32"]["tensors"] == 2

    filtered = json.loads(run_cli("inspect", path, "--json", "--filter", "a.*").stdout)
    assert sorted(row["name"] for row in filtered["tensors"]) == ["a.bias", "a.weight"]

    table = run_cli("inspect", path)
    assert table.returncode == 0
    assert "emb" in table.stdout and "BF16" in table.stdout and "note: hi" in table.stdout


def test_inspect_names_each_tensors_part_in_a_quantized_weight(tmp_path):
    from torch_safetensors import quant

    torch.manual_seed(0)
    weights = [quant.quantize(torch.randn(64, 128), "fp8", "layer.0.weight", block_size=[32, 32]),
               quant.quantize(torch.randn(64, 128), "gptq", "layer.1.weight", bits=4,
                              group_size=32)]
    path = tmp_path / "q.safetensors"
    quant.save_file(weights, others={"norm.weight": torch.ones(4)}, filename=path)
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    record = json.loads(header["__metadata__"][quant.METADATA_KEY])["weights"]
    report = json.loads(run_cli("inspect", path, "--json").stdout)
    rows = {row["name"]: row["quantization"] for row in report["tensors"]}
    expected = {stored: {"scheme": w["scheme"], "role": role, "weight": name}
                for name, w in record.items() for role, stored in w["tensors"].items()}
    assert rows == dict(expected, **{"norm.weight": None})
    assert [(w["name"], w["scheme"], w["bits"], w["shape"]) for w in report["quantized_weights"]] \
        == [("layer.0.weight", "fp8", 8, [64, 128]), ("layer.1.weight", "gptq", 4, [64, 128])]
    table = run_cli("inspect", path).stdout
    assert "gptq zero_point of layer.1.weight" in table
    assert "quantized weights: 1 fp8 1 gptq" in table
    # A plain checkpoint's report has no quantization column or fields.
    plain, _ = make_checkpoint(tmp_path)
    assert "quantization" not in run_cli("inspect", plain).stdout
    assert "quantized_weights" not in json.loads(run_cli("inspect", plain, "--json").stdout)


def test_inspect_sharded_directory(tmp_path):
    tensors = {f"w{i}": torch.randn(64) for i in range(4)}
    torch.save(tensors, tmp_path / "w.bin")
    assert run_cli("convert", tmp_path / "w.bin", tmp_path / "out",
                   "--max-shard-size", "300").returncode == 0
    report = json.loads(run_cli("inspect", tmp_path / "out", "--json").stdout)
    assert report["index"].endswith("model.safetensors.index.json")
    assert len(report["files"]) == 4
    assert {row["shard"] for row in report["tensors"]} == set(report["files"])
    assert report["metadata"]["total_size"] == str(4 * 64 * 4)


def test_verify_exit_codes(tmp_path):
    path, _ = make_checkpoint(tmp_path)
    good = run_cli("verify", path, "--data")
    assert good.returncode == 0 and good.stdout.startswith("OK:")

    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[:-5])
    bad = run_cli("verify", tmp_path / "truncated.safetensors", "--data")
    assert bad.returncode == 1
    problems = [line for line in bad.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and "truncated.safetensors" in problems[0]

    # An index naming a missing shard and a shard with a broken header: one line each.
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "s1.safetensors").write_bytes(data[:-5])
    safetensors.torch.save_file({"y": torch.ones(1)}, shards / "s2.safetensors")
    (shards / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a.weight": "s1.safetensors", "y": "s2.safetensors",
                        "z": "s3.safetensors"}}))
    broken = run_cli("verify", shards)
    assert broken.returncode == 1
    assert "s3.safetensors" in broken.stdout


def test_diff(tmp_path):
    path, tensors = make_checkpoint(tmp_path)
    same = run_cli("diff", path, path)
    assert same.returncode == 0 and same.stdout.startswith("SAME")

    changed = dict(tensors)
    changed["a.bias"] = tensors["a.bias"] + torch.tensor([0, 0.25, 0, -0.5])
    changed["emb"] = tensors["emb"].float()
    changed["ids"] = torch.arange(7)
    del changed["a.weight"]
    changed["extra"] = torch.zeros(1)
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file(changed, other)
    result = run_cli("diff", path, other)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "only in A: a.weight" in lines
    assert "only in B: extra" in lines
    assert "dtype differs: emb: BF16 vs F32" in lines
    assert "shape differs: ids: [6] vs [7]" in lines
    largest = (changed["a.bias"] - tensors["a.bias"]).abs().max().item()
    assert f"values differ: a.bias: max |A - B| = {largest:.6g}" in lines

    tolerated = run_cli("diff", path, other, "--atol", "1")
    assert "values differ" not in tolerated.stdout


def test_diff_packed_dtypes_compare_bytes(tmp_path):
    """F6 loads as its packed bytes (uint8) and F4 as Float4_e2m1fn_x2: neither's torch elements are
    values, so any byte that differs is a difference, whatever --atol says (a one-bit change in a
    packed byte would otherwise read as a difference of 1 in a uint8)."""
    packed = torch.tensor([0x10, 0x20, 0x30], dtype=torch.uint8)
    nudged = torch.tensor([0x10, 0x21, 0x30], dtype=torch.uint8)
    paths = []
    for name, data in (("a", packed), ("b", nudged)):
        path = tmp_path / f"{name}.safetensors"
        torch_safetensors.save_file({"f6": torch_safetensors.RawTensor("F6_E2M3", [4], data),
                                     "f4": torch.tensor([1, 2], dtype=torch.uint8)
                                     .view(torch.float4_e2m1fn_x2) if name == "a" else
                                     torch.tensor([1, 3], dtype=torch.uint8)
                                     .view(torch.float4_e2m1fn_x2)}, path)
        paths.append(path)
    result = run_cli("diff", *paths, "--atol", "100")
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert "values differ: f6: max |A - B| = inf" in lines
    assert "values differ: f4: max |A - B| = inf" in lines


def test_help_usage_errors_and_stderr(tmp_path):
    for command in ("inspect", "verify", "convert", "diff"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and result.stdout.startswith("usage: torch-safetensors")
    top = run_cli("--help")
    assert top.returncode == 0 and "convert" in top.stdout
    assert run_cli().returncode == 2
    unknown = run_cli("frobnicate")
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr
    bad_option = run_cli("inspect", "x", "--nope")
    assert bad_option.returncode == 2 and "--nope" in bad_option.stderr
    missing = run_cli("inspect", tmp_path / "missing.safetensors")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "missing.safetensors" in missing.stderr


def run_under_terminal(*args):
    """Runs the command with stderr on a pseudo-terminal; returns (code, stdout, terminal)."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    process = subprocess.Popen([sys.executable, "-m", "torch_safetensors", *map(str, args)],
                               env=env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    stdout, _ = process.communicate(timeout=300)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return process.returncode, stdout, seen.decode(errors="replace")


def test_progress_bar_only_on_a_terminal(tmp_path):
    torch.save({f"w{i}": torch.randn(256, 256) for i in range(8)}, tmp_path / "big.bin")
    code, stdout, terminal = run_under_terminal("convert", tmp_path / "big.bin",
                                                tmp_path / "big.safetensors")
    assert code == 0 and "8 tensors" in stdout
    assert "convert [" in terminal and "100%" in terminal and "\r" in terminal

    piped = run_cli("convert", tmp_path / "big.bin", tmp_path / "big2.safetensors")
    assert piped.returncode == 0 and piped.stderr == ""

    code, _, terminal = run_under_terminal("verify", tmp_path / "big.safetensors", "--data")
    assert code == 0 and "verify [" in terminal

    # Sharded output: the bar advances shard by shard (save_sharded's on_progress).
    code, stdout, terminal = run_under_terminal("convert", tmp_path / "big.bin", tmp_path / "shards",
                                                "--max-shard-size", "600KB")
    assert code == 0 and "shards and an index" in stdout
    assert "convert [" in terminal and "100%" in terminal and terminal.count("\r") >= 2


def test_console_script_entry_point_is_declared():
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "pyproject.toml")) as f:
        assert 'torch-safetensors = "torch_safetensors.__main__:main"' in f.read()
    from torch_safetensors.__main__ import main
    assert main(["--version"]) == 0


# ---- issue 22: hostile and unusual torch.save files ----

CONVERT_CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                              "adversarial_convert")


def resolved(tensor):
    return tensor.resolve_conj().resolve_neg()


@pytest.mark.parametrize("make", [
    lambda: {"c": torch.randn(3, dtype=torch.cfloat).conj()},
    lambda: {"n": torch._neg_view(torch.randn(2, 3))},
    lambda: {"ct": torch.randn(2, 2, dtype=torch.cfloat).conj().t()},
    # neg and conj at once, and a conjugated tensor tied to its plain base.
    lambda: {"both": torch._neg_view(torch.randn(4, dtype=torch.cfloat).conj())},
    lambda: (lambda z: {"z": z, "zc": z.conj()})(torch.randn(3, dtype=torch.cfloat)),
    lambda: {"i": torch._neg_view(torch.arange(-3, 3, dtype=torch.int32))},
    lambda: {"p": torch.nn.Parameter(torch._neg_view(torch.randn(3)))},
])
def test_negated_and_conjugated_views_convert_bit_for_bit(tmp_path, make):
    torch.manual_seed(3)
    tensors = make()
    torch.save(tensors, tmp_path / "views.pt")
    result = run_cli("convert", tmp_path / "views.pt", tmp_path / "views.safetensors")
    assert result.returncode == 0, result.stderr
    expected = torch.load(tmp_path / "views.pt", weights_only=True)
    assert any(t.is_neg() or t.is_conj() for t in expected.values())
    loaded = safetensors.torch.load_file(tmp_path / "views.safetensors")
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert same_bits(loaded[name], resolved(tensor.detach())), name


def test_adversarial_convert_corpus_matches_torch_load(tmp_path):
    """The corpus's valid cases convert to what torch.load reads, bit for bit."""
    with open(os.path.join(CONVERT_CORPUS, "MANIFEST.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    valid = [name for name, expected in rows if expected == "OK"]
    assert len(valid) >= 8
    for name in valid:
        source = os.path.join(CONVERT_CORPUS, name)
        out = tmp_path / (name + ".safetensors")
        result = run_cli("convert", source, out)
        assert result.returncode == 0, (name, result.stderr)
        expected = torch.load(source, weights_only=True)
        loaded = safetensors.torch.load_file(out)
        for key, tensor in expected.items():
            assert same_bits(loaded[key], resolved(tensor.detach())), (name, key)


def test_local_header_disagreeing_with_central_directory_is_refused(tmp_path):
    """torch.load believes the central directory; a local header that disagrees is an error
    naming the entry, never a raw deflate stream stored as the tensor."""
    source = os.path.join(CONVERT_CORPUS, "zip_local_method_stored_central_deflate.pt")
    assert torch.load(source, weights_only=True)["w"].tolist() == [[0.5, -1.5, 2.25],
                                                                    [0.0, -0.0, 3.0]]
    result = run_cli("convert", source, tmp_path / "out.safetensors")
    assert result.returncode == 1
    assert ("zip entry 'archive/data/0': the local header says compression method 0, the central "
            "directory says 8") in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_expanded_view_is_refused_not_multiplied(tmp_path):
    torch.save({"w": torch.zeros(1).expand(8192, 8192)}, tmp_path / "expand.pt")
    assert os.path.getsize(tmp_path / "expand.pt") < 4096
    result = run_cli("convert", tmp_path / "expand.pt", tmp_path / "out.safetensors")
    assert result.returncode == 1
    assert ("tensor 'w' is a view of size [8192, 8192] and stride [0, 0] naming 268435456 bytes "
            "of a storage of 4 bytes") in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_numeric_options_that_do_not_parse_are_usage_errors(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    safetensors.torch.save_file({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    for command, option, value, expected in [
        ("convert", "--max-shard-size", "99999999999999999999999", "a number of bytes"),
        ("convert", "--max-shard-size", "-5", "a number of bytes"),
        ("convert", "--max-shard-size", "5XB", "a number of bytes"),
        ("convert", "--max-shard-size", "1e30GB", "a number of bytes"),
        ("convert", "--max-shard-size", "", "a number of bytes"),
        ("ptd", "--alignment", "99999999999999999999999", "a number of bytes, a power of two"),
        ("ptd", "--alignment", "0x40", "a number of bytes, a power of two"),
        ("diff", "--atol", "1e999", "a finite non-negative number"),
        ("diff", "--atol", "nan", "a finite non-negative number"),
        ("diff", "--atol", "-1", "a finite non-negative number"),
    ]:
        if command == "diff":
            args = ["diff", tmp_path / "w.safetensors", tmp_path / "w.safetensors", option, value]
        elif command == "ptd":
            args = ["convert", tmp_path / "w.safetensors", tmp_path / "w.ptd", "--to", "ptd",
                    option, value]
        else:
            args = ["convert", tmp_path / "w.pt", tmp_path / "o", option, value]
        result = run_cli(*args)
        assert result.returncode == 2, (option, value, result.stderr)
        assert f"{option} must be {expected}" in result.stderr, result.stderr
        assert f"found '{value}'" in result.stderr
        assert "stoull" not in result.stderr and "stod" not in result.stderr
    # The largest number of bytes still parses.
    ok = run_cli("convert", tmp_path / "w.pt", tmp_path / "big", "--max-shard-size",
                 str(2**64 - 1))
    assert ok.returncode == 0, ok.stderr


def test_convert_errors_name_the_paths_the_user_typed(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    result = run_cli("convert", "w.pt", "no/such/dir/out.safetensors", cwd=tmp_path)
    assert result.returncode == 1
    assert "no/such/dir/out.safetensors" in result.stderr
    assert "<write function>" not in result.stderr and "<stream>" not in result.stderr
    result = run_cli("convert", "missing.pt", "out.safetensors", cwd=tmp_path)
    assert result.returncode == 1 and "missing.pt" in result.stderr


def zipped_checkpoint(pickle_bytes, compression):
    """A torch.save-shaped zip (Python's zipfile) holding `pickle_bytes` as data.pkl."""
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes, compress_type=compression)
        archive.writestr("archive/byteorder", b"little")
    return buffer.getvalue()


def deflated_checkpoint(pickle_bytes):
    import zipfile
    blob = zipped_checkpoint(pickle_bytes, zipfile.ZIP_DEFLATED)
    assert len(blob) < 16 * 1024
    return blob


def stored_checkpoint(pickle_bytes):
    import zipfile
    return zipped_checkpoint(pickle_bytes, zipfile.ZIP_STORED)


def peak_vm_of(args, limit=None):
    """Runs the CLI under RLIMIT_AS = limit; returns (result, its peak virtual memory in bytes)."""
    import resource
    script = ("import resource, sys, runpy\n"
              "sys.argv = ['torch_safetensors'] + sys.argv[1:]\n"
              "try:\n"
              "    runpy.run_module('torch_safetensors', run_name='__main__')\n"
              "finally:\n"
              "    peak = [l for l in open('/proc/self/status') if l.startswith('VmPeak')][0]\n"
              "    sys.stderr.write('\\nVMPEAK ' + peak.split()[1] + '\\n')\n")
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, OMP_NUM_THREADS="1")
    preexec = None
    if limit is not None:
        preexec = lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # noqa: E731
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            timeout=300, preexec_fn=preexec)
    peak = [line for line in result.stderr.splitlines() if line.startswith("VMPEAK ")]
    return result, (int(peak[-1].split()[1]) * 1024 if peak else None)


def test_hostile_inputs_fail_cleanly_under_rlimit_as(tmp_path):
    """Memory is bounded by what the file holds: under an address-space limit of the process's
    own baseline plus 256 MiB, every hostile file is a clean error (exit 1, named), never a
    MemoryError, a bad_alloc or a kill."""
    torch.save({"w": torch.ones(4)}, tmp_path / "small.pt")
    baseline, peak = peak_vm_of(["convert", tmp_path / "small.pt", tmp_path / "small.st"])
    assert baseline.returncode == 0, baseline.stderr
    limit = peak + (256 << 20)
    nones = b"\x80\x02" + b"N" * (4 << 20) + b"."
    dicts = b"\x80\x02" + b"}0" * (2 << 20) + b"}."
    # name: (file, what it may cost above the baseline: its own bound, far below the limit)
    hostile = {
        # 4 KB of compressed NONEs (about 4 MB of opcodes), and '}0' (a dict built and dropped
        # per two bytes): refused by the inflation bound before a byte is unpickled.
        "nones.pt": (deflated_checkpoint(nones), 16 << 20),
        "dicts.pt": (deflated_checkpoint(dicts), 16 << 20),
        # The same 4 MB stored: the stack limit, and the unpickler's budget (48 bytes a byte).
        "nones_stored.pt": (stored_checkpoint(nones), 16 << 20),
        "dicts_stored.pt": (stored_checkpoint(dicts), 48 * len(dicts) + (48 << 20)),
        # An expanded view of 16 GiB from a file of 1.5 KB: refused, nothing materialized.
        "expand.pt": (None, 16 << 20),
    }
    torch.save({"w": torch.zeros(1).expand(65536, 65536)}, tmp_path / "expand.pt")
    for name, (blob, allowance) in hostile.items():
        if blob is not None:
            (tmp_path / name).write_bytes(blob)
        result, used = peak_vm_of(["convert", tmp_path / name, tmp_path / "out.st"], limit)
        assert result.returncode == 1, (name, result.returncode, result.stderr[-2000:])
        assert str(tmp_path / name) in result.stderr, name
        assert "bad_alloc" not in result.stderr and "MemoryError" not in result.stderr, name
        assert used is not None and used - peak < allowance, (name, (used - peak) >> 20)
    # A real file of the same shape still converts under the limit.
    torch.save({f"t{i}": torch.randn(8) for i in range(2000)}, tmp_path / "many.pt")
    result, _ = peak_vm_of(["convert", tmp_path / "many.pt", tmp_path / "many.st"], limit)
    assert result.returncode == 0, result.stderr[-2000:]


def mxfp4_checkpoint(folder):
    """An MXFP4 weight written by compressed-tensors' own compressor (the peer's writer), with
    scales that clip some blocks (2^floor: the block's largest value passes 6 x scale) and not
    others (2^ceil), beside a dense tensor; and the dense original."""
    sys.path.insert(0, os.path.dirname(__file__))
    from test_quant_2026 import compress

    torch.manual_seed(5)
    weight = torch.randn(16, 128) * 3
    amax = weight.view(16, 4, 32).abs().amax(-1)
    exponent = torch.log2(amax / 6.0)
    exponent = torch.where(torch.rand(16, 4) < 0.5, exponent.floor(), exponent.ceil())
    scale = 2.0 ** exponent
    args = dict(num_bits=4, type="float", strategy="group", group_size=32, scale_dtype=torch.uint8)
    scheme, compressor, stored = compress("mxfp4-pack-quantized", args, weight, scale)
    folder.mkdir()
    others = {"model.norm.weight": torch.rand(8), "model.ids": torch.arange(5)}
    safetensors.torch.save_file({**{f"model.proj.{k}": v for k, v in stored.items()}, **others},
                                str(folder / "model.safetensors"))
    theirs = compressor.decompress(stored, scheme)["weight"]  # the peer's reader, BF16
    largest = (6.0 * scale).repeat_interleave(32, 1)
    dense_values = compressor.decompress(stored, scheme)["weight"].float()
    clipped = (dense_values.abs() == largest) & (weight.abs() > dense_values.abs())
    return weight, theirs, others, int(clipped.view(-1, 32).any(1).sum())


def test_diff_dequantize_measures_quantized_weights_against_dense(tmp_path):
    weight, theirs, others, saturated = mxfp4_checkpoint(tmp_path / "q")
    assert 0 < saturated < 64  # some blocks clipped, not all
    dense = tmp_path / "dense.safetensors"
    safetensors.torch.save_file({"model.proj.weight": weight, **others}, dense)
    error = theirs.double() - weight.double()
    expected = (f"quantized: model.proj.weight (mxfp4_pack_quantized vs dense): max |A - B| = "
                f"{error.abs().max().item():.6g}, NMSE = "
                f"{(error.square().sum() / weight.double().square().sum()).item():.6g}, "
                f"saturated blocks {saturated} of 64")
    result = run_cli("diff", tmp_path / "q", dense, "--dequantize")
    assert result.returncode == 1, result
    assert expected in result.stdout.splitlines(), result.stdout
    assert "DIFFERENT: 3 tensors compared, 1 difference(s)" in result.stdout
    # Against itself: every value equal, nothing saturated (the reference is the same values).
    same = run_cli("diff", tmp_path / "q", tmp_path / "q", "--dequantize")
    assert same.returncode == 0, same.stdout
    assert ("quantized: model.proj.weight (mxfp4_pack_quantized vs mxfp4_pack_quantized): "
            "max |A - B| = 0, NMSE = 0, saturated blocks 0 of 64") in same.stdout
    # Without --dequantize the stored names differ.
    plain = run_cli("diff", tmp_path / "q", dense)
    assert "only in A: model.proj.weight_packed" in plain.stdout.splitlines()


def test_convert_dequantize_writes_the_dense_checkpoint(tmp_path):
    weight, theirs, others, _ = mxfp4_checkpoint(tmp_path / "q")
    result = run_cli("convert", tmp_path / "q", tmp_path / "dense.safetensors", "--dequantize")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"dequantized {tmp_path / 'q'} -> {tmp_path / 'dense.safetensors'}: 1 quantized weights "
        "to BF16, 3 tensors")
    loaded = safetensors.torch.load_file(tmp_path / "dense.safetensors")
    assert loaded.keys() == {"model.proj.weight", *others}
    assert torch.equal(loaded["model.proj.weight"], theirs)  # the peer's own decompression
    for name, tensor in others.items():
        assert torch.equal(loaded[name], tensor)
    # Sharded, in F32: huggingface_hub's files of the dense state dict, byte for byte.
    huggingface_hub = pytest.importorskip("huggingface_hub")
    result = run_cli("convert", tmp_path / "q", tmp_path / "sharded", "--dequantize", "--dtype",
                     "F32", "--max-shard-size", "4KB")
    assert result.returncode == 0, result.stderr
    # In the dense view's order (the checkpoint's), which the split follows.
    values = {"model.proj.weight": theirs.float(), **others}
    dense = {name: values[name] for name in torch_safetensors.quant.DenseView(tmp_path / "q")}
    (tmp_path / "hub").mkdir()
    huggingface_hub.save_torch_state_dict(dense, tmp_path / "hub", max_shard_size="4KB")
    ours = sorted(os.listdir(tmp_path / "sharded"))
    assert ours == sorted(os.listdir(tmp_path / "hub")) and len(ours) > 2
    for name in ours:
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "hub" / name).read_bytes()
    # A dense input has nothing to dequantize but converts as it is; bad options are usage errors.
    bad = run_cli("convert", tmp_path / "q", tmp_path / "x.ptd", "--dequantize", "--to", "ptd")
    assert bad.returncode == 2 and "--dequantize writes safetensors" in bad.stderr
