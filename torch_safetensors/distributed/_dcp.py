"""``torch.distributed.checkpoint`` (DCP) storage on safetensors checkpoints, through our core.

::

    import torch.distributed.checkpoint as dcp
    from torch_safetensors.distributed import StorageReader, StorageWriter  # (defined here)

    dcp.load(state_dict, storage_reader=StorageReader("checkpoint_dir"))   # in place
    dcp.save(state_dict, storage_writer=StorageWriter("out_dir"))

A thin adapter, in the interfaces of torch's ``HuggingFaceStorageReader``/``Writer``: the file
format, the index and its checks are the package's (``open_checkpoint``, ``safe_open``,
``save_sharded``). What it adds is DCP's bookkeeping:

- ``StorageReader`` reads a safetensors file, an index, or a directory: one with an index or a
  single file (huggingface_hub, transformers, our ``hub``, torch's ``HuggingFaceStorageWriter``
  with or without consolidation), or several files without an index whose ``__metadata__``
  places chunks of a tensor (``DCP_SHARDING_INFO``'s ``saved_offsets``: torch's
  ``HuggingFaceStorageWriter(save_distributed=True)`` without consolidation). For each
  ``ReadItem`` it reads only the requested region (``get_slice`` on the ``pread`` backend reads
  exactly those bytes), so a rank loading a ``Shard(0)`` or ``Shard(1)`` DTensor reads about
  ``1/N`` of the checkpoint. Each shard file is opened once per ``read_data`` (per backend).
- ``StorageWriter`` writes the state dict, sharded DTensors included, from every rank straight
  to the huggingface layout (``distributed.save_sharded``: each rank writes its own chunks into
  the final files, published atomically once every rank is done), so the result is an ordinary
  checkpoint, byte-identical to ``hub.save_torch_state_dict`` of the gathered state dict.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch.distributed.checkpoint import storage as _storage
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.futures import Future

from .._extension import _C
from .._file import open_checkpoint, safe_open
from ._dtensor import _dtensor_type, boxes, local_ranges
from ._save import chunk_entries, placeholder_entry, process_group, save_entries

__all__ = ["StorageReader", "StorageWriter"]

PathLike = Union[str, "os.PathLike[str]"]

#: The index huggingface_hub, transformers and torch's HuggingFaceStorageWriter write.
INDEX_NAME = "model.safetensors.index.json"
#: The file name pattern of ``StorageWriter`` (huggingface_hub's and torch's): shard ``i`` of ``n``
#: is ``model-{i:05d}-of-{n:05d}.safetensors``, the index ``model.safetensors.index.json``.
FILE_PATTERN = "model{suffix}.safetensors"
#: torch's key (``_hf_utils.CUSTOM_METADATA_KEY``) for where each stored chunk sits in its tensor.
SHARDING_INFO_KEY = "DCP_SHARDING_INFO"
SAVED_OFFSETS_KEY = "saved_offsets"


@dataclasses.dataclass(frozen=True)
class _StoredChunk:
    """Where one chunk lives: ``Metadata.storage_data``'s value (picklable, like torch's
    ``_HFStorageInfo``). ``path`` is absolute: each rank reads its own ``read_metadata``'s."""

    path: str
    shape: Tuple[int, ...]  # torch's shape of the stored chunk
    dtype: torch.dtype
    spec_dtype: str
    # The absolute index the shard belongs to, if any: reads open the index and let the core
    # open the shard, which checks the shard's containment against the descriptor it reads.
    index: Optional[str] = None


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _is_checkpoint_path(path: str) -> bool:
    """Whether ``path`` names something ``StorageReader`` opens (for DCP's ``checkpoint_id``)."""
    if os.path.isfile(path):
        return path.endswith(".safetensors") or path.endswith(".json")
    if os.path.isdir(path):
        indexes, files = _C.checkpoint_files(path)
        return bool(indexes or files)
    return False


def _check_exists(path: str) -> str:
    # Raised at construction: DCP turns an exception from read_metadata into an AssertionError
    # ("metadata is None; ..."), which would hide the FileNotFoundError.
    if not os.path.exists(path):
        raise FileNotFoundError(f"safetensors checkpoint {path!r} does not exist")
    return path


