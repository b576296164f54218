"""AOTInductor packages with safetensors weights.

A ``.pt2`` compiled without its weights (``inductor_configs=WEIGHTLESS``) gets them from a
safetensors file or a sharded checkpoint, zero-copy on the CPU, checked against what the package
expects; a second set loads into the inactive buffer while the first keeps serving, then swaps in::

    package = torch._inductor.aoti_compile_and_package(program, inductor_configs=aoti.WEIGHTLESS)
    aoti.save_weights(program, "model.safetensors", package=package)

    compiled = torch._inductor.aoti_load_package(package)
    aoti.load_weights(compiled, "model.safetensors")
    compiled(x)

The checks and the loading are the C++ library's (``torch_safetensors/aoti.h``); ``package``
arguments are what ``torch._inductor.aoti_load_package`` returns (or its ``.loader``), or a
``.pt2`` path where only names are needed. See docs/aoti.md.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from . import _args
from ._extension import _C
from ._model import _remove_duplicate_names
from ._errors import SafetensorError
from ._save import save_file

__all__ = ["WEIGHTLESS", "constants", "load_weights", "swap_weights", "save_weights"]

#: ``inductor_configs`` for a package without its weights: they are left out of the library, and
#: small tensors are kept as constants instead of being folded into the code (a folded constant
#: keeps its compiled-in value whatever file is loaded).
WEIGHTLESS: Dict[str, bool] = {
    "aot_inductor.package_constants_in_so": False,
    "always_keep_tensor_constants": True,
}


# The C++ message of a strict load's refusal (package_constants.cpp).
_STRICT_REFUSAL = "cannot load into the AOTInductor package:"


def _loader(package):
    """The C++ AOTIModelPackageLoader of what aoti_load_package returns (or the loader itself)."""
    if isinstance(package, (str, os.PathLike)):
        package = torch._inductor.aoti_load_package(os.fspath(package))
    loader = getattr(package, "loader", package)
    if type(loader).__name__ != "AOTIModelPackageLoader":
        raise TypeError("expected what torch._inductor.aoti_load_package returns (or its .loader), "
                        f"got {type(package).__name__}")
    return loader


def constants(package) -> List[dict]:
    """The constants the package takes from outside, in its order: ``fqn`` (the name it asks for),
    ``name`` (its own), ``dtype``, ``nbytes``, and ``sizes``/``strides`` (None when the package
    holds no generated source to read them from)."""
    return _C.aoti_constants(_loader(package))


def load_weights(
    package,
    path: _args.FilePath,
    *,
    strict: bool = True,
    inactive: bool = False,
    copy: bool = False,
    aliases: Optional[Mapping[str, str]] = None,
    device: Optional[_args.Device] = None,
    dtype: Optional[torch.dtype] = None,
    backend: str = "mmap",
    populate: bool = False,
) -> Tuple[List[str], List[str]]:
    """Loads the package's constants from ``path`` (a file, an index or a directory).

    Returns ``(missing, unexpected)`` like ``load_model``: constants the file did not provide (or
    with another shape) and names of the file the package does not take. Every check happens
    before the package changes: a dtype other than the package's raises TypeError (``dtype``
    casts floating-point tensors on load); with ``strict`` any missing, mismatched or unexpected
    name raises; a constant neither in the file nor already in the buffer always does.

    ``inactive`` fills the inactive buffer (then ``swap_weights``); ``copy`` lets the package copy
    the tensors instead of borrowing them (zero-copy views of the file on the CPU); ``aliases``
    maps a constant's FQN to the name the file holds it under (a tied weight); ``device``
    overrides the package's device; ``populate`` reads the whole mapping in at load (in bulk, on
    all cores) instead of page by page during the first run: faster when the file is not in the
    page cache.
    """
    filename = _args.path(path)
    options = _C.ModuleLoadOptions(backend=_args.backend(backend), strict=strict,
                                   populate=populate)
    if device is not None:
        options.device = _args.device(device, filename)
    if dtype is not None:
        options.dtype = dtype
    try:
        missing, unexpected, mismatched = _C.aoti_load(
            _loader(package), filename, options, inactive, copy, dict(aliases or {}))
    except SafetensorError as error:
        # What a strict load refuses is RuntimeError, as in load_model and torch's load_constants.
        if _STRICT_REFUSAL in str(error):
            raise RuntimeError(str(error)) from None
        raise
    return list(missing) + [name for name, _, _ in mismatched], list(unexpected)


def swap_weights(package) -> None:
    """Makes the inactive buffer (filled by ``load_weights(..., inactive=True)``) the active one;
    the previously active set becomes the inactive one."""
    _C.aoti_swap(_loader(package))


def _layout(constant: dict) -> tuple:
    return (constant["dtype"], tuple(constant["sizes"]) if constant["sizes"] is not None
            else constant["nbytes"])


def _tensor_layout(tensor: torch.Tensor, by_bytes: bool) -> tuple:
    return (tensor.dtype, tensor.numel() * tensor.element_size() if by_bytes
            else tuple(tensor.shape))


def _package_names(wanted: List[dict], tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The program's tensors under the package's names. Parameters and buffers keep their FQNs;
    a lifted tensor constant (a plain tensor attribute) is renamed by AOTInductor
    (``_tensor_constant<N>``, torch/_inductor/compile_fx.py), so it is matched by dtype and shape,
    and only where exactly one tensor left fits exactly one constant left."""
    named = {c["fqn"]: tensors[c["fqn"]] for c in wanted if c["fqn"] in tensors}
    left = [c for c in wanted if c["fqn"] not in tensors]
    spare = {name: tensor for name, tensor in tensors.items() if name not in named}
    for constant in left:
        by_bytes = constant["sizes"] is None
        fits = [name for name, tensor in spare.items()
                if _tensor_layout(tensor, by_bytes) == _layout(constant)]
        rivals = [c for c in left if _layout(c) == _layout(constant)]
        if len(fits) != 1 or len(rivals) != 1:
            raise KeyError(
                f"the package asks for {constant['fqn']!r} ({_layout(constant)}), which the program "
                f"holds under no such name, and {len(fits)} of its other tensors fit it: register "
                "the tensor as a buffer (register_buffer(..., persistent=False)) to keep its name")
        named[constant["fqn"]] = spare.pop(fits[0])
    return {c["fqn"]: named[c["fqn"]] for c in wanted}


