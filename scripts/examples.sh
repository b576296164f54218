#!/usr/bin/env bash
# Builds examples/ as a downstream project with find_package(TorchSafetensors) against an
# installed prefix (argument 1), into build/examples.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(realpath "$1")
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
# ccache as in the library's build (CMakeLists.txt): the examples share a precompiled header.
cache=() compiler=("${CXX:-g++}")
if command -v ccache >/dev/null; then
  export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  cache=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_FLAGS=-fpch-preprocess)
  compiler=(ccache "${CXX:-g++}")
fi
cmake -S examples -B build/examples "${generator[@]}" -DCMAKE_PREFIX_PATH="$PREFIX;$TORCH_PREFIX" \
  "${cache[@]}"

# A hand-linked application (no CMake): the link line docs/ and the README give. It must start:
# the installed library finds LibTorch through its RUNPATH, the app through its own rpath. It
# compiles while the CMake build makes its precompiled header (one core's work).
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
TORCH_INCLUDES=$(python3 -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')
mkdir -p build/examples
# shellcheck disable=SC2086
"${compiler[@]}" -std=c++17 -O1 examples/quickstart.cpp -o build/examples/quickstart_hand_linked \
  -I"$PREFIX/include" $TORCH_INCLUDES -L"$PREFIX/lib" -ltorch_safetensors \
  -L"$TORCH_LIB" -ltorch -ltorch_cpu -lc10 -Wl,-rpath,"$PREFIX/lib" -Wl,-rpath,"$TORCH_LIB" &
hand_linked=$!
cmake --build build/examples -j "$(nproc)"
wait "$hand_linked"
(cd build && ./examples/quickstart_hand_linked >/dev/null)
readelf -d "$PREFIX/lib/libtorch_safetensors.so" | grep -q "RUNPATH.*$TORCH_LIB" ||
  { echo "libtorch_safetensors.so has no RUNPATH to LibTorch ($TORCH_LIB)" >&2; exit 1; }
# Components: each optional library is found only when asked for and installed.
components=$(mktemp -d)
cat >"$components/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.18)
project(components LANGUAGES CXX)
find_package(TorchSafetensors REQUIRED COMPONENTS aoti convert executorch)
if(NOT TARGET TorchSafetensors::torch_safetensors_convert OR
   NOT TARGET TorchSafetensors::torch_safetensors_executorch OR
   NOT TARGET TorchSafetensors::torch_safetensors_aoti)
  message(FATAL_ERROR "components found without their targets")
endif()
find_package(TorchSafetensors QUIET COMPONENTS no_such_component)
if(TorchSafetensors_FOUND)
  message(FATAL_ERROR "a missing component was reported found")
endif()
CMAKE
cmake -S "$components" -B "$components/build" -DCMAKE_PREFIX_PATH="$PREFIX;$TORCH_PREFIX" >/dev/null
rm -rf "$components"
echo "== examples: find_package, components and a hand-linked app"
