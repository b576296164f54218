"""The Python API itself: signatures like the reference, zero-copy copy-on-write loading, lazy
slicing with torch's indexing semantics, handle lifetime, packaging."""

import importlib.metadata
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

import torch_safetensors
from conftest import (
    REF,
    SPEC_TO_TORCH,
    assert_bit_equal,
    assert_dicts_bit_equal,
    mapping_of,
    random_tensor,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ API surface


@pytest.mark.parametrize("name", ["load_file", "load", "save", "save_file", "save_model", "load_model"])
def test_signature_matches_reference(name):
    ours = inspect.signature(getattr(torch_safetensors, name))
    ref = inspect.signature(getattr(safetensors.torch, name))
    shape = lambda sig: [(p.name, p.kind, p.default) for p in sig.parameters.values()]  # noqa: E731
    # the reference's parameters exactly, then only keyword-only ones of ours with defaults
    # (save_file's durable)
    extra = shape(ours)[len(shape(ref)):]
    assert shape(ours)[: len(shape(ref))] == shape(ref)
    assert all(kind == inspect.Parameter.KEYWORD_ONLY and default is not inspect.Parameter.empty
               for _, kind, default in extra), extra


def test_public_names_are_documented():
    for name in torch_safetensors.__all__:
        obj = getattr(torch_safetensors, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
    for method in ("keys", "offset_keys", "metadata", "get_tensor", "get_tensors", "get_slice"):
        assert getattr(torch_safetensors.safe_open, method).__doc__, method
    assert (Path(torch_safetensors.__file__).parent / "py.typed").is_file()


def test_version():
    # One place: include/torch_safetensors/version.h, read by setup.py and compiled into _C.
    header = (Path(__file__).parents[2] / "include" / "torch_safetensors" / "version.h").read_text()
    parts = dict(re.findall(r"#define TORCH_SAFETENSORS_VERSION_(\w+) (\d+)", header))
    assert torch_safetensors.__version__ == "{MAJOR}.{MINOR}.{PATCH}".format(**parts)
    assert torch_safetensors._C.__version__ == torch_safetensors.__version__
    assert importlib.metadata.version("torch_safetensors") == torch_safetensors.__version__


def test_error_type():
    assert issubclass(torch_safetensors.SafetensorError, Exception)
    assert torch_safetensors.SafetensorError.__module__ == "torch_safetensors"


@pytest.mark.parametrize("where", ["tmp", "repo", "package", "tests"])
def test_import_from_any_directory(where, tmp_path):
    cwd = {"tmp": tmp_path, "repo": REPO, "package": REPO / "torch_safetensors",
           "tests": REPO / "test" / "python"}[where]
    code = ("import torch, torch_safetensors as t; "
            "assert t.load(t.save({'a': torch.ones(2)}))['a'].sum() == 2; print(t.__version__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == torch_safetensors.__version__


# ------------------------------------------------------------------ zero copy, copy-on-write


def _data_start(path):
    return 8 + int.from_bytes(Path(path).read_bytes()[:8], "little")


@pytest.fixture
def model_file(tmp_path):
    tensors = {
        "embed": random_tensor(torch.float32, (64, 32), seed=1),
        "bias": random_tensor(torch.bfloat16, (32,), seed=2),
        "ids": random_tensor(torch.int64, (7, 3), seed=3),
        "flag": random_tensor(torch.bool, (5,), seed=4),
    }
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(tensors, path)
    return path, tensors


def test_load_file_is_zero_copy_views_of_one_mapping(model_file):
    path, tensors = model_file
    loaded = torch_safetensors.load_file(path)
    assert_dicts_bit_equal(loaded, tensors)
    mappings = {mapping_of(t.data_ptr()) for t in loaded.values()}
    assert len(mappings) == 1
    start, _, file_offset, mapped_path = mappings.pop()
    assert os.path.realpath(mapped_path) == os.path.realpath(path)
    assert file_offset == 0
    # Each tensor points exactly at its bytes in the file...
    data_start = _data_start(path)
    with REF.safe_open(path, "pt") as f:
        order = f.offset_keys()
    offset = 0
    for name in order:
        assert loaded[name].data_ptr() - start == data_start + offset
        offset += loaded[name].nelement() * loaded[name].element_size()
    # ...and is its own storage (resizing or freeing one never affects another).
    storages = {t.untyped_storage().data_ptr() for t in loaded.values()}
    assert len(storages) == len(loaded)
    with torch_safetensors.safe_open(path) as f:
        assert mapping_of(f.get_tensor("embed").data_ptr())[3] == mapped_path
        assert mapping_of(f.get_slice("embed")[3:9, 2].data_ptr())[3] == mapped_path


def test_loaded_tensors_are_writable_copy_on_write(model_file):
    path, tensors = model_file
    before = path.read_bytes()
    loaded = torch_safetensors.load_file(path)
    with torch_safetensors.safe_open(path) as other:
        unchanged = other.get_tensor("embed")
        loaded["embed"].fill_(42.0)
        loaded["flag"].logical_not_()
        assert bool((loaded["embed"] == 42.0).all())
        assert_bit_equal(unchanged, tensors["embed"])  # another open of the file: untouched
    assert path.read_bytes() == before
    assert_dicts_bit_equal(torch_safetensors.load_file(path), tensors)


def test_tensors_outlive_handle_and_file(model_file, tmp_path):
    path, tensors = model_file
    with torch_safetensors.safe_open(path) as f:
        embed = f.get_tensor("embed")
        part = f.get_slice("ids")
    loaded = torch_safetensors.load_file(path)
    # Replacing the file (save is atomic: write + rename) and deleting it leave them intact.
    torch_safetensors.save_file({"embed": torch.zeros(64, 32)}, path)
    assert_dicts_bit_equal(loaded, tensors)
    os.remove(path)
    assert_bit_equal(embed, tensors["embed"])
    assert_bit_equal(part[1:3], tensors["ids"][1:3])  # slices stay usable after close, as in the reference


def test_pread_backend_owns_its_memory(model_file):
    path, tensors = model_file
    loaded = torch_safetensors.load_file(path, backend="pread")
    assert_dicts_bit_equal(loaded, tensors)
    for tensor in loaded.values():
        mapping = mapping_of(tensor.data_ptr())
        assert mapping is None or os.path.realpath(mapping[3]) != os.path.realpath(path)
    with torch_safetensors.safe_open(path, backend="pread") as f:
        rows = f.get_slice("embed")[10:12]
        assert_bit_equal(rows, tensors["embed"][10:12])
        os.remove(path)  # the handle keeps the file open: reads still work
        assert_bit_equal(f.get_tensor("bias"), tensors["bias"])


def test_save_over_mapped_file_keeps_old_views(tmp_path):
    path = tmp_path / "w.st"
    torch_safetensors.save_file({"w": torch.arange(1000, dtype=torch.float32)}, path)
    views = torch_safetensors.load_file(path)
    torch_safetensors.save_file({"w": views["w"] * 2}, path)  # reads the mapping while replacing the file
    assert torch.equal(views["w"], torch.arange(1000, dtype=torch.float32))
    assert torch.equal(torch_safetensors.load_file(path)["w"], torch.arange(1000, dtype=torch.float32) * 2)


# ------------------------------------------------------------------ safe_open


def test_keys_metadata_like_reference(model_file, tmp_path):
    path, tensors = model_file
    for metadata in (None, {}, {"format": "pt"}):
        target = tmp_path / "m.st"
        safetensors.torch.save_file(tensors, target, metadata=metadata)
        with torch_safetensors.safe_open(target, "pt") as ours, REF.safe_open(target, "pt") as ref:
            assert ours.keys() == ref.keys() == sorted(tensors)
            assert ours.offset_keys() == ref.offset_keys()
            assert ours.metadata() == ref.metadata() == metadata
            got = ours.get_tensors()
            assert list(got) == ref.offset_keys()
            assert_dicts_bit_equal(got, tensors)
            for name in tensors:
                assert ours.get_slice(name).get_shape() == ref.get_slice(name).get_shape()
                assert ours.get_slice(name).get_dtype() == ref.get_slice(name).get_dtype()


def test_closed_handle(model_file):
    path, _ = model_file
    with torch_safetensors.safe_open(path) as f:
        pass
    for call in (f.keys, f.offset_keys, f.metadata, f.get_tensors, lambda: f.get_tensor("bias"),
                 lambda: f.get_slice("bias")):
        with pytest.raises(torch_safetensors.SafetensorError, match="closed"):
            call()


def test_device_arguments(model_file):
    path, tensors = model_file
    for device in ("cpu", torch.device("cpu")):
        assert_dicts_bit_equal(torch_safetensors.load_file(path, device=device), tensors)
    with torch_safetensors.safe_open(path, framework="torch", device="cpu") as f:
        assert f.get_tensor("ids").device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_cuda_device(model_file, backend):
    path, tensors = model_file
    for device in ("cuda", "cuda:0", 0):
        loaded = torch_safetensors.load_file(path, device=device, backend=backend)
        ref = safetensors.torch.load_file(path, device=device, backend=backend)
        for name, tensor in loaded.items():
            assert tensor.device == torch.device("cuda", 0)
            assert_bit_equal(tensor.cpu(), tensors[name])
            assert_bit_equal(tensor.cpu(), ref[name].cpu())
    with torch_safetensors.safe_open(path, device="cuda:0", backend=backend) as f:
        part = f.get_slice("embed")[2:5, ::3]
        assert part.device.type == "cuda"
        assert_bit_equal(part.cpu(), tensors["embed"][2:5, ::3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_cuda_every_dtype_both_ways(tmp_path, backend):
    on_cpu = {spec: random_tensor(dtype, (4, 6), seed=i) for i, (spec, dtype) in enumerate(SPEC_TO_TORCH.items())}
    on_cuda = {name: tensor.cuda() for name, tensor in on_cpu.items()}
    torch_safetensors.save_file(on_cuda, tmp_path / "ours.safetensors")
    safetensors.torch.save_file(on_cpu, tmp_path / "ref.safetensors")
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert torch_safetensors.save(on_cuda) == (tmp_path / "ref.safetensors").read_bytes()
    loaded = torch_safetensors.load_file(tmp_path / "ref.safetensors", device="cuda", backend=backend)
    for name, tensor in on_cpu.items():
        assert loaded[name].is_cuda, name
        assert_bit_equal(loaded[name].cpu(), tensor)


# ------------------------------------------------------------------ slicing == torch indexing

SLICE_KEYS = [
    0, -1, 3, -4, 4, -5, 2**70,
    slice(None), slice(1, 3), slice(-2, None), slice(None, None, 2), slice(1, None, 3),
    slice(5, 10), slice(-100, 2), slice(3, 1), slice(0, 2**70), slice(None, None, -1),
    slice(None, None, 0), slice(1.5, 2),
    (0, 1), (0, 1, 2), (-1, -1, -1), (0, 5), (0, 0, 0, 0), (slice(1, 3), slice(None, None, 2), -1),
    (..., 1), (1, ...), (..., 1, ...), (None,), (None, 0), (0, None, slice(1, 3)), (), ...,
    True, False, (0, True), [0, 2], [[0, 1]], [], (slice(None), [0, 2]),
    torch.tensor([3, 0]), torch.tensor(2), torch.tensor([True, False, True, False]),
    np.int64(2), (np.int64(1), slice(None)), 1.5, "a", None,
]


def _outcome(fn):
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - comparing kinds
        return error


def _assert_same_outcome(ours, ref):
    if isinstance(ref, Exception):
        assert isinstance(ours, type(ref)), (ours, ref)
        return
    assert not isinstance(ours, Exception), ours
    assert_bit_equal(ours, ref)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
@pytest.mark.parametrize("backend", ["mmap", "pread"])
@pytest.mark.parametrize("key", SLICE_KEYS, ids=repr)
def test_get_slice_matches_reference(key, backend, tmp_path):
    tensors = {
        "t3": random_tensor(torch.float32, (4, 5, 6), seed=11),
        "scalar": random_tensor(torch.int16, (), seed=12),
        "empty": random_tensor(torch.float16, (0, 3), seed=13),
        "vec": random_tensor(torch.uint8, (4,), seed=14),
    }
    path = tmp_path / "s.st"
    safetensors.torch.save_file(tensors, path)
    # The reference slices with torch indexing on its mmap storage whatever backend is asked for
    # the result to match: compare against its default (mmap) behaviour.
    with torch_safetensors.safe_open(path, backend=backend) as ours, REF.safe_open(path, "pt") as ref:
        for name in tensors:
            mine = _outcome(lambda: ours.get_slice(name)[key])
            theirs = _outcome(lambda: ref.get_slice(name)[key])
            _assert_same_outcome(mine, theirs)
            plain = _outcome(lambda: tensors[name][key])
            _assert_same_outcome(mine, plain)  # and both are just torch indexing


def test_threads_load_and_save_concurrently(tmp_path):
    # The core runs without the GIL: concurrent loads and saves must not interfere.
    from concurrent.futures import ThreadPoolExecutor

    def work(i):
        tensors = {f"t{j}": random_tensor(torch.float32, (50, 40), seed=i * 100 + j) for j in range(8)}
        path = tmp_path / f"{i}.st"
        torch_safetensors.save_file(tensors, path)
        assert torch_safetensors.save(tensors) == path.read_bytes()
        for backend in ("mmap", "pread"):
            assert_dicts_bit_equal(torch_safetensors.load_file(path, backend=backend), tensors)
        return i

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sorted(pool.map(work, range(16))) == list(range(16))


def test_f4_slices_by_stored_elements(tmp_path):
    # The reference cannot slice F4 (it reshapes the packed storage to the logical shape and
    # fails); we index the float4_e2m1fn_x2 tensor, like get_tensor()[index].
    packed = random_tensor(torch.float4_e2m1fn_x2, (4, 3), seed=9)
    safetensors.torch.save_file({"w": packed}, tmp_path / "f4.st")
    with REF.safe_open(tmp_path / "f4.st", "pt") as f:
        with pytest.raises(RuntimeError):
            f.get_slice("w")[0]
    for backend in ("mmap", "pread"):
        with torch_safetensors.safe_open(tmp_path / "f4.st", backend=backend) as f:
            assert f.get_slice("w").get_shape() == [4, 6]
            assert_bit_equal(f.get_slice("w")[1:3], packed[1:3])
            assert_bit_equal(f.get_slice("w")[-1, ::2], packed[-1, ::2])
