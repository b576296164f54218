"""ExecuTorch packaging: safetensors weights as the FlatTensor ``.ptd`` files that ExecuTorch
programs exported with external constants read their weights from, and back.

Everything is the C++ library's (``torch_safetensors/executorch.h``); this module adapts arguments::

    from torch_safetensors import executorch

    executorch.save_ptd("finetune/", "model.ptd", strip_prefix="model.")  # a checkpoint
    executorch.save_ptd({"linear.weight": w}, "model.ptd")                 # or tensors
    tensors = executorch.load_ptd("model.ptd")                             # verified on open
    executorch.ptd_to_safetensors("model.ptd", "model.safetensors")

A program's keys are the fully qualified names of the exported module's parameters and buffers
(``linear.weight``); ``strip_prefix`` and ``rename`` map checkpoint names to them. The
``executorch`` package is not needed for any of this (only to export and run programs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Dict, Optional, Union

import torch

from . import _args
from ._extension import _C

__all__ = ["load_ptd", "ptd_info", "ptd_to_safetensors", "save_ptd"]

PathLike = Union[str, "os.PathLike[str]"]


def save_ptd(
    source: Union[PathLike, Mapping[str, torch.Tensor]],
    ptd_path: PathLike,
    *,
    strip_prefix: str = "",
    rename: Optional[Mapping[str, str]] = None,
    alignment: int = 128,
) -> int:
    """Writes a ``.ptd``: every tensor of ``source`` (a safetensors file, an ``*.index.json``, a
    checkpoint directory, or a dict of tensors) under its key, with ExecuTorch's scalar type and
    layout, each segment aligned to ``alignment`` bytes. A name in ``rename`` becomes its value;
    other names lose ``strip_prefix`` when they start with it. Dtypes ExecuTorch lacks (complex,
    F8_E8M0, F4, F6) raise, naming the tensor. Returns the number of tensors written."""
    rename = dict(rename or {})
    if isinstance(source, Mapping):
        items = list(source.items())
        _C.save_ptd(items, _args.path(ptd_path), strip_prefix, rename, alignment)
        return len(items)
    return _C.save_ptd_from_checkpoint(
        _args.path(source), _args.path(ptd_path), strip_prefix, rename, alignment)


def load_ptd(path: PathLike) -> Dict[str, torch.Tensor]:
    """Every tensor of a ``.ptd``, in its order (zero-copy views of the mapped file where the data
    is aligned). Opaque named data (no tensor layout) comes back as uint8 bytes."""
    return dict(_C.load_ptd(_args.path(path)))


def ptd_info(path: PathLike) -> Dict[str, dict]:
    """Key -> its layout: ``dtype`` (safetensors name), ``executorch_scalar_type``, ``sizes``,
    ``dim_order``, ``has_layout``, ``segment``, ``offset`` and ``nbytes`` in the file."""
    return _C.ptd_info(_args.path(path))


def ptd_to_safetensors(
    ptd_path: PathLike, safetensors_path: PathLike, metadata: Optional[Dict[str, str]] = None
) -> int:
    """Writes a ``.ptd``'s tensors as a safetensors file, its keys as the names. Returns the
    number of tensors."""
    return _C.ptd_to_safetensors(_args.path(ptd_path), _args.path(safetensors_path), metadata)
