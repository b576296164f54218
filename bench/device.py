#!/usr/bin/env python3
"""Device-aware loading: the CPU fast paths, warm and cold, and (with a GPU) loading to CUDA.

    python3 bench/device.py                 # CPU, warm page cache, the ~1.09 GB Llama-like file
    python3 bench/device.py --cold          # also from a cold page cache (posix_fadvise DONTNEED
                                            # before each run: no root needed)
    python3 bench/device.py --gpu           # on a GPU machine: a >= 8 GB checkpoint to cuda:0
    python3 bench/device.py --gpu --gpu-gib 4 --reps 3 --json rows.json   # smaller, rows saved

CPU rows (medians, one process): ours populated load (mmap + MADV_POPULATE_READ on all cores,
every byte resident when load returns), ours lazy load + touch, the reference's load_file + touch,
ours eager pread, and this machine's memcpy bandwidth (the limit of any load into fresh memory).
Cold rows add a sequential read of the file in 16 MiB blocks (what `dd bs=16M` does), the limit
of a cold load. GPU rows: ours load_file(device="cuda"), the reference's
load_file(device="cuda"), the reference's load_file + pin_memory() + .to("cuda"), and the pinned
host-to-device copy bandwidth, each with its peak extra host RSS.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench_run  # noqa: E402  (generate, measure, touch)


def drop_cache(path):
    """Evicts the file's clean pages from the page cache (no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sequential_read(path, block=16 << 20):
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass


def populated_load(path):
    import torch_safetensors

    with torch_safetensors.safe_open(path, "pt", populate=True) as f:
        return f.get_tensors()


def touch_all(tensors):
    for t in tensors.values():
        bench_run.touch(t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--gpu-gib", type=float, default=8.0,
                    help="size of the --gpu checkpoint, in 128 MiB BF16 tensors (default 8 GiB)")
    ap.add_argument("--workdir", default=os.path.join("/tmp", "torch_safetensors_bench"))
    ap.add_argument("--json", help="also write the rows and ratios to this file")
    args = ap.parse_args()

    import safetensors.torch
    import torch

    import torch_safetensors

    rows = []
    ratios = {}

    def save_json(checkpoint):
        if not args.json:
            return
        import json

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"checkpoint": checkpoint, "bytes": total, "reps": args.reps,
                       "rows": [dict(group=g, name=n, seconds=t, gb_per_s=r, peak_rss_bytes=p)
                                for g, n, t, r, p in rows],
                       "ratios": ratios}, f, indent=1)

    def row(group, name, body, setup=None, nbytes=None):
        times, peaks = bench_run.measure(args.reps, 1, body, setup=setup, budget=60.0)
        seconds = statistics.median(times)
        rate = (nbytes or total) / seconds / 1e9
        rows.append((group, name, seconds, rate, max(peaks)))
        print(f"{group:5} {name:62} {seconds * 1e3:9.1f} ms {rate:7.2f} GB/s "
              f"peak +{max(peaks) / 2**20:7.0f} MiB", flush=True)
        return seconds

    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu: torch sees no CUDA device")
        count = max(1, round(args.gpu_gib * 8))  # 8192 x 8192 BF16 = 128 MiB each
        path = os.path.join(args.workdir, f"gpu_{count}x128mib.safetensors")
        if not os.path.exists(path):
            torch.manual_seed(0)
            os.makedirs(args.workdir, exist_ok=True)
            tensors = {f"layers.{i}.weight": torch.empty(8192, 8192, dtype=torch.bfloat16)
                       for i in range(count)}
            safetensors.torch.save_file(tensors, path)
            del tensors
        total = os.path.getsize(path)
        sequential_read(path)  # warm page cache
        pinned = torch.empty(1 << 30, dtype=torch.uint8).pin_memory()
        on_gpu = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
        h2d = row("gpu", "limit: pinned host->device copy (1 GiB)",
                  lambda: (on_gpu.copy_(pinned, non_blocking=True), torch.cuda.synchronize()),
                  nbytes=1 << 30)
        del pinned, on_gpu
        sync = torch.cuda.synchronize
        ours = row("gpu", "ours: load_file(device='cuda')",
                   lambda: (torch_safetensors.load_file(path, device="cuda"), sync()))
        ref = row("gpu", "reference: load_file(device='cuda')",
                  lambda: (safetensors.torch.load_file(path, device="cuda"), sync()))
        row("gpu", "reference: load_file + pin_memory() + .to('cuda')",
            lambda: ({k: v.pin_memory().to("cuda", non_blocking=True)
                      for k, v in safetensors.torch.load_file(path).items()}, sync()))
        ratios.update(ours_vs_pinned_h2d=(total / ours) / ((1 << 30) / h2d),
                      ours_vs_reference=ref / ours)
        print(f"\nours / pinned H2D bandwidth = {ratios['ours_vs_pinned_h2d']:.2f} "
              f"(target >= 0.8); ours vs reference = {ratios['ours_vs_reference']:.1f}x "
              "(target >= 10x)")
        save_json(path)
        return

    path = os.path.join(args.workdir, "llama_bf16.safetensors")
    if not os.path.exists(path):
        bench_run.generate(args.workdir, args.scale)
    total = os.path.getsize(path)
    sequential_read(path)
    src = torch.empty(1 << 30, dtype=torch.uint8).fill_(1)
    dst = torch.empty(1 << 30, dtype=torch.uint8).fill_(2)
    memcpy = row("warm", "limit: memcpy (torch copy_, 1 GiB, all threads)", lambda: dst.copy_(src),
                 nbytes=1 << 30)
    del src, dst
    populated = row("warm", "ours: safe_open(populate=True).get_tensors()",
                    lambda: populated_load(path))
    row("warm", "ours: load_file() + touch every byte",
        lambda: touch_all(torch_safetensors.load_file(path)))
    ref_touch = row("warm", "reference: load_file() + touch every byte",
                    lambda: touch_all(safetensors.torch.load_file(path)))
    row("warm", "ours: load_file(backend='pread')",
        lambda: torch_safetensors.load_file(path, backend="pread"))
    print(f"\nwarm: populated load vs reference load + touch = {ref_touch / populated:.2f}x "
          f"(target >= 2x); populated load at {(total / populated) / ((1 << 30) / memcpy):.2f} "
          "of memcpy bandwidth")
    if not args.cold:
        save_json(path)
        return
    cold = lambda: drop_cache(path)  # noqa: E731
    seq = row("cold", "limit: sequential read, 16 MiB blocks (dd bs=16M)",
              lambda: sequential_read(path), setup=cold)
    eager = row("cold", "ours: load_file(backend='pread')",
                lambda: torch_safetensors.load_file(path, backend="pread"), setup=cold)
    pop = row("cold", "ours: safe_open(populate=True).get_tensors()",
              lambda: populated_load(path), setup=cold)
    row("cold", "reference: load_file() + touch every byte",
        lambda: touch_all(safetensors.torch.load_file(path)), setup=cold)
    print(f"\ncold: eager = {seq / eager:.2f}, populated = {seq / pop:.2f} of the sequential read "
          "bandwidth (target >= 0.8)")
    save_json(path)


if __name__ == "__main__":
    main()
