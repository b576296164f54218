#!/usr/bin/env python3
"""Saving from many ranks: time to a complete, loadable huggingface checkpoint of a sharded
state dict at N = 1, 2, 4 gloo ranks on this machine, in one run, for

- ours: `torch_safetensors.distributed.save_sharded` (every rank writes its shards into the final
  files);
- torch: `dcp.save` with torch's `HuggingFaceStorageWriter(save_distributed=True,
  enable_consolidation=True)` (per-rank files, then a consolidation pass);
- gather: `full_tensor()` of every DTensor, then rank 0 saves with huggingface_hub's
  `save_torch_state_dict` (what a trainer does without either).

    python3 bench/distributed_save.py                    # ~1 GB float32, N = 1, 2, 4
    python3 bench/distributed_save.py --size-mb 128 --worlds 2 --reps 1

The state dict: `Shard(0)` DTensors (float32; torch 2.13's consolidation cannot size integer or
bool tensors) of 4096 columns and uneven row counts. Each time is the slowest rank's, from a
barrier before to a barrier after, medians of `--reps`. The bytes per rank are /proc/self/io
`write_bytes` (pages this process dirtied: an instrument outside the library; socket traffic is
not counted). After the runs rank 0 checks that ours is byte for byte the gathered save and that
every directory opens as a checkpoint holding the whole state dict."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

IMPLS = ("ours", "torch", "gather")
MAX_SHARD_SIZE = "256MB"


def write_bytes():
    with open("/proc/self/io", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("write_bytes:")).split()[1])


def build_state(size_mb, world):
    """Sharded float32 DTensors totalling ~size_mb, each rank making only its own shard."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh("cpu", (world,))
    cols, state, total, i = 4096, {}, 0, 0
    rank = mesh.get_rank()
    while total < size_mb * 1e6:
        rows = 4000 + 37 * i  # uneven over 2 and 4 ranks
        share = [len(c) for c in torch.arange(rows).chunk(world)] + [0] * world
        generator = torch.Generator().manual_seed(1000 * i + rank)
        local = torch.randn(share[rank], cols, generator=generator)
        state[f"model.layers.{i}.weight"] = DTensor.from_local(
            local, mesh, [Shard(0)], run_check=False, shape=torch.Size([rows, cols]),
            stride=(cols, 1))
        total += rows * cols * 4
        i += 1
    return state


def save(impl, state, directory):
    import torch.distributed as dist

    if impl == "ours":
        from torch_safetensors.distributed import save_sharded

        save_sharded(state, directory, max_shard_size=MAX_SHARD_SIZE)
    elif impl == "torch":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        dcp.save(state, storage_writer=HuggingFaceStorageWriter(
            directory, save_distributed=True, enable_consolidation=True))
    else:
        import huggingface_hub

        # full_tensor() of an all-gather gives views of one buffer, which huggingface_hub refuses
        full = {name: tensor.full_tensor().clone() for name, tensor in state.items()}
        if dist.get_rank() == 0:
            os.makedirs(directory, exist_ok=True)
            huggingface_hub.save_torch_state_dict(full, directory, max_shard_size=MAX_SHARD_SIZE)
        del full


def rank_main(args):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    state = build_state(args.size_mb, world)
    times = {impl: [] for impl in IMPLS}
    written = {}
    for _ in range(args.reps):
        for impl in IMPLS:
            directory = os.path.join(args.root, impl)
            if rank == 0:
                shutil.rmtree(directory, ignore_errors=True)
            dist.barrier()
            before = write_bytes()
            start = time.perf_counter()
            save(impl, state, directory)
            dist.barrier()
            seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            written[impl] = write_bytes() - before
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            times[impl].append(seconds.item())
    per_rank = [None] * world
    dist.all_gather_object(per_rank, written)
    result = {"times": times, "written": per_rank}
    if rank == 0:
        result.update(check(args.root, state))
        print(json.dumps(result), flush=True)
    dist.destroy_process_group()


def check(root, state):
    from torch_safetensors import open_checkpoint

    expected = {name: list(t.shape) for name, t in state.items()}
    ours, gathered = os.path.join(root, "ours"), os.path.join(root, "gather")
    identical = sorted(os.listdir(ours)) == sorted(os.listdir(gathered)) and all(
        open(os.path.join(ours, n), "rb").read() == open(os.path.join(gathered, n), "rb").read()
        for n in os.listdir(ours))
    loadable = {}
    for impl in IMPLS:
        with open_checkpoint(os.path.join(root, impl)) as checkpoint:
            shapes = {n: checkpoint.get_slice(n).get_shape() for n in checkpoint.keys()}
        loadable[impl] = shapes == expected
    return {"identical": identical, "loadable": loadable,
            "total_mb": sum(t.numel() * 4 for t in state.values()) / 1e6}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(args, world, root):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    command = [sys.executable, os.path.abspath(__file__), "--rank-main", "--root", root,
               "--size-mb", str(args.size_mb), "--reps", str(args.reps)]
    procs = [subprocess.Popen(command, env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              text=True) for r in range(world)]
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"N={world}: a rank failed: {[p.returncode for p in procs]}")
    return json.loads(outputs[0].strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024)
    parser.add_argument("--worlds", default="1,2,4")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--root", default=None, help="a directory on the file system to test")
    parser.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_main:
        return rank_main(args)
    print("| N | ours | torch HF writer + consolidation | gather + save_torch_state_dict "
          "| torch/ours | gather/ours | MB written per rank: ours / torch / gather |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for world in [int(w) for w in args.worlds.split(",")]:
        root = tempfile.mkdtemp(prefix="distributed_save-", dir=args.root)
        try:
            result = run_world(args, world, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        assert result["identical"], "ours is not byte for byte the gathered save"
        assert all(result["loadable"].values()), result["loadable"]
        median = {impl: statistics.median(result["times"][impl]) for impl in IMPLS}
        mb = " / ".join(
            "+".join(f"{r[impl] / 1e6:.0f}" for r in result["written"]) for impl in IMPLS)
        print(f"| {world} | {median['ours']:.2f} s | {median['torch']:.2f} s | "
              f"{median['gather']:.2f} s | {median['torch'] / median['ours']:.2f}× | "
              f"{median['gather'] / median['ours']:.2f}× | {mb} |", flush=True)
    print(f"\n{result['total_mb']:.0f} MB state dict; medians of {args.reps}; ours byte-identical "
          "to the gathered save; every directory loads as the whole state dict.")


if __name__ == "__main__":
    main()
