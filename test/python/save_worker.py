"""One rank of a torch.distributed saving test (test_distributed_save.py), launched with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as torchrun would:

    python save_worker.py SCENARIOS DIRECTORY OUT_PREFIX

Every rank builds the same full state dict (`full_state`), distributes it as DTensors over a 1-D
mesh or, with 4 ranks, a 2 x 2 mesh (`placements`), and runs each comma-separated scenario; what
it found goes to OUT_PREFIX.<rank>.json (an exception becomes {"error": ...})."""
import datetime
import json
import os
import resource
import signal
import sys
import time

import torch
import torch.distributed as dist

MAX_SHARD_SIZE = 400  # several files for a state dict of 1.4 KB


def full_state(seed=0):
    """Every dtype family a checkpoint holds, sizes that split unevenly over 2 and 4 ranks, and a
    tensor with fewer rows than ranks (an empty shard)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed.weight": torch.randn(13, 6, generator=g),
        "model.layers.0.attn.weight": torch.randn(8, 10, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.weight": torch.randn(9, 7, generator=g),
        "model.layers.0.norm.weight": torch.randn(6, generator=g),
        "model.layers.0.count": torch.randint(-1000, 1000, (10, 4), generator=g,
                                              dtype=torch.int32),
        "model.layers.0.mask": torch.randint(0, 2, (7, 3), generator=g).bool(),
        "model.layers.0.fp8": torch.randn(12, 8, generator=g).to(torch.float8_e4m3fn),
        "model.layers.0.f4": torch.randint(0, 256, (8, 4), generator=g,
                                           dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
        "model.layers.0.tiny": torch.randn(3, 4, generator=g),
        "lm_head.weight": torch.randn(11, 6, generator=g),
    }


def placements(world):
    """name -> DTensor placements (None: a plain tensor, the same on every rank). On the 2 x 2
    mesh, _StridedShard as FSDP2 over tensor parallel places a tensor (each rank's shard one
    block, as DCP requires)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    if world == 4:  # a 2 x 2 mesh
        return {
            "model.embed.weight": [Shard(0), Shard(1)],
            "model.layers.0.attn.weight": [Shard(0), Replicate()],
            "model.layers.0.mlp.weight": [Replicate(), Shard(1)],
            "model.layers.0.norm.weight": None,
            "model.layers.0.count": [_StridedShard(1, split_factor=2), Shard(1)],
            "model.layers.0.mask": [Shard(0), Shard(0)],
            "model.layers.0.fp8": [Shard(0), Shard(1)],
            "model.layers.0.f4": [Replicate(), Shard(0)],
            "model.layers.0.tiny": [_StridedShard(0, split_factor=2), Shard(0)],
            "lm_head.weight": [Replicate(), Replicate()],
        }
    return {
        "model.embed.weight": [Shard(0)],
        "model.layers.0.attn.weight": [Shard(0)],
        "model.layers.0.mlp.weight": [Shard(1)],
        "model.layers.0.norm.weight": None,
        "model.layers.0.count": [Shard(0)],
        "model.layers.0.mask": [Shard(1)],
        "model.layers.0.fp8": [Shard(0)],
        "model.layers.0.f4": [Shard(0)],
        "model.layers.0.tiny": [Shard(0)],
        "lm_head.weight": [Replicate()],
    }