class StorageReader(_storage.StorageReader):
    """Reads a safetensors checkpoint for ``dcp.load``: a file, an index, or a directory.

    Args:
        path: a ``.safetensors`` file, a ``*.safetensors.index.json``, or a directory holding an
            index, a single file, or DCP-sharded files (see the module's docstring).
        backend: how the bytes are read. ``"pread"``: exactly the bytes of each requested
            region, into owned memory, then copied into the destination. ``"mmap"``: copied
            straight from a private mapping of the file (one copy, but the kernel's readahead
            may read beyond a region, and a column slice touches every page of its rows).
            ``"auto"`` (default): ``mmap`` for whole stored chunks (every byte is wanted: one
            copy instead of two), ``pread`` for parts of one (only their bytes are read).
        thread_count: files read at once (as torch's ``HuggingFaceStorageReader``'s option);
            the core releases the GIL while it reads. Default 1.

    Tensors are copied into the state dict's own tensors (``planner.resolve_tensor``), so a
    destination of another dtype or on another device gets the values converted by
    ``Tensor.copy_``, as with DCP's own readers. Non-tensor entries cannot be requested: a
    safetensors checkpoint holds tensors only.
    """

    def __init__(self, path: PathLike, *, backend: str = "auto", thread_count: int = 1) -> None:
        super().__init__()
        if backend not in ("auto", "pread", "mmap"):
            raise ValueError(f"backend must be 'auto', 'pread' or 'mmap', got {backend!r}")
        if isinstance(thread_count, bool) or not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be an int >= 1, got {thread_count!r}")
        self.path = _check_exists(os.fspath(path))
        self.backend = backend
        self.thread_count = thread_count
        self.load_id = uuid.uuid4().hex
        self.storage_data: Dict[MetadataIndex, _StoredChunk] = {}

    # -- DCP's StorageReader interface -------------------------------------------------------

    @property
    def checkpoint_id(self) -> str:
        return self.path

    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        if checkpoint_id is not None:
            self.path = _check_exists(os.fspath(checkpoint_id))
        self.storage_data = {}
        self.load_id = uuid.uuid4().hex

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        return _is_checkpoint_path(os.fspath(checkpoint_id))

    def read_metadata(self) -> Metadata:
        """One ``TensorStorageMetadata`` per tensor, a chunk per stored piece (one, the whole
        tensor, unless the files carry DCP sharding info); headers only, no tensor data."""
        state: Dict[str, TensorStorageMetadata] = {}
        storage: Dict[MetadataIndex, _StoredChunk] = {}
        placed: Dict[str, List[Tuple[str, List[int], List[int]]]] = defaultdict(list)
        for file_path, names, index in self._files():
            with safe_open(file_path, framework="pt") as f:
                offsets_of = self._saved_offsets(file_path, f.metadata())
                for name in names:
                    self._add_chunk(state, storage, file_path, f, name, offsets_of.get(name))
                    if index is not None:
                        key = MetadataIndex(fqn=name, offset=state[name].chunks[-1].offsets)
                        storage[key] = dataclasses.replace(storage[key], index=index)
                    chunk = state[name].chunks[-1]
                    placed[name].append((file_path, list(chunk.offsets), list(chunk.sizes)))
        # The core checks that each tensor's chunks tile it exactly once (no gap, no overlap)
        # and gives its global shape: DCP would otherwise leave uncovered elements unread.
        for name, chunks in placed.items():
            state[name].size = torch.Size(_C.dcp_check_coverage(name, chunks))
        metadata = Metadata(state_dict_metadata=dict(state), storage_data=storage)
        metadata.storage_meta = StorageMeta(checkpoint_id=self.path, load_id=self.load_id)
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self.storage_data = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: List[LoadPlan]) -> List[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        """Reads each ``ReadItem``'s region (``storage_offsets`` + ``lengths`` inside its stored
        chunk) with ``get_slice``, copies it into ``planner.resolve_tensor(item)`` and commits it.
        Items are grouped by file and each file opened once."""
        _refuse_shards_of_several_blocks(plan.items, planner, self.path)
        per_file: Dict[str, List[ReadItem]] = defaultdict(list)
        for item in plan.items:
            if item.type != LoadItemType.TENSOR:
                raise ValueError(
                    f"safetensors checkpoint {self.path!r}: `{item.dest_index.fqn}` is requested "
                    "as a non-tensor value, but a safetensors checkpoint holds tensors only"
                )
            per_file[self._chunk(item).path].append(item)

        def read_file(file_path: str, items: List[ReadItem]) -> None:
            handles: Dict[str, safe_open] = {}  # backend -> this file, opened once if used
            for item in items:
                self._read_item(handles, file_path, item, planner)

        if self.thread_count == 1 or len(per_file) == 1:
            for file_path, items in per_file.items():
                read_file(file_path, items)
        else:
            with ThreadPoolExecutor(min(self.thread_count, len(per_file))) as pool:
                for done in [pool.submit(read_file, p, i) for p, i in per_file.items()]:
                    done.result()  # the first error, re-raised here
        return _done(None)

    # -- helpers ------------------------------------------------------------------------------

    def _files(self) -> List[Tuple[str, List[str], Optional[str]]]:
        """(absolute file, its tensor names, absolute index or None) for every file.

        A file, an index, or a directory with an index or one file: ``open_checkpoint`` reads and
        checks the index (shards exist, stay inside the directory, hold what it lists). A
        directory of several files and no index: each file, as torch's reader does."""
        path = self.path
        if os.path.isdir(path):
            # What the directory holds, by the core's rule (the one Checkpoint chooses from).
            indexes, files = _C.checkpoint_files(path)
            has_index = bool(indexes)
            if not has_index and not files:
                raise FileNotFoundError(
                    f"safetensors checkpoint {path!r}: the directory holds no .safetensors file "
                    "and no .safetensors.index.json"
                )
            if not has_index and len(files) > 1:
                out = []
                for name in files:
                    with safe_open(os.path.join(path, name), framework="pt") as f:
                        out.append((os.path.abspath(os.path.join(path, name)), f.keys(), None))
                return out
        with open_checkpoint(path) as checkpoint:
            index = checkpoint.index_path
            directory = os.path.dirname(os.path.abspath(index if index is not None else path))
            if index is None and os.path.isdir(path):
                directory = os.path.abspath(path)
            by_file: Dict[str, List[str]] = defaultdict(list)
            for name in checkpoint.keys():
                by_file[checkpoint.shard_file(name)].append(name)
            # Every shard's header is parsed (and checked against the index) here.
            for name in checkpoint.keys():
                checkpoint.get_slice(name)
        index = None if index is None else os.path.abspath(index)
        return [(os.path.join(directory, shard), names, index) for shard, names in by_file.items()]

    @staticmethod
    def _saved_offsets(file_path: str, metadata: Optional[Dict[str, str]]) -> Dict[str, List[int]]:
        """torch's ``DCP_SHARDING_INFO``: ``{name: {"saved_offsets": [...]}}`` (JSON), if any,
        parsed by the core (offsets are non-negative integers; ValueError naming the file)."""
        if not metadata or SHARDING_INFO_KEY not in metadata:
            return {}
        return _C.dcp_sharding_info(metadata[SHARDING_INFO_KEY], file_path)

    @staticmethod
    def _add_chunk(
        state: Dict[str, TensorStorageMetadata],
        storage: Dict[MetadataIndex, _StoredChunk],
        file_path: str,
        f: safe_open,
        name: str,
        offsets: Optional[List[int]],
    ) -> None:
        spec_dtype = f.get_slice(name).get_dtype()
        # The core's dtype table: the torch dtype and sizes the tensor loads as (F4's last
        # dimension in pairs of values); None where torch has no dtype (F6).
        dtype, shape = f._handle().torch_info(name)
        if dtype is None:
            raise ValueError(
                f"{file_path}: tensor `{name}` has dtype {spec_dtype}, which torch cannot express "
                "(read it as bytes with torch_safetensors.safe_open(...).get_raw)"
            )
        if offsets is None:
            offsets = [0] * len(shape)
        chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(shape))
        entry = state.get(name)
        if entry is None:
            # The size is set once every chunk is known (read_metadata's coverage check).
            state[name] = TensorStorageMetadata(
                properties=TensorProperties(dtype=dtype), size=torch.Size(shape), chunks=[chunk]
            )
        else:
            if entry.properties.dtype != dtype or len(entry.size) != len(shape):
                raise ValueError(
                    f"{file_path}: tensor `{name}` is {spec_dtype} {shape}, but another file holds "
                    f"it as {entry.properties.dtype} with {len(entry.size)} dimensions"
                )
            entry.chunks.append(chunk)
        key = MetadataIndex(fqn=name, offset=offsets)
        if key in storage:
            raise ValueError(
                f"tensor `{name}` at offsets {offsets} is stored twice: in {storage[key].path} "
                f"and in {file_path}"
            )
        storage[key] = _StoredChunk(file_path, tuple(shape), dtype, spec_dtype)

    def _chunk(self, item: ReadItem) -> _StoredChunk:
        try:
            return self.storage_data[item.storage_index]
        except KeyError:
            raise KeyError(
                f"safetensors checkpoint {self.path!r} has no chunk of tensor "
                f"`{item.storage_index.fqn}` at offsets {list(item.storage_index.offset or [])}"
            ) from None

    def _read_item(
        self, handles: Dict[str, safe_open], file_path: str, item: ReadItem, planner: LoadPlanner
    ) -> None:
        chunk = self._chunk(item)
        name = item.storage_index.fqn
        region = tuple(slice(o, o + n) for o, n in zip(item.storage_offsets, item.lengths))
        whole = list(item.lengths) == list(chunk.shape)
        backend = self.backend
        if backend == "auto":
            backend = "mmap" if whole or chunk.spec_dtype == "F4" else "pread"
        f = handles.get(backend)
        if f is None:
            if chunk.index is not None:
                f = open_checkpoint(chunk.index, backend=backend)
            else:
                f = safe_open(file_path, framework="pt", backend=backend)
            handles[backend] = f
        if whole or chunk.spec_dtype == "F4":
            # F4's header counts values, torch's dtype pairs: index torch's tensor instead.
            source = f.get_tensor(name)
            if not whole:
                source = source[region]
        else:
            source = f.get_slice(name)[region]
        target = planner.resolve_tensor(item).detach()
        if target.size() != source.size():
            raise ValueError(
                f"{file_path}: tensor `{name}`: the region at {list(item.storage_offsets)} of "
                f"size {list(item.lengths)} read as {list(source.size())}, but the destination "
                f"expects {list(target.size())}"
            )
        target.copy_(source)
        planner.commit_tensor(item, target)


