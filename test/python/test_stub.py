"""_C.pyi declares the binding exactly: every name and class it declares exists in the built
extension with the same bases, methods and properties, and every public name of the extension is
declared."""
import ast
import inspect
import os

import pytest

import torch_safetensors
from torch_safetensors._extension import _C

STUB = os.path.join(os.path.dirname(torch_safetensors.__file__), "_C.pyi")


def _stub():
    """{name: (kind, bases, members)} of the stub's top level."""
    tree = ast.parse(open(STUB, encoding="utf-8").read())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign):
                    members.add(item.target.id)
            out[node.name] = ("class", [ast.unparse(b) for b in node.bases], members)
        elif isinstance(node, ast.FunctionDef):
            out[node.name] = ("function", [], set())
        elif isinstance(node, ast.AnnAssign):
            out[node.target.id] = ("attribute", [], set())
    return out


def _public(names):
    return {n for n in names if not n.startswith("__")}


def test_the_stub_parses_into_what_it_declares():
    stub = _stub()
    assert stub["File"][0] == "class" and stub["File"][1] == ["Checkpoint"]
    assert "for_each" in stub["Checkpoint"][2] and stub["save_file"][0] == "function"


def test_every_declared_name_is_bound_as_declared():
    for name, (kind, bases, members) in _stub().items():
        assert hasattr(_C, name), f"_C.pyi declares {name}, the binding has none"
        value = getattr(_C, name)
        if kind == "class":
            assert inspect.isclass(value), name
            if name == "SafetensorError":
                continue
            assert [b.__name__ for b in value.__bases__ if b.__name__ != "pybind11_object"] == \
                bases, (name, value.__bases__)
            for member in members - {"__init__"}:
                assert hasattr(value, member), f"_C.pyi declares {name}.{member}, the binding has none"
        elif kind == "function":
            assert callable(value) and not inspect.isclass(value), name


def test_every_bound_name_is_declared():
    stub = _stub()
    assert sorted(_public(dir(_C)) - set(stub) - {"_os_error_types"}) == []
    for name, (kind, _, members) in stub.items():
        if kind != "class" or name == "SafetensorError":
            continue
        cls = getattr(_C, name)
        inherited = set()
        for base in cls.__mro__[1:]:
            inherited |= set(vars(base))
        own = {m for m in _public(vars(cls)) if m not in inherited or m in members}
        # a class's own methods and properties, less pybind's plumbing
        own -= {"_pybind11_conduit_v1_"}
        assert sorted(own - members - {"__init__"}) == [], name


@pytest.mark.parametrize("name", ["LoadOptions", "ModuleLoadOptions"])
def test_options_fields_are_the_cores_defaults(name):
    cls = getattr(_C, name)
    options = cls()
    # the C++ defaults (options.h), read through the binding, never restated in Python
    assert (options.backend, options.device, options.dtype, options.cast_fp8,
            options.populate) == ("mmap", None, None, False, False)
    assert options.staging_bytes > 0
    chosen = cls(backend="pread", populate=True, staging_bytes=1 << 20)
    assert (chosen.backend, chosen.populate, chosen.staging_bytes) == ("pread", True, 1 << 20)
    assert chosen.device is None and repr(chosen).startswith(name + "(backend=pread")
    with pytest.raises(TypeError, match="unexpected keyword argument 'always_stage'"):
        cls(always_stage=True)
    with pytest.raises(ValueError, match='backend "mapped" is invalid'):
        cls(backend="mapped")


def test_module_load_options_extend_load_options():
    options = _C.ModuleLoadOptions(strict=False, backend="pread")
    assert isinstance(options, _C.LoadOptions)
    assert (options.strict, options.backend, _C.ModuleLoadOptions().strict) == (False, "pread", True)
