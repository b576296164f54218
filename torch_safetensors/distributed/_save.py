"""Saving a sharded state dict from every rank straight to the huggingface layout: the C++ core's
``save_sharded`` over a process group (``distributed_c10d.h``); this module adapts DTensors into
local chunks with their global offsets."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import _args
from .._extension import _C
from .._save import SaveReport
from ._dtensor import _dtensor_type, boxes, local_ranges

#: One entry of the core's call: name, local chunk (a meta tensor: this rank writes none of it),
#: the full tensor's sizes, the chunk's offsets in it.
Entry = Tuple[str, torch.Tensor, List[int], List[int]]


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
                 group: Optional[Any], max_shard_size: Union[int, str, None],
                 filename_pattern: Optional[str], metadata: Optional[Dict[str, str]],
                 remove_stale: bool, durable: bool) -> SaveReport:
    """The core's distributed save of ``entries``; ``group`` None: this process alone."""
    size, pattern = _split_arguments(max_shard_size, filename_pattern)
    report = _C.save_sharded_group(list(entries), _made(save_directory), group, size, pattern,
                                   metadata, bool(remove_stale), bool(durable))
    return SaveReport.of(report)


def _split_arguments(max_shard_size: Union[int, str, None],
                     filename_pattern: Optional[str]) -> Tuple[int, str]:
    """``max_shard_size`` in bytes and the file name pattern, with save_torch_state_dict's
    defaults (``"5GB"``, ``model{suffix}.safetensors``)."""
    if max_shard_size is None:
        max_shard_size = _args.MAX_SHARD_SIZE
    if filename_pattern is None:
        filename_pattern = _args.SAFETENSORS_WEIGHTS_FILE_PATTERN
    return _args.max_shard_bytes(max_shard_size), filename_pattern


def _made(directory: Union[str, "os.PathLike[str]"]) -> str:
    directory = os.fsdecode(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    return directory


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
    return save_entries(entries, save_directory, group=process_group(group),
                        max_shard_size=max_shard_size, filename_pattern=filename_pattern,
                        metadata=metadata,
                        remove_stale=remove_stale, durable=durable)


def rank_file_name(rank: int, world_size: int) -> str:
    """The file :func:`save_rank_file` writes for ``rank`` of ``world_size``."""
    return f"rank-{rank:05d}-of-{world_size:05d}.safetensors"


def save_rank_file(
    state_dict: Dict[str, Any],
    directory: Union[str, "os.PathLike[str]"],
    *,
    group: Any = None,
    durable: bool = False,
) -> str:
    """Saves this rank's shards of ``state_dict`` (as :func:`save_sharded` takes it) to a file of
    its own, ``directory/rank-RRRRR-of-NNNNN.safetensors``, for jobs without a file system that
    all ranks see; :func:`consolidate` turns the files, once in one place, into the checkpoint
    :func:`save_sharded` would have written. Nothing is exchanged between the ranks; a replica is
    stored by one of its holders only. The file records the whole state dict's names, dtypes and
    global sizes (never inferred from the chunks) and torch's ``DCP_SHARDING_INFO`` offsets, so
    ``dcp.load`` with our :class:`StorageReader` reads a directory of rank files as it is.
    Returns the file's path."""
    import torch.distributed as dist

    group = process_group(group)
    rank = dist.get_rank(group) if group is not None else 0
    world = dist.get_world_size(group) if group is not None else 1
    path = os.path.join(_made(directory), rank_file_name(rank, world))
    entries = [entry for name, tensor in state_dict.items()
               for entry in (chunk_entries(name, tensor) if _writes_replica(tensor, rank) else
                             [placeholder_entry(name, tensor.shape, tensor.dtype)])]
    _C.save_rank_file(entries, path, bool(durable))
    return path


def _writes_replica(tensor: Any, rank: int) -> bool:
    """Whether this rank stores its chunk of ``tensor`` in its rank file: a replicated chunk is
    stored once, by its holder at coordinate 0 of every ``Replicate`` mesh dimension (a plain
    tensor by rank 0), so the rank files hold the state dict once and DCP readers take them."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(tensor, dtensor):
        return rank == 0
    from torch.distributed.tensor import Replicate

    coordinate = tensor.device_mesh.get_coordinate()
    return all(c == 0 for c, p in zip(coordinate, tensor.placements) if isinstance(p, Replicate))


def _rank_files(source: Union[str, "os.PathLike[str]", Sequence[Any]]) -> List[str]:
    """A directory's rank files, all of one save (every rank of 0..N-1 present), or the list."""
    if not isinstance(source, (str, bytes, os.PathLike)):
        return [os.fsdecode(os.fspath(p)) for p in source]
    directory = os.fsdecode(os.fspath(source))
    found = {}
    for name in os.listdir(directory):
        parts = name[len("rank-"):-len(".safetensors")].split("-of-")
        if name.startswith("rank-") and name.endswith(".safetensors") and len(parts) == 2 \
                and all(p.isdigit() for p in parts):
            found[(int(parts[0]), int(parts[1]))] = os.path.join(directory, name)
    worlds = {world for _, world in found}
    if len(worlds) != 1:
        raise ValueError(f"{directory}: expected the rank files of one save "
                         f"(rank-RRRRR-of-NNNNN.safetensors), found {sorted(found) or 'none'}")
    world = worlds.pop()
    missing = [r for r in range(world) if (r, world) not in found]
    if missing:
        raise ValueError(f"{directory}: the rank files of ranks {missing} of {world} are missing")
    return [found[(r, world)] for r in range(world)]


def consolidate(
    rank_files: Union[str, "os.PathLike[str]", Sequence[Any]],
    save_directory: Union[str, "os.PathLike[str]"],
    *,
    max_shard_size: Union[int, str, None] = None,
    filename_pattern: Optional[str] = None,
    metadata: Optional[Dict[str, str]] = None,
    remove_stale: bool = True,
    durable: bool = False,
    threads: Optional[int] = None,
) -> SaveReport:
    """Writes the huggingface-style checkpoint of the rank files that :func:`save_rank_file`
    wrote (a directory holding them, or a list of paths): the files :func:`save_sharded` writes,
    byte for byte, for the same arguments. Each chunk is copied from its mapped rank file with
    positional writes, by up to ``threads`` threads (default: up to 8), so memory stays bounded by
    the page cache; replicas are written once. Rank files that disagree on the state dict or
    whose chunks do not tile a tensor exactly are refused before any file is created; the
    checkpoint is published atomically as :func:`save_sharded`'s is."""
    files = _rank_files(rank_files)
    size, pattern = _split_arguments(max_shard_size, filename_pattern)
    report = _C.consolidate(files, _made(save_directory), size, pattern, metadata,
                            bool(remove_stale), bool(durable), int(threads or 0))
    return SaveReport.of(report)
