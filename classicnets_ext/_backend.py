"""Which implementation serves an op call.

Backends: ``"cpu"`` and ``"cuda"`` (our C++/CUDA kernels in ``_C``), ``"triton"`` (our Triton kernels),
``"reference"`` (stock PyTorch composite ops: the baseline we measure against) and ``"auto"``, the default.

The ``"auto"`` rule, per tensor device:

* CPU tensors: the C++ kernel (``"cpu"``); ``"reference"`` when ``_C`` did not load.
* CUDA tensors: what ``AUTO_CUDA`` names for the op -- a backend, or one for a call that records a gradient
  and one for a call that does not -- as the GPU bench (``bench/run.py --device cuda``) measured it: the CUDA
  C++ kernels for LRN and max pooling, and for the fused pool -> LRN ``"separate"``: our max-pool, ReLU on the
  pooled tensor, then our LRN, each by its own rule (on the GPUs measured, that pair beat the fused kernels in
  every mode; on the CPU the fused kernel wins and runs). Where the named backend cannot run
  (no ``_C``, no CUDA in it, no triton), the other GPU one.
* Other devices: ``"reference"``.

A ``_C`` built before an op existed (``_extension.has_op``) does not serve that op: ``"auto"`` passes over
the C++ backends for it, and an explicit ``"cpu"`` / ``"cuda"`` raises a RuntimeError saying to rebuild.

An explicit backend never moves data: asking ``"cpu"`` for a CUDA tensor (or ``"cuda"`` for a CPU one)
raises. ``set_backend`` sets the process-wide default (as ``torch.set_num_threads`` does); ``use_backend``
overrides it on the calling thread only, for its block (as ``torch.autocast`` does), so that threads serving
different backends neither see nor undo each other's blocks. ``set_backend`` inside a block also sets that
block's backend: ``get_backend()`` is always what was last asked for on this thread. ``torch.compile`` guards
on both (a module global and a ``threading.local`` attribute) and traces straight to the chosen op. Initial
value: the ``CLASSICNETS_BACKEND`` environment variable, else ``"auto"``; a value
that is unknown or cannot run here warns (naming the variable) and leaves ``"auto"``, so that the package,
and ``python -m classicnets_ext info``, still import. Names are case-insensitive, in the variable and in
``set_backend`` alike (``"CPU"`` is ``"cpu"``).

Whether a backend can run here is worked out once per backend and cached: nothing it depends on (the
loaded ``_C``, CUDA's presence, triton) changes within a process, and ``"auto"`` asks on every op call.
The Triton kernels (which import triton and ``torch._inductor``, over a second) are imported only when the
``"triton"`` backend is first asked about -- ``available_backends()``, ``set_backend("triton")``, ``"auto"``
on a CUDA tensor for an op that ``AUTO_CUDA`` (or a missing CUDA C++ kernel) sends to Triton -- never by
``import classicnets_ext``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import warnings

import torch

from . import _extension

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")

# op name -> what "auto" runs on CUDA tensors (see the module docstring): a backend, or a backend each for a
# call that records a gradient ("training": grad mode on and an input that requires grad) and one that does not
# ("inference"); for max_pool2d_lrn, "separate" runs its two ops. The GPU bench on one H200 (fp16, batch 64,
# 64x96x55x55 NCHW unless said; ms, CUDA C++ / Triton; lease 3 of 2026-12-04, lease 1 for channels-last; full
# tables in bench/gpu_notes.md):
#   lrn             forward 0.063 / 0.085, fwd+bwd 0.183 / 0.359 (bf16 0.183 / 0.425); lease 1 channels-last
#                   forward 0.098 / 0.458, fwd+bwd 0.286 / 2.01 -> CUDA C++.
#   max_pool2d      inference 0.027 / 0.085, training forward 0.030 / 0.089, fwd+bwd 0.200 / 0.606 -> CUDA C++.
#   max_pool2d_lrn  fused CUDA C++ / fused Triton / our two ops on CUDA C++: inference 0.093 / 0.157 / 0.068,
#                   training forward 0.123 / 0.177 / 0.069, fwd+bwd 0.284 / 1.015 / 0.315, where that pair
#                   still ran ReLU on the whole input. Lease 4 (one H100, 2026-12-05), against the pair as it
#                   runs now (ReLU on the pooled quarter), fused CUDA C++ / pair: inference 0.89x, training
#                   forward 0.88x, fwd+bwd 0.1966 / 0.1875 ms (0.95x) -> the pair in every mode. (Lease 3's
#                   fwd+bwd margin, 0.284 against 0.315, was about what the full-size ReLU's forward and
#                   backward cost there, ~0.04 ms; the max-pool backward got faster since, in both paths.)
#   inception       not yet measured on a GPU (the bench's compile step outlasted the suite): cuBLAS / cuDNN
#                   with our epilogues and pooled projection, until bench/bench_inception.py says otherwise.
# Channels-last tensors follow the channels-first figures where lease 3's short run measured no channels-last case.
AUTO_CUDA = {"lrn": "cuda", "max_pool2d": "cuda", "max_pool2d_lrn": "separate", "inception": "cuda"}


# Read once: triton itself reads TRITON_INTERPRET when it is first imported.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def _find_why_unavailable(name: str) -> str | None:
    if name in ("auto", "reference"):
        return None
    if name in ("cpu", "cuda") and not _extension.available():
        return f"the compiled extension failed to load: {_extension.load_error_hint()}"
    if name == "cuda":
        if not _extension.build_info().get("cuda"):
            return "classicnets_ext._C was built without CUDA (rebuild with FORCE_CUDA=1 and nvcc on PATH)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
    if name == "triton":
        if not _TRITON_IMPORTABLE:
            return "triton is not installed"
        if not torch.cuda.is_available() and not _TRITON_INTERPRET:
            return "triton needs a CUDA device here (or TRITON_INTERPRET=1 to run on CPU tensors)"
        from . import _registrations  # imported lazily: it imports the kernels, which import this module
        error = _registrations.load_triton()  # the first time only: it imports triton and torch._inductor
        if error is not None:
            return f"the Triton kernels failed to import: {type(error).__name__}: {error}"
    return None


# backend name -> why it cannot run here (None: it can), filled on first use (see the module docstring).
_UNAVAILABLE: dict[str, str | None] = {}


def _why_unavailable(name: str) -> str | None:
    """None when ``name`` can run here, else the reason it cannot."""
    if name not in _UNAVAILABLE:
        _UNAVAILABLE[name] = _find_why_unavailable(name)
    return _UNAVAILABLE[name]


# What torch.compiler.assume_constant_result does, without importing torch._dynamo (over a second) to do it:
# when torch.compile traces resolve() -- "auto" on a CUDA tensor -- it calls this function as plain Python and
# uses the answer as a constant (it is one), rather than tracing into _C.build_info() or the first import of
# the Triton kernels, which would break the graph (an error under fullgraph=True).
_why_unavailable._dynamo_marked_constant = True


def available_backends() -> list[str]:
    """The backend names that can run on this machine, in BACKENDS order."""
    return [b for b in BACKENDS if _why_unavailable(b) is None]


def _validated(name: str) -> str:
    """``name`` as one of BACKENDS (case and surrounding blanks ignored), if it can run here; else raise."""
    canonical = name.strip().lower() if isinstance(name, str) else None
    if canonical not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    why = _why_unavailable(canonical)
    if why is not None:
        raise RuntimeError(f"backend {canonical!r} is not available: {why}")
    return canonical


def _initial_backend() -> str:
    value = os.environ.get("CLASSICNETS_BACKEND", "")
    if not value.strip():
        return "auto"
    try:
        return _validated(value)
    except (ValueError, RuntimeError) as e:
        # A warning, not an error: an exception here would make `import classicnets_ext` itself fail, and with
        # it `python -m classicnets_ext info`, the command that says which backends can run.
        warnings.warn(f"ignoring the environment variable CLASSICNETS_BACKEND={value!r}: {e}; using 'auto'",
                      RuntimeWarning, stacklevel=2)
        return "auto"


_default = _initial_backend()
# .override: the backend of this thread's innermost use_backend block; unset outside every block. (Unset,
# not None: torch.compile guards on a threading.local attribute's presence and value, but not on a default
# from a subclass's class attribute -- with one, a compiled function kept its first backend in every block.)
_thread = threading.local()
# How many use_backend blocks are open, in all threads: while none is, get_backend skips the thread-local read
# (0.36 us, on every op call, against 0.03 us for this global's).
_open_blocks = 0
_open_blocks_lock = threading.Lock()


def set_backend(name: str) -> None:
    """Select the backend for every later op call, process-wide (see the module docstring for the names; any
    case). Inside a ``use_backend`` block it also sets that block's backend on this thread."""
    global _default
    name = _validated(name)
    _default = name
    if getattr(_thread, "override", None) is not None:
        _thread.override = _thread.blocks[-1][0] = name


