#!/usr/bin/env bash
# The CUDA tests for real, on a machine with a GPU and a CUDA build of torch already installed
# (CI has no GPU, so there they only skip). Needs simdjson and GoogleTest installed; does no
# set-up of its own so that it never swaps the installed torch for the pinned CPU wheel.
#   BUILD_DIR (default build-gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"test_gpu.sh: torch {torch.__version__} sees no CUDA device")
print(f"== torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
PY
export BUILD_DIR=${BUILD_DIR:-build-gpu}

echo "== C++ suite (the Device and Cuda tests must run, not skip)"
bash scripts/build.sh
(cd "$BUILD_DIR" && ctest --output-on-failure -j "$(nproc)")
log=$(mktemp)
"$BUILD_DIR"/test/test_load_save --gtest_filter='Device.*' | tee "$log"
"$BUILD_DIR"/test/test_module --gtest_filter='*Cuda*' | tee -a "$log"
"$BUILD_DIR"/test/test_device --gtest_filter='DeviceCuda.*:ModuleOnDevice.Cuda*' | tee -a "$log"
if grep -q 'SKIPPED' "$log"; then echo "test_gpu.sh: CUDA tests skipped on a GPU machine"; exit 1; fi

echo "== Python package and the CUDA pytest cases"
python3 -m pip install -q --no-build-isolation --no-deps --no-index .
python3 -m pytest test/python -q -rs

echo "== GPU benchmark: a >= 8 GB checkpoint to cuda:0 (ours, the reference, pinned H2D limit)"
python3 bench/device.py --gpu
