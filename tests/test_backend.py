"""Backend selection: names, errors, the "auto" rule, and the environment variable."""
import os
import subprocess
import sys

import pytest
import torch

import classicnets_ext
from classicnets_ext import _backend


def test_default_is_auto_and_set_get_roundtrip():
    assert classicnets_ext.get_backend() == "auto"
    classicnets_ext.set_backend("reference")
    try:
        assert classicnets_ext.get_backend() == "reference"
    finally:
        classicnets_ext.set_backend("auto")


def test_use_backend_restores_on_exit_and_on_error():
    with pytest.raises(KeyError):
        with classicnets_ext.use_backend("reference"):
            assert classicnets_ext.get_backend() == "reference"
            raise KeyError
    assert classicnets_ext.get_backend() == "auto"


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        classicnets_ext.set_backend("tpu")
    assert classicnets_ext.get_backend() == "auto"


def test_available_backends_lists_what_runs_here():
    available = classicnets_ext.available_backends()
    assert {"auto", "reference"} <= set(available)
    assert set(available) <= set(classicnets_ext.BACKENDS)
    assert ("cuda" in available) == (torch.cuda.is_available() and classicnets_ext._extension.build_info().get("cuda", False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_unavailable_backend_is_a_clear_error():
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        classicnets_ext.set_backend("cuda")


def test_auto_sends_cpu_tensors_to_the_cpp_kernel():
    x = torch.randn(1, 4, 2, 2)
    expected = "cpu" if classicnets_ext._extension.available() else "reference"
    assert _backend.resolve("lrn", x) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_explicit_backend_never_moves_data_between_cpu_and_cuda():
    x = torch.randn(1, 4, 2, 2, device="cuda")
    with classicnets_ext.use_backend("cpu"), pytest.raises(RuntimeError, match="cannot run lrn on a cuda tensor"):
        classicnets_ext.ops.local_response_norm(x, 3)
    with classicnets_ext.use_backend("cuda"), pytest.raises(RuntimeError, match="cannot run lrn on a cpu tensor"):
        classicnets_ext.ops.local_response_norm(x.cpu(), 3)


def _python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("CLASSICNETS_BACKEND", "TRITON_INTERPRET")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)


def test_environment_variable_sets_the_initial_backend():
    out = _python("import classicnets_ext; print(classicnets_ext.get_backend())", CLASSICNETS_BACKEND="reference")
    assert out.returncode == 0 and out.stdout.strip() == "reference", out.stderr
    out = _python("import classicnets_ext", CLASSICNETS_BACKEND="fastest")
    assert out.returncode != 0 and "unknown backend 'fastest'" in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only rule")
def test_triton_on_cpu_needs_the_interpreter():
    code = ("import classicnets_ext, torch\n"
            "assert 'triton' not in classicnets_ext.available_backends()\n"
            "try:\n    classicnets_ext.set_backend('triton')\nexcept RuntimeError as e:\n    print(e)\n")
    out = _python(code)
    assert out.returncode == 0 and "TRITON_INTERPRET=1" in out.stdout, out.stderr
    out = _python("import classicnets_ext; print('triton' in classicnets_ext.available_backends())",
                  TRITON_INTERPRET="1")
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
