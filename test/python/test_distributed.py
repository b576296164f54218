"""torch_safetensors.distributed: shard plans, rank-local loads and their byte counts, and the
collectives over torch.distributed gloo with 2 and 4 processes on localhost (the C++ collectives
through the Python binding: the torch wheel ships no gloo headers to build a ProcessGroupGloo in
a C++ test). Each multi-process scenario runs distributed_worker.py once per rank, as torchrun
would, and checks what each rank reported."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from torch_safetensors import SafetensorError, open_checkpoint
from torch_safetensors.distributed import PipelinePlan, ShardPlan, assemble, load_for_rank
from torch_safetensors.hub import save_torch_state_dict

sys.path.insert(0, os.path.dirname(__file__))
from distributed_worker import LLAMA_PLAN  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch has no gloo")


def llama_like(layers=2, hidden=64, intermediate=128, vocab=256):
    torch.manual_seed(0)
    t = {"model.embed_tokens.weight": torch.randn(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{name}.weight"] = torch.randn(hidden, hidden)
        t[p + "mlp.gate_proj.weight"] = torch.randn(intermediate, hidden)
        t[p + "mlp.up_proj.weight"] = torch.randn(intermediate, hidden)
        t[p + "mlp.down_proj.weight"] = torch.randn(hidden, intermediate).to(torch.bfloat16)
        t[p + "input_layernorm.weight"] = torch.randn(hidden)
        t[p + "post_attention_layernorm.weight"] = torch.randn(hidden)
    t["model.norm.weight"] = torch.randn(hidden)
    t["lm_head.weight"] = torch.randn(vocab, hidden)
    return t


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    tensors = llama_like()
    save_torch_state_dict(tensors, str(directory), max_shard_size=200_000)
    assert len([f for f in os.listdir(directory) if f.endswith(".safetensors")]) > 2
    return str(directory), tensors


def split_bytes(tensors, world):
    """What one rank of `world` should read under LLAMA_PLAN: a 1/world share of each planned
    tensor, all of each replicated one (the norms)."""
    planned = ("proj", "embed_tokens", "lm_head")
    return sum(t.nbytes // world if any(p in n for p in planned) else t.nbytes
               for n, t in tensors.items())


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_local_pieces_reassemble_and_read_their_share(checkpoint, world, backend):
    path, tensors = checkpoint
    loads = [load_for_rank(path, ShardPlan(LLAMA_PLAN), r, world, backend=backend)
             for r in range(world)]
    for name, tensor in tensors.items():
        pieces = [next(p for p in load.pieces if p.name == name) for load in loads]
        parts = [load.tensors[name] for load in loads]
        assert torch.equal(assemble(pieces, parts), tensor), name
    for load in loads:
        assert load.tensor_bytes == split_bytes(tensors, world)
        assert load.tensor_bytes == sum(t.nbytes for t in load.tensors.values())
        assert 0 < load.header_bytes < 20_000


def test_pread_reads_only_the_rank_share(checkpoint):
    """/proc/self/io's rchar counts every byte read(2)/pread(2) returned to this process: an
    instrument outside the library."""
    path, tensors = checkpoint
    if not os.path.exists("/proc/self/io"):
        pytest.skip("no /proc/self/io")

    def rchar():
        with open("/proc/self/io", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("rchar")).split()[1])

    for world in (1, 2, 4):
        before = rchar()
        load = load_for_rank(path, ShardPlan(LLAMA_PLAN), world - 1, world, backend="pread")
        read = rchar() - before
        # The reading of /proc/self/io itself adds a few hundred bytes.
        assert load.bytes_read <= read <= load.bytes_read + 4096, (world, read, load.bytes_read)


def test_pipeline_and_explicit_plans(checkpoint):
    path, tensors = checkpoint
    plan = ShardPlan(LLAMA_PLAN, pipeline=PipelinePlan.even(2, 2))
    first = load_for_rank(path, plan, 1, 4)
    last = load_for_rank(path, plan, 2, 4)
    assert "model.embed_tokens.weight" in first.tensors
    assert not any(".layers.1." in n for n in first.tensors)
    assert {"model.norm.weight", "lm_head.weight"} <= set(last.tensors)
    assert not any(".layers.0." in n for n in last.tensors)
    uneven = ShardPlan(tensors={"lm_head.weight": (0, [(0, 100), (100, 156)])})
    parts = [load_for_rank(path, uneven, r, 2).tensors["lm_head.weight"] for r in range(2)]
    assert [p.shape[0] for p in parts] == [100, 156]
    assert torch.equal(torch.cat(parts), tensors["lm_head.weight"])


def test_bad_plans_are_clear_errors(checkpoint):
    path, _ = checkpoint
    with pytest.raises(SafetensorError, match="rank 4 is outside \\[0, 4\\)"):
        load_for_rank(path, ShardPlan(LLAMA_PLAN), 4, 4)
    with pytest.raises(SafetensorError, match="does not divide evenly into 3 ranks"):
        load_for_rank(path, ShardPlan(LLAMA_PLAN), 0, 3)
    with pytest.raises(SafetensorError, match="unknown style 'diagonal'"):
        load_for_rank(path, ShardPlan({"q_proj": "diagonal"}), 0, 2)
    with pytest.warns(UserWarning, match="'nothing' matches no tensor"):
        load = load_for_rank(path, ShardPlan({"nothing": "colwise"}), 0, 2)
    assert load.warnings
    with pytest.raises(SafetensorError, match="matches no tensor \\(strict plan\\)"):
        load_for_rank(path, ShardPlan({"nothing": "colwise"}, strict=True), 0, 2)
    with pytest.raises(SafetensorError, match="layer 1 is on no pipeline stage"):
        load_for_rank(path, ShardPlan(pipeline=PipelinePlan([(0, 1), (5, 6)])), 0, 2)
    with pytest.raises(ValueError, match="no process group"):
        load_for_rank(path, ShardPlan(LLAMA_PLAN))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world, scenarios, path, tmp_path, timeout=120, pg_timeout=60, backend="gloo",
              worker=WORKER):
    """Launches `world` processes of `worker` (RANK/WORLD_SIZE/MASTER_* as torchrun sets them)
    and returns each rank's report."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(world), TS_PG_TIMEOUT=str(pg_timeout), OMP_NUM_THREADS="1",
               TS_PG_BACKEND=backend)
    out = str(tmp_path / "report")
    procs = [subprocess.Popen([sys.executable, worker, scenarios, path, out],
                              env=dict(env, RANK=str(r)), stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    errors = []
    for p in procs:
        try:
            _, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"ranks still running after {timeout} s: a hang")
        errors.append(stderr)
    reports = []
    for r in range(world):
        report = f"{out}.{r}.json"
        if os.path.exists(report):
            with open(report, encoding="utf-8") as f:
                reports.append(json.load(f))
        else:
            reports.append({"exit": procs[r].returncode, "stderr": errors[r][-2000:]})
    return reports


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_ranks_load_their_pieces_and_all_gather_the_original(checkpoint, world, tmp_path):
    path, tensors = checkpoint
    scenarios = "tp,single" + (",tp_pp" if world == 4 else "")
    reports = run_ranks(world, scenarios, path, tmp_path)
    for rank, report in enumerate(reports):
        assert "error" not in report and "exit" not in report, report
        for scenario in scenarios.split(","):
            assert report[scenario]["same_keys"] and report[scenario]["bit_equal"], (rank, scenario)
            assert report[scenario]["devices"] == ["cpu"], (rank, scenario)
        assert report["tp"]["tensor_bytes"] == split_bytes(tensors, world)
        # One reader: rank 0 reads every byte once (replicated tensors once, broadcast), the
        # others nothing.
        single = report["single"]["tensor_bytes"]
        assert single == (sum(t.nbytes for t in tensors.values()) if rank == 0 else 0)
    if world == 4:  # 2 stages x 2: stage 0 has no layer 1, stage 1 no layer 0
        assert not any(".layers.1." in n for n in reports[0]["tp_pp"]["names"])
        assert not any(".layers.0." in n for n in reports[3]["tp_pp"]["names"])


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(),
                    reason="no CUDA device with NCCL")
