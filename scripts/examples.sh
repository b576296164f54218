#!/usr/bin/env bash
# Builds examples/ as a downstream project with find_package(TorchSafetensors) against an
# installed prefix (argument 1), into build/examples.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(realpath "$1")
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S examples -B build/examples "${generator[@]}" -DCMAKE_PREFIX_PATH="$PREFIX;$TORCH_PREFIX"
cmake --build build/examples -j "$(nproc)"
