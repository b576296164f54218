#!/usr/bin/env python3
"""Expert-parallel loading: bytes read and load time per rank against the number of EP ranks, ours
(load_for_rank with an ExpertPlan) against fastsafetensors' expert filter (CPU, no GDS) and the
naive load people do today, in one run.

    python3 bench/expert_load.py            # ~1 GB Qwen3-MoE-like BF16 checkpoint, 64 experts
    python3 bench/expert_load.py --quick    # ~120 MB, 1 rep: well under a minute
    python3 bench/expert_load.py --backend mmap --json rows.json   # ours mapped; rows saved

The checkpoint (generated once under --workdir): per-expert tensors
``model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj.weight`` (64 experts a layer), the router
``mlp.gate.weight``, attention, norms, embeddings and head (replicated on every rank), saved as
huggingface-style shards (``hub.save_torch_state_dict``, about four shards). EP rank r of N owns
the contiguous block of experts [r*64/N, (r+1)*64/N) plus every replicated tensor.

Rows, for N = 1, 2, 4 and each implementation:

- ours: ``load_for_rank(dir, ShardPlan(experts=ExpertPlan(64)), r, N, backend="pread")``.
- fastsafetensors: ``SafeTensorsFileLoader(None, "cpu", nogds=True)`` with
  ``set_tensor_filter(expert_parallel_filter(64, N, r))``, every shard added to it,
  ``copy_files_to_device()`` and ``get_tensor`` for each kept name (its documented CPU path: a
  single-process group per rank, pread into host memory, O_DIRECT where the filesystem allows).
- naive: every rank ``safetensors.torch.load_file`` on each shard (the reference), keeping only
  its experts and the replicated tensors.

Every rank touches every tensor it keeps (an int64 sum) before its clock stops, so lazy or mapped
data counts. Columns: ``load s/rank``: the slowest rank's seconds with the N ranks as concurrent
processes (forked from a fork server that imported the libraries once, released together by a
pipe barrier after the shards' pages were dropped from the page cache with posix_fadvise
DONTNEED; they share the page cache, as ranks on one node do), median of --reps;
``storage MB``: /proc/self/io read_bytes of one rank (the last) run alone from a cold cache, as on
its own node (bytes fetched from storage: page-cache misses, mmap faults, readahead, O_DIRECT);
``pread MB``: its rchar (bytes read(2)/pread(2) returned; mapped reads show none); ``accounted
MB``: what our loader says it read (tensor_bytes + header_bytes); ``expected MB``: the rank's
experts plus the replicated tensors, from the headers (headers excluded); ``peak RSS MB``: the
rank's peak resident memory (VmHWM, reset before loading) above its RSS before loading. Once per
N and implementation, in the last rep and after every rank's clock stopped, every rank checks
that it holds exactly its names and that each tensor equals (torch.equal) the checkpoint's (read
with the reference safetensors); a failed check exits non-zero.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import struct
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench_run  # noqa: E402  (touch)
from device import drop_cache  # noqa: E402

EXPERTS = 64
IMPLS = ("ours", "fastsafetensors", "naive")
INDEX = "model.safetensors.index.json"


def proc_io(key):
    """rchar: bytes read(2)/pread(2) returned; read_bytes: bytes fetched from storage for this
    process (page-cache misses, mmap faults, readahead and direct I/O included)."""
    with open("/proc/self/io", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1])


def expert_of(name):
    """The expert index of a per-expert tensor (``...experts.<E>...``), else None."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "experts" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def owned_experts(rank, world):
    """Contiguous blocks, the first ``EXPERTS % world`` ranks one expert more (both loaders)."""
    base, extra = divmod(EXPERTS, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def shard_files(checkpoint):
    with open(os.path.join(checkpoint, INDEX), encoding="utf-8") as f:
        return sorted(set(json.load(f)["weight_map"].values()))


def read_header(path):
    """A safetensors file's header: name -> entry (dtype, shape, data_offsets)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def expected_for_rank(checkpoint, rank, world):
    """The names rank ``rank`` of ``world`` must hold, and their bytes, from the headers."""
    mine = set(owned_experts(rank, world))
    names, nbytes = set(), 0
    for file in shard_files(checkpoint):
        for name, entry in read_header(os.path.join(checkpoint, file)).items():
            expert = expert_of(name)
            if expert is None or expert in mine:
                names.add(name)
                nbytes += entry["data_offsets"][1] - entry["data_offsets"][0]
    return names, nbytes


def load(impl, checkpoint, rank, world, backend):
    """This rank's tensors with ``impl``; returns (tensors, accounted bytes or None, keep-alive)."""
    files = [os.path.join(checkpoint, f) for f in shard_files(checkpoint)]
    if impl == "ours":
        from torch_safetensors.distributed import ExpertPlan, ShardPlan, load_for_rank

        loaded = load_for_rank(checkpoint, ShardPlan(experts=ExpertPlan(EXPERTS)), rank, world,
                               backend=backend)
        return loaded.tensors, loaded.bytes_read, None
    if impl == "fastsafetensors":
        from fastsafetensors import SafeTensorsFileLoader
        from fastsafetensors.ep_slice import expert_parallel_filter

        loader = SafeTensorsFileLoader(None, "cpu", nogds=True)
        loader.set_tensor_filter(expert_parallel_filter(num_experts=EXPERTS, ep_size=world,
                                                        ep_rank=rank))
        loader.add_filenames({0: files})
        buffers = loader.copy_files_to_device()
        tensors = {name: buffers.get_tensor(name) for name in loader.get_keys()}
        return tensors, None, (loader, buffers)  # closed when the rank is done
    from safetensors.torch import load_file

    mine = set(owned_experts(rank, world))
    tensors = {}
    for path in files:
        for name, tensor in load_file(path).items():
            expert = expert_of(name)
            if expert is None or expert in mine:
                tensors[name] = tensor
    return tensors, None, None


def check(checkpoint, tensors, expected_names):
    """Problems with what a rank holds: wrong names, or a tensor unequal to the checkpoint's."""
    import torch
    from safetensors import safe_open

    problems = []
    if set(tensors) != expected_names:
        problems.append(f"names: {len(set(tensors) - expected_names)} extra, "
                        f"{len(expected_names - set(tensors))} missing")
    with open(os.path.join(checkpoint, INDEX), encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    by_file = {}
    for name in tensors:
        by_file.setdefault(weight_map[name], []).append(name)
    for file, names in by_file.items():
        with safe_open(os.path.join(checkpoint, file), "pt") as f:
            for name in names:
                if not torch.equal(tensors[name], f.get_tensor(name)):
                    problems.append(f"{name} differs")
    return problems


def peak_rss_reset():
    """Resets this process's peak resident memory (VmHWM) to its current RSS; returns it."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    return status_bytes("VmRSS")


def status_bytes(key):
    with open("/proc/self/status", encoding="ascii") as f:
        return 1024 * int(next(line for line in f if line.startswith(key + ":")).split()[1])


# Imported once by the fork server the ranks are forked from, so a rank starts in milliseconds
# instead of importing torch (seconds on a small machine); the clock starts after the barrier.
PRELOAD = ["torch", "torch_safetensors.distributed", "fastsafetensors",
           "fastsafetensors.frameworks._torch", "safetensors.torch"]


def rank_process(conn, impl, checkpoint, rank, world, backend):
    """One rank: signal ready, wait for "go", load, touch, send its report; then, on "check",
    check what it holds and send the problems."""
    import torch

    try:
        torch.set_num_threads(1)  # only touch() computes; see its docstring in run.py
        conn.send("ready")
        conn.recv()
        resident_before = peak_rss_reset()
        rchar, storage = proc_io("rchar"), proc_io("read_bytes")
        start = time.perf_counter()
        tensors, accounted, keep_alive = load(impl, checkpoint, rank, world, backend)
        for tensor in tensors.values():
            bench_run.touch(tensor)
        seconds = time.perf_counter() - start
        conn.send({"rank": rank, "seconds": seconds, "rchar": proc_io("rchar") - rchar,
                   "storage": proc_io("read_bytes") - storage, "accounted": accounted,
                   "held": sum(t.nbytes for t in tensors.values()),
                   "peak_extra_rss": status_bytes("VmHWM") - resident_before})
        if conn.recv() == "check":  # after every rank's clock stopped
            names, _ = expected_for_rank(checkpoint, rank, world)
            conn.send(check(checkpoint, tensors, names))
        if keep_alive is not None:
            loader, buffers = keep_alive
            buffers.close()
            loader.close()
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


def run_world(checkpoint, impl, world, backend, ranks=None, verify=False):
    """Ranks `ranks` (default: all) of `world` as concurrent processes released together, from a
    cold cache; with `verify`, each rank's problems (a list) under "problems"."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    conns, procs = [], []
    for rank in range(world) if ranks is None else ranks:
        conn, child = context.Pipe()
        procs.append(context.Process(target=rank_process,
                                     args=(child, impl, checkpoint, rank, world, backend)))
        procs[-1].start()
        conns.append(conn)

    def receive(what):
        try:
            return [conn.recv() for conn in conns]
        except EOFError:
            for p in procs:
                p.kill()
            raise SystemExit(f"rank failed {what} ({impl}, N={world})")

    def tell(message):
        for conn in conns:
            conn.send(message)

    receive("before loading")  # the barrier
    for f in os.listdir(checkpoint):
        drop_cache(os.path.join(checkpoint, f))
    tell("go")
    out = receive("loading")
    tell("check" if verify else "done")
    if verify:
        for report, problems in zip(out, receive("checking")):
            report["problems"] = problems
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"rank failed ({impl}, N={world})")
    return out


def moe_layout(layers, d, ff, vocab):
    """Names and shapes of a Qwen3-MoE-like decoder with per-expert tensors (GQA, q/k norms)."""
    heads, kv_heads, head_dim = 8, 2, d // 8
    spec = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}."
        spec += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (heads * head_dim, d)),
            (p + "self_attn.k_proj.weight", (kv_heads * head_dim, d)),
            (p + "self_attn.v_proj.weight", (kv_heads * head_dim, d)),
            (p + "self_attn.o_proj.weight", (d, heads * head_dim)),
            (p + "self_attn.q_norm.weight", (head_dim,)),
            (p + "self_attn.k_norm.weight", (head_dim,)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate.weight", (EXPERTS, d)),
        ]
        for e in range(EXPERTS):
            q = f"{p}mlp.experts.{e}."
            spec += [(q + "gate_proj.weight", (ff, d)), (q + "up_proj.weight", (ff, d)),
                     (q + "down_proj.weight", (d, ff))]
    spec += [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
    return spec


def make_checkpoint(workdir, size_mb):
    import torch

    from torch_safetensors import hub

    d, ff, vocab = 512, 256, 8192
    per_layer = 2 * (EXPERTS * 3 * d * ff + 2 * d * d + 2 * d * d // 4 + EXPERTS * d)
    layers = max(1, round((size_mb * 1e6 - 2 * 2 * vocab * d) / per_layer))
    checkpoint = os.path.join(workdir, f"moe_{layers}_layers_{EXPERTS}_experts")
    if not os.path.exists(os.path.join(checkpoint, INDEX)):
        torch.manual_seed(0)
        tensors = {n: (torch.randn(s) * 0.02).to(torch.bfloat16)
                   for n, s in moe_layout(layers, d, ff, vocab)}
        total = sum(t.nbytes for t in tensors.values())
        hub.save_torch_state_dict(tensors, checkpoint, max_shard_size=total // 4 + (1 << 20))
        del tensors
    return checkpoint


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="~120 MB checkpoint, 1 rep")
    ap.add_argument("--backend", default="pread", choices=("pread", "mmap"),
                    help="our loader's backend")
    ap.add_argument("--workdir", default=os.path.join("/tmp", "torch_safetensors_bench"))
    ap.add_argument("--json", default="", help="also write the rows to this file")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # the ranks' (the fork server starts with this)
    if args.quick:
        args.size_mb, args.reps = 100, 1

    checkpoint = make_checkpoint(args.workdir, args.size_mb)
    files = os.listdir(checkpoint)
    total = sum(os.path.getsize(os.path.join(checkpoint, f)) for f in files)
    print(f"checkpoint: {checkpoint} ({total / 1e9:.2f} GB with headers and index, "
          f"{len(files) - 1} shards, {EXPERTS} experts a layer); {os.cpu_count()} cores; "
          f"cold page cache; {args.reps} rep(s); ours backend={args.backend}\n")
    print("| N | impl | load s/rank | ÷ ours | storage MB | pread MB | accounted MB "
          "| expected MB | storage ÷ expected | peak RSS MB |")
    print("|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|")
    rows, failures = [], []
    for world in (1, 2, 4):
        _, expected = expected_for_rank(checkpoint, world - 1, world)
        seconds_of = {}
        for impl in IMPLS:
            # the last rep also checks what each rank holds, once its clock stopped
            runs = [run_world(checkpoint, impl, world, args.backend, verify=rep == args.reps - 1)
                    for rep in range(args.reps)]
            failures += [f"{impl} N={world} rank {r['rank']}: {problem}"
                         for r in runs[-1] for problem in r["problems"]]
            seconds = statistics.median(max(r["seconds"] for r in run) for run in runs)
            # N = 1: the timed runs are that rank alone already
            alone = (runs[-1][0] if world == 1 else
                     run_world(checkpoint, impl, world, args.backend, ranks=[world - 1])[0])
            seconds_of[impl] = seconds
            row = {"world": world, "impl": impl, "seconds_per_rank": seconds,
                   "storage_per_rank": alone["storage"], "read_per_rank": alone["rchar"],
                   "accounted_per_rank": alone["accounted"], "expected_per_rank": expected,
                   "held_per_rank": alone["held"], "peak_extra_rss": alone["peak_extra_rss"]}
            rows.append(row)
            accounted = "-" if alone["accounted"] is None else f"{alone['accounted'] / 1e6:.1f}"
            print(f"| {world} | {impl} | {seconds:.3f} | {seconds / seconds_of['ours']:.2f}× "
                  f"| {alone['storage'] / 1e6:.1f} | {alone['rchar'] / 1e6:.1f} | {accounted} "
                  f"| {expected / 1e6:.1f} | {alone['storage'] / expected:.3f} "
                  f"| {alone['peak_extra_rss'] / 1e6:.1f} |", flush=True)
    for failure in failures[:20]:
        print("CHECK FAILED:", failure)
    summary = {"bench": "expert_load", "checkpoint_bytes": total, "experts": EXPERTS,
               "reps": args.reps, "checks_passed": not failures, "rows": rows}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
