"""Loads the C++ extension, ``torch_safetensors._C``."""

from __future__ import annotations

import os
import sys
from typing import Any

_PACKAGE = __name__.rpartition(".")[0]


def _import_extension() -> Any:
    try:
        from . import _C

        return _C
    except ImportError as error:
        # A source checkout shadows the installed package when Python runs from the repository
        # root (e.g. `python -m pytest` after `pip install .`): use the installed extension.
        import importlib.machinery
        import importlib.util

        here = os.path.dirname(os.path.abspath(__file__))
        for entry in sys.path:
            folder = os.path.join(entry or os.getcwd(), _PACKAGE)
            if os.path.abspath(folder) == here:
                continue
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                candidate = os.path.join(folder, "_C" + suffix)
                if os.path.isfile(candidate):
                    spec = importlib.util.spec_from_file_location(_PACKAGE + "._C", candidate)
                    assert spec is not None and spec.loader is not None
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    sys.modules[_PACKAGE + "._C"] = module
                    return module
        raise ImportError(
            "torch_safetensors: the C++ extension torch_safetensors._C is not built; install the "
            "package with `pip install --no-build-isolation .` (or `-e .` in a checkout)"
        ) from error


_C = _import_extension()
