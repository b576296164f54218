"""torch.distributed.checkpoint storage on safetensors (torch_safetensors.distributed._dcp): round trips with
our writer, huggingface_hub's and torch's; partial reads (bytes counted on the reading thread);
DTensor loading on a 2-rank gloo group; the errors."""

import json
import os
import socket
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException

import torch_safetensors
from torch_safetensors import hub
from torch_safetensors.distributed import StorageReader, StorageWriter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def thread_rchar() -> int:
    """Bytes this thread passed to read()/pread() (the core's pread backend reads on the caller's
    thread; other threads, gloo's included, do not count)."""
    with open("/proc/thread-self/io") as io:
        for line in io:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/thread-self/io")


def sample_state_dict(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(64, 32, generator=gen),
        "layers.0.attn.q_proj.weight": torch.randn(32, 32, generator=gen).to(torch.bfloat16),
        "layers.0.mlp.up.weight": torch.randn(48, 32, generator=gen).to(torch.float16),
        "layers.0.mlp.up.scale": torch.randn(48, 1, generator=gen).to(torch.float8_e4m3fn),
        "layers.0.norm.weight": torch.randn(32, generator=gen),
        "step_count": torch.tensor(7, dtype=torch.int64),
        "mask": torch.rand(5, 3, generator=gen) > 0.5,
    }


def empty_like(state_dict):
    return {k: torch.zeros_like(v) for k, v in state_dict.items()}


