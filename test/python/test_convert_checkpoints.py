"""Issue 26: converting what people actually hold. Training checkpoints (Lightning-shaped, with an
object whose unpickling would create a marker file; {step, model_state, optimizer_state};
{global_step, model, config_dict}) and TorchScript modules, each written during the test, are
converted through torch_safetensors.convert and the command line, and every tensor is compared
bit for bit with what torch.load(weights_only=False) (the oracle, in this process only) or
named_parameters()/named_buffers() give. The marker never appears while we read."""

import os
import subprocess
import sys

import pytest
import torch

import torch_safetensors
from torch_safetensors import SafetensorError, convert, load_file, safe_open

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(torch_safetensors.__file__)))


class Marker:
    """What an attacker puts in hyper_parameters: unpickling it calls open(path, 'w')."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class TrainConfig:
    """A class the converter has never heard of (an omegaconf-like config object)."""

    def __init__(self):
        self.layers = [4, 4]
        self.name = "run-7"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.register_buffer("scale", torch.arange(4, dtype=torch.float64))
        self.w16 = torch.nn.Parameter(torch.randn(2, 2).to(torch.float16))

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale.float()


def same_bits(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape and
            torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                        b.contiguous().reshape(-1).view(torch.uint8)))


def tensors_of(tree, prefix=""):
    """The oracle's rule for names: dict keys and list/tuple indexes joined with '.'."""
    items = (tree.items() if isinstance(tree, dict) else
             enumerate(tree) if isinstance(tree, (list, tuple)) else ())
    out = {}
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, torch.Tensor):
            out[name] = value
        else:
            out.update(tensors_of(value, name))
    return out


def assert_same_tensors(converted, expected):
    assert sorted(converted) == sorted(expected)
    for name, tensor in expected.items():
        assert same_bits(converted[name], tensor), name


def trained():
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def lightning(tmp_path):
    model, optimizer = trained()
    marker = tmp_path / "pwned"
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.001, "cfg": Marker(marker), "config": TrainConfig()},
    }
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def oracle(path):
    return torch.load(path, weights_only=False)


