#!/usr/bin/env bash
# Set-up for a fresh machine: system packages (Debian), the pinned LibTorch (from the torch==2.13.0
# CPU wheel) and the test-only Python packages. Idempotent and quick when everything is there.
set -euo pipefail

APT_PACKAGES=(libsimdjson-dev libgtest-dev ccache clang libclang-rt-14-dev strace)
PIP_PACKAGES=(torch==2.13.0 safetensors pytest pytest-xdist numpy)
# Peers for interop tests only (never dependencies of the library); they could pull another torch,
# so they install against a constraints file pinning it.
PEER_PACKAGES=(huggingface_hub==2.4.0)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
need = {"torch": "2.13.0", "safetensors": None, "pytest": None, "pytest-xdist": None,
        "numpy": None, "huggingface_hub": "2.4.0"}
for name, version in need.items():
    have = m.version(name)
    if version and not have.startswith(version):
        sys.exit(1)
PY
then
  echo "== pip: installing ${PIP_PACKAGES[*]}"
  # Never an unpinned torch: that pulls a multi-GB CUDA build.
  python3 -m pip install -q "${PIP_PACKAGES[@]}"
  constraints=$(mktemp)
  echo "torch==2.13.0" >"$constraints"
  python3 -m pip install -q -c "$constraints" "${PEER_PACKAGES[@]}"
  rm -f "$constraints"
fi
# Optional peers of the quantization tests and benchmark (test/python/test_quant.py,
# bench/quant_bench.py skip what is absent): compressed-tensors, which brings transformers. The
# constraints file keeps their requirements from replacing the pinned torch.
if ! python3 -c "import compressed_tensors, transformers" 2>/dev/null; then
  constraints=$(mktemp)
  echo "torch==2.13.0" >"$constraints"
  echo "== pip: installing compressed-tensors (torch pinned by $constraints)"
  python3 -m pip install -q -c "$constraints" compressed-tensors ||
    echo "== compressed-tensors did not install; its quantization tests will skip"
  rm -f "$constraints"
fi
# Optional peer of the ExecuTorch tests (test/python/test_executorch.py, test_executorch_runtime
# in C++, which skip without it): the executorch wheel, 19 MB, with its Python exporter and runtime,
# the C++ headers, libexecutorch.so and a CMake package. Installed without its declared
# dependencies (coremltools, scikit-learn, pandas, torchao, ...: hundreds of MB that exporting and
# running a CPU program never import), then the three it does import. Torch pinned as above.
if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
if not m.version("executorch").startswith("1.5.1"):
    sys.exit(1)
for name in ("flatbuffers", "ruamel.yaml", "tabulate"):
    m.version(name)
PY
then
  constraints=$(mktemp)
  echo "torch==2.13.0" >"$constraints"
  echo "== pip: installing executorch==1.5.1 --no-deps, flatbuffers, ruamel.yaml, tabulate"
  { python3 -m pip install -q -c "$constraints" --no-deps executorch==1.5.1 &&
    python3 -m pip install -q -c "$constraints" flatbuffers ruamel.yaml tabulate; } ||
    echo "== executorch did not install; its tests will skip"
  rm -f "$constraints"
fi
for tool in cmake ninja; do
  command -v "$tool" >/dev/null || python3 -m pip install -q "$tool"
done
