"""huggingface_hub's torch helpers (``huggingface_hub.serialization``, 2.4), on the C++ core.

Switch by changing an import::

    # from huggingface_hub import save_torch_model, load_torch_model
    from torch_safetensors.hub import save_torch_model, load_torch_model

The same names, arguments, defaults, file names, shard split and index; shard files are
byte-identical. The split, the tie policy and the index are the C++ core's (checkpoint.h:
``plan_shards``, ``save_sharded``, ``Checkpoint``); this module adapts arguments and raises the
errors huggingface_hub raises. Differences: pickle files are never unpickled (``safe=False`` still
loads only safetensors; convert pickles with ``torch-safetensors convert``); a save writes every
file before any old one is replaced; and loading does not report tied names the save dropped as
missing (huggingface_hub's own ``load_torch_model(strict=True)`` fails on the tied models its
``save_torch_model`` writes).
"""

from __future__ import annotations

import os
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Union

import torch

from . import _args
from ._errors import save_error, size_mismatch_error
from ._extension import _C
from ._model import _remove_duplicate_names
from ._save import SaveReport
from .distributed import _dtensor

SAFETENSORS_WEIGHTS_FILE_PATTERN = _args.SAFETENSORS_WEIGHTS_FILE_PATTERN
MAX_SHARD_SIZE = _args.MAX_SHARD_SIZE
_max_bytes = _args.max_shard_bytes
_NEVER_UNPICKLED = (
    "torch_safetensors never unpickles checkpoints (pickles can run code when loaded); convert it "
    "once with `torch-safetensors convert IN OUT`"
)


@dataclass
class StateDictSplit:
    """huggingface_hub's ``StateDictSplit``: which tensors go to which file."""

    is_sharded: bool = field(init=False)
    metadata: Dict[str, Any]
    filename_to_tensors: Dict[str, List[str]]
    tensor_to_filename: Dict[str, str]

    def __post_init__(self) -> None:
        self.is_sharded = len(self.filename_to_tensors) > 1


class _IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


def _tensor_items(state_dict: Dict[str, torch.Tensor]) -> List[Any]:
    items = []
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"Key `{name}` is invalid, expected torch.Tensor but received {type(value)}")
        items.append((name, value))
    return items


def split_torch_state_dict_into_shards(
    state_dict: Dict[str, torch.Tensor],
    *,
    filename_pattern: str = SAFETENSORS_WEIGHTS_FILE_PATTERN,
    max_shard_size: Union[int, str] = MAX_SHARD_SIZE,
) -> StateDictSplit:
    """Splits a state dict in shards of at most ``max_shard_size`` (in the order of its keys; a
    larger tensor gets a shard of its own; tensors sharing a storage go with the first)."""
    files, total_size = _C.plan_shards(
        _tensor_items(state_dict), _max_bytes(max_shard_size), filename_pattern
    )
    filename_to_tensors = {file: list(names) for file, names in files}
    return StateDictSplit(
        metadata={"total_size": total_size},
        filename_to_tensors=filename_to_tensors,
        tensor_to_filename={n: f for f, names in filename_to_tensors.items() for n in names},
    )


