"""Sharded checkpoints against huggingface_hub 2.4 (the peer whose API torch_safetensors.hub
mirrors): the same file names, split, index content and byte-identical shards; each loads the
other's directories bit-exactly; plus torch.distributed.checkpoint's HuggingFaceStorageWriter
layout, open_checkpoint, and the errors huggingface_hub raises."""

import json
import os
import pickle

import pytest
import torch

import torch_safetensors
from torch_safetensors import hub as ours

hf = pytest.importorskip("huggingface_hub", reason="huggingface_hub is the interop peer")
assert hf.__version__.startswith("2."), hf.__version__


def state_dicts():
    torch.manual_seed(0)
    tied = torch.randn(100, 16)
    base = torch.randn(400)
    yield "plain", {f"layer{i}.weight": torch.randn(64, 32) for i in range(6)}
    yield "dtypes", {
        "a": torch.randn(300).to(torch.bfloat16),
        "b": torch.randint(0, 255, (1000,), dtype=torch.uint8),
        "c": torch.randn(20, 20, dtype=torch.float64),
        "d": torch.randn(10).to(torch.float8_e4m3fn),
        "e": torch.zeros(0, 3),
        "f": torch.tensor(True),
    }
    yield "tied", {"embed.weight": tied, "x": torch.randn(500), "lm_head.weight": tied}
    yield "views_of_one_storage", {"lo": base[:200], "big": torch.randn(900), "hi": base[200:]}
    yield "non_contiguous", {"t": torch.randn(40, 30).t(), "u": torch.randn(7)}


def test_partial_views_refused_like_huggingface_hub(tmp_path):
    base = torch.randn(400)
    state_dict = {"lo": base[:200], "hi": base[200:]}
    for save in [hf.save_torch_state_dict, ours.save_torch_state_dict]:
        with pytest.raises(RuntimeError, match="None is covering the entire storage"):
            save(dict(state_dict), tmp_path)


def listing(directory):
    return sorted(os.listdir(directory))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def assert_same_safetensors(ours_path, theirs_path):
    """Byte-identical, except that the reference writes __metadata__ entries in a random order (a
    Rust HashMap; ours are sorted): with two or more entries, the same header JSON and the same
    data bytes."""
    mine, theirs = read(ours_path), read(theirs_path)
    if mine == theirs:
        return
    n = int.from_bytes(mine[:8], "little")
    assert n == int.from_bytes(theirs[:8], "little"), ours_path
    header = json.loads(mine[8:8 + n])
    assert header == json.loads(theirs[8:8 + n]), ours_path
    assert len(header.get("__metadata__", {})) >= 2, "differ beyond metadata order"
    assert mine[8 + n:] == theirs[8 + n:], ours_path


@pytest.mark.parametrize("max_shard_size", [5_000, "12KB", "5GB"])
@pytest.mark.parametrize("metadata", [None, {"note": "ünïcode", "a": "b"}])
def test_same_files_as_huggingface_hub(tmp_path, max_shard_size, metadata):
    for name, state_dict in state_dicts():
        if name == "views_of_one_storage":
            continue  # refused by both (test_partial_views_refused_like_huggingface_hub)
        theirs_dir, ours_dir = tmp_path / f"{name}_hf", tmp_path / f"{name}_ours"
        theirs_dir.mkdir()
        hf.save_torch_state_dict(
            dict(state_dict), theirs_dir, max_shard_size=max_shard_size,
            metadata=None if metadata is None else dict(metadata))
        ours.save_torch_state_dict(
            dict(state_dict), ours_dir, max_shard_size=max_shard_size,
            metadata=None if metadata is None else dict(metadata))
        assert listing(ours_dir) == listing(theirs_dir), name
        for file in listing(theirs_dir):
            if file.endswith(".json"):
                assert json.loads(read(ours_dir / file)) == json.loads(read(theirs_dir / file))
                if metadata is None:  # sorted metadata keys: the same bytes too
                    assert read(ours_dir / file) == read(theirs_dir / file), (name, file)
            else:
                assert_same_safetensors(ours_dir / file, theirs_dir / file)


def test_split_matches_huggingface_hub():
    for name, state_dict in state_dicts():
        for size in [1, 2_000, "10KB", "1GB"]:
            mine = ours.split_torch_state_dict_into_shards(state_dict, max_shard_size=size)
            theirs = hf.split_torch_state_dict_into_shards(state_dict, max_shard_size=size)
            assert mine.filename_to_tensors == theirs.filename_to_tensors, (name, size)
            assert list(mine.tensor_to_filename.items()) == list(theirs.tensor_to_filename.items())
            assert mine.metadata == theirs.metadata and mine.is_sharded == theirs.is_sharded


