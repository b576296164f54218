"""save_model / load_model: shared (tied) tensors handled like the reference, files byte-identical
and interchangeable in both directions."""

import json
import os

import pytest
import safetensors.torch
import torch

import torch_safetensors
from conftest import OURS, REF, assert_bit_equal, mapping_of


class TiedLM(torch.nn.Module):
    """A tiny language model whose output projection shares the embedding matrix."""

    def __init__(self, vocab=11, dim=6):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.tensor(3, dtype=torch.int64))


def _randomized(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    return model


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"head.weight": "user value"}])
def test_save_model_byte_identical(metadata, tmp_path):
    model = _randomized(TiedLM(), 0)
    torch_safetensors.save_model(model, tmp_path / "ours.st", metadata=metadata)
    safetensors.torch.save_model(model, tmp_path / "ref.st", metadata=None if metadata is None else dict(metadata))
    ours, ref = (tmp_path / "ours.st").read_bytes(), (tmp_path / "ref.st").read_bytes()
    if metadata == {"format": "pt"}:
        # Two metadata keys: the reference writes them in hash order (varies run to run), we in
        # sorted order; everything else is identical.
        assert len(ours) == len(ref)
        n = int.from_bytes(ours[:8], "little")
        assert json.loads(ours[8 : 8 + n]) == json.loads(ref[8 : 8 + n])
        assert ours[8 + n :] == ref[8 + n :]
    else:
        assert ours == ref
    with torch_safetensors.safe_open(tmp_path / "ours.st") as f:
        assert "head.weight" not in f.keys()  # the tied duplicate is stored once
        expected = {"head.weight": "embed.weight"} if metadata is None else metadata
        if metadata == {"format": "pt"}:
            expected = {"format": "pt", "head.weight": "embed.weight"}
        assert f.metadata() == expected


def test_save_model_does_not_mutate_callers_metadata(tmp_path):
    metadata = {"format": "pt"}
    torch_safetensors.save_model(TiedLM(), tmp_path / "m.st", metadata=metadata)
    assert metadata == {"format": "pt"}


@pytest.mark.parametrize("writer", [REF, OURS], ids=lambda lib: lib.name)
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_load_model_round_trip(writer, backend, tmp_path):
    source = _randomized(TiedLM(), 1)
    writer.save_model(source, tmp_path / "m.st")
    target = _randomized(TiedLM(), 2)
    missing, unexpected = torch_safetensors.load_model(target, tmp_path / "m.st", backend=backend)
    assert (missing, unexpected) == (set(), [])
    assert target.head.weight is target.embed.weight  # still tied
    for name, tensor in source.state_dict().items():
        assert_bit_equal(target.state_dict()[name], tensor)
    check = _randomized(TiedLM(), 3)
    assert safetensors.torch.load_model(check, tmp_path / "m.st") == (set(), [])


def test_force_contiguous(tmp_path):
    model = torch.nn.Linear(3, 2)
    model.weight = torch.nn.Parameter(torch.randn(3, 2).t())
    torch_safetensors.save_model(model, tmp_path / "ours.st")
    safetensors.torch.save_model(model, tmp_path / "ref.st")
    assert (tmp_path / "ours.st").read_bytes() == (tmp_path / "ref.st").read_bytes()
    assert torch.equal(torch_safetensors.load_file(tmp_path / "ours.st")["weight"], model.weight)


def _file_with(tmp_path, tensors):
    path = tmp_path / "partial.st"
    safetensors.torch.save_file(tensors, path)
    return path


@pytest.mark.parametrize(
    "case",
    ["missing-bias", "extra-key", "tied-other-name", "tied-both-names", "empty"],
)
def test_load_model_non_strict_reports_like_reference(case, tmp_path):
    model = _randomized(TiedLM(), 4)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {
        "missing-bias": {k: v for k, v in full.items() if k not in ("norm.bias", "head.weight")},
        "extra-key": {**{k: v for k, v in full.items() if k != "head.weight"}, "extra": torch.ones(1)},
        # The file kept the other name of the tied pair: it satisfies both.
        "tied-other-name": {k: v for k, v in full.items() if k != "embed.weight"},
        "tied-both-names": {**full, "head.weight": full["head.weight"].clone()},
        "empty": {},
    }[case]
    path = _file_with(tmp_path, tensors)
    results = []
    for lib in (REF, OURS):
        target = _randomized(TiedLM(), 5)
        missing, unexpected = lib.load_model(target, path, strict=False)
        results.append((missing, sorted(unexpected)))
        strict_error = None
        try:
            lib.load_model(_randomized(TiedLM(), 5), path, strict=True)
        except RuntimeError as error:
            strict_error = str(error)
        results.append(strict_error)
    if case == "tied-both-names":
        # Both names of one tensor, with equal values: the reference calls one unexpected and a
        # strict load fails; the core loads it (nothing is lost; module.h, tied_conflicts).
        assert results[:2] == [(set(), ["head.weight"]), results[1]] and results[1] is not None
        assert results[2:] == [(set(), []), None]
    else:
        assert results[2:] == results[:2]
    assert isinstance(results[2][0], set) and isinstance(results[2][1], list)