def test_nccl_cuda_one_rank_loads_its_pieces_to_the_gpu_and_all_gathers_them(checkpoint, tmp_path):
    # One process: NCCL refuses two ranks on one GPU, and scripts/test_gpu.sh has one.
    path, tensors = checkpoint
    (report,) = run_ranks(1, "tp,single", path, tmp_path, backend="nccl")
    assert "error" not in report and "exit" not in report, report
    for scenario in ("tp", "single"):
        assert report[scenario]["same_keys"] and report[scenario]["bit_equal"], scenario
        assert report[scenario]["devices"] == ["cuda"], scenario
    whole = split_bytes(tensors, 1)
    assert report["tp"]["tensor_bytes"] == report["single"]["tensor_bytes"] == whole


def test_gloo_disagreements_fail_on_every_rank(checkpoint, tmp_path):
    path, _ = checkpoint
    reports = run_ranks(2, "world_mismatch,plan_mismatch,rank_failure,budget_failure", path,
                        tmp_path)
    for report in reports:
        assert "error" not in report, report
        # One rank's budget fails them all, at the plan step, as MemoryBudgetError (rank 1's).
        budget = report["budget_failure"]
        assert budget["type"] == "MemoryBudgetError", budget
        assert budget["budget"] == 100 and budget["memory"] == "host", budget
        assert ("rank 1 failed planning the memory of its pieces" in budget["message"]
                and "more than the host budget of 100 bytes" in budget["message"]), budget
        assert ("load for world sizes rank 0: 2, rank 1: 3, but the process group has 2 ranks"
                in report["world_mismatch"]), report
        assert "has another shard plan" in report["plan_mismatch"], report
        assert "rank 1" in report["rank_failure"], report
    assert "rank 1 failed" in reports[0]["rank_failure"]
    assert "-missing" in reports[0]["rank_failure"]


