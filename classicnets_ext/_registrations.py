"""Fake (meta) kernels and autograd for the ops in torch.ops.classicnets_ext.

Each op's schema is declared once in C++ (csrc/*/*.cpp); the Triton twins (``*_triton``) are declared by
``triton_op`` in triton_kernels/. Both kinds share one fake kernel per op -- so the fake behaviour is
tested through the C++ op by opcheck even where the Triton one can only run interpreted -- and one
autograd formula whose backward is itself an op, so torch.compile and torch.export see only ops.

The max-pool fakes are the allocation helpers of ``_layouts`` (they take the ops' exact arguments), which
the Triton launchers also allocate their outputs with.
"""
from __future__ import annotations

import torch

from . import _extension, _layouts


def _lrn_fake(input, size, alpha=1e-4, beta=0.75, k=1.0):
    return _layouts.lrn_output_like(input)


def _lrn_backward_fake(grad_output, input, size, alpha, beta, k):
    return _layouts.lrn_output_like(input)


def _lrn_setup_context(ctx, inputs, output):
    input, size, alpha, beta, k = inputs
    # Only x is saved: the backward recomputes the window sums from it, which costs less memory traffic
    # than saving the scale s (or y) and reading it back.
    ctx.save_for_backward(input)
    ctx.args = (size, alpha, beta, k)


def _lrn_autograd(backward_op):
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return backward_op(grad_output, input, *ctx.args), None, None, None, None
    return backward


def _register_lrn(name: str, backward_op) -> None:
    torch.library.register_fake(f"classicnets_ext::{name}_backward")(_lrn_backward_fake)
    torch.library.register_fake(f"classicnets_ext::{name}")(_lrn_fake)
    torch.library.register_autograd(f"classicnets_ext::{name}", _lrn_autograd(backward_op),
                                    setup_context=_lrn_setup_context)


def _max_pool2d_setup_context(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax = inputs
    _, argmax = output
    ctx.mark_non_differentiable(argmax)
    # The argmax (one byte per output element) and the input's size: the backward gathers the gradient
    # through the argmax and never reads the input, so the input is not kept alive.
    ctx.save_for_backward(argmax)
    ctx.input_size = input.shape
    ctx.args = (kernel_size, stride, padding, dilation)
    ctx.saved_argmax = save_argmax


def _max_pool2d_autograd(backward_op):
    def backward(ctx, grad_output, grad_argmax):
        if not ctx.saved_argmax:
            raise RuntimeError(
                "max_pool2d: the backward needs the argmax, but the forward ran with save_argmax=False; pass "
                "save_argmax=True when the input requires grad (classicnets_ext.ops.max_pool2d does)")
        (argmax,) = ctx.saved_tensors
        return backward_op(grad_output, argmax, ctx.input_size, *ctx.args), None, None, None, None, None, None
    return backward


def _register_max_pool2d(name: str, backward_op) -> None:
    torch.library.register_fake(f"classicnets_ext::{name}_backward")(_layouts.max_pool2d_grad_input_like)
    torch.library.register_fake(f"classicnets_ext::{name}_indices")(_layouts.max_pool2d_indices_like)
    torch.library.register_fake(f"classicnets_ext::{name}")(_layouts.max_pool2d_outputs_like)
    torch.library.register_autograd(f"classicnets_ext::{name}", _max_pool2d_autograd(backward_op),
                                    setup_context=_max_pool2d_setup_context)


def _max_pool2d_lrn_setup_context(ctx, inputs, output):
    input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu, save_for_backward = inputs
    _, pooled, argmax = output
    ctx.mark_non_differentiable(pooled, argmax)
    # LRN's input (the pooled values) and the one-byte argmax: the backward needs neither x nor y.
    ctx.save_for_backward(pooled, argmax)
    ctx.input_size = input.shape
    ctx.args = (kernel_size, stride, padding, size, alpha, beta, k, relu)
    ctx.saved = save_for_backward


def _max_pool2d_lrn_autograd(backward_op):
    def backward(ctx, grad_output, grad_pooled, grad_argmax):
        if not ctx.saved:
            raise RuntimeError(
                "max_pool2d_lrn: the backward needs the pooled values and the argmax, but the forward ran with "
                "save_for_backward=False; pass save_for_backward=True when the input requires grad "
                "(classicnets_ext.ops.max_pool2d_lrn does)")
        pooled, argmax = ctx.saved_tensors
        grad_input = backward_op(grad_output, pooled, argmax, ctx.input_size, *ctx.args)
        return (grad_input,) + (None,) * 10
    return backward


def _register_max_pool2d_lrn(name: str, backward_op) -> None:
    torch.library.register_fake(f"classicnets_ext::{name}_backward")(_layouts.max_pool2d_lrn_grad_input_like)
    torch.library.register_fake(f"classicnets_ext::{name}")(_layouts.max_pool2d_lrn_outputs_like)
    torch.library.register_autograd(f"classicnets_ext::{name}", _max_pool2d_lrn_autograd(backward_op),
                                    setup_context=_max_pool2d_lrn_setup_context)


if _extension.has_op("lrn"):
    _register_lrn("lrn", torch.ops.classicnets_ext.lrn_backward)
# Guarded op by op: a _C built before the max-pool kernels existed still loads (those run on 'reference' and
# 'triton' until it is rebuilt).
if all(_extension.has_op(op) for op in ("max_pool2d", "max_pool2d_backward", "max_pool2d_indices")):
    _register_max_pool2d("max_pool2d", torch.ops.classicnets_ext.max_pool2d_backward)
if all(_extension.has_op(op) for op in ("max_pool2d_lrn", "max_pool2d_lrn_backward")):
    _register_max_pool2d_lrn("max_pool2d_lrn", torch.ops.classicnets_ext.max_pool2d_lrn_backward)

# Why the Triton kernels could not be imported (triton missing or broken), or None. The "triton" backend is
# then unavailable and says why.
TRITON_LOAD_ERROR: BaseException | None = None
try:
    from .triton_kernels import lrn as _triton_lrn  # noqa: F401  (defines the *_triton ops)
    from .triton_kernels import maxpool as _triton_maxpool  # noqa: F401
    from .triton_kernels import pool_lrn as _triton_pool_lrn  # noqa: F401
except Exception as e:
    TRITON_LOAD_ERROR = e
else:
    _register_lrn("lrn_triton", torch.ops.classicnets_ext.lrn_triton_backward)
    _register_max_pool2d("max_pool2d_triton", torch.ops.classicnets_ext.max_pool2d_triton_backward)
    _register_max_pool2d_lrn("max_pool2d_lrn_triton", torch.ops.classicnets_ext.max_pool2d_lrn_triton_backward)
