"""Converting torch checkpoints to safetensors without running any code from them: ``torch.save``
files (a state dict, or a training checkpoint holding one), LibTorch's ``torch::save`` archives
and TorchScript modules (``torch.jit.save``; their ``data.pkl``, never their code)::

    from torch_safetensors import convert

    report = convert.convert_checkpoint("last.ckpt", "model.safetensors", key="state_dict")
    tensors, report = convert.load_checkpoint("checkpoint.pt", metadata_scalars=True)

The C++ core (``<torch_safetensors/convert.h>``) reads, selects, skips and refuses; this module
adapts arguments and results. Objects of any class in the pickle are inert placeholders, never
imported or called. ``key`` selects a dotted path into the object; without it every tensor found
in dicts, lists, tuples and objects is taken and the rest is listed in ``report.skipped``;
``strict=True`` refuses anything but nested dicts of tensors; ``metadata_scalars=True`` keeps the
ints, floats, bools and strings of plain dicts as metadata, dotted path -> ``str(value)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import torch

from . import _args
from ._extension import _C

__all__ = ["ConvertReport", "convert_checkpoint", "load_checkpoint"]


@dataclass
class ConvertReport:
    """What a conversion found and wrote (ConvertReport in convert.h)."""

    tensors_read: int = 0  #: names found
    tensors_written: int = 0  #: after dropping tied duplicates
    bytes_written: int = 0  #: tensor data
    files: List[str] = field(default_factory=list)  #: written (relative to a sharded folder)
    #: (dotted path, type name) of each part not converted: "int", "list", or a qualified name
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    metadata_scalars: int = 0  #: metadata entries made from scalars
    #: load_checkpoint: the scalars kept (metadata_scalars), dotted path -> str(value)
    scalars: Dict[str, str] = field(default_factory=dict)


def load_checkpoint(path: Union[str, os.PathLike], *, key: Optional[str] = None,
                    strict: bool = False,
                    metadata_scalars: bool = False) -> Tuple[Dict[str, torch.Tensor], ConvertReport]:
    """The tensors of a torch checkpoint (a file, a ``*.bin.index.json`` or a folder), by name,
    and the report of what was skipped (and, with ``metadata_scalars``, the scalars kept)."""
    tensors, skipped, scalars = _C.read_torch_checkpoint(_args.path(path), key or "", strict,
                                                         metadata_scalars)
    report = ConvertReport(tensors_read=len(tensors), skipped=list(skipped), scalars=dict(scalars),
                           metadata_scalars=len(scalars))
    return tensors, report


def convert_checkpoint(source: Union[str, os.PathLike], destination: Union[str, os.PathLike], *,
                       key: Optional[str] = None, strict: bool = False,
                       metadata_scalars: bool = False,
                       max_shard_size: Union[int, str, None] = None,
                       dtype: Optional[torch.dtype] = None,
                       metadata: Optional[Dict[str, str]] = {"format": "pt"},
                       durable: bool = False) -> ConvertReport:
    """``torch-safetensors convert``: ``source`` to one safetensors file, or with
    ``max_shard_size`` (bytes, or huggingface_hub's "5GB") to a folder of shards and an index.
    ``dtype`` casts floating tensors (torch.float64/float32/float16/bfloat16)."""
    if isinstance(max_shard_size, str):
        max_shard_size = _C.parse_size(max_shard_size)
    out = _C.convert_torch_checkpoint(_args.path(source), _args.path(destination), key or "", strict,
                                      metadata_scalars, max_shard_size, dtype, metadata, durable)
    out["skipped"] = list(out["skipped"])
    return ConvertReport(**out)