def _planner_dtensor(fqn: str, planner: Any) -> Any:
    """The planner's state dict value `fqn` when it is a DTensor, else None."""
    dtensor = _dtensor_type()
    value = (getattr(planner, "state_dict", None) or {}).get(fqn)
    return value if dtensor is not None and isinstance(value, dtensor) else None


def _refuse_shards_of_several_blocks(items: List[ReadItem], planner: Any, path: str) -> None:
    """DCP describes each rank's DTensor shard as one block (offsets and sizes); a
    ``_StridedShard`` shard of several blocks would be filled from the wrong one, silently."""
    for fqn in dict.fromkeys(item.dest_index.fqn for item in items):
        value = _planner_dtensor(fqn, planner)
        if value is not None:
            blocks = boxes(local_ranges(fqn, value))
            if len(blocks) > 1:
                raise ValueError(
                    f"safetensors checkpoint {path!r}: tensor `{fqn}`: this rank's shard "
                    f"({value.placements}) is {len(blocks)} blocks of the full tensor, but DCP "
                    "plans one block per rank and would fill it with the wrong values: load it "
                    "with torch_safetensors.distributed.load_dtensors(model, path) instead")


class StorageWriter(_storage.StorageWriter):
    """Writes ``dcp.save``'s state dict as a huggingface-style safetensors checkpoint in ``path``:
    the same files, byte for byte, as ``hub.save_torch_state_dict`` of the gathered state dict
    (``model.safetensors``, or ``model-{i:05d}-of-{n:05d}.safetensors`` shards of at most
    ``max_shard_size`` and ``model.safetensors.index.json``).

    Sharded DTensors (``Shard(d)`` / ``_StridedShard`` / ``Replicate`` over 1-D or N-D meshes:
    FSDP2, tensor parallel, FSDP2 over tensor parallel) are saved as they are, with no gather: in
    ``write_data`` every rank takes part in the core's distributed ``save_sharded``
    (``distributed.save_sharded``), writing its own chunks' bytes at their final offsets into files
    the first rank created under temporary names; once every rank has succeeded they are published
    (the index last) and stale files of an earlier save with that naming pattern removed. A failure
    on any rank raises on every rank (DCP reports it as ``CheckpointException``) and leaves the
    previous checkpoint as it was. DCP's planner hands each replicated chunk to one rank, which
    writes it once. ``path`` must be one file system all ranks see. The ranks exchange through
    ``group`` (default: the default process group; none when ``dcp.save`` runs without collectives
    or in one process).

    A ``_StridedShard`` shard of several blocks of the full tensor is written block by block, at the
    places the package's placement rule gives (``distributed.save_sharded``'s), not at DCP's single
    offset per rank, which cannot describe it (DCP's planner refuses most such state dicts itself as
    overlapping chunks). Non-tensor values (ints, objects: DCP writes them as bytes) are refused, on
    every rank before anything is written. Tensors sharing memory (tied weights) are each written,
    as separate copies.

    Args:
        path: the output directory (created if missing).
        metadata: extra ``str -> str`` entries, as ``save_torch_state_dict``'s: a single file's
            ``__metadata__`` (beside ``"format": "pt"``), or the index's ``metadata``.
        sync_files: durable files (the core's ``durable`` save: every file and the directory
            fsync'ed before publishing; the default, as DCP's ``FileSystemWriter``). Publishing
            is atomic either way.
        max_shard_size: bytes, or huggingface_hub's ``"5GB"`` (the default, as theirs).
        group: the process group the ranks exchange through.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        metadata: Optional[Dict[str, str]] = None,
        sync_files: bool = True,
        max_shard_size: Union[int, str, None] = None,
        group: Any = None,
    ) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.metadata = dict(metadata or {})
        self.sync_files = sync_files
        self.max_shard_size = max_shard_size
        self.group = group
        self.save_id = uuid.uuid4().hex
        self.is_coordinator = False
        self.use_collectives = True
        # This rank's tensors (every rank lists every tensor), in the state dict's order.
        self._tensors: List[Tuple[str, List[int], torch.dtype]] = []

    @property
    def checkpoint_id(self) -> str:
        return self.path

    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        if checkpoint_id is not None:
            self.path = os.fspath(checkpoint_id)
        self.save_id = uuid.uuid4().hex

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        path = os.fspath(checkpoint_id)
        return not os.path.exists(path) or os.path.isdir(path)

    def storage_meta(self) -> Optional[StorageMeta]:
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        self.use_collectives = bool(kwargs.get("use_collectives", True))

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Refuses what safetensors cannot hold, on every rank, before anything is written, and
        records every tensor's global size and dtype."""
        tensors: Dict[str, Tuple[List[int], torch.dtype]] = {}
        for item in plan.items:
            fqn = item.index.fqn
            if item.type == WriteItemType.BYTE_IO or item.tensor_data is None:
                raise ValueError(
                    f"state dict entry `{fqn}` is not a tensor (DCP would write it as bytes), but "
                    f"a safetensors checkpoint ({self.path}) holds tensors only: save it separately"
                )
            if fqn in tensors:
                raise ValueError(
                    f"tensor `{fqn}`: this rank has several write items of it (at offsets "
                    f"{list(item.tensor_data.chunk.offsets)} and another), expected one per "
                    "tensor and rank, as DCP's planners make them: save its full_tensor() instead")
            tensors[fqn] = (list(item.tensor_data.size), item.tensor_data.properties.dtype)
        self._tensors = [(fqn, size, dtype) for fqn, (size, dtype) in tensors.items()]
        os.makedirs(self.path, exist_ok=True)
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        """Every rank's part of the one distributed save (collective: every rank calls it)."""
        mine = {item.index.fqn: item for item in plan.items}
        entries, written = [], {}
        for fqn, size, dtype in self._tensors:
            item = mine.get(fqn)
            if item is None:  # DCP gave this replica to another rank
                entries.append(placeholder_entry(fqn, size, dtype))
                continue
            chunk = planner.resolve_data(item).detach()
            written[fqn] = chunk.nbytes
            value = _planner_dtensor(fqn, planner)
            blocks = chunk_entries(fqn, value) if value is not None else []
            if len(blocks) > 1:  # _StridedShard: DCP's offsets are wrong
                if sum(block.nbytes for _, block, _, _ in blocks) != chunk.nbytes:
                    raise ValueError(f"tensor `{fqn}`: the planner's data ({chunk.nbytes} bytes) "
                                     "is not the DTensor's local shard")
                entries.extend(blocks)
            else:
                entries.append((fqn, chunk, size, list(item.tensor_data.chunk.offsets)))
        group = process_group(self.group) if self.use_collectives else None
        save_entries(entries, self.path, group=group,
                     max_shard_size=self.max_shard_size, filename_pattern=FILE_PATTERN,
                     metadata=self.metadata, remove_stale=True, durable=self.sync_files)
        results = [
            _storage.WriteResult(
                index=item.index,
                size_in_bytes=written[item.index.fqn],
                storage_data=self.path,
            )
            for item in plan.items
        ]
        return _done(results)

    def finish(self, metadata: Metadata, results: List[List[_storage.WriteResult]]) -> None:
        """Nothing left: ``write_data`` published the files and the index once every rank had
        written its part."""
