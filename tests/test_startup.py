"""Start-up: ``import classicnets_ext`` costs little over ``import torch``; what is slow to import (the Triton
kernels, which bring triton and torch._inductor; torch.utils.flop_counter) comes on first use, and works then;
an unbuilt checkout says so."""
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import classicnets_ext
from conftest import HAS_CUDA

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CLASSICNETS_BACKEND", "TRITON_INTERPRET")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True,
                          timeout=300)


# CPU seconds (user + system, all threads) of `import torch`, then of `import classicnets_ext` on top of it, in one
# process: unlike wall time, CPU time barely grows when other processes load the machine, and the best of a few
# runs drops the outliers that remain.
_TIME_IMPORT = """
import sys, time
start = time.process_time()
import torch
torch_seconds = time.process_time() - start
start = time.process_time()
import classicnets_ext
ours_seconds = time.process_time() - start
heavy = [m for m in ("triton", "torch._inductor", "torch._dynamo", "torch.utils.flop_counter",
                     "classicnets_ext.triton_kernels", "classicnets_ext.analysis") if m in sys.modules]
print(torch_seconds, ours_seconds, *heavy)
"""

# The target: 0.2 s over torch's 1.25 s on the machine it was measured on (it was 1.2 s over).
EXTRA_SECONDS, TORCH_REFERENCE_SECONDS = 0.2, 1.25


def test_import_adds_little_over_import_torch():
    torch_runs, ours_runs = [], []
    for _ in range(3):
        out = _python(_TIME_IMPORT)
        assert out.returncode == 0, out.stderr
        torch_seconds, ours_seconds, *heavy = out.stdout.split()
        assert not heavy, f"import classicnets_ext imported {heavy[0]} (import it on first use)"
        torch_runs.append(float(torch_seconds))
        ours_runs.append(float(ours_seconds))
    torch_s, extra_s = min(torch_runs), min(ours_runs)
    # 0.2 s where torch imports in 1.25 s, scaled by this machine's speed (a loaded CI runner is slower at both)
    # and never below 0.2 s.
    allowed = EXTRA_SECONDS * max(1.0, torch_s / TORCH_REFERENCE_SECONDS)
    assert extra_s <= allowed, (f"import classicnets_ext adds {extra_s:.2f} s of CPU to import torch's {torch_s:.2f} s "
                                f"(best of 3): over {allowed:.2f} s")


def test_flop_formulas_register_after_a_probe_of_the_flop_counter():
    """Our FLOP formulas register when torch.utils.flop_counter is first imported, even after something only
    looked for it (importlib.util.find_spec, an optional-dependency check), which used to use the hook up."""
    out = _python("""
        import importlib.util, sys, torch, classicnets_ext
        from classicnets_ext import ops
        assert importlib.util.find_spec("torch.utils.flop_counter") is not None
        assert "torch.utils.flop_counter" not in sys.modules
        from torch.utils.flop_counter import FlopCounterMode
        x = torch.randn(1, 8, 9, 9)
        with FlopCounterMode(display=False) as counter:
            ops.local_response_norm(x, 5)
        print(counter.get_total_flops())
        """)
    assert out.returncode == 0 and int(out.stdout) > 0, out.stdout + out.stderr


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernels_are_imported_on_first_use():
    """Asked about (available_backends, from inside torch.compile's tracing too), the kernels import, register
    their ops, fakes and FLOP formulas, and run: compiled on a GPU, interpreted elsewhere. (On the GPU machine's
    torch 2.11 and triton 3.6 the interpreter cannot run them: its wrap_triton refuses interpreted kernels, and
    triton < 3.7 hands range() a 1-element array that numpy >= 2.4 will not make a scalar -- lease 4's failure.)"""
    out = _python("""
        import sys, torch, torch.nn.functional as F
        import classicnets_ext
        assert "classicnets_ext.triton_kernels.lrn" not in sys.modules and "torch._inductor" not in sys.modules
        assert not classicnets_ext._registrations._triton_loaded

        @torch.compile(fullgraph=True, backend="eager")
        def f(x):  # the first question comes while dynamo traces: it must not break the graph
            return x + 1 if "triton" in classicnets_ext.available_backends() else x - 1

        assert f(torch.zeros(1)).item() == 1
        assert "classicnets_ext.triton_kernels.inception" in sys.modules
        x = torch.randn(2, 6, 5, 5, device=DEVICE, requires_grad=True)
        with classicnets_ext.use_backend("triton"):
            y = classicnets_ext.ops.local_response_norm(x, 3)
        torch.testing.assert_close(y, F.local_response_norm(x, 3))
        y.sum().backward()  # the autograd registered on load
        from torch.utils.flop_counter import FlopCounterMode  # its import registers our formulas
        with FlopCounterMode(display=False) as counter:
            torch.ops.classicnets_ext.lrn_triton(x.detach(), 3)
        assert counter.get_total_flops() > 0
        print("ok")
        """.replace("DEVICE", repr("cuda" if HAS_CUDA else "cpu")), **({} if HAS_CUDA else {"TRITON_INTERPRET": "1"}))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernels_import_where_triton_is_installed():
    """With triton installed our kernels must import (an error here is a failure, not skipped Triton tests) and
    register the *_triton ops."""
    import torch

    for name in ("lrn", "maxpool", "pool_lrn", "inception"):
        importlib.import_module(f"classicnets_ext.triton_kernels.{name}")
    assert classicnets_ext._registrations.load_triton() is None
    for op in ("lrn_triton", "max_pool2d_triton", "max_pool2d_lrn_triton", "inception_triton"):
        assert hasattr(torch.ops.classicnets_ext, op), op


# Drops setuptools' editable-install finder (`pip install -e .`, as `make install` does): it would find the
# checkout's built _C for the copied package below.
_NO_EDITABLE_FINDER = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
"""


def test_unbuilt_checkout_says_it_is_not_built(tmp_path):
    package = os.path.dirname(classicnets_ext.__file__)
    shutil.copytree(package, tmp_path / "classicnets_ext",
                    ignore=shutil.ignore_patterns("_C.*", "_C*.so", "_C*.pyd", "__pycache__"))
    code = _NO_EDITABLE_FINDER + textwrap.dedent("""
        import torch, torch.nn.functional as F
        import classicnets_ext
        assert classicnets_ext.__file__.startswith(sys.argv[1]), classicnets_ext.__file__
        x = torch.randn(1, 4, 3, 3)
        torch.testing.assert_close(classicnets_ext.ops.local_response_norm(x, 3), F.local_response_norm(x, 3))
        try:
            classicnets_ext.set_backend("cpu")
        except RuntimeError as e:
            print(e)
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("CLASSICNETS_BACKEND", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    message = out.stdout
    assert "backend 'cpu' is not available" in message and "the extension is not built" in message, message
    assert "pip install --no-build-isolation -e ." in message and "make install" in message, message
    assert "circular import" not in message and "partially initialized" not in message, message


def test_subpackages_load_on_first_attribute_access():
    """`classicnets_ext.train` (the README's Python API for training) raised AttributeError unless imported
    first; analysis, export and train load on first access (train not at import)."""
    out = _python("import sys, classicnets_ext as c\n"
                  "before = [m for m in ('classicnets_ext.train',) if m in sys.modules]\n"
                  "print(before, c.train.__name__, c.export.__name__, c.analysis.__name__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "classicnets_ext.train", "classicnets_ext.export", "classicnets_ext.analysis"]
