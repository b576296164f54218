#!/usr/bin/env bash
# The GPU check, one command on the GPU machine from the repository root:
#   bash scripts/test_gpu.sh [extra cmake arguments]
# It uses only the image (CUDA, CMake, ninja, a compiler, a CUDA torch) and what
# scripts/prepare_gpu_check.sh put into .gpu_carry/ (simdjson, GoogleTest, wheels): builds the core
# and the test executables with CUDA cases against that torch, and the Python extension in place;
# runs their CPU cases, then every CUDA case (a skip there is a failure: the device path did not
# run), the 1-process NCCL test of the rank-piece path, and bench/device.py --gpu. Every step runs
# and is recorded even after one fails; $OUT (default ./gpu_out) gets gpu_check.json, gpu_check.md
# and gpu_check.log. Exit status 0 only when every step passed. Settings (environment):
#   GPU_CARRY (.gpu_carry)  BUILD_DIR (build-gpu)  JOBS (all cores)
#   GPU_CHECK_GIB (4: the bench checkpoint)  GPU_CHECK_REPS (3)
# See docs/dev/gpu_check.md.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GPU_CARRY=$(realpath -m "${GPU_CARRY:-.gpu_carry}")
export GPU_CARRY  # gpu_check.py reads the commit stamp there when .git did not travel
CARRY=$GPU_CARRY
BUILD_DIR=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-$(nproc)}
OUT=${OUT:-$ROOT/gpu_out}
WORK=$ROOT/$BUILD_DIR/gpu_check
export GPU_CHECK_COMMAND="bash scripts/test_gpu.sh${*:+ $*}"
mkdir -p "$OUT" "$WORK"
rm -f "$WORK"/*.xml "$WORK"/*.json "$WORK/steps.tsv"
exec > >(tee "$OUT/gpu_check.log") 2>&1

# The test sources with CUDA cases (and test_distributed, the rank-piece planner), built into
# test_core; a CUDA case has "Cuda" in its name (gpu_check.py fails a CPU case that skips for want
# of CUDA).
TESTS=(test_load_save test_module test_device test_distributed test_quant)
CUDA_FILTER='*Cuda*'
# The pytest CUDA cases ("cuda" in their names) and the NCCL one.
PYTEST_FILES=(test/python/test_api.py test/python/test_device.py test/python/test_quant.py)

# What the carried Debian packages provide, found there only.
LIB=$CARRY/root/usr/lib/x86_64-linux-gnu
export CPATH=$CARRY/root/usr/include${CPATH:+:$CPATH}
export LIBRARY_PATH=$LIB${LIBRARY_PATH:+:$LIBRARY_PATH}
export LD_LIBRARY_PATH=$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_LIBDIR=$LIB/pkgconfig PKG_CONFIG_SYSROOT_DIR=$CARRY/root
SITE=$WORK/site  # carried wheels the image lacks
export PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

failed=0
# step NAME COMMAND...: runs it, records status, seconds and the last line it printed.
step() {
  local name=$1 start end status last
  shift
  echo
  echo "== $name"
  start=$(date +%s.%N)
  "$@" 2>&1 | tee "$WORK/step.out"
  if [ "${PIPESTATUS[0]}" = 0 ]; then status=passed; else status=failed; failed=1; fi
  end=$(date +%s.%N)
  last=$(grep -v '^\s*$' "$WORK/step.out" | tail -n 1 | tr '\t|' '  ' | cut -c1-200)
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(awk "BEGIN {print $end - $start}")" "$last" \
    >>"$WORK/steps.tsv"
  echo "== $name: $status"
  [ "$status" = passed ]
}
# not_run NAME WHY: a step that cannot run because one it needs failed.
not_run() {
  printf '%s\tnot run\t0\t%s\n' "$1" "$2" >>"$WORK/steps.tsv"
  failed=1
  echo "== $1: not run ($2)"
}

check_carry() {
  local f
  python3 scripts/gpu_check.py env "$WORK/env.json" || return 1
  for f in "$LIB/cmake/simdjson/simdjson-config.cmake" "$LIB/cmake/GTest/GTestConfig.cmake"; do
    [ -f "$f" ] || { echo "no $f: run scripts/prepare_gpu_check.sh, carry .gpu_carry"; return 1; }
  done
  mkdir -p "$SITE" && python3 scripts/gpu_check.py wheels "$CARRY/wheels" "$SITE" &&
    python3 -c 'import safetensors, pytest, numpy' && echo "$(nproc) cores, building with -j$JOBS"
}

configure() {
  local torch_prefix
  torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || return 1
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix" -DPython3_EXECUTABLE="$(command -v python3)" \
    -Dsimdjson_DIR="$LIB/cmake/simdjson" -DGTest_DIR="$LIB/cmake/GTest" \
    -DTS_TESTS="$(IFS=';'; echo "${TESTS[*]}")" -DTS_WITH_EXECUTORCH=OFF "$@"
}

# The core, test_core, and the archive the Python extension links (setup.py builds that target in
# the same folder, so the library compiles once).
build_cpp() {
  cmake --build "$BUILD_DIR" -j "$JOBS" --target torch_safetensors test_core \
    torch_safetensors_for_python
}

build_python() {
  # In place: torch_safetensors/_C*.so next to the package (PYTHONPATH has the checkout first).
  TS_CMAKE_BUILD_DIR=$BUILD_DIR MAX_JOBS=$JOBS python3 setup.py -q build_ext --inplace &&
    python3 -c 'import torch_safetensors as t; print("extension:", t._extension._C.__file__)'
}

gtest_run() {  # gtest_run cpu|cuda: the verdict on the report, and the executable's exit status
  local kind=$1 filter rc=0
  [ "$kind" = cuda ] && filter=$CUDA_FILTER || filter=-$CUDA_FILTER
  "$BUILD_DIR/test/test_core" --gtest_filter="$filter" --gtest_brief=1 \
    --gtest_output="xml:$WORK/test_core.$kind.xml" || rc=1
  python3 scripts/gpu_check.py gtest "$kind" "$WORK/test_core.$kind.xml" && return $rc
}

pytest_run() {  # pytest_run NAME ARGS...: fails on a failure, any skip, or no test
  local name=$1 rc=0
  shift
  python3 -m pytest -q -rs -p no:cacheprovider --junitxml="$WORK/$name.xml" "$@" || rc=1
  python3 scripts/gpu_check.py pytest "$WORK/$name.xml" && return $rc
}

bench() {
  python3 -c 'import torch, sys; torch.cuda.is_available() or sys.exit("no CUDA device")' &&
    python3 bench/device.py --gpu --gpu-gib "${GPU_CHECK_GIB:-4}" --reps "${GPU_CHECK_REPS:-3}" \
      --json "$WORK/bench_device.json"
}

if step "carried packages and environment" check_carry &&
  step "configure (CMake, the carried simdjson and GoogleTest)" configure "$@"; then
  step "build: core and test_core (${TESTS[*]})" build_cpp && built_cpp=1 || built_cpp=0
  step "build: Python extension in place" build_python && built_py=1 || built_py=0
else
  built_cpp=0 built_py=0
fi
if [ "$built_cpp" = 1 ]; then
  step "C++ tests: CPU cases" gtest_run cpu
  step "C++ tests: CUDA cases (GPU)" gtest_run cuda
else
  not_run "C++ tests" "the C++ build failed"
fi
if [ "$built_py" = 1 ]; then
  step "pytest: CUDA cases (GPU)" pytest_run pytest.cuda "${PYTEST_FILES[@]}" -k cuda
  step "pytest: 1-process NCCL rank pieces (GPU)" pytest_run pytest.nccl \
    test/python/test_distributed.py -k nccl
  step "bench/device.py --gpu (GPU)" bench
else
  not_run "pytest and bench" "the Python extension did not build"
fi

echo
python3 scripts/gpu_check.py summary "$WORK" "$OUT" || failed=1
echo "== summary in $OUT: gpu_check.json, gpu_check.md, gpu_check.log"
exit "$failed"
