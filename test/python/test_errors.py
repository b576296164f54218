"""Every error a user can trigger from Python, run through both libraries: ours raises the same
kind (SafetensorError where the reference raises its SafetensorError, else the same built-in
exception type or a subclass), with a message that says what is wrong and no C++ backtrace."""

import errno
import json
import os
import pickle
import re
import struct

import pytest
import torch

from conftest import OURS, REF

T = torch.arange(6, dtype=torch.float32).reshape(2, 3)


def _file(header, data=b"", length=None):
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


F32_1 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}

# name -> (bytes of a bad file, regex our message must match besides the file name)
BAD_FILES = {
    "empty-file": (b"", "too small"),
    "short-file": (b"abc", "too small"),
    "length-beyond-file": (_file({"a": F32_1}, b"\0" * 4, length=1000), "header length 1000"),
    "length-huge": (_file({}, length=2**63), "exceeds"),
    "length-over-limit": (_file({}, length=100_000_001), "exceeds"),
    "bad-json": (_file(b"{not json}"), "JSON"),
    "not-utf8": (_file(b'{"\xff":1}'), "UTF-8"),
    "not-object": (_file(b"[]"), "object"),
    "empty-header": (_file(b""), "JSON"),
    "trailing-nul": (_file(b"{}\0\0"), "not valid JSON: it is padded with NUL bytes"),
    "unknown-dtype": (_file({"a": {**F32_1, "dtype": "F33"}}, b"\0" * 4), "'a'.*F33"),
    "lowercase-dtype": (_file({"a": {**F32_1, "dtype": "f32"}}, b"\0" * 4), "'a'.*f32"),
    "shape-size-mismatch": (_file({"a": {**F32_1, "shape": [2]}}, b"\0" * 4), "'a'"),
    "negative-shape": (_file({"a": {**F32_1, "shape": [-1]}}, b"\0" * 4), "'a'"),
    "float-shape": (_file({"a": {**F32_1, "shape": [1.0]}}, b"\0" * 4), "'a'"),
    "overflowing-shape": (_file({"a": {**F32_1, "shape": [2**40, 2**40]}}, b"\0" * 4), "'a'"),
    "gap-before-data": (_file({"a": {**F32_1, "data_offsets": [4, 8]}}, b"\0" * 8), "'a'"),
    "overlap": (_file({"a": F32_1, "b": F32_1}, b"\0" * 4), "'b'"),
    "reversed-offsets": (_file({"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}, b"\0" * 4), "'a'"),
    "three-offsets": (_file({"a": {**F32_1, "data_offsets": [0, 4, 8]}}, b"\0" * 4), "'a'"),
    "missing-offsets": (_file({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "'a'"),
    "tensor-not-object": (_file({"a": 1}), "'a'"),
    "metadata-not-string": (_file({"__metadata__": {"k": 1}}), "__metadata__"),
    "metadata-not-object": (_file({"__metadata__": "x"}), "__metadata__"),
    "trailing-bytes": (_file({"a": F32_1}, b"\0" * 8), "trailing"),
    "truncated-data": (_file({"a": F32_1}, b"\0" * 2), "'a'"),
    "duplicate-name": (_file(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                             b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"\0\0"), "'a'"),
    "f6-not-whole-bytes": (_file({"a": {**F32_1, "dtype": "F6_E2M3", "shape": [3],
                                        "data_offsets": [0, 3]}}, b"\0" * 3), "'a'"),
    "f4-not-whole-bytes": (_file({"a": {**F32_1, "dtype": "F4", "shape": [3],
                                        "data_offsets": [0, 2]}}, b"\0" * 2), "'a'"),
}


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.b.weight = self.a.weight


class Overlapping(torch.nn.Module):
    """Two parameters over one buffer, neither covering it: no name can be kept."""

    def __init__(self):
        super().__init__()
        buffer = torch.zeros(10)
        self.x = torch.nn.Parameter(buffer[:6])
        self.y = torch.nn.Parameter(buffer[4:])


def _write(tmp_path, name, blob):
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def _good(lib, tmp_path):
    path = tmp_path / "good.st"
    REF.save_file({"a": T, "b": torch.ones(3, dtype=torch.int64)}, path, metadata={"x": "y"})
    return path


def _closed(lib, tmp_path):
    with lib.safe_open(_good(lib, tmp_path), "pt") as f:
        pass
    return f


def _load_model_with(lib, tmp_path, model, tensors):
    path = tmp_path / "m.st"
    REF.save_file(tensors, path)
    lib.load_model(model, path)


x = torch.arange(10.0)
CHANNELS_LAST = torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last)


def Z(dtype, shape=(2,)):  # noqa: N802 - short, table-friendly
    return torch.zeros(shape, dtype=dtype)


def _quint8():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized dtypes are deprecated
        return torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.quint8)


QUINT8 = _quint8()
# name -> (callable(lib, tmp_path), regex our message must match or None)
CASES = {
    # ---- save / save_file arguments
    "save-not-dict": (lambda lib, p: lib.save([T]), "dict"),
    "save_file-not-dict": (lambda lib, p: lib.save_file([T], p / "o.st"), "dict"),
    "value-not-tensor": (lambda lib, p: lib.save({"a": 1}), "`a`"),
    "key-not-str": (lambda lib, p: lib.save({1: T}), "str"),
    "sparse-coo": (lambda lib, p: lib.save({"a": T.to_sparse()}), "sparse"),
    "sparse-csr": (lambda lib, p: lib.save({"a": T.to_sparse_csr()}), "sparse"),
    "non-contiguous-transpose": (lambda lib, p: lib.save({"a": T.t()}), "contiguous.*`a`"),
    "non-contiguous-step": (lambda lib, p: lib.save_file({"a": T[:, ::2]}, p / "o.st"), "contiguous"),
    "channels-last": (lambda lib, p: lib.save({"a": CHANNELS_LAST}), "contiguous"),
    "shared-same-tensor": (lambda lib, p: lib.save({"a": T, "b": T}), "share memory"),
    "shared-view": (lambda lib, p: lib.save({"a": T, "b": T[0]}), "share memory"),
    "shared-partial-overlap": (lambda lib, p: lib.save({"a": x[:6], "b": x[4:]}), "share memory"),
    "unsupported-dtype-complex128": (lambda lib, p: lib.save({"a": Z(torch.complex128)}), "complex128"),
    "unsupported-dtype-complex32": (lambda lib, p: lib.save({"a": Z(torch.complex32)}), "complex32"),
    "unsupported-dtype-quint8": (lambda lib, p: lib.save({"a": QUINT8}), "quint8"),
    "meta-tensor": (lambda lib, p: lib.save({"a": torch.zeros(2, device="meta")}), "^Cannot copy out of meta tensor; no data!$"),
    "f4-scalar": (lambda lib, p: lib.save({"a": Z(torch.uint8, ()).view(torch.float4_e2m1fn_x2)}), "0-d"),
    # ---- several problems at once: the reference's order decides which one is raised
    "sparse-before-value-check": (lambda lib, p: lib.save({"a": T.to_sparse(), "b": T, "c": T[0]}), "sparse"),
    "shared-before-meta": (lambda lib, p: lib.save({"m": torch.zeros(2, device="meta"), "a": T, "b": T}), "share"),
    "shared-before-dtype": (lambda lib, p: lib.save({"q": Z(torch.complex128), "a": x, "b": x[1:]}), "share"),
    "meta-then-non-contiguous": (lambda lib, p: lib.save({"m": torch.zeros(2, device="meta"), "t": T.t()}), "meta"),
    "non-contiguous-then-meta": (lambda lib, p: lib.save({"t": T.t(), "m": torch.zeros(2, device="meta")}), "contiguous"),
    "non-contiguous-meta": (lambda lib, p: lib.save({"m": torch.zeros(2, 3, device="meta").t()}), "contiguous"),
    "dtype-then-meta": (lambda lib, p: lib.save({"q": Z(torch.complex128), "m": torch.zeros(2, device="meta")}), "complex128"),
    "meta-before-its-dtype": (lambda lib, p: lib.save({"m": torch.zeros(2, device="meta", dtype=torch.complex128)}), "meta"),
    "f4-scalar-after-dtype": (lambda lib, p: lib.save({"a": Z(torch.uint8, ()).view(torch.float4_e2m1fn_x2), "q": Z(torch.complex128)}), "complex128"),
    "f4-scalar-after-non-contiguous": (lambda lib, p: lib.save({"a": Z(torch.uint8, ()).view(torch.float4_e2m1fn_x2), "t": T.t()}), "contiguous"),
    "metadata-not-dict": (lambda lib, p: lib.save({"a": T}, metadata=[("a", "b")]), "metadata"),
    "metadata-int-value": (lambda lib, p: lib.save({"a": T}, metadata={"a": 1}), "metadata"),
    "metadata-bytes-value": (lambda lib, p: lib.save({"a": T}, metadata={"a": b"x"}), "metadata"),
    "metadata-int-key": (lambda lib, p: lib.save({"a": T}, metadata={1: "x"}), "metadata"),
    "save_file-missing-dir": (lambda lib, p: lib.save_file({"a": T}, p / "no" / "dir" / "o.st"), "o.st"),
    "save_file-into-directory": (lambda lib, p: lib.save_file({"a": T}, p), None),
    "save_file-int-path": (lambda lib, p: lib.save_file({"a": T}, 123), "int"),
    "save_file-bytes-path": (lambda lib, p: lib.save_file({"a": T}, str(p / "o.st").encode()), "bytes"),
    # ---- load / load_file / safe_open arguments
    "load_file-missing": (lambda lib, p: lib.load_file(p / "missing.st"), "missing.st"),
    "load_file-directory": (lambda lib, p: lib.load_file(p), None),
    "load_file-int-path": (lambda lib, p: lib.load_file(3), "int"),
    "load-str": (lambda lib, p: lib.load("abc"), "bytes"),
    "load-bytearray": (lambda lib, p: lib.load(bytearray(REF.save({"a": T}))), "bytes"),
    "load-memoryview": (lambda lib, p: lib.load(memoryview(REF.save({"a": T}))), "bytes"),
    "safe_open-missing": (lambda lib, p: lib.safe_open(p / "missing.st", "pt"), "missing.st"),
    "framework-invalid": (lambda lib, p: lib.safe_open(_good(lib, p), "xx"), "framework"),
    "framework-not-str": (lambda lib, p: lib.safe_open(_good(lib, p), 1), "framework"),
    "framework-checked-before-file": (lambda lib, p: lib.safe_open(p / "missing.st", "xx"), "framework"),
    "device-invalid": (lambda lib, p: lib.safe_open(_good(lib, p), "pt", device="foo"), "foo"),
    "device-bad-index": (lambda lib, p: lib.safe_open(_good(lib, p), "pt", device="cuda:x"), "digit"),
    "device-two-colons": (lambda lib, p: lib.safe_open(_good(lib, p), "pt", device="cuda:1:2"), "invalid"),
    "device-negative": (lambda lib, p: lib.safe_open(_good(lib, p), "pt", device=-1), "-1"),
    "device-float": (lambda lib, p: lib.safe_open(_good(lib, p), "pt", device=1.5), "1.5"),
    "device-mps-index": (lambda lib, p: lib.safe_open(_good(lib, p), "pt", device="mps:1"), "mps"),
    "load_file-device-invalid": (lambda lib, p: lib.load_file(_good(lib, p), device="gpu"), "gpu"),
    "backend-invalid": (lambda lib, p: lib.safe_open(_good(lib, p), "pt", backend="io_uring"), "io_uring"),
    "backend-not-str": (lambda lib, p: lib.safe_open(_good(lib, p), "pt", backend=1), "backend"),
    "load_file-backend-invalid": (lambda lib, p: lib.load_file(_good(lib, p), backend="x"), "backend"),
    "get_tensor-missing": (lambda lib, p: lib.safe_open(_good(lib, p), "pt").get_tensor("zz"), "'zz'"),
    "get_tensor-int-name": (lambda lib, p: lib.safe_open(_good(lib, p), "pt").get_tensor(1), "name"),
    "get_slice-missing": (lambda lib, p: lib.safe_open(_good(lib, p), "pt").get_slice("zz"), "'zz'"),
    "get_slice-int-name": (lambda lib, p: lib.safe_open(_good(lib, p), "pt").get_slice(1), "name"),
    "closed-keys": (lambda lib, p: _closed(lib, p).keys(), "closed"),
    "closed-get_tensor": (lambda lib, p: _closed(lib, p).get_tensor("a"), "closed"),
    "closed-get_slice": (lambda lib, p: _closed(lib, p).get_slice("a"), "closed"),
    "closed-metadata": (lambda lib, p: _closed(lib, p).metadata(), "closed"),
    "closed-get_tensors": (lambda lib, p: _closed(lib, p).get_tensors(), "closed"),
    "slice-out-of-range": (lambda lib, p: lib.safe_open(_good(lib, p), "pt").get_slice("a")[2], "out of bounds"),
    "slice-too-many": (lambda lib, p: lib.safe_open(_good(lib, p), "pt").get_slice("a")[0, 0, 0], "too many"),
    "slice-negative-step": (lambda lib, p: lib.safe_open(_good(lib, p), "pt").get_slice("a")[::-1], "step"),
    "slice-float": (lambda lib, p: lib.safe_open(_good(lib, p), "pt").get_slice("a")[1.5], None),
    # ---- models
    "save_model-non-contiguous": (lambda lib, p: _save_transposed(lib, p), "force_contiguous"),
    "save_model-no-complete-name": (lambda lib, p: lib.save_model(Overlapping(), p / "m.st"),
                                    "amongst"),
    "save_model-metadata-type": (lambda lib, p: lib.save_model(_linear(), p / "m.st",
                                                               metadata={"a": 1}), "metadata"),
    "load_model-missing-file": (lambda lib, p: lib.load_model(_linear(), p / "none.st"), "none.st"),
    "load_model-no-complete-name": (lambda lib, p: _load_model_with(lib, p, Overlapping(), {"x": torch.zeros(6)}), "amongst"),
    "load_model-lone-partial-view": (lambda lib, p: _load_model_with(lib, p, _lone_view(), {"w": torch.zeros(2)}), "amongst"),
    "load_model-missing-keys": (lambda lib, p: _load_linear(lib, p, {"weight": (2, 2)}),
                                "Missing key.*bias"),
    "load_model-unexpected-keys": (
        lambda lib, p: _load_linear(lib, p, {"weight": (2, 2), "bias": (2,), "extra": (1,)}),
        "Unexpected key.*extra"),
    "load_model-shape-mismatch": (
        lambda lib, p: _load_linear(lib, p, {"weight": (3, 2), "bias": (2,)}), "size mismatch"),
    "load_model-tied-missing-both": (
        lambda lib, p: _load_model_with(lib, p, Tied(), {"a.bias": torch.zeros(4),
                                                         "b.bias": torch.zeros(4)}),
        "Missing key"),
}


if not torch.cuda.is_available():
    # Valid device names without the device: the reference fails on the first tensor, we at open.
    CASES["device-cuda-unavailable"] = (lambda lib, p: lib.load_file(_good(lib, p), device="cuda"), "CUDA")
    CASES["device-int-no-accelerator"] = (lambda lib, p: lib.load_file(_good(lib, p), device=0), "accelerator")


def _lone_view():
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(4)[:2])
    return model


def _linear():
    return torch.nn.Linear(2, 2)


def _load_linear(lib, tmp_path, shapes):
    _load_model_with(lib, tmp_path, _linear(), {k: torch.zeros(s) for k, s in shapes.items()})


def _save_transposed(lib, tmp_path):
    model = torch.nn.Linear(3, 2)
    model.weight = torch.nn.Parameter(torch.zeros(3, 2).t())
    lib.save_model(model, tmp_path / "m.st", force_contiguous=False)


def _bad_file_loaders():
    for name, (blob, needle) in BAD_FILES.items():
        yield pytest.param(blob, needle, "load", id=f"{name}-load")
        yield pytest.param(blob, needle, "load_file", id=f"{name}-load_file")
        yield pytest.param(blob, needle, "safe_open-pread", id=f"{name}-safe_open-pread")


def _run(fn, lib, tmp_path):
    (tmp_path / lib.name).mkdir()
    try:
        fn(lib, tmp_path / lib.name)
    except Exception as error:  # noqa: BLE001 - the kind is what is compared
        return error
    return None


def _check_same_kind(ours, ref, needle):
    assert ref is not None, "the reference accepts this input: not an error case"
    assert ours is not None, f"the reference raises {type(ref).__name__}: {ref}; we raised nothing"
    if isinstance(ref, REF.SafetensorError):
        assert isinstance(ours, OURS.SafetensorError), (type(ours), ours, ref)
    else:
        assert isinstance(ours, type(ref)), (type(ours), ours, type(ref), ref)
    message = str(ours)
    assert message.strip()
    assert "Exception raised from" not in message and "frame #" not in message  # no C++ backtrace
    if needle:
        assert re.search(needle, message), (needle, message)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_error_kind_matches_reference(name, tmp_path):
    fn, needle = CASES[name]
    ref = _run(fn, REF, tmp_path)
    ours = _run(fn, OURS, tmp_path)
    _check_same_kind(ours, ref, needle)


@pytest.mark.parametrize("blob,needle,how", list(_bad_file_loaders()))
def test_bad_file_matches_reference(blob, needle, how, tmp_path):
    path = _write(tmp_path, "bad.safetensors", blob)

    def load(lib, _):
        if how == "load":
            return lib.load(blob)
        if how == "load_file":
            return lib.load_file(path)
        with lib.safe_open(path, "pt", backend="pread") as f:
            return f.get_tensors()

    ref = _run(load, REF, tmp_path)
    ours = _run(load, OURS, tmp_path)
    _check_same_kind(ours, ref, needle)
    if how != "load":
        assert "bad.safetensors" in str(ours)  # names the file
    else:
        assert "<bytes>" in str(ours)


def _missing_file_error(lib, path, how):
    try:
        if how == "safe_open":
            lib.safe_open(path, "pt")
        elif how == "load_file":
            lib.load_file(path)
        else:
            lib.load_model(torch.nn.Linear(2, 2), path)
    except OSError as error:
        return error
    raise AssertionError("no OSError")


@pytest.mark.parametrize("how", ["safe_open", "load_file", "load_model"])
def test_missing_file_is_file_not_found_with_errno_and_the_references_text(how, tmp_path):
    path = tmp_path / "missing.st"
    ours = _missing_file_error(OURS, path, how)
    ref = _missing_file_error(REF, path, how)
    assert isinstance(ours, FileNotFoundError)
    assert str(ours) == str(ref) == f"No such file or directory: {path}"
    assert (ours.errno, ours.strerror, ours.filename) == (errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    # Pickled (e.g. from a worker process), it is a plain FileNotFoundError with the same fields.
    again = pickle.loads(pickle.dumps(ours))
    assert type(again) is FileNotFoundError
    assert (again.errno, again.filename) == (errno.ENOENT, str(path))


def test_os_errors_keep_errno_and_filename(tmp_path):
    with pytest.raises(IsADirectoryError) as error:
        OURS.load_file(tmp_path)
    assert (error.value.errno, error.value.filename) == (errno.EISDIR, str(tmp_path))
    assert str(error.value) == f"{os.strerror(errno.EISDIR)}: {tmp_path}"
    # A non-UTF-8 name comes back as Python spells it (surrogate escapes), not mangled.
    odd = os.fsdecode(bytes(tmp_path / "x") + b"\xff.st")
    with pytest.raises(FileNotFoundError) as error:
        OURS.load_file(odd)
    assert error.value.filename == odd
    if os.geteuid() != 0:  # root reads everything
        locked = tmp_path / "locked.st"
        locked.write_bytes(b"")
        locked.chmod(0)
        with pytest.raises(PermissionError) as error:
            OURS.load_file(locked)
        assert error.value.errno == errno.EACCES
