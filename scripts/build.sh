#!/usr/bin/env bash
# Configures, builds and installs the C++ library (and its tests unless TS_BUILD_TESTS=OFF).
#   BUILD_DIR (default build), INSTALL_DIR (default $BUILD_DIR/install); extra args go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
INSTALL_DIR=${INSTALL_DIR:-$PWD/$BUILD_DIR/install}
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)

cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DTS_BUILD_TESTS="${TS_BUILD_TESTS:-ON}" -DCMAKE_INSTALL_PREFIX="$INSTALL_DIR" "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
cmake --install "$BUILD_DIR" >/dev/null
echo "== built $BUILD_DIR, installed to $INSTALL_DIR"
