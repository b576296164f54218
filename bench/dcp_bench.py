#!/usr/bin/env python3
"""torch.distributed.checkpoint on safetensors: our StorageReader/StorageWriter
(torch_safetensors.distributed) against torch's HuggingFaceStorageReader/Writer, same checkpoint.

    python3 bench/dcp_bench.py                       # ~768 MB Llama-like BF16, 4+ shards
    python3 bench/dcp_bench.py --size-mb 256 --reps 3 --ranks 2

Rows (medians of --reps; "cold": posix_fadvise(DONTNEED) on every file before each run, as
bench/device.py does; "warm": the files already in the page cache):
  load, 1 process   dcp.load of the full state dict (preallocated BF16 tensors) with
                    ours ("auto": whole chunks copied from the mapping, parts read with pread;
                    "pread": every region read into owned memory, then copied) and torch's
                    HuggingFaceStorageReader (safetensors' safe_open, mmap); "4 thr": both
                    readers' thread_count=4 (files read in parallel), ratio against the same;
  load, N ranks     gloo, each rank a DTensor Shard(0) state dict: the slowest rank's time;
                    bytes per rank = read()/pread() bytes of the loading thread (rchar; mapped
                    reads, torch's and our mmap backend's, do not show there); the page cache
                    the load filled (mincore), all ranks together, and by rank 0 alone (one more
                    cold run in which rank 1 loads nothing): what one rank's share costs the
                    storage, kernel readahead included;
  save, 1 process   dcp.save of the full state dict: ours (save_file per rank + index) vs
                    torch's HuggingFaceStorageWriter, both fsyncing their files.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# The checkout's Python modules (torch_safetensors.distributed) over an older installed copy; the C++
# extension is the installed one either way (torch_safetensors._extension finds it).
sys.path.insert(1, os.path.dirname(HERE))
import run as bench_run  # noqa: E402  (llama_stack, machine)
from device import drop_cache as drop_file_cache  # noqa: E402  (posix_fadvise DONTNEED)

warnings.filterwarnings("ignore")

D, FF, VOCAB, KV_DIV = 1024, 2816, 32000, 4


def llama_state_dict(size_mb: int):
    """A Llama-like BF16 decoder of about ``size_mb`` MB (d=1024, GQA 4:1, ff=2816)."""
    import torch

    per_layer = 2 * (2 * D * D + 2 * D * D // KV_DIV + 3 * D * FF + 2 * D)
    fixed = 2 * (2 * VOCAB * D + D)
    layers = max(1, round((size_mb * 1e6 - fixed) / per_layer))
    gen = torch.Generator().manual_seed(0)
    return {
        name: (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        for name, shape in bench_run.llama_stack(layers, D, FF, VOCAB, KV_DIV)
    }


def files_of(directory: str):
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".safetensors"))


def drop_cache(paths) -> None:
    for path in paths:
        drop_file_cache(path)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def resident_bytes(paths) -> int:
    """Bytes of these files in the page cache (mincore on a fresh read-only mapping)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        count = (size + page - 1) // page
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            vec = (ctypes.c_ubyte * count)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            _libc.munmap(addr, size)
        finally:
            os.close(fd)
        total += sum(v & 1 for v in vec) * page
    return total


