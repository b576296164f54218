#!/usr/bin/env python3
"""The verdicts and the summary of scripts/test_gpu.sh (standard library only: it runs on the GPU
machine's image as it is).

    gpu_check.py wheels WHEEL_DIR SITE_DIR      unpack the carried wheels whose module is missing
    gpu_check.py env FILE                       the machine, torch and this checkout, as JSON
    gpu_check.py gtest cpu|cuda XML...          GoogleTest results: exit 1 on a failure, and for
                                                cuda on any skip (a skipped CUDA case never ran)
    gpu_check.py pytest XML                     pytest results: exit 1 on a failure or any skip
    gpu_check.py summary WORK_DIR OUT_DIR       gpu_check.json and gpu_check.md from the steps
"""
import glob
import json
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile

# A wheel's distribution name -> the module that shows it is importable.
MODULES = {"safetensors": "safetensors", "pytest": "pytest", "pluggy": "pluggy",
           "iniconfig": "iniconfig", "packaging": "packaging", "pygments": "pygments",
           "numpy": "numpy"}
NO_CUDA = "no CUDA device"


def wheels(wheel_dir, site):
    import importlib.util

    for wheel in sorted(glob.glob(os.path.join(wheel_dir, "*.whl"))):
        name = os.path.basename(wheel).split("-")[0].lower()
        module = MODULES.get(name, name)
        if importlib.util.find_spec(module) is not None:
            print(f"{name}: the image's own")
            continue
        # A wheel is a zip of what site-packages holds: unpacking it is installing it (no pip).
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
        print(f"{name}: carried ({os.path.basename(wheel)})")


