"""Builds the compiled module ``fastjl._C`` with CMake + pybind11 (see CMakeLists.txt).

All package metadata lives in pyproject.toml; this file only adds the extension.  What gets
built (:func:`build_choice`):

* nvcc found: the whole ``_C``, CUDA kernels included.  A failing build fails the install.
* no nvcc, or ``FASTJL_SKIP_CUDA_BUILD=1``: ``_C``'s host half only (``-DFASTJL_CUDA=OFF``):
  the sparse kinds' fast CPU product and the CPU reference / emulation code, with the C++
  compiler alone.  If that build fails (no C++ compiler, say) the pure-Python package is
  installed and one stderr message says why: the module is optional there.
* ``FASTJL_SKIP_EXTENSION=1``: no ``_C`` at all, the pure-Python package (torch backend).

An editable install copies the module into the source ``fastjl/`` folder (setuptools'
inplace copy), so tests run from the repo root import it.  pip shows the messages with
``pip install -v``.

Build knobs (environment): ``CUDACXX`` (nvcc to use), ``CUDAARCHS`` (CUDA architectures,
default in CMakeLists.txt), ``CMAKE_BUILD_PARALLEL_LEVEL`` (parallel compile jobs),
``CMAKE_ARGS`` (extra CMake arguments), ``CMAKE_GENERATOR``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError  # an optional extension that raises it is skipped

ROOT = Path(__file__).parent.resolve()
SKIP_ENV = "FASTJL_SKIP_CUDA_BUILD"  # build the host half of _C only, even where nvcc is found
SKIP_EXTENSION_ENV = "FASTJL_SKIP_EXTENSION"  # build no _C at all (pure Python)
# What build_choice() returns: the whole _C, its host half, or none.
CUDA, HOST, NONE = "cuda", "host", "none"
# setup.py runs several times per pip install (requirements, metadata, build); only the
# commands that actually build the package print the skip message.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def find_nvcc() -> str | None:
    """The CUDA compiler: $CUDACXX, nvcc on PATH, $CUDA_HOME/bin/nvcc, /usr/local/cuda."""
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    for cand in candidates:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def build_choice(nvcc: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """What to build, and why in words: ``(CUDA | HOST | NONE, reason)``.

    NONE when ``FASTJL_SKIP_EXTENSION`` is set; HOST (the CPU half of ``_C``) when
    ``FASTJL_SKIP_CUDA_BUILD`` is set or ``nvcc`` is None; else CUDA (everything).
    """
    if _flag(environ, SKIP_EXTENSION_ENV):
        return NONE, f"{SKIP_EXTENSION_ENV} is set"
    if _flag(environ, SKIP_ENV):
        return HOST, f"{SKIP_ENV} is set"
    if nvcc is None:
        return HOST, "no nvcc found (checked $CUDACXX, PATH, $CUDA_HOME, /usr/local/cuda/bin/nvcc)"
    return CUDA, f"nvcc found at {nvcc}"


class HostBuildFailed(CompileError):
    """The host-only build failed: setuptools skips an optional extension on this error."""


class CMakeExtension(Extension):
    """An extension whose sources CMake builds; setuptools only decides where it goes.

    ``cuda_compiler``: nvcc for the whole module, None for the host half only.  The host
    half is optional (``optional=True``): its failure installs the pure-Python package.
    """

    def __init__(self, name: str, cuda_compiler: str | None) -> None:
        super().__init__(name, sources=[], optional=cuda_compiler is None)
        self.cuda_compiler = cuda_compiler


class CMakeBuild(build_ext):
    """Runs ``cmake`` configure + build, writing the module where setuptools expects it.

    ``get_ext_fullpath`` is the build-tree path (setuptools builds with inplace off and, for
    ``pip install -e`` / ``--inplace``, copies the result into the source tree afterwards),
    so pointing CMake's output directory there serves both installs.
    """

    def build_extension(self, ext: CMakeExtension) -> None:
        if ext.cuda_compiler is not None:
            self._cmake(ext)  # a failure fails the install, as it should where nvcc is found
            return
        try:
            self._cmake(ext)
        except (OSError, ImportError, subprocess.CalledProcessError) as err:
            if isinstance(err, subprocess.CalledProcessError):  # CMake's own output says why
                err = f"`{' '.join(map(str, err.cmd[:2]))} ...` exited with status {err.returncode}"
            print(
                f"fastjl: building the host half of fastjl._C (no CUDA) failed ({err}). Installing "
                "the pure-Python package instead: the torch backend without the C++ CPU paths. "
                f"Set {SKIP_EXTENSION_ENV}=1 to skip this build.",
                file=sys.stderr,
            )
            raise HostBuildFailed(str(err)) from None

    def _cmake(self, ext: CMakeExtension) -> None:
        """Configure + build ``ext`` with CMake: with its CUDA compiler, or -DFASTJL_CUDA=OFF."""
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        # One build folder per variant: a CMake cache keeps the CUDA choice of its first run.
        variant = "cuda" if ext.cuda_compiler else "host"
        build_temp = Path(self.build_temp).resolve() / f"{ext.name}-{variant}"
        build_temp.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"

        import pybind11  # a build requirement (pyproject.toml); imported only when building

        if ext.cuda_compiler is not None:
            cuda = ["-DFASTJL_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={ext.cuda_compiler}"]
        else:
            cuda = ["-DFASTJL_CUDA=OFF"]
        configure = [
            "cmake",
            str(ROOT),
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{config.upper()}={out_dir}",
            *cuda,
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DFASTJL_VERSION={self.distribution.get_version()}",
            *self._generator_args(),
            *shlex.split(os.environ.get("CMAKE_ARGS", "")),
        ]
        build = ["cmake", "--build", ".", "--config", config]
        # CMake itself honours CMAKE_BUILD_PARALLEL_LEVEL; otherwise use every core.
        if "CMAKE_BUILD_PARALLEL_LEVEL" not in os.environ:
            build += ["--parallel", str(os.cpu_count() or 1)]
        try:
            subprocess.run(configure, cwd=build_temp, check=True)
            subprocess.run(build, cwd=build_temp, check=True)
        except subprocess.CalledProcessError as err:
            if ext.cuda_compiler is None:
                raise  # build_extension turns it into the optional extension's skip
            raise RuntimeError(
                f"building fastjl._C failed ({err}); set {SKIP_ENV}=1 to build it without CUDA, "
                f"or {SKIP_EXTENSION_ENV}=1 to install fastjl without it"
            ) from err

    @staticmethod
    def _generator_args() -> list[str]:
        """Ninja (a build requirement) when no generator is chosen: faster than make."""
        if os.environ.get("CMAKE_GENERATOR"):
            return []
        try:
            import ninja

            return ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={Path(ninja.BIN_DIR) / 'ninja'}"]
        except ImportError:
            return ["-GNinja"] if shutil.which("ninja") else []


def extension_modules() -> list[Extension]:
    nvcc = find_nvcc()
    choice, reason = build_choice(nvcc)
    if BUILD_COMMANDS.intersection(sys.argv[1:]) and choice != CUDA:
        what = {
            HOST: "building fastjl._C WITHOUT CUDA (host half: the C++ CPU paths; no CUDA backend)",
            NONE: "NOT building fastjl._C (pure-Python package: the torch backend only)",
        }[choice]
        print(f"fastjl: {what}: {reason}.", file=sys.stderr)
    if choice == NONE:
        return []
    return [CMakeExtension("fastjl._C", nvcc if choice == CUDA else None)]


# Guarded so that tests can import this file for build_choice (pip's build backend runs it as
# __main__, as does `python setup.py`).
if __name__ == "__main__":
    setup(ext_modules=extension_modules(), cmdclass={"build_ext": CMakeBuild})
