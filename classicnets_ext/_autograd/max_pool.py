"""Max-pool (``max_pool2d`` and ``max_pool2d_triton``): its Function, its backward's Function, and the vmap rules of
its forward, backward and indices ops (the fused pool -> LRN op's take the same shapes)."""
from __future__ import annotations

import torch

from .. import _derivatives as D
from .. import _layouts
from ._core import _LIB, _batched, _below_autograd, _fold, _folded_size, _op, _register, call


def _pool_forward_rule(name: str, n_outputs: int):
    """max_pool2d and max_pool2d_lrn: (output, [pooled,] argmax), the saved ones empty (not vmapped) unless
    the last argument asks for them.

    The Python wrappers decide whether to save from ``input.requires_grad``, which a vmapped tensor does not
    report: the rule, which sees the tensor itself, saves whenever autograd will need it (the Function a
    level down keeps what it saved) and still answers empty saved tensors where they were not asked for."""
    def rule(info, in_dims, input, *args):
        (x,), unfold = _fold([input], in_dims[:1], info.batch_size, input.dim() == 5)
        save = args[-1]
        outputs = _op(name)(x, *args[:-1], save or (torch.is_grad_enabled() and x.requires_grad))
        if not save:
            empty = [outputs[0].new_empty(0)] * (n_outputs - 2) + [torch.empty(0, dtype=torch.uint8, device=x.device)]
            return (unfold(outputs[0]), *empty), (0,) + (None,) * (n_outputs - 1)
        return tuple(unfold(t) for t in outputs), (0,) * n_outputs
    return rule


def _pool_backward_rule(name: str, n_tensors: int):
    """max_pool2d_backward, max_pool2d_indices, max_pool2d_lrn_backward: tensors, then the input size."""
    def rule(info, in_dims, *args):
        tensors, (input_size, *rest) = args[:n_tensors], args[n_tensors:]
        folded, unfold = _fold(tensors, in_dims[:n_tensors], info.batch_size, len(input_size) == 4)
        return unfold(_op(name)(*folded, _folded_size(input_size, info.batch_size), *rest)), 0
    return rule


def _input_layout(grad_input: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The input's gradient in the input's layout, as torch's. The backward ops take the layout from the argmax,
    which cannot show it when the output's layout is ambiguous (a 1x1 output is both contiguous and
    channels-last): a channels-last input pooled to 1x1 got a contiguous gradient."""
    if (channels_last and not _batched(grad_input)
            and not grad_input.is_contiguous(memory_format=torch.channels_last)):
        return grad_input.contiguous(memory_format=torch.channels_last)
    return grad_input


def _max_pool2d_functions(name: str):
    forward_op, backward_op, indices_op = _op(name), _op(f"{name}_backward"), _op(f"{name}_indices")

    class MaxPool2d(torch.autograd.Function):
        @staticmethod
        def forward(input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax):
            return _below_autograd(forward_op, input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax = inputs
            _, argmax = output
            ctx.mark_non_differentiable(argmax)
            # The one-byte argmax and the input's size: the backward gathers the gradient through the argmax
            # and never reads the input, so the input is not kept alive. The tangent needs the argmax too:
            # without one (save_argmax=False, as under forward-mode AD alone) it recomputes it from x.
            ctx.save_for_backward(argmax)
            ctx.save_for_forward(argmax if save_argmax else input)
            ctx.input_size = input.shape
            ctx.channels_last = _layouts.max_pool2d_is_channels_last(input)
            ctx.args = (kernel_size, stride, padding, dilation)
            ctx.ceil_mode, ctx.saved_argmax = ceil_mode, save_argmax

        @staticmethod
        def backward(ctx, grad_output, grad_argmax):
            if not ctx.saved_argmax:
                raise RuntimeError(
                    "max_pool2d: the backward needs the argmax, but the forward ran with save_argmax=False; pass "
                    "save_argmax=True when the input requires grad (classicnets_ext.ops.max_pool2d does)")
            (argmax,) = ctx.saved_tensors
            grad_input = call(backward_op, grad_output, argmax, ctx.input_size, *ctx.args)
            return _input_layout(grad_input, ctx.channels_last), None, None, None, None, None, None

        @staticmethod
        def jvp(ctx, tangent, *_):
            (saved,) = ctx.saved_tensors
            argmax = saved if ctx.saved_argmax else _below_autograd(forward_op, saved, *ctx.args, ctx.ceil_mode,
                                                                    True)[1]
            out = D.gather_windows(tangent, indices_op(argmax, ctx.input_size, *ctx.args))
            return out, None

    class MaxPool2dBackward(torch.autograd.Function):
        """Linear in grad_output: a scatter through the argmax. Its derivative is the gather by the same
        argmax (max pooling with a fixed argmax); the argmax itself is piecewise constant."""

        @staticmethod
        def forward(grad_output, argmax, input_size, kernel_size, stride, padding, dilation):
            return _below_autograd(backward_op, grad_output, argmax, input_size, kernel_size, stride, padding,
                                   dilation)

        @staticmethod
        def setup_context(ctx, inputs, output):
            _, argmax, input_size, *args = inputs
            ctx.save_for_backward(argmax)
            ctx.save_for_forward(argmax)
            ctx.input_size, ctx.args = input_size, tuple(args)

        @staticmethod
        def backward(ctx, gg):
            (argmax,) = ctx.saved_tensors
            grad = None
            if ctx.needs_input_grad[0]:
                grad = D.gather_windows(gg, indices_op(argmax, ctx.input_size, *ctx.args))
            return grad, None, None, None, None, None, None

        @staticmethod
        def jvp(ctx, tangent, *_):
            (argmax,) = ctx.saved_tensors
            return backward_op(tangent, argmax, ctx.input_size, *ctx.args)

    return MaxPool2d, MaxPool2dBackward


def register_max_pool2d(name: str) -> None:
    """classicnets_ext::<name>, <name>_backward and <name>_indices (``max_pool2d`` or ``max_pool2d_triton``)."""
    forward, backward = _max_pool2d_functions(name)
    _register(name, forward, _pool_forward_rule(name, 2))
    _register(f"{name}_backward", backward, _pool_backward_rule(f"{name}_backward", 2))
    # Integer-valued: no derivative, but a vmap rule (tangents and return_indices call it under vmap).
    torch.library.register_vmap(f"classicnets_ext::{name}_indices", _pool_backward_rule(f"{name}_indices", 1),
                                lib=_LIB)