def strided_state(seed=0):
    """name -> (full tensor, placements on the 2 x 2 mesh): _StridedShard whose shards are several
    blocks of the full tensor (rank (0, 0) of [_StridedShard(0, 2), Shard(1)] holds rows 0-1 and
    4-5 of 8), which DCP cannot describe; every dtype family."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    full = full_state(seed)
    return {
        "model.embed.weight": (full["model.embed.weight"],
                               [_StridedShard(0, split_factor=2), Shard(1)]),
        "model.layers.0.attn.weight": (full["model.layers.0.attn.weight"],
                                       [_StridedShard(1, split_factor=3), Shard(0)]),
        "model.layers.0.count": (full["model.layers.0.count"],
                                 [Shard(1), _StridedShard(0, split_factor=2)]),
        "model.layers.0.mask": (full["model.layers.0.mask"],
                                [_StridedShard(0, split_factor=2), Replicate()]),
        "model.layers.0.fp8": (full["model.layers.0.fp8"],
                               [_StridedShard(0, split_factor=2), Shard(1)]),
        "model.layers.0.f4": (full["model.layers.0.f4"],
                              [_StridedShard(0, split_factor=2), Shard(0)]),
        "model.layers.0.norm.weight": (full["model.layers.0.norm.weight"], None),
    }


def mesh(world):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (2, 2) if world == 4 else (world,))


def distributed_state(world, seed=0, zeros=False):
    from torch.distributed.tensor import distribute_tensor

    device_mesh = mesh(world)
    out = {}
    for name, full in full_state(seed).items():
        if zeros:
            full = torch.zeros_like(full.view(torch.uint8) if full.element_size() == 1 else full
                                    ).view(full.dtype)
        where = placements(world)[name]
        # src_data_rank=None: every rank cuts its shard from its own (identical) copy
        out[name] = full if where is None else distribute_tensor(full, device_mesh, where,
                                                                 src_data_rank=None)
    return out


def module_of(state, buffers=False):
    """A module holding `state`'s tensors (DTensors stay DTensors) as parameters, or buffers,
    named as its entries."""
    root = torch.nn.Module()
    for name, tensor in state.items():
        owner = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        if buffers:
            owner.register_buffer(leaf, tensor)
        else:
            owner.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))
    return root


def local(tensor):
    from torch.distributed.tensor import DTensor

    t = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return t.view(torch.uint8) if t.element_size() == 1 and t.dtype != torch.bool else t


def boxes(state):
    """This rank's (name, offsets, sizes, nbytes) for every tensor."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    out = []
    for name, t in state.items():
        if isinstance(t, DTensor):
            shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh,
                                                                  t.placements)
            out.append((name, list(offset), list(shape), t.to_local().nbytes))
        else:
            out.append((name, [0] * t.dim(), list(t.shape), t.nbytes))
    return out


def share(state, rank, world):
    """The bytes only this rank holds, and the bytes it holds with other ranks (replicas)."""
    everyone = [None] * world
    dist.all_gather_object(everyone, boxes(state))
    holders = {}
    for r, theirs in enumerate(everyone):
        for name, offset, shape, nbytes in theirs:
            if nbytes:
                holders.setdefault((name, tuple(offset), tuple(shape)), []).append(r)
    exclusive = shared = 0
    for name, offset, shape, nbytes in everyone[rank]:
        if nbytes:
            if len(holders[(name, tuple(offset), tuple(shape))]) == 1:
                exclusive += nbytes
            else:
                shared += nbytes
    return exclusive, shared


def loaded_back_equal(directory, state, world):
    """dcp.load through our StorageReader into zeroed DTensors of the same placements."""
    import torch.distributed.checkpoint as dcp

    from torch_safetensors.distributed import StorageReader

    target = distributed_state(world, zeros=True)
    dcp.load(target, storage_reader=StorageReader(directory))
    return {name: torch.equal(local(target[name]), local(state[name])) for name in state}


def save(directory, rank, world):
    """distributed.save_sharded straight from the DTensors."""
    from torch_safetensors.distributed import save_sharded

    state = distributed_state(world)
    exclusive, shared = share(state, rank, world)
    out = os.path.join(directory, "direct")
    report = save_sharded(state, out, max_shard_size=MAX_SHARD_SIZE, metadata={"format": "pt"})
    dist.barrier()
    return {"tensor_bytes": report.tensor_bytes, "header_bytes": report.header_bytes,
            "files": report.files, "exclusive": exclusive, "shared": shared,
            "loaded_back": loaded_back_equal(out, state, world)}


def dcp_save(directory, rank, world):
    """dcp.save through our StorageWriter."""
    import torch.distributed.checkpoint as dcp

    from torch_safetensors.distributed import StorageWriter

    state = distributed_state(world)
    out = os.path.join(directory, "dcp")
    dcp.save(state, storage_writer=StorageWriter(out, max_shard_size=MAX_SHARD_SIZE))
    dist.barrier()
    return {"loaded_back": loaded_back_equal(out, state, world)}


