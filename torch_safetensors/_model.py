"""Models and shared tensors: ``save_model`` / ``load_model`` and the reference's helpers for
tensors that share memory (``_find_shared_tensors``, ``_remove_duplicate_names``, ...).

Which tensors share memory, which name of a tied group is kept, and loading a file into a model
(``set_`` zero-copy where it can, ``copy_`` elsewhere, nothing changed when it fails) are the C++
core's (adapters/shared_memory.h, module.h); this module keeps the reference's functions, return
values and errors around them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import torch

from . import _args
from ._errors import checked_report, no_kept_name_error
from ._extension import _C
from ._save import save_file
from .distributed import _dtensor


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


def _end_ptr(tensor: torch.Tensor) -> int:
    """One past the last byte the tensor's elements span (``data_ptr()`` when it has none)."""
    return _C.end_ptr(tensor)


def _is_complete(tensor: torch.Tensor) -> bool:
    """Whether the tensor's elements are exactly its whole storage."""
    return _C.covers_storage(tensor)


def _tensor_items(state_dict: Dict[str, Any]) -> List[Tuple[str, torch.Tensor]]:
    return [(name, value) for name, value in state_dict.items() if isinstance(value, torch.Tensor)]


def _find_shared_tensors(state_dict: Dict[str, torch.Tensor]) -> List[Set[str]]:
    """Groups of names whose tensors share memory, one per name that shares nothing, in the
    reference's order (by first appearance of their storage, then by address)."""
    return [set(names) for names in _C.memory_groups(_tensor_items(state_dict))]


def _remove_duplicate_names(
    state_dict: Dict[str, torch.Tensor],
    *,
    preferred_names: Optional[Iterable[str]] = None,
    discard_names: Optional[Iterable[str]] = None,
) -> Dict[str, List[str]]:
    """For each group of shared tensors: the name to keep → the names to drop.

    The kept name covers the whole storage; among candidates, ``preferred_names`` win, then names
    not in ``discard_names``, then the first in sorted order (the reference's rules). RuntimeError
    when no name of a group covers its whole storage.
    """
    preferred = set(preferred_names or ())
    discard = set(discard_names or ())
    to_remove: Dict[str, List[str]] = defaultdict(list)
    for names, keep in _C.kept_names(_tensor_items(state_dict), preferred, discard):
        if keep is None:
            raise no_kept_name_error(names)
        for name in names:
            if name != keep:
                to_remove[keep].append(name)
    return to_remove


def save_model(
    model: torch.nn.Module,
    filename: _args.FilePath,
    metadata: Optional[Dict[str, str]] = None,
    force_contiguous: bool = True,
) -> None:
    """Saves a model's state dict, storing tensors that share memory (tied weights) once.

    ``model`` may be a ``torch.jit.ScriptModule`` (its state dict: parameters and buffers by
    dotted name); C++ loads the file into a ``torch::jit::load``'ed module with the same names.

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
    filename: _args.FilePath,
    strict: bool = True,
    device: _args.Device = "cpu",
    *,
    backend: str = "mmap",
) -> Tuple[Set[str], List[str]]:
    """Loads a file saved by ``save_model`` (or ``save_file``) into a model, a
    ``torch.jit.ScriptModule`` included (its parameters keep their identity, so the scripted
    code sees the loaded values).

    Returns ``(missing, unexpected)`` like the reference: names of the model that the file did
    not provide (a set) and names of the file the model does not use (a list). With ``strict``
    either being non-empty raises RuntimeError; a shape mismatch always does. Nothing is changed
    when it raises.

    Each tensor goes straight to its parameter or buffer: on the CPU, one of the file's dtype takes
    the loaded memory (``set_``: zero-copy with the mmap backend; it keeps its identity and
    ``requires_grad``, trains normally, and writes never reach the file); any other is filled with
    ``copy_`` and keeps its device and dtype. Tied tensors stay tied. ``device`` is checked like
    the reference's, which loads the file there first; here no tensor needs to go anywhere else.

    A model whose parameters are DTensors (``parallelize_module``) loads shard-on-read: each rank
    reads only its local shards (``torch_safetensors.distributed.load_dtensors``).
    """
    path = _args.path(filename)
    _args.device(device, path)  # the reference loads there first: the same check, no copy here
    if _dtensor.has_dtensors(model):  # parallelize_module's DTensors: shard-on-read
        return _dtensor.load_dtensors(model, filename, strict, backend=backend)
    options = _C.ModuleLoadOptions(backend=_args.backend(backend), strict=strict)
    plan = _C.ModuleLoad(_tensor_items(model.state_dict(keep_vars=True)), path, options)
    missing, unexpected = checked_report(model, plan, options.strict)
    plan.apply()
    return missing, unexpected
