"""Shard plans and rank loads: what each rank reads (``ShardPlan``, ``PipelinePlan``),
``load_for_rank`` and reassembly. The rules are the C++ core's (``distributed.h``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .. import _args
from .._extension import _C

Range = Tuple[int, int]

#: transformers' ``LlamaForCausalLM`` tensor-parallel plan (``base_model_tp_plan`` and
#: ``_tp_plan``) with a vocab-parallel embedding: the layout most decoder checkpoints share.
LLAMA_TP_PLAN: Dict[str, str] = {
    "embed_tokens": "embedding",
    "layers.*.self_attn.q_proj": "colwise",
    "layers.*.self_attn.k_proj": "colwise",
    "layers.*.self_attn.v_proj": "colwise",
    "layers.*.self_attn.o_proj": "rowwise",
    "layers.*.mlp.gate_proj": "colwise",
    "layers.*.mlp.up_proj": "colwise",
    "layers.*.mlp.down_proj": "rowwise",
    "lm_head": "colwise_rep",
}


@dataclasses.dataclass
class PipelinePlan:
    """Which pipeline stage holds which tensors: stage ``s`` holds layers
    ``[stages[s][0], stages[s][1])`` (the numeric path segment after ``layers``); other tensors
    go to the first stage when a ``first_stage`` pattern matches their module (embeddings), else
    to the last (final norm, head)."""

    stages: List[Range]
    layers: str = "layers"
    first_stage: Optional[List[str]] = None  # None: the core's default embedding names

    @classmethod
    def even(cls, num_layers: int, num_stages: int, **kwargs: Any) -> "PipelinePlan":
        """``num_layers`` in ``num_stages`` contiguous ranges (the first ones longer by one)."""
        return cls(stages=[tuple(s) for s in _C.even_stages(num_layers, num_stages)], **kwargs)


@dataclasses.dataclass
class ExpertPlan:
    """Expert parallelism for mixture-of-experts checkpoints (the core's ``ExpertPlan``).

    Tensors with the path segment ``segment`` followed by an index (``...experts.5.w1.weight``)
    go to that expert's owner only; tensors whose module ends in ``segment``
    (``...experts.gate_up_proj``, stacked experts on dim 0) are read row by row, each rank its own
    experts' rows; a pattern's rule then applies to one expert's matrix (colwise splits dim 1).
    Everything else (attention, router, shared experts) is replicated across the EP group.

    ``placement``: ``"contiguous"`` (blocks, the first ``E % P`` ranks one expert more),
    ``"round_robin"`` (expert ``e`` on EP rank ``e % P``), a list giving each EP rank its
    experts, or a mapping expert → EP rank. ``ep_size`` (``P``): the EP group's size; ``0``: all
    the ranks of a pipeline stage. Within a stage, local rank ``l`` is EP rank ``l // T`` and TP
    rank ``l % T`` with ``T = ranks per stage // P``."""

    num_experts: int
    ep_size: int = 0
    placement: Union[str, Sequence[Sequence[int]], Mapping[int, int]] = "contiguous"
    segment: str = "experts"

    def _native(self) -> Tuple[int, int, str, List[List[int]], str]:
        placement = self.placement
        if isinstance(placement, str):
            return (int(self.num_experts), int(self.ep_size), placement, [], self.segment)
        if isinstance(placement, Mapping):  # expert -> rank, as lists per rank
            ranks = max(int(self.ep_size), 1 + max((int(r) for r in placement.values()),
                                                   default=-1))
            lists: List[List[int]] = [[] for _ in range(ranks)]
            for expert, rank in placement.items():
                if not 0 <= int(rank) < ranks:
                    raise ValueError(f"expert plan: expert {expert} is mapped to rank {rank}, "
                                     f"outside [0, {ranks})")
                lists[int(rank)].append(int(expert))
            placement = lists
        return (int(self.num_experts), int(self.ep_size), "explicit",
                [[int(e) for e in mine] for mine in placement], self.segment)


@dataclasses.dataclass
class ShardPlan:
    """What each rank loads. ``patterns``: module-name pattern → style (``colwise``,
    ``rowwise``, ``packed_colwise[:sizes]``, ``packed_rowwise``, ``embedding``,
    ``embedding_colwise``, ``replicate`` and transformers' aliases); ``*`` matches one numeric
    path segment and the longest pattern wins. ``tensors``: name → ``(dim, [(offset, length)
    per rank])``, overriding patterns. Ranks are stage-major: rank ``r`` is tensor-parallel rank
    ``r % (world_size // stages)`` (with ``experts``, an :class:`ExpertPlan`, the ranks of a stage
    form an EP × TP grid). ``strict`` makes a pattern that matches nothing an error instead of a
    warning."""

    patterns: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tensors: Mapping[str, Tuple[int, Sequence[Range]]] = dataclasses.field(default_factory=dict)
    pipeline: Optional[PipelinePlan] = None
    strict: bool = False
    experts: Optional[ExpertPlan] = None

    @classmethod
    def from_tp_plan(cls, tp_plan: Mapping[str, str], **kwargs: Any) -> "ShardPlan":
        """From a transformers ``base_model_tp_plan`` (``config.base_model_tp_plan``)."""
        return cls(patterns=dict(tp_plan), **kwargs)

    def _native(self) -> Any:
        pipeline = self.pipeline
        return _C.ShardPlan(
            patterns=[(str(k), str(v)) for k, v in self.patterns.items()],
            tensors=[(name, int(dim), [(int(o), int(n)) for o, n in ranges])
                     for name, (dim, ranges) in self.tensors.items()],
            stages=[(int(a), int(b)) for a, b in pipeline.stages] if pipeline else None,
            layers=pipeline.layers if pipeline else "layers",
            first_stage=pipeline.first_stage if pipeline else None,
            strict=bool(self.strict),
            experts=self.experts._native() if self.experts is not None else None,
        )


@dataclasses.dataclass
class RankLoad:
    """One rank's load: its pieces (``tensors``, in checkpoint order), where each lies in the
    full tensor (``pieces``: ``name``, ``full_sizes``, ``splits`` of ``(dim, ranges)``), and what
    it read: ``tensor_bytes`` (exactly its pieces), ``header_bytes`` (the headers of the files it
    opened, and the index); ``memory``: what it allocated, as :func:`memory_plan` planned it."""

    tensors: Dict[str, torch.Tensor]
    pieces: List[Any]
    tensor_bytes: int
    header_bytes: int
    warnings: List[str]
    memory: Any = None
    _native: Any = dataclasses.field(repr=False, default=None)

    @property
    def bytes_read(self) -> int:
        return self.tensor_bytes + self.header_bytes


def _wrap(native: Any) -> RankLoad:
    return RankLoad(native.tensors, list(native.pieces), native.tensor_bytes, native.header_bytes,
                    list(native.warnings), native.memory, native)


def _default_group(group: Any) -> Any:
    import torch.distributed as dist

    if group is not None:
        return group
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            "no process group: pass rank= and world_size=, or group=, or call "
            "torch.distributed.init_process_group first")
    return dist.group.WORLD


