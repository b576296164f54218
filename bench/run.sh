#!/usr/bin/env bash
# Builds bench_io (Release, with ccache) and runs the whole benchmark: bench/run.sh [run.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD_DIR:-build-bench}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTS_BUILD_BENCH=ON -DTS_BUILD_TESTS=OFF \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
cmake --build "$BUILD" -j2 --target bench_io
exec python3 bench/run.py --bench-io "$BUILD/bench/bench_io" "$@"
