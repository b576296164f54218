"""Checkpoints in the huggingface_hub cache (issue 22): every file of
``models--<org>--<name>/snapshots/<revision>/`` is a symlink to ``../../blobs/<hash>``. The rule
(docs/dev/hardening.md, "Paths and the huggingface_hub cache"): an index's shard may resolve inside
its folder or, for a snapshot folder reached as itself, to a blob of the same cache repository;
every other escape is refused. huggingface_hub itself is the oracle that the tree laid out here is
its own layout (``scan_cache_dir``, ``snapshot_download(local_files_only=True)``)."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp

import torch_safetensors
from torch_safetensors import hub
from torch_safetensors.distributed import StorageReader

huggingface_hub = pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def blob_name(name: str, data: bytes) -> str:
    """huggingface_hub's blob names: the sha256 of an LFS file (weights), else the git blob id."""
    if name.endswith(".safetensors"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_repository(cache, repo_id, folder):
    """Lays `folder`'s files out as huggingface_hub's cache does (file_download.py): refs/main
    holds the commit, blobs/<hash> the bytes, snapshots/<commit>/<file> -> ../../blobs/<hash>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name in sorted(os.listdir(folder)):
        data = (folder / name).read_bytes()
        blob = blob_name(name, data)
        (repo / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", snapshot / name)
    return snapshot


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(64, 64)
        self.b = torch.nn.Linear(64, 32)


@pytest.fixture
def cache(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    hub.save_torch_model(model, sharded, max_shard_size=10000)
    assert len(list(sharded.glob("*.safetensors"))) > 1
    (sharded / "config.json").write_text('{"model_type": "tiny"}')
    hub.save_torch_model(model, single)
    root = tmp_path / "hub"
    snapshots = {
        "sharded": add_repository(root, "org/sharded", sharded),
        "single": add_repository(root, "org/single", single),
    }
    return root, snapshots, model.state_dict()


def test_the_layout_is_huggingface_hubs(cache):
    root, snapshots, _ = cache
    info = huggingface_hub.scan_cache_dir(root)
    assert not info.warnings
    assert sorted(r.repo_id for r in info.repos) == ["org/sharded", "org/single"]
    for repo_id, snapshot in [("org/sharded", snapshots["sharded"])]:
        found = huggingface_hub.snapshot_download(repo_id, cache_dir=root, local_files_only=True)
        assert os.path.realpath(found) == os.path.realpath(snapshot)


@pytest.mark.parametrize("which", ["sharded", "single"])
def test_loads_through_every_entry_point(cache, which):
    root, snapshots, expected = cache
    snapshot = snapshots[which]
    with torch_safetensors.open_checkpoint(snapshot) as checkpoint:
        assert sorted(checkpoint.keys()) == sorted(expected)
        for name, tensor in expected.items():
            assert torch.equal(checkpoint.get_tensor(name), tensor)
    model = Tiny()
    missing, unexpected = hub.load_torch_model(model, snapshot, strict=True)
    assert not missing and not unexpected
    assert torch.equal(model.a.weight, expected["a.weight"])
    target = snapshot / ("model.safetensors" if which == "single" else "model.safetensors.index.json")
    model = Tiny()
    torch_safetensors.load_model(model, target)
    assert torch.equal(model.b.bias, expected["b.bias"])
    state = {name: torch.zeros_like(tensor) for name, tensor in expected.items()}
    dcp.load(state, storage_reader=StorageReader(snapshot), no_dist=True)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    cli = subprocess.run(
        [sys.executable, "-m", "torch_safetensors", "inspect", str(snapshot)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert cli.returncode == 0, cli.stderr
    assert "a.weight" in cli.stdout


def test_escapes_are_refused(cache, tmp_path):
    root, snapshots, _ = cache
    snapshot = snapshots["sharded"]
    shard = sorted(p.name for p in snapshot.glob("*.safetensors"))[0]
    data = (snapshot / shard).read_bytes()
    # Another repository's blob.
    other = add_repository(root, "org/other", tmp_path / "sharded")
    other_blob = blob_name(shard, data)
    os.unlink(snapshot / shard)
    os.symlink(f"../../../models--org--other/blobs/{other_blob}", snapshot / shard)
    with pytest.raises(torch_safetensors.SafetensorError, match=f"shard '{shard}' resolves outside"):
        torch_safetensors.open_checkpoint(snapshot)
    # A file outside the cache.
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(data)
    os.unlink(snapshot / shard)
    os.symlink(outside, snapshot / shard)
    with pytest.raises(torch_safetensors.SafetensorError, match=f"shard '{shard}' resolves outside"):
        torch_safetensors.open_checkpoint(snapshot)
    # A snapshot folder that is a symlink to another repository's snapshot.
    linked = root / "models--org--linked" / "snapshots"
    linked.mkdir(parents=True)
    os.symlink(other, linked / COMMIT)
    with pytest.raises(torch_safetensors.SafetensorError, match="resolves outside"):
        torch_safetensors.open_checkpoint(linked / COMMIT)
    with pytest.raises(torch_safetensors.SafetensorError, match="resolves outside"):
        StorageReader(linked / COMMIT).read_metadata()
