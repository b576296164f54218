#!/usr/bin/env bash
# Command 2: set up a fresh machine, build everything and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# ccache: relative paths make builds in another clone of the repo hit the same cache entries.
export CCACHE_BASEDIR="$PWD"

echo "== C++ libraries and the GoogleTest executables"
bash scripts/build.sh

# The hardening run's sanitizer builds compile from here on, at the lowest priority: on the cores
# that the Python build, ctest, the examples and pytest leave idle. The hardening run below waits
# for them.
nice -n 19 bash .ci/hardening.sh --build-only >build/sanitizer_builds.log 2>&1 &
sanitizer_builds=$!

# The Python package links the libraries just built (setup.py, build/), so it compiles only its
# bindings; the C++ TorchScript test (in test_core) runs a Python script that imports it.
echo "== Python package"
bash scripts/python.sh

echo "== C++ tests"
(cd build && ctest --output-on-failure -j "$(nproc)")

echo "== examples against the installed package (find_package)"
bash scripts/examples.sh build/install >/dev/null
(cd build && ./examples/quickstart >/dev/null && ./examples/migrate >/dev/null &&
  ./examples/demo demo_model.safetensors >/dev/null && ./examples/sharded sharded_model >/dev/null &&
  ./examples/streaming streamed_model >/dev/null && ./examples/tensor_parallel tp_model >/dev/null)
# AOTInductor: a package exported without its weights, run from C++ with them from safetensors.
python3 examples/aoti_export.py build/aoti_example 2>build/aoti_example.log ||
  { cat build/aoti_example.log; exit 1; }
(cd build/aoti_example && ../examples/aoti_app model.pt2 model.safetensors io.safetensors >/dev/null)
echo "examples: 7 passed, 0 failed"
./build/examples/docs_examples

echo "== Python package: interop tests against the reference safetensors"
# pytest-xdist: one worker a core (the tests use their own temporary folders and free ports).
python3 -m pytest test/python -q -n "$(nproc)"

echo "== hardening: adversarial corpus, ASan+UBSan suite, TSan concurrency, 170 s of fuzzing"
wait "$sanitizer_builds" || { tail -n 80 build/sanitizer_builds.log; exit 1; }
bash .ci/hardening.sh
