"""Validation stricter than the reference (docs/dtypes-and-validation.md), with the installed
`safetensors` as the oracle: control characters in names and metadata, `__metadata__` as a
tensor name, headers around 100,000 bytes, NUL-padded headers and their repair."""

import struct
import subprocess
import sys

import pytest
import safetensors
import safetensors.torch
import torch

import torch_safetensors
from test_cli import run_cli


def header_of(data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    return data[8:8 + n]


@pytest.mark.parametrize("name, escaped", [
    ("a\x00b", "a\\u0000b"), ("tab\t", "tab\\u0009"), ("nl\n", "nl\\u000a"),
    ("del\x7f", "del\\u007f"), ("c1\x85", "c1\\u0085"), ("\x9f", "\\u009f"),
])
def test_control_characters_in_names_are_refused_with_value_error(name, escaped, tmp_path):
    tensors = {name: torch.zeros(2), "fine": torch.ones(1)}
    safetensors.torch.save(tensors)  # the reference writes them
    path = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match=f"out.safetensors: tensor name '{escaped.replace(chr(92), chr(92) * 2)}' "
                                         "holds the control character U\\+"):
        torch_safetensors.save_file(tensors, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no control character"):
        torch_safetensors.save(tensors)


def test_control_characters_in_metadata(tmp_path):
    t = {"x": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"metadata key 'k\\u0000' holds the control character U\+0000"):
        torch_safetensors.save(t, metadata={"k\x00": "v"})
    with pytest.raises(ValueError, match=r"metadata value of 'k': 'v\\u0001' .*tab, newline and carriage"):
        torch_safetensors.save(t, metadata={"k": "v\x01"})
    # The whitespace of text is fine, byte-identical to the reference.
    text = {"config": '{\n\t"a": 1\r\n}'}
    assert torch_safetensors.save(t, metadata=text) == safetensors.torch.save(t, metadata=text)


def test_metadata_as_a_tensor_name_is_refused():
    tensors = {"__metadata__": torch.zeros(2)}
    written = safetensors.torch.save(tensors)  # the reference writes it, then cannot read it
    with pytest.raises(safetensors.SafetensorError):
        safetensors.torch.load(written)
    with pytest.raises(ValueError, match="cannot be named '__metadata__'"):
        torch_safetensors.save(tensors)


def test_files_the_reference_wrote_with_control_characters_load(tmp_path):
    """Accepted on load for compatibility; `verify` reports them (exit 1)."""
    tensors = {"a\x00b": torch.arange(4.0), "\x01\x7f\x85": torch.arange(3, dtype=torch.int16),
               "plain": torch.ones(2)}
    metadata = {"k\x00": "v\x07", "ok": "line\nline"}
    path = tmp_path / "ref.safetensors"
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    loaded = torch_safetensors.load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)
    with torch_safetensors.safe_open(str(path), "pt") as f:
        assert f.metadata() == metadata

    report = run_cli("verify", path)
    assert report.returncode == 1, report.stdout
    problems = [line for line in report.stdout.splitlines() if line.startswith("problem:")]
    assert any("tensor name 'a\\u0000b' holds the control character U+0000" in p for p in problems)
    assert any("tensor name '\\u0001\\u007f\\u0085'" in p for p in problems)
    assert any("metadata key 'k\\u0000'" in p for p in problems)
    assert any("metadata value of 'k\\u0000': 'v\\u0007'" in p for p in problems)
    assert len(problems) == 4, problems  # "plain" and the newline value are fine
    assert "\x00" not in report.stdout
    safetensors.torch.save_file({"plain": torch.ones(2)}, tmp_path / "ok.safetensors",
                                metadata={"ok": "line\nline"})
    assert run_cli("verify", tmp_path / "ok.safetensors").returncode == 0


def metadata_for_json_size(tensors, json_size):
    """Metadata making the reference's JSON (before padding) exactly `json_size` bytes."""
    base = header_of(safetensors.torch.save(tensors, metadata={"p": ""})).rstrip(b" ")
    return {"p": "p" * (json_size - len(base))}


@pytest.mark.parametrize("json_size", range(99_990, 100_011))
def test_headers_around_100000_bytes_round_trip_both_ways(json_size, tmp_path):
    tensors = {"w": torch.arange(6.0), "b": torch.arange(3, dtype=torch.int8)}
    metadata = metadata_for_json_size(tensors, json_size)
    ours = torch_safetensors.save(tensors, metadata=metadata)
    reference = safetensors.torch.save(tensors, metadata=metadata)
    assert ours == reference
    header = header_of(ours)
    assert len(header) == (json_size + 7) // 8 * 8 and len(header.rstrip(b" ")) == json_size
    for data, read in ((ours, safetensors.torch.load), (reference, torch_safetensors.load)):
        loaded = read(data)
        assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    # Unpadded, exactly json_size bytes: both read it.
    exact = struct.pack("<Q", json_size) + header[:json_size] + ours[8 + len(header):]
    path = tmp_path / "exact.safetensors"
    path.write_bytes(exact)
    for lib in (safetensors, torch_safetensors):
        with lib.safe_open(str(path), "pt") as f:
            assert f.metadata() == metadata
            assert torch.equal(f.get_tensor("w"), tensors["w"])


def nul_padded(tmp_path, name="nul.safetensors"):
    tensors = {"w": torch.arange(6.0), "i": torch.arange(5, dtype=torch.int64)}
    good = safetensors.torch.save(tensors, metadata={"format": "pt"})
    header = header_of(good)
    json_text = header.rstrip(b" ")
    padded = json_text + b"\x00" * (16 - len(json_text) % 8)
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(padded)) + padded + good[8 + len(header):])
    return path, tensors, len(json_text), len(padded)


def test_nul_padded_header_is_refused_naming_the_cause(tmp_path):
    path, _, _, _ = nul_padded(tmp_path)
    with pytest.raises(safetensors.SafetensorError):  # the reference refuses it too
        safetensors.torch.load_file(path)
    with pytest.raises(torch_safetensors.SafetensorError,
                       match=r"header is not valid JSON: it is padded with NUL bytes; the format pads with spaces \(0x20\)"
                             r".*`torch-safetensors convert .*nul.safetensors <output>.safetensors`"):
        torch_safetensors.load_file(str(path))
    report = run_cli("verify", path)
    assert report.returncode == 1 and "padded with NUL bytes" in report.stdout


def test_convert_repairs_a_nul_padded_header(tmp_path):
    path, tensors, json_size, padded_size = nul_padded(tmp_path)
    broken = path.read_bytes()
    out = tmp_path / "fixed.safetensors"
    result = run_cli("convert", path, out)
    assert result.returncode == 0, result.stderr
    assert "repaired" in result.stdout
    fixed = out.read_bytes()
    assert fixed == broken[:8 + json_size] + b" " * (padded_size - json_size) + \
        broken[8 + padded_size:]
    for lib in (safetensors, torch_safetensors):
        with lib.safe_open(str(out), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name, t in tensors.items():
                assert torch.equal(f.get_tensor(name), t)
    assert run_cli("verify", out, "--data").returncode == 0
    # A good file has nothing to repair (exit 1, nothing written); shard options do not apply.
    again = run_cli("convert", out, tmp_path / "again.safetensors")
    assert again.returncode == 1 and "nothing to repair" in again.stderr
    assert not (tmp_path / "again.safetensors").exists()
    usage = run_cli("convert", path, tmp_path / "x.safetensors", "--dtype", "F16")
    assert usage.returncode == 2 and "do not apply" in usage.stderr
