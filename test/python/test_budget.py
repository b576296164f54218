"""Memory budgets from Python: the plan step (memory_plan, stream_plan, distributed.memory_plan),
MemoryBudgetError at plan time naming the largest tensor and the shortfall, streaming in batches
that fit, a budget of zero refused, and budgets big enough loading bit-equal. All on the CPU, with
budgets smaller than the model."""

import pytest
import torch

import torch_safetensors
from torch_safetensors import MemoryBudgetError, SafetensorError
from torch_safetensors._extension import _C
from torch_safetensors.distributed import ShardPlan, load_for_rank, memory_plan

SMALL = 32 * 32 * 4  # each layer.i, float32
BIG = 64 * 64 * 4
TOTAL = 6 * SMALL + BIG  # 40 KiB
MIB = 1 << 20


@pytest.fixture
def model(tmp_path):
    torch.manual_seed(0)
    tensors = {f"layer.{i}": torch.randn(32, 32) for i in range(6)}
    tensors["big"] = torch.randn(64, 64)
    path = tmp_path / "m.safetensors"
    torch_safetensors.save_file(tensors, path)
    return path, tensors


def test_memory_plan_reports_device_and_host_bytes_staging_included(model):
    path, _ = model
    with torch_safetensors.safe_open(path, "pt", backend="pread") as f:
        plan = f.memory_plan()
        assert (plan.host_bytes, plan.device_bytes, plan.staging_bytes) == (TOTAL, 0, 0)
        assert (plan.tensors, plan.largest, plan.largest_bytes) == (7, "big", BIG)
        assert f.memory_plan(["layer.1", "layer.2"]).host_bytes == 2 * SMALL
    # Views of the mapping allocate nothing; a cast allocates its copy.
    with torch_safetensors.safe_open(path, "pt") as f:
        assert f.memory_plan().host_bytes == 0
    with torch_safetensors.safe_open(path, "pt", dtype=torch.bfloat16) as f:
        assert f.memory_plan().host_bytes == TOTAL // 2
    # Through the staging ring (what a device load does; here on the CPU): its buffers count.
    options = _C._testing_stage_on_cpu(_C.LoadOptions(backend="pread", staging_bytes=2 * MIB))
    staged = _C.Checkpoint(bytes(path), options).memory_plan()
    assert staged.staging_bytes == 2 * MIB
    assert staged.host_bytes == TOTAL + 2 * MIB
    assert "staging_bytes=2097152" in repr(staged)


def test_a_budget_smaller_than_the_model_fails_at_plan_time(model):
    path, _ = model
    with pytest.raises(MemoryBudgetError) as caught:
        torch_safetensors.load_file(path, backend="pread", host_budget=TOTAL - 100)
    error = caught.value
    assert isinstance(error, SafetensorError) and isinstance(error, MemoryError)
    assert (error.memory, error.needed, error.budget, error.shortfall) == (
        "host", TOTAL, TOTAL - 100, 100)
    assert (error.largest, error.largest_bytes) == ("big", BIG)
    assert ("the load needs 40960 bytes of host memory, 100 more than the host budget of 40860 "
            "bytes; its largest tensor is 'big' (16384 bytes)") in str(error)
    assert str(path) in str(error)
    # One tensor at a time: each is checked on its own.
    with torch_safetensors.safe_open(path, "pt", backend="pread", host_budget=10000) as f:
        with pytest.raises(MemoryBudgetError, match="6384 more than the host budget of 10000"):
            f.get_tensor("big")
        with pytest.raises(MemoryBudgetError, match="its largest tensor is 'big'"):
            f.get_tensors()
        assert f.get_tensor("layer.0").shape == (32, 32)


def test_budgets_big_enough_load_bit_equal(model):
    path, tensors = model
    loaded = torch_safetensors.load_file(path, backend="pread", host_budget=TOTAL)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name
    # Views cost nothing: any budget fits a zero-copy load. A device budget bounds device memory.
    views = torch_safetensors.load_file(path, host_budget=1, device_budget=1)
    assert all(torch.equal(views[n], t) for n, t in tensors.items())


def test_iter_tensors_goes_in_batches_that_fit_the_budget(model):
    path, tensors = model
    checkpoint = torch_safetensors.open_checkpoint(path, backend="pread", host_budget=BIG)
    batches = checkpoint.stream_plan()
    # The reported batches: none over the budget, every tensor once, in file order.
    assert [b.memory.host_bytes for b in batches] == [BIG, 4 * SMALL, 2 * SMALL]
    assert all(b.memory.host_bytes <= BIG for b in batches)
    planned = [name for b in batches for name in b.names]
    assert planned == checkpoint.keys()
    assert [len(b.names) for b in batches] == [1, 4, 2]
    assert batches[0].names == ["big"]
    # iter_tensors loads those batches (each one checked against the budget as it is loaded).
    seen = []
    for name, tensor in checkpoint.iter_tensors():
        assert torch.equal(tensor, tensors[name]), name
        seen.append(name)
    assert seen == planned
    # for_each, the same load without the iterator's thread.
    handle = _C.Checkpoint(bytes(path), _C.LoadOptions(backend="pread", host_budget=BIG))
    names = []
    handle.for_each(lambda name, tensor: names.append(name))
    assert names == planned