def test_filename_pattern_and_discard_as_huggingface_hub(tmp_path):
    tied = torch.randn(50, 10)
    state_dict = {"a": tied, "b": tied, "c": torch.randn(300)}
    kwargs = dict(filename_pattern="weights{suffix}.safetensors", max_shard_size=1000,
                  shared_tensors_to_discard=["a"])
    (tmp_path / "hf").mkdir()
    hf.save_torch_state_dict(dict(state_dict), tmp_path / "hf", **kwargs)
    ours.save_torch_state_dict(dict(state_dict), tmp_path / "ours", **kwargs)
    assert listing(tmp_path / "ours") == listing(tmp_path / "hf")
    index = json.loads(read(tmp_path / "ours" / "weights.safetensors.index.json"))
    assert index == json.loads(read(tmp_path / "hf" / "weights.safetensors.index.json"))
    assert index["metadata"]["a"] == "b"  # "a" dropped in favour of "b"


class Net(torch.nn.Module):
    def __init__(self, tied=True, extra=False):
        super().__init__()
        self.embed = torch.nn.Embedding(300, 32)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(32, 32) for _ in range(4))
        self.norm = torch.nn.LayerNorm(32)
        self.head = torch.nn.Linear(32, 300, bias=False)
        if tied:
            self.head.weight = self.embed.weight
        if extra:
            self.extra = torch.nn.Linear(2, 2)


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype
        assert torch.equal(sa[name].view(torch.uint8), sb[name].view(torch.uint8)), name


@pytest.mark.parametrize("max_shard_size", ["10KB", "5GB"])
def test_each_loads_the_others_directories(tmp_path, max_shard_size):
    torch.manual_seed(1)
    model = Net()
    (tmp_path / "hf").mkdir()
    hf.save_torch_model(model, tmp_path / "hf", max_shard_size=max_shard_size)
    ours.save_torch_model(model, tmp_path / "ours", max_shard_size=max_shard_size)
    for saved in ["hf", "ours"]:
        # huggingface_hub reports the tied name its save dropped as missing (so its strict=True
        # fails on this model); ours does not.
        fresh = Net()
        result = hf.load_torch_model(fresh, tmp_path / saved)
        assert list(result.missing_keys) == ["head.weight"] and list(result.unexpected_keys) == []
        assert_same_model(fresh, model)
        fresh = Net()
        result = ours.load_torch_model(fresh, tmp_path / saved, strict=True)
        assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
        assert_same_model(fresh, model)
        assert fresh.head.weight is fresh.embed.weight
        # Our other loaders take the directory too.
        fresh = Net()
        torch_safetensors.load_model(fresh, tmp_path / saved)
        assert_same_model(fresh, model)
        with torch_safetensors.open_checkpoint(tmp_path / saved) as f:
            assert torch.equal(f.get_tensor("norm.weight"), model.norm.weight)