def test_load_model_tied_names_with_different_values_say_so(tmp_path):
    full = {k: v.clone() for k, v in _randomized(TiedLM(), 4).state_dict().items()}
    path = _file_with(tmp_path, {**full, "head.weight": full["head.weight"] + 1})
    target = _randomized(TiedLM(), 5)
    with pytest.raises(RuntimeError) as error:
        OURS.load_model(target, path)
    # The reference's words (its tests match them), then what happened.
    assert 'Unexpected key(s) in state_dict: "head.weight"' in str(error.value)
    assert '"head.weight" is one tensor with "embed.weight", which is loaded' in str(error.value)
    missing, unexpected = OURS.load_model(target, path, strict=False)
    assert (missing, unexpected) == (set(), ["head.weight"])
    assert torch.equal(target.embed.weight, full["embed.weight"]) and target.head.weight is target.embed.weight


class Nested(torch.nn.Module):
    """One parameter covering a buffer and two disjoint views inside it."""

    def __init__(self):
        super().__init__()
        big = torch.arange(100.0)
        self.a = torch.nn.Parameter(big)
        self.b = torch.nn.Parameter(big[10:20])
        self.c = torch.nn.Parameter(big[30:40])


def test_nested_views_are_dropped_where_the_reference_gives_up(tmp_path):
    # The reference's overlap sweep compares each view with the previous one only, splits c off
    # from a, and then finds no name covering c's storage: RuntimeError. We group all three
    # under a and save it once.
    with pytest.raises(RuntimeError):
        safetensors.torch.save_model(Nested(), tmp_path / "ref.st")
    torch_safetensors.save_model(Nested(), tmp_path / "ours.st")
    with REF.safe_open(tmp_path / "ours.st", "pt") as f:
        assert f.keys() == ["a"]
        assert f.metadata() == {"b": "a", "c": "a"}
    target = Nested()
    with torch.no_grad():
        target.a.zero_()
    assert torch_safetensors.load_model(target, tmp_path / "ours.st") == (set(), [])
    assert torch.equal(target.c, torch.arange(30.0, 40.0))  # views see the loaded storage


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        return self.norm(self.fc(x))


def test_load_model_is_zero_copy_and_trainable(tmp_path):
    path = tmp_path / "net.st"
    source = _randomized(Net(), 6)
    torch_safetensors.save_model(source, path)
    before = path.read_bytes()
    target = Net()
    weight = target.fc.weight
    assert torch_safetensors.load_model(target, path) == (set(), [])
    # set_, not copy_: the same Parameter object now lives in the file's (private) mapping.
    assert target.fc.weight is weight and weight.requires_grad
    for name, tensor in target.state_dict().items():
        assert_bit_equal(tensor, source.state_dict()[name])
        if tensor.numel():
            assert os.path.realpath(mapping_of(tensor.data_ptr())[3]) == os.path.realpath(path)
    # It trains: gradients flow, the optimizer writes to private pages, the file stays as it was.
    optimizer = torch.optim.SGD(target.parameters(), lr=0.1)
    (target(torch.randn(5, 8)) ** 2).sum().backward()
    optimizer.step()
    assert not torch.equal(target.fc.weight, source.fc.weight)
    assert path.read_bytes() == before


def test_load_model_copies_into_other_dtypes(tmp_path):
    path = tmp_path / "net.st"
    source = _randomized(Net(), 7)
    torch_safetensors.save_model(source, path)
    target = Net().double()
    assert torch_safetensors.load_model(target, path) == (set(), [])
    assert target.fc.weight.dtype == torch.float64
    assert mapping_of(target.fc.weight.data_ptr())[3] != os.path.realpath(path)
    assert torch.equal(target.fc.weight.float(), source.fc.weight)


def test_tied_model_round_trips_zero_copy(tmp_path):
    path = tmp_path / "tied.st"
    source = _randomized(TiedLM(), 8)
    torch_safetensors.save_model(source, path)
    target = _randomized(TiedLM(), 9)
    assert torch_safetensors.load_model(target, path) == (set(), [])
    assert target.head.weight is target.embed.weight  # one Parameter: set_ keeps the tie
    assert os.path.realpath(mapping_of(target.embed.weight.data_ptr())[3]) == os.path.realpath(path)
    for name, tensor in source.state_dict().items():
        assert_bit_equal(target.state_dict()[name], tensor)


@pytest.mark.parametrize("strict", [True, False])
def test_load_model_failure_changes_nothing(strict, tmp_path):
    model = _randomized(TiedLM(), 10)
    tensors = {k: v.clone() for k, v in model.state_dict().items() if k != "head.weight"}
    tensors["norm.weight"] = torch.ones(7)  # wrong shape: an error even when not strict
    del tensors["norm.bias"]  # missing: an error when strict
    path = _file_with(tmp_path, tensors)
    target = _randomized(TiedLM(), 11)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    errors = []
    for lib, model in ((REF, _randomized(TiedLM(), 11)), (OURS, target)):
        with pytest.raises(RuntimeError) as error:
            lib.load_model(model, path, strict=strict)
        errors.append(str(error.value))
    assert errors[1] == errors[0]
    for name, tensor in target.state_dict().items():
        assert_bit_equal(tensor, before[name])


