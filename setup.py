"""Builds the Python package: one extension, ``torch_safetensors._C``, compiled from the same C++
sources as the LibTorch library (no second implementation) plus the pybind11 bindings.

    pip install --no-build-isolation .        # or -e . for development

torch must already be installed (the extension is built against it); simdjson is found with
pkg-config when available, else the system default paths (Debian: libsimdjson-dev).
"""
import glob
import os
import shlex
import subprocess

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as error:  # an isolated build environment has no torch
    raise SystemExit(
        "torch_safetensors builds against the installed torch: install torch first, then run "
        "`pip install --no-build-isolation .`"
    ) from error

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(path):
    return os.path.relpath(path, ROOT)


def _sources():
    layers = ("format", "storage", "adapters", "api", "python")
    files = []
    for layer in layers:
        files += sorted(glob.glob(os.path.join(ROOT, "torch_safetensors", "csrc", layer, "*.cpp")))
    return [_rel(f) for f in files]


def _pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "simdjson"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out)


def _simdjson():
    cflags = _pkg_config("--cflags") or []
    libs = _pkg_config("--libs") or ["-lsimdjson"]
    include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
    library_dirs = [f[2:] for f in libs if f.startswith("-L")]
    libraries = [f[2:] for f in libs if f.startswith("-l")] or ["simdjson"]
    return include_dirs, library_dirs, libraries


simdjson_includes, simdjson_libdirs, simdjson_libs = _simdjson()

ext = CppExtension(
    name="torch_safetensors._C",
    sources=_sources(),
    include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "torch_safetensors", "csrc")]
    + simdjson_includes,
    library_dirs=simdjson_libdirs,
    libraries=simdjson_libs,
    extra_compile_args=["-O2", "-g0", "-fvisibility=hidden", "-Wall", "-Wno-unused-parameter"],
)

# The extension is tied to the ABI of the torch it is compiled against: require exactly that
# release (never an open range, which could pull in another, multi-GB build).
TORCH_REQUIREMENT = "torch==" + torch.__version__.split("+")[0]

setup(
    install_requires=[TORCH_REQUIREMENT],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
