"""Fake (meta) kernels and autograd for the ops in torch.ops.classicnets_ext.

Each op's schema is declared once in C++ (csrc/*/*.cpp); the Triton twins (``*_triton``) are declared by
``triton_op`` in triton_kernels/. Both kinds share one fake kernel per op -- so the fake behaviour is
tested through the C++ op by opcheck even where the Triton one can only run interpreted -- and one
autograd formula whose backward is itself an op, so torch.compile and torch.export see only ops. The LRN,
max-pool, fused and linear ops' autograd (and jvp, vmap, and the backward ops' own derivatives) lives in
``_autograd``; Inception's is below.

The fakes (``_fakes``) run the kernels' argument checks, then allocate as the kernels do (``_layouts``, which
the Triton launchers also allocate their outputs with).
"""
from __future__ import annotations

import sys
import threading

import torch

from . import _autograd, _extension, _fakes


def _register_lrn(name: str, backward_op) -> None:
    """Fakes, then autograd (backward, double backward, jvp) and vmap from ``_autograd``, which finds the
    backward op by name (``backward_op`` is ``<name>_backward``)."""
    torch.library.register_fake(f"classicnets_ext::{name}_backward")(_fakes.lrn_backward)
    torch.library.register_fake(f"classicnets_ext::{name}")(_fakes.lrn)
    _autograd.register_lrn(name)


def _register_max_pool2d(name: str, backward_op) -> None:
    torch.library.register_fake(f"classicnets_ext::{name}_backward")(_fakes.max_pool2d_backward)
    torch.library.register_fake(f"classicnets_ext::{name}_indices")(_fakes.max_pool2d_indices)
    torch.library.register_fake(f"classicnets_ext::{name}")(_fakes.max_pool2d)
    _autograd.register_max_pool2d(name)


def _register_max_pool2d_lrn(name: str, backward_op) -> None:
    """Needs the same backend's LRN and max-pool ops registered first: the double backward uses them."""
    torch.library.register_fake(f"classicnets_ext::{name}_backward")(_fakes.max_pool2d_lrn_backward)
    torch.library.register_fake(f"classicnets_ext::{name}")(_fakes.max_pool2d_lrn)
    _autograd.register_max_pool2d_lrn(name)


def _register_linear() -> None:
    torch.library.register_fake("classicnets_ext::linear")(_fakes.linear)
    if _extension.has_op("linear_grad_weight"):  # (a _C built before the backward's kernels has none)
        torch.library.register_fake("classicnets_ext::linear_grad_input")(_fakes.linear_grad_input)
        torch.library.register_fake("classicnets_ext::linear_grad_weight")(_fakes.linear_grad_weight)
    _autograd.register_linear()


def _inception_setup_context(ctx, inputs, output):
    input, weight_1x1, _, weight_3x3, _, weight_5x5, _, weight_pool, _, ch1x1 = inputs
    out, red3, red5 = output
    # The ReLU mask of every branch is kept as a byte per element (where the output is <= 0: where the ReLU
    # cut, as threshold_backward tests), not as the output itself: torchvision's block ends in a cat, which
    # saves nothing, so its output may be changed in place (a residual add, an in-place dropout) before the
    # backward -- ours too. The reductions are the spatial convolutions' inputs; the pooled input is
    # recomputed (a 3x3/s1 max is cheaper to redo than to keep). The reductions stay differentiable outputs: a
    # double backward reaches the input through them.
    ctx.save_for_backward(input, out.le(0), red3, red5, weight_1x1, weight_3x3, weight_5x5, weight_pool)
    ctx.ch1x1 = ch1x1
    ctx.set_materialize_grads(False)  # the reductions' gradients are None unless a caller used them


