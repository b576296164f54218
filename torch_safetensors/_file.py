"""Reading: ``safe_open`` (lazy, header first), ``SafeSlice``, ``load_file`` and ``load``."""

from __future__ import annotations

import queue
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from . import _args
from ._args import RawTensor
from ._errors import SafetensorError, not_instance
from ._extension import _C


class SafeSlice:
    """A tensor of an open file that is read only in the parts an index selects.

    ``slice[index]`` accepts every index torch does and gives what ``tensor[index]`` would:
    ints, slices and ``...`` go to the C++ core (which with ``backend="pread"`` reads only the
    selected rows); other indices (lists, tensors) use torch's indexing on the zero-copy tensor.
    """

    __slots__ = ("_file", "_name", "_dtype", "_shape")

    def __init__(self, file: Any, name: str) -> None:
        self._file = file
        self._name = name
        self._dtype, self._shape = file.info(name)

    def get_shape(self) -> List[int]:
        """The logical shape, as in the header (F4: values, not bytes)."""
        return list(self._shape)

    def get_dtype(self) -> str:
        """The spec dtype name, e.g. ``"F32"`` or ``"F8_E4M3"``."""
        return self._dtype

    def __getitem__(self, index: Any) -> torch.Tensor:
        out = self._file.slice(self._name, index)
        if out is None:
            out = self._file.tensor(self._name)[index]
        return out

    def __repr__(self) -> str:
        return f"SafeSlice(name={self._name!r}, dtype={self._dtype!r}, shape={self._shape!r})"


class safe_open:  # noqa: N801 (the reference's name)
    """Opens a safetensors file lazily: the header is read now, tensors when asked for.

    Args:
        filename: path of the file.
        framework: ``"pt"`` (also ``"torch"``, ``"pytorch"``); other frameworks are not supported.
        device: where tensors go: ``"cpu"`` (default; zero-copy views of a private, copy-on-write
            mapping of the file), ``"cuda"``, ``"cuda:1"``, an int, or a ``torch.device``.
        backend: ``"mmap"`` (default) or ``"pread"`` (tensors are read into owned memory, and the
            file may change or vanish afterwards).
        dtype: cast floating-point tensors (F64, F32, F16, BF16) to this floating dtype on load,
            on ``device`` after the raw copy, as ``model.to(dtype)`` does; integers, bools, FP8
            and packed (F4, F6) tensors keep their stored dtype (the core's rule).
        cast_fp8: with ``dtype``, cast FP8 tensors too (only where they are plain values, not
            quantized weights whose scale is another tensor).
        populate: with ``"mmap"``, fault the whole mapping in now on all cores
            (``MADV_POPULATE_READ``) so that tensors are resident at once.
        device_budget, host_budget: bytes a load may allocate on ``device`` and on the host
            (owned tensors and staging buffers; views of the mapping cost nothing). Every load
            is planned first (``memory_plan()``); one that does not fit raises
            ``MemoryBudgetError`` naming its largest tensor and the shortfall before anything is
            allocated or read. ``None``: no limit; 0 is a ``ValueError``.

    To a device other than the CPU, tensors are allocated there and filled straight from the file
    through a small ring of pinned host buffers (``staging_bytes`` of ``open_checkpoint`` in all,
    the core's default here) with asynchronous copies: host memory stays bounded whatever the
    model's size.

    Use it as a context manager; after the ``with`` block the handle is closed (tensors and
    slices obtained from it stay valid).
    """

    def __init__(
        self,
        filename: _args.FilePath,
        framework: str = "pt",
        device: _args.Device = "cpu",
        *,
        backend: str = "mmap",
        dtype: Optional[torch.dtype] = None,
        populate: bool = False,
        cast_fp8: bool = False,
        device_budget: Optional[int] = None,
        host_budget: Optional[int] = None,
    ) -> None:
        self._file: Any = None
        _args.check_framework(framework)
        path = _args.path(filename)
        options = _args.load_options(backend, device, dtype, populate, path, cast_fp8=cast_fp8,
                                     device_budget=device_budget, host_budget=host_budget)
        # A file the OS cannot open raises OSError (FileNotFoundError, ...) from the binding.
        self._file = _C.File(path, options)

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self._file = None

    def _handle(self) -> Any:
        if self._file is None:
            raise SafetensorError("File is closed")
        return self._file

    def keys(self) -> List[str]:
        """The tensor names, sorted."""
        return sorted(self._handle().keys())

    def offset_keys(self) -> List[str]:
        """The tensor names in the order of their data in the file."""
        return self._handle().keys()

    def metadata(self) -> Optional[Dict[str, str]]:
        """The ``__metadata__`` entries, or None when the file has none."""
        return self._handle().metadata()

    def get_tensor(self, name: str) -> torch.Tensor:
        """The whole tensor ``name``."""
        _args.check_name(name)
        return self._handle().tensor(name)

    def get_tensors(self) -> Dict[str, torch.Tensor]:
        """Every tensor, keyed by name, in file order."""
        return self._handle().tensors()

    def get_slice(self, name: str) -> SafeSlice:
        """A lazy view of tensor ``name`` to index into (see ``SafeSlice``)."""
        _args.check_name(name)
        return SafeSlice(self._handle(), name)

    def memory_plan(self, names: Optional[List[str]] = None) -> Any:
        """What loading ``names`` (default: every tensor) will allocate with this handle's
        options, from the headers alone: a ``MemoryEstimate`` with ``device_bytes``,
        ``host_bytes`` (staging included), ``staging_bytes``, ``tensors``, ``largest`` and
        ``largest_bytes``. Nothing is allocated or read."""
        return self._handle().memory_plan(None if names is None else list(names))

    def get_raw(self, name: str) -> RawTensor:
        """Tensor ``name`` as stored: spec dtype, header shape and bytes (1-D uint8)."""
        _args.check_name(name)
        dtype, shape, data = self._handle().raw(name)
        return RawTensor(dtype, list(shape), data)


