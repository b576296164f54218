"""torch_safetensors: the safetensors format for PyTorch, on a C++ (LibTorch) core.

A drop-in for ``safetensors.torch`` 0.8: the same functions, arguments, return types and error
kinds, and byte-identical files::

    from torch_safetensors import load_file, save_file, safe_open

    save_file({"w": torch.zeros(2, 3)}, "model.safetensors", metadata={"format": "pt"})
    tensors = load_file("model.safetensors")           # zero-copy views of the mapped file
    with safe_open("model.safetensors", framework="pt") as f:
        row = f.get_slice("w")[1]

Every byte is parsed, validated and written by the C++ core (``torch_safetensors._C``), and so are
the rules: what a save refuses, which tensors share memory, which name of a tied group is kept,
how a file is loaded into a model. The Python modules keep only what the reference's API needs:

- ``_args``: argument adaptation (paths, names, frameworks, backends, devices; ``RawTensor``);
- ``_errors``: the reference's exception types and message texts;
- ``_file``: ``safe_open``, ``SafeSlice``, ``load_file``, ``load``;
- ``_save``: ``save``, ``save_file``, ``SaveReport`` (what a sharded save wrote, and its GB/s);
- ``_model``: ``save_model``, ``load_model`` and the reference's shared-tensor helpers;
- ``hub``: huggingface_hub's torch helpers (``save_torch_model``, ``load_torch_model``, ...) for
  sharded checkpoints; ``open_checkpoint`` opens one lazily (a file, an index or a directory).

Quantized weights (FP8, GPTQ, AWQ, compressed-tensors, MXFP4, NVFP4: detect, dequantize,
quantize, self-describing files) are in the submodule ``torch_safetensors.quant``.

Beyond the reference: ``safe_open.get_raw`` and ``RawTensor`` read and write tensors as their
stored bytes (the way to round-trip F6_E2M3 / F6_E3M2, which torch cannot express; they also
load as uint8 bytes), ``device`` also takes a ``torch.device``, and ``load`` accepts every dtype
``load_file`` does.
"""

from __future__ import annotations

from ._args import RawTensor
from ._errors import MemoryBudgetError, SafetensorError
from ._extension import _C

#: From include/torch_safetensors/version.h, the version's one place (through the extension).
__version__: str = _C.__version__
from ._file import SafeSlice, load, load_file, open_checkpoint, safe_open
from ._model import (
    _end_ptr,
    _find_shared_tensors,
    _is_complete,
    _remove_duplicate_names,
    load_model,
    save_model,
    storage_ptr,
    storage_size,
)
from ._save import SaveReport, save, save_file

__all__ = [
    "MemoryBudgetError",
    "RawTensor",
    "SafetensorError",
    "SafeSlice",
    "SaveReport",
    "load",
    "load_file",
    "load_model",
    "open_checkpoint",
    "safe_open",
    "save",
    "save_file",
    "save_model",
    "storage_ptr",
    "storage_size",
]
