#!/usr/bin/env python3
"""Saving a large state dict from one process: time to write the same ~1 GB state dict as
safetensors, in one run, against this machine's page-cache write limits.

    python3 bench/parallel_save.py                       # ~1 GB, 256 MB shards, medians of 3
    python3 bench/parallel_save.py --quick               # ~64 MB, 16 MB shards, 1 rep
    python3 bench/parallel_save.py --size-mb 512 --threads 4 --dir /mnt/nvme

Rows (T threads: --threads, else min(8, cores); N files: the shards of the sharded save):

- limit (a): plain Python, one new file, one thread, sequential os.pwrite of all the bytes;
- limit (b): one pre-sized file, T threads, each os.pwrite-ing its own contiguous region;
- limit (c): N pre-sized files, T threads, each writing whole files of its own (the bound for a
  sharded save; os.pwrite releases the GIL, so the threads write at once);
- ours sharded: `torch_safetensors.hub.save_torch_state_dict(..., threads=1)`, then with its
  default threads (None: up to 8 of this machine's cores, one shard file per thread); the GB/s
  its returned `SaveReport` states is printed beside the bench's own timing;
- ours one file: `torch_safetensors.save_file`;
- fastsafetensors: `fastsafetensors.saver.save_sharded` (0.5.0) with N shards and a fill of T
  threads (it takes a shard count, not a size: N is the sharded save's file count);
- huggingface_hub: `huggingface_hub.save_torch_state_dict`, the everyday reference.

The state dict: float32 and bfloat16 matrices of 4096 columns and uneven row counts, Llama-like
(three per layer, plus a float32 norm vector). Each time is a median of `--reps` (the best rep
is shown too), after one untimed round of every row (the page cache warm); each rep starts one row
later than the one before, nothing is fsync'ed, and each output is removed (untimed) right after
its row, so that no earlier row's dirty pages throttle a later one. GB/s is bytes of tensor data /
seconds (GB = 1e9); "% of limit (c)" is limit (c)'s time / the row's. The outputs of the last rep
are checked before they go: each loads (safetensors.torch.load_file) as the state dict
(torch.equal), and ours sharded has huggingface_hub's files byte for byte (same names and sha256
of every file, index included). The script exits non-zero when a check fails; its last line is
JSON with the raw times."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

COLUMNS = 4096
CHUNK = 64 << 20  # bytes per os.pwrite call of the limits, as bench_io.cpp


def build_state(size_mb):
    """~size_mb of Llama-like tensors: per layer three 4096-column matrices of uneven rows
    (float32 in even layers, bfloat16 in odd ones) and a float32 norm vector."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state, total, layer = {}, 0, 0
    while total < size_mb * 1e6:
        dtype = torch.bfloat16 if layer % 2 else torch.float32
        prefix = f"model.layers.{layer}."
        for j, name in enumerate(("self_attn.qkv_proj", "self_attn.o_proj", "mlp.up_proj")):
            rows = 512 + 53 * ((3 * layer + j) % 8)
            state[prefix + name + ".weight"] = torch.randn(
                rows, COLUMNS, dtype=dtype, generator=generator)
            total += rows * COLUMNS * dtype.itemsize
            if total >= size_mb * 1e6:
                return state
        state[prefix + "input_layernorm.weight"] = torch.randn(COLUMNS, generator=generator)
        total += COLUMNS * 4
        layer += 1
    return state


def tensor_bytes(tensor):
    return tensor.numel() * tensor.element_size()


def source_buffer(state, total):
    """The tensors' bytes in one bytearray: the limits write the same data from ordinary memory."""
    import torch

    buffer = bytearray(total)
    flat, offset = torch.frombuffer(buffer, dtype=torch.uint8), 0
    for tensor in state.values():
        n = tensor_bytes(tensor)
        flat[offset:offset + n].copy_(tensor.reshape(-1).view(torch.uint8))
        offset += n
    return memoryview(buffer)


def pwrite_all(fd, view, offset):
    """os.pwrite of `view` at `offset` in CHUNK pieces (a write may be short)."""
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:done + CHUNK], offset + done)