def save_weights(
    program: torch.export.ExportedProgram,
    path: _args.FilePath,
    *,
    package=None,
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Writes an ExportedProgram's parameters, buffers and lifted constants under the names a
    package compiled from it asks for.

    With ``package`` (a ``.pt2`` path or what ``aoti_load_package`` returns): exactly the package's
    constants, so that ``load_weights(..., strict=True)`` takes the file as is (a lifted tensor
    constant, which the package asks for as ``_tensor_constant<N>``, is matched by dtype and shape;
    KeyError where that is ambiguous). Without: every name
    of the program, tensors sharing memory (tied weights) stored once, each dropped name recorded
    in the metadata as ``dropped → kept`` (the reference's ``save_model`` convention, which the
    loader follows).
    """
    tensors: Dict[str, torch.Tensor] = dict(program.state_dict)
    tensors.update({name: value for name, value in program.constants.items()
                    if isinstance(value, torch.Tensor)})
    metadata = None if metadata is None else dict(metadata)
    if package is not None:
        tensors = _package_names(constants(package), tensors)
    else:
        for kept, dropped in _remove_duplicate_names(tensors).items():
            for name in dropped:
                metadata = metadata if metadata is not None else {}
                metadata.setdefault(name, kept)
                del tensors[name]
    save_file({name: tensor.detach().contiguous() for name, tensor in tensors.items()}, path,
              metadata=metadata)
