#!/usr/bin/env bash
# Runs the reference package's own torch tests against torch_safetensors.
#
#   bash scripts/reference_tests.sh REFERENCE_CHECKOUT [pytest args...]
#
# REFERENCE_CHECKOUT is a checkout of github.com/huggingface/safetensors (e.g. `git clone
# https://github.com/huggingface/safetensors /tmp/st-ref`). The test files of its
# bindings/python/tests that use the torch API (test_pt_comparison, test_pt_model, test_simple,
# test_pread_backend, test_threadable, test_multithreaded, test_handle) run unchanged, from their
# own directory (they write ./tests/data/... and ./tmp*.safetensors there), with the installed
# `safetensors` package and this checkout's `torch_safetensors` (built in place, or installed).
#
# What is ours and what stays the reference's, arranged by a pytest plugin loaded before any test
# module is imported:
#   - `safetensors.torch` is `torch_safetensors` (in sys.modules and as the package attribute).
#   - `safetensors.safe_open` opens framework "pt" / "torch" / "pytorch" with
#     `torch_safetensors.safe_open`, every other framework with the reference's. The torch tests
#     read through `from safetensors import safe_open`: that is the torch API's reader, and
#     leaving it the reference's would test the reference's reader on our files instead of ours
#     (the error for a missing file, slicing, closed handles would go untested). Numpy,
#     `serialize`, `TensorSpec` and `_safe_open_handle` are not the torch API and stay the
#     reference's.
#   - `safetensors.SafetensorError` matches either library's SafetensorError (isinstance and
#     issubclass accept both): the tests `assertRaises(SafetensorError)` both for the numpy API
#     (the reference's error) and for our safe_open (ours). Neither class is replaced, so nothing
#     of the reference changes kind.
# Exit status: pytest's.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -d "$1/bindings/python/tests" ]; then
  echo "usage: $0 REFERENCE_CHECKOUT [pytest args...]  (a checkout of huggingface/safetensors)" >&2
  exit 2
fi
reference=$(cd "$1" && pwd)
shift
here=$(cd "$(dirname "$0")/.." && pwd)

shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
cat > "$shim/torch_safetensors_as_reference.py" <<'EOF'
"""pytest plugin: the reference's torch API is torch_safetensors (scripts/reference_tests.sh)."""
import sys

import safetensors

import torch_safetensors

_reference_safe_open = safetensors.safe_open
_reference_error = safetensors.SafetensorError
_TORCH = ("pt", "torch", "pytorch")


def safe_open(filename, framework, *args, **kwargs):
    if framework in _TORCH:
        return torch_safetensors.safe_open(filename, framework, *args, **kwargs)
    return _reference_safe_open(filename, framework, *args, **kwargs)


class _EitherError(type):
    def __instancecheck__(cls, value):
        return isinstance(value, (_reference_error, torch_safetensors.SafetensorError))

    def __subclasscheck__(cls, kind):
        return issubclass(kind, (_reference_error, torch_safetensors.SafetensorError))


class SafetensorError(Exception, metaclass=_EitherError):
    """Either library's SafetensorError (for isinstance, issubclass and assertRaises)."""


sys.modules["safetensors.torch"] = torch_safetensors
safetensors.torch = torch_safetensors
safetensors.safe_open = safe_open
safetensors.SafetensorError = SafetensorError
EOF

cd "$reference/bindings/python"
mkdir -p tests/data
export PYTHONPATH="$shim:$here${PYTHONPATH:+:$PYTHONPATH}"
# Fail loudly rather than test the reference by accident.
python3 -c 'import torch_safetensors as t; print("torch_safetensors from", t.__file__)'
set +e
python3 -m pytest -p torch_safetensors_as_reference -p no:cacheprovider -q \
  tests/test_pt_comparison.py tests/test_pt_model.py tests/test_simple.py \
  tests/test_pread_backend.py tests/test_threadable.py tests/test_multithreaded.py \
  tests/test_handle.py "$@"
status=$?
set -e
exit $status