def fsdp(directory, rank, world):
    """A model sharded by FSDP2's fully_shard and trained a step: its state_dict() (Shard(0)
    DTensors, uneven) saved by both front ends; rank 0 gathers the full state dict and saves it
    with huggingface_hub's writer as the reference; dcp.load fills a fresh sharded model."""
    import huggingface_hub
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard

    from torch_safetensors.distributed import StorageReader, StorageWriter, save_sharded

    def sharded_model(seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        for layer in (model[0], model[2]):
            fully_shard(layer)
        return fully_shard(model)

    model = sharded_model(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    model(torch.randn(4, 5)).square().sum().backward()
    optimizer.step()
    state = model.state_dict()
    save_sharded(state, os.path.join(directory, "fsdp-direct"), max_shard_size=100)
    dcp.save(state, storage_writer=StorageWriter(os.path.join(directory, "fsdp-dcp"),
                                                 max_shard_size=100))
    full = {name: t.full_tensor().clone() for name, t in state.items()}
    if rank == 0:
        reference = os.path.join(directory, "fsdp-reference")
        os.makedirs(reference)
        huggingface_hub.save_torch_state_dict(full, reference, max_shard_size=100)
    fresh = sharded_model(2)
    target = fresh.state_dict()
    dcp.load(target, storage_reader=StorageReader(os.path.join(directory, "fsdp-direct")))
    fresh.load_state_dict(target)
    dist.barrier()
    return {"placements": sorted({str(t.placements) for t in state.values()}),
            "loaded_back": {n: torch.equal(t.full_tensor(), full[n])
                            for n, t in fresh.state_dict().items()}}


def rank_files(directory, rank, world):
    """Without a shared file system: each rank saves a file of its own (here into one directory,
    which the test consolidates); dcp.load with our StorageReader reads the files as they are."""
    from torch_safetensors.distributed import save_rank_file

    state = distributed_state(world)
    path = save_rank_file(state, os.path.join(directory, "rank_files"))
    dist.barrier()
    return {"path": os.path.basename(path),
            "loaded_back": loaded_back_equal(os.path.join(directory, "rank_files"), state, world)}


def unvalidated_planner():
    """DCP's DefaultSavePlanner without its global plan check (which refuses overlapping chunks),
    as a planner of another torch version might be."""
    from unittest import mock

    from torch.distributed.checkpoint import default_planner

    class UnvalidatedPlanner(default_planner.DefaultSavePlanner):
        def create_global_plan(self, all_plans):
            with mock.patch.object(default_planner, "_validate_global_plan", lambda *_: []):
                return super().create_global_plan(all_plans)

    return UnvalidatedPlanner()


def strided(directory, rank, world):
    """_StridedShard shards of several blocks (strided_state, 4 ranks): saved straight to the
    final layout and to rank files; load_dtensors fills zeroed DTensors of the same placements;
    dcp.load through our StorageReader refuses them (DCP's planner would read one wrong block)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import distribute_tensor

    from torch_safetensors.distributed import (StorageReader, StorageWriter, load_dtensors,
                                               save_rank_file, save_sharded)

    device_mesh = mesh(world)

    def state(zeros):
        out = {}
        for name, (full, where) in strided_state().items():
            if zeros:
                full = torch.zeros(full.shape, dtype=torch.uint8).view(full.dtype) \
                    if full.element_size() == 1 else torch.zeros_like(full)
            out[name] = full if where is None else distribute_tensor(full, device_mesh, where,
                                                                     src_data_rank=None)
        return out

    original = state(zeros=False)
    direct = os.path.join(directory, "strided-direct")
    report = save_sharded(original, direct, max_shard_size=MAX_SHARD_SIZE)
    save_rank_file(original, os.path.join(directory, "strided-rank-files"))
    dist.barrier()
    model = module_of(state(zeros=True))
    missing, unexpected = load_dtensors(model, direct)
    loaded = {name: torch.equal(local(t), local(original[name]))
              for name, t in model.state_dict().items()}
    refused = expect_error(lambda: dcp.load(state(zeros=True),
                                            storage_reader=StorageReader(direct)))
    # DCP's planner refuses such shards (its one block per rank overlaps another's); a planner
    # that lets them through gets them written where they belong by our StorageWriter.
    refused_save = expect_error(lambda: dcp.save(original, storage_writer=StorageWriter(
        os.path.join(directory, "strided-dcp-refused"), max_shard_size=MAX_SHARD_SIZE)))
    dcp.save(original, planner=unvalidated_planner(), storage_writer=StorageWriter(
        os.path.join(directory, "strided-dcp"), max_shard_size=MAX_SHARD_SIZE, sync_files=False))
    dist.barrier()
    return {"tensor_bytes": report.tensor_bytes, "loaded": loaded, "missing": sorted(missing),
            "unexpected": list(unexpected), "dcp_load": refused["error"],
            "dcp_save": refused_save["error"]}


def expect_error(call):
    start = time.time()
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - reported (DCP's CheckpointException too)
        return {"error": f"{type(error).__name__}: {error}", "seconds": time.time() - start}
    return {"error": None, "seconds": time.time() - start}


def save_again(directory, world):
    """Saves full_state(seed=1) over the checkpoint of full_state(seed=0) in DIRECTORY/direct."""
    from torch_safetensors.distributed import save_sharded

    state = distributed_state(world, seed=1)
    return lambda: save_sharded(state, os.path.join(directory, "direct"),
                                max_shard_size=MAX_SHARD_SIZE, metadata={"format": "pt"})


def file_size_limit(limit):
    """RLIMIT_FSIZE: a write past `limit` bytes of a file fails (EFBIG when SIGXFSZ is ignored;
    the process is killed by SIGXFSZ otherwise)."""
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    return hard


def full_disk(directory, rank, world):
    """Rank 1 cannot write past the first 256 bytes of a file (below any header: every chunk it
    writes fails): every rank must raise, and the checkpoint saved before must stay."""
    save(directory, rank, world)
    call = save_again(directory, world)
    if rank == 1:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = file_size_limit(256)
        try:
            return expect_error(call)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    return expect_error(call)


def killed(directory, rank, world):
    """Rank 1 is killed by SIGXFSZ at its first chunk write, while the files exist under their
    temporary names: the other ranks must raise within the group's timeout."""
    save(directory, rank, world)
    call = save_again(directory, world)
    if rank == 1:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        file_size_limit(256)
    return expect_error(call)


def mismatch(directory, rank, world):
    """Rank 1 holds a tensor in another dtype: every rank raises before any file is created."""
    from torch_safetensors.distributed import save_sharded

    state = distributed_state(world)
    if rank == 1:
        state["lm_head.weight"] = state["lm_head.weight"].to(torch.float64)
    out = os.path.join(directory, "mismatch")
    result = expect_error(lambda: save_sharded(state, out, max_shard_size=MAX_SHARD_SIZE))
    dist.barrier()
    result["files"] = sorted(os.listdir(out)) if os.path.isdir(out) else []
    return result


SCENARIOS = {f.__name__: f for f in (save, dcp_save, fsdp, rank_files, strided, full_disk,
                                     killed, mismatch)}


def main():
    scenarios, directory, out = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    timeout = datetime.timedelta(seconds=float(os.environ.get("TS_PG_TIMEOUT", "60")))
    dist.init_process_group("gloo", timeout=timeout)
    result = {}
    try:
        for name in scenarios.split(","):
            result[name] = SCENARIOS[name](directory, rank, dist.get_world_size())
    except Exception as error:  # noqa: BLE001 - reported to the test
        result["error"] = f"{type(error).__name__}: {error}"
    with open(f"{out}.{rank}.json", "w", encoding="utf-8") as f:
        json.dump(result, f)
    if not any(s in scenarios for s in ("killed", "full_disk")):
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
