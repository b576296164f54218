"""torch_safetensors: the safetensors format for PyTorch, on a C++ (LibTorch) core.

A drop-in for ``safetensors.torch`` 0.8: the same functions, arguments, return types and error
kinds, and byte-identical files::

    from torch_safetensors import load_file, save_file, safe_open

    save_file({"w": torch.zeros(2, 3)}, "model.safetensors", metadata={"format": "pt"})
    tensors = load_file("model.safetensors")           # zero-copy views of the mapped file
    with safe_open("model.safetensors", framework="pt") as f:
        row = f.get_slice("w")[1]

Every byte is parsed, validated and written by the C++ core (``torch_safetensors._C``); this
module adapts Python types and errors, and keeps the reference's shared-tensor bookkeeping for
``torch.nn.Module`` state dicts (``save_model`` / ``load_model``).

Beyond the reference: ``safe_open.get_raw`` and ``RawTensor`` read and write tensors as their
stored bytes (the way to round-trip F6_E2M3 / F6_E3M2, which torch cannot express; they also
load as uint8 bytes), ``device`` also takes a ``torch.device``, and ``load`` accepts every dtype
``load_file`` does.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from collections import defaultdict
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple, Union

import torch

__version__ = "0.1.0"

__all__ = [
    "RawTensor",
    "SafetensorError",
    "SafeSlice",
    "load",
    "load_file",
    "load_model",
    "safe_open",
    "save",
    "save_file",
    "save_model",
    "storage_ptr",
    "storage_size",
]


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
            folder = os.path.join(entry or os.getcwd(), __name__)
            if os.path.abspath(folder) == here:
                continue
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                candidate = os.path.join(folder, "_C" + suffix)
                if os.path.isfile(candidate):
                    spec = importlib.util.spec_from_file_location(__name__ + "._C", candidate)
                    assert spec is not None and spec.loader is not None
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    sys.modules[__name__ + "._C"] = module
                    return module
        raise ImportError(
            "torch_safetensors: the C++ extension torch_safetensors._C is not built; install the "
            "package with `pip install --no-build-isolation .` (or `-e .` in a checkout)"
        ) from error


_C = _import_extension()

#: Raised for invalid files and invalid save requests; the message names the file, the tensor
#: and what is wrong. Where ``safetensors`` raises a built-in exception instead (missing file,
#: non-contiguous tensor, shared tensors, wrong argument types, ...), the same type is raised.
SafetensorError = _C.SafetensorError

_FLOAT4 = getattr(torch, "float4_e2m1fn_x2", None)

FilePath = Union[str, "os.PathLike[str]"]
Device = Union[str, int, torch.device]


class _UnsupportedDtypeError(SafetensorError, KeyError):  # type: ignore[misc, valid-type]
    # The reference fails on such dtypes with a KeyError from its dtype table; being both lets
    # either `except` clause catch it.
    def __str__(self) -> str:
        return Exception.__str__(self)


class RawTensor(NamedTuple):
    """A tensor as stored: its spec dtype name, logical (header) shape and exact bytes.

    ``data`` is a 1-D ``torch.uint8`` tensor. Pass a ``RawTensor`` as a value to ``save`` or
    ``save_file`` to write the bytes unchanged (the size is checked against dtype and shape).
    """

    dtype: str
    shape: List[int]
    data: torch.Tensor


# ---------------------------------------------------------------- argument adaptation

_TORCH_FRAMEWORKS = ("pt", "torch", "pytorch")
_OTHER_FRAMEWORKS = ("np", "numpy", "tf", "tensorflow", "jax", "flax", "mlx", "paddle")
_BACKENDS = ("mmap", "pread")
# Device types the reference accepts by name; plain "cuda" etc. mean index 0.
_INDEXED_DEVICES = ("cuda", "musa", "npu", "xpu", "xla", "mlu", "hpu")


def _not_instance(argument: str, value: object, expected: str) -> TypeError:
    return TypeError(
        f"argument '{argument}': '{type(value).__name__}' object is not an instance of '{expected}'"
    )


def _path(filename: FilePath) -> bytes:
    path = os.fspath(filename)  # TypeError for non-paths, as in the reference
    if not isinstance(path, str):
        raise _not_instance("filename", path, "str")
    return os.fsencode(path)  # bytes: keeps non-UTF-8 names intact on their way to C++


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise _not_instance("name", name, "str")


def _check_framework(framework: object) -> None:
    if not isinstance(framework, str):
        raise _not_instance("framework", framework, "str")
    if framework in _OTHER_FRAMEWORKS:
        raise SafetensorError(
            f"framework {framework} is not supported by torch_safetensors (use pt)"
        )
    if framework not in _TORCH_FRAMEWORKS:
        raise SafetensorError(f"framework {framework} is invalid")


def _check_backend(backend: object) -> str:
    if not isinstance(backend, str):
        raise _not_instance("backend", backend, "str")
    if backend not in _BACKENDS:
        raise SafetensorError(f'backend "{backend}" is invalid (expected one of: "mmap", "pread")')
    return backend


def _parse_index(device: str, text: str) -> int:
    if not re.fullmatch(r"\+?[0-9]+", text):
        raise ValueError(f"device {device}: invalid digit found in string")
    return int(text)


def _available(device: torch.device) -> torch.device:
    # Fail at open with a clear message rather than at the first copy (RuntimeError, like the
    # reference's failure in that case).
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device}: CUDA is not available (torch.cuda.is_available() is false)"
        )
    return device


def _device(device: object) -> torch.device:
    """The reference's device rules: names, "name:index" and ints; anything else is invalid."""
    if isinstance(device, torch.device):
        return _available(device)
    if isinstance(device, str):
        if device == "cpu":
            return torch.device("cpu")
        if device == "mps":
            return torch.device("mps")
        if device in _INDEXED_DEVICES:
            return _available(torch.device(device, 0))
        kind, _, index = device.partition(":")
        if (kind in _INDEXED_DEVICES or kind == "mps") and device.count(":") == 1:
            number = _parse_index(device, index)
            if kind == "mps":
                if number != 0:
                    raise SafetensorError(
                        f"device {device} is invalid: only mps or mps:0 is supported"
                    )
                return torch.device("mps")
            return _available(torch.device(kind, number))
        raise SafetensorError(f"device {device} is invalid")
    if isinstance(device, int):
        if device < 0:
            raise SafetensorError(f"device {device} is invalid")
        return torch.device(device)  # the current accelerator; RuntimeError when there is none
    raise SafetensorError(f"device {device!r} is invalid")