def run_text(*command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def env(path):
    import datetime

    facts = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "command": os.environ.get("GPU_CHECK_COMMAND", "bash scripts/test_gpu.sh"),
             "python": sys.version.split()[0], "cores": os.cpu_count(),
             "kernel": platform.release(),
             "commit": run_text("git", "rev-parse", "--short=12", "HEAD"),
             "dirty": bool(run_text("git", "status", "--porcelain", "--untracked-files=no")),
             "cmake": run_text("cmake", "--version").split("\n")[0],
             "compiler": run_text(os.environ.get("CXX", "c++").split()[-1], "--version")
             .split("\n")[0]}
    if not facts["commit"]:  # no .git where it runs: the commit prepare_gpu_check.sh saw
        source = os.path.join(os.environ.get("GPU_CARRY", ".gpu_carry"), "source.txt")
        if os.path.exists(source):
            with open(source, encoding="utf-8") as f:
                stamp = dict(line.split() for line in f if line.strip())
            facts["commit"] = stamp["commit"] + " (as prepared)"
            facts["dirty"] = stamp.get("dirty") == "1"
        else:
            facts["commit"] = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        model = re.search(r"model name\s*:\s*(.*)", f.read())
    facts["cpu"] = model.group(1) if model else platform.processor()
    with open("/proc/meminfo", encoding="utf-8") as f:
        facts["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.version.cuda
        facts["cuda_available"] = torch.cuda.is_available()
        if facts["cuda_available"]:
            facts["gpu"] = torch.cuda.get_device_name(0)
            facts["driver"] = run_text("nvidia-smi", "--query-gpu=driver_version",
                                       "--format=csv,noheader")
    except ImportError as error:
        facts["torch"] = f"not importable: {error}"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(facts, f, indent=1)
    for key, value in facts.items():
        print(f"{key}: {value}")
    return 0 if "not importable" not in str(facts["torch"]) else 1


def cases(xml_path):
    """(name, outcome, message) for each test case of a GoogleTest or JUnit (pytest) report."""
    out = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = ".".join(filter(None, (case.get("classname"), case.get("name"))))
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = "failed" if kind != "skipped" else "skipped"
                message = (node.get("message") or node.text or "").strip()
                break
        if outcome == "passed" and case.get("result") == "skipped":  # GoogleTest's own mark
            outcome = "skipped"
        out.append((name, outcome, message))
    return out


def one_line(message, limit=200):
    """GoogleTest's skip message is "file:line" then the reason: both, on one line."""
    return " ".join(message.split())[:limit]


def tally(found):
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for _, outcome, _ in found:
        counts[outcome] += 1
    return counts


def verdict(kind, xml_paths):
    """Prints each report's counts and the cases that did not pass; the exit status."""
    bad = False
    for path in xml_paths:
        if not os.path.exists(path):
            print(f"{path}: no report (the executable did not run to the end)")
            bad = True
            continue
        found = cases(path)
        counts = tally(found)
        print(f"{os.path.basename(path)}: {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped")
        for name, outcome, message in found:
            if outcome != "passed":
                print(f"  {outcome}: {name}: {one_line(message)}")
        if counts["failed"]:
            bad = True
        if kind == "cuda":
            # On the GPU machine a skip means the device path did not run.
            bad |= counts["skipped"] > 0 or not found
        else:
            # A CPU case that skips for want of CUDA is a CUDA case the filter missed.
            missed = [n for n, o, m in found if o == "skipped" and NO_CUDA in m]
            if missed:
                print(f"  skips for want of CUDA outside the CUDA filter: {missed}")
                bad = True
    return 1 if bad else 0


def read_steps(work):
    steps = []
    with open(os.path.join(work, "steps.tsv"), encoding="utf-8") as f:
        for line in f:
            name, status, seconds, detail = (line.rstrip("\n").split("\t") + [""])[:4]
            steps.append({"step": name, "status": status, "seconds": float(seconds),
                          "detail": detail})
    return steps


def summary(work, out_dir):
    with open(os.path.join(work, "env.json"), encoding="utf-8") as f:
        facts = json.load(f)
    steps = read_steps(work)
    tests = {}
    for path in sorted(glob.glob(os.path.join(work, "*.xml"))):
        found = cases(path)
        tests[os.path.basename(path)[:-4]] = {
            **tally(found),
            "not_passed": [{"case": n, "outcome": o, "message": m[:500]}
                           for n, o, m in found if o != "passed"]}
    bench = None
    bench_path = os.path.join(work, "bench_device.json")
    if os.path.exists(bench_path):
        with open(bench_path, encoding="utf-8") as f:
            bench = json.load(f)
    failed = [s["step"] for s in steps if s["status"] != "passed"]
    result = {"passed": not failed, "failed_steps": failed, "command": facts["command"],
              "date": facts["date"], "environment": facts, "steps": steps, "tests": tests,
              "bench": bench}
    with open(os.path.join(out_dir, "gpu_check.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "gpu_check.md"), "w", encoding="utf-8") as f:
        f.write(markdown(result))
    print(markdown(result))
    return 0


def markdown(result):
    e = result["environment"]
    machine = (f"{e.get('gpu', 'no GPU')} (driver {e.get('driver', '-')}), {e.get('cpu')}, "
               f"{e.get('cores')} cores, {e.get('memory_gib')} GiB RAM, Linux {e.get('kernel')}; "
               f"torch {e.get('torch')} (CUDA {e.get('torch_cuda')}), Python {e.get('python')}, "
               f"{e.get('compiler')}")
    lines = [f"### GPU check: {'PASSED' if result['passed'] else 'FAILED'}", "",
             f"Commit {e.get('commit')}{' (with local changes)' if e.get('dirty') else ''}, "
             f"{result['date']}, `{result['command']}`.", "", f"Machine: {machine}.", "",
             "| step | status | seconds | detail |", "|---|---|---:|---|"]
    for s in result["steps"]:
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']:.1f} | {s['detail']} |")
    lines += ["", "| tests | passed | failed | skipped |", "|---|---:|---:|---:|"]
    for name, t in result["tests"].items():
        lines.append(f"| {name} | {t['passed']} | {t['failed']} | {t['skipped']} |")
    for name, t in result["tests"].items():
        for case in t["not_passed"]:
            lines.append(f"- {name}: {case['outcome']} {case['case']}: "
                         f"{one_line(case['message'])}")
    bench = result["bench"]
    if bench:
        lines += ["", f"#### bench/device.py --gpu: {bench['bytes'] / 1e9:.2f} GB "
                  f"({os.path.basename(bench['checkpoint'])}), medians of {bench['reps']}, "
                  "page cache warm", "",
                  "| operation | median | GB/s | peak extra host RSS |", "|---|---:|---:|---:|"]
        for r in bench["rows"]:
            lines.append(f"| {r['name']} | {r['seconds'] * 1e3:.1f} ms | {r['gb_per_s']:.2f} | "
                         f"{r['peak_rss_bytes'] / 2**20:.0f} MiB |")
        ratios = bench.get("ratios", {})
        if ratios:
            lines += ["", f"- ours vs pinned host->device bandwidth: "
                      f"{ratios['ours_vs_pinned_h2d']:.2f} (target >= 0.8)",
                      f"- ours vs reference load_file(device='cuda'): "
                      f"{ratios['ours_vs_reference']:.1f}x (target >= 10x)"]
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    command, rest = argv[1], argv[2:]
    if command == "wheels":
        return wheels(*rest) or 0
    if command == "env":
        return env(*rest)
    if command == "gtest":
        return verdict(rest[0], rest[1:])
    if command == "pytest":
        return verdict("cuda", rest)
    if command == "summary":
        return summary(*rest)
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
