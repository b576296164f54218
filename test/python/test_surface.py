"""The public surface settled in 0.3, from Python: the dtype-on-load rule, torch archives given to
safetensors calls, durable saves, one missing-name error for safe_open and open_checkpoint."""
import shutil
import subprocess
import sys

import pytest
import safetensors
import torch

import torch_safetensors
from torch_safetensors import SafetensorError


def _mixed(path):
    """A checkpoint with an I64 buffer, GPTQ's packed I32 words, a bool mask, an E8M0 block scale,
    F4 values and a float weight."""
    tensors = {
        "position_ids": torch.arange(4096).view(1, 4096),
        "qweight": torch.randint(-2**31, 2**31 - 1, (64, 32), dtype=torch.int32),
        "mask": torch.rand(8) > 0.5,
        "scales": torch.randint(0, 255, (4, 2), dtype=torch.uint8).view(torch.float8_e8m0fnu),
        "f4": torch.randint(0, 255, (4, 4), dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
        "weight": torch.randn(8, 8),
    }
    torch_safetensors.save_file(tensors, path)
    return tensors


def _check_rule(loaded, tensors):
    for name in ("position_ids", "qweight", "mask"):
        assert loaded[name].dtype == tensors[name].dtype, name
        assert torch.equal(loaded[name], tensors[name]), name
    for name in ("scales", "f4"):
        assert loaded[name].dtype == tensors[name].dtype, name
        assert torch.equal(loaded[name].view(torch.uint8), tensors[name].view(torch.uint8)), name
    assert loaded["weight"].dtype == torch.bfloat16
    assert torch.equal(loaded["weight"], tensors["weight"].to(torch.bfloat16))


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_dtype_on_load_casts_floating_tensors_only(tmp_path, backend):
    path = tmp_path / "m.safetensors"
    tensors = _mixed(path)
    with torch_safetensors.safe_open(path, "pt", backend=backend, dtype=torch.bfloat16) as f:
        _check_rule({name: f.get_tensor(name) for name in f.keys()}, tensors)
        assert f.get_slice("qweight")[:4].dtype == torch.int32
    with torch_safetensors.open_checkpoint(path, backend=backend, dtype=torch.bfloat16) as c:
        _check_rule(dict(c.iter_tensors()), tensors)  # streaming
        _check_rule(c.get_tensors(), tensors)
    with pytest.raises((ValueError, TypeError)):
        torch_safetensors.safe_open(path, "pt", dtype=torch.int32)


def test_fp8_is_cast_only_when_asked(tmp_path):
    path = tmp_path / "f8.safetensors"
    fp8 = torch.randn(16).to(torch.float8_e4m3fn)
    torch_safetensors.save_file({"f": fp8}, path)
    with torch_safetensors.safe_open(path, "pt", dtype=torch.bfloat16) as f:
        assert f.get_tensor("f").dtype == torch.float8_e4m3fn
    for handle in (torch_safetensors.safe_open(path, "pt", dtype=torch.bfloat16, cast_fp8=True),
                   torch_safetensors.open_checkpoint(path, dtype=torch.bfloat16, cast_fp8=True)):
        assert torch.equal(handle.get_tensor("f"), fp8.to(torch.bfloat16))


def test_torch_archives_are_recognised(tmp_path):
    zipped = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, zipped)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    for path in (zipped, legacy):
        for call in (lambda: torch_safetensors.load_file(path),
                     lambda: torch_safetensors.safe_open(path, "pt"),
                     lambda: torch_safetensors.open_checkpoint(path)):
            with pytest.raises(SafetensorError) as error:
                call()
            message = str(error.value)
            assert "torch.save" in message and "not safetensors" in message, message
            assert "torch-safetensors convert" in message, message
    # The reference raises its own SafetensorError type for these files: ours is that kind too.
    with pytest.raises(safetensors.SafetensorError):
        safetensors.torch.load_file(zipped)


def test_missing_name_is_one_error(tmp_path):
    path = tmp_path / "w.safetensors"
    torch_safetensors.save_file({"w": torch.ones(2)}, path)
    messages = []
    for handle in (torch_safetensors.safe_open(path, "pt"),
                   torch_safetensors.open_checkpoint(path)):
        with pytest.raises(SafetensorError) as error:
            handle.get_tensor("x")
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert "no tensor named 'x'" in messages[0]


def _fsyncs(code):
    """The fsync(2) calls a Python snippet makes (strace), or None without strace."""
    if shutil.which("strace") is None:
        return None
    result = subprocess.run(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync", sys.executable,
                             "-c", code], capture_output=True, text=True)
    if result.returncode != 0 and "ptrace" in result.stderr.lower():
        return None  # tracing is not permitted here
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if "fsync(" in line]


@pytest.mark.parametrize("durable", [False, True])
def test_durable_saves_fsync_the_file_and_its_directory(tmp_path, durable):
    code = (f"import torch, torch_safetensors as t\n"
            f"t.save_file({{'w': torch.ones(4)}}, {str(tmp_path / 'w.safetensors')!r}, "
            f"durable={durable})\n")
    calls = _fsyncs(code)
    if calls is None:
        pytest.skip("strace is not installed or may not trace here (scripts/setup.sh installs it)")
    # durable: the file, then its directory; otherwise none (as torch.save and the reference).
    assert len(calls) >= 2 if durable else calls == [], calls
    loaded = torch_safetensors.load_file(tmp_path / "w.safetensors")
    assert torch.equal(loaded["w"], torch.ones(4))


def test_convert_durable_fsyncs(tmp_path):
    source = tmp_path / "model.pt"
    torch.save({"w": torch.ones(4)}, source)
    code = ("import sys, torch_safetensors.__main__ as m\n"
            f"sys.exit(m.main(['convert', {str(source)!r}, {str(tmp_path / 'm.safetensors')!r}, "
            "'--durable']))\n")
    calls = _fsyncs(code)
    if calls is None:
        pytest.skip("strace is not installed or may not trace here (scripts/setup.sh installs it)")
    assert len(calls) >= 2, calls
    assert torch.equal(torch_safetensors.load_file(tmp_path / "m.safetensors")["w"], torch.ones(4))
