"""Builds the optional CUDA extension ``fastjl._C`` with CMake (see CMakeLists.txt).

All package metadata lives in pyproject.toml; this file only adds the extension.

* With nvcc available, ``pip install .`` and ``pip install -e .`` configure and build
  ``fastjl._C`` with CMake + pybind11.  An editable install copies the module into the
  source ``fastjl/`` folder (setuptools' inplace copy), so tests run from the repo root
  import it.
* Without nvcc, or with ``FASTJL_SKIP_CUDA_BUILD=1``, the pure-Python package is installed
  (torch backend only) and one message says so; pip shows it with ``pip install -v``.

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
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
SKIP_ENV = "FASTJL_SKIP_CUDA_BUILD"
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


def skip_reason(nvcc: str | None) -> str | None:
    """Why the extension is not built, or None to build it."""
    if os.environ.get(SKIP_ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        return f"{SKIP_ENV} is set"
    if nvcc is None:
        return "no nvcc found (checked $CUDACXX, PATH, $CUDA_HOME, /usr/local/cuda/bin/nvcc)"
    return None


class CMakeExtension(Extension):
    """An extension whose sources CMake builds; setuptools only decides where it goes."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Runs ``cmake`` configure + build, writing the module where setuptools expects it.

    ``get_ext_fullpath`` is the build-tree path (setuptools builds with inplace off and, for
    ``pip install -e`` / ``--inplace``, copies the result into the source tree afterwards),
    so pointing CMake's output directory there serves both installs.
    """

    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"

        import pybind11  # a build requirement (pyproject.toml); imported only when building

        configure = [
            "cmake",
            str(ROOT),
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{config.upper()}={out_dir}",
            f"-DCMAKE_CUDA_COMPILER={find_nvcc()}",
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
            raise RuntimeError(
                f"building fastjl._C failed ({err}); set {SKIP_ENV}=1 to install fastjl without its CUDA extension"
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
    reason = skip_reason(find_nvcc())
    if reason is None:
        return [CMakeExtension("fastjl._C")]
    if BUILD_COMMANDS.intersection(sys.argv[1:]):
        print(
            f"fastjl: NOT building the CUDA extension fastjl._C: {reason}. Installing the "
            "pure-Python package; only the torch backend will be available.",
            file=sys.stderr,
        )
    return []


setup(ext_modules=extension_modules(), cmdclass={"build_ext": CMakeBuild})
