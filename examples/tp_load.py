"""Tensor-parallel loading with torchrun: each rank reads only its pieces of a checkpoint, then
checks them against the full tensors gathered from every rank.

    torchrun --nproc-per-node 2 examples/tp_load.py CHECKPOINT_DIR [--single-reader]

Across machines, the same command on each with --nnodes, --node-rank and --rdzv-endpoint (env://
rendezvous): every rank needs torch, torch_safetensors and the checkpoint's files at the same path
(a shared filesystem or a copy per node) — or, with --single-reader, only rank 0 needs them: it
reads and sends each rank its pieces through the process group. Without CHECKPOINT_DIR, rank 0
first writes a small Llama-like one.
"""
import argparse
import os

import torch
import torch.distributed as dist

from torch_safetensors import open_checkpoint
from torch_safetensors.distributed import (
    LLAMA_TP_PLAN,
    ShardPlan,
    all_gather_tensors,
    load_for_rank,
)

PLAN = ShardPlan(LLAMA_TP_PLAN)  # {"layers.*.self_attn.q_proj": "colwise", ...}


def demo_checkpoint(directory):
    from torch_safetensors.hub import save_torch_state_dict

    torch.manual_seed(0)
    tensors = {"model.embed_tokens.weight": torch.randn(512, 64), "lm_head.weight":
               torch.randn(512, 64), "model.norm.weight": torch.randn(64)}
    for i in range(4):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[p + f"self_attn.{name}.weight"] = torch.randn(64, 64)
        for name, shape in (("gate_proj", (128, 64)), ("up_proj", (128, 64)),
                            ("down_proj", (64, 128))):
            tensors[p + f"mlp.{name}.weight"] = torch.randn(shape).to(torch.bfloat16)
    save_torch_state_dict(tensors, directory, max_shard_size=200_000)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", nargs="?", default="tp_demo_checkpoint")
    parser.add_argument("--single-reader", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")  # "nccl" on GPUs, with device=f"cuda:{local_rank}"
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and not os.path.exists(args.checkpoint):
        demo_checkpoint(args.checkpoint)
    dist.barrier()

    mine = load_for_rank(args.checkpoint, PLAN, single_reader=args.single_reader)
    full = all_gather_tensors(mine)
    if rank == 0:
        with open_checkpoint(args.checkpoint) as f:
            assert all(torch.equal(full[name], f.get_tensor(name)) for name in f.keys())
    print(f"rank {rank}/{world}: {len(mine.tensors)} pieces, read {mine.tensor_bytes} tensor "
          f"bytes + {mine.header_bytes} header bytes; all-gathered tensors equal the checkpoint")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
