#!/usr/bin/env bash
# Command 1: set up a fresh machine, build and install the library, then build the demo as a
# separate CMake project against the installed package and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
TS_BUILD_TESTS=OFF bash scripts/build.sh
bash scripts/examples.sh build/install >/dev/null
./build/examples/demo build/demo_model.safetensors
