"""AOTInductor packages: a weightless .pt2 + safetensors (torch_safetensors.aoti.load_weights,
zero-copy and copy=True) against the same model compiled with its weights in the library and
against PyTorch's own weights-on-disk format (`pickle_weights`, loaded by
`torch.export.pt2_archive._package.load_pt2(..., load_weights_from_disk=True)`).

    python3 bench/aoti_bench.py [--quick] [--reps 3] [--workdir DIR] [--cold] [--json FILE]
    python3 bench/aoti_bench.py --render FILE    # re-prints a saved --json run

The model: a stack of square float32 Linear layers (8 x 4096, 537 MB; --quick: 5 x 1024, 21 MB).
It is exported once and compiled into three packages in --workdir (reused by later runs):
  weightless.pt2 + model.safetensors  inductor_configs=aoti.WEIGHTLESS, aoti.save_weights
  compiled_in.pt2                     default configs (weights in the model's .so)
  pickle_weights.pt2                  package_constants_in_so=False,
                                      package_constants_on_disk_format="pickle_weights"
Each variant runs --reps times, each time in a fresh process, round robin; medians are reported.
A process times the load (the imports it needs beyond torch and torch._inductor, the package, its
weights) and the first inference, and reads VmRSS, RssAnon, RssFile and VmHWM in
/proc/self/status before the load and after the first inference. Every output is checked against
the eager model's (torch.allclose, atol = rtol = 1e-4). The files are warm in the page cache
(written by the build or read by a previous run) unless --cold evicts them before each process
(posix_fadvise(DONTNEED), no root needed).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = ("ours", "ours_populate", "ours_copy", "compiled_in", "pickle_weights")
LABELS = {
    "ours": "weightless .pt2 + safetensors, `aoti.load_weights` (zero-copy)",
    "ours_populate": "weightless .pt2 + safetensors, `aoti.load_weights(populate=True)`",
    "ours_copy": "weightless .pt2 + safetensors, `aoti.load_weights(copy=True)`",
    "compiled_in": "weights compiled in (`aoti_load_package`)",
    "pickle_weights": "`pickle_weights` (`load_pt2(load_weights_from_disk=True)`)",
}
FILES = {
    "ours": ("weightless.pt2", "model.safetensors"),
    "ours_populate": ("weightless.pt2", "model.safetensors"),
    "ours_copy": ("weightless.pt2", "model.safetensors"),
    "compiled_in": ("compiled_in.pt2",),
    "pickle_weights": ("pickle_weights.pt2",),
}
PICKLE_CONFIGS = {
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.package_constants_on_disk_format": "pickle_weights",
}
TOLERANCE = 1e-4
BATCH = 8


def model_config(quick):
    return {"layers": 5, "dim": 1024} if quick else {"layers": 8, "dim": 4096}


def status_kib():
    """The memory lines of /proc/self/status, in KiB."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


# ---------------------------------------------------------------------------------------------
# The child: one variant, one fresh process.

