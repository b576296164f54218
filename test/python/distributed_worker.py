"""One rank of a torch.distributed test of torch_safetensors.distributed, launched by
test_distributed.py with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as torchrun would;
TS_PG_BACKEND=nccl (default gloo) loads the pieces to this rank's GPU and exchanges them there.

    python distributed_worker.py SCENARIOS CHECKPOINT OUT_PREFIX

Runs each comma-separated scenario and writes what it found to OUT_PREFIX.<rank>.json: the
test asserts on it (an exception becomes {"error": ...}).
"""
import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist

from torch_safetensors import open_checkpoint
from torch_safetensors.distributed import (
    LLAMA_TP_PLAN as LLAMA_PLAN,
    PipelinePlan,
    ShardPlan,
    all_gather_tensors,
    load_for_rank,
)

BACKEND = os.environ.get("TS_PG_BACKEND", "gloo")
DEVICE = "cuda" if BACKEND == "nccl" else "cpu"


def originals(checkpoint):
    with open_checkpoint(checkpoint) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def gathered_equal(checkpoint, mine):
    full = all_gather_tensors(mine)
    want = originals(checkpoint)
    return {
        "same_keys": sorted(full) == sorted(want),
        "bit_equal": all(torch.equal(full[k].cpu(), want[k]) for k in want if k in full),
        "devices": sorted({t.device.type for t in [*full.values(), *mine.tensors.values()]}),
        "tensor_bytes": mine.tensor_bytes,
        "header_bytes": mine.header_bytes,
        "names": sorted(mine.tensors),
    }


def tp(checkpoint, rank, world):
    return gathered_equal(checkpoint, load_for_rank(checkpoint, ShardPlan(LLAMA_PLAN),
                                                    device=DEVICE))


def tp_pp(checkpoint, rank, world):
    plan = ShardPlan(LLAMA_PLAN, pipeline=PipelinePlan.even(2, 2))
    return gathered_equal(checkpoint, load_for_rank(checkpoint, plan, backend="pread"))


def single(checkpoint, rank, world):
    mine = load_for_rank(checkpoint, ShardPlan(LLAMA_PLAN), single_reader=True, device=DEVICE)
    return gathered_equal(checkpoint, mine)


def expect_error(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the message is what the test checks
        return f"{type(error).__name__}: {error}"
    return None


def world_mismatch(checkpoint, rank, world):
    return expect_error(lambda: load_for_rank(checkpoint, ShardPlan(LLAMA_PLAN),
                                              world_size=world + rank))


def plan_mismatch(checkpoint, rank, world):
    patterns = dict(LLAMA_PLAN)
    if rank == 1:
        patterns["lm_head"] = "replicate"
    return expect_error(lambda: load_for_rank(checkpoint, ShardPlan(patterns)))


def rank_failure(checkpoint, rank, world):
    path = checkpoint if rank != 1 else checkpoint + "-missing"
    return expect_error(lambda: load_for_rank(path, ShardPlan(LLAMA_PLAN)))


def budget_failure(checkpoint, rank, world):
    """Rank 1's host budget cannot hold its pieces: every rank raises MemoryBudgetError, with rank
    1's figures, from the plan step (before any rank reads tensor bytes)."""
    budget = 100 if rank == 1 else None
    start = time.time()
    try:
        load_for_rank(checkpoint, ShardPlan(LLAMA_PLAN), backend="pread", host_budget=budget)
    except Exception as error:  # noqa: BLE001 - reported to the test
        return {"type": type(error).__name__, "message": str(error),
                "budget": getattr(error, "budget", None), "memory": getattr(error, "memory", None),
                "seconds": time.time() - start}
    return {"type": None}


def dtensor(checkpoint, rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    from torch_safetensors import load_model, save_model

    torch.manual_seed(0)  # the same model on every rank
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    path = os.path.join(os.path.dirname(checkpoint), "mlp.safetensors")
    new = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    if rank == 0:
        from torch_safetensors import save_file
        save_file(new, path)
    dist.barrier()
    mesh = init_device_mesh("cpu", (world,))
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    missing, unexpected = load_model(model, path)
    full = {k: v.full_tensor() for k, v in model.state_dict().items()}
    local = {k: list(v.to_local().shape) for k, v in model.state_dict().items()}
    x = torch.randn(3, 8)
    reference = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 8))
    reference.load_state_dict(new)
    # huggingface_hub's entry point takes the same path for such a model.
    from torch_safetensors.hub import load_torch_model

    with torch.no_grad():
        for v in model.state_dict().values():
            v.to_local().zero_()
    keys = load_torch_model(model, path, strict=True)
    hub_equal = all(torch.equal(v.full_tensor(), new[k]) for k, v in model.state_dict().items())
    return {
        "hub_equal": hub_equal and not keys.missing_keys and not keys.unexpected_keys,
        "missing": sorted(missing), "unexpected": sorted(unexpected),
        "bit_equal": all(torch.equal(full[k], new[k]) for k in new),
        "local_shapes": local,
        "forward_equal": torch.allclose(model(x), reference(x), atol=1e-6),
        "is_dtensor": type(model[0].weight).__name__,
    }


