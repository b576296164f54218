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
        # FP8 keeps its stored dtype (the core's rule: it may be a quantized weight)
        assert loaded["q"].dtype == torch.float8_e4m3fn
        assert torch.equal(loaded["q"].view(torch.uint8), q.view(torch.uint8))
    with torch_safetensors.safe_open(path, "pt", dtype=torch.bfloat16) as f:
        assert torch.equal(f.get_slice("w")[2:4], w[2:4])
        assert torch.equal(f.get_slice("q")[2:4].view(torch.uint8), q[2:4].view(torch.uint8))
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
    options = _C._testing_stage_on_cpu(_C.LoadOptions(backend="pread", staging_bytes=1 << 20))
    ckpt = _C.Checkpoint(str(directory), options)
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


def _entry_points(tmp_path):
    """Every Python entry point that takes a device, as f(device) on a small checkpoint."""
    from torch_safetensors import quant
    from torch_safetensors.distributed import ShardPlan, load_for_rank

    path = tmp_path / "w.safetensors"
    torch_safetensors.save_file({"w": torch.zeros(2, 2)}, path, metadata={"format": "pt"})
    model = torch.nn.Linear(2, 2, bias=False)
    return {
        "safe_open": lambda d: torch_safetensors.safe_open(path, "pt", device=d),
        "load_file": lambda d: torch_safetensors.load_file(path, device=d),
        "open_checkpoint": lambda d: torch_safetensors.open_checkpoint(path, device=d),
        "load_model": lambda d: torch_safetensors.load_model(
            torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.ones(2, 2))}), path, device=d),
        "hub.load_state_dict_from_file": lambda d: hub.load_state_dict_from_file(
            path, map_location=d),
        "hub.load_torch_model": lambda d: hub.load_torch_model(model, path, map_location=d),
        "load_for_rank": lambda d: load_for_rank(path, ShardPlan(), rank=0, world_size=1,
                                                 device=d),
        "quant.dequantize": lambda d: quant.dequantize(path, "w", device=d),
        "quant.DenseView": lambda d: quant.DenseView(path, device=d),
    }


UNREACHABLE = ["xpu", "xpu:0"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:1"])


ENTRY_POINTS = ["safe_open", "load_file", "open_checkpoint", "load_model",
                "hub.load_state_dict_from_file", "hub.load_torch_model", "load_for_rank",
                "quant.dequantize", "quant.DenseView"]


@pytest.mark.parametrize("name", ENTRY_POINTS)
@pytest.mark.parametrize("device", UNREACHABLE)
def test_every_entry_point_refuses_an_unreachable_device_the_same_way(tmp_path, name, device):
    """One check (the core's device::check_device), one error: load_model(device="xpu") used to
    pass silently. hub's loaders wrap it in their ValueError, as they wrap every open error."""
    call = _entry_points(tmp_path)[name]
    kind = torch.device(device).type.upper()
    with pytest.raises((RuntimeError, ValueError), match=f"cannot load to {kind.lower()}") as error:
        call(device)
    assert f"this LibTorch has no {kind} support" in str(error.value) or "no " + kind in str(
        error.value)
    if not name.startswith("hub."):
        assert type(error.value) is RuntimeError
        assert "w.safetensors" in str(error.value)  # names what is loaded


def test_every_entry_point_takes_a_reachable_device(tmp_path):
    calls = _entry_points(tmp_path)
    assert sorted(calls) == sorted(ENTRY_POINTS)
    for name, call in calls.items():
        if name == "quant.dequantize":  # the device passes; "w" is no quantized weight
            with pytest.raises(torch_safetensors.SafetensorError, match="not a quantized weight"):
                call("cpu")
            continue
        call("cpu")  # none of them refuses the CPU
