"""Interoperability with the reference `safetensors` (0.8): files written by either library load
bit-exact in both, and our bytes are identical to the reference's for the same input."""

import json
import struct

import pytest
import safetensors
import safetensors.torch
import torch

import torch_safetensors
from conftest import (
    OURS,
    REF,
    REF_LOAD_BYTES_LACKS,
    SPEC_TO_TORCH,
    assert_bit_equal,
    assert_dicts_bit_equal,
    random_tensor,
)

SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (4, 5), (2, 3, 4)]


def _cases():
    for spec in SPEC_TO_TORCH:
        for shape in SHAPES:
            if spec == "F4" and shape == ():
                continue  # no last dimension to hold the packed pair: refused by both (test_errors)
            yield pytest.param(spec, shape, id=f"{spec}-{'x'.join(map(str, shape)) or 'scalar'}")


@pytest.mark.parametrize("spec,shape", list(_cases()))
def test_dtype_shape_matrix(spec, shape, tmp_path):
    """Every writer x reader pair is bit-exact, and our bytes equal the reference's."""
    tensor = random_tensor(SPEC_TO_TORCH[spec], shape, seed=len(shape) + 7 * len(spec))
    tensors = {"t": tensor}
    for writer in (REF, OURS):
        path = tmp_path / f"{writer.name}.safetensors"
        writer.save_file(tensors, path)
        for reader in (REF, OURS):
            assert_dicts_bit_equal(reader.load_file(path), tensors)
            with reader.safe_open(path, "pt") as f:
                assert f.get_slice("t").get_dtype() == spec
                assert_bit_equal(f.get_tensor("t"), tensor)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "reference.safetensors").read_bytes()
    for metadata in (None, {}, {"format": "pt"}):
        ours = torch_safetensors.save(tensors, metadata=metadata)
        assert ours == safetensors.torch.save(tensors, metadata=metadata)
        assert_dicts_bit_equal(torch_safetensors.load(ours), tensors)
        if spec not in REF_LOAD_BYTES_LACKS:
            assert_dicts_bit_equal(safetensors.torch.load(ours), tensors)


def _all_dtypes_state_dict(seed=0):
    tensors = {}
    for i, (spec, dtype) in enumerate(SPEC_TO_TORCH.items()):
        # Several names per dtype and names out of dtype order: exercises the save sort order.
        tensors[f"{spec.lower()}.weight"] = random_tensor(dtype, (3, 4), seed=seed + i)
        tensors[f"a.{spec.lower()}"] = random_tensor(dtype, (5,), seed=seed + 100 + i)
        tensors[f"z{i}"] = random_tensor(dtype, (0, 2), seed=seed + 200 + i)
    return tensors


@pytest.mark.parametrize("metadata", [None, {}, {"format": "pt"}], ids=["none", "empty", "one-key"])
def test_all_dtypes_in_one_file_byte_identical(metadata, tmp_path):
    tensors = _all_dtypes_state_dict()
    ours = torch_safetensors.save(tensors, metadata=metadata)
    assert ours == safetensors.torch.save(tensors, metadata=metadata)
    torch_safetensors.save_file(tensors, tmp_path / "ours.st", metadata=metadata)
    safetensors.torch.save_file(tensors, tmp_path / "ref.st", metadata=metadata)
    assert (tmp_path / "ours.st").read_bytes() == ours
    assert (tmp_path / "ref.st").read_bytes() == ours
    for path in (tmp_path / "ours.st", tmp_path / "ref.st"):
        for lib in (REF, OURS):
            with lib.safe_open(path, "pt") as f:
                assert f.metadata() == metadata
                assert f.keys() == sorted(tensors)
                assert f.offset_keys() == REF.safe_open(path, "pt").offset_keys()
                assert_dicts_bit_equal(f.get_tensors(), tensors)


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_reference_file_every_read_path(backend, tmp_path):
    """A reference-written file reads bit-exact through each of our entry points."""
    tensors = _all_dtypes_state_dict(seed=3)
    path = tmp_path / "ref.st"
    safetensors.torch.save_file(tensors, path, metadata={"k": "v"})
    assert_dicts_bit_equal(torch_safetensors.load_file(path, backend=backend), tensors)
    assert_dicts_bit_equal(torch_safetensors.load(path.read_bytes()), tensors)
    with torch_safetensors.safe_open(path, "pt", backend=backend) as f:
        assert f.metadata() == {"k": "v"}
        for name, tensor in tensors.items():
            assert_bit_equal(f.get_tensor(name), tensor)
            assert_bit_equal(f.get_slice(name)[:], tensor)
            assert_bit_equal(f.get_slice(name)[...], tensor)