def _open(filename: FilePath, device: object, backend: object) -> Any:
    path = _path(filename)
    options = (_check_backend(backend), _device(device))
    try:
        return _C.File(path, *options)
    except SafetensorError as error:
        os_error = _os_error(path)
        if os_error is None:
            raise
        raise os_error from error  # the C++ message stays attached as the cause


def _os_error(path: bytes) -> Optional[OSError]:
    """The OSError a failed open deserves (missing file, directory, no permission), if any."""
    name = os.fsdecode(path)
    try:
        info = os.stat(path)
    except OSError as os_error:
        return type(os_error)(os_error.errno, os.strerror(os_error.errno or 0), name)
    if stat.S_ISDIR(info.st_mode):
        return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    if not os.access(path, os.R_OK):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    return None


# ---------------------------------------------------------------- reading


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

    Use it as a context manager; after the ``with`` block the handle is closed (tensors and
    slices obtained from it stay valid).
    """

    def __init__(
        self,
        filename: FilePath,
        framework: str = "pt",
        device: Device = "cpu",
        *,
        backend: str = "mmap",
    ) -> None:
        self._file: Any = None
        _check_framework(framework)
        self._file = _open(filename, device, backend)

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
        _check_name(name)
        return self._handle().tensor(name)

    def get_tensors(self) -> Dict[str, torch.Tensor]:
        """Every tensor, keyed by name, in file order."""
        return self._handle().tensors()

    def get_slice(self, name: str) -> SafeSlice:
        """A lazy view of tensor ``name`` to index into (see ``SafeSlice``)."""
        _check_name(name)
        return SafeSlice(self._handle(), name)

    def get_raw(self, name: str) -> RawTensor:
        """Tensor ``name`` as stored: spec dtype, header shape and bytes (1-D uint8)."""
        _check_name(name)
        dtype, shape, data = self._handle().raw(name)
        return RawTensor(dtype, list(shape), data)


def load_file(
    filename: FilePath, device: Device = "cpu", *, backend: str = "mmap"
) -> Dict[str, torch.Tensor]:
    """Loads every tensor of a safetensors file, keyed by name, in file order.

    On the CPU with the mmap backend the tensors are zero-copy views of one private mapping of
    the file: writable, and writing to them never changes the file.
    """
    with safe_open(filename, framework="pt", device=device, backend=backend) as f:
        return f.get_tensors()


def load(data: bytes) -> Dict[str, torch.Tensor]:
    """Loads tensors from the bytes of a safetensors file (copies; nothing refers to ``data``)."""
    if not isinstance(data, bytes):
        raise _not_instance("bytes", data, "bytes")
    return _C.load_bytes(data)


# ---------------------------------------------------------------- writing


def storage_ptr(tensor: torch.Tensor) -> int:
    """Address of the tensor's storage; 0 when it has none (meta tensors)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (NotImplementedError, RuntimeError):
        return 0


