"""Parallel single-process saving (issue 25): `save_torch_state_dict` writes its shard files with
several threads (`threads=`, default up to 8), the files are huggingface_hub's own, byte for byte,
whatever the thread count, and it reports what it wrote and its GB/s; a write that fails in one
thread leaves the previous checkpoint as it was and no temporary file behind."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from torch_safetensors import hub as ours

huggingface_hub = pytest.importorskip("huggingface_hub")


def state_dict():
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(12):
        out[f"layers.{i}.weight"] = torch.randn(64, 48 + i, generator=g)
        out[f"layers.{i}.ids"] = torch.randint(-50, 50, (33,), generator=g, dtype=torch.int32)
        out[f"layers.{i}.mask"] = torch.rand(17, generator=g) > 0.5
        out[f"layers.{i}.fp8"] = torch.randn(9, 8, generator=g).to(torch.float8_e4m3fn)
    out["embed.weight"] = torch.randn(300, 64, generator=g).to(torch.bfloat16)
    return out


def files_of(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


@pytest.mark.parametrize("threads", [None, 1, 3, 16])
def test_threads_write_huggingface_hubs_files(tmp_path, threads):
    tensors = state_dict()
    (tmp_path / "theirs").mkdir()
    huggingface_hub.save_torch_state_dict(tensors, tmp_path / "theirs", max_shard_size=20_000,
                                          metadata={"step": "3"})
    report = ours.save_torch_state_dict(tensors, tmp_path / "ours", max_shard_size=20_000,
                                        metadata={"step": "3"}, threads=threads)
    expected = files_of(tmp_path / "theirs")
    assert len(expected) > 5
    assert files_of(tmp_path / "ours") == expected
    # The report (ours; huggingface_hub returns None): the files, every byte counted once.
    assert report.files == sorted(expected)
    assert report.tensor_bytes == sum(t.nbytes for t in tensors.values())
    assert report.bytes_written == sum(len(data) for data in expected.values())
    assert report.seconds > 0
    assert report.gb_per_s == pytest.approx(report.tensor_bytes / report.seconds / 1e9)


def test_a_failed_file_leaves_the_previous_checkpoint(tmp_path):
    """A shard over RLIMIT_FSIZE fails (EFBIG) in its thread while others succeed: the save
    raises naming the file, and the directory holds the previous save, byte for byte."""
    tensors = state_dict()
    ours.save_torch_state_dict(tensors, tmp_path / "ck", max_shard_size=20_000)
    before = files_of(tmp_path / "ck")
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_parallel_save import state_dict
        from torch_safetensors import hub
        bigger = state_dict()
        bigger["embed.weight"] = torch.randn(300, 80).to(torch.bfloat16)  # a 48 KB shard
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, resource.RLIM_INFINITY))
        try:
            hub.save_torch_state_dict(bigger, {str(tmp_path / "ck")!r}, max_shard_size=20_000,
                                      threads=4)
        except Exception as error:
            print(type(error).__name__, error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert "File too large" in result.stdout and ".safetensors" in result.stdout, result
    assert files_of(tmp_path / "ck") == before