def test_f4_header_shape_counts_values(tmp_path):
    packed = random_tensor(torch.float4_e2m1fn_x2, (2, 3))
    torch_safetensors.save_file({"w": packed}, tmp_path / "f4.st")
    with REF.safe_open(tmp_path / "f4.st", "pt") as f:
        assert f.get_slice("w").get_shape() == [2, 6]  # two F4 values per stored byte
    with OURS.safe_open(tmp_path / "f4.st", "pt") as f:
        assert f.get_slice("w").get_shape() == [2, 6]
        assert f.get_tensor("w").shape == (2, 3)


# ------------------------------------------------------------------ F6: raw bytes only

_SPEC_ORDER = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
    "F64", "I64", "U64",
]


def _spec_layout(entries, metadata=None):
    """The file the reference writes for (name, spec dtype, header shape, bytes) entries:
    dtype descending then name, compact JSON, __metadata__ first, padded with spaces to 8."""
    entries = sorted(entries, key=lambda e: (-_SPEC_ORDER.index(e[1]), e[0].encode()))
    header, offset, data = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, blob in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        data += blob
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def test_spec_layout_helper_matches_reference():
    # Validates the helper below against the reference itself before using it for F6.
    tensors = {"b": random_tensor(torch.uint8, (3,)), "a": random_tensor(torch.float32, (2,)),
               "c": random_tensor(torch.uint8, (1,))}
    entries = [(n, "U8" if t.dtype == torch.uint8 else "F32", list(t.shape),
                bytes(t.view(torch.uint8).numpy())) for n, t in tensors.items()]
    assert _spec_layout(entries, {"x": "y"}) == safetensors.torch.save(tensors, {"x": "y"})


@pytest.mark.parametrize("spec", ["F6_E2M3", "F6_E3M2"])
def test_f6_round_trip_as_raw_bytes(spec, tmp_path):
    # 8 values of 6 bits = 6 bytes; 4 values = 3 bytes.
    six = bytes([0x41, 0x10, 0xFF, 0x00, 0x7E, 0x81])
    three = bytes([0x01, 0x02, 0x03])
    neighbour = random_tensor(torch.uint8, (5,))
    expected = _spec_layout(
        [("six", spec, [2, 4], six), ("three", spec, [4], three),
         ("u8", "U8", [5], bytes(neighbour.numpy()))], {"note": "f6"})

    raw = torch_safetensors.RawTensor
    tensors = {
        "six": raw(spec, [2, 4], torch.frombuffer(bytearray(six), dtype=torch.uint8)),
        "three": raw(spec, [4], torch.frombuffer(bytearray(three), dtype=torch.uint8)),
        "u8": neighbour,
    }
    assert torch_safetensors.save(tensors, {"note": "f6"}) == expected
    path = tmp_path / "f6.st"
    path.write_bytes(expected)

    with torch_safetensors.safe_open(path) as f:
        got = f.get_raw("six")
        assert (got.dtype, got.shape) == (spec, [2, 4])
        assert bytes(got.data.numpy()) == six
        loaded = f.get_tensor("three")  # no torch dtype: the packed bytes, as uint8
        assert loaded.dtype == torch.uint8
        assert bytes(loaded.reshape(-1).numpy()) == three
        assert f.get_slice("six").get_dtype() == spec
        assert f.get_slice("six").get_shape() == [2, 4]
        again = {name: f.get_raw(name) for name in ("six", "three")}
    again["u8"] = neighbour
    torch_safetensors.save_file(again, tmp_path / "copy.st", metadata={"note": "f6"})
    assert (tmp_path / "copy.st").read_bytes() == expected

    # The reference parses the header and reads the other tensors of the file...
    with REF.safe_open(path, "pt") as f:
        assert f.get_slice("three").get_dtype() == spec
        assert f.get_slice("three").get_shape() == [4]
        assert_bit_equal(f.get_tensor("u8"), neighbour)
        # ...but has no torch type for F6 data (we load it as bytes instead).
        with pytest.raises(safetensors.SafetensorError):
            f.get_tensor("three")