def storage_size(tensor: torch.Tensor) -> int:
    """Size of the tensor's storage in bytes."""
    try:
        return tensor.untyped_storage().nbytes()
    except (NotImplementedError, RuntimeError):
        return tensor.nelement() * tensor.element_size()


def _byte_range(tensor: torch.Tensor) -> Tuple[int, int]:
    start = tensor.data_ptr()
    if tensor.nelement() == 0:
        return start, start
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return start, start + (last + 1) * tensor.element_size()


def _split_disjoint(group: Set[str], state_dict: Dict[str, torch.Tensor]) -> List[Set[str]]:
    # Names on one storage whose bytes do not overlap are not shared after all.
    if len(group) < 2:
        return [group]
    spans = sorted((*_byte_range(state_dict[name]), name) for name in group)
    parts: List[Set[str]] = []
    end = None
    for start, stop, name in spans:
        if end is None or start >= end:
            parts.append({name})
            end = stop
        else:
            parts[-1].add(name)
            end = max(end, stop)
    return parts


def _find_shared_tensors(state_dict: Dict[str, torch.Tensor]) -> List[Set[str]]:
    """Groups of names whose tensors share memory (one group per name when nothing is shared)."""
    by_storage: Dict[Tuple[torch.device, int, int], Set[str]] = defaultdict(set)
    for name, tensor in state_dict.items():
        if tensor.device.type == "meta":
            continue
        ptr, size = storage_ptr(tensor), storage_size(tensor)
        if ptr != 0 and size != 0:
            by_storage[(tensor.device, ptr, size)].add(name)
    groups: List[Set[str]] = []
    for group in sorted(by_storage.values(), key=sorted):
        groups.extend(_split_disjoint(group, state_dict))
    return groups


def _is_complete(tensor: torch.Tensor) -> bool:
    return (
        tensor.data_ptr() == storage_ptr(tensor)
        and tensor.nelement() * tensor.element_size() == storage_size(tensor)
    )


def _remove_duplicate_names(
    state_dict: Dict[str, torch.Tensor],
    *,
    preferred_names: Optional[Iterable[str]] = None,
    discard_names: Optional[Iterable[str]] = None,
) -> Dict[str, List[str]]:
    """For each group of shared tensors: the name to keep → the names to drop.

    The kept name covers the whole storage; among candidates, ``preferred_names`` win, then names
    not in ``discard_names``, then the first in sorted order (the reference's rules).
    """
    preferred = set(preferred_names or ())
    discard = set(discard_names or ())
    to_remove: Dict[str, List[str]] = defaultdict(list)
    for shared in _find_shared_tensors(state_dict):
        complete = {name for name in shared if _is_complete(state_dict[name])}
        if not complete:
            raise RuntimeError(
                "Error while trying to find names to remove to save state dict, but found no "
                f"suitable name to keep for saving amongst: {shared}. None is covering the entire "
                "storage. Refusing to save/load the model since you could be storing much more "
                "memory than needed. Please refer to "
                "https://huggingface.co/docs/safetensors/torch_shared_tensors for more information."
            )
        candidates = complete
        if complete - discard:
            candidates = complete - discard
        if preferred & complete:
            candidates = preferred & complete
        keep = min(candidates)
        for name in sorted(shared):
            if name != keep:
                to_remove[keep].append(name)
    return to_remove