def load_file(
    filename: _args.FilePath,
    device: _args.Device = "cpu",
    *,
    backend: str = "mmap",
    device_budget: Optional[int] = None,
    host_budget: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Loads every tensor of a safetensors file, keyed by name, in file order.

    On the CPU with the mmap backend the tensors are zero-copy views of one private mapping of
    the file: writable, and writing to them never changes the file. (The reference's signature,
    then keyword-only memory budgets as in ``safe_open``: a load that does not fit raises
    ``MemoryBudgetError`` before anything is allocated; ``safe_open`` and ``open_checkpoint``
    also take ``dtype=`` and ``populate=``.)
    """
    with safe_open(filename, framework="pt", device=device, backend=backend,
                   device_budget=device_budget, host_budget=host_budget) as f:
        return f.get_tensors()


def load(data: bytes) -> Dict[str, torch.Tensor]:
    """Loads tensors from the bytes of a safetensors file (copies; nothing refers to ``data``)."""
    if not isinstance(data, bytes):
        raise not_instance("bytes", data, "bytes")
    return _C.load_bytes(data)


class _Stopped(Exception):
    """Ends a load whose iterator was closed early."""


class open_checkpoint(safe_open):  # noqa: N801 (a function-like name, as safe_open)
    """Opens a checkpoint lazily: a safetensors file, a ``*.safetensors.index.json``, or a
    directory holding either (its ``model.safetensors.index.json``, else its one index, else its
    one ``.safetensors`` file).

    The index is read and checked now (every shard exists inside the directory, symlinks
    included); each shard is opened on first use and must hold exactly the tensors the index
    assigns to it. ``keys()`` lists names shard by shard; ``metadata()`` is the index's
    ``"metadata"`` (``total_size`` as a string) or a single file's ``__metadata__``. Otherwise
    the interface of ``safe_open``: ``get_tensor``, ``get_slice``, ``get_tensors``, ``get_raw``.
    """

    def __init__(
        self,
        path: _args.FilePath,
        device: _args.Device = "cpu",
        *,
        backend: str = "mmap",
        dtype: Optional[torch.dtype] = None,
        populate: bool = False,
        staging_bytes: Optional[int] = None,
        cast_fp8: bool = False,
        device_budget: Optional[int] = None,
        host_budget: Optional[int] = None,
    ) -> None:
        self._file = None
        name = _args.path(path)
        options = _args.load_options(backend, device, dtype, populate, name, staging_bytes,
                                     cast_fp8, device_budget, host_budget)
        self._file = _C.Checkpoint(name, options)

    def stream_plan(self) -> List[Any]:
        """The batches ``iter_tensors`` loads, in order: ``StreamBatch`` objects with ``names``
        and ``memory`` (a ``MemoryEstimate``). With budgets each fits them; a tensor that fits no
        batch raises ``MemoryBudgetError`` here, as ``iter_tensors`` does before reading."""
        return self._handle().stream_plan()

    def iter_tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for every tensor in file order (shard by shard), each as soon as it
        has landed: to a device, later tensors are copied while the caller works on earlier ones.
        The load runs on a helper thread, at most two tensors ahead of the caller. With memory
        budgets it goes in the batches of ``stream_plan()``, each within them (a budget bounds a
        batch, not the tensors the caller keeps)."""
        handle = self._handle()
        ready: "queue.Queue[Any]" = queue.Queue(maxsize=2)
        stop = threading.Event()
        done = object()

        def consume(name: str, tensor: torch.Tensor) -> None:
            while not stop.is_set():
                try:
                    ready.put((name, tensor), timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise _Stopped()

        def run() -> None:
            try:
                handle.for_each(consume)
                ready.put(done)
            except _Stopped:
                pass
            except BaseException as error:  # handed to the caller's thread
                ready.put(error)

        worker = threading.Thread(target=run, name="torch_safetensors.iter_tensors", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    def keys(self) -> List[str]:
        """Tensor names, shard by shard (each shard's in the index's order)."""
        return self._handle().keys()

    def offset_keys(self) -> List[str]:
        return self._handle().keys()

    @property
    def shard_files(self) -> List[str]:
        """The shard files, relative to the checkpoint's directory, sorted."""
        return self._handle().shard_files

    @property
    def index_path(self) -> Optional[str]:
        """The index file, or None for a single file."""
        return self._handle().index_path

    def shard_file(self, name: str) -> str:
        """The shard holding tensor ``name``."""
        _args.check_name(name)
        return self._handle().shard_file(name)
