#!/usr/bin/env python3
"""Tensor-parallel loading: bytes read and load time per rank against the number of ranks, ours
(load_for_rank: only the rank's bytes) against what engines do with the reference safetensors
(each rank reads whole tensors and narrows them), in one run.

    python3 bench/distributed.py                 # ~1 GB Llama-like BF16 checkpoint, 4 shards
    python3 bench/distributed.py --size-mb 200   # quick

For N = 1, 2, 4: the load time per rank with the N ranks as N concurrent processes on this
machine (as torchrun starts them; they share the page cache), from a cold page cache
(posix_fadvise DONTNEED on every shard before each run); and the bytes one rank reads when it
runs alone from a cold cache (as on its own node): /proc/self/io rchar (every byte
read(2)/pread(2) returned, an instrument outside the library), read_bytes (bytes fetched from
storage: page-cache misses, mmap faults, readahead), and what the loader accounts for
(tensor_bytes + header_bytes). Target: at most total/N + headers (the slice planner has no coalescing slack). The
reference maps the files, so its reads show only in read_bytes (bytes fetched from storage,
readahead included), which both rows report.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench_run  # noqa: E402  (llama_stack: the benchmarks' one Llama-like layout)
from device import drop_cache  # noqa: E402



def proc_io(key):
    """rchar: bytes read(2)/pread(2) returned; read_bytes: bytes fetched from storage for this
    process (page-cache misses, mmap faults and readahead included)."""
    with open("/proc/self/io", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1])


def rank_main(args):
    """One rank: load its pieces with `args.impl`, report bytes and seconds as JSON."""
    import torch

    rank, world = args.rank, args.world
    before, storage_before = proc_io("rchar"), proc_io("read_bytes")
    start = time.perf_counter()
    if args.impl == "ours":
        from torch_safetensors.distributed import LLAMA_TP_PLAN, ShardPlan, load_for_rank

        load = load_for_rank(args.checkpoint, ShardPlan(LLAMA_TP_PLAN), rank, world,
                             backend="pread")
        accounted = load.bytes_read
        tensors = load.tensors
    else:  # the reference: whole tensors, then this rank's narrow (copied, as engines keep it)
        from safetensors import safe_open

        from torch_safetensors.distributed import LLAMA_TP_PLAN, ShardPlan, _C

        with open(os.path.join(args.checkpoint, "model.safetensors.index.json")) as f:
            weight_map = json.load(f)["weight_map"]
        shapes = {}
        by_file = {}
        for name, file in weight_map.items():
            by_file.setdefault(file, []).append(name)
        tensors, accounted = {}, 0
        for file, names in by_file.items():
            with safe_open(os.path.join(args.checkpoint, file), "pt") as f:
                for name in names:
                    shapes[name] = f.get_tensor(name)
        pieces = _C.plan_for_rank([(n, list(t.shape)) for n, t in shapes.items()],
                                  ShardPlan(LLAMA_TP_PLAN)._native(), rank, world)
        for piece in pieces:
            t = shapes[piece.name]
            for split in piece.splits:
                t = torch.cat([t.narrow(split.dim, b, e - b) for b, e in split.ranges], split.dim)
            tensors[piece.name] = t.clone()
        del shapes
    seconds = time.perf_counter() - start
    print(json.dumps({"rank": rank, "seconds": seconds, "rchar": proc_io("rchar") - before,
                      "storage": proc_io("read_bytes") - storage_before,
                      "accounted": accounted, "held": sum(t.nbytes for t in tensors.values())}))


def run_world(checkpoint, impl, world, ranks=None):
    """Ranks `ranks` (default: all) of `world` as concurrent processes, from a cold cache."""
    for f in os.listdir(checkpoint):
        drop_cache(os.path.join(checkpoint, f))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), "--world", str(world),
                               "--impl", impl, "--checkpoint", checkpoint],
                              stdout=subprocess.PIPE, text=True, env=env)
             for r in (range(world) if ranks is None else ranks)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"rank failed ({impl}, N={world})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join("/tmp", "torch_safetensors_bench"))
    ap.add_argument("--json", default="")
    ap.add_argument("--rank", type=int, default=-1)  # internal: one rank's process
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--impl", default="ours")
    ap.add_argument("--checkpoint", default="")
    args = ap.parse_args()
    if args.rank >= 0:
        return rank_main(args)

    import torch

    from torch_safetensors import hub

    d, ff, vocab = 1024, 2816, 32000
    per_layer = 2 * (4 * d * d + 3 * d * ff + 2 * d)
    layers = max(2, round((args.size_mb * 1e6 - 2 * 2 * vocab * d) / per_layer))
    checkpoint = os.path.join(args.workdir, f"tp_llama_{layers}_layers")
    if not os.path.exists(os.path.join(checkpoint, "model.safetensors.index.json")):
        torch.manual_seed(0)
        tensors = {n: (torch.randn(s) * 0.02).to(torch.bfloat16)
                   for n, s in bench_run.llama_stack(layers, d, ff, vocab)}
        total = sum(t.nbytes for t in tensors.values())
        hub.save_torch_state_dict(tensors, checkpoint, max_shard_size=total // 4 + (4 << 20))
        del tensors
    total = sum(os.path.getsize(os.path.join(checkpoint, f)) for f in os.listdir(checkpoint))
    print(f"checkpoint: {checkpoint} ({total / 1e9:.2f} GB with headers and index, "
          f"{len(os.listdir(checkpoint)) - 1} shards); {os.cpu_count()} cores; cold page cache")
    rows = []
    header = (f"{'N':>2} {'impl':<9} {'storage MB':>11} {'pread MB':>9} {'accounted MB':>13} "
              f"{'total/N MB':>11} {'storage÷(total/N)':>18} {'load s/rank':>12} "
              f"{'speedup':>8}\n{'':12}{'(one rank alone, cold cache)':^58}{'(N concurrent)':>19}")
    print(header)
    for world in (1, 2, 4):
        results = {}
        for impl in ("ours", "reference"):
            runs = [run_world(checkpoint, impl, world) for _ in range(args.reps)]
            seconds = statistics.median(max(r["seconds"] for r in run) for run in runs)
            alone = run_world(checkpoint, impl, world, ranks=[world - 1])[0]
            read, storage, accounted = alone["rchar"], alone["storage"], alone["accounted"]
            results[impl] = seconds
            row = {"world": world, "impl": impl, "read_per_rank": read,
                   "storage_per_rank": storage,
                   "accounted_per_rank": accounted, "total_over_n": total / world,
                   "seconds_per_rank": seconds}
            rows.append(row)
            ratio = "" if impl == "ours" else f"{seconds / results['ours']:7.2f}×"
            mb = (lambda b: f"{b / 1e6:.1f}") if impl == "ours" else (lambda b: "-")
            print(f"{world:>2} {impl:<9} {storage / 1e6:>11.1f} {mb(read):>9} {mb(accounted):>13} "
                  f"{total / world / 1e6:>11.1f} {storage / (total / world):>18.3f} "
                  f"{seconds:>12.3f} {ratio:>8}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
