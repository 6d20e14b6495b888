"""Packaging: the source distribution holds everything the build needs and nothing it made, and an sdist
installed into a fresh venv (``--no-build-isolation``, as the README says) imports from outside the checkout
and runs an op. The version is one string, ``classicnets_ext.__version__``, which setup.py reads: the sdist's
and the installed distribution's metadata must both say it."""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import venv

import pytest

import classicnets_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What setup.py reads or builds from: the package, the kernels (all of csrc/: the per-ISA and CUDA sources are
# globbed at build time, not listed), the Triton kernels it installs as classicnets_ext.triton_kernels; and what
# an unpacked sdist's tests read: tests/ and the bench scripts that test_bench.py and the ensemble bench's test
# import (a collection error without them).
NEEDED = ["setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "csrc", "triton_kernels", "classicnets_ext",
          "tests", "bench"]
JUNK_SUFFIXES = (".so", ".o", ".pyc", ".pyo", ".whl")
JUNK_PARTS = {"build", "dist", "__pycache__", ".pytest_cache", ".venv"}
JUNK_SUFFIXES += (".tar.gz",)


def _needed_files() -> list[str]:
    """The files under NEEDED that git tracks; without git (an unpacked sdist), those on disk minus junk."""
    try:
        out = subprocess.run(["git", "ls-files", "--", *NEEDED], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    if out:
        return sorted(out)
    found = []
    for top in NEEDED:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            found.append(top)
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d not in JUNK_PARTS]
            found += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files if not f.endswith(JUNK_SUFFIXES)]
    return sorted(found)


def _is_junk(member: str) -> bool:
    parts = member.split("/")
    return member.endswith(JUNK_SUFFIXES) or bool(JUNK_PARTS.intersection(parts[1:]))


def _source_tree(dest) -> str:
    """A copy of the checkout with build output of every kind planted in it.

    A copy, because setuptools adds whatever an existing *.egg-info/SOURCES.txt lists to the sdist (a stale
    one would hide a gap in MANIFEST.in), and so that the junk is there whether or not this checkout was built.
    """
    src = os.path.join(dest, "src")
    skip = {".git", ".venv", "build", "dist", "results", ".pytest_cache", "__pycache__"}
    shutil.copytree(ROOT, src, ignore=lambda folder, names: [n for n in names
                                                             if n in skip or n.endswith((".egg-info", ".so"))])
    for junk in ["build/lib/classicnets_ext/_C.so", "build/temp/csrc/lrn/lrn_cpu.o", "dist/old-0.0.tar.gz",
                 "classicnets_ext/_C.cpython-311-x86_64-linux-gnu.so", "csrc/lrn/lrn_cpu.o",
                 "classicnets_ext/__pycache__/ops.cpython-311.pyc", "triton_kernels/__pycache__/lrn.cpython-311.pyc"]:
        os.makedirs(os.path.dirname(os.path.join(src, junk)), exist_ok=True)
        open(os.path.join(src, junk), "wb").close()
    return src


def _build_sdist(out_dir) -> str:
    """``python -m build --sdist --no-isolation`` of a copy of the checkout into ``out_dir``; the archive's path."""
    pytest.importorskip("build")  # the Makefile's venv installs it
    src = _source_tree(out_dir)
    out_dir = os.path.join(out_dir, "dist")
    done = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out_dir, src],
                          cwd=src, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (name,) = os.listdir(out_dir)
    return os.path.join(out_dir, name)


def _pkg_info_version(sdist: str) -> str:
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        text = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Version:"))


def test_sdist_holds_the_build_inputs_and_no_build_output(tmp_path):
    sdist = _build_sdist(tmp_path)
    version = classicnets_ext.__version__
    assert os.path.basename(sdist) == f"classicnets_ext-{version}.tar.gz"
    assert _pkg_info_version(sdist) == version
    with tarfile.open(sdist) as tar:
        members = [m.name for m in tar.getmembers() if m.isfile()]
    prefix = f"classicnets_ext-{version}/"
    assert all(m.startswith(prefix) for m in members), members[:5]
    inside = {m[len(prefix):] for m in members}
    needed = _needed_files()
    assert any(f.endswith("_cpu_kernel.cpp") for f in needed) and any(f.endswith(".cu") for f in needed)
    missing = [f for f in needed if f not in inside]
    assert not missing, f"the sdist lacks {missing} (MANIFEST.in)"
    junk = sorted(m for m in members if _is_junk(m))
    assert not junk, f"the sdist holds build output: {junk[:10]}"


