"""scripts/gpu_check.py, the verdicts and summary of the GPU check (scripts/test_gpu.sh): a skipped
CUDA case fails it, a CPU case skipping for want of CUDA fails it, and the summary says which step
failed. The reports are in the formats GoogleTest 1.12 and pytest write."""
import importlib.util
import json
import os
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts",
                                                                        "gpu_check.py"))
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

PASSED = ('<testcase name="EveryDtypeThroughTheRing" status="run" result="completed" time="0.01" '
          'classname="StagingRing" />')
SKIPPED_NO_CUDA = (
    '<testcase name="WholeFilesSlicesShardsAndStreamingToTheGpu" status="run" result="skipped" '
    'time="0." classname="DeviceCuda"><skipped message="test_device.cpp:173&#x0A;no CUDA device">'
    '<![CDATA[test_device.cpp:173\nno CUDA device]]></skipped></testcase>')
SKIPPED_OTHER = ('<testcase name="Reference" status="run" result="skipped" classname="Interop">'
                 '<skipped message="the reference safetensors package is not installed"/>'
                 '</testcase>')
FAILED = ('<testcase name="CastAfterTheRawCopy" status="run" result="completed" classname="Dtype">'
          '<failure message="Expected equality" type=""><![CDATA[x != y]]></failure></testcase>')


def report(tmp_path, name, *cases):
    path = tmp_path / name
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="AllTests">'
                    f'<testsuite name="s">{"".join(cases)}</testsuite></testsuites>')
    return str(path)


@pytest.mark.parametrize("cases, cuda, cpu", [
    ((PASSED,), 0, 0),
    ((PASSED, SKIPPED_NO_CUDA), 1, 1),  # cpu: a CUDA case that the filter missed
    ((PASSED, SKIPPED_OTHER), 1, 0),
    ((PASSED, FAILED), 1, 1),
    ((), 1, 0),  # no CUDA case ran at all
])
def test_verdicts(tmp_path, capsys, cases, cuda, cpu):
    path = report(tmp_path, "t.xml", *cases)
    assert gpu_check.verdict("cuda", [path]) == cuda
    assert gpu_check.verdict("cpu", [path]) == cpu
    if SKIPPED_NO_CUDA in cases:
        assert "skipped: DeviceCuda.WholeFilesSlicesShardsAndStreamingToTheGpu: " \
            "test_device.cpp:173 no CUDA device" in capsys.readouterr().out


def test_a_missing_report_fails(tmp_path, capsys):
    assert gpu_check.verdict("cpu", [str(tmp_path / "absent.xml")]) == 1
    assert "no report" in capsys.readouterr().out


def test_pytest_junit_skip_fails(tmp_path):
    skipped = ('<testcase classname="test_api" name="test_cuda_device[mmap]" time="0.001">'
               '<skipped type="pytest.skip" message="needs CUDA">needs CUDA</skipped></testcase>')
    passed = '<testcase classname="test_api" name="test_cuda_device[pread]" time="0.2" />'
    assert gpu_check.main(["", "pytest", report(tmp_path, "a.xml", passed)]) == 0
    assert gpu_check.main(["", "pytest", report(tmp_path, "b.xml", passed, skipped)]) == 1


def test_summary_names_the_failed_steps_and_tabulates_the_bench(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "env.json").write_text(json.dumps({
        "date": "2026-12-01 22:00 UTC", "command": "bash scripts/test_gpu.sh", "commit": "abc123",
        "dirty": False, "gpu": "NVIDIA H200", "cpu": "EPYC", "cores": 16, "torch": "2.11.0"}))
    (work / "steps.tsv").write_text("configure\tpassed\t1.5\tdone\n"
                                    "C++ tests: CUDA cases (GPU)\tfailed\t0.4\t1 skipped\n"
                                    "pytest and bench\tnot run\t0\tno extension\n")
    report(work, "test_device.cuda.xml", PASSED, SKIPPED_NO_CUDA)
    (work / "bench_device.json").write_text(json.dumps({
        "checkpoint": "/tmp/gpu_32x128mib.safetensors", "bytes": 4 << 30, "reps": 3,
        "rows": [{"group": "gpu", "name": "ours: load_file(device='cuda')", "seconds": 0.25,
                  "gb_per_s": 17.18, "peak_rss_bytes": 5 << 20}],
        "ratios": {"ours_vs_pinned_h2d": 0.85, "ours_vs_reference": 12.5}}))
    assert gpu_check.summary(str(work), str(out)) == 0
    result = json.loads((out / "gpu_check.json").read_text())
    assert not result["passed"]
    assert result["failed_steps"] == ["C++ tests: CUDA cases (GPU)", "pytest and bench"]
    assert result["tests"]["test_device.cuda"]["skipped"] == 1
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("### GPU check: FAILED")
    assert "Commit abc123, 2026-12-01 22:00 UTC, `bash scripts/test_gpu.sh`." in md
    assert "| C++ tests: CUDA cases (GPU) | failed | 0.4 | 1 skipped |" in md
    assert "| ours: load_file(device='cuda') | 250.0 ms | 17.18 | 5 MiB |" in md
    assert "12.5x (target >= 10x)" in md


def test_wheels_unpacks_only_what_is_missing(tmp_path, capsys):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    for name in ("pytest", "ts_gpu_check_absent"):
        with zipfile.ZipFile(wheels / f"{name}-1.0-py3-none-any.whl", "w") as w:
            w.writestr(f"{name}/__init__.py", "")
    gpu_check.wheels(str(wheels), str(site))
    assert (site / "ts_gpu_check_absent" / "__init__.py").exists()
    assert not (site / "pytest").exists()  # this interpreter has its own
    assert "pytest: the image's own" in capsys.readouterr().out