def dtensor_f4(checkpoint, rank, world):
    """A DTensor model with an F4 (float4_e2m1fn_x2) parameter, sharded on rows, and a float one:
    load_model checks each against the size the stored tensor loads as (the C++ report: F4's last
    dimension in pairs), then fills each rank's shard."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from torch_safetensors import load_model, save_file

    torch.manual_seed(0)  # the same values on every rank
    packed = torch.randint(0, 256, (8, 4), dtype=torch.uint8)  # header shape [8, 8] (values)
    scale = torch.randn(8)
    path = os.path.join(os.path.dirname(checkpoint), "f4.safetensors")
    if rank == 0:
        save_file({"w": packed.view(torch.float4_e2m1fn_x2), "scale": scale}, path)
    dist.barrier()
    mesh = init_device_mesh("cpu", (world,))

    def sharded(full):
        return torch.nn.Parameter(distribute_tensor(full, mesh, [Shard(0)], src_data_rank=None),
                                  requires_grad=False)

    model = torch.nn.Module()
    model.w = sharded(torch.zeros(8, 4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2))
    model.scale = sharded(torch.zeros(8))
    missing, unexpected = load_model(model, path)
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    wrong = torch.nn.Module()
    wrong.w = sharded(torch.zeros(8, 8, dtype=torch.uint8).view(torch.float4_e2m1fn_x2))
    mismatch = expect_error(lambda: load_model(wrong, path, strict=False))
    return {
        "missing": sorted(missing), "unexpected": sorted(unexpected),
        "dtype": str(model.w.to_local().dtype), "global_shape": list(model.w.shape),
        "local_shape": list(model.w.to_local().shape),
        "f4_equal": torch.equal(model.w.to_local().view(torch.uint8), packed[rows]),
        "scale_equal": torch.equal(model.scale.to_local(), scale[rows]),
        "mismatch": mismatch,
    }


def die(checkpoint, rank, world):
    dist.barrier()
    if rank == 1:
        os._exit(3)  # a rank that dies: the others must fail, not hang
    start = time.time()
    error = expect_error(lambda: load_for_rank(checkpoint, ShardPlan(LLAMA_PLAN),
                                               single_reader=True))
    return {"error": error, "seconds": time.time() - start}


# Mixture of experts (test_experts.py): CHECKPOINT is a tiny Mixtral saved by save_pretrained
# (per-expert tensors); CHECKPOINT + "-stacked" holds the same model's own state dict (fused
# experts: one [E, ...] tensor per projection).
MIXTRAL_TP = {
    "layers.*.self_attn.q_proj": "colwise", "layers.*.self_attn.k_proj": "colwise",
    "layers.*.self_attn.v_proj": "colwise", "layers.*.self_attn.o_proj": "rowwise",
    "layers.*.block_sparse_moe.experts.*.w1": "colwise",
    "layers.*.block_sparse_moe.experts.*.w3": "colwise",
    "layers.*.block_sparse_moe.experts.*.w2": "rowwise",
    "layers.*.mlp.experts.gate_up_proj": "packed_colwise",
    "layers.*.mlp.experts.down_proj": "rowwise",
}


def moe_plan(checkpoint, ep_size=0, tp=False):
    from torch_safetensors.distributed import ExpertPlan

    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as f:
        experts = json.load(f)["num_local_experts"]
    return ShardPlan(MIXTRAL_TP if tp else {}, experts=ExpertPlan(experts, ep_size=ep_size))


def moe_forward_equal(checkpoint, full, stacked):
    """The model built from the gathered weights computes what the original does."""
    import tempfile

    from transformers import AutoConfig, MixtralForCausalLM

    torch.manual_seed(0)
    ids = torch.randint(0, AutoConfig.from_pretrained(checkpoint).vocab_size, (2, 7))
    original = MixtralForCausalLM.from_pretrained(checkpoint).eval()
    if stacked:
        rebuilt = MixtralForCausalLM(AutoConfig.from_pretrained(checkpoint)).eval()
        rebuilt.load_state_dict(full, strict=True)
    else:
        from torch_safetensors import save_file

        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as f:
                config = f.read()
            with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
                f.write(config)
            save_file(full, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
            rebuilt = MixtralForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return torch.equal(original(ids).logits, rebuilt(ids).logits)


def moe_scenario(checkpoint, ep_size, tp, stacked, single_reader=False):
    path = checkpoint + "-stacked" if stacked else checkpoint
    mine = load_for_rank(path, moe_plan(checkpoint, ep_size, tp), single_reader=single_reader)
    report = gathered_equal(path, mine)
    full = all_gather_tensors(mine)
    report["forward_equal"] = (moe_forward_equal(checkpoint, full, stacked)
                               if dist.get_rank() == 0 else True)
    report["shapes"] = {k: list(v.shape) for k, v in mine.tensors.items()}
    return report


def ep(checkpoint, rank, world):
    return moe_scenario(checkpoint, 0, False, False)


def ep_stacked(checkpoint, rank, world):
    return moe_scenario(checkpoint, 0, False, True)


def ep_tp(checkpoint, rank, world):  # EP groups of world / 2 ranks... here 2 x (world / 2)
    return moe_scenario(checkpoint, world // 2, True, False)


def ep_tp_stacked(checkpoint, rank, world):
    return moe_scenario(checkpoint, world // 2, True, True)


def ep_single(checkpoint, rank, world):
    return moe_scenario(checkpoint, 0, False, True, single_reader=True)


def ep_dtensor(checkpoint, rank, world):
    """The stacked MoE model with its fused experts as DTensors: experts split over an EP mesh
    dimension (Shard(0)), at 4 ranks each expert's matrix split again over a TP one: gate_up_proj
    as _StridedShard(1, split_factor=2) (each TP rank half of gate and half of up, as a TP forward
    needs and load_for_rank's packed_colwise gives), down_proj on its I input columns.
    load_dtensors fills each rank's shards and the plain parameters; the expected shards are cut
    here with torch.chunk, as Shard does (for the strided one: gate and up apart, then chunked)."""
    from safetensors.torch import load_file
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard
    from transformers import AutoConfig, MixtralForCausalLM

    from torch_safetensors.distributed import load_dtensors

    path = checkpoint + "-stacked"
    model = MixtralForCausalLM(AutoConfig.from_pretrained(checkpoint))
    if world == 4:
        mesh = init_device_mesh(DEVICE, (2, 2), mesh_dim_names=("ep", "tp"))
        placements = {"gate_up_proj": [Shard(0), _StridedShard(1, split_factor=2)],
                      "down_proj": [Shard(0), Shard(2)]}
    else:
        mesh = init_device_mesh(DEVICE, (world,), mesh_dim_names=("ep",))
        placements = {"gate_up_proj": [Shard(0)], "down_proj": [Shard(0)]}
    for layer in model.model.layers:
        for attribute, placement in placements.items():
            empty = torch.zeros_like(getattr(layer.mlp.experts, attribute))
            setattr(layer.mlp.experts, attribute, torch.nn.Parameter(
                distribute_tensor(empty, mesh, placement, src_data_rank=None)))
    with torch.no_grad():  # NaN never equals: a plain parameter left unloaded fails the check
        for value in model.state_dict().values():
            if not isinstance(value, DTensor):
                value.fill_(float("nan"))
    missing, unexpected = load_dtensors(model, path)
    want = load_file(os.path.join(path, "model.safetensors"))
    state = model.state_dict()
    dtensors = {k: v for k, v in state.items() if isinstance(v, DTensor)}

    def expected_local(name, value):
        piece = want[name]
        for mesh_dim, placement in enumerate(value.placements):
            at = mesh.get_coordinate()[mesh_dim]
            parts = torch.chunk(piece, getattr(placement, "split_factor", 1), placement.dim)
            piece = torch.cat([torch.chunk(part, mesh.size(mesh_dim), placement.dim)[at]
                               for part in parts], placement.dim)
        return piece

    return {
        "missing": sorted(missing), "unexpected": sorted(unexpected),
        "same_keys": sorted(state) == sorted(want),
        "dtensors": sorted(dtensors),
        "full_equal": all(torch.equal(v.full_tensor().cpu(), want[k])
                          for k, v in dtensors.items()),
        "plain_equal": all(torch.equal(v.cpu(), want[k]) for k, v in state.items()
                           if k not in dtensors),
        "local_equal": all(torch.equal(v.to_local().cpu(), expected_local(k, v))
                           for k, v in dtensors.items()),
        "local_shapes": {k: list(v.to_local().shape) for k, v in dtensors.items()},
        "placements": {k: [str(p) for p in v.placements] for k, v in dtensors.items()},
    }


SCENARIOS = {f.__name__: f for f in (tp, tp_pp, single, world_mismatch, plan_mismatch,
                                     rank_failure, budget_failure, dtensor, dtensor_f4, die, ep,
                                     ep_stacked,
                                     ep_tp, ep_tp_stacked, ep_single, ep_dtensor)}


def main():
    scenarios, checkpoint, out = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    timeout = datetime.timedelta(seconds=float(os.environ.get("TS_PG_TIMEOUT", "60")))
    if BACKEND == "nccl":
        gpu = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(gpu)
        dist.init_process_group("nccl", timeout=timeout, device_id=gpu)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    result = {}
    try:
        for name in scenarios.split(","):
            result[name] = SCENARIOS[name](checkpoint, rank, dist.get_world_size())
    except Exception as error:  # noqa: BLE001 - reported to the test
        result["error"] = f"{type(error).__name__}: {error}"
    with open(f"{out}.{rank}.json", "w", encoding="utf-8") as f:
        json.dump(result, f)
    if "die" not in scenarios:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
