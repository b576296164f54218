"""Converting a torch.save checkpoint to safetensors: `torch-safetensors convert` (the C++
restricted unpickler + save, called in this process through the extension) against
`torch.load` + the reference `safetensors.torch.save_file`, in the same run, for the checkpoint
(zip format, against `torch.load(weights_only=True)`) and the same tensors re-saved in the legacy
pre-1.6 format (`_use_new_zipfile_serialization=False`, against `torch.load(weights_only=False)`,
as such files are usually loaded), and a training checkpoint holding them (`{"state_dict": ...,
"optimizer": AdamW's state_dict, "epoch", "step"}`), converted with `--key state_dict` against
`torch.load(weights_only=False)["state_dict"]` + `save_file`.

    python3 bench/convert_bench.py                          # the bench/ Llama-like .pt if present
    python3 bench/convert_bench.py --checkpoint model.bin   # any torch.save file
    python3 bench/convert_bench.py --scale 0.1              # generate a smaller Llama-like one
    python3 bench/convert_bench.py --formats legacy         # only the legacy-format row
    python3 bench/convert_bench.py --formats training       # only the training-checkpoint row

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


def ours(source, target, key=None):
    code = cli.main(["convert", source, target] + (["--key", key] if key else []))
    assert code == 0, code


def ours_training(source, target):
    ours(source, target, key="state_dict")


def reference(source, target, weights_only=True):
    state = torch.load(source, weights_only=weights_only)
    save_file(state, target, metadata={"format": "pt"})


def training_reference(source, target):
    state = torch.load(source, weights_only=False)["state_dict"]
    save_file(state, target, metadata={"format": "pt"})


def legacy_reference(source, target):
    reference(source, target, weights_only=False)


def save_legacy(zip_source, path):
    torch.save(torch.load(zip_source, weights_only=True), path,
               _use_new_zipfile_serialization=False)


def save_training(zip_source, path):
    """The checkpoint's tensors as the model of a training checkpoint: AdamW's state (two moments
    a parameter, a step) and a few scalars beside it, as a training loop saves them."""
    state = torch.load(zip_source, weights_only=True)
    parameters = [torch.nn.Parameter(t) for t in state.values()]
    optimizer = torch.optim.AdamW(parameters)
    optimizer_state = optimizer.state_dict()
    optimizer_state["state"] = {
        index: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p)}
        for index, p in enumerate(parameters)}
    torch.save({"state_dict": state, "optimizer": optimizer_state, "epoch": 3, "step": 1000}, path)


def compare(source, workdir, label, reference_side, reps, ours_side=ours):
    """Times both sides on `source` (alternating, one warm-up); prints a row, returns whether the
    two outputs are byte-identical."""
    size = os.path.getsize(source)
    out_ours = os.path.join(workdir, "ours.safetensors")
    out_reference = os.path.join(workdir, "reference.safetensors")
    times = {"ours": [], "reference": []}
    sides = {"ours": (ours_side, out_ours), "reference": (reference_side, out_reference)}
    for rep in range(reps + 1):
        for name, (function, target) in sides.items():
            start = time.perf_counter()
            function(source, target)
            elapsed = time.perf_counter() - start
            if rep > 0:
                times[name].append(elapsed)
    ours_s = statistics.median(times["ours"])
    reference_s = statistics.median(times["reference"])
    reference_name = {reference: "torch.load(weights_only=True)",
                      legacy_reference: "torch.load(weights_only=False)",
                      training_reference: 'torch.load(weights_only=False)["state_dict"]'}[reference_side]
    print(f"{label} ({size / 1e9:.3f} GB):")
    print(f"  torch-safetensors convert:                        {ours_s:8.3f} s "
          f"({size / ours_s / 1e9:.2f} GB/s)")
    print(f"  {reference_name + ' + save_file:':48s} {reference_s:8.3f} s "
          f"({size / reference_s / 1e9:.2f} GB/s)")
    print(f"  ratio (reference / ours, > 1: ours faster):       {reference_s / ours_s:8.2f}x")
    identical = filecmp.cmp(out_ours, out_reference, shallow=False)
    print(f"  outputs byte-identical: {identical}")
    for path in (out_ours, out_reference):
        os.remove(path)
    return identical


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a torch.save file (default: bench/'s llama_bf16.pt)")
    parser.add_argument("--scale", type=float, help="generate a Llama-like checkpoint this size")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--formats", default="zip,legacy,training",
                        help="comma-separated: zip (the checkpoint), legacy (it re-saved in the "
                             "pre-1.6 format), training (it inside a training checkpoint with "
                             "AdamW's state, converted with --key state_dict)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="convert_bench_")
    source = args.checkpoint
    if source is None and args.scale is None and os.path.exists(DEFAULT):
        source = DEFAULT
    if source is None:
        source = os.path.join(workdir, "llama.pt")
        make_checkpoint(source, args.scale if args.scale is not None else 1.0)
    formats = args.formats.split(",")
    assert set(formats) <= {"zip", "legacy", "training"}, formats
    print(f"checkpoint: {source} ({os.path.getsize(source) / 1e9:.3f} GB), torch "
          f"{torch.__version__}, {os.cpu_count()} cores, medians of {args.reps} after one warm-up")
    identical = True
    if "zip" in formats:
        identical &= compare(source, workdir, "zip format", reference, args.reps)
    if "legacy" in formats:
        legacy = os.path.join(workdir, "legacy.pt")
        save_legacy(source, legacy)
        identical &= compare(legacy, workdir, "legacy format", legacy_reference, args.reps)
        os.remove(legacy)
    if "training" in formats:
        training = os.path.join(workdir, "training.pt")
        save_training(source, training)
        identical &= compare(training, workdir, "training checkpoint, --key state_dict",
                             training_reference, args.reps, ours_side=ours_training)
        os.remove(training)
    if source.startswith(workdir):
        os.remove(source)
    os.rmdir(workdir)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
