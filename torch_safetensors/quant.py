"""Quantized weights: read, dequantize, quantize and write FP8 (block, per-tensor, per-channel),
GPTQ, AWQ, compressed-tensors (pack-quantized, nvfp4-, mxfp4- and mxfp6-pack-quantized,
mxfp8-quantized), gpt-oss MXFP4, DeepSeek-V4 (FP4 experts, E8M0 `.scale`) and NVFP4 layouts.

Everything is the C++ core's (``torch::safetensors::quant``); this module adapts arguments::

    from torch_safetensors import quant

    w = quant.dequantize("model/", "model.layers.0.mlp.down_proj.weight", torch.bfloat16)
    dense = quant.DenseView("model/", dtype=torch.bfloat16, device="cuda")  # name -> tensor
    q = quant.quantize(weight, "gptq", name="proj.weight", bits=4, group_size=128)
    quant.save_file([q], {"norm.weight": norm}, "out.safetensors")  # self-describing

A checkpoint is a file, an ``*.index.json`` or a directory. The quantization is read from the
file's own ``__metadata__["torch_safetensors.quantization"]`` (:data:`METADATA_KEY`, written by
:func:`save_file`; version 0.2's documents under the plain ``"quantization"`` key are still read,
any other value there is another tool's and is ignored), else from ``config.json``'s
``quantization_config`` or ``hf_quant_config.json`` beside it (beside the path as spelled: a
bare file name looks in the working directory), else inferred from the tensors' names, dtypes
and shapes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch

from . import _args
from ._extension import _C

__all__ = [
    "METADATA_KEY",
    "SCHEMES",
    "DenseView",
    "Quantized",
    "QuantizedWeight",
    "dequantize",
    "dequantize_tensors",
    "describe",
    "metadata_json",
    "parse_metadata_json",
    "quantize",
    "save_file",
    "save_sharded",
]

#: A weight's layout: scheme, bits, group_size, block_size, zero_point_minus_one, shape and
#: ``tensors`` (role -> stored tensor name; roles: packed, scale, zero_point, g_idx, shape,
#: global_scale).
QuantizedWeight = _C.QuantizedWeight
#: The ``__metadata__`` key of the self-describing convention (README, "Quantized weights").
METADATA_KEY: str = _C.QUANT_METADATA_KEY
#: Every scheme name, as the C++ core enumerates them (``quant::scheme_names``).
SCHEMES = tuple(_C.quant_scheme_names())

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Quantized:
    """What :func:`quantize` returns: the stored tensors and how they form the weight."""

    tensors: Dict[str, torch.Tensor]
    weight: QuantizedWeight


def dequantize(
    checkpoint: PathLike,
    name: str,
    dtype: torch.dtype = torch.bfloat16,
    device: Union[str, int, torch.device] = "cpu",
) -> torch.Tensor:
    """The dense weight ``name``, reading only the tensors that form it; computed on ``device``."""
    path = os.fspath(checkpoint)
    return _C.quant_dequantize(path, name, dtype, _args.device(device, path))


def dequantize_tensors(
    weight: QuantizedWeight, parts: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """The dense weight from its stored tensors (role -> tensor), on their device."""
    return _C.quant_dequantize_tensors(weight, dict(parts), dtype)


def describe(checkpoint: PathLike) -> Dict[str, QuantizedWeight]:
    """Every quantized weight of a checkpoint: dense name -> layout."""
    return DenseView(checkpoint).quantized


class DenseView(Mapping):
    """A checkpoint as dense tensors: quantized weights under their dense names, dequantized to
    ``dtype`` on access; their companions hidden; every other tensor as stored."""

    def __init__(
        self,
        checkpoint: PathLike,
        dtype: torch.dtype = torch.bfloat16,
        device: Union[str, int, torch.device] = "cpu",
    ) -> None:
        path = os.fspath(checkpoint)
        self._view = _C.QuantView(path, dtype, _args.device(device, path))

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._view:
            raise KeyError(name)
        return self._view.tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._view.keys())

    def __len__(self) -> int:
        return len(self._view)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._view

    def is_quantized(self, name: str) -> bool:
        return self._view.is_quantized(name)

    @property
    def quantized(self) -> Dict[str, QuantizedWeight]:
        return self._view.quantized()

    @property
    def config_source(self) -> str:
        """Where the quantization was described ("" when inferred from the tensors alone)."""
        return self._view.config_source


def quantize(
    weight: torch.Tensor,
    scheme: str,
    name: str = "weight",
    bits: int = 4,
    group_size: int = 128,
    block_size: Optional[Sequence[int]] = None,
    symmetric: bool = True,
    zero_point_minus_one: bool = True,
    act_order: Optional[torch.Tensor] = None,
    scale_dtype: torch.dtype = torch.float16,
) -> Quantized:
    """The tensors ``scheme`` stores for ``weight`` ([out, in]), named after ``name``.

    ``bits``: gptq 2/3/4/8, pack_quantized 1..8; ``group_size`` (<= 0: one group per row):
    gptq, awq, pack_quantized; ``block_size``: fp8 [rows, cols] (None: per output channel);
    ``zero_point_minus_one``: gptq's original format (False: gptq_v2); ``act_order``: gptq's
    desc_act column permutation; ``scale_dtype``: gptq/awq scales.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r} (expected one of {SCHEMES})")
    pairs, layout = _C.quant_quantize(
        weight, name, scheme, bits, group_size, list(block_size or []), symmetric,
        zero_point_minus_one, act_order, scale_dtype,
    )
    return Quantized(dict(pairs), layout)


def save_file(
    weights: Sequence[Quantized],
    others: Optional[Mapping[str, torch.Tensor]] = None,
    filename: PathLike = "model.safetensors",
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Writes quantized weights and ordinary tensors to one file, describing the quantized weights
    under ``__metadata__[METADATA_KEY]`` so that no config file is needed to read them."""
    items = [(list(q.tensors.items()), q.weight) for q in weights]
    _C.quant_save(items, list((others or {}).items()), os.fspath(filename), metadata)


def save_sharded(
    weights: Sequence[Quantized],
    others: Optional[Mapping[str, torch.Tensor]] = None,
    directory: PathLike = ".",
    max_shard_size: Union[int, str] = "5GB",
    filename_pattern: str = "model{suffix}.safetensors",
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """:func:`save_file` as a sharded checkpoint, split and named as
    :func:`torch_safetensors.save_sharded` does it; the description goes to the index's metadata
    (to the file's when one file holds everything)."""
    items = [(list(q.tensors.items()), q.weight) for q in weights]
    size = max_shard_size if isinstance(max_shard_size, int) else _C.parse_size(max_shard_size)
    _C.quant_save_sharded(items, list((others or {}).items()), os.fspath(directory), size,
                          filename_pattern, metadata)


def metadata_json(weights: Sequence[QuantizedWeight]) -> str:
    """The JSON value that :func:`save_file` writes under :data:`METADATA_KEY`."""
    return _C.quant_metadata_json(list(weights))


def parse_metadata_json(text: str) -> Dict[str, QuantizedWeight]:
    """The inverse of :func:`metadata_json`."""
    return _C.quant_parse_metadata_json(text)