def test_raw_size_is_checked(tmp_path):
    bad = torch_safetensors.RawTensor("F6_E2M3", [4], torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(torch_safetensors.SafetensorError, match="'x'.* 3 bytes.* 4 were given"):
        torch_safetensors.save({"x": bad})
    unknown = torch_safetensors.RawTensor("F66", [4], torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(torch_safetensors.SafetensorError, match="'x'.*unknown dtype 'F66'"):
        torch_safetensors.save({"x": unknown})


# ------------------------------------------------------------------ edge cases


@pytest.mark.parametrize(
    "metadata",
    [{"ключ": "значение 🚀"}, {"quote\"back\\slash": "tab\tnl\ncr\r"},
     {"": ""}, {"emoji 👩‍🔬": "中文"}],
    ids=["cyrillic", "escapes", "empty-strings", "emoji-cjk"],
)
def test_unicode_metadata_and_names_byte_identical(metadata, tmp_path):
    # Tensor names go through the same JSON escaping. Control characters (other than tab, newline
    # and carriage return in metadata values) are refused on save: test_validation.py.
    name = next(iter(metadata)) + "/ü\"\\"
    tensors = {name: random_tensor(torch.float16, (2, 2)), "plain": random_tensor(torch.int8, (3,))}
    ours = torch_safetensors.save(tensors, metadata=metadata)
    assert ours == safetensors.torch.save(tensors, metadata=metadata)
    path = tmp_path / "u.st"
    path.write_bytes(ours)
    for lib in (REF, OURS):
        with lib.safe_open(path, "pt") as f:
            assert f.metadata() == metadata
            assert set(f.keys()) == set(tensors)
            assert_bit_equal(f.get_tensor(name), tensors[name])


def test_unicode_file_name(tmp_path):
    path = tmp_path / "модель 模型.safetensors"
    tensors = {"a": random_tensor(torch.float32, (4,))}
    torch_safetensors.save_file(tensors, path)
    assert_dicts_bit_equal(safetensors.torch.load_file(path), tensors)
    assert_dicts_bit_equal(torch_safetensors.load_file(str(path)), tensors)


@pytest.mark.parametrize("metadata", [None, {}, {"k": "v"}], ids=["none", "empty", "one-key"])
def test_empty_state_dict(metadata, tmp_path):
    ours = torch_safetensors.save({}, metadata=metadata)
    reference = safetensors.torch.save({}, metadata=metadata)
    if metadata == {}:
        # Reference bug: no tensors + metadata={} gives the header `{},"__metadata__":{}}`,
        # which it cannot read back itself. We write the valid `{"__metadata__":{}}`.
        assert reference[8:].startswith(b'{},"__metadata__":{}}')
        with pytest.raises(safetensors.SafetensorError):
            safetensors.torch.load(reference)
        assert ours[8:].rstrip(b" ") == b'{"__metadata__":{}}'
        assert safetensors.torch.load(ours) == {}
    else:
        assert ours == reference
    assert torch_safetensors.load(ours) == {}
    torch_safetensors.save_file({}, tmp_path / "e.st", metadata=metadata)
    assert safetensors.torch.load_file(tmp_path / "e.st") == {}
    with torch_safetensors.safe_open(tmp_path / "e.st") as f:
        assert f.keys() == [] and f.offset_keys() == []
        assert f.metadata() == metadata


def test_ten_thousand_small_tensors(tmp_path):
    gen = torch.Generator().manual_seed(5)
    dtypes = [torch.float32, torch.int64, torch.bfloat16, torch.uint8, torch.bool]
    tensors = {}
    for i in range(10_000):
        dtype = dtypes[i % len(dtypes)]
        shape = (i % 4,) if i % 7 else ()
        tensors[f"layers.{i % 97}.block{i}.w"] = random_tensor(dtype, shape, seed=i)
    ours = torch_safetensors.save(tensors)
    assert ours == safetensors.torch.save(tensors)
    path = tmp_path / "many.st"
    torch_safetensors.save_file(tensors, path)
    assert path.read_bytes() == ours
    loaded = torch_safetensors.load_file(path)
    # File order is the header's order. (The reference's offset_keys orders zero-size tensors
    # that share an offset arbitrarily, so it is not compared name by name.)
    header = json.loads(ours[8 : 8 + struct.unpack("<Q", ours[:8])[0]])
    assert list(loaded) == list(header)
    assert sorted(REF.safe_open(path, "pt").offset_keys()) == sorted(header)
    assert_dicts_bit_equal(loaded, tensors)
    assert_dicts_bit_equal(safetensors.torch.load_file(path), tensors)


def test_same_storage_disjoint_tensors_are_saved_like_the_reference():
    # Two halves of one buffer do not overlap: both libraries accept and write them apart.
    base = torch.arange(10, dtype=torch.float32)
    tensors = {"lo": base[:5], "hi": base[5:]}
    ours = torch_safetensors.save(tensors)
    assert ours == safetensors.torch.save(tensors)
    assert_dicts_bit_equal(torch_safetensors.load(ours), {k: v.clone() for k, v in tensors.items()})


def test_requires_grad_and_parameters_are_saved():
    tensors = {"p": torch.nn.Parameter(torch.randn(3, 3)), "g": torch.randn(2, requires_grad=True)}
    assert torch_safetensors.save(tensors) == safetensors.torch.save(tensors)
