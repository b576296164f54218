"""DTensor models (``parallelize_module``): shard-on-read, each rank reading only its local
shards. ``load_model`` and ``hub.load_torch_model`` call ``load_dtensors`` for such models."""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Set, Tuple

import torch

from .. import _args
from .._errors import checked_report
from .._extension import _C


def _dtensor_type() -> Optional[type]:
    # A model can hold DTensors only once their module is imported: no import cost otherwise.
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def has_dtensors(model: torch.nn.Module) -> bool:
    """Whether any parameter or buffer of ``model`` is a DTensor."""
    dtensor = _dtensor_type()
    return dtensor is not None and any(
        isinstance(t, dtensor) for t in model.state_dict(keep_vars=True).values())


def local_box(name: str, tensor: Any) -> Tuple[List[int], List[int]]:
    """The (sizes, offsets) of the block of the full tensor this rank's DTensor shard holds: the
    one rule for loading (``_local_piece``) and saving (``save_sharded``)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    for placement in tensor.placements:
        if type(placement) not in (Shard, Replicate):
            raise ValueError(
                f"{name}: DTensor placement {placement} is not supported here (expected Shard or "
                "Replicate: a rank's shard must be one block of the full tensor); call "
                "full_tensor() and save or distribute that instead")
    shape, offset = compute_local_shape_and_global_offset(
        tensor.shape, tensor.device_mesh, tensor.placements)
    return list(shape), list(offset)


def _local_piece(name: str, tensor: torch.Tensor) -> Any:
    """The piece of the full tensor this rank's DTensor shard holds."""
    shape, offset = local_box(name, tensor)
    splits = [_C.DimSplit(d, [(o, o + n)])
              for d, (n, o, full) in enumerate(zip(shape, offset, tensor.shape)) if n != full]
    return _C.Piece(name, list(tensor.shape), splits)


def load_dtensors(
    model: torch.nn.Module,
    checkpoint: _args.FilePath,
    strict: bool = True,
    *,
    backend: str = "mmap",
) -> Tuple[Set[str], List[str]]:
    """Fills ``model`` — DTensor parameters from ``parallelize_module`` (ColwiseParallel,
    RowwiseParallel, ... over a DeviceMesh) and plain ones — from ``checkpoint`` (a file, an index
    or a directory). Each rank computes its local shard of each DTensor and reads only those bytes,
    then copies them into the shard in place (``full_tensor()`` equals the stored tensor). Returns
    ``(missing, unexpected)``; with ``strict`` either being non-empty raises RuntimeError, as
    ``load_model`` does, and a shape mismatch always does, before anything is changed. Names,
    ties and sizes are checked by the C++ module-load report (``ModuleLoadPlan``), which compares
    each DTensor's global sizes with the sizes the stored tensor loads as (F4: pairs of values)."""
    dtensor = _dtensor_type()
    handle = _C.Checkpoint(_args.path(checkpoint), _C.LoadOptions(backend=_args.backend(backend)))
    targets = {name: t for name, t in model.state_dict(keep_vars=True).items()
               if isinstance(t, torch.Tensor)}
    plan = _C.ModuleLoad(list(targets.items()), handle)
    missing, unexpected = checked_report(model, plan, strict)
    pieces, destinations = [], []
    for name in plan.loaded_names:
        target = targets[name]
        is_dtensor = dtensor is not None and isinstance(target, dtensor)
        pieces.append(_local_piece(name, target) if is_dtensor
                      else _C.Piece(name, list(target.shape), []))
        destinations.append(target.to_local() if is_dtensor else target)
    loaded = _C.load_pieces(handle, pieces)
    with torch.no_grad():
        for piece, destination in zip(pieces, destinations):
            destination.copy_(loaded[piece.name])
    return missing, unexpected
