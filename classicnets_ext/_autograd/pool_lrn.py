"""The fused ReLU -> max-pool -> LRN (``max_pool2d_lrn`` and ``max_pool2d_lrn_triton``): its Function and its
backward's, whose derivatives compose those of the two ops."""
from __future__ import annotations

import torch

from .. import _derivatives as D
from .. import _layouts
from ._core import _below_autograd, _op, _register, call
from .max_pool import _input_layout, _pool_backward_rule, _pool_forward_rule


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """LRN reads (N, C, *): a 3-D (C, H, W) pooled tensor is one sample."""
    return t.unsqueeze(0) if t.dim() == 3 else t


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.squeeze(0) if ref.dim() == 3 else t


def _max_pool2d_lrn_functions(name: str):
    suffix = name[len("max_pool2d_lrn"):]  # "" or "_triton": the backend's own pool and LRN ops
    forward_op, backward_op = _op(name), _op(f"{name}_backward")
    lrn_backward = _op(f"lrn{suffix}_backward")
    pool_backward, indices_op = _op(f"max_pool2d{suffix}_backward"), _op(f"max_pool2d{suffix}_indices")
    dilation = [1, 1]

    class MaxPool2dLRN(torch.autograd.Function):
        @staticmethod
        def forward(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu, save_for_backward):
            return _below_autograd(forward_op, input, kernel_size, stride, padding, ceil_mode, size, alpha, beta,
                                   k, relu, save_for_backward)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu, save = inputs
            _, pooled, argmax = output
            ctx.mark_non_differentiable(argmax)
            # LRN's input (the pooled values) and the one-byte argmax: the backward needs neither x nor y.
            # pooled stays a differentiable output: a double backward reaches x through it.
            ctx.save_for_backward(pooled, argmax)
            if save:
                ctx.save_for_forward(pooled, argmax)
            else:
                ctx.save_for_forward(input)
            ctx.input_size = input.shape
            ctx.channels_last = _layouts.max_pool2d_is_channels_last(input)
            ctx.pool, ctx.ceil_mode = (kernel_size, stride, padding), ceil_mode
            ctx.lrn, ctx.relu, ctx.saved = (size, alpha, beta, k), relu, save
            ctx.set_materialize_grads(False)

        @staticmethod
        def backward(ctx, grad_output, grad_pooled, grad_argmax):
            if not ctx.saved:
                raise RuntimeError(
                    "max_pool2d_lrn: the backward needs the pooled values and the argmax, but the forward ran with "
                    "save_for_backward=False; pass save_for_backward=True when the input requires grad "
                    "(classicnets_ext.ops.max_pool2d_lrn does)")
            pooled, argmax = ctx.saved_tensors
            if grad_pooled is None:
                if grad_output is None:
                    return (None,) * 11
                grad_input = call(backward_op, grad_output, pooled, argmax, ctx.input_size, *ctx.pool, *ctx.lrn,
                                  ctx.relu)
            else:  # a double backward: the gradient reaching the pooled values, plus LRN's
                grad = grad_pooled
                if grad_output is not None:
                    grad = grad + _like(lrn_backward(_nchw(grad_output), _nchw(pooled), *ctx.lrn), pooled)
                grad_input = pool_backward(D.relu_mask(grad, pooled, ctx.relu), argmax, ctx.input_size, *ctx.pool,
                                           dilation)
            return (_input_layout(grad_input, ctx.channels_last),) + (None,) * 10

        @staticmethod
        def jvp(ctx, tangent, *_):
            if ctx.saved:
                pooled, argmax = ctx.saved_tensors
            else:
                (input,) = ctx.saved_tensors
                _, pooled, argmax = _below_autograd(forward_op, input, *ctx.pool, ctx.ceil_mode, *ctx.lrn, ctx.relu,
                                                    True)
            indices = indices_op(argmax, ctx.input_size, *ctx.pool, dilation)
            t_pooled = D.relu_mask(D.gather_windows(tangent, indices), pooled, ctx.relu)
            t_out = _like(D.lrn_jvp(_nchw(pooled), _nchw(t_pooled), *ctx.lrn), pooled)
            return t_out, t_pooled if ctx.saved else tangent.new_zeros(0), None

    class MaxPool2dLRNBackward(torch.autograd.Function):
        """grad_input = P^T(R(L^T(grad_output, pooled))): LRN's backward L^T, the ReLU mask R, max-pool's
        scatter P^T. Its derivatives compose those of the pieces (see _derivatives)."""

        @staticmethod
        def forward(grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size, alpha, beta, k,
                    relu):
            return _below_autograd(backward_op, grad_output, pooled, argmax, input_size, kernel_size, stride,
                                   padding, size, alpha, beta, k, relu)

        @staticmethod
        def setup_context(ctx, inputs, output):
            grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size, alpha, beta, k, relu = inputs
            ctx.save_for_backward(grad_output, pooled, argmax)
            ctx.save_for_forward(grad_output, pooled, argmax)
            ctx.input_size, ctx.pool = input_size, (kernel_size, stride, padding)
            ctx.lrn, ctx.relu = (size, alpha, beta, k), relu

        @staticmethod
        def backward(ctx, gg):
            grad_output, pooled, argmax = ctx.saved_tensors
            need = ctx.needs_input_grad
            h = D.relu_mask(D.gather_windows(gg, indices_op(argmax, ctx.input_size, *ctx.pool, dilation)), pooled,
                            ctx.relu)
            d_grad = d_pooled = None
            if need[0]:
                d_grad = _like(D.lrn_jvp(_nchw(pooled), _nchw(h), *ctx.lrn), pooled)
            if need[1]:
                d_pooled = _like(D.lrn_backward_grad_input(_nchw(h), _nchw(grad_output), _nchw(pooled), *ctx.lrn),
                                 pooled)
            return (d_grad, d_pooled) + (None,) * 10

        @staticmethod
        def jvp(ctx, t_grad, t_pooled, *_):
            grad_output, pooled, argmax = ctx.saved_tensors
            out = None
            if t_grad is not None:
                out = backward_op(t_grad, pooled, argmax, ctx.input_size, *ctx.pool, *ctx.lrn, ctx.relu)
            if t_pooled is not None:
                t_lrn = _like(D.lrn_backward_jvp(_nchw(grad_output), _nchw(pooled), _nchw(t_pooled), *ctx.lrn), pooled)
                part = pool_backward(D.relu_mask(t_lrn, pooled, ctx.relu), argmax, ctx.input_size, *ctx.pool, dilation)
                out = part if out is None else out + part
            if out is None:
                out = pool_backward(torch.zeros_like(grad_output), argmax, ctx.input_size, *ctx.pool, dilation)
            return out

    return MaxPool2dLRN, MaxPool2dLRNBackward


def register_max_pool2d_lrn(name: str) -> None:
    """classicnets_ext::<name> and <name>_backward (``max_pool2d_lrn`` or ``max_pool2d_lrn_triton``); the
    backend's LRN and max-pool ops must be registered (their backward ops serve the double backward)."""
    forward, backward = _max_pool2d_lrn_functions(name)
    _register(name, forward, _pool_forward_rule(name, 3))
    _register(f"{name}_backward", backward, _pool_backward_rule(f"{name}_backward", 3))
