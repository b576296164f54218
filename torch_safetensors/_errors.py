"""The reference's exception types and message texts for the problems the C++ core finds.

The core decides what is wrong (``_C.save_problem``, ``_C.kept_names``, ``_C.ModuleLoad``); this
module only words it the way ``safetensors.torch`` 0.8 does
(bindings/python/py_src/safetensors/torch.py), so that code catching or matching the reference's
errors keeps working. Failures of the operating system need nothing here: the binding raises
Python's ``OSError`` for them, with the errno the core kept (``FileNotFoundError`` & co).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple

import torch

from ._extension import _C

#: Raised for invalid files and invalid save requests; the message names the file, the tensor
#: and what is wrong. Where ``safetensors`` raises a built-in exception instead (missing file,
#: non-contiguous tensor, shared tensors, wrong argument types, ...), the same type is raised.
SafetensorError = _C.SafetensorError

#: A load that does not fit its memory budget (``device_budget``, ``host_budget``), raised when
#: it is planned, before anything is allocated or read: a ``SafetensorError`` and a
#: ``MemoryError``, with ``memory`` ("device" or "host"), ``needed``, ``budget``, ``shortfall``,
#: ``largest`` and ``largest_bytes``.
MemoryBudgetError = _C.MemoryBudgetError

_SHARED_TENSORS_DOC = "https://huggingface.co/docs/safetensors/torch_shared_tensors"


class _UnsupportedDtypeError(SafetensorError, KeyError):  # type: ignore[misc, valid-type]
    # The reference fails on such dtypes with a KeyError from its dtype table; being both lets
    # either `except` clause catch it.
    def __str__(self) -> str:
        return Exception.__str__(self)


def not_instance(argument: str, value: object, expected: str) -> TypeError:
    """The reference's TypeError for an argument of the wrong type."""
    return TypeError(
        f"argument '{argument}': '{type(value).__name__}' object is not an instance of '{expected}'"
    )


def save_error(
    kind: str, names: List[List[str]], tensors: Dict[str, torch.Tensor]
) -> Exception:
    """The reference's exception for a save problem the core found (``_C.save_problem``)."""
    first = names[0][0]
    if kind == "sparse":
        return ValueError(
            f"You are trying to save a sparse tensors: `{names[0]}` which this library does not "
            "support. You can make it a dense tensor before saving with `.to_dense()` but be "
            "aware this might make a much larger file than needed."
        )
    if kind == "shared_memory":
        failing = [set(group) for group in names]
        return RuntimeError(
            f"Some tensors share memory, this will lead to duplicate memory on disk and potential "
            f"differences when loading them again: {failing}. A potential way to correctly save "
            f"your model is to use `save_model`. More information at {_SHARED_TENSORS_DOC}"
        )
    if kind == "non_contiguous":
        return ValueError(
            f"You are trying to save a non contiguous tensor: `{first}` which is not allowed. It "
            "either means you are trying to save tensors which are reference of each other in "
            "which case it's recommended to save only the full tensors, and reslice at load "
            "time, or simply call `.contiguous()` on your tensor to pack it before saving."
        )
    if kind == "meta":
        # What torch says when the reference copies the meta tensor out.
        return NotImplementedError("Cannot copy out of meta tensor; no data!")
    if kind == "unsupported_dtype":
        return _UnsupportedDtypeError(
            f"tensor `{first}` has dtype {tensors[first].dtype}, which the safetensors format "
            "cannot store"
        )
    if kind == "float4_scalar":
        return SafetensorError(
            f"tensor `{first}`: a 0-d float4_e2m1fn_x2 tensor cannot be saved (its header shape "
            "needs a last dimension for the two packed values); reshape it to [1]"
        )
    raise AssertionError(f"unknown save problem {kind!r}")  # pragma: no cover


def no_kept_name_error(names: Iterable[str]) -> RuntimeError:
    """The reference's error for a memory group in which no name covers the whole storage."""
    return RuntimeError(
        "Error while trying to find names to remove to save state dict, but found no suitable "
        f"name to keep for saving amongst: {set(names)}. None is covering the entire storage."
        "Refusing to save/load the model since you could be storing much more memory than "
        f"needed. Please refer to {_SHARED_TENSORS_DOC} for more information. Or open an issue."
    )


def size_mismatch_error(
    model: torch.nn.Module, mismatched: Sequence[Tuple[str, List[int], List[int]]]
) -> RuntimeError:
    """What ``load_state_dict``, which the reference's ``load_model`` calls, raises."""
    lines = [
        f"size mismatch for {name}: copying a param with shape {torch.Size(file_sizes)} from "
        f"checkpoint, the shape in current model is {torch.Size(model_sizes)}."
        for name, model_sizes, file_sizes in mismatched
    ]
    return RuntimeError(
        f"Error(s) in loading state_dict for {model.__class__.__name__}:\n\t" + "\n\t".join(lines)
    )


def strict_load_error(
    model: torch.nn.Module,
    missing: Iterable[str],
    unexpected: Iterable[str],
    tied_conflicts: Sequence[Tuple[str, str]] = (),
) -> RuntimeError:
    """The reference's ``load_model`` error for missing or unexpected names; then the tied names
    the file holds with values the module cannot hold at once (the C++ report's
    ``tied_conflicts``)."""
    error = f"Error(s) in loading state_dict for {model.__class__.__name__}:"
    # A tied conflict is an unexpected key in the reference's words (its tests match them); the
    # line after says what actually happened.
    missing = sorted(missing)
    unexpected = sorted(list(unexpected) + [dropped for dropped, _ in tied_conflicts])
    if missing:
        error += "\n    Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing)
    if unexpected:
        error += "\n    Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected)
    if tied_conflicts:
        error += "\n    (tied in the model but different in the file: " + ", ".join(
            f'"{dropped}" is one tensor with "{kept}", which is loaded'
            for dropped, kept in tied_conflicts) + ")"
    return RuntimeError(error)


def checked_report(model: torch.nn.Module, plan: Any, strict: bool) -> Tuple[Set[str], List[str]]:
    """``(missing, unexpected)`` of the C++ module-load report (``_C.ModuleLoad``: names, ties and
    the sizes each stored tensor loads as), after raising what the reference's ``load_model``
    raises: a tied group no name of which covers its storage, a size mismatch, and with ``strict``
    a missing or unexpected name or a tied conflict. Nothing has been loaded yet. A tied name whose
    stored values differ from its kept name's is unexpected (the reference's word for it)."""
    for names, keep in plan.ties:
        if keep is None:
            raise no_kept_name_error(names)
    if plan.mismatched:
        raise size_mismatch_error(model, plan.mismatched)
    missing, unexpected = set(plan.missing), list(plan.unexpected)
    conflicts = list(plan.tied_conflicts)
    if strict and (missing or unexpected or conflicts):
        raise strict_load_error(model, missing, unexpected, conflicts)
    return missing, unexpected + [dropped for dropped, _ in conflicts]
