"""Writes fuzz/seeds_pickle: the data.pkl of checkpoints torch.save makes (every dtype, nested
dicts, ties, views, negated/conjugated/expanded views, parameters, a module's state dict with
_metadata, a training checkpoint with objects), a TorchScript module's data.pkl, pickles of
objects of unknown classes (placeholders: NEWOBJ, BUILD, sets, bytes) and hand-made hostile
pickles. Run from the repository root:
python3 fuzz/make_pickle_seeds.py. (tools/gen_adversarial.py adds convert_*.pkl: the data.pkl of
each case of the converter's adversarial corpus.) It also writes fuzz/seeds_legacy: whole files
in the legacy (pre-1.6, non-zip) torch.save format, for fuzz_legacy."""

import io
import os
import pickle
import zipfile

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds_pickle")
LEGACY_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds_legacy")


def data_pkl(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        return archive.read(name)


def legacy_file(obj, protocol=2):
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    return buffer.getvalue()


def write_legacy_seeds():
    """Legacy files of every dtype torch.save writes in that format, ties and views, protocols 2
    and 4, and one whose storages are tagged 'cuda:0' (as saved from a GPU)."""
    os.makedirs(LEGACY_OUT, exist_ok=True)
    shared = torch.arange(12, dtype=torch.float32)
    dtypes = {str(d).split(".")[1]: torch.ones(2, dtype=d) for d in [
        torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8,
        torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64]}
    ties = {"a": shared, "b": shared, "v": shared[2:8].view(2, 3), "t": shared.view(3, 4).t()}
    seeds = {
        "legacy_dtypes": legacy_file(dtypes),
        "legacy_ties_and_views_protocol4": legacy_file(ties, protocol=4),
        "legacy_module_state_dict": legacy_file(
            torch.nn.Sequential(torch.nn.Linear(2, 2)).state_dict()),
        "legacy_cuda_tagged": legacy_file(ties).replace(b"X\x03\x00\x00\x00cpu",
                                                        b"X\x06\x00\x00\x00cuda:0"),
        "legacy_evil": legacy_file({"w": Evil()}),
    }
    for name, blob in seeds.items():
        with open(os.path.join(LEGACY_OUT, name + ".pt"), "wb") as f:
            f.write(blob)


class Evil:
    def __reduce__(self):
        return (os.system, ("true",))


class Config:
    """A class the converter never heard of: an inert placeholder (issue 26)."""

    def __init__(self):
        self.layers = [2, 2]
        self.tags = {"a", "b"}
        self.blob = b"\x00\x01"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x):
        return self.fc(x) * self.scale


def torchscript_data_pkl():
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Net()), buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        return archive.read(name)


def training_checkpoint():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    return {"epoch": 1, "global_step": 10, "state_dict": model.state_dict(),
            "optimizer_states": [optimizer.state_dict()],
            "hyper_parameters": {"lr": 0.001, "cfg": Config(), "evil": Evil()}}


def main():
    os.makedirs(OUT, exist_ok=True)
    shared = torch.arange(12, dtype=torch.float32)
    seeds = {
        "dtypes": {str(d).split(".")[1]: torch.zeros(2, dtype=d) for d in [
            torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8,
            torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64,
            torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64]},
        "nested": {"model": {"layer": {"w": torch.ones(2, 2)}}, "ema": {"w": torch.ones(1)}},
        "ties_and_views": {"a": shared, "b": shared, "v": shared[2:8].view(2, 3),
                           "t": shared.view(3, 4).t()},
        "parameter": {"p": torch.nn.Parameter(torch.ones(3))},
        "module_state_dict": torch.nn.Sequential(torch.nn.Linear(2, 2)).state_dict(),
        "scalar_and_empty": {"s": torch.tensor(1.0), "e": torch.zeros(0, 3)},
        "non_tensor_values": {"epoch": 3, "lr": 0.5, "name": "x", "flags": [True, None]},
        # Issue 22: rebuild metadata ({'neg': True}, {'conj': True}) and views that would
        # multiply their storage (refused) beside one that does not (position_ids).
        "neg_conj_views": {"n": torch._neg_view(torch.ones(3)),
                           "c": torch.ones(2, dtype=torch.cfloat).conj()},
        "expanded_views": {"e": torch.zeros(1).expand(64, 64),
                           "position_ids": torch.arange(4).expand((1, -1))},
        # Issue 26: training checkpoints with objects (placeholders), optimizer states, scalars.
        "training_checkpoint": training_checkpoint(),
    }
    for name, obj in seeds.items():
        with open(os.path.join(OUT, name + ".pkl"), "wb") as f:
            f.write(data_pkl(obj))
    for protocol in (2, 4, 5):
        with open(os.path.join(OUT, f"evil_protocol{protocol}.pkl"), "wb") as f:
            f.write(pickle.dumps({"w": Evil()}, protocol=protocol))
    with open(os.path.join(OUT, "torchscript_module.pkl"), "wb") as f:
        f.write(torchscript_data_pkl())
    for protocol in (2, 5):
        with open(os.path.join(OUT, f"objects_protocol{protocol}.pkl"), "wb") as f:
            f.write(pickle.dumps({"cfg": Config(), "sets": [{1, 2}, frozenset([3])],
                                 "b": b"xyz", "nested": [Config(), (Config(),)]},
                                protocol=protocol))
    with open(os.path.join(OUT, "plain_protocol4.pkl"), "wb") as f:
        f.write(pickle.dumps({"a": {"b": [1, 2.5, "s", (1, 2), 2**70]}}, protocol=4))
    write_legacy_seeds()


if __name__ == "__main__":
    main()
