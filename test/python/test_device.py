"""Device-aware loading from Python: dtype on load, the populated mapping, streaming with
open_checkpoint(...).iter_tensors(), the staging ring (forced on the CPU), and CUDA where a GPU
is present (skipped elsewhere)."""

import threading

import pytest
import torch

import torch_safetensors
from torch_safetensors import hub
from torch_safetensors._extension import _C

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def sharded(tmp_path):
    torch.manual_seed(0)
    tensors = {f"layers.{i}.weight": torch.randn(128, 64 * (i + 1)).to(torch.bfloat16)
               for i in range(6)}
    tensors["norm"] = torch.randn(64)
    hub.save_torch_state_dict(tensors, tmp_path, max_shard_size="60KB")
    return tmp_path, tensors


def file_order(directory):
    with torch_safetensors.open_checkpoint(directory) as ckpt:
        shards = ckpt.shard_files
    order = []
    for shard in shards:
        with torch_safetensors.safe_open(directory / shard, "pt") as f:
            order += f.offset_keys()
    return order


def test_dtype_on_load(tmp_path):
    w = torch.randn(32, 16).to(torch.bfloat16)
    q = torch.randn(8, 8).to(torch.float8_e4m3fn)
    path = tmp_path / "m.safetensors"
    torch_safetensors.save_file({"w": w, "q": q}, path)
    for backend in ["mmap", "pread"]:
        with torch_safetensors.safe_open(path, "pt", backend=backend, dtype=torch.float16) as f:
            loaded = f.get_tensors()
        assert torch.equal(loaded["w"], w.to(torch.float16))
        assert torch.equal(loaded["q"], q.to(torch.float16))
    with torch_safetensors.safe_open(path, "pt", dtype=torch.bfloat16) as f:
        assert torch.equal(f.get_slice("q")[2:4], q[2:4].to(torch.bfloat16))
    with pytest.raises(TypeError):
        torch_safetensors.safe_open(path, "pt", dtype="float16")


def test_populate_keeps_zero_copy(tmp_path):
    w = torch.randn(1 << 18)
    path = tmp_path / "w.safetensors"
    torch_safetensors.save_file({"w": w}, path)
    with torch_safetensors.safe_open(path, "pt", populate=True) as f:
        loaded = f.get_tensors()
    assert torch.equal(loaded["w"], w)
    loaded["w"][0] = 7  # private copy-on-write pages: the file keeps its bytes
    assert torch.equal(torch_safetensors.load_file(path)["w"], w)


def test_iter_tensors_in_file_order(sharded):
    directory, tensors = sharded
    for backend in ["mmap", "pread"]:
        with torch_safetensors.open_checkpoint(directory, backend=backend,
                                               staging_bytes=20_000) as ckpt:
            seen = [(name, t) for name, t in ckpt.iter_tensors()]
        assert [name for name, _ in seen] == file_order(directory)
        for name, t in seen:
            assert torch.equal(t, tensors[name]), name


def test_iter_tensors_closed_early_stops_the_load(sharded):
    directory, _ = sharded
    before = threading.active_count()
    with torch_safetensors.open_checkpoint(directory) as ckpt:
        it = ckpt.iter_tensors()
        assert next(it)[0] == file_order(directory)[0]
        it.close()
    assert threading.active_count() == before


def test_staging_ring_forced_on_the_cpu(sharded):
    directory, tensors = sharded
    ckpt = _C.Checkpoint(str(directory), "pread", torch.device("cpu"), staging_bytes=1 << 20,
                         always_stage=True)
    loaded = ckpt.tensors()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)
    streamed = []
    ckpt.for_each(lambda name, t: streamed.append(name))
    assert streamed == file_order(directory)


def test_unreachable_device_is_an_error_at_open(tmp_path):
    path = tmp_path / "w.safetensors"
    torch_safetensors.save_file({"w": torch.zeros(2)}, path)
    count = torch.cuda.device_count()
    with pytest.raises(RuntimeError, match=f"cuda:{count + 3}"):
        torch_safetensors.load_file(path, device=f"cuda:{count + 3}")


@cuda
def test_cuda_load_stream_and_convert(sharded):
    directory, tensors = sharded
    with torch_safetensors.open_checkpoint(directory, device="cuda", dtype=torch.float16) as ckpt:
        for name, t in ckpt.iter_tensors():
            assert t.is_cuda
            assert torch.equal(t.cpu(), tensors[name].to(torch.float16))
    single = directory / "single.safetensors"
    torch_safetensors.save_file(tensors, single)
    loaded = torch_safetensors.load_file(single, device="cuda")
    for name, tensor in tensors.items():
        assert loaded[name].is_cuda and torch.equal(loaded[name].cpu(), tensor)
