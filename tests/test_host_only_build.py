"""fastjl._C without nvcc: setup.py's choice of build, and the host-only module itself.

Where no nvcc is found, setup.py builds the host half of ``_C`` (CMake ``-DFASTJL_CUDA=OFF``):
the sparse kinds' C++ CPU product and the CPU reference / emulation code.  Here that build runs
once per session through setup.py's own CMake step into a temporary folder (~50 s on a 2-core
VM), and the module is loaded in a subprocess, beside the installed ``fastjl._C``, to check its
entry points and that its sparse product is bitwise the installed one's and the CSR product's.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from setuptools import Distribution

ROOT = Path(__file__).resolve().parents[1]
# Entry points of the host half, and the CUDA ones (csrc/bindings.cpp, wgmma_bindings.cpp).
HOST_ENTRIES = [
    "build_info",
    "philox4x32_10",
    "host_matrix_block",
    "host_sparse_block",
    "host_emulate_project",
    "host_emulate_project_linear",
    "host_emulate_project_sparse",
    "project_plan",
    "project_workspace_bytes",
    "project_sparse_smem_bytes",
    "wgmma_host_stage",
]
CUDA_ENTRIES = ["project", "project_linear", "project_sparse", "device_matrix_block", "project_sm90"]


def load_setup():
    """setup.py as a module (its setup() call runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("fastjl_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- setup.py's decision


@pytest.mark.parametrize(
    "nvcc,env,expected",
    [
        ("/opt/cuda/bin/nvcc", {}, "cuda"),
        (None, {}, "host"),
        ("/opt/cuda/bin/nvcc", {"FASTJL_SKIP_CUDA_BUILD": "1"}, "host"),
        ("/opt/cuda/bin/nvcc", {"FASTJL_SKIP_CUDA_BUILD": "off"}, "cuda"),
        ("/opt/cuda/bin/nvcc", {"FASTJL_SKIP_EXTENSION": "1"}, "none"),
        (None, {"FASTJL_SKIP_EXTENSION": "yes", "FASTJL_SKIP_CUDA_BUILD": "1"}, "none"),
        (None, {"FASTJL_SKIP_EXTENSION": "0"}, "host"),
    ],
)
def test_build_choice(nvcc, env, expected):
    setup = load_setup()
    choice, reason = setup.build_choice(nvcc, env)
    assert choice == expected
    words = {"cuda": "nvcc found", "none": "FASTJL_SKIP_EXTENSION is set"}
    if expected == "host":
        words["host"] = "no nvcc found" if nvcc is None else "FASTJL_SKIP_CUDA_BUILD is set"
    assert words[expected] in reason


@pytest.mark.parametrize("nvcc", ["/opt/cuda/bin/nvcc", None])
def test_extension_modules_follow_the_choice(monkeypatch, nvcc):
    """The whole module must build (not optional); the host half may fail (optional)."""
    setup = load_setup()
    monkeypatch.setattr(setup, "find_nvcc", lambda: nvcc)
    monkeypatch.delenv("FASTJL_SKIP_CUDA_BUILD", raising=False)
    monkeypatch.delenv("FASTJL_SKIP_EXTENSION", raising=False)
    (ext,) = setup.extension_modules()
    assert ext.name == "fastjl._C" and ext.cuda_compiler == nvcc and ext.optional is (nvcc is None)
    monkeypatch.setenv("FASTJL_SKIP_EXTENSION", "1")
    assert setup.extension_modules() == []


@pytest.mark.parametrize("nvcc", ["/opt/cuda/bin/nvcc", None])
def test_a_failed_host_build_is_skipped_and_a_failed_cuda_build_fails(monkeypatch, capsys, nvcc):
    """Through setuptools' own loop over the extensions, which skips an optional one's failure."""
    setup = load_setup()
    cmd = setup.CMakeBuild(Distribution())
    cmd.initialize_options()
    cmd.extensions = [setup.CMakeExtension("fastjl._C", nvcc)]

    def failing_cmake(ext):
        raise subprocess.CalledProcessError(1, ["cmake", "--build", "."])

    monkeypatch.setattr(cmd, "_cmake", failing_cmake)
    if nvcc is not None:
        with pytest.raises(subprocess.CalledProcessError):
            cmd.build_extensions()
        return
    cmd.build_extensions()  # no exception: the pure-Python package gets installed
    err = capsys.readouterr().err
    assert "building the host half of fastjl._C (no CUDA) failed (`cmake --build ...` exited with status 1)" in err
    assert "Installing the pure-Python package instead" in err


# --------------------------------------------------------------------------- the host-only module


@pytest.fixture(scope="session")
def host_module(tmp_path_factory) -> Path:
    """The host-only ``_C`` built by setup.py's CMake step (as pip does without nvcc)."""
    for package in ("pybind11", "ninja"):  # build requirements (pyproject.toml), absent from some envs
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (a build requirement of fastjl._C)")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed (a build requirement of fastjl._C)")
    setup = load_setup()
    root = tmp_path_factory.mktemp("host_only")
    cmd = setup.CMakeBuild(Distribution({"name": "fastjl", "version": "0.0.7"}))
    cmd.initialize_options()
    cmd.build_lib, cmd.build_temp = str(root / "lib"), str(root / "temp")
    cmd.finalize_options()
    ext = setup.CMakeExtension("fastjl._C", None)
    cmd._cmake(ext)  # a failure here fails the test: CI has a C++ compiler
    path = Path(cmd.get_ext_fullpath(ext.name))
    assert path.is_file(), f"CMake wrote no module at {path}"
    return path


# Runs in a subprocess: the host-only module is loaded as top-level "_C" next to the installed
# fastjl._C, and the torch backend's C++ product is pointed at each in turn.
CHECK = textwrap.dedent(
    """
    import importlib.util, json, sys, types
    import torch
    import fastjl
    from fastjl._backends import sparse_cpu

    spec = importlib.util.spec_from_file_location("_C", sys.argv[1])
    host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host)
    installed = sparse_cpu._C
    entries = json.loads(sys.argv[2])
    report = dict(
        info=host.build_info(),
        present={name: hasattr(host, name) for name in entries},
        installed_has_product=installed is not None and hasattr(installed, "host_sparse_block"),
        cases=[],
    )

    def counted(module, calls):
        def product(*args):
            calls.append(1)
            return module.host_sparse_block(*args)
        return types.SimpleNamespace(host_sparse_block=product)

    gen = torch.Generator().manual_seed(5)
    for kind, s, rate in (("sjlt", 4, None), ("grass", 2, 0.5)):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            x = torch.randn(7, 5003, generator=gen).to(dtype)
            o = dict(seed=3, kind=kind, sparsity=s, mask_rate=rate, offset=2**40 + 1, backend="torch")
            host_calls, installed_calls = [], []
            sparse_cpu._C = counted(host, host_calls)
            ours = fastjl.project(x, 96, **o)
            sparse_cpu.ENABLED = False
            csr = fastjl.project(x, 96, **o)
            sparse_cpu.ENABLED = True
            same_as_installed = None
            if report["installed_has_product"]:
                sparse_cpu._C = counted(installed, installed_calls)
                same_as_installed = torch.equal(ours, fastjl.project(x, 96, **o))
            report["cases"].append(dict(
                case=f"{kind} s={s} {dtype}", host_calls=len(host_calls), installed_calls=len(installed_calls),
                same_as_csr=torch.equal(ours, csr), same_as_installed=same_as_installed,
            ))
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="session")
def report(host_module) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, str(host_module), json.dumps(HOST_ENTRIES + CUDA_ENTRIES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_build_info_says_no_cuda(report):
    info = report["info"]
    assert info["cuda"] is False and info["archs"] == "" and info["cuda_version"] is None
    assert info["version"] == "0.0.7" and info["spec_version"] == 1


def test_has_the_host_entry_points_and_none_of_the_cuda_ones(report):
    present = report["present"]
    assert [name for name in HOST_ENTRIES if not present[name]] == []
    assert [name for name in CUDA_ENTRIES if present[name]] == []


def test_sparse_product_is_bitwise_the_installed_modules_and_the_csr_products(report):
    for case in report["cases"]:
        assert case["host_calls"] > 0, case  # the host-only module computed it, not a fallback
        assert case["same_as_csr"], case
        if report["installed_has_product"]:
            assert case["installed_calls"] > 0 and case["same_as_installed"], case