def thread_rchar() -> int:
    with open("/proc/thread-self/io") as io:
        for line in io:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def readers(directory: str, variants):
    """``variants``: (label, backend or "torch", thread_count) -> label: reader factory."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    from torch_safetensors.distributed import StorageReader

    made = {}
    for label, backend, threads in variants:
        if backend == "torch":
            made[label] = lambda t=threads: HuggingFaceStorageReader(directory, thread_count=t)
        else:
            made[label] = lambda b=backend, t=threads: StorageReader(directory, backend=b, thread_count=t)
    return made


SINGLE = [("ours (auto)", "auto", 1), ("ours (pread)", "pread", 1), ("torch HF", "torch", 1),
          ("ours (auto) 4 thr", "auto", 4), ("torch HF 4 thr", "torch", 4)]
RANKS = [("ours (auto)", "auto", 1), ("ours (mmap)", "mmap", 1), ("torch HF", "torch", 1)]


def time_load(state_dict, make_reader, files, cold: bool, no_dist: bool = True) -> float:
    import torch.distributed.checkpoint as dcp

    if cold:
        drop_cache(files)
    start = time.perf_counter()
    dcp.load(state_dict, storage_reader=make_reader(), no_dist=no_dist)
    return time.perf_counter() - start


def single_process_loads(expected, directory: str, reps: int):
    import torch

    files = files_of(directory)
    rows = []
    target = {k: torch.empty_like(v) for k, v in expected.items()}
    for mode in ("cold", "warm"):
        for name, make in readers(directory, SINGLE).items():
            if mode == "warm":
                time_load(target, make, files, cold=False)  # warm-up
            times = [time_load(target, make, files, cold=mode == "cold") for _ in range(reps)]
            for key in ("model.embed_tokens.weight", "lm_head.weight"):
                assert torch.equal(target[key], expected[key]), (name, key)
            rows.append((f"load, 1 process, {mode}", name, statistics.median(times), None, min(times)))
            for t in target.values():
                t.zero_()
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, directory: str, size_mb: int, reps: int, out: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, zeros

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    mesh = init_device_mesh("cpu", (world,))
    files = files_of(directory)
    state = {k: zeros(v.shape, dtype=v.dtype, device_mesh=mesh, placements=[Shard(0)])
             for k, v in llama_state_dict_meta(size_mb).items()}
    results = {}
    # "auto" reads these partial chunks with pread; mmap shows what readahead adds
    for name, make in readers(directory, RANKS).items():
        times, rchars, resident = [], [], []
        for _ in range(reps):
            if rank == 0:
                drop_cache(files)
            dist.barrier()
            before = thread_rchar()
            start = time.perf_counter()
            dcp.load(state, storage_reader=make())
            elapsed = time.perf_counter() - start
            rchars.append(thread_rchar() - before)
            slowest = torch.tensor([elapsed])
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            times.append(slowest.item())
            dist.barrier()
            if rank == 0:
                resident.append(resident_bytes(files))
        # rank 0 alone (rank 1 loads nothing): what one rank's share costs the storage
        if rank == 0:
            drop_cache(files)
        dist.barrier()
        dcp.load(state if rank == 0 else {}, storage_reader=make())
        dist.barrier()
        alone = resident_bytes(files) if rank == 0 else None
        results[name] = {"time": statistics.median(times), "min": min(times), "rchar": statistics.median(rchars),
                         "resident": statistics.median(resident) if resident else None, "alone": alone}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


def llama_state_dict_meta(size_mb: int):
    """Shapes and dtypes only (on the meta device): what llama_state_dict would build."""
    import torch

    per_layer = 2 * (2 * D * D + 2 * D * D // KV_DIV + 3 * D * FF + 2 * D)
    fixed = 2 * (2 * VOCAB * D + D)
    layers = max(1, round((size_mb * 1e6 - fixed) / per_layer))
    return {n: torch.empty(s, dtype=torch.bfloat16, device="meta")
            for n, s in bench_run.llama_stack(layers, D, FF, VOCAB, KV_DIV)}


def multi_rank_loads(directory: str, size_mb: int, reps: int, world: int, total: int):
    import torch.multiprocessing as mp

    out = tempfile.mkdtemp(prefix="dcp_bench_ranks_")
    try:
        mp.start_processes(_rank_main, args=(world, _free_port(), directory, size_mb, reps, out),
                           nprocs=world, join=True, start_method="spawn")
        reports = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(world)]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rows = []
    for name in reports[0]:
        per_rank = [r[name]["rchar"] for r in reports]
        rows.append((f"load, {world} ranks Shard(0), cold", name, reports[0][name]["time"],
                     {"rchar_per_rank": per_rank, "page_cache_filled": reports[0][name]["resident"],
                      "rank0_alone": reports[0][name]["alone"], "total": total}, reports[0][name]["min"]))
    return rows


def saves(expected, workdir: str, reps: int):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from torch_safetensors.distributed import StorageWriter

    writers = {
        "ours": lambda path: StorageWriter(path),
        "torch HF": lambda path: HuggingFaceStorageWriter(path),
    }
    rows = []
    for name, make in writers.items():
        times = []
        for i in range(reps):
            path = os.path.join(workdir, f"save_{name.split()[0]}_{i}")
            start = time.perf_counter()
            dcp.save(expected, storage_writer=make(path), no_dist=True)
            times.append(time.perf_counter() - start)
            shutil.rmtree(path)
        rows.append(("save, 1 process", name, statistics.median(times), None, min(times)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=768, help="checkpoint size (default 768)")
    parser.add_argument("--shards", type=int, default=4, help="about this many shard files (default 4)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions, median (default 5)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the DTensor load (0: skip)")
    parser.add_argument("--no-save", action="store_true", help="skip the dcp.save rows")
    parser.add_argument("--workdir", default=None, help="where the checkpoint goes (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()

    from torch_safetensors import hub

    load_start = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix="dcp_bench_", dir=args.workdir)
    try:
        expected = llama_state_dict(args.size_mb)
        total = sum(t.nbytes for t in expected.values())
        checkpoint = os.path.join(workdir, "checkpoint")
        hub.save_torch_state_dict(expected, checkpoint, max_shard_size=total // args.shards + 1)
        print(f"# {bench_run.machine(workdir)}")
        print(f"# checkpoint: {len(expected)} BF16 tensors, {total / 1e6:.0f} MB, "
              f"{len(files_of(checkpoint))} shards + index; medians of {args.reps}")
        rows = single_process_loads(expected, checkpoint, args.reps)
        if args.ranks > 1:
            rows += multi_rank_loads(checkpoint, args.size_mb, args.reps, args.ranks, total)
        if not args.no_save:
            rows += saves(expected, workdir, args.reps)
        report(rows)
        print(f"# load average (1, 5, 15 min) at start: {load_start}, at end: {os.getloadavg()}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(rows) -> None:
    groups = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    print(f"| {'case':<32} | {'implementation':<17} | {'median':>9} | {'min':>9} | {'ours/torch':>10} | bytes |")
    print(f"|{'-' * 34}|{'-' * 19}|{'-' * 11}|{'-' * 11}|{'-' * 12}|-------|")
    for case, group in groups.items():
        theirs = {r[1].replace("torch HF", ""): r[2] for r in group if r[1].startswith("torch")}
        for row in group:
            base = theirs.get(row[1].split(")")[-1], theirs[""])  # same thread count
            ratio = "" if row[1].startswith("torch") else f"{row[2] / base:.2f}"
            extra = ""
            if row[3] is not None:
                info = row[3]
                per_rank = ", ".join(f"{b / 1e6:.0f}" for b in info["rchar_per_rank"])
                filled = info["page_cache_filled"]
                extra = (f"read() per rank: {per_rank} MB of {info['total'] / 1e6:.0f}; "
                         f"page cache filled: {filled / 1e6:.0f} MB, by rank 0 alone: "
                         f"{info['rank0_alone'] / 1e6:.0f} MB")
                if row[1].startswith("torch") or "mmap" in row[1]:
                    extra = extra.replace(f"read() per rank: {per_rank} MB", "read(): mapped, n/a")
            print(f"| {case:<32} | {row[1]:<17} | {row[2] * 1e3:6.0f} ms | {row[4] * 1e3:6.0f} ms "
                  f"| {ratio:>10} | {extra} |")


if __name__ == "__main__":
    main()
