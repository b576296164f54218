#!/usr/bin/env python3
"""torch_safetensors benchmark: one command, one table.

    python3 bench/run.py                 # full run (~1 GB checkpoint), medians of 5
    python3 bench/run.py --scale 0.05    # quick CI-size run

Generates realistic checkpoints (a Llama-like BF16 layer stack, 100,000 tiny tensors, an FP8 +
scales mix, and the layer stack's structure at 1/256 of the bytes), then measures (one process per
side and checkpoint; every run records its own peak RSS):

  ours      torch::safetensors (C++, via bench_io): load (mmap, lazy), load + touch, load (pread,
            eager), save, parse_header, File open
  reference safetensors.torch: load_file (mmap and pread backends), load(bytes), save_file,
            safe_open + keys
  torch     torch.load (mmap=True and not, weights_only=True), torch.save
  libtorch  torch::pickle_load (of the torch.save file), torch::load / torch::save
            (std::vector<Tensor> archives)
  limit     this machine: memcpy from the page cache (1 and N threads), parallel pread into
            pre-faulted memory, write() bandwidth to the page cache

and prints a markdown table of medians, GB/s, ratios and peak extra RSS, followed by the targets.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GIB = 1 << 30
MIB = 1 << 20

# ----------------------------------------------------------------------------------------------
# Checkpoint generation (runs in a child process: the driver itself stays small)
# ----------------------------------------------------------------------------------------------


def llama_stack(layers: int, d: int, ff: int, vocab: int, kv_div: int = 1):
    """Names and shapes of a Llama-style decoder: 9 tensors per layer plus embeddings and head."""
    kv = d // kv_div
    spec = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}."
        spec += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (d, d)),
            (p + "self_attn.k_proj.weight", (kv, d)),
            (p + "self_attn.v_proj.weight", (kv, d)),
            (p + "self_attn.o_proj.weight", (d, d)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (ff, d)),
            (p + "mlp.up_proj.weight", (ff, d)),
            (p + "mlp.down_proj.weight", (d, ff)),
        ]
    spec += [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
    return spec


def generate(workdir: str, scale: float) -> dict:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    os.makedirs(workdir, exist_ok=True)
    made = {}

    def write(name, tensors, kind):
        path = os.path.join(workdir, name + ".safetensors")
        save_file(tensors, path)
        torch.save(tensors, os.path.join(workdir, name + ".pt"))
        made[name] = {"path": path, "kind": kind, "tensors": len(tensors),
                      "bytes": sum(t.nbytes for t in tensors.values())}

    def bf16(shape):
        return (torch.randn(shape) * 0.02).to(torch.bfloat16)

    # 1. Llama-like BF16 stack: ~1.0 GB and ~1,000 tensors at scale 1.
    layers = max(2, round(110 * scale))
    write("llama_bf16", {n: bf16(s) for n, s in llama_stack(layers, 640, 1536, 32000, 1)},
          "Llama-like BF16 layer stack")
    # The same names and tensor count with 1/256 of the bytes: lazy load must not care.
    write("llama_small", {n: bf16(s) for n, s in
                          llama_stack(layers, 40, 96, 2000, 1)},
          "same structure, 1/256 of the bytes")

    # 2. 100,000 tiny tensors (header-bound).
    count = max(1000, round(100_000 * scale))
    tiny = {}
    for i in range(count):
        tiny[f"blocks.{i // 100}.params.{i % 100}.weight"] = torch.randn(4)
    write("tiny_100k", tiny, f"{count} tiny F32 tensors")

    # 3. FP8 + scales: E4M3 weights with 128x128 block scales (DeepSeek-V3 style), BF16 norms and
    # embeddings.
    layers8 = max(1, round(10 * scale))
    d, ff, vocab = 2048, 5632, 32000
    fp8 = {"model.embed_tokens.weight": bf16((vocab // 4, d))}
    for i in range(layers8):
        p = f"model.layers.{i}."
        fp8[p + "input_layernorm.weight"] = bf16((d,))
        fp8[p + "post_attention_layernorm.weight"] = bf16((d,))
        for name, (o, n) in {"self_attn.q_proj": (d, d), "self_attn.k_proj": (d, d),
                             "self_attn.v_proj": (d, d), "self_attn.o_proj": (d, d),
                             "mlp.gate_proj": (ff, d), "mlp.up_proj": (ff, d),
                             "mlp.down_proj": (d, ff)}.items():
            fp8[p + name + ".weight"] = torch.randn(o, n).to(torch.float8_e4m3fn)
            fp8[p + name + ".weight_scale_inv"] = torch.rand((o + 127) // 128, (n + 127) // 128)
    write("fp8_mix", fp8, "FP8 E4M3 weights + F32 block scales + BF16")
    return made


# ----------------------------------------------------------------------------------------------
# Python-side measurements (worker mode: one process per measurement)
# ----------------------------------------------------------------------------------------------


LIBC = ctypes.CDLL("libc.so.6")


def status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def measure(reps, warmup, body, setup=None, teardown=None, budget=20.0):
    """Same protocol as bench_io's measure(): warm-up, then timed runs with per-run peak RSS; a
    warm-up longer than half the budget is the only run, a slow one cuts the repetitions."""
    def once():
        if setup:
            setup()
        reset_peak_rss()
        rss0 = status_kib("VmRSS")
        t0 = time.perf_counter()
        body()
        dt = time.perf_counter() - t0
        hwm = status_kib("VmHWM")
        if teardown:
            teardown()
        gc.collect()
        LIBC.malloc_trim(0)  # as bench_io: every run starts from memory handed back to the OS
        return dt, max(0, hwm - rss0) * 1024

    times, peaks = [], []
    for _ in range(warmup):
        dt, peak = once()
        if dt > budget / 2:
            return [dt], [peak]
        if dt * reps > budget:
            reps = max(1, int(budget / dt))
    for _ in range(reps):
        dt, peak = once()
        times.append(dt)
        peaks.append(peak)
    return times, peaks


def touch(t):
    """Reads every byte: an int64 sum on one intra-op thread (see bench_io's touch for why)."""
    import torch

    if t.numel() == 0:
        return 0
    b = t.reshape(-1).view(torch.uint8)
    if b.numel() % 8 == 0 and b.data_ptr() % 8 == 0:
        b = b.view(torch.int64)
    return int(b.sum())


def worker(ops: str, path: str, reps: int, warmup: int, budget: float):
    import torch

    torch.set_num_threads(1)  # only touch() computes; see its docstring
    for op in ops.split(","):
        try:
            worker_op(op, path, reps, warmup, budget)
        except Exception as e:  # one failing peer must not hide the others
            print(f"worker: {op} failed: {type(e).__name__}: {e}", file=sys.stderr)


def worker_op(op: str, path: str, reps: int, warmup: int, budget: float):
    import torch
    import safetensors
    import safetensors.torch as st

    state = {}

    def nbytes(d):
        return sum(t.nbytes for t in d.values())

    def finish():  # teardown: record the size, drop the tensors
        d = state.pop("d")
        state["bytes"], state["tensors"] = nbytes(d), len(d)

    stem = path[: -len(".safetensors")]
    pt, out = stem + ".pt", stem + ".out.safetensors"
    gc.collect()
    impl, kind, note, teardown = None, None, "", finish
    if op == "ref_lazy":
        impl, kind, note = "reference", "lazy", "safetensors.torch.load_file (mmap)"
        body = lambda: state.update(d=st.load_file(path))
    elif op == "ref_lazy_touch":
        impl, kind, note = "reference", "lazy_touch", "load_file (mmap) + touch"

        def body():
            state["d"] = st.load_file(path)
            for t in state["d"].values():
                touch(t)
    elif op == "ref_eager_pread":
        impl, kind, note = "reference", "eager", "load_file(backend='pread')"
        body = lambda: state.update(d=st.load_file(path, backend="pread"))
    elif op == "ref_eager_bytes":
        impl, kind, note = "reference_bytes", "eager", "load(open(f).read())"

        def body():
            with open(path, "rb") as f:
                state["d"] = st.load(f.read())
    elif op in ("torch_lazy", "torch_lazy_touch"):
        impl, kind = "torch.load", "lazy" if op == "torch_lazy" else "lazy_touch"
        note = "torch.load(mmap=True, weights_only=True)" + (" + touch" if "touch" in op else "")

        def body():
            state["d"] = torch.load(pt, mmap=True, weights_only=True)
            if "touch" in op:
                for t in state["d"].values():
                    touch(t)
    elif op == "torch_eager":
        impl, kind, note = "torch.load", "eager", "torch.load(weights_only=True)"
        body = lambda: state.update(d=torch.load(pt, weights_only=True))
    elif op in ("ref_save", "torch_save"):
        src = st.load_file(path, backend="pread")
        state.update(bytes=nbytes(src), tensors=len(src))
        if op == "ref_save":
            impl, kind, note = "reference", "save", "safetensors.torch.save_file"
            body = lambda: st.save_file(src, out)
        else:
            impl, kind, note = "torch.save", "save", "torch.save(dict)"
            body = lambda: torch.save(src, out)
        teardown = lambda: os.unlink(out)
    elif op == "ref_header":
        impl, kind, note = "reference", "header_open", "safe_open(f, 'pt') + keys()"

        def body():
            with st.safe_open(path, framework="pt") as f:
                state["tensors"] = len(f.keys())
        teardown = None
    elif op == "json_header":
        impl, kind, note = "python_json", "header_parse", "json.loads of the header (stdlib)"
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            raw = f.read(n)

        def body():
            state["tensors"] = len(json.loads(raw)) - ("__metadata__" in raw[:20].decode())
        teardown = None
        state["bytes"] = n
    else:
        raise SystemExit(f"unknown worker op {op}")

    times, peaks = measure(reps, warmup, body, teardown=teardown, budget=budget)
    if kind in ("header_open",):
        state["bytes"] = int.from_bytes(open(path, "rb").read(8), "little")
    print(json.dumps({"impl": impl, "op": kind, "file": path, "bytes": state.get("bytes", 0),
                      "tensors": state.get("tensors", 0), "times_s": times,
                      "peak_extra_bytes": peaks, "note": note}), flush=True)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def filesystem(path: str) -> str:
    """The type and device of the mount holding `path` (from /proc/mounts)."""
    best = ("", "?", "?")
    path = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
    except OSError:
        pass
    return f"{best[1]} on {best[2]}"


def machine(workdir: str = "/tmp") -> str:
    model, vm = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and " hypervisor" in line:
                    vm = " (virtual machine)"
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    import torch
    import safetensors

    cpu = model or platform.processor() or platform.machine()
    return (f"{cpu}{vm}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"checkpoints on {filesystem(workdir)}; "
            f"torch {torch.__version__}, safetensors {safetensors.__version__}, "
            f"Python {platform.python_version()}")


FAILURES = []


def run_json(cmd, timeout):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  TIMEOUT after {timeout}s: {' '.join(cmd)}", file=sys.stderr)
        return []
    if p.stderr.strip():
        print(p.stderr.strip()[-3000:], file=sys.stderr)
        name = os.path.basename(cmd[cmd.index("--file") + 1])
        FAILURES.extend(f"{name}: {l.split(': ', 1)[1]}" for l in p.stderr.splitlines()
                        if " failed: " in l)
    if p.returncode != 0:
        print(f"  FAILED ({p.returncode}): {' '.join(cmd)}", file=sys.stderr)
    rows = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    print(f"  {time.time() - t0:6.1f}s  {' '.join(os.path.basename(c) for c in cmd[:4])}",
          file=sys.stderr)
    return rows


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


IMPL_LABEL = {
    "ours": "**torch_safetensors**",
    "reference": "safetensors.torch",
    "reference_bytes": "safetensors.torch load(bytes)",
    "torch.load": "torch.load",
    "torch.save": "torch.save",
    "libtorch": "torch::load / torch::save",
    "libtorch_pickle": "torch::pickle_load",
    "python_json": "json.loads",
    "limit": "machine limit",
}
OP_ORDER = ["header_parse", "header_open", "lazy", "lazy_touch", "eager", "save"]
OP_LABEL = {
    "header_parse": "header parse",
    "header_open": "open (read + parse header)",
    "lazy": "lazy load",
    "lazy_touch": "lazy load + touch every byte",
    "eager": "eager load (owned memory)",
    "save": "save",
}


def summarize(rows, files, threads):
    """Markdown table + target check list."""
    med = lambda r: statistics.median(r["times_s"])
    out = []
    by = {}
    for r in rows:
        by.setdefault((os.path.basename(r["file"]), r["op"], r["impl"]), r)

    def get(f, op, impl):
        return by.get((f, op, impl))

    targets = []
    for name, info in files.items():
        f = os.path.basename(info["path"])
        out.append(f"\n### {name}: {info['kind']} — {info['tensors']:,} tensors, "
                   f"{info['bytes'] / 1e9:.3f} GB\n")
        out.append("| operation | implementation | median | n | GB/s | µs/tensor | "
                   "ours ×faster | vs limit | peak extra RSS |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        # The limits are the best of 1 and N threads: the conservative bar for us.
        el = [get(f, op, "limit") for op in ("pread_1t", "pread_%dt" % threads)]
        el = [e for e in el if e]
        limit_eager = min(el, key=med) if el else None
        byte_bound = info["bytes"] >= 100e6  # GB/s targets mean nothing for a 2 MB data section
        wl = [get(f, op, "limit") for op in ("write_1t", "write_%dt" % threads)]
        wl = [w for w in wl if w]
        limit_write = min(wl, key=med) if wl else None
        for op in OP_ORDER:
            ours = get(f, op, "ours")
            group = [r for (ff, o, i), r in by.items() if ff == f and o == op]
            group.sort(key=lambda r: (r["impl"] != "ours", med(r)))
            if op == "eager":
                group += [get(f, o, "limit") for o in ("pread_%dt" % threads, "pread_1t",
                          "pread_%dt_fresh" % threads, "pread_%dt_fresh_thp" % threads,
                          "memcpy_%dt" % threads, "memcpy_1t")
                          if get(f, o, "limit")]
            if op == "save":
                group += wl
            for r in group:
                t = med(r)
                touches = op not in ("lazy", "header_open") and r["bytes"]
                gbs = f"{r['bytes'] / t / 1e9:.2f}" if touches else "—"
                per = (f"{t / r['tensors'] * 1e6:.2f}" if r["tensors"] and r["impl"] != "limit"
                       else "—")
                ratio = ""
                if ours and r["impl"] not in ("ours", "limit"):
                    ratio = f"{t / med(ours):.2f}×"
                vs_limit = ""
                lim = limit_eager if op == "eager" else limit_write if op == "save" else None
                if lim and r["impl"] != "limit" and byte_bound:
                    vs_limit = f"{med(lim) / t:.2f}"
                label = IMPL_LABEL.get(r["impl"], r["impl"])
                if r["impl"] == "limit":
                    label = f"limit: {r['op']}"
                peak = statistics.median(r["peak_extra_bytes"]) / MIB
                out.append(f"| {OP_LABEL.get(op, op)} | {label} | {fmt_time(t)} | "
                           f"{len(r['times_s'])} | {gbs} | {per} | "
                           f"{ratio} | {vs_limit} | {peak:.1f} MiB |")
        # Targets for this file.
        ours = {op: get(f, op, "ours") for op in OP_ORDER}

        def ratio(op, impl):
            peer = get(f, op, impl)
            return med(peer) / med(ours[op]) if peer and ours[op] else None

        def check(desc, value, goal, higher=True, unit="×"):
            if value is None:
                return  # not measured on this checkpoint (llama_small: lazy and header only)
            ok = value >= goal if higher else value <= goal
            targets.append(f"- [{'x' if ok else ' '}] {name}: {desc}: {value:.2f}{unit} "
                           f"(target {'≥' if higher else '≤'} {goal}{unit}){'' if ok else ' — MISSED'}")

        check("lazy load vs reference load_file", ratio("lazy", "reference"), 5)
        check("lazy load vs torch.load (no mmap)", (med(get(f, "eager", "torch.load")) /
              med(ours["lazy"])) if get(f, "eager", "torch.load") and ours["lazy"] else None, 50)
        check("lazy load vs torch.load(mmap=True)", ratio("lazy", "torch.load"), 50)
        if ours["eager"] and limit_eager and byte_bound:
            check("eager load vs pread-into-pre-faulted-memory limit",
                  med(limit_eager) / med(ours["eager"]), 0.85)
            fresh = get(f, "pread_%dt_fresh_thp" % threads, "limit")
            if fresh:
                targets.append(f"  - for context: vs pread into fresh huge-page memory (what any "
                               f"loader allocating new memory pays): "
                               f"{med(fresh) / med(ours['eager']):.2f}×")
        check("eager load vs reference load_file(pread)", ratio("eager", "reference"), 1.5)
        if ours["save"] and limit_write and byte_bound:
            check("save vs page-cache write bandwidth", med(limit_write) / med(ours["save"]), 0.85)
        check("save vs reference save_file", ratio("save", "reference"), 1.5)
        if ours["save"] and byte_bound:
            check("save peak extra RSS", statistics.median(ours["save"]["peak_extra_bytes"]) / MIB,
                  8, higher=False, unit=" MiB")
        if info["tensors"] >= 50_000:
            if ours["header_parse"]:
                check(f"header parse ({info['tensors']:,} tensors)",
                      med(ours["header_parse"]) * 1e3, 20, higher=False, unit=" ms")
            if ours["lazy"]:
                check("per-tensor overhead of load",
                      med(ours["lazy"]) / info["tensors"] * 1e6, 2, higher=False, unit=" µs")
    small = files.get("llama_small")
    big = files.get("llama_bf16")
    if small and big:
        a = get(os.path.basename(big["path"]), "lazy", "ours")
        b = get(os.path.basename(small["path"]), "lazy", "ours")
        if a and b:
            targets.append(f"- [{'x' if med(a) / med(b) < 1.5 else ' '}] lazy load independent of "
                           f"bytes: llama_bf16 ({big['bytes'] / 1e9:.2f} GB) / llama_small "
                           f"({small['bytes'] / 1e6:.1f} MB) time ratio = {med(a) / med(b):.2f} "
                           f"(same {big['tensors']} tensors)")
    return "\n".join(out), "\n".join(targets)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="checkpoint size factor (1.0 ≈ 1 GB)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    ap.add_argument("--budget", type=float, default=20.0,
                    help="seconds per measurement: peers slower than budget/reps get fewer runs "
                    "(the table's n column says how many)")
    ap.add_argument("--workdir", default=os.path.join("/tmp", "torch_safetensors_bench"),
                    help="where checkpoints go (reused when the scale matches)")
    ap.add_argument("--bench-io", default=os.path.join(ROOT, "build", "bench", "bench_io"))
    ap.add_argument("--only", default="", help="comma-separated checkpoint names")
    ap.add_argument("--skip", default="", help="comma-separated implementations to skip "
                    "(ours,reference,torch,libtorch,limit)")
    ap.add_argument("--json", default="", help="also write all raw measurements here")
    ap.add_argument("--markdown", default="", help="also write the table here")
    ap.add_argument("--clean", action="store_true", help="delete the checkpoints afterwards")
    ap.add_argument("--timeout", type=int, default=600, help="per measurement process, seconds")
    # Internal: worker / generator modes.
    ap.add_argument("--render", default="", help="print the table of a saved --json file")
    ap.add_argument("--worker", default="")
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--file", default="")
    a = ap.parse_args()

    if a.render:  # re-print the table of an earlier --json run
        with open(a.render) as f:
            saved = json.load(f)
        table, targets = summarize(saved["rows"], saved["files"], saved["threads"])
        print(saved["header"] + "\n" + table + "\n\n#### Targets\n\n" + targets + "\n" +
              saved.get("failures", ""))
        return
    if a.worker:
        return worker(a.worker, a.file, a.reps, a.warmup, a.budget)
    if a.generate:
        print(json.dumps(generate(a.workdir, a.scale)))
        return

    t_start = time.time()
    manifest = os.path.join(a.workdir, "manifest.json")
    files = None
    if os.path.exists(manifest):
        with open(manifest) as f:
            m = json.load(f)
        if m.get("scale") == a.scale and all(os.path.exists(v["path"]) for v in m["files"].values()):
            files = m["files"]
    if files is None:
        print(f"generating checkpoints (scale {a.scale}) in {a.workdir} ...", file=sys.stderr)
        shutil.rmtree(a.workdir, ignore_errors=True)
        t0 = time.time()
        p = subprocess.run([sys.executable, __file__, "--generate", "--workdir", a.workdir,
                            "--scale", str(a.scale)], capture_output=True, text=True, check=True)
        files = json.loads(p.stdout.strip().splitlines()[-1])
        with open(manifest, "w") as f:
            json.dump({"scale": a.scale, "files": files}, f)
        print(f"  generated in {time.time() - t0:.0f}s", file=sys.stderr)
    if os.path.exists(os.path.join(a.workdir, "rows.jsonl")):
        os.unlink(os.path.join(a.workdir, "rows.jsonl"))
    if a.only:
        files = {k: v for k, v in files.items() if k in a.only.split(",")}
    skip = set(a.skip.split(",")) if a.skip else set()
    if not os.path.exists(a.bench_io) and "ours" not in skip:
        sys.exit(f"{a.bench_io} not found: build it with bench/run.sh (or pass --bench-io)")

    threads = os.cpu_count() or 1
    rep = ["--reps", str(a.reps), "--warmup", str(a.warmup), "--budget", str(a.budget)]
    rows = []
    for name, info in files.items():
        path = info["path"]
        stem = path[: -len(".safetensors")]
        out = stem + ".out.safetensors"
        print(f"{name}:", file=sys.stderr)
        # Warm the page cache for every input of this checkpoint.
        for p in (path, stem + ".pt"):
            with open(p, "rb") as f:
                while f.read(64 * MIB):
                    pass
        header_only = name == "llama_small"
        cxx, py = [], []
        if "ours" not in skip:
            cxx += ["header", "lazy"] + ([] if header_only else ["lazy_touch", "eager", "save"])
        if "reference" not in skip:
            py += ["ref_header", "json_header", "ref_lazy"]
            if not header_only:
                py += ["ref_lazy_touch", "ref_eager_pread", "ref_eager_bytes", "ref_save"]
        if "torch" not in skip and not header_only:
            py += ["torch_lazy", "torch_lazy_touch", "torch_eager", "torch_save"]
        if "libtorch" not in skip and not header_only:
            cxx += ["pickle_load"]
            if info["tensors"] <= 20_000:
                cxx += ["torch_save", "torch_load"]
            else:
                FAILURES.append(
                    f"{name}: torch::save / torch::load (LibTorch archive) skipped: quadratic in "
                    "the tensor count (c10::ClassType attribute lookups; perf shows memcmp in "
                    "getAttributeSlot/checkNotExist), several minutes per save at 100,000 tensors")
        if "limit" not in skip and not header_only:
            cxx += ["limits"]
        jobs = []
        # One process per side and checkpoint: every repetition resets and reads its own peak
        # RSS, so processes need not be separate per measurement (and torch imports are slow).
        if cxx:
            jobs.append([a.bench_io, ",".join(cxx), "--file", path] + rep)
        if py:
            jobs.append([sys.executable, __file__, "--worker", ",".join(py), "--file", path] + rep)
        for cmd in jobs:
            got = run_json(cmd, a.timeout)
            for r in got:  # label every row with the safetensors file it stands for
                r["file"] = path
            rows += got
            with open(os.path.join(a.workdir, "rows.jsonl"), "a") as f:  # survives an abort
                f.writelines(json.dumps(r) + "\n" for r in got)
        for p in (stem + ".libtorch.pt",):
            if os.path.exists(p):
                os.unlink(p)

    table, targets = summarize(rows, files, threads)
    header = (f"Machine: {machine(a.workdir)}. Checkpoints in {a.workdir} (scale {a.scale}); medians of "
              f"{a.reps} runs after {a.warmup} warm-up (n < {a.reps}: a peer too slow for the "
              f"{a.budget:.0f} s budget per measurement), page cache warm; one process per side (C++, Python) and checkpoint. Total bench time {time.time() - t_start:.0f}s.\n\n"
              "`ours ×faster` = peer time / our time for the same operation (> 1: we are faster). "
              "`vs limit` = limit time / this time (1.0 = at the machine limit; eager: parallel "
              "pread into pre-faulted memory, save: best page-cache write). `peak extra RSS` = "
              "VmHWM during one repetition minus RSS before it (mapped file pages count once "
              "touched).")
    failures = ""
    if FAILURES:
        failures = ("\n#### Peers that could not run\n\n" +
                    "\n".join(f"- {l}" for l in FAILURES) + "\n")
    text = header + "\n" + table + "\n\n#### Targets\n\n" + targets + "\n" + failures
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(a.workdir), "scale": a.scale, "threads": threads,
                       "files": files, "header": header, "failures": failures, "rows": rows},
                      f, indent=1)
    if a.clean:
        shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