def assert_same(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name


def load(state_dict, reader):
    dcp.load(state_dict, storage_reader=reader, no_dist=True)
    return state_dict


# -- single process -----------------------------------------------------------------------------


def same_files(left, right):
    """Two checkpoint directories hold the same files, byte for byte."""
    assert sorted(os.listdir(left)) == sorted(os.listdir(right))
    for name in os.listdir(left):
        assert (left / name).read_bytes() == (right / name).read_bytes(), name


@pytest.mark.parametrize("max_shard_size", [None, 3000])
def test_writer_is_save_torch_state_dict_byte_for_byte(tmp_path, max_shard_size):
    """The writer's checkpoint is hub.save_torch_state_dict's of the same state dict: one file
    below max_shard_size (default "5GB"), else shards and an index."""
    expected = sample_state_dict()
    sizes = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    dcp.save(expected, storage_writer=StorageWriter(tmp_path / "dcp", **sizes), no_dist=True)
    hub.save_torch_state_dict(expected, tmp_path / "hub", **sizes)
    same_files(tmp_path / "dcp", tmp_path / "hub")
    files = sorted(os.listdir(tmp_path / "dcp"))
    if max_shard_size is None:
        assert files == ["model.safetensors"]
    else:
        assert len(files) > 2 and files[-1] == "model.safetensors.index.json"
        index = json.loads((tmp_path / "dcp" / files[-1]).read_text())
        assert index["metadata"]["total_size"] == sum(t.nbytes for t in expected.values())
        assert sorted(index["weight_map"]) == sorted(expected)
    # the directory and its file or index; our open_checkpoint, torch's reader, huggingface_hub
    for name in ["", files[-1]]:
        assert_same(load(empty_like(expected), StorageReader(tmp_path / "dcp" / name)), expected)
    with torch_safetensors.open_checkpoint(tmp_path / "dcp") as checkpoint:
        assert_same({k: checkpoint.get_tensor(k) for k in checkpoint.keys()}, expected)
    assert_same(load(empty_like(expected), HuggingFaceStorageReader(str(tmp_path / "dcp"))), expected)
    huggingface_hub = pytest.importorskip("huggingface_hub")
    module = torch.nn.Module()
    for name, tensor in expected.items():
        module.register_buffer(name.replace(".", "_"), torch.zeros_like(tensor))
    renamed = {k.replace(".", "_"): v for k, v in expected.items()}
    dcp.save(renamed, storage_writer=StorageWriter(tmp_path / "hf", **sizes), no_dist=True)
    huggingface_hub.load_torch_model(module, tmp_path / "hf", strict=True)
    assert_same(dict(module.state_dict()), renamed)


def test_writer_metadata_stale_files_and_tied_tensors(tmp_path):
    for name in ["model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors",
                 "model.safetensors.index.json", "other.safetensors", "model-1-of-3.safetensors"]:
        (tmp_path / name).write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    shared = torch.randn(8, 4)
    flat = torch.arange(64, dtype=torch.float32)  # views of one buffer, one not contiguous
    expected = {"embed": shared, "lm_head": shared, "bias": torch.randn(4), "v0": flat[:16].view(4, 4),
                "v1": flat[16:32], "v2": flat.view(8, 8)[:, :2]}
    dcp.save(expected, storage_writer=StorageWriter(tmp_path, metadata={"origin": "test"}), no_dist=True)
    # the core's stale-file rule: files of the pattern and the index go, others stay
    assert sorted(os.listdir(tmp_path)) == [
        "keep.txt", "model-1-of-3.safetensors", "model.safetensors", "other.safetensors"]
    with torch_safetensors.safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt", "origin": "test"}
    assert_same(load(empty_like(expected), StorageReader(tmp_path / "model.safetensors")), expected)
    dcp.save(expected, storage_writer=StorageWriter(tmp_path, metadata={"origin": "test"},
                                                    max_shard_size=200), no_dist=True)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["origin"] == "test"
    assert "model.safetensors" not in os.listdir(tmp_path)  # the single file of before: stale
    assert_same(load(empty_like(expected), StorageReader(tmp_path)), expected)


@pytest.mark.parametrize("layout", ["file", "hub_sharded", "hub_single_dir", "huggingface_hub", "torch_hf", "torch_hf_mapped"])
def test_reads_other_writers(tmp_path, layout):
    expected = sample_state_dict(1)
    if layout == "file":
        path = tmp_path / "weights.safetensors"
        torch_safetensors.save_file(expected, path)
    elif layout == "hub_sharded":
        hub.save_torch_state_dict(expected, tmp_path, max_shard_size=3000)
        assert len(list(tmp_path.glob("*.safetensors"))) > 1
        path = tmp_path
    elif layout == "hub_single_dir":
        hub.save_torch_state_dict(expected, tmp_path)
        assert os.listdir(tmp_path) == ["model.safetensors"]
        path = tmp_path
    elif layout == "huggingface_hub":
        huggingface_hub = pytest.importorskip("huggingface_hub")
        huggingface_hub.save_torch_state_dict(expected, tmp_path, max_shard_size=3000)
        path = tmp_path
    elif layout == "torch_hf":
        dcp.save(expected, storage_writer=HuggingFaceStorageWriter(str(tmp_path)), no_dist=True)
        path = tmp_path
    else:  # torch's writer spreading tensors over 2 files (its files carry DCP_SHARDING_INFO)
        mapping = {k: 1 + i % 2 for i, k in enumerate(sorted(expected))}
        writer = HuggingFaceStorageWriter(str(tmp_path), fqn_to_index_mapping=mapping)
        dcp.save(expected, storage_writer=writer, no_dist=True)
        assert len(list(tmp_path.glob("*.safetensors"))) == 2
        path = tmp_path
    assert_same(load(empty_like(expected), StorageReader(path)), expected)


def test_reads_only_requested_keys(tmp_path):
    gen = torch.Generator().manual_seed(0)
    expected = {f"w{i}": torch.randn(256, 256, generator=gen) for i in range(8)}  # 256 KiB each
    hub.save_torch_state_dict(expected, tmp_path, max_shard_size=600_000)
    reader = StorageReader(tmp_path, backend="pread")  # "auto" maps whole tensors: rchar misses them
    subset = {"w1": torch.zeros(256, 256), "w6": torch.zeros(256, 256)}
    before = thread_rchar()
    load(subset, reader)
    read = thread_rchar() - before
    assert torch.equal(subset["w1"], expected["w1"]) and torch.equal(subset["w6"], expected["w6"])
    data = 2 * 256 * 256 * 4
    # the two tensors, plus headers (read twice: metadata, then data) and the index
    assert data <= read < data + 64 * 1024, read


def test_destination_dtype_and_device_follow_copy(tmp_path):
    """As DCP's readers do: the loaded values are copied into the destination (Tensor.copy_),
    which converts dtypes; torch's HuggingFaceStorageReader gives the same."""
    expected = {"w": torch.randn(16, 8), "b": torch.randn(8).to(torch.bfloat16)}
    torch_safetensors.save_file(expected, tmp_path / "model.safetensors")
    ours = load({"w": torch.zeros(16, 8, dtype=torch.float16), "b": torch.zeros(8)}, StorageReader(tmp_path))
    theirs = load(
        {"w": torch.zeros(16, 8, dtype=torch.float16), "b": torch.zeros(8)}, HuggingFaceStorageReader(str(tmp_path))
    )
    assert ours["w"].dtype == torch.float16 and ours["b"].dtype == torch.float32
    assert torch.equal(ours["w"], expected["w"].half()) and torch.equal(ours["b"], expected["b"].float())
    assert_same(ours, theirs)


@pytest.mark.parametrize("backend", ["pread", "mmap"])
@pytest.mark.parametrize("threads", [1, 3])
def test_backends_and_threads(tmp_path, backend, threads):
    expected = sample_state_dict(2)
    hub.save_torch_state_dict(expected, tmp_path, max_shard_size=3000)
    reader = StorageReader(tmp_path, backend=backend, thread_count=threads)
    assert_same(load(empty_like(expected), reader), expected)
    with pytest.raises(ValueError, match="backend must be"):
        StorageReader(tmp_path, backend="mmapp")
    with pytest.raises(ValueError, match="thread_count must be"):
        StorageReader(tmp_path, thread_count=0)


def test_exotic_dtypes(tmp_path):
    gen = torch.Generator().manual_seed(3)
    expected = {
        "f4": torch.randint(0, 256, (4, 8), generator=gen, dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
        "e8m0": torch.randint(0, 256, (4,), generator=gen, dtype=torch.uint8).view(torch.float8_e8m0fnu),
        "e5m2": torch.randint(0, 256, (3, 2), generator=gen, dtype=torch.uint8).view(torch.float8_e5m2),
        "u16": torch.arange(5, dtype=torch.int32).to(torch.uint16),
        "c64": torch.randn(3, generator=gen, dtype=torch.complex64),
    }
    torch_safetensors.save_file(expected, tmp_path / "m.safetensors")
    metadata = StorageReader(tmp_path).read_metadata()
    assert metadata.state_dict_metadata["f4"].size == torch.Size([4, 8])  # torch's shape: pairs
    out = {k: torch.zeros_like(v.view(torch.uint8)).view(v.dtype) for k, v in expected.items()}
    assert_same(load(out, StorageReader(tmp_path)), expected)


def test_metadata(tmp_path):
    expected = sample_state_dict()
    hub.save_torch_state_dict(expected, tmp_path, max_shard_size=3000)
    metadata = StorageReader(tmp_path).read_metadata()
    assert sorted(metadata.state_dict_metadata) == sorted(expected)
    for name, tensor in expected.items():
        md = metadata.state_dict_metadata[name]
        assert md.properties.dtype == tensor.dtype and md.size == tensor.shape
        assert len(md.chunks) == 1 and md.chunks[0].sizes == tensor.shape and not any(md.chunks[0].offsets)
    assert metadata.storage_meta.checkpoint_id == str(tmp_path)


def test_errors(tmp_path):
    expected = {"w": torch.randn(4, 4)}
    dcp.save(expected, storage_writer=StorageWriter(tmp_path), no_dist=True)
    # a key the checkpoint lacks: DCP's planner refuses it while planning, as with its own
    # readers (DCP wraps what a rank raises in a CheckpointException, even without a group)
    with pytest.raises(CheckpointException, match="Missing key in checkpoint state_dict: absent"):
        load({"w": torch.zeros(4, 4), "absent": torch.zeros(2)}, StorageReader(tmp_path))
    with pytest.raises(CheckpointException, match="Missing key in checkpoint state_dict: absent"):
        load({"w": torch.zeros(4, 4), "absent": torch.zeros(2)}, HuggingFaceStorageReader(str(tmp_path)))
    with pytest.raises(CheckpointException, match="Size mismatch.*for w"):
        load({"w": torch.zeros(4, 5)}, StorageReader(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        StorageReader(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .safetensors file"):
        StorageReader(tmp_path / "empty").read_metadata()
    # F6 (torch has no such dtype) is refused by name
    f6 = torch_safetensors.RawTensor("F6_E2M3", [4], torch.zeros(3, dtype=torch.uint8))
    (tmp_path / "f6").mkdir()
    torch_safetensors.save_file({"w": torch.zeros(2), "f6": f6}, tmp_path / "f6" / "m.safetensors")
    with pytest.raises(ValueError, match=r"m.safetensors: tensor `f6` has dtype F6_E2M3"):
        StorageReader(tmp_path / "f6").read_metadata()
    # several files without an index (torch's save_distributed layout) that both hold a tensor whole
    (tmp_path / "twice").mkdir()
    torch_safetensors.save_file({"w": torch.zeros(2)}, tmp_path / "twice" / "a.safetensors")
    torch_safetensors.save_file({"w": torch.ones(2)}, tmp_path / "twice" / "b.safetensors")
    with pytest.raises(ValueError, match=r"tensor `w` at offsets \[0\] is stored twice: in .*a.safetensors and in .*b.safetensors"):
        StorageReader(tmp_path / "twice").read_metadata()
    # the writer: values that are not tensors
    with pytest.raises(CheckpointException, match="ValueError: state dict entry `epoch` is not a tensor"):
        dcp.save({"w": torch.zeros(2), "epoch": 3}, storage_writer=StorageWriter(tmp_path / "out"), no_dist=True)
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()


# -- two ranks on gloo --------------------------------------------------------------------------

WORLD = 2
ROWS, COLS = 512, 256  # 512 KiB of float32 per tensor


def full_weights():
    gen = torch.Generator().manual_seed(42)
    weights = {f"layers.{i}.weight": torch.randn(ROWS, COLS, generator=gen) for i in range(4)}
    weights["odd.bias"] = torch.randn(7, generator=gen)  # 4 + 3 rows on 2 ranks: uneven chunks
    return weights


def _rank_main(rank: int, port: int, directory: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=__import__("datetime").timedelta(seconds=60))
    try:
        _rank_checks(rank, directory)
    finally:
        dist.destroy_process_group()


def _rank_checks(rank: int, directory: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    weights = full_weights()
    total = sum(t.nbytes for t in weights.values())
    report = {}

    # our writer, whole tensors from every rank: DCP hands each to one rank, which writes it
    # once, straight into save_torch_state_dict's layout (the reference written by rank 0)
    from pathlib import Path

    reference = Path(directory) / "reference"
    if rank == 0:
        hub.save_torch_state_dict(weights, reference, max_shard_size=ROWS * COLS * 4 * 2)
    ours = os.path.join(directory, "ours")
    dcp.save(weights, storage_writer=StorageWriter(ours, max_shard_size=ROWS * COLS * 4 * 2))
    dist.barrier()
    same_files(Path(ours), reference)
    with torch_safetensors.open_checkpoint(ours) as checkpoint:
        assert len(checkpoint.shard_files) > 1
        assert_same({k: checkpoint.get_tensor(k) for k in checkpoint.keys()}, weights)

    # Shard(0) and Shard(1) DTensors: each rank reads only its rows / columns
    for placement in (Shard(0), Shard(1)):
        state = {
            k: distribute_tensor(torch.zeros_like(v), mesh, [placement if v.dim() > placement.dim else Shard(0)])
            for k, v in weights.items()
        }
        before = thread_rchar()
        dcp.load(state, storage_reader=StorageReader(ours))
        report[f"read_{placement.dim}"] = thread_rchar() - before
        for name, tensor in state.items():
            assert isinstance(tensor, DTensor)
            assert torch.equal(tensor.full_tensor(), weights[name]), name

    # torch's writer, every rank its own chunks (save_distributed), with and without consolidation
    sharded = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in weights.items()}
    plain = os.path.join(directory, "torch_distributed")
    dcp.save(sharded, storage_writer=HuggingFaceStorageWriter(plain, save_distributed=True))
    consolidated = os.path.join(directory, "torch_consolidated")
    writer = HuggingFaceStorageWriter(consolidated, save_distributed=True, enable_consolidation=True)
    dcp.save(sharded, storage_writer=writer)
    dist.barrier()
    for path in (plain, consolidated):
        for placement in (Shard(0), Shard(1)):  # Shard(1): parts of the saved row chunks
            state = {
                k: distribute_tensor(torch.zeros_like(v), mesh, [placement if v.dim() > 1 else Shard(0)])
                for k, v in weights.items()
            }
            dcp.load(state, storage_reader=StorageReader(path))
            for name, tensor in state.items():
                assert torch.equal(tensor.full_tensor(), weights[name]), (path, placement, name)
        whole = empty_like(weights)  # every rank the whole tensors: from both ranks' files
        dcp.load(whole, storage_reader=StorageReader(path))
        assert_same(whole, weights)

    # our writer takes the Shard(0) DTensors as they are: each rank writes its own rows into the
    # final files, the same bytes as the reference; replicated DTensors are written once
    for name, state in (("sharded", sharded),
                        ("replicated", {k: distribute_tensor(v, mesh, [Replicate()])
                                        for k, v in weights.items()})):
        dcp.save(state, storage_writer=StorageWriter(os.path.join(directory, name),
                                                     max_shard_size=ROWS * COLS * 4 * 2))
        dist.barrier()
        same_files(Path(directory) / name, reference)

    # a tensor-parallel model: save its full state dict, load it back shard by shard
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    def tp_model(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        return parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})

    source = tp_model(1)
    full = get_model_state_dict(source, options=StateDictOptions(full_state_dict=True))
    tp_dir = os.path.join(directory, "tp")
    dcp.save(get_model_state_dict(source), storage_writer=StorageWriter(tp_dir))  # DTensors
    dist.barrier()
    if rank == 0:
        hub.save_torch_state_dict(full, Path(directory) / "tp_reference")
    dist.barrier()
    same_files(Path(tp_dir), Path(directory) / "tp_reference")
    target = tp_model(2)
    sharded = get_model_state_dict(target)
    assert all(isinstance(v, DTensor) for v in sharded.values())
    dcp.load(sharded, storage_reader=StorageReader(tp_dir))
    set_model_state_dict(target, sharded)
    x = torch.randn(4, 16)
    assert torch.equal(target(x), source(x))

    report["total"] = total
    with open(os.path.join(directory, f"rank{rank}.json"), "w") as out:
        json.dump(report, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_gloo(tmp_path):
    context = mp.start_processes(
        _rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 90
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-rank DCP test did not finish within 90 s")
    total = None
    for rank in range(WORLD):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        total = report["total"]
        for dim in (0, 1):
            # half of the data, plus headers (each shard's, at metadata and at read time)
            assert total / WORLD <= report[f"read_{dim}"] < total / WORLD + 64 * 1024, (rank, dim, report)


def _sharded_files(folder, chunks):
    """Files of torch's save_distributed layout: `chunks` is [(file, tensor, offsets, values)],
    each file's __metadata__ placing its chunks with DCP_SHARDING_INFO."""
    folder.mkdir()
    by_file = {}
    for file, name, offsets, values in chunks:
        by_file.setdefault(file, []).append((name, offsets, values))
    for file, entries in by_file.items():
        info = {name: {"saved_offsets": offsets} for name, offsets, _ in entries}
        torch_safetensors.save_file(
            {name: values for name, _, values in entries}, folder / file,
            metadata={"DCP_SHARDING_INFO": json.dumps(info)},
        )
    return folder


def test_coverage_is_checked_exactly(tmp_path):
    """Chunks must tile each tensor exactly once (the core's check_coverage), with offsets that
    are non-negative integers: a gap, an overlap or a bad offset names the file and the tensor."""
    w = torch.arange(10.0).reshape(5, 2)
    # An exact cover in two files (rows 0-2 and 3-4), and one along dimension 1.
    exact = _sharded_files(tmp_path / "exact", [
        ("a.safetensors", "w", [0, 0], w[:3].clone()), ("b.safetensors", "w", [3, 0], w[3:].clone()),
        ("a.safetensors", "v", [0, 0], w[:, :1].clone()), ("b.safetensors", "v", [0, 1], w[:, 1:].clone()),
    ])
    metadata = StorageReader(exact).read_metadata()
    assert list(metadata.state_dict_metadata["w"].size) == [5, 2]
    state = {"w": torch.full((5, 2), -1.0), "v": torch.full((5, 2), -1.0)}
    dcp.load(state, storage_reader=StorageReader(exact), no_dist=True)
    assert torch.equal(state["w"], w) and torch.equal(state["v"], w)
    cases = {
        # rows 0-1 and 3-4: row 2 would keep the destination's old values
        "gap": ([("a.safetensors", "w", [0, 0], w[:2].clone()), ("b.safetensors", "w", [3, 0], w[3:].clone())],
                r"b.safetensors|a.safetensors", r"tensor 'w': its 2 stored chunks cover 8 of the 10 elements"),
        # rows 0-2 and 2-4: row 2 twice, with different values
        "overlap": ([("a.safetensors", "w", [0, 0], w[:3].clone()), ("b.safetensors", "w", [2, 0], w[2:].clone() + 1)],
                    r"b.safetensors", r"tensor 'w': the chunk at offsets \[2, 0\] of size \[3, 2\] in .*b.safetensors overlaps"),
        "negative": ([("a.safetensors", "w", [-4, 0], w.clone())],
                     r"a.safetensors", r"tensor 'w': 'saved_offsets' must be an integer in \[0, 9223372036854775807\], found -4"),
        "fraction": ([("a.safetensors", "w", [3.9, 0], w.clone())],
                     r"a.safetensors", r"tensor 'w': 'saved_offsets' must be an integer in .*, found 3.9"),
        "huge": ([("a.safetensors", "w", [2**63, 0], w.clone())],
                 r"a.safetensors", r"tensor 'w': 'saved_offsets' must be an integer in .*, found 9223372036854775808"),
        "beyond_64_bits": ([("a.safetensors", "w", [2**70, 0], w.clone())],
                           r"a.safetensors", r"DCP_SHARDING_INFO'\]: is not valid JSON"),
        "end_overflows": ([("a.safetensors", "w", [2**63 - 2, 0], w.clone())],
                          r"a.safetensors", r"tensor 'w': the chunk at offsets .* does not fit 64-bit sizes"),
        "rank": ([("a.safetensors", "w", [0], w.clone())],
                 r"a.safetensors", r"tensor 'w' has 2 dimensions, but its saved_offsets \[0\] has 1"),
        "not_a_list": ([("a.safetensors", "w", 3, w.clone())],
                       r"a.safetensors", r"tensor 'w': must be \{\"saved_offsets\": \[offsets\]\}"),
    }
    for case, (chunks, file, message) in cases.items():
        folder = _sharded_files(tmp_path / case, chunks)
        with pytest.raises(ValueError, match=message) as error:
            StorageReader(folder).read_metadata()
        assert __import__("re").search(file, str(error.value)), (case, str(error.value))
    # A bad DCP_SHARDING_INFO value is refused whatever its JSON type.
    folder = tmp_path / "bad_json"
    folder.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        torch_safetensors.save_file({"w": w}, folder / name, metadata={"DCP_SHARDING_INFO": "[1, 2]"})
    with pytest.raises(ValueError, match=r"a.safetensors: __metadata__\['DCP_SHARDING_INFO'\]: must be an object"):
        StorageReader(folder).read_metadata()


@pytest.mark.parametrize("sync_files", [True, False])
def test_writer_durability_is_the_cores(tmp_path, monkeypatch, sync_files):
    """sync_files=True (the default, as FileSystemWriter's) is the core's durable save (every file
    and the directory fsync'ed before publishing): no Python fsync."""
    calls = []
    C = torch_safetensors._extension._C
    real = C.save_sharded_group
    monkeypatch.setattr(C, "save_sharded_group", lambda *a: calls.append(a[-1]) or real(*a))
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("a Python fsync"))
    writer = StorageWriter(tmp_path, **({} if sync_files else {"sync_files": False}))
    dcp.save({"w": torch.ones(2)}, storage_writer=writer, no_dist=True)
    assert calls == [sync_files]
