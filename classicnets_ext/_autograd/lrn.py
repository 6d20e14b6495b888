"""LRN (``lrn`` and ``lrn_triton``): its Function, its backward's Function and their vmap rules."""
from __future__ import annotations

import torch

from .. import _derivatives as D
from ._core import _below_autograd, _fold, _op, _register, call


def _lrn_rule(name: str):
    def rule(info, in_dims, input, size, alpha, beta, k):
        (x,), unfold = _fold([input], in_dims[:1], info.batch_size, True)
        return unfold(_op(name)(x, size, alpha, beta, k)), 0
    return rule


def _lrn_backward_rule(name: str):
    def rule(info, in_dims, grad_output, input, size, alpha, beta, k):
        (g, x), unfold = _fold([grad_output, input], in_dims[:2], info.batch_size, True)
        return unfold(_op(name)(g, x, size, alpha, beta, k)), 0
    return rule


def _lrn_functions(name: str):
    lrn, lrn_backward = _op(name), _op(f"{name}_backward")

    class LRN(torch.autograd.Function):
        @staticmethod
        def forward(input, size, alpha, beta, k):
            return _below_autograd(lrn, input, size, alpha, beta, k)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, size, alpha, beta, k = inputs
            # Only x: the backward recomputes the window sums from it (less memory traffic than saving s).
            ctx.save_for_backward(input)
            ctx.save_for_forward(input)
            ctx.args = (size, alpha, beta, k)

        @staticmethod
        def backward(ctx, grad_output):
            (input,) = ctx.saved_tensors
            return call(lrn_backward, grad_output, input, *ctx.args), None, None, None, None

        @staticmethod
        def jvp(ctx, tangent, *_):
            (input,) = ctx.saved_tensors
            return D.lrn_jvp(input, tangent, *ctx.args)

    class LRNBackward(torch.autograd.Function):
        @staticmethod
        def forward(grad_output, input, size, alpha, beta, k):
            return _below_autograd(lrn_backward, grad_output, input, size, alpha, beta, k)

        @staticmethod
        def setup_context(ctx, inputs, output):
            grad_output, input, *args = inputs
            ctx.save_for_backward(grad_output, input)
            ctx.save_for_forward(grad_output, input)
            ctx.args = tuple(args)

        @staticmethod
        def backward(ctx, gg):
            grad_output, input = ctx.saved_tensors
            need = ctx.needs_input_grad
            d_grad = D.lrn_jvp(input, gg, *ctx.args) if need[0] else None
            d_input = D.lrn_backward_grad_input(gg, grad_output, input, *ctx.args) if need[1] else None
            return d_grad, d_input, None, None, None, None

        @staticmethod
        def jvp(ctx, t_grad, t_input, *_):
            grad_output, input = ctx.saved_tensors
            out = torch.zeros_like(input) if t_grad is None else lrn_backward(t_grad, input, *ctx.args)
            if t_input is not None:
                out = out + D.lrn_backward_jvp(grad_output, input, t_input, *ctx.args)
            return out

    return LRN, LRNBackward


def register_lrn(name: str) -> None:
    """classicnets_ext::<name> and <name>_backward (``lrn`` or ``lrn_triton``)."""
    forward, backward = _lrn_functions(name)
    _register(name, forward, _lrn_rule(name))
    _register(f"{name}_backward", backward, _lrn_backward_rule(f"{name}_backward"))
