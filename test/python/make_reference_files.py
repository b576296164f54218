"""Writes safetensors files with the reference implementation, for the C++ tests to compare against.

Usage: make_reference_files.py OUT_DIR

For each case it writes OUT_DIR/<case>.safetensors with `safetensors.torch.save_file` and
OUT_DIR/<case>.json describing what was saved, independently of the file format: for every tensor
its torch dtype, shape and the hex of its bytes, plus the metadata given (or null).
Exits 77 when torch or safetensors is not installed (the C++ test then skips).
"""

import json
import os
import sys

try:
    import torch
    from safetensors.torch import save_file
except ImportError as e:  # pragma: no cover
    print(f"skipping: {e}", file=sys.stderr)
    sys.exit(77)


def random_tensor(dtype, shape, gen):
    """Random bytes of any dtype (NaN patterns included for floats)."""
    numel = 1
    for d in shape:
        numel *= d
    itemsize = torch.empty((), dtype=dtype).element_size() if dtype != torch.float4_e2m1fn_x2 else 1
    raw = torch.randint(0, 256, (numel * itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


def cases():
    gen = torch.Generator().manual_seed(1234)
    dtypes = [
        torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32,
        torch.int64, torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
        torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
        torch.float8_e5m2fnuz, torch.float8_e8m0fnu, torch.float4_e2m1fn_x2,
    ]
    yield "all_dtypes", {
        str(d).split(".")[-1]: random_tensor(d, (3, 4), gen) for d in dtypes
    }, {"format": "pt"}
    yield "edge_shapes", {
        "scalar": random_tensor(torch.float32, (), gen),
        "empty": random_tensor(torch.float32, (0,), gen),
        "empty_middle": random_tensor(torch.int64, (2, 0, 3), gen),
        "ones": random_tensor(torch.bfloat16, (1, 1, 1, 1, 5), gen),
        "long": random_tensor(torch.uint8, (100003,), gen),
        "f4_scalarish": random_tensor(torch.float4_e2m1fn_x2, (1,), gen),
    }, None
    yield "names", {
        "a": random_tensor(torch.float32, (2,), gen),
        "a.b": random_tensor(torch.float32, (2,), gen),
        "a0": random_tensor(torch.float32, (2,), gen),
        "B": random_tensor(torch.float32, (2,), gen),
        "é\"quoted\"\\/": random_tensor(torch.int16, (2,), gen),
        "日本語": random_tensor(torch.float16, (2, 2), gen),
    }, {"unicode ✓": "value with \"quotes\", \\ and\ttab\r\nnewlines"}
    # Control characters the reference writes and this library loads but refuses to write.
    yield "control_names", {
        "a\x00b": random_tensor(torch.float32, (2,), gen),
        "\n\t\x01\x1f\x7f\x85": random_tensor(torch.int16, (2,), gen),
    }, {"k\x00": "control \x07 chars"}
    yield "empty", {}, None
    yield "empty_metadata", {"x": random_tensor(torch.float32, (1,), gen)}, {}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, tensors, metadata in cases():
        save_file(tensors, os.path.join(out, name + ".safetensors"), metadata=metadata)
        described = {
            key: {
                "dtype": str(t.dtype).split(".")[-1],
                "shape": list(t.shape),
                "hex": t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
                if t.numel() else "",
            }
            for key, t in tensors.items()
        }
        with open(os.path.join(out, name + ".json"), "w", encoding="utf-8") as f:
            json.dump({"metadata": metadata, "tensors": described}, f, ensure_ascii=False)
    print(f"wrote reference files to {out}")


if __name__ == "__main__":
    main()