def load_for_rank(
    checkpoint: _args.FilePath,
    plan: ShardPlan,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    *,
    group: Any = None,
    device: _args.Device = "cpu",
    backend: str = "mmap",
    dtype: Optional[torch.dtype] = None,
    single_reader: bool = False,
    source_rank: int = 0,
    device_budget: Optional[int] = None,
    host_budget: Optional[int] = None,
) -> RankLoad:
    """This rank's pieces of ``checkpoint`` (a file, an index or a directory) under ``plan``,
    reading only their bytes (plus headers), to ``device`` with either backend.

    With ``rank`` and ``world_size`` (and no ``group``) the load is local: nothing is exchanged.
    Otherwise it goes through ``group`` (default: the default process group): the ranks first
    check that they agree on world size and plan (a mismatch fails on every rank), a failure on
    one rank fails all of them naming it, and a rank that dies makes the others fail within the
    group's timeout. ``single_reader``: only ``source_rank`` reads (storage the other ranks cannot
    see) and sends each rank its pieces through the group; the others read nothing.
    ``device_budget``, ``host_budget``: bytes the rank's load may allocate (see
    :func:`memory_plan`); one that does not fit raises ``MemoryBudgetError`` before anything is
    allocated or read."""
    path = _args.path(checkpoint)
    options = _args.load_options(backend, device, dtype, None, path,
                                 device_budget=device_budget, host_budget=host_budget)
    native_plan = plan._native()
    if group is None and rank is not None and world_size is not None:
        if single_reader:
            raise ValueError("single_reader needs a process group (group= or the default one)")
        handle = _C.Checkpoint(path, options)
        return _wrap(_C.load_for_rank(handle, native_plan, int(rank), int(world_size)))
    pg = _default_group(group)
    if rank is not None and rank != pg.rank():
        raise ValueError(f"rank={rank} but this process is rank {pg.rank()} of the group")
    return _wrap(_C.load_for_rank_group(path, native_plan, pg, options,
                                        -1 if world_size is None else int(world_size),
                                        bool(single_reader), int(source_rank)))


def memory_plan(
    checkpoint: _args.FilePath,
    plan: ShardPlan,
    rank: Optional[int],
    world_size: int,
    *,
    device: _args.Device = "cpu",
    backend: str = "mmap",
    dtype: Optional[torch.dtype] = None,
) -> Any:
    """The plan step of :func:`load_for_rank`, from the headers alone (nothing is allocated or
    read, nothing exchanged): what rank ``rank``'s load will allocate on ``device`` and on the
    host, staging included, as a ``MemoryEstimate`` (``device_bytes``, ``host_bytes``,
    ``staging_bytes``, ``tensors``, ``largest``, ``largest_bytes``). With ``rank=None``, a list
    for ranks ``0 .. world_size - 1``."""
    path = _args.path(checkpoint)
    handle = _C.Checkpoint(path, _args.load_options(backend, device, dtype, None, path))
    native_plan = plan._native()
    if rank is None:
        return [_C.estimate_for_rank(handle, native_plan, r, int(world_size))
                for r in range(int(world_size))]
    return _C.estimate_for_rank(handle, native_plan, int(rank), int(world_size))


def all_gather_tensors(load: RankLoad, group: Any = None) -> Dict[str, torch.Tensor]:
    """Every full tensor on every rank, from the pieces each rank loaded: layouts are exchanged,
    then each piece is broadcast by its holder (on the pieces' device: CPU for gloo, CUDA for
    NCCL)."""
    return _C.all_gather_tensors(load._native, _default_group(group))


def assemble(pieces: Sequence[Any], tensors: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """The full tensor from every rank's piece of it (``None`` for ranks holding none)."""
    return _C.assemble(list(pieces), list(tensors))
