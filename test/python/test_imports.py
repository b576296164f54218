"""The package's modules form no import circle, and each imports alone in a fresh interpreter.

A circle (``_dcp -> _model -> distributed -> _dcp`` was one) works or fails depending on which
module is imported first; imports inside functions count too, since they run on first use."""
import ast
import os
import subprocess
import sys

import torch_safetensors

PACKAGE = os.path.dirname(torch_safetensors.__file__)


def _modules():
    """{dotted name: path} of every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            parts = os.path.relpath(os.path.join(folder, name), PACKAGE)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(["torch_safetensors", *parts])] = os.path.join(folder, name)
    return out


def _imports(module, path, modules):
    """The package's modules that `module` imports, at module level or in a function."""
    is_package = path.endswith("__init__.py")
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = base[: len(base) - (node.level - 1)] if node.level else []
            target = ".".join(origin + ([node.module] if node.module else []))
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            # importing a.b.c runs a and a.b first
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in modules and candidate != module:
                    found.add(candidate)
    return found


def _cycle(graph):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def _graph():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    # Every module imports its package first; that edge is Python's, not a circle of ours.
    for module in graph:
        graph[module] -= {p for p in graph if module.startswith(p + ".")}
    return graph


def test_the_graph_sees_the_imports_it_should():
    graph = _graph()
    assert "torch_safetensors._extension" in graph["torch_safetensors._file"]
    assert "torch_safetensors.distributed._dcp" in graph["torch_safetensors.distributed"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    assert _cycle(_graph()) is None


_EACH_ALONE = """
import os, sys, traceback
import torch  # the expensive part, shared: each module is then imported in a forked child
failed = []
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(module)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(module)
print(" ".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_alone():
    # Nothing of the package is imported before the fork, so each child starts from nothing.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(PACKAGE), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _EACH_ALONE, *sorted(_modules())], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout, done.stderr[-4000:])
