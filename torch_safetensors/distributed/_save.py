"""Saving a sharded state dict from every rank straight to the huggingface layout: the C++ core's
``save_sharded`` over a process group (``distributed_c10d.h``); this module adapts DTensors into
local chunks with their global offsets."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .._extension import _C
from ._dtensor import _dtensor_type, boxes, local_ranges

#: One entry of the core's call: name, local chunk (a meta tensor: this rank writes none of it),
#: the full tensor's sizes, the chunk's offsets in it.
Entry = Tuple[str, torch.Tensor, List[int], List[int]]


@dataclasses.dataclass(frozen=True)
class SaveReport:
    """What one rank's :func:`save_sharded` wrote."""

    tensor_bytes: int  #: this rank's chunk bytes (replicas are written once, by one holder)
    header_bytes: int  #: file headers and the index (the publishing rank, 0; the others 0)
    files: List[str]  #: the checkpoint's files, the index last when sharded

    @property
    def bytes_written(self) -> int:
        return self.tensor_bytes + self.header_bytes


def chunk_entries(name: str, tensor: torch.Tensor) -> List[Entry]:
    """A state dict value as this rank's chunks: a DTensor's local shard as the blocks of the full
    tensor it holds, each at its global offsets (one for ``Shard``/``Replicate``, several for
    ``_StridedShard``; a placeholder when the shard is empty), a plain tensor whole (every rank
    holds the same one; it is written once)."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(tensor, dtensor):
        local = tensor.to_local().detach()
        ranges = local_ranges(name, tensor)
        expected = [sum(end - begin for begin, end in r) for r in ranges]
        if list(local.shape) != expected:  # torch pads no shard today; a future one must not slip
            raise ValueError(f"{name}: the local shard is {list(local.shape)}, expected {expected}")
        entries: List[Entry] = [(name, local[tuple(where)], list(tensor.shape), offsets)
                                for _, offsets, where in boxes(ranges)]
        return entries or [placeholder_entry(name, tensor.shape, local.dtype)]
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"state dict entry `{name}` is a {type(tensor).__name__}, expected a "
                        "tensor: a safetensors checkpoint holds tensors only")
    return [(name, tensor.detach(), list(tensor.shape), [0] * tensor.dim())]


def placeholder_entry(name: str, sizes: Sequence[int], dtype: torch.dtype) -> Entry:
    """A tensor of which this rank writes nothing (another rank holds all of it)."""
    return name, torch.empty(0, dtype=dtype, device="meta"), list(sizes), [0] * len(sizes)


def process_group(group: Any) -> Any:
    """``group``, else the default process group when there is one with several ranks, else
    None (one process: nothing is exchanged)."""
    import torch.distributed as dist

    if group is not None:
        return group
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def save_entries(entries: Sequence[Entry], save_directory: Union[str, "os.PathLike[str]"], *,
                 group: Optional[Any], max_shard_size: Union[int, str, None], filename_pattern: Optional[str],
                 metadata: Optional[Dict[str, str]], remove_stale: bool,
                 durable: bool) -> SaveReport:
    """The core's distributed save of ``entries``; ``group`` None: this process alone."""
    from .. import hub  # hub imports this package: its defaults, once it is loaded

    if max_shard_size is None:
        max_shard_size = hub.MAX_SHARD_SIZE
    pattern = hub.SAFETENSORS_WEIGHTS_FILE_PATTERN if filename_pattern is None else filename_pattern
    directory = os.fsdecode(os.fspath(save_directory))
    os.makedirs(directory, exist_ok=True)
    report = _C.save_sharded_group(list(entries), directory, group,
                                   hub._max_bytes(max_shard_size), pattern, metadata,
                                   bool(remove_stale), bool(durable))
    return SaveReport(report["tensor_bytes"], report["header_bytes"], list(report["files"]))


def save_sharded(
    state_dict: Dict[str, Any],
    save_directory: Union[str, "os.PathLike[str]"],
    *,
    group: Any = None,
    max_shard_size: Union[int, str, None] = None,
    filename_pattern: Optional[str] = None,
    metadata: Optional[Dict[str, str]] = None,
    remove_stale: bool = True,
    durable: bool = False,
) -> SaveReport:
    """Saves a state dict of DTensors (``Shard(d)`` / ``Replicate`` on 1-D or N-D meshes, as
    ``fully_shard`` and ``parallelize_module`` make them) and plain tensors from every rank of
    ``group`` (default: the default process group; one process alone when there is none) as one
    huggingface-style checkpoint: the same files, byte for byte, as
    ``hub.save_torch_state_dict(gathered state dict, ...)`` writes (``max_shard_size`` default
    ``"5GB"``, ``filename_pattern``, ``metadata`` as there).

    Nothing is gathered: the ranks agree on the layout, the first rank creates every file at its
    final size under a temporary name and writes the headers and the index, each rank writes its
    own shards' bytes at their final offsets, and once every rank has succeeded the files are
    renamed into place (the index last) and stale files of an earlier save removed
    (``remove_stale``). ``save_directory`` must be one file system all ranks see. A failure on
    any rank (a bad layout, a full disk, a rank that dies) raises on every rank within the group's
    timeout and leaves the previous checkpoint untouched; ``durable`` fsyncs every file and the
    directory before publishing. Plain tensors must be the same on every rank (one copy is
    written). Every rank calls this with the same keys in the same order.

    Returns this rank's :class:`SaveReport`."""
    entries = [entry for name, tensor in state_dict.items()
               for entry in chunk_entries(name, tensor)]
    return save_entries(entries, save_directory, group=process_group(group), max_shard_size=max_shard_size,
                        filename_pattern=filename_pattern, metadata=metadata,
                        remove_stale=remove_stale, durable=durable)