def child(variant, workdir):
    import torch
    import torch._inductor  # noqa: F401  every variant needs it; not part of the measurement
    import torch._inductor.package  # noqa: F401
    import torch.export.pt2_archive._package as pt2_package

    x = torch.load(os.path.join(workdir, "input.pt"), weights_only=True)
    # _load_aoti compares the machine with the package's: the CPU ISA probe compiles and runs test
    # programs, once per process (cached), whatever the weights; timed apart.
    probe_start = time.perf_counter()
    torch._inductor.cpu_vec_isa.valid_vec_isa_list()
    probe_s = time.perf_counter() - probe_start
    before = status_kib()
    start = time.perf_counter()
    if variant in ("ours", "ours_populate", "ours_copy"):
        from torch_safetensors import aoti
        compiled = torch._inductor.aoti_load_package(os.path.join(workdir, "weightless.pt2"))
        aoti.load_weights(compiled, os.path.join(workdir, "model.safetensors"),
                          copy=variant == "ours_copy", populate=variant == "ours_populate")
    elif variant == "compiled_in":
        compiled = torch._inductor.aoti_load_package(os.path.join(workdir, "compiled_in.pt2"))
    elif variant == "pickle_weights":
        contents = pt2_package.load_pt2(os.path.join(workdir, "pickle_weights.pt2"),
                                        load_weights_from_disk=True)
        compiled = contents.aoti_runners["model"]
    else:
        raise ValueError(variant)
    loaded = time.perf_counter()
    loaded_status = status_kib()
    with torch.no_grad():
        y = compiled(x)
    ran = time.perf_counter()
    after = status_kib()
    y = y[0] if isinstance(y, (list, tuple)) else y
    expected = torch.load(os.path.join(workdir, "expected.pt"), weights_only=True)
    ok = bool(torch.allclose(y, expected, atol=TOLERANCE, rtol=TOLERANCE))
    worst = float((y - expected).abs().max())
    print(json.dumps({"variant": variant, "load_s": loaded - start, "first_run_s": ran - loaded,
                      "isa_probe_s": probe_s,
                      "before": before, "loaded": loaded_status, "after": after, "ok": ok,
                      "max_abs_diff": worst}))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# The parent: build the packages once, run the children, print the table.