class ManyTies(torch.nn.Module):
    """Several tie groups, interleaved with untied tensors, in no sorted order."""

    def __init__(self, views=True):
        super().__init__()
        self.z_embed = torch.nn.Embedding(5, 3)
        self.b_plain = torch.nn.Linear(3, 3)
        self.y_head = torch.nn.Linear(3, 5, bias=False)
        self.y_head.weight = self.z_embed.weight
        self.c_proj = torch.nn.Linear(3, 3)
        self.a_proj = torch.nn.Linear(3, 3)
        self.a_proj.bias = self.c_proj.bias
        self.register_buffer("m_table", torch.arange(12.0).reshape(3, 4))
        self.register_buffer("d_row", self.m_table[1])
        self.register_buffer("e_rows", self.m_table[1:])
        if views:  # disjoint halves of one storage: not shared, ordered by address
            halves = torch.arange(8.0)
            self.register_buffer("k_high", halves[4:])
            self.register_buffer("q_low", halves[:4])


def test_find_shared_tensors_order_like_reference():
    state_dict = ManyTies().state_dict()
    ours = torch_safetensors._find_shared_tensors(state_dict)
    assert ours == safetensors.torch._find_shared_tensors(state_dict)
    assert ours[:4] == [{"m_table", "d_row", "e_rows"}, {"q_low"}, {"k_high"},
                        {"z_embed.weight", "y_head.weight"}]
    assert ours != sorted(ours, key=sorted)  # state-dict order, not name order
    with pytest.raises(RuntimeError, match="amongst: {'q_low'}"):
        torch_safetensors._remove_duplicate_names(state_dict)  # a lone partial view

    state_dict = ManyTies(views=False).state_dict()
    for preferred, discard in ((None, None), (["y_head.weight"], None), (None, ["z_embed.weight"])):
        kwargs = {"preferred_names": preferred, "discard_names": discard}
        ours = torch_safetensors._remove_duplicate_names(state_dict, **kwargs)
        assert ours == safetensors.torch._remove_duplicate_names(state_dict, **kwargs)
    assert ours == {"m_table": ["d_row", "e_rows"], "y_head.weight": ["z_embed.weight"],
                    "a_proj.bias": ["c_proj.bias"]}


def test_shared_tensor_helpers_like_reference():
    base = torch.arange(16.0)
    cases = [base, base[::4], base[3:9], base[:0], base[5:5], torch.zeros(2, 3).t(),
             torch.zeros(()), torch.zeros(4, dtype=torch.float16)[::2], torch.zeros(0)]
    for tensor in cases:
        assert torch_safetensors._is_complete(tensor) == safetensors.torch._is_complete(tensor)
        if tensor.dim() <= 1 or tensor.is_contiguous():  # the reference's needs .view(-1)
            assert torch_safetensors._end_ptr(tensor) == safetensors.torch._end_ptr(tensor)
    # Unlike the reference's, ours also spans tensors .view(-1) refuses.
    tensor = torch.zeros(4, 6)[:, 1:3]
    assert torch_safetensors._end_ptr(tensor) == tensor[-1, -1].data_ptr() + 4


class _Scriptable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 8)
        self.norm = torch.nn.BatchNorm1d(8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.fc(x))))


def test_script_module_round_trips_through_save_model_and_load_model(tmp_path):
    torch.manual_seed(0)
    source = torch.jit.script(_Scriptable().eval())
    with torch.no_grad():
        source.norm.running_mean.uniform_(-1, 1)
    path = str(tmp_path / "scripted.safetensors")
    torch_safetensors.save_model(source, path)
    # Every tensor of its state dict, by the same names.
    assert set(torch_safetensors.load_file(path)) == set(source.state_dict())

    target = torch.jit.script(_Scriptable().eval())
    with torch.no_grad():
        for tensor in target.state_dict().values():
            tensor.zero_()
    weight = target.fc.weight
    assert torch_safetensors.load_model(target, path) == (set(), [])
    assert target.fc.weight is weight  # same parameter object, now holding the file's values
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_script_module_strict_load_reports_like_a_module(tmp_path):
    path = str(tmp_path / "other.safetensors")
    torch_safetensors.save_file({"unrelated": torch.zeros(2)}, path)
    target = torch.jit.script(_Scriptable().eval())
    before = target.fc.weight.clone()
    with pytest.raises(RuntimeError, match="unrelated"):
        torch_safetensors.load_model(target, path)
    assert torch.equal(target.fc.weight, before)
    missing, unexpected = torch_safetensors.load_model(target, path, strict=False)
    assert "fc.weight" in missing and unexpected == ["unrelated"]
