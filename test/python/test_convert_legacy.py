"""Converting the legacy (pre-1.6, non-zip) torch.save format: files torch.save writes during the
run with _use_new_zipfile_serialization=False (every dtype it can write, views, ties, offsets,
non-contiguous tensors, pickle protocols 2 to 5), files whose storages are tagged 'cuda:0' (as
saved from a GPU) and files with storage views (as torch before 1.0 wrote them), each converted
and compared bit for bit with torch.load(map_location="cpu", weights_only=True). The hostile cases
are in test/data/adversarial_convert (legacy_*, tools/gen_adversarial.py)."""

import collections
import io
import json
import os
import pickle
import struct

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from test_cli import flatten, same_bits
from torch_safetensors.__main__ import main

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8,
          torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64]


def legacy_save(obj, path, protocol=2):
    torch.save(obj, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with open(path, "rb") as f:
        assert f.read(1) == b"\x80"  # a pickle stream, not a zip


def convert(source, target, capfd=None, *options):
    """`torch-safetensors convert` in this process; (exit code, stderr)."""
    code = main(["convert", str(source), str(target), *options])
    return code, (capfd.readouterr().err if capfd is not None else "")


def assert_same_as_torch_load(source, converted, weights_only=True):
    """Every tensor torch.load(map_location="cpu") reads is in the converted file, bit for bit,
    or was dropped by the tie policy (metadata: dropped -> kept) for a kept tensor that shares its
    storage in the source, as save_model drops it. (torch's weights_only unpickler cannot read the
    FRAME opcode of protocols 4 and 5: those files, made by the test itself, load without it.)"""
    expected = flatten(torch.load(source, map_location="cpu", weights_only=weights_only))
    loaded = safetensors.torch.load_file(converted)
    with safe_open(converted, "pt") as f:
        metadata = f.metadata() or {}
    for name, tensor in expected.items():
        if name in loaded:
            assert same_bits(loaded[name], tensor.detach()), name
        else:
            kept = metadata[name]
            assert (expected[kept].untyped_storage().data_ptr() ==
                    tensor.untyped_storage().data_ptr()), (name, kept)
    assert set(loaded) <= set(expected)
    return expected, loaded


def state_dict_of_every_dtype():
    torch.manual_seed(7)
    out = {}
    for dtype in DTYPES:
        name = str(dtype).split(".")[1]
        if dtype.is_floating_point or dtype.is_complex:
            values = torch.randn(5, 3, dtype=torch.float64).to(dtype)
        elif dtype == torch.bool:
            values = torch.rand(5, 3) > 0.5
        else:
            values = torch.randint(0, 100, (5, 3)).to(dtype)
        out[name] = values
        out[name + "_t"] = values.clone().t()  # non-contiguous, alone on its storage
    shared = torch.arange(24, dtype=torch.float32)
    # Views alone on their storage are written as what they show: an offset, a stride.
    out["nested"] = {"shared": shared, "same": shared,
                     "rows": torch.arange(24, dtype=torch.int32)[4:16].view(3, 4),
                     "strided": torch.randn(4, 6).to(torch.bfloat16)[:, ::2],
                     "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}
    out["param"] = torch.nn.Parameter(torch.randn(4))
    return out


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_every_dtype_view_and_tie_converts_bit_for_bit(tmp_path, protocol):
    source = tmp_path / "legacy.pt"
    legacy_save(state_dict_of_every_dtype(), source, protocol)
    code, _ = convert(source, tmp_path / "out.safetensors")
    assert code == 0
    expected, loaded = assert_same_as_torch_load(source, tmp_path / "out.safetensors",
                                                 weights_only=protocol == 2)
    assert len(expected) == 2 * len(DTYPES) + 7
    # The tie is written once (the tie policy of save_model), every other tensor as itself.
    assert ("nested.shared" in loaded) != ("nested.same" in loaded)
    assert len(loaded) == len(expected) - 1


def test_module_state_dict_with_its_metadata_converts(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    source = tmp_path / "model.pt"
    legacy_save(model.state_dict(), source)
    code, _ = convert(source, tmp_path / "model.safetensors")
    assert code == 0
    expected, loaded = assert_same_as_torch_load(source, tmp_path / "model.safetensors")
    assert sorted(loaded) == sorted(model.state_dict())


def test_sharded_legacy_bins_beside_a_zip_shard_convert_through_their_index(tmp_path):
    """transformers' pytorch_model.bin.index.json over legacy shards (and a zip one): each shard
    is recognised by its first bytes, to sharded safetensors."""
    torch.manual_seed(1)
    tensors = {f"layers.{i}.weight": torch.randn(16, 16).to(torch.bfloat16) for i in range(6)}
    names = list(tensors)
    shards = {"pytorch_model-00001-of-00003.bin": names[:2],
              "pytorch_model-00002-of-00003.bin": names[2:4],
              "pytorch_model-00003-of-00003.bin": names[4:]}
    source = tmp_path / "bin"
    source.mkdir()
    for number, (shard, shard_names) in enumerate(shards.items()):
        shard_tensors = {n: tensors[n] for n in shard_names}
        if number < 2:
            legacy_save(shard_tensors, source / shard)
        else:
            torch.save(shard_tensors, source / shard)
    (source / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {n: shard for shard, shard_names in shards.items() for n in shard_names}}))
    out = tmp_path / "st"
    assert main(["convert", str(source), str(out), "--max-shard-size", "1KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(tensors)
    for name, tensor in tensors.items():
        assert same_bits(safetensors.torch.load_file(out / index["weight_map"][name])[name], tensor)


def cuda_tagged(data):
    """The legacy file `data` as saved from a GPU: each storage's location 'cpu' becomes 'cuda:0'
    (the BINUNICODE string, length prefix included; pickle protocol 2 holds no offsets)."""
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    assert data.count(cpu) >= 1 and cuda not in data
    return data.replace(cpu, cuda)


def test_cuda_saved_storages_are_read_as_cpu_bytes(tmp_path):
    source = tmp_path / "cpu.pt"
    legacy_save(state_dict_of_every_dtype(), source)
    tagged = tmp_path / "cuda.pt"
    tagged.write_bytes(cuda_tagged(source.read_bytes()))
    if not torch.cuda.is_available():
        # Really tagged: torch.load needs map_location on a machine without CUDA.
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tagged, weights_only=True)
    code, _ = convert(tagged, tmp_path / "out.safetensors")
    assert code == 0
    assert_same_as_torch_load(tagged, tmp_path / "out.safetensors")
    # The same tensors as from the CPU file, byte for byte.
    convert(source, tmp_path / "cpu.safetensors")
    with open(tmp_path / "out.safetensors", "rb") as a, open(tmp_path / "cpu.safetensors",
                                                              "rb") as b:
        assert a.read() == b.read()


# ---- storage views: written by torch before 1.0, made here with a custom persistent_id ----

class StorageRef:
    """Pickled as its persistent id (the legacy layout's storage tuple)."""

    def __init__(self, storage_type, key, numel, view=None, location="cpu"):
        self.id = ("storage", storage_type, key, location, numel, view)


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.id if isinstance(obj, StorageRef) else None


def write_legacy(path, obj, records):
    """The legacy layout around `obj`: records is [(key, element count, bytes)] in file order."""
    out = io.BytesIO()
    for value in (MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True,
                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(value, out, protocol=2)
    LegacyPickler(out, protocol=2).dump(obj)
    pickle.dump([key for key, _, _ in records], out, protocol=2)
    for _, count, data in records:
        out.write(struct.pack("<q", count) + data)
    path.write_bytes(out.getvalue())


def test_storage_views_read_as_torch_reads_them(tmp_path):
    root = torch.arange(10, dtype=torch.float64)
    data = root.numpy().tobytes()
    view_a = ("va", 2, 6)  # elements 2..7 of the root
    storages = {"plain": StorageRef(torch.DoubleStorage, "r", 10),
                "a": StorageRef(torch.DoubleStorage, "r", 10, view_a)}
    obj = {"whole": TensorRef(storages["plain"], 0, (10,), (1,)),
           "in_view": TensorRef(storages["a"], 1, (2, 2), (1, 2)),
           "same_view": TensorRef(StorageRef(torch.DoubleStorage, "r", 10, view_a), 0, (6,),
                                  (1,)),
           "cuda_view": TensorRef(StorageRef(torch.DoubleStorage, "r", 10, ("vb", 9, 1),
                                             location="cuda:0"), 0, (), ())}
    source = tmp_path / "views.pt"
    write_legacy(source, obj, [("r", 10, data)])
    expected = torch.load(source, map_location="cpu", weights_only=True)
    assert expected["in_view"].tolist() == [[3.0, 5.0], [4.0, 6.0]]
    code, _ = convert(source, tmp_path / "views.safetensors")
    assert code == 0
    assert_same_as_torch_load(source, tmp_path / "views.safetensors")


def test_hostile_files_fail_naming_the_file_and_the_cause(tmp_path, capfd):
    """What torch.load gets wrong silently is refused: a storage missing from the key list
    (torch.load returns uninitialized memory for it), a view key naming two slices (it keeps the
    first), and a claimed size beyond the file (it allocates it first)."""
    ref = StorageRef(torch.FloatStorage, "0", 4)
    four = struct.pack("<4f", 1, 2, 3, 4)
    cases = {
        "missing.pt": ({"w": TensorRef(ref, 0, (4,), (1,))}, [],
                       "storage '0' is named by the pickled object but missing from the storage "
                       "key list"),
        "slices.pt": ({"a": TensorRef(StorageRef(torch.FloatStorage, "0", 4, ("v", 0, 2)), 0,
                                      (2,), (1,)),
                       "b": TensorRef(StorageRef(torch.FloatStorage, "0", 4, ("v", 2, 2)), 0,
                                      (2,), (1,))}, [("0", 4, four)],
                      "storage view 'v' is named twice, as different slices"),
        "huge.pt": ({"w": TensorRef(StorageRef(torch.FloatStorage, "0", 1 << 40), 0, (4,), (1,))},
                    [("0", 1 << 40, four)], "storage '0' claims 4398046511104 bytes"),
        "short.pt": ({"w": TensorRef(ref, 0, (4,), (1,))}, [("0", 4, four[:10])],
                     "truncated: storage '0' needs 16 bytes at offset"),
    }
    for name, (obj, records, error) in cases.items():
        source = tmp_path / name
        write_legacy(source, obj, records)
        code, stderr = convert(source, tmp_path / "out.safetensors", capfd)
        assert code == 1, name
        assert f"safetensors: {source}: " in stderr and error in stderr, (name, stderr)
        assert not (tmp_path / "out.safetensors").exists()
    # torch.load reads the first two without a word.
    assert torch.load(tmp_path / "missing.pt", weights_only=True)["w"].shape == (4,)
    slices = torch.load(tmp_path / "slices.pt", weights_only=True)
    assert torch.equal(slices["a"], slices["b"])


def test_global_outside_the_allow_list_is_never_called(tmp_path, capfd):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    source = tmp_path / "evil.pt"
    legacy_save({"w": torch.ones(2), "x": Evil()}, source)
    # Strict: refused, naming the global. By default: the tensors convert, the object is skipped.
    code, stderr = convert(source, tmp_path / "out.safetensors", capfd, "--strict")
    assert code == 1 and "posix.system" in stderr, stderr
    code, stderr = convert(source, tmp_path / "out.safetensors", capfd)
    assert code == 0 and "skipped x (posix.system)" in stderr, stderr
    assert sorted(safetensors.torch.load_file(tmp_path / "out.safetensors")) == ["w"]
    assert not marker.exists()