def test_lightning_checkpoint_converts_without_running_anything(tmp_path, lightning):
    path, marker = lightning
    # With a key: the state dict, named as in it.
    report = convert.convert_checkpoint(path, tmp_path / "model.safetensors", key="state_dict")
    selected = load_file(tmp_path / "model.safetensors")
    # Without: every tensor of the plain containers, the optimizer's too, and a report of the rest.
    everything = convert.convert_checkpoint(path, tmp_path / "all.safetensors")
    converted = load_file(tmp_path / "all.safetensors")
    with_scalars = convert.convert_checkpoint(path, tmp_path / "scalars.safetensors",
                                              metadata_scalars=True)
    tensors, read_report = convert.load_checkpoint(path, key="state_dict")
    assert not marker.exists()  # nothing from the file ran

    assert report.skipped == [] and report.tensors_written == len(selected)
    assert ("hyper_parameters", "dict") in everything.skipped
    assert ("epoch", "int") in everything.skipped
    assert ("pytorch-lightning_version", "str") in everything.skipped
    assert ("optimizer_states.0.param_groups", "list") in everything.skipped
    assert ("lr_schedulers", "list") in everything.skipped
    # Scalars kept: the objects beside them are still reported, by their qualified names.
    assert ("hyper_parameters.cfg", "io.open") in with_scalars.skipped
    assert ("hyper_parameters.config", __name__ + ".TrainConfig") in with_scalars.skipped
    with safe_open(tmp_path / "scalars.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["epoch"] == "3" and metadata["global_step"] == "120"
    assert metadata["hyper_parameters.lr"] == str(0.001)
    assert metadata["pytorch-lightning_version"] == "2.1.0"
    assert metadata["optimizer_states.0.param_groups.0.lr"] == str(0.001)
    assert metadata["format"] == "pt"

    expected = oracle(path)  # runs the payload: the oracle only, after every read of ours
    assert marker.exists()
    assert_same_tensors(selected, expected["state_dict"])
    assert_same_tensors(tensors, expected["state_dict"])
    assert read_report.skipped == []
    everything_expected = tensors_of(expected)
    assert "optimizer_states.0.state.1.exp_avg" in everything_expected
    assert_same_tensors(converted, everything_expected)


def test_strict_keeps_the_refusal_naming_the_path_and_the_global(tmp_path, lightning):
    path, marker = lightning
    with pytest.raises(SafetensorError, match="'epoch' is the int 3"):
        convert.convert_checkpoint(path, tmp_path / "out.safetensors", strict=True)
    torch.save({"w": torch.ones(2), "evil": Marker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(SafetensorError, match=r"'evil' is an object made by 'io\.open'"):
        convert.convert_checkpoint(tmp_path / "evil.pt", tmp_path / "out.safetensors", strict=True)
    assert not (tmp_path / "out.safetensors").exists()
    # Strict applies to the selected part only.
    convert.convert_checkpoint(path, tmp_path / "out.safetensors", key="state_dict", strict=True)
    assert not marker.exists()
    with pytest.raises(SafetensorError, match="has no entry 'model_state'"):
        convert.convert_checkpoint(path, tmp_path / "x.safetensors", key="model_state")


@pytest.mark.parametrize("layout", ["step_model_state", "global_step_model"])
def test_training_checkpoints_with_a_key_and_scalars(tmp_path, layout):
    model, optimizer = trained()
    if layout == "step_model_state":
        checkpoint = {"step": 7, "model_state": model.state_dict(),
                      "optimizer_state": optimizer.state_dict(), "loss": 0.25, "best": True}
        key, scalars = "model_state", {"step": "7", "loss": "0.25", "best": "True"}
    else:
        checkpoint = {"global_step": 1200, "model": model.state_dict(),
                      "config_dict": {"hidden": 4, "act": "gelu", "dropout": 1e-05}}
        key, scalars = "model", {"global_step": "1200"}
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    out = tmp_path / "model.safetensors"
    report = convert.convert_checkpoint(path, out, key=key, metadata_scalars=True)
    assert report.metadata_scalars == len(scalars) and report.skipped == []
    with safe_open(out, "pt") as f:
        assert f.metadata() == {"format": "pt", **scalars}
    assert_same_tensors(load_file(out), oracle(path)[key])
    # Without a key: every tensor, under its full path; the rest reported.
    everything = convert.convert_checkpoint(path, tmp_path / "all.safetensors")
    assert_same_tensors(load_file(tmp_path / "all.safetensors"), tensors_of(oracle(path)))
    assert everything.skipped and all(type_name for _, type_name in everything.skipped)
    if layout == "global_step_model":
        assert ("config_dict", "dict") in everything.skipped
        # Scalars of plain dicts anywhere, by their dotted paths, as str() writes them.
        convert.convert_checkpoint(path, tmp_path / "s.safetensors", metadata_scalars=True)
        with safe_open(tmp_path / "s.safetensors", "pt") as f:
            assert f.metadata()["config_dict.dropout"] == str(1e-05) == "1e-05"


def test_torchscript_module_converts_with_named_parameters_names(tmp_path):
    torch.manual_seed(1)
    scripted = torch.jit.script(Net())
    scripted.bn.running_mean.uniform_()
    torch.jit.save(scripted, tmp_path / "net.pt")
    report = convert.convert_checkpoint(tmp_path / "net.pt", tmp_path / "net.safetensors")
    loaded = torch.jit.load(tmp_path / "net.pt")
    expected = dict(loaded.named_parameters())
    expected.update(loaded.named_buffers())
    assert "fc.weight" in expected and "bn.num_batches_tracked" in expected
    assert_same_tensors(load_file(tmp_path / "net.safetensors"), expected)
    # What is not a tensor (the modules' `training` flags) is reported, never run.
    assert ("training", "bool") in report.skipped and ("fc.training", "bool") in report.skipped
    with pytest.raises(SafetensorError, match="__torch__"):
        convert.convert_checkpoint(tmp_path / "net.pt", tmp_path / "s.safetensors", strict=True)


def test_pickled_module_converts_with_state_dict_names(tmp_path):
    # Python's torch.save(model) pickles the module object itself (weights_only=False to load):
    # its _parameters/_buffers/_modules dicts give state_dict() names, and a non-persistent
    # buffer, which state_dict() leaves out, is skipped.
    torch.manual_seed(2)
    model = Net()
    model.register_buffer("scratch", torch.ones(3), persistent=False)
    torch.save(model, tmp_path / "model.pt")
    report = convert.convert_checkpoint(tmp_path / "model.pt", tmp_path / "model.safetensors")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    converted = load_file(tmp_path / "model.safetensors")
    assert sorted(converted) == sorted(loaded.state_dict())
    assert_same_tensors(converted, loaded.state_dict())
    assert ("scratch", "a non-persistent buffer") in report.skipped


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    return subprocess.run([sys.executable, "-m", "torch_safetensors", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_line_key_strict_and_metadata_scalars(tmp_path, lightning):
    path, marker = lightning
    result = run_cli("convert", path, tmp_path / "all.safetensors")
    assert result.returncode == 0, result.stderr
    assert "skipped hyper_parameters (dict)\n" in result.stderr
    assert "skipped epoch (int)\n" in result.stderr
    assert "parts without tensors skipped" in result.stdout
    result = run_cli("convert", path, tmp_path / "sd.safetensors", "--key", "state_dict",
                     "--metadata-scalars")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "3 scalars as metadata" in result.stdout
    with safe_open(tmp_path / "sd.safetensors", "pt") as f:
        assert f.metadata()["epoch"] == "3"
        assert sorted(f.keys()) == sorted(oracle_state_dict_names())
    result = run_cli("convert", path, tmp_path / "strict.safetensors", "--strict")
    assert result.returncode == 1 and "'epoch' is the int 3" in result.stderr
    assert not (tmp_path / "strict.safetensors").exists()
    assert not marker.exists()


def oracle_state_dict_names():
    model, _ = trained()
    return ["model." + k for k in model.state_dict()]


def test_extraction_options_are_refused_where_they_do_not_apply(tmp_path):
    torch_safetensors.save_file({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    for args in (["--key", "model"], ["--strict"], ["--to", "ptd", "--metadata-scalars"]):
        result = run_cli("convert", tmp_path / "w.safetensors", tmp_path / "out", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "--key, --strict and --metadata-scalars do not apply to" in result.stderr
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    assert run_cli("convert", tmp_path / "w.pt", tmp_path / "o.safetensors", "--key=").returncode == 2