def _items_for_save(tensors: Dict[str, torch.Tensor]) -> List[Tuple[str, Any]]:
    """Checks a state dict the way the reference does, in its order, raising its error kinds."""
    if not isinstance(tensors, dict):
        raise ValueError(f"Expected a dict of [str, torch.Tensor] but received {type(tensors)}")
    dense: Dict[str, torch.Tensor] = {}
    sparse = []
    for name, value in tensors.items():
        if isinstance(value, RawTensor):
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"Key `{name}` is invalid, expected torch.Tensor but received {type(value)}"
            )
        if value.layout != torch.strided:
            sparse.append(name)
        dense[name] = value
    if sparse:
        raise ValueError(
            f"You are trying to save a sparse tensors: `{sparse}` which this library does not "
            "support. You can make it a dense tensor before saving with `.to_dense()` but be "
            "aware this might make a much larger file than needed."
        )
    failing = [names for names in _find_shared_tensors(dense) if len(names) > 1]
    if failing:
        raise RuntimeError(
            f"Some tensors share memory, this will lead to duplicate memory on disk and potential "
            f"differences when loading them again: {failing}. A potential way to correctly save "
            "your model is to use `save_model`. More information at "
            "https://huggingface.co/docs/safetensors/torch_shared_tensors"
        )
    for name, value in dense.items():
        if value.device.type == "meta":
            raise NotImplementedError(f"tensor `{name}` is a meta tensor and has no data to save")
        if value.dtype == _FLOAT4 and value.dim() == 0:
            raise SafetensorError(
                f"tensor `{name}`: a 0-d float4_e2m1fn_x2 tensor cannot be saved (its header shape "
                "needs a last dimension for the two packed values); reshape it to [1]"
            )
        if not value.is_contiguous():
            raise ValueError(
                f"You are trying to save a non contiguous tensor: `{name}` which is not allowed. "
                "It either means you are trying to save tensors which are reference of each other "
                "in which case it's recommended to save only the full tensors, and reslice at "
                "load time, or simply call `.contiguous()` on your tensor to pack it before saving."
            )
        if _C.spec_dtype(value.dtype) is None:
            raise _UnsupportedDtypeError(
                f"tensor `{name}` has dtype {value.dtype}, which the safetensors format cannot "
                "store"
            )
    return list(tensors.items())


def save(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """Serializes tensors (contiguous, dense, not sharing memory) to safetensors bytes.

    ``metadata`` (str → str) is written as ``__metadata__``; ``{}`` writes an empty one and
    None none, exactly as ``safetensors.torch.save`` does. Tensors on other devices are copied
    to the CPU one at a time.
    """
    return _C.save_bytes(_items_for_save(tensors), metadata)


def save_file(
    tensors: Dict[str, torch.Tensor],
    filename: FilePath,
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Writes tensors to ``filename`` in safetensors format (same rules as ``save``).

    The file is written to a temporary file beside it and renamed into place: a failed save
    leaves any previous file untouched, and tensors still mapped from the old file keep their
    contents.
    """
    items = _items_for_save(tensors)
    _C.save_file(items, _path(filename), metadata)


def save_model(
    model: torch.nn.Module,
    filename: FilePath,
    metadata: Optional[Dict[str, str]] = None,
    force_contiguous: bool = True,
) -> None:
    """Saves a model's state dict, storing tensors that share memory (tied weights) once.

    Each dropped name is recorded in the metadata as ``dropped → kept`` (unless ``metadata``
    already has that key); ``load_model`` restores the ties.
    """
    state_dict = model.state_dict()
    metadata = None if metadata is None else dict(metadata)
    for kept, dropped in _remove_duplicate_names(state_dict).items():
        for name in dropped:
            if metadata is None:
                metadata = {}
            metadata.setdefault(name, kept)
            del state_dict[name]
    if force_contiguous:
        state_dict = {name: tensor.contiguous() for name, tensor in state_dict.items()}
    try:
        save_file(state_dict, filename, metadata=metadata)
    except ValueError as error:
        raise ValueError(
            f"{error} Or use save_model(..., force_contiguous=True), read the docs for potential "
            "caveats."
        ) from error


def load_model(
    model: torch.nn.Module,
    filename: FilePath,
    strict: bool = True,
    device: Device = "cpu",
    *,
    backend: str = "mmap",
) -> Tuple[Set[str], List[str]]:
    """Loads a file saved by ``save_model`` (or ``save_file``) into a model.

    Returns ``(missing, unexpected)`` like the reference: names of the model that the file did
    not provide (a set) and names of the file the model does not have (a list). With ``strict``
    either being non-empty raises RuntimeError.
    """
    state_dict = load_file(filename, device=device, backend=backend)
    to_removes = _remove_duplicate_names(model.state_dict(), preferred_names=state_dict.keys())
    result = model.load_state_dict(state_dict, strict=False)
    missing, unexpected = set(result.missing_keys), list(result.unexpected_keys)
    for dropped in to_removes.values():
        for name in dropped:
            if name in missing:
                missing.remove(name)  # tied to a tensor the file did provide
            else:
                unexpected.append(name)
    if strict and (missing or unexpected):
        error = f"Error(s) in loading state_dict for {model.__class__.__name__}:"
        if missing:
            names = ", ".join(f'"{name}"' for name in sorted(missing))
            error += f"\n    Missing key(s) in state_dict: {names}"
        if unexpected:
            names = ", ".join(f'"{name}"' for name in sorted(unexpected))
            error += f"\n    Unexpected key(s) in state_dict: {names}"
        raise RuntimeError(error)
    return missing, unexpected
