"""torch_safetensors.aoti: a package compiled without its weights (make_aoti_package.py, once per
run, shared by the xdist workers) gets them from safetensors written by save_weights, and matches
eager PyTorch; the checks are the C++ library's (test/cpp/test_aoti.cpp tests them in depth)."""
import fcntl
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from safetensors.torch import load_file, save_file
from torch_safetensors import SafetensorError, aoti

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "make_aoti_package.py")


def _script_module():
    spec = importlib.util.spec_from_file_location("make_aoti_package", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """The script's output, made by the first worker that gets here (the others wait)."""
    shared = tmp_path_factory.getbasetemp().parent  # the same for every xdist worker
    out = shared / "aoti_package"
    with open(shared / "aoti_package.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "io.safetensors").exists():
            result = subprocess.run([sys.executable, SCRIPT, str(out)], capture_output=True,
                                    text=True)
            if result.returncode == 77:
                pytest.skip(f"AOTInductor cannot compile here: {result.stderr}")
            assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def program(folder):
    """The model the package was compiled from, exported again (same names, same values)."""
    script = _script_module()
    torch.manual_seed(0)
    model = script.Model().eval()
    x = load_file(str(folder / "io.safetensors"))["x"]
    return torch.export.export(model, (x,))


@pytest.fixture
def io(folder):
    return load_file(str(folder / "io.safetensors"))


def fresh(folder):
    return torch._inductor.aoti_load_package(str(folder / "model.pt2"))


def test_constants_describe_what_the_package_asks_for(folder):
    compiled = fresh(folder)
    constants = aoti.constants(compiled)
    assert sorted(c["fqn"] for c in constants) == sorted(compiled.get_constant_fqns())
    l1 = next(c for c in constants if c["fqn"] == "l1.weight")
    assert (l1["dtype"], l1["sizes"], l1["strides"], l1["nbytes"]) == (
        torch.float32, [2048, 512], [512, 1], 2048 * 512 * 4)
    assert aoti.constants(compiled.loader) == constants  # the loader itself is accepted too


@pytest.mark.parametrize("with_package", [True, False])
def test_save_weights_then_load_matches_eager(folder, program, io, tmp_path, with_package):
    path = tmp_path / "model.safetensors"
    package = str(folder / "model.pt2") if with_package else None
    aoti.save_weights(program, path, package=package)
    names = set(load_file(str(path)))
    if with_package:  # exactly the package's names
        assert names == {c["fqn"] for c in aoti.constants(package)}
    else:  # every name, the tied pair once
        assert len(names) == len(program.state_dict) - 1
    compiled = fresh(folder)
    assert aoti.load_weights(compiled, path) == ([], [])
    assert torch.allclose(compiled(io["x"]), io["y_a"], atol=1e-4, rtol=1e-4)


def test_inactive_set_swaps_in(folder, io):
    compiled = fresh(folder)
    aoti.load_weights(compiled, folder / "weights_a.safetensors")
    aoti.load_weights(compiled, folder / "weights_b.safetensors", inactive=True)
    assert torch.allclose(compiled(io["x"]), io["y_a"], atol=1e-4, rtol=1e-4)
    aoti.swap_weights(compiled)
    assert torch.allclose(compiled(io["x"]), io["y_b"], atol=1e-4, rtol=1e-4)


def test_refusals(folder, io, tmp_path):
    compiled = fresh(folder)
    aoti.load_weights(compiled, folder / "weights_a.safetensors")
    weights = load_file(str(folder / "weights_b.safetensors"))

    extra = dict(weights, extra=torch.ones(3))
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(RuntimeError, match="not taken by the package: extra"):
        aoti.load_weights(compiled, tmp_path / "extra.safetensors")
    missing, unexpected = aoti.load_weights(compiled, tmp_path / "extra.safetensors",
                                            strict=False)
    assert (missing, unexpected) == ([], ["extra"])
    assert torch.allclose(compiled(io["x"]), io["y_b"], atol=1e-4, rtol=1e-4)

    wrong = dict(weights, **{"l1.weight": weights["l1.weight"].double()})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(TypeError, match="'l1.weight' is Double, the package's constant"):
        aoti.load_weights(compiled, tmp_path / "wrong.safetensors")
    # dtype= casts on load, as everywhere else
    assert aoti.load_weights(compiled, tmp_path / "wrong.safetensors", dtype=torch.float32) == (
        [], [])

    with pytest.raises(TypeError, match="got Linear"):
        aoti.load_weights(torch.nn.Linear(2, 2), folder / "weights_a.safetensors")
    with pytest.raises(SafetensorError):
        aoti.load_weights(compiled, folder / "model.pt2")  # a zip, not safetensors


class WithConstants(torch.nn.Module):
    """A non-persistent buffer (in ExportedProgram.constants under its FQN) and two plain tensor
    attributes of different shapes (lifted constants, which the package renames)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)
        self.register_buffer("mask", torch.randn(16), persistent=False)
        self.table = torch.randn(16, 16)
        self.offset = torch.randn(2, 16)

    def forward(self, x):
        return (self.lin(x) * self.mask) @ self.table + self.offset


def test_lifted_constants_are_saved_under_the_packages_names(tmp_path):
    torch.manual_seed(0)
    model = WithConstants().eval()
    x = torch.randn(2, 16)
    program = torch.export.export(model, (x,))
    package = torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp_path / "model.pt2"), inductor_configs=aoti.WEIGHTLESS)
    fqns = {c["fqn"] for c in aoti.constants(package)}
    assert {"lin.weight", "lin.bias", "mask"} < fqns and "table" not in fqns  # renamed
    aoti.save_weights(program, tmp_path / "model.safetensors", package=package)
    assert set(load_file(str(tmp_path / "model.safetensors"))) == fqns
    compiled = torch._inductor.aoti_load_package(package)
    assert aoti.load_weights(compiled, tmp_path / "model.safetensors") == ([], [])
    assert torch.allclose(compiled(x), model(x), atol=1e-5)
    # Without the package the names are the program's: the renamed ones do not match.
    aoti.save_weights(program, tmp_path / "program_names.safetensors")
    with pytest.raises(RuntimeError, match="not taken by the package: offset, table"):
        aoti.load_weights(compiled, tmp_path / "program_names.safetensors")
