"""safetensors -> ExecuTorch .ptd: torch_safetensors.executorch.save_ptd (C++, streaming from the
mapping) against ExecuTorch's own Python FlatTensorSerializer (the tensors loaded with
safetensors, one buffer and TensorLayout each, serialized, written). Both outputs are checked to
deserialize to the same keys, layouts and bytes.

    python3 bench/ptd_bench.py [--mb 512] [--tensors 128] [--reps 5] [--workdir /dev/shm]

Needs the executorch package (scripts/setup.sh installs it). Writes to a temporary folder in
--workdir: a tmpfs (/dev/shm) keeps disk writeback, which a 2-core CI machine shares with other
jobs, out of the numbers. Each side runs once untimed first (imports, page cache).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import safetensors.torch
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from torch_safetensors import executorch as ts_et  # noqa: E402


def executorch_convert(src, dst):
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.exir.scalar_type import ScalarType
    from executorch.exir.tensor_layout import TensorLayout
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    codes = {torch.float32: ScalarType.FLOAT, torch.bfloat16: ScalarType.BFLOAT16}
    tensors = safetensors.torch.load_file(src)
    buffers, named = [], {}
    for i, (name, t) in enumerate(tensors.items()):
        buffers.append(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        named[name] = DataEntry(i, 1, TensorLayout(codes[t.dtype], list(t.shape),
                                                   list(range(t.dim()))))
    blob = FlatTensorSerializer().serialize(DataPayload(buffers=buffers, named_data=named))
    with open(dst, "wb") as f:
        blob.write_to_file(f) if hasattr(blob, "write_to_file") else f.write(bytes(blob))


def timed(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--tensors", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    numel = max(args.mb * (1 << 20) // 2 // args.tensors // 256, 1) * 256
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        src = os.path.join(d, "w.safetensors")
        safetensors.torch.save_file(
            {f"layers.{i}.weight": torch.randn(numel).to(torch.bfloat16).reshape(-1, 256)
             for i in range(args.tensors)}, src)
        size = os.path.getsize(src)
        ours = os.path.join(d, "ours.ptd")
        theirs = os.path.join(d, "theirs.ptd")
        t_ours = timed(lambda: ts_et.save_ptd(src, ours), args.reps)
        t_theirs = timed(lambda: executorch_convert(src, theirs), args.reps)
        a, b = ts_et.load_ptd(ours), ts_et.load_ptd(theirs)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
        print(f"{args.tensors} BF16 tensors, {size / 1e6:.0f} MB, median of {args.reps}")
        print(f"  torch_safetensors save_ptd      {t_ours:7.3f} s  {size / t_ours / 1e9:6.2f} GB/s")
        print(f"  executorch FlatTensorSerializer {t_theirs:7.3f} s  "
              f"{size / t_theirs / 1e9:6.2f} GB/s  ({t_theirs / t_ours:.1f}x slower)")


if __name__ == "__main__":
    main()