def _inception_backward(ctx, grad_output, grad_red3, grad_red5):
    """The block's backward as the library convolutions' own backward ops: any device, any backend's forward,
    and differentiable again (double backward) because every op in it is."""
    input, cut, red3, red5, w1, w3, w5, wp = ctx.saved_tensors
    aten = torch.ops.aten
    need = ctx.needs_input_grad

    def conv_backward(grad, x, w, mask):
        pad = w.shape[-1] // 2
        return aten.convolution_backward(grad, x, w, [w.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                                         mask)

    if grad_output is None:
        grad_output = torch.zeros_like(cut, dtype=red3.dtype)  # (the output's dtype and layout)
    grad = grad_output.masked_fill(cut, 0)  # threshold_backward(grad_output, out, 0), differentiable in grad
    g1, g3, g5, gp = grad.split([ctx.ch1x1, w3.shape[0], w5.shape[0], wp.shape[0]], 1)
    gr3, gw3, gb3 = conv_backward(g3, red3, w3, [True, need[3], need[4]])
    gr5, gw5, gb5 = conv_backward(g5, red5, w5, [True, need[5], need[6]])
    if grad_red3 is not None:
        gr3 = gr3 + grad_red3
    if grad_red5 is not None:
        gr5 = gr5 + grad_red5
    g_reduce = torch.cat([g1, aten.threshold_backward(gr3, red3, 0), aten.threshold_backward(gr5, red5, 0)], 1)
    gx, gw1, gb1 = conv_backward(g_reduce, input, w1, [need[0], need[1], need[2]])
    gwp = gbp = None
    if need[0] or need[7] or need[8]:
        pooled, indices = aten.max_pool2d_with_indices(input, [3, 3], [1, 1], [1, 1])
        g_pooled, gwp, gbp = conv_backward(gp, pooled, wp, [need[0], need[7], need[8]])
        if need[0]:
            gx = gx + aten.max_pool2d_with_indices_backward(g_pooled, input, [3, 3], [1, 1], [1, 1], [1, 1], False,
                                                            indices)
    return gx, gw1, gb1, gw3, gb3, gw5, gb5, gwp, gbp, None


def _register_inception(name: str) -> None:
    torch.library.register_fake(f"classicnets_ext::{name}")(_fakes.inception)
    torch.library.register_autograd(f"classicnets_ext::{name}", _inception_backward,
                                    setup_context=_inception_setup_context)


if _extension.has_op("lrn"):
    _register_lrn("lrn", torch.ops.classicnets_ext.lrn_backward)
# Guarded op by op: a _C built before the max-pool kernels existed still loads (those run on 'reference' and
# 'triton' until it is rebuilt).
if all(_extension.has_op(op) for op in ("max_pool2d", "max_pool2d_backward", "max_pool2d_indices")):
    _register_max_pool2d("max_pool2d", torch.ops.classicnets_ext.max_pool2d_backward)
if all(_extension.has_op(op) for op in ("max_pool2d_lrn", "max_pool2d_lrn_backward", "lrn_backward",
                                        "max_pool2d_backward", "max_pool2d_indices")):
    _register_max_pool2d_lrn("max_pool2d_lrn", torch.ops.classicnets_ext.max_pool2d_lrn_backward)
if _extension.has_op("inception"):
    _register_inception("inception")
if _extension.has_op("linear"):
    _register_linear()
# Eager calls below autograd run the C++ kernels through _C's direct entries (csrc/module.cpp: one per op, under
# the op's name), skipping the boxing of a torch.ops call. A _C built before they existed has none: its ops
# take the dispatcher.
for _name in _extension.CPP_OPS:
    if hasattr(_extension._C, _name):
        _autograd.register_direct(_name, getattr(_extension._C, _name))

# The Triton twins are imported on first use, not with the package: they import triton and torch._inductor,
# over a second that `import classicnets_ext` (and every CLI command) would otherwise pay on every machine.
# _backend calls load_triton() when the "triton" backend is first asked about; anything else that wants the
# *_triton ops (a test, a bench) calls it first.
TRITON_LOAD_ERROR: BaseException | None = None  # why the kernels could not be imported, or None
_triton_lock = threading.Lock()
_triton_loaded = False


def load_triton() -> BaseException | None:
    """Import the Triton kernels (defining the ``*_triton`` ops) and register their fakes and autograd, once.

    Returns ``TRITON_LOAD_ERROR``: None when they loaded, else the exception (triton missing or broken, a
    kernel file that does not import), kept for ``available_backends`` and ``info`` to report."""
    global TRITON_LOAD_ERROR, _triton_loaded
    with _triton_lock:
        if _triton_loaded:
            return TRITON_LOAD_ERROR
        _triton_loaded = True
        try:
            from .triton_kernels import lrn as _triton_lrn  # noqa: F401  (defines the *_triton ops)
            from .triton_kernels import maxpool as _triton_maxpool  # noqa: F401
            from .triton_kernels import pool_lrn as _triton_pool_lrn  # noqa: F401
            from .triton_kernels import inception as _triton_inception  # noqa: F401
            from .triton_kernels import _launch as _triton_launch
        except Exception as e:
            TRITON_LOAD_ERROR = e
            return e
        _register_lrn("lrn_triton", torch.ops.classicnets_ext.lrn_triton_backward)
        _register_max_pool2d("max_pool2d_triton", torch.ops.classicnets_ext.max_pool2d_triton_backward)
        _register_max_pool2d_lrn("max_pool2d_lrn_triton", torch.ops.classicnets_ext.max_pool2d_lrn_triton_backward)
        _register_inception("inception_triton")
        # Eager calls that nothing watches run the launchers themselves (_autograd._core._below_autograd).
        for name, launcher in (("lrn_triton", _triton_lrn.lrn_forward),
                               ("lrn_triton_backward", _triton_lrn.lrn_backward),
                               ("max_pool2d_triton", _triton_maxpool.max_pool2d_forward),
                               ("max_pool2d_triton_backward", _triton_maxpool.max_pool2d_backward),
                               ("max_pool2d_triton_indices", _triton_maxpool.max_pool2d_indices),
                               ("max_pool2d_lrn_triton", _triton_pool_lrn.max_pool2d_lrn_forward),
                               ("max_pool2d_lrn_triton_backward", _triton_pool_lrn.max_pool2d_lrn_backward)):
            _autograd.register_direct(name, _autograd.plain_only(_triton_launch.direct(launcher)))
        formulas = sys.modules.get(f"{__package__}.analysis.formulas")
        if formulas is not None:  # imported before the kernels: their FLOP formulas join now
            formulas._register()
        return None


class _TritonTwinsOnDemand(type(torch.ops.classicnets_ext)):
    """``torch.ops.classicnets_ext``, whose Triton twins (``*_triton*``) import the Triton kernels when first
    named. ``torch.export.load`` of an archive traced under the "triton" backend resolves its ops by name
    (``GraphModuleDeserializer.deserialize_operator``, a ``hasattr`` on the namespace), and torch offers an op
    library no hook to define ops on demand: with this, such an archive loads in a process that only imported
    classicnets_ext, as other archives do. Code that only asks whether the kernels are loaded reads
    ``_triton_loaded`` rather than naming a twin (the import costs over a second)."""

    # torch's: the namespace names its ops' module after its own (torch.ops.<ns>), and torch.export saves an op
    # as that module's path, which must start torch._ops for a loader to find it.
    __module__ = type(torch.ops.classicnets_ext).__module__

    def __getattr__(self, op_name: str):
        try:
            return super().__getattr__(op_name)
        except AttributeError:
            if _triton_loaded or "_triton" not in op_name:
                raise
        error = load_triton()
        if error is not None:  # hasattr() must still answer False where triton does not import
            raise AttributeError(f"torch.ops.classicnets_ext.{op_name} is a Triton kernel of classicnets_ext, "
                                 f"which could not be imported: {type(error).__name__}: {error}") from error
        return super().__getattr__(op_name)


torch.ops.classicnets_ext.__class__ = _TritonTwinsOnDemand


def op_defined(name: str) -> bool:
    """Whether ``torch.ops.classicnets_ext.<name>`` exists now, without importing the Triton kernels (naming a
    twin before they are loaded would: _TritonTwinsOnDemand)."""
    if "_triton" in name and not _triton_loaded:
        return False
    try:
        getattr(torch.ops.classicnets_ext, name)
    except (AttributeError, RuntimeError):
        return False
    return True