# Run by the fresh venv's Python from a temporary folder: the installed package, not the checkout, must load.
_USE_INSTALLED = """
import importlib.metadata, importlib.util, sys
import torch, torch.nn.functional as F
import classicnets_ext
from classicnets_ext import _extension
assert classicnets_ext.__file__.startswith(sys.prefix), (classicnets_ext.__file__, sys.prefix)
assert importlib.metadata.version("classicnets_ext") == classicnets_ext.__version__
assert _extension.build_info()["cpu_capability"] == "default", _extension.build_info()
x = torch.randn(2, 7, 5, 6)
torch.testing.assert_close(torch.ops.classicnets_ext.lrn(x, 5, 1e-3, 0.75, 2.0),
                           F.local_response_norm(x, 5, 1e-3, 0.75, 2.0))
spec = importlib.util.find_spec("classicnets_ext.triton_kernels")
assert spec is not None and spec.origin.startswith(sys.prefix), spec
print("ok", classicnets_ext.__version__)
"""


@pytest.mark.slow
def test_sdist_installs_into_a_fresh_venv_and_runs(tmp_path):
    """The sdist built and installed by pip in a new venv, then used from outside the checkout.

    The venv sees this environment's packages (torch above all) through a .pth file placed after its own
    site-packages: a CUDA torch is gigabytes of wheels, and the build must use the torch it will load into
    anyway. Its own site-packages comes first, so the freshly installed classicnets_ext is the one found. The
    build compiles the baseline CPU kernels only (CNX_CPU_ISAS=DEFAULT) to keep the test to minutes; the
    other instruction sets must then abort when dispatched to, never run something else.
    """
    start = time.monotonic()
    sdist = _build_sdist(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    with open(os.path.join(site, "outer_env.pth"), "w") as f:
        f.write("\n".join(outer) + "\n")
    # ninja from this environment's bin (the venv's python is called by path). CFLAGS=-g0 overrides the -g that
    # Python's own flags add: half the compile time, and nothing here reads debug information.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CNX_SANITIZE", "CLASSICNETS_BACKEND")}
    env.update(FORCE_CUDA="0", CNX_CPU_ISAS="DEFAULT", MAX_JOBS=os.environ.get("MAX_JOBS", "2"), CFLAGS="-g0",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    installed = subprocess.run([python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                                sdist], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
    assert installed.returncode == 0, installed.stdout[-4000:] + installed.stderr[-4000:]
    build_seconds = time.monotonic() - start

    run_env = {**env, "ATEN_CPU_CAPABILITY": "default"}
    used = subprocess.run([python, "-c", _USE_INSTALLED], cwd=tmp_path, env=run_env, capture_output=True,
                          text=True, timeout=300)
    assert used.returncode == 0 and used.stdout.split() == ["ok", classicnets_ext.__version__], \
        used.stdout[-2000:] + used.stderr[-3000:]

    # Without the override a CPU with AVX2 picks a kernel build this install left out: it must stop, saying so.
    run_env.pop("ATEN_CPU_CAPABILITY")
    probe = subprocess.run([python, "-c", "from classicnets_ext import _C; print(_C.cpu_capability())"],
                           cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=300)
    if probe.stdout.strip() != "default":
        code = "import torch, classicnets_ext; torch.ops.classicnets_ext.lrn(torch.ones(1, 3, 2, 2), 3)"
        picked = subprocess.run([python, "-c", code], cwd=tmp_path, env=run_env, capture_output=True, text=True,
                                timeout=300)
        assert picked.returncode != 0 and "CNX_CPU_ISAS=DEFAULT" in picked.stderr, picked.stderr[-2000:]
    print(f"sdist build + install: {build_seconds:.0f} s")
