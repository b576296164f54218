"""ExecuTorch packaging (torch_safetensors.executorch, the CLI's convert --to ptd): .ptd round
trips, names, dtypes ExecuTorch lacks, bad input; against the executorch package where it is installed
(scripts/setup.sh installs it; otherwise those tests skip): its FlatTensor deserializer reads our
.ptd, its serializer's output matches ours, we read its .ptd, and its runtime runs an exported
program with our .ptd, giving eager PyTorch's output with new weights."""

import os
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import torch_safetensors
from torch_safetensors import executorch as ts_et
from torch_safetensors._extension import _C

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(torch_safetensors.__file__)))
sys.path.insert(0, HERE)
import make_executorch_program  # noqa: E402

try:
    from executorch.exir._serialize._cord import Cord
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.exir.tensor_layout import TensorLayout
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer
    HAVE_EXECUTORCH = True
    WHY_NOT = ""
except ImportError as error:  # the package or what its serializer imports
    HAVE_EXECUTORCH = False
    WHY_NOT = f"the executorch package is not installed (scripts/setup.sh installs it): {error}"

# ExecuTorch's exporter and serializer warn about their own deprecated calls.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore:This API is experimental")

needs_executorch = pytest.mark.skipif(not HAVE_EXECUTORCH, reason=WHY_NOT or "executorch")

# ExecuTorch's codes (scalar_type.fbs) of the torch dtypes it has.
CODES = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4,
         torch.float16: 5, torch.float32: 6, torch.float64: 7, torch.bool: 11,
         torch.bfloat16: 15, torch.float8_e5m2: 23, torch.float8_e4m3fn: 24,
         torch.float8_e5m2fnuz: 25, torch.float8_e4m3fnuz: 26, torch.uint16: 27,
         torch.uint32: 28, torch.uint64: 29}


def sample():
    return {"linear.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
            "linear.bias": torch.tensor([1.5, -2.5, 3.5]),
            "steps": torch.tensor(7)}


def all_dtypes():
    return {f"t.{str(dtype)[6:]}": torch.arange(6).reshape(2, 3).to(dtype) for dtype in CODES}


def same_bits(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape and
            torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                        b.contiguous().reshape(-1).view(torch.uint8)))


def test_round_trip_every_dtype(tmp_path):
    tensors = all_dtypes()
    path = tmp_path / "all.ptd"
    assert ts_et.save_ptd(tensors, path) == len(tensors)
    loaded = ts_et.load_ptd(path)
    assert list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        assert same_bits(loaded[name], tensor), name
    info = ts_et.ptd_info(path)
    for name, tensor in tensors.items():
        assert info[name]["executorch_scalar_type"] == CODES[tensor.dtype]
        assert info[name]["sizes"] == [2, 3] and info[name]["dim_order"] == [0, 1]
        assert info[name]["offset"] % 128 == 0


def test_from_a_checkpoint_with_names(tmp_path):
    safetensors.torch.save_file({"model." + k: v for k, v in sample().items()},
                                tmp_path / "w.safetensors")
    ts_et.save_ptd(tmp_path / "w.safetensors", tmp_path / "w.ptd", strip_prefix="model.",
                   rename={"model.steps": "n"}, alignment=64)
    loaded = ts_et.load_ptd(tmp_path / "w.ptd")
    assert sorted(loaded) == ["linear.bias", "linear.weight", "n"]
    assert torch.equal(loaded["linear.weight"], sample()["linear.weight"])
    assert all(i["offset"] % 64 == 0 for i in ts_et.ptd_info(tmp_path / "w.ptd").values())
    # and back
    assert ts_et.ptd_to_safetensors(tmp_path / "w.ptd", tmp_path / "back.safetensors",
                                    {"from": "ptd"}) == 3
    back = safetensors.torch.load_file(tmp_path / "back.safetensors")
    assert same_bits(back["n"], sample()["steps"])


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float4_e2m1fn_x2,
                                   torch.float8_e8m0fnu])
def test_dtypes_executorch_lacks(tmp_path, dtype):
    tensors = {"ok": torch.ones(2), "bad": torch.zeros(4, dtype=torch.uint8).view(dtype)
               if dtype == torch.float4_e2m1fn_x2 else torch.zeros(4).to(dtype)}
    with pytest.raises(torch_safetensors.SafetensorError,
                       match="tensor 'bad' has dtype .*, which ExecuTorch cannot express"):
        ts_et.save_ptd(tensors, tmp_path / "x.ptd")
    assert not (tmp_path / "x.ptd").exists()


def test_bad_input(tmp_path):
    ts_et.save_ptd(sample(), tmp_path / "good.ptd")
    good = (tmp_path / "good.ptd").read_bytes()
    cases = {
        "truncated header": good[:30],
        "lies outside the file of": good[:-1],
        "not an ExecuTorch .ptd file": b"\0" * 4 + b"XX01" + good[8:],
    }
    for message, data in cases.items():
        (tmp_path / "bad.ptd").write_bytes(data)
        with pytest.raises(torch_safetensors.SafetensorError, match=message):
            ts_et.load_ptd(tmp_path / "bad.ptd")
    with pytest.raises(FileNotFoundError):
        ts_et.load_ptd(tmp_path / "missing.ptd")


