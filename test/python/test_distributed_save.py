"""Saving from many ranks (issue 25) over torch.distributed gloo with 2 and 4 processes on
localhost: DTensors over Shard(d) / Replicate on a 1-D mesh and a 2 x 2 mesh, with float, bf16,
int32, bool, FP8 and F4 tensors and uneven and empty shards, saved by
`torch_safetensors.distributed.save_sharded` and by `dcp.save` with our StorageWriter. The oracle
is huggingface_hub's own `save_torch_state_dict` of the full state dict (the peer's writer) and its
`load_torch_model` (the peer's reader); save_worker.py runs each rank."""
import os
import signal
import sys

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from save_worker import MAX_SHARD_SIZE, full_state, module_of, strided_state  # noqa: E402
from test_distributed import run_ranks  # noqa: E402

from torch_safetensors import SafetensorError  # noqa: E402
from torch_safetensors._extension import _C  # noqa: E402
from torch_safetensors.distributed import consolidate  # noqa: E402
from torch_safetensors.distributed._save import chunk_entries, placeholder_entry  # noqa: E402

hub = pytest.importorskip("huggingface_hub")
WORKER = os.path.join(os.path.dirname(__file__), "save_worker.py")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch has no gloo")


def reference(tmp_path, seed=0, metadata=True):
    """huggingface_hub's checkpoint of the gathered state dict, with the metadata the save_worker
    passes to save_sharded (the DCP writer passes none)."""
    directory = tmp_path / f"reference-{seed}-{metadata}"
    directory.mkdir(exist_ok=True)
    hub.save_torch_state_dict(full_state(seed), str(directory), max_shard_size=MAX_SHARD_SIZE,
                              metadata={"format": "pt"} if metadata else None)
    return directory