def test_load_reports_like_huggingface_hub(tmp_path):
    model = Net(tied=False)
    ours.save_torch_model(model, tmp_path, max_shard_size="10KB")
    mine = ours.load_torch_model(Net(tied=False, extra=True), tmp_path)
    theirs = hf.load_torch_model(Net(tied=False, extra=True), tmp_path)
    assert sorted(mine.missing_keys) == sorted(theirs.missing_keys) == ["extra.bias", "extra.weight"]
    assert mine.unexpected_keys == theirs.unexpected_keys == []
    errors = []
    for loader in [ours.load_torch_model, hf.load_torch_model]:
        with pytest.raises(RuntimeError) as error:
            loader(Net(tied=False, extra=True), tmp_path, strict=True)
        errors.append(str(error.value))
    assert errors[0] == errors[1]
    for loader in [ours.load_torch_model, hf.load_torch_model]:
        with pytest.raises(FileNotFoundError):
            loader(Net(), tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    for loader in [ours.load_torch_model, hf.load_torch_model]:
        with pytest.raises(ValueError, match="does not contain a valid checkpoint"):
            loader(Net(), empty)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_are_refused_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "pytorch_model.bin"
    with open(evil, "wb") as f:
        pickle.dump({"w": _Marker(str(marker))}, f)
    for safe in [True, False]:
        with pytest.raises(ValueError, match="never unpickles"):
            ours.load_state_dict_from_file(evil, safe=safe)
        with pytest.raises(ValueError, match="never unpickles"):
            ours.load_torch_model(Net(), evil, safe=safe)
    assert not marker.exists()
    with pytest.raises(ValueError, match="does not describe safetensors files"):
        ours.load_torch_model(Net(), tmp_path, filename_pattern="pytorch_model{suffix}.bin")
    with pytest.raises(ValueError, match="writes pickles"):
        ours.save_torch_state_dict({"w": torch.zeros(1)}, tmp_path, safe_serialization=False)
    with pytest.raises(FileNotFoundError, match="No checkpoint file found"):
        ours.load_state_dict_from_file(tmp_path / "missing.safetensors")


def test_metadata_format_checked_like_huggingface_hub(tmp_path):
    path = tmp_path / "m.safetensors"
    torch_safetensors.save_file({"w": torch.zeros(1)}, path, metadata={"format": "tf"})
    for load in [ours.load_state_dict_from_file, hf.load_state_dict_from_file]:
        with pytest.raises(OSError, match="does not contain the valid metadata"):
            load(path)


def test_non_contiguous_without_force_contiguous_is_refused(tmp_path):
    state_dict = {"t": torch.randn(4, 3).t()}
    with pytest.raises(ValueError, match="non contiguous"):
        ours.save_torch_state_dict(state_dict, tmp_path, force_contiguous=False)


def test_bad_sizes_raise_value_error_like_huggingface_hub():
    for size in ["5GiB", "lotsGB"]:
        for split in [ours.split_torch_state_dict_into_shards, hf.split_torch_state_dict_into_shards]:
            with pytest.raises(ValueError):
                split({"w": torch.zeros(1)}, max_shard_size=size)


def test_dcp_huggingface_storage_writer_layout(tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    state_dict = {
        "a.weight": torch.randn(4, 3),
        "b.weight": torch.randn(5).to(torch.bfloat16),
        "c": torch.arange(6),
    }
    writer = dcp.HuggingFaceStorageWriter(
        str(tmp_path), fqn_to_index_mapping={"a.weight": 1, "b.weight": 2, "c": 2})
    with pytest.warns(UserWarning):
        dcp.save(state_dict, storage_writer=writer, no_dist=True)
    with torch_safetensors.open_checkpoint(tmp_path) as f:
        assert f.shard_files == ["model-00001-of-00002.safetensors",
                                 "model-00002-of-00002.safetensors"]
        assert f.shard_file("c") == "model-00002-of-00002.safetensors"
        assert int(f.metadata()["total_size"]) == 106
        for name, tensor in state_dict.items():
            assert torch.equal(f.get_tensor(name), tensor)
    loaded = torch_safetensors.load_file(tmp_path / "model-00002-of-00002.safetensors")
    assert set(loaded) == {"b.weight", "c"}


def test_open_checkpoint_is_lazy_and_checks_shards(tmp_path):
    state_dict = {f"w{i}": torch.full((256,), float(i)) for i in range(4)}
    ours.save_torch_state_dict(state_dict, tmp_path, max_shard_size="2KB")
    os.remove(tmp_path / "model-00004-of-00004.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors.index.json: shard "
                       "'model-00004-of-00004.safetensors' of tensor 'w3' cannot be opened: "
                       "No such file or directory: "):
        torch_safetensors.open_checkpoint(tmp_path)
    ours.save_torch_state_dict(state_dict, tmp_path, max_shard_size="2KB")
    with torch_safetensors.open_checkpoint(tmp_path / "model.safetensors.index.json",
                                           backend="pread") as f:
        assert f.keys() == ["w0", "w1", "w2", "w3"]
        assert f.get_slice("w2")[10:12].tolist() == [2.0, 2.0]
        assert f.get_slice("w3").get_shape() == [256]
        tensors = f.get_tensors()
    assert all(torch.equal(tensors[k], v) for k, v in state_dict.items())
    # A shard that holds a tensor the index puts elsewhere: an error naming both.
    torch_safetensors.save_file({"w0": torch.zeros(256), "w1": torch.ones(256)},
                                tmp_path / "model-00002-of-00004.safetensors",
                                metadata={"format": "pt"})
    with torch_safetensors.open_checkpoint(tmp_path) as f:
        with pytest.raises(torch_safetensors.SafetensorError, match="holds tensor 'w0', which the "
                           "index assigns to shard 'model-00001-of-00004.safetensors'"):
            f.get_tensor("w1")


@pytest.mark.parametrize("layout", ["file", "sharded", "one_file_dir"])
def test_load_torch_model_runs_load_state_dict_hooks_and_reports_from_the_core(tmp_path, layout):
    """load_torch_model loads through model.load_state_dict (its pre- and post-hooks run, with
    the stored tensors), while what is missing or unexpected is the C++ module-load report's: a
    tied name the save dropped is not missing, a size mismatch is refused before anything
    changes."""
    source = Net(tied=True)
    if layout == "file":
        path = tmp_path / "model.safetensors"
        torch_safetensors.save_model(source, path, metadata={"format": "pt"})
    else:
        path = tmp_path / "ckpt"
        ours.save_torch_model(source, path, max_shard_size="1KB" if layout == "sharded" else "5GB")
        assert (len(list(path.glob("*.safetensors"))) > 1) == (layout == "sharded")
    target = Net(tied=True, extra=True)
    seen = []

    def pre_hook(module, state_dict, prefix, *args):
        seen.append(("pre", sorted(state_dict)))

    target.register_load_state_dict_pre_hook(pre_hook)
    target.register_load_state_dict_post_hook(lambda module, keys: seen.append(("post",)))
    keys = ours.load_torch_model(target, path)
    stored = sorted(torch_safetensors.open_checkpoint(path).keys())
    assert seen == [("pre", stored), ("post",)]
    assert sorted(keys.missing_keys) == ["extra.bias", "extra.weight"] and keys.unexpected_keys == []
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    # refused before load_state_dict runs: no hook sees it
    seen.clear()
    wrong = Net(tied=True)
    wrong.register_load_state_dict_pre_hook(pre_hook)
    wrong.norm.weight = torch.nn.Parameter(torch.zeros(3, 3))
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(RuntimeError, match="size mismatch for norm.weight"):
        ours.load_torch_model(wrong, path)
    assert seen == []
    assert all(torch.equal(v, before[k]) for k, v in wrong.state_dict().items())