def save_torch_state_dict(
    state_dict: Dict[str, torch.Tensor],
    save_directory: Union[str, Path],
    *,
    filename_pattern: Optional[str] = None,
    force_contiguous: bool = True,
    max_shard_size: Union[int, str] = MAX_SHARD_SIZE,
    metadata: Optional[Dict[str, str]] = None,
    safe_serialization: bool = True,
    is_main_process: bool = True,
    shared_tensors_to_discard: Optional[List[str]] = None,
    durable: bool = False,
    threads: Optional[int] = None,
) -> SaveReport:
    """Saves a state dict as safetensors, sharded when larger than ``max_shard_size``.

    Tensors sharing memory (tied weights) are stored once (the kept name covers the storage; names
    in ``shared_tensors_to_discard`` are dropped first), each dropped name recorded in the metadata
    as ``dropped → kept``. A single file carries ``{"format": "pt", **metadata}``; shards carry
    ``{"format": "pt"}`` and the index ``{"total_size": ..., **metadata}``. Files of an earlier
    save with the same pattern are removed when ``is_main_process``. ``durable`` (ours): every file
    and the directory are fsync'ed before the call returns (off by default, as huggingface_hub).
    ``threads`` (ours): how many shard files are written at once (default: up to 8, as this
    machine has cores); the files are the same whatever it is. Returns (ours; huggingface_hub's
    returns None) a :class:`~torch_safetensors.SaveReport`: the files, the bytes written, the
    seconds and so the save's ``gb_per_s``.
    """
    if not safe_serialization:
        raise ValueError("safe_serialization=False writes pickles; " + _NEVER_UNPICKLED.split(";")[0])
    items = _tensor_items(state_dict)
    # The core refuses the same; this raises huggingface_hub's RuntimeError and text.
    _remove_duplicate_names(state_dict, discard_names=shared_tensors_to_discard)
    if not force_contiguous:
        for name, tensor in items:
            if not tensor.is_contiguous():
                raise save_error("non_contiguous", [[name]], state_dict)
    report = _C.save_sharded(
        items,
        os.fsdecode(os.fspath(save_directory)),
        _max_bytes(max_shard_size),
        SAFETENSORS_WEIGHTS_FILE_PATTERN if filename_pattern is None else filename_pattern,
        metadata,
        set(shared_tensors_to_discard or ()),
        is_main_process,
        bool(durable),
        int(threads or 0),
    )
    return SaveReport.of(report)


def save_torch_model(
    model: torch.nn.Module,
    save_directory: Union[str, Path],
    *,
    filename_pattern: Optional[str] = None,
    force_contiguous: bool = True,
    max_shard_size: Union[int, str] = MAX_SHARD_SIZE,
    metadata: Optional[Dict[str, str]] = None,
    safe_serialization: bool = True,
    is_main_process: bool = True,
    shared_tensors_to_discard: Optional[List[str]] = None,
    durable: bool = False,
    threads: Optional[int] = None,
) -> SaveReport:
    """``save_torch_state_dict(model.state_dict(), ...)``."""
    return save_torch_state_dict(
        model.state_dict(),
        save_directory,
        filename_pattern=filename_pattern,
        force_contiguous=force_contiguous,
        max_shard_size=max_shard_size,
        metadata=metadata,
        safe_serialization=safe_serialization,
        is_main_process=is_main_process,
        shared_tensors_to_discard=shared_tensors_to_discard,
        durable=durable,
        threads=threads,
    )


def _map_location(map_location: Any) -> str:
    if map_location is None:
        return "cpu"
    device = str(map_location.type) if hasattr(map_location, "type") else str(map_location)
    return "cpu" if device == "meta" else device


def _not_safetensors(path: Path, error: Exception) -> ValueError:
    return ValueError(f"Cannot load '{path}' as safetensors ({error}). {_NEVER_UNPICKLED}.")


def _open_file(path: Path, map_location: Any) -> Any:
    """The file opened (a ``_C.File``, tensors on ``map_location``), after huggingface_hub's
    checks; a file that is not safetensors (a pickle) is refused with ValueError."""
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint file found at '{path}'. Please verify the path is correct and "
            "the file has been properly downloaded."
        )
    try:
        name = _args.path(path)
        handle = _C.File(name, _args.load_options("mmap", _map_location(map_location), None,
                                                  None, name))
        metadata = handle.metadata()
    except OSError:
        raise
    except Exception as error:
        raise _not_safetensors(path, error) from error
    if metadata is not None and metadata.get("format") not in ["pt", "mlx"]:
        raise OSError(
            f"The safetensors archive passed at {path} does not contain the valid "
            "metadata. Make sure you save your model with the `save_torch_model` method."
        )
    return handle


def load_state_dict_from_file(
    checkpoint_file: Union[str, os.PathLike],
    map_location: Optional[Union[str, torch.device]] = None,
    weights_only: bool = True,
    mmap: bool = False,
    *,
    safe: bool = True,
) -> Dict[str, torch.Tensor]:
    """Loads a safetensors file (tensors on ``map_location``, default CPU). A file that is not
    safetensors (a pickle) is refused with ValueError; it is never unpickled."""
    path = Path(checkpoint_file)
    handle = _open_file(path, map_location)
    try:
        return handle.tensors()
    except OSError:
        raise
    except Exception as error:
        raise _not_safetensors(path, error) from error


