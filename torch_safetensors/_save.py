"""Writing: ``save`` and ``save_file``. The C++ core checks the request (in the reference's order,
with the reference's rule for non-contiguous tensors) and writes it; this module adapts the
arguments and raises the reference's errors."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import _args
from ._args import RawTensor
from ._errors import save_error
from ._extension import _C


@dataclasses.dataclass(frozen=True)
class SaveReport:
    """What a save wrote, and how fast: ``hub.save_torch_state_dict``'s, and one rank's part of
    ``distributed.save_sharded`` or of ``distributed.consolidate`` (the core's ``SaveReport``)."""

    tensor_bytes: int  #: tensor data written (a replica once, by one of the ranks holding it)
    header_bytes: int  #: file headers and the index (0 on ranks that publish none)
    files: List[str]  #: the checkpoint's files, the index last when sharded
    seconds: float  #: from the call to the files published

    @property
    def bytes_written(self) -> int:
        return self.tensor_bytes + self.header_bytes

    @property
    def gb_per_s(self) -> float:
        """Tensor bytes per second, in GB (10**9), as storage is rated; 0 for an instant save."""
        return self.tensor_bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    @classmethod
    def of(cls, report: Dict[str, Any]) -> "SaveReport":
        """From the core's report (a dict)."""
        return cls(int(report["tensor_bytes"]), int(report["header_bytes"]),
                   list(report["files"]), float(report["seconds"]))


def _checked_items(tensors: Dict[str, torch.Tensor]) -> List[Tuple[str, Any]]:
    """The state dict as (name, value) items, refused like the reference refuses it."""
    if not isinstance(tensors, dict):
        raise ValueError(f"Expected a dict of [str, torch.Tensor] but received {type(tensors)}")
    for name, value in tensors.items():
        if not isinstance(value, (torch.Tensor, RawTensor)):
            raise ValueError(
                f"Key `{name}` is invalid, expected torch.Tensor but received {type(value)}"
            )
    items = list(tensors.items())
    problem = _C.save_problem(items, False)  # non-contiguous: refused, like the reference
    if problem is not None:
        kind, names = problem
        raise save_error(kind, names, tensors)
    return items


def save(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """Serializes tensors (contiguous, dense, not sharing memory) to safetensors bytes.

    ``metadata`` (str → str) is written as ``__metadata__``; ``{}`` writes an empty one and
    None none, exactly as ``safetensors.torch.save`` does. Tensors on other devices are copied
    to the CPU one at a time.
    """
    return _C.save_bytes(_checked_items(tensors), metadata)


def save_file(
    tensors: Dict[str, torch.Tensor],
    filename: _args.FilePath,
    metadata: Optional[Dict[str, str]] = None,
    *,
    durable: bool = False,
) -> None:
    """Writes tensors to ``filename`` in safetensors format (same rules as ``save``).

    The file is written to a temporary file beside it and renamed into place: a failed save
    leaves any previous file untouched, and tensors still mapped from the old file keep their
    contents. ``durable``: the file and then its directory are fsync'ed before the call returns,
    so that a power loss afterwards cannot lose or tear it (off by default, as in the reference
    and ``torch.save``: it costs a flush to the disk).
    """
    items = _checked_items(tensors)
    _C.save_file(items, _args.path(filename), metadata, bool(durable))
