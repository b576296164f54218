"""Tensor- and pipeline-parallel loading: every rank reads only its own bytes.

A :class:`ShardPlan` is data, not code: module-name patterns in the style of transformers'
``base_model_tp_plan`` (``"layers.*.self_attn.q_proj": "colwise"``), explicit per-tensor splits,
and a pipeline filter. :func:`load_for_rank` reads one rank's pieces of a checkpoint (a file, an
index or a directory) and nothing else; with a ``torch.distributed`` process group the ranks
check each other, and storage only one rank can see is served by that rank (``single_reader``)::

    import torch.distributed as dist
    from torch_safetensors.distributed import ShardPlan, load_for_rank, all_gather_tensors

    dist.init_process_group("gloo")                   # torchrun: env:// rendezvous
    plan = ShardPlan({"layers.*.self_attn.q_proj": "colwise",
                      "layers.*.self_attn.o_proj": "rowwise"})
    mine = load_for_rank("Llama/", plan)              # this rank's pieces
    full = all_gather_tensors(mine)                   # every tensor, reassembled

A model parallelized with ``torch.distributed.tensor.parallel.parallelize_module`` (DTensor
parameters) loads shard-on-read with :func:`load_dtensors`, which ``load_model`` and
``hub.load_torch_model`` call for such models. A state dict of DTensors is saved from every
rank straight to the huggingface layout with :func:`save_sharded` (no gather: each rank writes
its own shards' bytes into the final files). ``torch.distributed.checkpoint`` reads and writes
safetensors checkpoints through :class:`StorageReader` and :class:`StorageWriter`.

Every rule (pattern matching, splits, companions, checks) and every collective is the C++ core's
(``distributed.h``, ``distributed_c10d.h``); this package adapts arguments: ``_plan`` (shard
plans, rank loads), ``_dtensor`` (DTensor models), ``_save`` (saving from many ranks) and
``_dcp`` (DCP storage, imported on first use).
"""

from __future__ import annotations

from typing import Any

from ._dtensor import has_dtensors, load_dtensors
from ._plan import (
    LLAMA_TP_PLAN,
    ExpertPlan,
    PipelinePlan,
    RankLoad,
    ShardPlan,
    all_gather_tensors,
    assemble,
    load_for_rank,
    memory_plan,
)
from ._save import SaveReport, consolidate, save_rank_file, save_sharded

__all__ = [
    "LLAMA_TP_PLAN",
    "PipelinePlan",
    "ExpertPlan",
    "ShardPlan",
    "RankLoad",
    "load_for_rank",
    "memory_plan",
    "all_gather_tensors",
    "assemble",
    "load_dtensors",
    "has_dtensors",
    "save_sharded",
    "save_rank_file",
    "consolidate",
    "SaveReport",
    "StorageReader",
    "StorageWriter",
]


def __getattr__(name: str) -> Any:
    # torch.distributed.checkpoint is imported only by those who use it.
    if name in ("StorageReader", "StorageWriter"):
        from . import _dcp

        return getattr(_dcp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
