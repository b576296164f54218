#!/usr/bin/env python3
"""Sharded checkpoints: the Llama-like checkpoint of bench/run.py split in 4 shards (the
huggingface_hub layout), loaded lazily and eagerly against the single file and against
huggingface_hub / transformers-style loading with the reference safetensors, in one run.

    python3 bench/sharded.py                  # ~1.09 GB, medians of 5 (reuses bench/run.py's files)
    python3 bench/sharded.py --scale 0.1      # quick

Rows (each a median of --reps runs after a warm-up, warm page cache, one process):
  lazy      ours: load_file(single) vs open_checkpoint(dir).get_tensors() (mmap views)
  eager     ours: the same with backend="pread" (owned memory; shards read in one parallel pass)
  model     load into an nn.Module of the same parameters: ours (hub.load_torch_model: views +
            load_state_dict; load_model: set_ zero-copy) vs huggingface_hub.load_torch_model and
            transformers-style (per shard: reference load_file + load_state_dict(strict=False))
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench_run  # noqa: E402  (generate, measure, touch)


def param_model(state_dict):
    """An nn.Module whose parameters have the state dict's names, shapes and dtypes."""
    import torch

    root = torch.nn.Module()
    for name, tensor in state_dict.items():
        module = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(torch.empty_like(tensor),
                                                           requires_grad=False))
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workdir", default=os.path.join("/tmp", "torch_safetensors_bench"))
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import huggingface_hub
    import safetensors.torch
    import torch

    import torch_safetensors
    from torch_safetensors import hub

    single = os.path.join(args.workdir, "llama_bf16.safetensors")
    if not os.path.exists(single):
        bench_run.generate(args.workdir, args.scale)
    tensors = torch_safetensors.load_file(single)
    total = sum(t.nbytes for t in tensors.values())
    sharded = os.path.join(args.workdir, f"llama_bf16_{args.shards}_shards")
    hub.save_torch_state_dict(tensors, sharded, max_shard_size=total // args.shards + (4 << 20))
    shard_count = len([f for f in os.listdir(sharded) if f.endswith(".safetensors")])
    del tensors

    def timed(body, touch=False):
        def run():
            out = body()
            if touch:
                for t in out.values():
                    bench_run.touch(t)
        times, peaks = bench_run.measure(args.reps, 1, run, budget=60.0)
        return statistics.median(times), max(peaks)

    rows = []

    def row(group, name, body, touch=False):
        seconds, peak = timed(body, touch)
        rows.append({"group": group, "name": name, "s": seconds, "GB/s": total / seconds / 1e9,
                     "peak_rss_MiB": peak / (1 << 20)})
        print(f"{group:6} {name:58} {seconds * 1e3:9.2f} ms  {total / seconds / 1e9:6.2f} GB/s",
              flush=True)

    open_ckpt = torch_safetensors.open_checkpoint
    row("lazy", "ours: load_file(single file)", lambda: torch_safetensors.load_file(single))
    row("lazy", f"ours: open_checkpoint({shard_count} shards).get_tensors()",
        lambda: open_ckpt(sharded).get_tensors())
    row("lazy", "reference: load_file(single file)", lambda: safetensors.torch.load_file(single))
    row("eager", "ours: load_file(single file, backend=pread)",
        lambda: torch_safetensors.load_file(single, backend="pread"), touch=True)
    row("eager", f"ours: open_checkpoint({shard_count} shards, backend=pread)",
        lambda: open_ckpt(sharded, backend="pread").get_tensors(), touch=True)
    row("eager", "ours: lazy sharded + touch every byte",
        lambda: open_ckpt(sharded).get_tensors(), touch=True)
    row("eager", "reference: load_file per shard + touch every byte",
        lambda: {k: v for f in sorted(os.listdir(sharded)) if f.endswith(".safetensors")
                 for k, v in safetensors.torch.load_file(os.path.join(sharded, f)).items()},
        touch=True)

    model = param_model(torch_safetensors.load_file(single))

    def transformers_style():
        index = json.load(open(os.path.join(sharded, "model.safetensors.index.json")))
        for shard in sorted(set(index["weight_map"].values())):
            model.load_state_dict(safetensors.torch.load_file(os.path.join(sharded, shard)),
                                  strict=False)
        return {}

    row("model", "ours: hub.load_torch_model", lambda: (hub.load_torch_model(model, sharded), {})[1])
    row("model", "ours: load_model (set_, zero-copy)",
        lambda: (torch_safetensors.load_model(model, sharded), {})[1])
    row("model", "huggingface_hub.load_torch_model (reference safetensors)",
        lambda: (huggingface_hub.load_torch_model(model, sharded), {})[1])
    row("model", "transformers-style: reference load_file per shard + load_state_dict",
        transformers_style)

    eager_single, eager_sharded = rows[3]["s"], rows[4]["s"]
    print(f"\ncheckpoint: {total / 1e9:.2f} GB, {shard_count} shards; "
          f"sharded eager / single-file eager = {eager_sharded / eager_single:.2f} (target <= 1.10)")
    print(f"model load: huggingface_hub / ours(hub.load_torch_model) = "
          f"{rows[9]['s'] / rows[7]['s']:.2f}x; transformers-style / ours = "
          f"{rows[10]['s'] / rows[7]['s']:.2f}x; huggingface_hub / ours(load_model) = "
          f"{rows[9]['s'] / rows[8]['s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bytes": total, "shards": shard_count, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