def new_file(path, size=None):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if size is not None:
        os.ftruncate(fd, size)  # pre-sized, as ours sizes each file before its pwrites
    return fd


def limit_one_thread(view, directory):
    fd = new_file(os.path.join(directory, "limit_a.bin"))
    try:
        pwrite_all(fd, view, 0)
    finally:
        os.close(fd)


def split(n, parts):
    """[begin, end) of `parts` contiguous ranges covering n."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


def limit_one_file_threads(view, directory, threads):
    fd = new_file(os.path.join(directory, "limit_b.bin"), len(view))
    try:
        workers = [threading.Thread(target=pwrite_all, args=(fd, view[b:e], b))
                   for b, e in split(len(view), threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        os.close(fd)


def limit_files_threads(view, directory, threads, files):
    def write_file(index, begin, end):
        fd = new_file(os.path.join(directory, f"limit_c_{index}.bin"), end - begin)
        try:
            pwrite_all(fd, view[begin:end], 0)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(write_file, i, b, e)
                       for i, (b, e) in enumerate(split(len(view), files))]:
            future.result()


def fastsafetensors_saver():
    try:
        from fastsafetensors import saver
    except (ImportError, OSError):  # not installed, or its native library does not load
        return None
    return saver


def make_rows(args, state, view, files, threads):
    """name -> function(directory) that writes the state dict (or the limit's bytes) there."""
    import huggingface_hub

    import torch_safetensors
    from torch_safetensors import hub

    ours_threads = args.threads  # None unless given: the library's default
    rows = {
        "limit (a) one file, 1 thread": lambda d: limit_one_thread(view, d),
        f"limit (b) one file, {threads} threads": lambda d: limit_one_file_threads(
            view, d, threads),
        f"limit (c) {files} files, {threads} threads": lambda d: limit_files_threads(
            view, d, threads, files),
        "ours sharded, threads=1": lambda d: hub.save_torch_state_dict(
            state, d, max_shard_size=args.max_shard_size, threads=1),
        f"ours sharded, threads={ours_threads}": lambda d: hub.save_torch_state_dict(
            state, d, max_shard_size=args.max_shard_size, threads=ours_threads),
        "ours one file (save_file)": lambda d: torch_safetensors.save_file(
            state, os.path.join(d, "model.safetensors")),
    }
    saver = fastsafetensors_saver()
    if saver is None:
        print("fastsafetensors: not installed", flush=True)
    else:
        def fastsafetensors_save(directory):
            entries = [saver.plain_entry(name, t) for name, t in state.items()]
            saver.save_sharded(entries, os.path.join(directory, "model"), num_shards=files,
                               fill=saver.tensor_fill(threads))

        rows[f"fastsafetensors save_sharded, {threads} threads"] = fastsafetensors_save
    rows["huggingface_hub save_torch_state_dict"] = lambda d: (
        huggingface_hub.save_torch_state_dict(state, d, max_shard_size=args.max_shard_size))
    return rows


def load_directory(directory):
    from safetensors.torch import load_file

    loaded = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            loaded.update(load_file(os.path.join(directory, name)))
    return loaded


def digests(directory):
    """file name -> sha256 of its bytes, for comparing outputs that are never on disk together."""
    result = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            result[name] = hashlib.sha256(f.read()).hexdigest()
    return result


def loads_as(state, directory):
    import torch

    loaded = load_directory(directory)
    return loaded.keys() == state.keys() and all(
        torch.equal(loaded[name], tensor) for name, tensor in state.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=None, help="default 1024 (64 --quick)")
    parser.add_argument("--reps", type=int, default=None, help="default 3 (1 --quick)")
    parser.add_argument("--max-shard-size", default=None, help="default 256MB (16MB --quick, so "
                        "that it still writes several shards)")
    parser.add_argument("--threads", type=int, default=None,
                        help="T for the limits and fastsafetensors, and ours' second row "
                        "(default: min(8, cores) there and ours' own default)")
    parser.add_argument("--dir", default=None, help="a directory on the file system to test")
    parser.add_argument("--quick", action="store_true", help="~64 MB, 1 rep: a smoke test")
    args = parser.parse_args()
    if args.threads is not None and args.threads < 2:
        parser.error("--threads must be at least 2 (ours' threads=1 row is always there)")
    quick = args.quick
    args.size_mb = args.size_mb or (64 if quick else 1024)
    args.reps = args.reps or (1 if quick else 3)
    args.max_shard_size = args.max_shard_size or ("16MB" if quick else "256MB")

    import huggingface_hub

    state = build_state(args.size_mb)
    total = sum(tensor_bytes(t) for t in state.values())
    files = len(huggingface_hub.split_torch_state_dict_into_shards(
        state, max_shard_size=args.max_shard_size).filename_to_tensors)
    threads = args.threads or min(8, os.cpu_count() or 1)
    view = source_buffer(state, total)
    rows = make_rows(args, state, view, files, threads)

    root = tempfile.mkdtemp(prefix="parallel_save-", dir=args.dir)
    times = {row: [] for row in rows}
    checks, files_of, reported = {}, {}, {}
    try:
        # A first, untimed round: the first writes of a process run far below the later ones.
        order = list(rows)
        for rep in range(-1, args.reps):
            # Each rep starts one row later: no row always follows the same one.
            for row in order[rep % len(order):] + order[:rep % len(order)]:
                save = rows[row]
                directory = os.path.join(root, "out")
                os.makedirs(directory)
                start = time.perf_counter()
                report = save(directory)
                seconds = time.perf_counter() - start
                if rep >= 0:
                    times[row].append(seconds)
                    if hasattr(report, "gb_per_s"):  # ours: the SaveReport's own figure
                        reported.setdefault(row, []).append(report.gb_per_s)
                if rep == args.reps - 1 and not row.startswith("limit"):
                    checks[f"{row}: loads as the state dict"] = loads_as(state, directory)
                    files_of[row] = digests(directory)
                # One output at a time: dirty pages of earlier rows must not throttle later ones.
                shutil.rmtree(directory)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours_sharded = [row for row in rows if row.startswith("ours sharded")]
    hub_row = "huggingface_hub save_torch_state_dict"
    for row in ours_sharded:
        checks[f"{row}: byte-identical to huggingface_hub"] = files_of[row] == files_of[hub_row]

    median = {row: statistics.median(t) for row, t in times.items()}
    limit_c = next(row for row in rows if row.startswith("limit (c)"))
    ours_default = ours_sharded[1]
    print(f"\n{total / 1e6:.0f} MB in {len(state)} tensors; {files} shards of at most "
          f"{args.max_shard_size}; T = {threads}; medians of {args.reps}; no fsync.\n")
    # The best rep too: on a shared machine one write of a whole GB can stall for a second.
    print("| row | median | GB/s | % of limit (c) | best |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row, seconds in median.items():
        print(f"| {row} | {seconds:.3f} s | {total / seconds / 1e9:.2f} | "
              f"{100 * median[limit_c] / seconds:.0f}% | {min(times[row]):.3f} s |")
    print()
    fastsafetensors_row = next((row for row in rows if row.startswith("fastsafetensors")), None)
    if fastsafetensors_row:
        print(f"fastsafetensors / {ours_default}: "
              f"{median[fastsafetensors_row] / median[ours_default]:.2f}× the time")
    print(f"{ours_default}: {100 * median[limit_c] / median[ours_default]:.0f}% of limit (c)")
    print(f"ours sharded threads=1 / {ours_default}: "
          f"{median[ours_sharded[0]] / median[ours_default]:.2f}× the time")
    print(f"{hub_row} / {ours_default}: {median[hub_row] / median[ours_default]:.2f}× the time")
    for row, rates in reported.items():
        print(f"{row}: its SaveReport says {statistics.median(rates):.2f} GB/s (median)")
    print()
    for name, passed in checks.items():
        print(f"check: {name}: {'ok' if passed else 'FAILED'}")
    print(json.dumps({"total_bytes": total, "tensors": len(state), "files": files,
                      "threads": threads, "max_shard_size": args.max_shard_size,
                      "reps": args.reps, "times": times, "reported_gb_per_s": reported,
                      "checks": checks}), flush=True)
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
