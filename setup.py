"""Builds the Python package: one extension, ``torch_safetensors._C``, compiled from the same C++
sources as the LibTorch library (no second implementation) plus the pybind11 bindings.

    pip install --no-build-isolation .        # or -e . for development

torch must already be installed (the extension is built against it); simdjson is found with
pkg-config when available, else the system default paths (Debian: libsimdjson-dev).
"""
import os
import re
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


def _listing(folder):
    """Sources and flags of one listing file (folder/sources.txt), which CMakeLists.txt reads too."""
    sources, flags = [], []
    with open(os.path.join(ROOT, folder, "sources.txt"), encoding="utf-8") as listing:
        for line in listing:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("flags:"):
                flags += shlex.split(line[len("flags:"):])
            else:
                sources.append(os.path.join(folder, line))
    return sources, flags


def _core_build():
    """The C++ core, the torch.save converter, the ExecuTorch .ptd library, the c10d collectives
    and the command line, from the listings CMake reads, plus the bindings (which expose the
    command line as _C.cli_main)."""
    csrc = os.path.join("torch_safetensors", "csrc")
    sources, flags = [], []
    for folder in (csrc, os.path.join(csrc, "convert"), os.path.join(csrc, "executorch"),
                   os.path.join(csrc, "distributed", "c10d"), "cli"):
        folder_sources, folder_flags = _listing(folder)
        sources += folder_sources
        flags += [flag for flag in folder_flags if flag not in flags]
    bindings = [os.path.join(csrc, "python", name)
                for name in ("module.cpp", "common.cpp", "file.cpp", "save.cpp", "model.cpp",
                             "cli.cpp", "quant.cpp", "distributed.cpp", "executorch.cpp",
                             "coverage.cpp")]
    return sources + bindings, flags


def _version():
    """MAJOR.MINOR.PATCH from include/torch_safetensors/version.h, the version's one place."""
    path = os.path.join(ROOT, "include", "torch_safetensors", "version.h")
    with open(path, encoding="utf-8") as header:
        parts = dict(re.findall(r"#define TORCH_SAFETENSORS_VERSION_(\w+) (\d+)", header.read()))
    return "{MAJOR}.{MINOR}.{PATCH}".format(**parts)


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
core_sources, core_flags = _core_build()

ext = CppExtension(
    name="torch_safetensors._C",
    sources=core_sources,
    # The repository root for the bindings' "cli/cli.h" (the command line is a front end beside
    # them, not part of csrc/).
    include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "torch_safetensors", "csrc"),
                  ROOT] + simdjson_includes,
    library_dirs=simdjson_libdirs,
    libraries=simdjson_libs,
    # Optimisation as CMake's Release build (the flags proper come from sources.txt).
    extra_compile_args=["-O3", "-DNDEBUG", "-g0", "-fvisibility=hidden"] + core_flags,
)

# The extension is tied to the ABI of the torch it is compiled against: require exactly that
# release (never an open range, which could pull in another, multi-GB build).
TORCH_REQUIREMENT = "torch==" + torch.__version__.split("+")[0]

setup(
    version=_version(),
    install_requires=[TORCH_REQUIREMENT],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
