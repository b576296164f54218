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


#: Per dimension of the full tensor, the [begin, end) ranges a rank's local shard holds of it, in
#: the local tensor's order: the local tensor is the full one indexed by them, dimension by
#: dimension, the ranges of a dimension concatenated.
Ranges = List[List[Tuple[int, int]]]


def local_ranges(name: str, tensor: Any) -> Ranges:
    """The ranges of the full tensor this rank's DTensor shard holds: the one placement rule for
    loading (``_local_piece``) and saving (``save_sharded``, the DCP ``StorageWriter``).

    ``Shard(d)`` and ``Replicate`` leave one range per dimension; ``_StridedShard(d,
    split_factor)`` (FSDP2 over tensor parallel) several along ``d``: its shard is several blocks
    of rows, concatenated. The indices are torch's own: each placement, left to right over the
    mesh, splits the global indices of its dimension as it splits the data
    (``placement._split_tensor``, what ``distribute_tensor`` applies to the values), and this
    rank's coordinate picks its part; runs of consecutive indices become ranges."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    mesh = tensor.device_mesh
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        raise ValueError(f"{name}: this rank is not in the DTensor's device mesh {mesh}")
    shape = list(tensor.shape)
    indices = [torch.arange(n) for n in shape]
    for mesh_dim, placement in enumerate(tensor.placements):
        if isinstance(placement, Replicate):
            continue
        if not isinstance(placement, (Shard, _StridedShard)):
            raise ValueError(
                f"{name}: DTensor placement {placement} is not supported here (expected Shard, "
                "_StridedShard or Replicate: a rank's shard must be values of the full tensor); "
                "call full_tensor() and save or distribute that instead")
        dim = placement.dim % len(shape)
        along = indices[dim].view([1] * dim + [-1])  # the indices on `dim`, as _split_tensor cuts
        parts, _ = placement._split_tensor(along, mesh.size(mesh_dim), with_padding=False,
                                           contiguous=False)
        indices[dim] = parts[coordinate[mesh_dim]].reshape(-1)
    return [_runs(index.tolist()) for index in indices]


def _runs(index: List[int]) -> List[Tuple[int, int]]:
    """[begin, end) ranges of consecutive values, in order (none for no index)."""
    runs: List[Tuple[int, int]] = []
    for i in index:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def boxes(ranges: Ranges) -> List[Tuple[List[int], List[int], List[slice]]]:
    """The blocks of the full tensor that ``ranges`` (``local_ranges``) cover, as ``(sizes,
    offsets, where)``, ``where`` indexing the block in the local tensor: one per combination of a
    range of each dimension (one for ``Shard``/``Replicate``, several for ``_StridedShard``),
    none when the shard is empty."""
    out: List[Tuple[List[int], List[int], List[slice]]] = [([], [], [])]
    for dim_ranges in ranges:
        grown = []
        for sizes, offsets, where in out:
            at = 0
            for begin, end in dim_ranges:
                grown.append((sizes + [end - begin], offsets + [begin],
                              where + [slice(at, at + end - begin)]))
                at += end - begin
        out = grown
    return out


def _local_piece(name: str, tensor: torch.Tensor) -> Any:
    """The piece of the full tensor this rank's DTensor shard holds."""
    splits = []
    for d, (ranges, full) in enumerate(zip(local_ranges(name, tensor), tensor.shape)):
        if ranges != [(0, full)]:
            splits.append(_C.DimSplit(d, ranges or [(0, 0)]))
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
