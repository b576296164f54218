"""Realigning a misaligned ~1 GB safetensors file (`torch-safetensors realign`, in process through
_C.cli_main) against the sequential read+write limit of this machine: `cp` and `dd bs=8M` of the
same file, and a read+write loop with 8 MiB chunks, in one run, page cache warm.

    python3 bench/realign_bench.py [--size-mb 1024] [--reps 3] [--workdir DIR]

realign copies the tensor bytes once (read + write, the limit's work) and then reads the new file
and the old one again to compare them byte for byte before the rename: the last row isolates
that check's cost (a read of both files).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import tempfile
import time

from torch_safetensors import _C

CHUNK = 8 << 20


def timed(body, reps, cleanup):
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        body()
        samples.append(time.perf_counter() - start)
        cleanup()
    return statistics.median(samples)


def write_misaligned(path, size_mb):
    """A 1-byte tensor first, then BF16 tensors of 32 MiB and a few odd-sized F32 ones: every
    large tensor one byte past an aligned offset, so a zero-copy load would copy them all."""
    header, tensors, offset = {}, [], 0

    def add(name, dtype, shape, nbytes):
        nonlocal offset
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        tensors.append(nbytes)
        offset += nbytes

    add("step", "U8", [1], 1)
    for i in range(size_mb // 32):
        add(f"layers.{i}.weight", "BF16", [4096, 4096], 32 << 20)
        add(f"layers.{i}.norm", "F32", [1000 + i], 4 * (1000 + i))
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        block = os.urandom(CHUNK)
        left = offset
        while left:
            n = min(left, CHUNK)
            f.write(block[:n])
            left -= n
    return len(header), os.path.getsize(path)


def realign(src, dst, boundary):
    code = _C.cli_main(["realign", src, dst, "--alignment", str(boundary)])
    if code != 0:
        raise RuntimeError(f"realign exited {code}")


def read_write_loop(src, dst):
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            g.write(view[:n])


def read_both(a, b):
    buf = bytearray(CHUNK)
    for path in (a, b):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        src = os.path.join(work, "misaligned.safetensors")
        dst = os.path.join(work, "out.safetensors")
        count, size = write_misaligned(src, args.size_mb)

        def remove():
            if os.path.exists(dst):
                os.remove(dst)

        read_both(src, src)  # warm the page cache
        rows = [
            ("`realign --alignment 64`", lambda: realign(src, dst, 64)),
            ("`realign --alignment 4096`", lambda: realign(src, dst, 4096)),
            ("`cp` (limit)", lambda: subprocess.run(["cp", src, dst], check=True)),
            ("`dd bs=8M` (limit)", lambda: subprocess.run(
                ["dd", f"if={src}", f"of={dst}", "bs=8M", "status=none"], check=True)),
            ("read+write loop, 8 MiB chunks (limit)", lambda: read_write_loop(src, dst)),
        ]
        results = {}
        for name, body in rows:
            results[name] = timed(body, args.reps, remove)
        read_write_loop(src, dst)
        results["reading both files (realign's byte-for-byte check)"] = timed(
            lambda: read_both(src, dst), args.reps, lambda: None)
        remove()
    limit = min(results[n] for n in results if "(limit)" in n)
    print(f"{count} tensors, {size / 1e9:.3f} GB; median of {args.reps}, page cache warm")
    print("| operation | s | GB/s | vs best limit |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.3f} | {size / seconds / 1e9:.2f} | {seconds / limit:.2f} |")


if __name__ == "__main__":
    main()
