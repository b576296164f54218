"""Shared helpers for the interop tests: the two libraries side by side, dtype tables, random
tensors with arbitrary bit patterns, and bit-exact comparison."""

import types

import pytest
import safetensors
import safetensors.torch
import torch

import torch_safetensors

# Both libraries behind one interface, so a test body can run against either.
REF = types.SimpleNamespace(
    name="reference",
    load=safetensors.torch.load,
    load_file=safetensors.torch.load_file,
    save=safetensors.torch.save,
    save_file=safetensors.torch.save_file,
    save_model=safetensors.torch.save_model,
    load_model=safetensors.torch.load_model,
    safe_open=safetensors.safe_open,
    SafetensorError=safetensors.SafetensorError,
)
OURS = types.SimpleNamespace(
    name="ours",
    load=torch_safetensors.load,
    load_file=torch_safetensors.load_file,
    save=torch_safetensors.save,
    save_file=torch_safetensors.save_file,
    save_model=torch_safetensors.save_model,
    load_model=torch_safetensors.load_model,
    safe_open=torch_safetensors.safe_open,
    SafetensorError=torch_safetensors.SafetensorError,
)

# Spec dtype -> torch dtype, for every spec dtype torch can express (F6_E2M3/F6_E3M2 cannot).
SPEC_TO_TORCH = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
    "F4": torch.float4_e2m1fn_x2,
}
ALL_SPEC_DTYPES = list(SPEC_TO_TORCH) + ["F6_E2M3", "F6_E3M2"]
# `safetensors.torch.load(bytes)` (not load_file) lacks these in its dtype table: KeyError.
REF_LOAD_BYTES_LACKS = {"F4", "F8_E8M0"}


def random_tensor(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    """A tensor whose bytes are random: every bit pattern, NaNs and all (bools stay 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    numel = 1
    for size in shape:
        numel *= size
    if dtype == torch.bool:
        return torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.uint8).bool()
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (numel * itemsize,), generator=gen, dtype=torch.uint8)
    return raw.view(dtype).reshape(tuple(shape))


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes in logical order (works for 0-d and packed dtypes too)."""
    if tensor.nelement() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def assert_bit_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # Never `==`: random float bits include NaNs.
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert tuple(actual.shape) == tuple(expected.shape), (actual.shape, expected.shape)
    assert torch.equal(as_bytes(actual), as_bytes(expected))


def mapping_of(address):
    """(start, end, file offset, path) of the mapping of this process holding `address`."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                path = fields[5].strip() if len(fields) > 5 else ""
                return start, end, int(fields[2], 16), path
    return None


def assert_dicts_bit_equal(actual, expected) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert_bit_equal(actual[name], expected[name])


@pytest.fixture(params=[REF, OURS], ids=lambda lib: lib.name)
def writer(request):
    return request.param


@pytest.fixture(params=[REF, OURS], ids=lambda lib: lib.name)
def reader(request):
    return request.param