def test_cli_to_ptd_and_back(tmp_path, capfd):
    safetensors.torch.save_file(sample(), tmp_path / "w.safetensors")
    # As a user runs it, once; then in this process (the same C++ through the extension).
    done = subprocess.run(
        [sys.executable, "-m", "torch_safetensors", "convert", str(tmp_path / "w.safetensors"),
         str(tmp_path / "w.ptd"), "--to", "ptd"], env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT),
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 tensors (.ptd for ExecuTorch)" in done.stdout
    assert ts_et.ptd_info(tmp_path / "w.ptd")["steps"]["executorch_scalar_type"] == 4

    def cli(*args):
        code = _C.cli_main([str(a) for a in args])
        out, err = capfd.readouterr()
        return code, out, err

    code, out, err = cli("convert", tmp_path / "w.ptd", tmp_path / "back.safetensors")
    assert code == 0 and "3 tensors (.ptd to safetensors)" in out, err
    back = safetensors.torch.load_file(tmp_path / "back.safetensors")
    assert all(same_bits(back[k], v) for k, v in sample().items())
    code, _, err = cli("convert", tmp_path / "w.safetensors", tmp_path / "x.ptd", "--to", "onnx")
    assert code == 2 and "--to must be safetensors or ptd" in err
    code, _, err = cli("convert", tmp_path / "w.safetensors", tmp_path / "x.ptd", "--to", "ptd",
                       "--alignment", "100")
    assert code == 1 and "alignment must be a power of two" in err
    code, _, err = cli("convert", tmp_path / "w.ptd", tmp_path / "y.safetensors", "--dtype", "bf16")
    assert code == 2 and "do not apply to a .ptd input" in err


# ---- against the executorch package ----

def executorch_payload(tensors):
    """What ExecuTorch's own serializer takes: one buffer per tensor, its layout."""
    from executorch.exir.scalar_type import ScalarType

    buffers, named = [], {}
    for i, (name, tensor) in enumerate(tensors.items()):
        buffers.append(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        layout = TensorLayout(ScalarType(CODES[tensor.dtype]), list(tensor.shape),
                              list(range(tensor.dim())))
        named[name] = DataEntry(buffer_index=i, alignment=1, tensor_layout=layout)
    return DataPayload(buffers=buffers, named_data=named)


def deserialized(data):
    payload = FlatTensorSerializer().deserialize(Cord(data))
    return {key: (entry.tensor_layout, bytes(payload.buffers[entry.buffer_index]))
            for key, entry in payload.named_data.items()}


@needs_executorch
def test_executorch_deserializer_reads_ours(tmp_path):
    tensors = {**all_dtypes(), **sample(), "empty": torch.zeros(0, 3)}
    ts_et.save_ptd(tensors, tmp_path / "ours.ptd")
    ours = deserialized((tmp_path / "ours.ptd").read_bytes())
    assert list(ours) == list(tensors)
    for name, tensor in tensors.items():
        layout, data = ours[name]
        assert int(layout.scalar_type) == CODES[tensor.dtype], name
        assert list(layout.sizes) == list(tensor.shape) and list(layout.dim_order) == list(
            range(tensor.dim()))
        assert data == tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@needs_executorch
def test_same_file_as_executorch_serializer(tmp_path):
    """Deserializer-level equality, the same header numbers and byte-identical segment data; only
    the flatbuffer's internal arrangement (flatc's, ours) may differ."""
    tensors = {**sample(), **all_dtypes()}
    theirs = bytes(FlatTensorSerializer().serialize(executorch_payload(tensors)))
    ts_et.save_ptd(tensors, tmp_path / "ours.ptd")
    ours = (tmp_path / "ours.ptd").read_bytes()
    assert deserialized(ours) == deserialized(theirs)

    def header(data):
        return [int.from_bytes(data[at:at + 8], "little") for at in (16, 24, 32, 40)]

    (their_fb_offset, _, their_base, their_size) = header(theirs)
    (our_fb_offset, _, our_base, our_size) = header(ours)
    assert ours[4:12] == theirs[4:12] == b"FT01FH01"
    assert (our_fb_offset, our_size) == (their_fb_offset, their_size)
    assert ours[our_base:] == theirs[their_base:]
    assert len(ours) - our_base == len(theirs) - their_base


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """An exported program, its reference .ptd and new weights (make_executorch_program.py)."""
    if not HAVE_EXECUTORCH:
        pytest.skip(WHY_NOT)
    folder = tmp_path_factory.mktemp("program")
    assert make_executorch_program.main(str(folder)) == 0
    return folder


def test_we_read_executorch_ptd(program):
    loaded = ts_et.load_ptd(program / "reference.ptd")
    original = safetensors.torch.load_file(program / "original.safetensors")
    assert sorted(loaded) == sorted(original)
    for name, tensor in original.items():
        assert same_bits(loaded[name], tensor), name


def test_program_runs_with_our_ptd(program, tmp_path):
    """Export with external constants; new weights as safetensors; our .ptd through ExecuTorch's
    runtime (its Python binding) gives eager PyTorch's output with the new weights."""
    try:
        from executorch.extension.pybindings.portable_lib import _load_for_executorch
    except ImportError as error:
        pytest.skip(f"ExecuTorch's runtime binding does not load: {error}")
    ts_et.save_ptd(program / "weights.safetensors", tmp_path / "ours.ptd")
    io = safetensors.torch.load_file(program / "io.safetensors")
    module = _load_for_executorch(str(program / "model.pte"), str(tmp_path / "ours.ptd"))
    (y,) = module.forward([io["x"]])
    torch.testing.assert_close(y, io["y"])
    assert not torch.allclose(io["y"], io["y_original"])
    # ExecuTorch's own .ptd of the original weights, for contrast.
    module = _load_for_executorch(str(program / "model.pte"), str(program / "reference.ptd"))
    torch.testing.assert_close(module.forward([io["x"]])[0], io["y_original"])
