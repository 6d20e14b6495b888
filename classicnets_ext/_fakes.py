"""The fake (meta) kernels of the ops in torch.ops.classicnets_ext, one per op, shared by its C++ kernels and
its Triton twin: the op's argument checks (``_checks``, the kernels' own, so a call the kernels refuse is
refused while torch.compile or torch.export traces it, with the same error), then its outputs' allocation
(``_layouts``, in the layout the kernels write). Each takes the op's exact arguments. The Triton launchers
check their arguments and allocate their outputs with them too, so a launcher and its fake cannot disagree.
"""
from __future__ import annotations

from . import _checks, _layouts


def lrn(input, size, alpha=1e-4, beta=0.75, k=1.0):
    _checks.lrn(input, size, alpha, beta, k)
    return _layouts.lrn_output_like(input)


def lrn_backward(grad_output, input, size, alpha, beta, k):
    _checks.lrn_backward(grad_output, input, size, alpha, beta, k)
    return _layouts.lrn_output_like(input)


def max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax):
    _checks.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
    return _layouts.max_pool2d_outputs_like(input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax)


def max_pool2d_backward(grad_output, argmax, input_size, kernel_size, stride, padding, dilation):
    _checks.max_pool2d_argmax("max_pool2d_backward", grad_output, argmax, input_size, kernel_size, stride, padding,
                              dilation)
    return _layouts.max_pool2d_grad_input_like(grad_output, argmax, input_size, kernel_size, stride, padding,
                                               dilation)


def max_pool2d_indices(argmax, input_size, kernel_size, stride, padding, dilation):
    _checks.max_pool2d_argmax("max_pool2d_indices", None, argmax, input_size, kernel_size, stride, padding, dilation)
    return _layouts.max_pool2d_indices_like(argmax, input_size, kernel_size, stride, padding, dilation)


def max_pool2d_lrn(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu, save_for_backward):
    _checks.max_pool2d_lrn(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k)
    return _layouts.max_pool2d_lrn_outputs_like(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k,
                                                relu, save_for_backward)


def max_pool2d_lrn_backward(grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size, alpha, beta,
                            k, relu):
    _checks.max_pool2d_lrn_backward(grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size,
                                    alpha, beta, k)
    return _layouts.max_pool2d_lrn_grad_input_like(grad_output, pooled, argmax, input_size, kernel_size, stride,
                                                   padding, size, alpha, beta, k, relu)


def inception(input, weight_1x1, bias_1x1, weight_3x3, bias_3x3, weight_5x5, bias_5x5, weight_pool, bias_pool,
              ch1x1):
    _checks.inception(input, weight_1x1, bias_1x1, weight_3x3, bias_3x3, weight_5x5, bias_5x5, weight_pool,
                      bias_pool, ch1x1)
    return _layouts.inception_outputs_like(input, weight_1x1, weight_3x3, weight_5x5, weight_pool, ch1x1)


def linear(input, weight, bias=None):
    _checks.linear(input, weight, bias)
    return input.new_empty((input.shape[0], weight.shape[0]))


def linear_grad_input(grad_output, weight):
    _checks.linear_grad_input(grad_output, weight)
    return grad_output.new_empty((grad_output.shape[0], weight.shape[1]))


def linear_grad_weight(grad_output, input):
    _checks.linear_grad_weight(grad_output, input)
    return grad_output.new_empty((grad_output.shape[1], input.shape[1]))

