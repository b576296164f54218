"""Converting a torch.save checkpoint to safetensors: `torch-safetensors convert` (the C++
restricted unpickler + save, called in this process through the extension) against
`torch.load(weights_only=True)` + the reference `safetensors.torch.save_file`, in the same run.

    python3 bench/convert_bench.py                          # the bench/ Llama-like .pt if present
    python3 bench/convert_bench.py --checkpoint model.bin   # any torch.save file
    python3 bench/convert_bench.py --scale 0.1              # generate a smaller Llama-like one

Page cache warm (one warm-up each), medians of --reps runs, alternating the two sides. Both write
{"format": "pt"} metadata, so the two outputs must be byte-identical: checked after timing.
"""

import argparse
import filecmp
import os
import statistics
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file

import torch_safetensors.__main__ as cli

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import llama_stack  # noqa: E402  (the same generator as bench/run.py)

DEFAULT = "/tmp/torch_safetensors_bench/llama_bf16.pt"


def make_checkpoint(path, scale):
    torch.manual_seed(0)
    layers = max(2, round(110 * scale))
    tensors = {n: (torch.randn(s) * 0.02).to(torch.bfloat16)
               for n, s in llama_stack(layers, 640, 1536, 32000, 1)}
    torch.save(tensors, path)


def ours(source, target):
    code = cli.main(["convert", source, target])
    assert code == 0, code


def reference(source, target):
    state = torch.load(source, weights_only=True)
    save_file(state, target, metadata={"format": "pt"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a torch.save file (default: bench/'s llama_bf16.pt)")
    parser.add_argument("--scale", type=float, help="generate a Llama-like checkpoint this size")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="convert_bench_")
    source = args.checkpoint
    if source is None and args.scale is None and os.path.exists(DEFAULT):
        source = DEFAULT
    if source is None:
        source = os.path.join(workdir, "llama.pt")
        make_checkpoint(source, args.scale if args.scale is not None else 1.0)
    size = os.path.getsize(source)
    print(f"checkpoint: {source} ({size / 1e9:.3f} GB), torch {torch.__version__}, "
          f"{os.cpu_count()} cores, medians of {args.reps} after one warm-up")

    out_ours = os.path.join(workdir, "ours.safetensors")
    out_reference = os.path.join(workdir, "reference.safetensors")
    times = {"ours": [], "reference": []}
    sides = {"ours": (ours, out_ours), "reference": (reference, out_reference)}
    for rep in range(args.reps + 1):
        for name, (function, target) in sides.items():
            start = time.perf_counter()
            function(source, target)
            elapsed = time.perf_counter() - start
            if rep > 0:
                times[name].append(elapsed)

    ours_s = statistics.median(times["ours"])
    reference_s = statistics.median(times["reference"])
    print(f"torch-safetensors convert:                        {ours_s:8.3f} s "
          f"({size / ours_s / 1e9:.2f} GB/s)")
    print(f"torch.load(weights_only=True) + save_file:        {reference_s:8.3f} s "
          f"({size / reference_s / 1e9:.2f} GB/s)")
    print(f"ratio (reference / ours, > 1: ours faster):       {reference_s / ours_s:8.2f}x")
    identical = filecmp.cmp(out_ours, out_reference, shallow=False)
    print(f"outputs byte-identical: {identical}")
    for path in (out_ours, out_reference):
        os.remove(path)
    if source.startswith(workdir):
        os.remove(source)
    os.rmdir(workdir)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
