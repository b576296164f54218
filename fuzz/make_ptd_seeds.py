"""Writes fuzz/seeds_ptd: .ptd files for fuzz_ptd. Ours (torch_safetensors.executorch), ExecuTorch's
own serializer's (when the executorch package is installed: shared segments, opaque named data
without a layout, a channels-last dim_order), and broken ones (truncated, bad identifier, offsets
past the end).

    PYTHONPATH=. python3 fuzz/make_ptd_seeds.py
"""
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from torch_safetensors import executorch as ts_et  # noqa: E402

OUT = os.path.join(ROOT, "fuzz", "seeds_ptd")


def ours(tensors, **options):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.ptd")
        ts_et.save_ptd(tensors, path, **options)
        with open(path, "rb") as f:
            return f.read()


def theirs():
    """ExecuTorch's serializer: shared segments, an opaque blob, a channels-last layout."""
    try:
        from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
        from executorch.exir.scalar_type import ScalarType
        from executorch.exir.tensor_layout import TensorLayout
        from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer
    except ImportError as error:
        print(f"executorch not installed, skipping its seeds: {error}")
        return {}
    w = torch.arange(24, dtype=torch.float32)
    payload = DataPayload(
        buffers=[w.numpy().tobytes(), b"opaque delegate blob"],
        named_data={
            "w": DataEntry(0, 1, TensorLayout(ScalarType.FLOAT, [2, 3, 4], [0, 1, 2])),
            "w_tied": DataEntry(0, 1, TensorLayout(ScalarType.FLOAT, [2, 3, 4], [0, 1, 2])),
            "w_cl": DataEntry(0, 16, TensorLayout(ScalarType.FLOAT, [1, 2, 3, 4], [0, 2, 3, 1])),
            "blob": DataEntry(1, 1, None),
        })
    return {"executorch_shared_opaque_channels_last.ptd":
            bytes(FlatTensorSerializer().serialize(payload))}


def main():
    os.makedirs(OUT, exist_ok=True)
    sample = {"linear.weight": torch.randn(3, 4), "linear.bias": torch.randn(3),
              "steps": torch.tensor(7)}
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.float16,
              torch.bfloat16, torch.int32, torch.uint32, torch.float32, torch.float64,
              torch.int64, torch.uint64, torch.float8_e5m2, torch.float8_e4m3fn]
    seeds = {
        "ok_sample.ptd": ours(sample),
        "ok_empty.ptd": ours({}),
        "ok_every_dtype.ptd": ours({str(d): torch.arange(4).to(d) for d in dtypes}),
        "ok_alignment_16.ptd": ours(sample, alignment=16),
        "ok_zero_sized.ptd": ours({"z": torch.zeros(0, 3), "s": torch.zeros(())}),
    }
    seeds.update(theirs())
    good = seeds["ok_sample.ptd"]
    seeds.update({
        "bad_truncated_header.ptd": good[:30],
        "bad_truncated_data.ptd": good[:-1],
        "bad_identifier.ptd": good[:4] + b"FT02" + good[8:],
        "bad_magic.ptd": good[:8] + b"XH01" + good[12:],
        "bad_flatbuffer_size.ptd": good[:24] + (1 << 40).to_bytes(8, "little") + good[32:],
        "bad_segment_base.ptd": good[:32] + (2**64 - 8).to_bytes(8, "little") + good[40:],
        "bad_root_offset.ptd": (len(good) + 4).to_bytes(4, "little") + good[4:],
    })
    for name, data in sorted(seeds.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