def test_iter_tensors_refuses_a_tensor_no_batch_fits_before_reading(model):
    path, _ = model
    checkpoint = torch_safetensors.open_checkpoint(path, backend="pread", host_budget=12288)
    with pytest.raises(MemoryBudgetError) as caught:
        checkpoint.stream_plan()
    assert (caught.value.largest, caught.value.shortfall) == ("big", BIG - 12288)
    seen = []
    with pytest.raises(MemoryBudgetError, match="a streaming load's smallest batch"):
        for name, _ in checkpoint.iter_tensors():
            seen.append(name)
    assert seen == []  # failed at plan time: nothing was yielded


def test_staged_streams_count_each_batchs_ring(model):
    path, tensors = model
    # A 2 MiB ring: one 1 MiB buffer for a one-chunk batch, two for more.
    options = _C._testing_stage_on_cpu(
        _C.LoadOptions(backend="pread", staging_bytes=2 * MIB, host_budget=2 * MIB + BIG))
    handle = _C.Checkpoint(bytes(path), options)
    batches = handle.stream_plan()
    assert [len(b.names) for b in batches] == [1, 4, 2]
    assert [b.memory.staging_bytes for b in batches] == [MIB, 2 * MIB, 2 * MIB]
    assert all(b.memory.host_bytes <= 2 * MIB + BIG for b in batches)
    got = {}
    handle.for_each(lambda name, tensor: got.__setitem__(name, tensor))
    assert all(torch.equal(got[n], t) for n, t in tensors.items())


def test_a_budget_of_zero_is_a_clear_error(model, tmp_path):
    path, _ = model
    expected = ("a host budget of 0 bytes fits nothing: expected a positive number of bytes, or "
                "no host budget for no limit")
    with pytest.raises(ValueError, match=expected):
        torch_safetensors.load_file(path, host_budget=0)
    with pytest.raises(ValueError, match="a device budget of 0 bytes fits nothing"):
        torch_safetensors.safe_open(path, "pt", device_budget=0)
    # An index is refused before it is read (this one is not even JSON).
    index = tmp_path / "x.safetensors.index.json"
    index.write_text("not json")
    with pytest.raises(ValueError, match=expected):
        torch_safetensors.open_checkpoint(index, host_budget=0)
    with pytest.raises(ValueError, match=expected):
        _C.File(bytes(path), _C.LoadOptions(host_budget=0))
    with pytest.raises(ValueError, match="host_budget must be a positive number of bytes, got -1"):
        torch_safetensors.load_file(path, host_budget=-1)
    with pytest.raises(TypeError, match="argument 'device_budget'"):
        torch_safetensors.load_file(path, device_budget=True)


def test_load_options_carry_budgets():
    options = _C.LoadOptions(host_budget=5, device_budget=7)
    assert (options.host_budget, options.device_budget) == (5, 7)
    assert "device_budget=7, host_budget=5" in repr(options)
    assert _C.LoadOptions().host_budget is None
    options.host_budget = None
    assert options.host_budget is None


def test_rank_loads_are_planned_per_rank_and_checked(model):
    path, tensors = model
    plan = ShardPlan({"layer": "colwise"})
    per_rank = memory_plan(path, plan, None, 2, backend="pread")
    assert [p.host_bytes for p in per_rank] == [3 * SMALL + BIG] * 2  # "big" is replicated
    assert per_rank[1].largest == "big"
    mine = memory_plan(path, plan, 1, 2, backend="pread")
    assert mine.host_bytes == per_rank[1].host_bytes
    with pytest.raises(MemoryBudgetError, match="the rank's load needs 28672 bytes") as caught:
        load_for_rank(path, plan, 1, 2, backend="pread", host_budget=mine.host_bytes - 1)
    assert caught.value.shortfall == 1
    # The rank's pieces fit a budget the whole model does not.
    load = load_for_rank(path, plan, 1, 2, backend="pread", host_budget=mine.host_bytes)
    assert load.memory.host_bytes == mine.host_bytes < TOTAL
    assert torch.equal(load.tensors["big"], tensors["big"])
    assert torch.equal(load.tensors["layer.2"], tensors["layer.2"][16:])