def files_of(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def header_bytes(directory):
    """The bytes of every file's length prefix and header, and of the index."""
    total = 0
    for name, data in files_of(directory).items():
        if name.endswith(".safetensors"):
            total += 8 + int.from_bytes(data[:8], "little")
        else:
            total += len(data)
    return total


def plain_model(state):
    """A module with a zeroed buffer per state dict entry, named as the entry."""
    return module_of({name: torch.zeros(t.shape, dtype=torch.uint8).view(t.dtype)
                      if t.element_size() == 1 else torch.zeros_like(t)
                      for name, t in state.items()}, buffers=True)


def raw(tensor):
    return tensor.view(torch.uint8) if tensor.element_size() == 1 and tensor.dtype != torch.bool \
        else tensor


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_save_the_huggingface_checkpoint_of_the_gathered_state(world, tmp_path):
    reports = run_ranks(world, "save,dcp_save,fsdp,rank_files", str(tmp_path), tmp_path,
                        worker=WORKER)
    for rank, report in enumerate(reports):
        assert "error" not in report and "exit" not in report, (rank, report)
    expected = reference(tmp_path)
    assert len([n for n in os.listdir(expected) if n.endswith(".safetensors")]) > 2
    # Byte for byte what the peer writes from the gathered state dict, by both front ends.
    assert files_of(tmp_path / "direct") == files_of(expected)
    assert files_of(tmp_path / "dcp") == files_of(reference(tmp_path, metadata=False))
    # The peer's reader fills a plain model with the original weights, bit for bit.
    original = full_state()
    model = plain_model(original)
    hub.load_torch_model(model, str(tmp_path / "direct"), strict=True)
    for name, tensor in original.items():
        assert torch.equal(raw(model.get_buffer(name)), raw(tensor)), name
    # dcp.load back into the sharded state equals it, on every rank, for both front ends.
    for rank, report in enumerate(reports):
        for scenario in ("save", "dcp_save"):
            loaded = report[scenario]["loaded_back"]
            assert loaded == {name: True for name in original}, (rank, scenario, loaded)
    # Each rank writes its own shards' bytes and no others; a replica is written once; the headers
    # and the index are written by the publishing rank only.
    saves = [report["save"] for report in reports]
    assert sum(s["tensor_bytes"] for s in saves) == sum(t.nbytes for t in original.values())
    for rank, s in enumerate(saves):
        assert s["exclusive"] <= s["tensor_bytes"] <= s["exclusive"] + s["shared"], (rank, s)
        assert s["exclusive"] > 0
        assert s["header_bytes"] == (header_bytes(expected) if rank == 0 else 0), (rank, s)
        assert s["files"] == saves[0]["files"]
        assert sorted(s["files"]) == sorted(os.listdir(expected))
    # A model sharded by FSDP2's fully_shard and trained a step (save_worker.fsdp): the reference
    # is rank 0's huggingface_hub save of the gathered state dict.
    fsdp_reference = files_of(tmp_path / "fsdp-reference")
    assert len(fsdp_reference) > 2
    assert files_of(tmp_path / "fsdp-direct") == fsdp_reference
    assert files_of(tmp_path / "fsdp-dcp") == fsdp_reference
    for rank, report in enumerate(reports):
        assert report["fsdp"]["placements"] == ["(Shard(dim=0),)"], (rank, report["fsdp"])
        assert all(report["fsdp"]["loaded_back"].values()) and report["fsdp"]["loaded_back"]

    # Without a shared file system: the rank files, consolidated, are the same checkpoint.
    assert [r["rank_files"]["path"] for r in reports] == [
        f"rank-{r:05d}-of-{world:05d}.safetensors" for r in range(world)]
    for rank, report in enumerate(reports):
        assert all(report["rank_files"]["loaded_back"].values()), (rank, report["rank_files"])
    report = consolidate(tmp_path / "rank_files", tmp_path / "consolidated",
                         max_shard_size=MAX_SHARD_SIZE, metadata={"format": "pt"}, threads=2)
    assert files_of(tmp_path / "consolidated") == files_of(expected)
    assert report.tensor_bytes == sum(t.nbytes for t in original.values())
    assert report.files == saves[0]["files"]


def test_strided_shards_of_several_blocks_save_and_load(tmp_path):
    """_StridedShard shards that are several blocks of the full tensor (save_worker.strided_state:
    FSDP2 over tensor parallel on other dims than [_StridedShard(0), Shard(0)]), 4 ranks on a 2 x 2
    mesh: saved straight to the final files and through rank files, each byte for byte the peer's
    save of the full state dict; load_dtensors fills zeroed DTensors of the same placements;
    dcp.load through our StorageReader refuses them rather than fill them from DCP's one block."""
    reports = run_ranks(4, "strided", str(tmp_path), tmp_path, worker=WORKER)
    for rank, report in enumerate(reports):
        assert "error" not in report and "exit" not in report, (rank, report)
    full = {name: tensor for name, (tensor, _) in strided_state().items()}
    expected = tmp_path / "strided-reference"
    expected.mkdir()
    hub.save_torch_state_dict(full, str(expected), max_shard_size=MAX_SHARD_SIZE)
    assert len(os.listdir(expected)) > 2
    assert files_of(tmp_path / "strided-direct") == files_of(expected)
    consolidate(tmp_path / "strided-rank-files", tmp_path / "strided-consolidated",
                max_shard_size=MAX_SHARD_SIZE)
    assert files_of(tmp_path / "strided-consolidated") == files_of(expected)
    # DCP's own planner refuses them; past a planner that does not, our StorageWriter writes each
    # block where it belongs (not at DCP's one offset per rank).
    assert files_of(tmp_path / "strided-dcp") == files_of(expected)
    assert not os.path.exists(tmp_path / "strided-dcp-refused") or not [
        n for n in os.listdir(tmp_path / "strided-dcp-refused") if n.endswith(".safetensors")]
    results = [report["strided"] for report in reports]
    assert sum(r["tensor_bytes"] for r in results) == sum(t.nbytes for t in full.values())
    for rank, r in enumerate(results):
        assert r["loaded"] == {name: True for name in full}, (rank, r["loaded"])
        assert r["missing"] == [] and r["unexpected"] == [], (rank, r)
        assert r["dcp_load"] is not None and "blocks of the full tensor" in r["dcp_load"], r
        assert r["dcp_save"] is not None and "Failed to validate global plan" in r["dcp_save"], r


def test_consolidate_refuses_an_incomplete_set_of_rank_files(tmp_path):
    state = full_state()
    parts = tmp_path / "parts"
    parts.mkdir()
    halves = [dict(list(state.items())[:3]), dict(list(state.items())[3:])]
    for rank, half in enumerate(halves):  # two "ranks" holding different tensors whole
        entries = [entry for name, t in state.items()
                   for entry in (chunk_entries(name, t) if name in half else
                                 [placeholder_entry(name, t.shape, t.dtype)])]
        _C.save_rank_file(entries, str(parts / f"rank-{rank:05d}-of-00003.safetensors"), False)
    with pytest.raises(ValueError, match=r"the rank files of ranks \[2\] of 3 are missing"):
        consolidate(parts, tmp_path / "out")
    with pytest.raises(SafetensorError, match="chunks cover 0 of its 6 elements"):
        consolidate(sorted(parts.iterdir())[:1], tmp_path / "out")
    (parts / "rank-00002-of-00003.safetensors").write_bytes(b"")
    with pytest.raises(SafetensorError):
        consolidate(parts, tmp_path / "out")
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    os.remove(parts / "rank-00002-of-00003.safetensors")
    os.rename(parts / "rank-00001-of-00003.safetensors", parts / "rank-00001-of-00002.safetensors")
    os.rename(parts / "rank-00000-of-00003.safetensors", parts / "rank-00000-of-00002.safetensors")
    consolidate(parts, tmp_path / "out", max_shard_size=MAX_SHARD_SIZE, metadata={"format": "pt"})
    assert files_of(tmp_path / "out") == files_of(reference(tmp_path))


def previous_checkpoint_intact(tmp_path):
    """The checkpoint saved before the failed save is there byte for byte, and nothing else is:
    no final-named partial file, no temporary file."""
    assert files_of(tmp_path / "direct") == files_of(reference(tmp_path, seed=0))


def test_a_full_disk_on_one_rank_fails_every_rank_and_keeps_the_checkpoint(tmp_path):
    reports = run_ranks(2, "full_disk", str(tmp_path), tmp_path, worker=WORKER, pg_timeout=30)
    for rank, report in enumerate(reports):
        assert "error" not in report and "exit" not in report, (rank, report)
        error = report["full_disk"]["error"]
        assert error is not None, rank
        assert "File too large" in error and "writing its chunks" in error, (rank, error)
    assert "rank 1" in reports[0]["full_disk"]["error"]
    previous_checkpoint_intact(tmp_path)


def test_a_rank_killed_mid_save_fails_the_others_and_keeps_the_checkpoint(tmp_path):
    pg_timeout = 30
    reports = run_ranks(2, "killed", str(tmp_path), tmp_path, worker=WORKER,
                        pg_timeout=pg_timeout)
    assert reports[1].get("exit") == -signal.SIGXFSZ, reports[1]
    survivor = reports[0]
    assert "error" not in survivor, survivor
    assert survivor["killed"]["error"] is not None
    assert survivor["killed"]["seconds"] < pg_timeout + 10, survivor
    previous_checkpoint_intact(tmp_path)


def test_ranks_that_disagree_fail_before_any_file_exists(tmp_path):
    reports = run_ranks(2, "mismatch", str(tmp_path), tmp_path, worker=WORKER)
    for rank, report in enumerate(reports):
        result = report["mismatch"]
        assert result["error"] is not None and "lm_head.weight" in result["error"], (rank, result)
        assert "Double" in result["error"] and "rank 1" in result["error"], (rank, result)
        assert result["files"] == [], (rank, result)
