"""Builds the Python package: one extension, ``torch_safetensors._C``: the pybind11 bindings
(torch_safetensors/csrc/python) linked with the C++ libraries that CMake builds (no second
implementation, and no second compile of the same sources).

    pip install --no-build-isolation .        # or -e . for development

torch must already be installed (the extension is built against it). The C++ comes from a CMake
build folder, TS_CMAKE_BUILD_DIR (default: build/ in this checkout, the folder scripts/build.sh
uses): setup.py configures it if it does not exist, then builds its target
torch_safetensors_for_python, an archive of the libraries' objects, which is up to date (and
instant) after scripts/build.sh. simdjson is found with pkg-config when available, else the system
default paths (Debian: libsimdjson-dev).
"""
import os
import re
import shlex
import shutil
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


BINDINGS = [os.path.join("torch_safetensors", "csrc", "python", name)
            for name in ("module.cpp", "common.cpp", "file.cpp", "save.cpp", "model.cpp", "cli.cpp",
                         "quant.cpp", "distributed.cpp", "executorch.cpp", "coverage.cpp",
                         "aoti.cpp", "convert.cpp")]
CORE_TARGET = "torch_safetensors_for_python"


def _cmake_cache(build_dir):
    entries = {}
    with open(os.path.join(build_dir, "CMakeCache.txt"), encoding="utf-8") as cache:
        for line in cache:
            match = re.match(r"^([A-Za-z_0-9]+):[A-Z]+=(.*)$", line.rstrip("\n"))
            if match:
                entries[match.group(1)] = match.group(2)
    return entries


def _cmake_core(jobs):
    """Builds the archive of the C++ libraries' objects in the CMake folder (configuring it first
    when there is none) and returns its path. A folder that cannot give the extension what it
    needs (another torch, a sanitizer or debug build) is an error, not a silent mix."""
    build_dir = os.path.abspath(os.environ.get("TS_CMAKE_BUILD_DIR") or os.path.join(ROOT, "build"))
    if not os.path.isfile(os.path.join(build_dir, "CMakeCache.txt")):
        command = ["cmake", "-S", ROOT, "-B", build_dir, "-DTS_BUILD_TESTS=OFF",
                   "-DCMAKE_PREFIX_PATH=" + torch.utils.cmake_prefix_path]
        if shutil.which("ninja"):
            command += ["-G", "Ninja"]
        subprocess.run(command, check=True)
    cache = _cmake_cache(build_dir)
    torch_dir = os.path.realpath(os.path.join(torch.utils.cmake_prefix_path, "Torch"))
    problems = []
    if os.path.realpath(cache.get("Torch_DIR", "")) != torch_dir:
        problems.append(f"it was configured with the LibTorch of {cache.get('Torch_DIR')}, this "
                        f"build uses {torch_dir}")
    if cache.get("TS_SANITIZE"):
        problems.append(f"it is a sanitizer build (TS_SANITIZE={cache['TS_SANITIZE']})")
    if cache.get("CMAKE_BUILD_TYPE", "Release") not in ("Release", "RelWithDebInfo"):
        problems.append(f"it is a {cache['CMAKE_BUILD_TYPE']} build (Release expected)")
    if problems:
        raise SystemExit(f"torch_safetensors: cannot build the extension over {build_dir}: "
                         + "; ".join(problems) + ". Set TS_CMAKE_BUILD_DIR to another folder.")
    try:
        subprocess.run(["cmake", "--build", build_dir, "--target", CORE_TARGET, "-j", str(jobs)],
                       check=True)
    except subprocess.CalledProcessError as error:
        raise SystemExit(
            f"torch_safetensors: building {CORE_TARGET} in {build_dir} failed (it exists only "
            "when TS_BUILD_CONVERT and TS_BUILD_DISTRIBUTED are on)") from error
    return os.path.join(build_dir, f"lib{CORE_TARGET}.a")


class BuildWithCMakeCore(BuildExtension.with_options(use_ninja=True)):
    """build_ext that first brings the C++ libraries' archive up to date, then links it."""

    def build_extensions(self):
        archive = _cmake_core(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
        for extension in self.extensions:
            extension.extra_objects = [archive]
            extension.depends = [archive]  # relink when the C++ changed
        super().build_extensions()


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

ext = CppExtension(
    name="torch_safetensors._C",
    sources=BINDINGS,
    # The repository root for the bindings' "cli/cli.h" (the command line is a front end beside
    # them, not part of csrc/).
    include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "torch_safetensors", "csrc"),
                  ROOT] + simdjson_includes,
    library_dirs=simdjson_libdirs,
    libraries=simdjson_libs,
    # Optimisation and visibility as CMake's Release build of the libraries.
    extra_compile_args=["-O3", "-DNDEBUG", "-g0", "-fvisibility=hidden", "-Wall", "-Wextra"],
)

# The extension is tied to the ABI of the torch it is compiled against: require exactly that
# release (never an open range, which could pull in another, multi-GB build).
TORCH_REQUIREMENT = "torch==" + torch.__version__.split("+")[0]

setup(
    version=_version(),
    install_requires=[TORCH_REQUIREMENT],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildWithCMakeCore},
)
