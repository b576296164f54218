"""Alignment from the command line: `verify --alignment` and `inspect` on files whose offsets were
written by hand, and `realign` (bit-exact, aligned, atomic, in bounded memory)."""

import json
import os
import resource
import signal
import struct
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import torch_safetensors
from torch_safetensors import load_file, safe_open

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(torch_safetensors.__file__)))
ENV = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)


def run_cli(*args, **kwargs):
    """`python -m torch_safetensors ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "torch_safetensors", *map(str, args)], env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
                          **kwargs)


def write_by_hand(path, tensors, metadata=None, header_multiple=8):
    """tensors: (name, dtype, shape, bytes) in file order, packed back to back with no care for
    alignment; the header is padded with spaces to a multiple of `header_multiple`."""
    header, offset = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % header_multiple)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors))
    return 8 + len(text)


def random_bytes(n, seed):
    return bytes(torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.uint8).tolist())


def misaligned(path):
    """Data section at a multiple of 64; 'w1' (F32) at +1 and 'h' (F16) at +1025 are misaligned
    for their dtype; 'big' (F32, 4096 bytes) at +1032 is aligned for it but not on 64."""
    return write_by_hand(path, [
        ("b", "U8", [1], random_bytes(1, 1)),
        ("w1", "F32", [16, 16], random_bytes(1024, 2)),
        ("h", "F16", [3], random_bytes(6, 3)),
        ("pad", "U8", [1], random_bytes(1, 4)),
        ("big", "F32", [1024], random_bytes(4096, 5)),
        ("d", "F64", [2], random_bytes(16, 6)),
    ], metadata={"format": "pt", "note": "by hand"}, header_multiple=64)


NAMES = ["b", "w1", "h", "pad", "big", "d"]
ELEMENT = {"b": 1, "w1": 4, "h": 2, "pad": 1, "big": 4, "d": 8}


def listed(line):
    """'  not aligned to ...: 2 (1.03 KB): w1, h' -> (2, {'w1', 'h'})."""
    count, _, names = line.split(": ", 1)[1].partition(": ")
    return int(count.split()[0]), set(names.split(", ")) if names else set()


def offsets(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, {name: 8 + n + entry["data_offsets"][0] for name, entry in header.items()}


def test_verify_alignment_reports_each_file_and_exits_zero(tmp_path):
    path = tmp_path / "m.safetensors"
    start = misaligned(path)
    result = run_cli("verify", path, "--alignment")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"alignment: m.safetensors: data section at byte {start}, 6 tensors"
    _, at = offsets(path)
    copied = {n for n in NAMES if at[n] % ELEMENT[n]}
    assert copied == {"w1", "h"}
    assert lines[1].startswith("  not aligned to their element size (copied by a zero-copy "
                               "load): 2 (1.03 KB): ")
    assert listed(lines[1]) == (2, copied)
    off64 = {n for n in NAMES if at[n] % 64}
    assert off64 == {"w1", "h", "pad", "big", "d"}
    assert lines[2].startswith("  not aligned to 64 bytes: ")
    assert listed(lines[2]) == (len(off64), off64)
    assert lines[3].startswith("OK: ")

    page = run_cli("verify", path, "--alignment", "4096")
    assert page.returncode == 0
    assert "not aligned to 4096 bytes: 6: " in page.stdout and " and 1 more\n" in page.stdout
    assert "not aligned to 4096" in run_cli("verify", path, "--alignment=4096").stdout
    assert run_cli("verify", "--alignment", path).returncode == 0  # no boundary: 64
    bad = run_cli("verify", path, "--alignment", "48")
    assert bad.returncode == 2 and "power of two" in bad.stderr


def test_verify_alignment_of_a_sharded_folder(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    misaligned(folder / "s1.safetensors")
    torch_safetensors.save_file({"y": torch.ones(3)}, folder / "s2.safetensors")
    weight_map = {n: "s1.safetensors" for n in NAMES}
    weight_map["y"] = "s2.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    result = run_cli("verify", folder, "--alignment")
    assert result.returncode == 0, result.stdout
    assert "alignment: s1.safetensors:" in result.stdout
    assert "alignment: s2.safetensors: data section at byte " in result.stdout
    s2 = result.stdout[result.stdout.index("alignment: s2"):]
    assert "copied by a zero-copy load): 0\n" in s2


def test_inspect_counts_what_a_zero_copy_load_copies(tmp_path):
    path = tmp_path / "m.safetensors"
    misaligned(path)
    report = json.loads(run_cli("inspect", path, "--json").stdout)
    assert report["copied_on_load"] == {"tensors": 2, "bytes": 1024 + 6}
    table = run_cli("inspect", path).stdout
    assert ("zero-copy load: 2 tensor(s) not aligned to their element size would be copied "
            "(1.03 KB)") in table
    only_h = json.loads(run_cli("inspect", path, "--json", "--filter", "h").stdout)
    assert only_h["copied_on_load"] == {"tensors": 1, "bytes": 6}
    aligned = tmp_path / "a.safetensors"
    torch_safetensors.save_file({"x": torch.ones(3), "y": torch.ones(1, dtype=torch.float64)},
                                aligned)
    assert json.loads(run_cli("inspect", aligned, "--json").stdout)["copied_on_load"] == {
        "tensors": 0, "bytes": 0}


@pytest.mark.parametrize("boundary", [64, 4096])
def test_realign_is_bit_exact_and_aligned(tmp_path, boundary):
    path = tmp_path / "m.safetensors"
    misaligned(path)
    before = load_file(path)
    out = tmp_path / "aligned.safetensors"
    result = run_cli("realign", path, out, "--alignment", boundary)
    assert result.returncode == 0, result.stderr
    start, at = offsets(out)
    assert start % boundary == 0
    with safe_open(out, "pt") as f, safe_open(path, "pt") as g:
        assert f.metadata() == g.metadata() == {"format": "pt", "note": "by hand"}
        assert sorted(f.keys()) == sorted(g.keys())
        for name in g.keys():
            assert f.get_slice(name).get_dtype() == g.get_slice(name).get_dtype()
            assert f.get_slice(name).get_shape() == g.get_slice(name).get_shape()
    after = load_file(out)
    reference = safetensors.torch.load_file(out)  # the reference reads the padded header too
    for name, tensor in before.items():
        assert torch.equal(reference[name].view(torch.uint8), tensor.view(torch.uint8)), name
        assert after[name].view(torch.uint8).tolist() == tensor.view(torch.uint8).tolist(), name
        assert at[name] % tensor.element_size() == 0, name
        if tensor.nbytes % boundary == 0:
            assert at[name] % boundary == 0, name
    off = sum(1 for name in before if at[name] % boundary)
    assert f"{off} tensor(s) not on {boundary} bytes" in result.stdout
    check = run_cli("verify", out, "--alignment", boundary).stdout
    assert "copied by a zero-copy load): 0\n" in check
    assert json.loads(run_cli("inspect", out, "--json").stdout)["copied_on_load"]["tensors"] == 0


def test_realign_in_place_and_durable(tmp_path):
    path = tmp_path / "m.safetensors"
    misaligned(path)
    before = {k: v.clone() for k, v in load_file(path).items()}
    assert run_cli("realign", path, "--durable").returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    after = load_file(path)
    assert all(torch.equal(after[k].view(torch.uint8), v.view(torch.uint8))
               for k, v in before.items())
    assert offsets(path)[0] % 64 == 0


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write(2) fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_failing_realign_leaves_the_original_untouched(tmp_path):
    path = tmp_path / "m.safetensors"
    misaligned(path)
    original = path.read_bytes()
    # In place, the new file cannot grow past 4 KiB: the write fails midway.
    result = run_cli("realign", path, preexec_fn=_limit_file_size)
    assert result.returncode == 1
    assert "write failed" in result.stderr and "left untouched" in result.stderr
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    usage = run_cli("realign", path, "--alignment", "100")
    assert usage.returncode == 2 and path.read_bytes() == original


PEAK_RSS = """
import resource, sys
from torch_safetensors import _C
code = _C.cli_main(["realign", sys.argv[1], sys.argv[2]])
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_kib(src, dst):
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, str(src), str(dst)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    code, rss = result.stdout.split()[-2:]
    assert code == "0", result.stderr
    return int(rss)


def test_realign_streams_in_bounded_memory(tmp_path):
    small, big = tmp_path / "small.safetensors", tmp_path / "big.safetensors"
    misaligned(small)
    # 64 MiB behind a 1-byte tensor: every byte of it is misaligned.
    write_by_hand(big, [("b", "U8", [1], b"\x01"),
                        ("w", "F32", [16 << 20], os.urandom(64 << 20))])
    baseline = peak_rss_kib(small, tmp_path / "small2.safetensors")
    peak = peak_rss_kib(big, tmp_path / "big2.safetensors")
    # Two 8 MiB buffers at most (copy, then the byte-for-byte check); a whole-file read is 64 MiB.
    assert peak - baseline < 32 * 1024, (baseline, peak)
    start, at = offsets(tmp_path / "big2.safetensors")
    assert at["w"] % 64 == 0 and start % 64 == 0
    with open(big, "rb") as f, open(tmp_path / "big2.safetensors", "rb") as g:
        f.seek(offsets(big)[1]["w"])
        g.seek(at["w"])
        assert f.read() == g.read(64 << 20)