def build(workdir, quick):
    import torch
    from torch_safetensors import aoti

    config = model_config(quick)
    meta_path = os.path.join(workdir, "meta.json")
    wanted = {"config": config, "torch": torch.__version__, "batch": BATCH}
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if {k: meta.get(k) for k in wanted} != wanted:
            meta = {}
    files = ["input.pt", "expected.pt"] + sorted({f for names in FILES.values() for f in names})
    if meta and all(os.path.exists(os.path.join(workdir, f)) for f in files):
        print(f"reusing the packages in {workdir}", flush=True)
        return meta
    meta = dict(wanted, compile_s={})
    os.makedirs(workdir, exist_ok=True)
    torch.manual_seed(0)
    dim = config["dim"]
    layers = []
    for _ in range(config["layers"]):
        layers += [torch.nn.Linear(dim, dim), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).eval()
    x = torch.randn(BATCH, dim)
    with torch.no_grad():
        expected = model(x)
    torch.save(x, os.path.join(workdir, "input.pt"))
    torch.save(expected, os.path.join(workdir, "expected.pt"))
    program = torch.export.export(model, (x,))
    for name, configs in (("weightless.pt2", aoti.WEIGHTLESS), ("compiled_in.pt2", None),
                          ("pickle_weights.pt2", PICKLE_CONFIGS)):
        print(f"compiling {name}", flush=True)
        start = time.perf_counter()
        torch._inductor.aoti_compile_and_package(
            program, package_path=os.path.join(workdir, name), inductor_configs=configs)
        meta["compile_s"][name] = time.perf_counter() - start
    aoti.save_weights(program, os.path.join(workdir, "model.safetensors"),
                      package=os.path.join(workdir, "weightless.pt2"))
    meta["weights_bytes"] = sum(t.nbytes for t in program.state_dict.values())
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def run_child(variant, workdir):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", variant,
                           "--workdir", workdir], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{variant}: the child failed (exit {proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    result = json.loads(lines[-1])
    if proc.returncode != 0 or not result["ok"]:
        raise RuntimeError(f"{variant}: output differs from the eager model's "
                           f"(max |diff| {result['max_abs_diff']:.3g} > {TOLERANCE})")
    return result


def summarize(runs):
    def growth(key, stage="after"):
        return statistics.median((r[stage][key] - r["before"][key]) / 1024 for r in runs)

    return {
        "load_s": statistics.median(r["load_s"] for r in runs),
        "first_run_s": statistics.median(r["first_run_s"] for r in runs),
        "total_s": statistics.median(r["load_s"] + r["first_run_s"] for r in runs),
        "load_range_s": [min(r["load_s"] for r in runs), max(r["load_s"] for r in runs)],
        "rss_mb": growth("VmRSS"), "anon_mb": growth("RssAnon"), "file_mb": growth("RssFile"),
        "peak_mb": growth("VmHWM"), "loaded_rss_mb": growth("VmRSS", "loaded"),
        "max_abs_diff": max(r["max_abs_diff"] for r in runs),
        "isa_probe_s": statistics.median(r["isa_probe_s"] for r in runs),
    }


def table(summary, meta, reps, cold):
    base = summary["compiled_in"]

    def ratio(value, key):
        return f" ({value / base[key]:.2g}×)" if base[key] > 0.5 or key.endswith("_s") else ""

    lines = [
        f"{meta['config']['layers']} Linear layers {meta['config']['dim']}×{meta['config']['dim']}"
        f" float32, {meta['weights_bytes'] / 1e6:.0f} MB of weights; batch {BATCH}; median of "
        f"{reps} fresh processes each; page cache "
        + ("cold (files evicted before each process)" if cold else "warm") + "; ratios against "
        "the compiled-in package (MiB: 1024² bytes). Load s excludes PyTorch's CPU-ISA probe in "
        f"`_load_aoti` (once per process, every variant, median "
        f"{statistics.median(s['isa_probe_s'] for s in summary.values()):.2f} s)",
        "",
        "| variant | load s | load min–max s | first run s | load + first run s | RSS growth MiB "
        "| RssAnon growth MiB | RssFile growth MiB | peak (VmHWM) growth MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in VARIANTS:
        s = summary[variant]
        lines.append(
            f"| {LABELS[variant]} | {s['load_s']:.3f}{ratio(s['load_s'], 'load_s')} "
            f"| {s['load_range_s'][0]:.3f}–{s['load_range_s'][1]:.3f} "
            f"| {s['first_run_s']:.3f}{ratio(s['first_run_s'], 'first_run_s')} "
            f"| {s['total_s']:.3f}{ratio(s['total_s'], 'total_s')} "
            f"| {s['rss_mb']:.0f}{ratio(s['rss_mb'], 'rss_mb')} "
            f"| {s['anon_mb']:.0f}{ratio(s['anon_mb'], 'anon_mb')} "
            f"| {s['file_mb']:.0f} | {s['peak_mb']:.0f}{ratio(s['peak_mb'], 'peak_mb')} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 21 MB model (smoke test)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", default=None,
                        help="where the packages live (default: a folder in the temp dir)")
    parser.add_argument("--cold", action="store_true",
                        help="evict the variant's files from the page cache before each process")
    parser.add_argument("--json", default=None, help="save the raw runs here")
    parser.add_argument("--render", default=None, help="re-print the table of a saved --json run")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = args.workdir or os.path.join(
        tempfile.gettempdir(), "torch_safetensors_aoti_bench" + ("_quick" if args.quick else ""))
    if args.child:
        return child(args.child, workdir)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        summary = {variant: summarize(runs) for variant, runs in saved["runs"].items()}
        print(table(summary, saved["meta"], len(saved["runs"]["ours"]), saved["cold"]))
        return 0

    if args.cold:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from device import drop_cache  # noqa: E402  (bench/device.py)
    meta = build(workdir, args.quick)
    for name, seconds in meta["compile_s"].items():
        size = os.path.getsize(os.path.join(workdir, name))
        print(f"  {name}: {size / 1e6:.0f} MB, compiled in {seconds:.0f} s")
    runs = {variant: [] for variant in VARIANTS}
    for rep in range(args.reps):
        for variant in VARIANTS:
            for name in FILES[variant] if args.cold else ():
                drop_cache(os.path.join(workdir, name))
            result = run_child(variant, workdir)
            runs[variant].append(result)
            print(f"  rep {rep + 1} {variant}: load {result['load_s']:.3f} s, first run "
                  f"{result['first_run_s']:.3f} s", flush=True)
    summary = {variant: summarize(runs[variant]) for variant in VARIANTS}
    print()
    print(table(summary, meta, args.reps, args.cold))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "cold": args.cold, "runs": runs, "summary": summary}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