def test_gloo_rank_death_fails_the_others_without_hanging(checkpoint, tmp_path):
    path, _ = checkpoint
    start = time.time()
    reports = run_ranks(2, "die", path, tmp_path, timeout=90, pg_timeout=20)
    report = reports[0]["die"]
    assert report["error"] and "the process group failed" in report["error"], report
    assert report["seconds"] < 30
    assert time.time() - start < 90


def test_gloo_dtensor_model_loads_shard_on_read(checkpoint, tmp_path):
    path, _ = checkpoint
    reports = run_ranks(2, "dtensor", path, tmp_path)
    for report in reports:
        assert "error" not in report, report
        d = report["dtensor"]
        assert d["is_dtensor"] == "DTensor"
        assert d["bit_equal"] and d["forward_equal"] and d["hub_equal"], d
        assert d["missing"] == [] and d["unexpected"] == []
        assert d["local_shapes"]["0.weight"] == [8, 8]   # colwise: half of 16 output rows
        assert d["local_shapes"]["2.weight"] == [8, 8]   # rowwise: half of 16 input columns
        assert d["local_shapes"]["2.bias"] == [8]        # rowwise bias: replicated


def test_gloo_dtensor_model_with_an_f4_parameter_loads(checkpoint, tmp_path):
    """F4 DTensor parameters load: their sizes are compared as they load (pairs of values), not
    as the header counts them (which used to report them as mismatched)."""
    path, _ = checkpoint
    reports = run_ranks(2, "dtensor_f4", path, tmp_path)
    for report in reports:
        assert "error" not in report, report
        d = report["dtensor_f4"]
        assert (d["missing"], d["unexpected"]) == ([], [])
        assert d["dtype"] == "torch.float4_e2m1fn_x2" and d["global_shape"] == [8, 4]
        assert d["local_shape"] == [4, 4] and d["f4_equal"] and d["scale_equal"], d
        # a model whose F4 parameter holds twice the values is refused, with torch's sizes
        assert "size mismatch for w" in d["mismatch"], d
        assert "torch.Size([8, 4]) from checkpoint" in d["mismatch"], d


@pytest.mark.parametrize("single_reader", [False, True])
def test_the_readme_torchrun_example_runs(tmp_path, single_reader):
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "tp_load.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", example, str(tmp_path / "checkpoint")]
    done = subprocess.run(command + (["--single-reader"] if single_reader else []),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if "equal the checkpoint" in line]
    assert len(lines) == 2, done.stdout
    if single_reader:
        assert any("rank 1/2" in line and "read 0 tensor bytes" in line for line in lines)
