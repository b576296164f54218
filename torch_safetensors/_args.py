"""Argument adaptation: the reference's rules for paths, names, frameworks, backends and devices,
and its errors for arguments it refuses."""

from __future__ import annotations

import os
import re
from typing import Any, List, NamedTuple, Optional, Union

import torch

from ._errors import SafetensorError, not_instance
from ._extension import _C

FilePath = Union[str, "os.PathLike[str]"]
Device = Union[str, int, torch.device]

# huggingface_hub's sharding defaults (save_torch_state_dict and every sharded save of ours).
SAFETENSORS_WEIGHTS_FILE_PATTERN = "model{suffix}.safetensors"
MAX_SHARD_SIZE = "5GB"

_TORCH_FRAMEWORKS = ("pt", "torch", "pytorch")
_OTHER_FRAMEWORKS = ("np", "numpy", "tf", "tensorflow", "jax", "flax", "mlx", "paddle")
_BACKENDS = ("mmap", "pread")
# Device types the reference accepts by name; plain "cuda" etc. mean index 0.
_INDEXED_DEVICES = ("cuda", "musa", "npu", "xpu", "xla", "mlu", "hpu")


class RawTensor(NamedTuple):
    """A tensor as stored: its spec dtype name, logical (header) shape and exact bytes.

    ``data`` is a 1-D ``torch.uint8`` tensor. Pass a ``RawTensor`` as a value to ``save`` or
    ``save_file`` to write the bytes unchanged (the size is checked against dtype and shape).
    """

    dtype: str
    shape: List[int]
    data: torch.Tensor


def path(filename: FilePath) -> bytes:
    """The path as bytes (keeps non-UTF-8 names intact on their way to C++)."""
    name = os.fspath(filename)  # TypeError for non-paths, as in the reference
    if not isinstance(name, str):
        raise not_instance("filename", name, "str")
    return os.fsencode(name)


def check_name(name: object) -> None:
    if not isinstance(name, str):
        raise not_instance("name", name, "str")


def check_framework(framework: object) -> None:
    if not isinstance(framework, str):
        raise not_instance("framework", framework, "str")
    if framework in _OTHER_FRAMEWORKS:
        raise SafetensorError(
            f"framework {framework} is not supported by torch_safetensors (use pt)"
        )
    if framework not in _TORCH_FRAMEWORKS:
        raise SafetensorError(f"framework {framework} is invalid")


def backend(value: object) -> str:
    if not isinstance(value, str):
        raise not_instance("backend", value, "str")
    if value not in _BACKENDS:
        raise SafetensorError(f'backend "{value}" is invalid (expected one of: "mmap", "pread")')
    return value


def _parse_index(device: str, text: str) -> int:
    if not re.fullmatch(r"\+?[0-9]+", text):
        raise ValueError(f"device {device}: invalid digit found in string")
    return int(text)


def _parse_device(value: object) -> torch.device:
    """The reference's device rules: names, "name:index" and ints; anything else is invalid."""
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        if value == "cpu":
            return torch.device("cpu")
        if value == "mps":
            return torch.device("mps")
        if value in _INDEXED_DEVICES:
            return torch.device(value, 0)
        kind, _, index = value.partition(":")
        if (kind in _INDEXED_DEVICES or kind == "mps") and value.count(":") == 1:
            number = _parse_index(value, index)
            if kind == "mps":
                if number != 0:
                    raise SafetensorError(
                        f"device {value} is invalid: only mps or mps:0 is supported"
                    )
                return torch.device("mps")
            return torch.device(kind, number)
        raise SafetensorError(f"device {value} is invalid")
    if isinstance(value, int):
        if value < 0:
            raise SafetensorError(f"device {value} is invalid")
        return torch.device(value)  # the current accelerator; RuntimeError when there is none
    raise SafetensorError(f"device {value!r} is invalid")


def device(value: object, source: Union[str, bytes]) -> torch.device:
    """The device ``value`` names (the reference's spellings), checked by the core's one rule
    (``device::check_device``, which every C++ load applies at open): RuntimeError, as torch and
    the reference raise it, when this torch cannot reach it (a CUDA or XPU device on a CPU-only
    build, ``cuda:7`` on a one-GPU machine). ``source`` names what is loaded, for the message."""
    parsed = _parse_device(value)
    try:
        _C.check_device(parsed, source)
    except SafetensorError as error:
        raise RuntimeError(str(error)) from None
    return parsed


def load_options(
    backend_name: object,
    device_value: object,
    dtype: object,
    populate: Optional[bool],
    source: Union[str, bytes],
    staging_bytes: Optional[int] = None,
    cast_fp8: Optional[bool] = None,
    device_budget: Optional[int] = None,
    host_budget: Optional[int] = None,
) -> Any:
    """The extension's ``LoadOptions`` from the Python arguments: only what the caller chose is
    set, every default is the C++ one (which also refuses a budget of 0, at open)."""
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise not_instance("dtype", dtype, "torch.dtype")
    if populate is not None and not isinstance(populate, bool):
        raise not_instance("populate", populate, "bool")
    options = _C.LoadOptions(backend=backend(backend_name), device=device(device_value, source))
    if populate is not None:
        options.populate = populate
    if dtype is not None:
        options.dtype = dtype
    if staging_bytes is not None:
        options.staging_bytes = staging_bytes
    if cast_fp8 is not None:
        if not isinstance(cast_fp8, bool):
            raise not_instance("cast_fp8", cast_fp8, "bool")
        options.cast_fp8 = cast_fp8
    for name, budget in (("device_budget", device_budget), ("host_budget", host_budget)):
        if budget is None:
            continue
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise not_instance(name, budget, "int")
        if budget < 0:  # the C++ field is unsigned
            raise ValueError(f"{name} must be a positive number of bytes, got {budget}")
        setattr(options, name, budget)
    return options


def max_shard_bytes(max_shard_size: Union[int, str]) -> int:
    """``max_shard_size`` ("5GB" or bytes) in bytes, with huggingface_hub's errors."""
    if isinstance(max_shard_size, str):
        try:
            return _C.parse_size(max_shard_size)
        except Exception as error:  # the core's message, as huggingface_hub's ValueError
            raise ValueError(str(error).split("safetensors: ", 1)[-1]) from None
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int):
        raise TypeError(f"max_shard_size must be an int or a str, got {type(max_shard_size)}")
    return max(max_shard_size, 0)
