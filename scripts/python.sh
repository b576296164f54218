#!/usr/bin/env bash
# Builds and installs the Python package from this checkout: the bindings, linked with the C++
# libraries of the CMake build in build/ (setup.py configures and builds it when it is not there).
set -euo pipefail
cd "$(dirname "$0")/.."
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
[ -x /usr/lib/ccache/g++ ] && export CXX=/usr/lib/ccache/g++ CCACHE_BASEDIR="$PWD"
python3 -m pip install -q --no-build-isolation .