def get_backend() -> str:
    """The backend that serves op calls on this thread: its ``use_backend`` block's, else the process-wide one."""
    # Not while Dynamo traces: it would guard on the process-wide count of open blocks, so other threads opening
    # and closing blocks recompiled this thread's functions (and failed fullgraph ones at the recompile limit).
    if not torch.compiler.is_dynamo_compiling() and not _open_blocks:
        return _default
    override = getattr(_thread, "override", None)
    return _default if override is None else override


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("reference"): ...`` -- the backend for the block on this thread (other threads keep
    theirs), restored afterwards."""
    global _open_blocks
    name = _validated(name)
    # The thread's open blocks, innermost last: on exit a block removes itself and the thread takes the
    # innermost one left, so blocks that end out of order (asyncio tasks on one thread, each awaiting inside
    # its block) leave no stale setting behind once all have ended. (Restoring the value seen on entry left
    # the first-opened task's backend set, hidden until another thread opened a block.)
    if not hasattr(_thread, "blocks"):
        _thread.blocks = []
    block = [name]
    _thread.blocks.append(block)
    _thread.override = name
    with _open_blocks_lock:
        _open_blocks += 1
    try:
        yield
    finally:
        with _open_blocks_lock:
            _open_blocks -= 1
        blocks = _thread.blocks
        del blocks[next(i for i in range(len(blocks) - 1, -1, -1) if blocks[i] is block)]
        if blocks:
            _thread.override = blocks[-1][0]
        else:
            del _thread.override  # unset again, so compiled functions match their first guards again


def checkpoint_context():
    """``torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, context_fn=checkpoint_context)``:
    the recomputation that backward runs for a checkpointed forward uses the backend the forward used, as
    checkpoint does for autocast. Without it, the recomputation takes whatever backend is in force when
    backward runs -- after a ``use_backend`` block has ended, another one: its ops save other tensors, and
    checkpoint raises a CheckpointError (``use_reentrant=True``, which takes no context, recomputes on that
    other backend: run its backward inside the block)."""
    return contextlib.nullcontext(), use_backend(get_backend())


# (backend setting, op) -> the devices whose calls of op it sends to our C++ kernels whatever the grad mode
# (bit 0: CPU tensors, bit 1: CUDA tensors): the eager entries of _C (ops.max_pool2d) serve only those.
_CPP_DEVICES: dict[tuple[str, str], int] = {}


def cpp_devices(op: str) -> int:
    """Which tensors' calls of ``op`` run on the C++ kernels under the current setting, as a bit mask (see
    ``_CPP_DEVICES``): what resolve() answers, read once per setting."""
    key = (get_backend(), op)
    mask = _CPP_DEVICES.get(key)
    if mask is None:
        name, cpp = key[0], _extension.has_op(op)
        cuda = cpp and _why_unavailable("cuda") is None
        mask = ((name in ("auto", "cpu") and cpp)
                | (cuda and (name == "cuda" or (name == "auto" and AUTO_CUDA.get(op, "cuda") == "cuda"))) << 1)
        _CPP_DEVICES[key] = mask
    return mask


def auto_cuda_choice(op: str, tensor: torch.Tensor) -> str:
    """What ``AUTO_CUDA`` names for ``op`` on the CUDA tensor ``tensor`` in the current grad mode, available
    or not."""
    choice = AUTO_CUDA.get(op, "cuda")
    if isinstance(choice, dict):
        return choice["training" if tensor.requires_grad and torch.is_grad_enabled() else "inference"]
    return choice


_FALLBACK_WARNED: set[str] = set()


def _warn_reference_fallback(op: str) -> None:
    """Once per op and process: ``auto`` runs stock PyTorch for ``op`` on CPU tensors because _C cannot serve
    it. Right, but slow; a user who installed the kernels should hear why."""
    if op in _FALLBACK_WARNED:
        return
    _FALLBACK_WARNED.add(op)
    why = (_extension.load_error_hint() if not _extension.available()
           else f"the loaded classicnets_ext._C does not define {op} (built from older sources). "
                f"{_extension.REBUILD_HINT}")
    warnings.warn(f"backend 'auto' runs {op} on stock PyTorch (the 'reference' backend): {why}", RuntimeWarning,
                  stacklevel=3)


def resolve(op: str, tensor: torch.Tensor) -> str:
    """The concrete backend that serves ``op`` on ``tensor`` under the current setting; for max_pool2d_lrn
    under ``"auto"`` on CUDA, ``"separate"`` (run its two ops)."""
    name = get_backend()
    if name == "auto":  # (is_cpu / is_cuda: a tenth of what tensor.device costs, on every op call)
        if tensor.is_cpu:
            if _extension.has_op(op):
                return "cpu"
            _warn_reference_fallback(op)
            return "reference"
        if tensor.is_cuda:
            preferred = auto_cuda_choice(op, tensor)
            if preferred == "separate":
                return preferred
            for name in (preferred, "cuda", "triton"):  # the measured choice, then the other GPU backend
                if _why_unavailable(name) is None and (name != "cuda" or _extension.has_op(op)):
                    return name
            return "reference"
        return "reference"
    device = tensor.device.type
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
