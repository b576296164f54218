"""The cost of durable saves (fsync of each file and its directory before the save returns):
save_file and save_sharded with durable=False and True, and the reference's save_file (which
never fsyncs), in one run, into the same folder.

    python3 bench/durable_bench.py [--size-mb 256] [--reps 5] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

import torch_safetensors
from torch_safetensors import hub


def timed(body, reps):
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        body()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    count = 32
    per = args.size_mb * 2**20 // count // 2  # BF16 elements per tensor
    tensors = {f"layer.{i}.weight": torch.randn(per).to(torch.bfloat16) for i in range(count)}
    total = sum(t.nbytes for t in tensors.values())
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        path = os.path.join(work, "model.safetensors")
        rows = []
        try:
            import safetensors.torch as reference

            rows.append(("reference save_file", timed(lambda: reference.save_file(tensors, path),
                                                      args.reps)))
        except ImportError:
            pass
        for durable in (False, True):
            rows.append((f"save_file(durable={durable})",
                         timed(lambda: torch_safetensors.save_file(tensors, path, durable=durable),
                               args.reps)))
        shards = os.path.join(work, "sharded")
        for durable in (False, True):
            rows.append((f"save_torch_state_dict (4 shards, durable={durable})",
                         timed(lambda: hub.save_torch_state_dict(
                             tensors, shards, max_shard_size=total // 4 + 1, durable=durable),
                             args.reps)))
    print(f"{total / 1e6:.0f} MB of BF16 in {count} tensors, median of {args.reps}")
    base = dict(rows)["save_file(durable=False)"]
    print(f"{'save':55s} {'s':>8s} {'GB/s':>7s} {'vs non-durable':>15s}")
    for name, seconds in rows:
        print(f"{name:55s} {seconds:8.3f} {total / seconds / 1e9:7.2f} {seconds / base:15.2f}")


if __name__ == "__main__":
    main()
