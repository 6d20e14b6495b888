"""Which implementation serves an op call.

Backends: ``"cpu"`` and ``"cuda"`` (our C++/CUDA kernels in ``_C``), ``"triton"`` (our Triton kernels),
``"reference"`` (stock PyTorch composite ops: the baseline we measure against) and ``"auto"``, the default.

The ``"auto"`` rule, per tensor device:

* CPU tensors: the C++ kernel (``"cpu"``); ``"reference"`` when ``_C`` did not load.
* CUDA tensors: the backend in ``AUTO_CUDA`` for the op. For LRN that is the CUDA C++ kernel: its
  channels-first path is one coalesced pass per column with the window ring in shared memory, while the
  Triton backward keeps its ring in global scratch. The rule is written per op so the bench
  (``bench/run.py``) can overturn it with numbers; without ``_C`` (or without CUDA in it) ``"triton"``.
  For max pooling it is the CUDA C++ kernel too; for the fused pool -> LRN the Triton kernel (measured).
* Other devices: ``"reference"``.

A ``_C`` built before an op existed (``_extension.has_op``) does not serve that op: ``"auto"`` passes over
the C++ backends for it, and an explicit ``"cpu"`` / ``"cuda"`` raises a RuntimeError saying to rebuild.

An explicit backend never moves data: asking ``"cpu"`` for a CUDA tensor (or ``"cuda"`` for a CPU one)
raises. The setting is a plain module global, so ``torch.compile`` guards on it and traces straight to
the chosen op. Initial value: the ``CLASSICNETS_BACKEND`` environment variable, else ``"auto"``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from . import _extension

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")

# op name -> backend "auto" picks for CUDA tensors (see the module docstring), by the GPU bench (bench/run.py
# --device cuda; H200, fp16, batch 64, AlexNet/GoogLeNet shapes, 2026-11-30; ms, CUDA C++ / Triton; full tables
# and what changed since in bench/gpu_notes.md):
#   lrn             forward NCHW 0.160 / 0.076 (192 ch: 0.317 / 0.136), channels-last 0.098 / 0.458;
#                   fwd+bwd NCHW 0.453 / 0.839 (192 ch: 0.903 / 0.559), channels-last 0.286 / 2.01
#                   -> CUDA C++: it wins training at AlexNet's shape and everything channels-last; its column
#                   forward, which lost, has since been cut into channel chunks (0.7 waves of threads before).
#   max_pool2d      inference 0.072 / 0.066 NCHW 3x3/2, 0.61 / 0.24 NCHW 2x2; training forward and fwd+bwd
#                   CUDA C++ wins every case (fwd+bwd 0.49 / 0.91) -> CUDA C++, whose index arithmetic (the cost
#                   of its inference kernels) has since gone to a compile-time-window fast path.
#   max_pool2d_lrn  inference 0.243 / 0.162, fwd+bwd 2.694 / 1.485 (64x96x55x55) -> Triton.
#   inception       not yet measured on a GPU (the bench's compile step outlasted the suite): cuBLAS / cuDNN
#                   with our epilogues and pooled projection, until bench/bench_inception.py says otherwise.
AUTO_CUDA = {"lrn": "cuda", "max_pool2d": "cuda", "max_pool2d_lrn": "triton", "inception": "cuda"}


# Read once: triton itself reads TRITON_INTERPRET when it is first imported.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def _why_unavailable(name: str) -> str | None:
    """None when ``name`` can run here, else the reason it cannot."""
    if name in ("auto", "reference"):
        return None
    if name in ("cpu", "cuda") and not _extension.available():
        return f"the compiled extension failed to load ({_extension.LOAD_ERROR}). {_extension.REBUILD_HINT}"
    if name == "cuda":
        if not _extension.build_info().get("cuda"):
            return "classicnets_ext._C was built without CUDA (rebuild with FORCE_CUDA=1 and nvcc on PATH)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
    if name == "triton":
        if not _TRITON_IMPORTABLE:
            return "triton is not installed"
        from . import _registrations  # imported lazily: it imports the kernels, which import this module
        if _registrations.TRITON_LOAD_ERROR is not None:
            error = _registrations.TRITON_LOAD_ERROR
            return f"the Triton kernels failed to import: {type(error).__name__}: {error}"
        if not torch.cuda.is_available() and not _TRITON_INTERPRET:
            return "triton needs a CUDA device here (or TRITON_INTERPRET=1 to run on CPU tensors)"
    return None


def available_backends() -> list[str]:
    """The backend names that can run on this machine, in BACKENDS order."""
    return [b for b in BACKENDS if _why_unavailable(b) is None]


def _validated(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    why = _why_unavailable(name)
    if why is not None:
        raise RuntimeError(f"backend {name!r} is not available: {why}")
    return name


_current = _validated(os.environ.get("CLASSICNETS_BACKEND", "auto").strip().lower() or "auto")


def set_backend(name: str) -> None:
    """Select the backend for every later op call (see the module docstring for the names)."""
    global _current
    _current = _validated(name)


def get_backend() -> str:
    return _current


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("reference"): ...`` -- the backend for the block, restored afterwards."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def resolve(op: str, tensor: torch.Tensor) -> str:
    """The concrete backend that serves ``op`` on ``tensor`` under the current setting."""
    device = tensor.device.type
    name = _current
    if name == "auto":
        if device == "cpu":
            return "cpu" if _extension.has_op(op) else "reference"
        if device == "cuda":
            preferred = AUTO_CUDA.get(op, "cuda")
            for name in (preferred, "cuda", "triton"):  # the measured choice, then the other GPU backend
                if _why_unavailable(name) is None and (name != "cuda" or _extension.has_op(op)):
                    return name
            return "reference"
        return "reference"
    if name in ("cpu", "cuda"):
        if device != name:
            raise RuntimeError(
                f"backend {name!r} cannot run {op} on a {device} tensor; move the tensor or pick another backend "
                f"(available: {', '.join(available_backends())})"
            )
        _extension.require(op, op=op)
    if name == "triton" and device != "cuda" and not (device == "cpu" and _TRITON_INTERPRET):
        raise RuntimeError(f"backend 'triton' cannot run {op} on a {device} tensor (CPU needs TRITON_INTERPRET=1)")
    return name