def _load_into(model: torch.nn.Module, checkpoint: Any, strict: bool) -> Any:
    """The C++ module-load report (``_C.ModuleLoad``: names, ties, sizes) decides what is missing
    and unexpected — a tied name the save dropped is not missing, the reference's ``load_model``
    rule, so tied models load with ``strict=True`` — and refuses, before anything changes, what
    cannot load; then ``model.load_state_dict`` loads the tensors, so its hooks run."""
    targets = [(k, v) for k, v in model.state_dict(keep_vars=True).items()
               if isinstance(v, torch.Tensor)]
    plan = _C.ModuleLoad(targets, checkpoint)
    if plan.mismatched:
        raise size_mismatch_error(model, plan.mismatched)
    unexpected = list(plan.unexpected) + [dropped for dropped, _ in plan.tied_conflicts]
    result = _load_into_result(model, plan.missing, unexpected, strict)
    model.load_state_dict(checkpoint.tensors(), strict=False)
    return result


def _load_into_result(model: torch.nn.Module, missing: Iterable[str], unexpected: Iterable[str],
                      strict: bool) -> Any:
    """huggingface_hub's result, or its error when ``strict`` and keys do not match."""
    missing, unexpected = set(missing), set(unexpected)
    if strict and (missing or unexpected):
        message = f"Error(s) in loading state_dict for {model.__class__.__name__}"
        if missing:
            message += "\nMissing key(s): " + ",".join(f'"{k}"' for k in sorted(missing)) + "."
        if unexpected:
            message += "\nUnexpected key(s): " + ",".join(f'"{k}"' for k in sorted(unexpected)) + "."
        raise RuntimeError(message)
    return _IncompatibleKeys(missing_keys=list(missing), unexpected_keys=list(unexpected))


def load_torch_model(
    model: torch.nn.Module,
    checkpoint_path: Union[str, os.PathLike],
    *,
    strict: bool = False,
    safe: bool = True,
    weights_only: bool = True,
    map_location: Optional[Union[str, torch.device]] = None,
    mmap: bool = False,
    filename_pattern: Optional[str] = None,
) -> NamedTuple:
    """Loads a file, or a directory holding an index and its shards or one file, into ``model``
    with ``model.load_state_dict`` (so its hooks run). Returns ``(missing_keys,
    unexpected_keys)``; with ``strict``, either being non-empty raises RuntimeError (worded as
    huggingface_hub's). Unlike huggingface_hub, a tied name the save dropped (``lm_head.weight``
    tied to ``embed.weight``) is not missing, so tied models load with ``strict=True``.

    A sharded checkpoint is opened as one ``Checkpoint``: the index is checked (shards exist,
    stay inside the directory, hold exactly what the index lists) and tensors come zero-copy from
    one mapping per shard.
    """
    path = Path(checkpoint_path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint path {path} does not exist")
    if _dtensor.has_dtensors(model) and (path.is_file() or filename_pattern is None):
        # parallelize_module's DTensors: each rank reads only its local shards.
        missing, unexpected = _dtensor.load_dtensors(model, path, strict=False)
        return _load_into_result(model, missing, unexpected, strict)
    if path.is_file():
        return _load_into(model, _open_file(path, map_location), strict)
    if filename_pattern is None:
        filename_pattern = SAFETENSORS_WEIGHTS_FILE_PATTERN
    elif not filename_pattern.format(suffix="").lower().endswith(".safetensors"):
        raise ValueError(
            f"`filename_pattern={filename_pattern!r}` does not describe safetensors files. "
            + _NEVER_UNPICKLED + "."
        )
    index_path = path / (filename_pattern.format(suffix="") + ".index.json")
    if index_path.is_file():
        name = _args.path(index_path)
        options = _args.load_options("mmap", _map_location(map_location), None, None, name)
        return _load_into(model, _C.Checkpoint(name, options), strict)
    model_files = list(path.glob("*.safetensors"))
    if len(model_files) == 1:
        return _load_into(model, _open_file(model_files[0], map_location), strict)
    raise ValueError(
        f"Directory '{path}' does not contain a valid checkpoint. "
        "Expected either a sharded checkpoint with an index file, or a single model file."
    )
