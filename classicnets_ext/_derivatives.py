"""The derivatives our kernels do not compute, written in torch operations: LRN's tangent (forward-mode AD),
the derivatives of LRN's backward (double backward, forward-over-reverse), and max pooling's gather.

They serve the autograd functions of ``_autograd``. They run only for second-order and forward-mode
derivatives -- first-order training stays on the kernels -- so correctness and differentiability come
first: every formula is a composite of differentiable torch ops, so it can be differentiated again (third
order), vmapped and traced.

LRN, over the channel dimension (dim 1) of x (N, C, *), with n = size:
    s = k + alpha/n * W(x^2),      y = x * s^-beta
where W sums the window [c - n//2, c + (n-1)//2] (clipped to [0, C)) and its transpose W^T the window
[c - (n-1)//2, c + n//2]. With b = s^(-beta-1) and c2 = 2*alpha*beta/n, the kernels' backward is
    gx = gy * s^-beta - c2 * x * W^T(gy * x * b).
Where c2 is 0 (alpha or beta 0) the scale does not depend on x and every term through it is dropped, as in
torch's own derivatives (its pow backward returns 0 for a zero exponent rather than 0 * inf).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# -------------------------------------------------------------------------------------------- max pool

def gather_windows(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``values`` (*, H, W) read at torch's flat ``h * W + w`` max-pool indices (*, Ho, Wo): max pooling given
    its argmax. Linear in ``values``: it is the pool's tangent map, and the derivative of max-pool's backward
    (a scatter through the same indices) with respect to its grad_output."""
    # reshape, not flatten / unflatten: the legacy BatchedTensor of ``autograd.grad(..., is_grads_batched=True)``
    # has batching rules for the former only.
    lead = values.shape[:-2]
    flat = values.reshape(*lead, values.shape[-2] * values.shape[-1])
    picked = flat.gather(-1, indices.reshape(*indices.shape[:-2], indices.shape[-2] * indices.shape[-1]))
    return picked.reshape(indices.shape)


def relu_mask(grad: torch.Tensor, pooled: torch.Tensor, relu: bool) -> torch.Tensor:
    """The gradient through the fused op's ReLU, given its output ``pooled``: zero where pooled <= 0, as
    torch's threshold_backward (NaN passes)."""
    return grad.masked_fill(pooled <= 0, 0) if relu else grad


# ------------------------------------------------------------------------------------------------- LRN

def _window_sum(v: torch.Tensor, size: int, transpose: bool = False) -> torch.Tensor:
    """W(v) (or W^T(v)) over dim 1 of v (N, C, *): exact sums of the padded windows, no running sum."""
    if v.shape[1] == 0:  # no window to unfold over C + size - 1 < size padded channels
        return v.clone()
    before, after = size // 2, (size - 1) // 2
    if transpose:
        before, after = after, before
    # A window reaches at most C - 1 channels either way (lrn.h's kernel_window): padding by any more only
    # sums zeros, in memory and time that grew with the size (2e7 took 0.5 s and 620 MB on 16 elements).
    before, after = min(before, v.shape[1] - 1), min(after, v.shape[1] - 1)
    flat = v.reshape(v.shape[0], v.shape[1], math.prod(v.shape[2:]))  # (N, C, S); reshape: see gather_windows
    padded = F.pad(flat, (0, 0, before, after))
    return padded.unfold(1, before + after + 1, 1).sum(-1).reshape(v.shape)


def _scale(x: torch.Tensor, size: int, alpha: float, k: float) -> torch.Tensor:
    return k + (alpha / size) * _window_sum(x * x, size)


def lrn_jvp(x: torch.Tensor, t: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """LRN's directional derivative at x along t: t * s^-beta - c2 * x * b * W(x * t). It is also the
    derivative of LRN's backward with respect to its grad_output (the backward is J^T gy, this is J t)."""
    if beta == 0:
        return t.clone()
    s = _scale(x, size, alpha, k)
    c2 = 2 * alpha * beta / size
    if c2 == 0:
        return t * s.pow(-beta)
    return t * s.pow(-beta) - c2 * x * s.pow(-beta - 1) * _window_sum(x * t, size)


def lrn_backward_grad_input(gg: torch.Tensor, grad_output: torch.Tensor, x: torch.Tensor, size: int, alpha: float,
                            beta: float, k: float) -> torch.Tensor:
    """d<gg, lrn_backward(gy, x)>/dx, the second-order term of LRN:

        -c2 * (x W^T(gg gy b) + gg W^T(gy x b) + m gy b) + c2 * (2 alpha / n) (beta + 1) x W^T(m gy x b / s)

    with m = W(gg * x); each term is one path of x through the backward formula (the scale's pow, the two
    explicit x factors, and b)."""
    c2 = 2 * alpha * beta / size
    if c2 == 0:
        return torch.zeros_like(x)
    s = _scale(x, size, alpha, k)
    b = s.pow(-beta - 1)
    m = _window_sum(gg * x, size)
    gy_b = grad_output * b
    first = x * _window_sum(gg * gy_b, size, True) + gg * _window_sum(gy_b * x, size, True) + m * gy_b
    second = x * _window_sum(m * gy_b * x / s, size, True)
    return c2 * ((2 * alpha / size) * (beta + 1) * second - first)


def lrn_backward_jvp(grad_output: torch.Tensor, x: torch.Tensor, t_x: torch.Tensor, size: int, alpha: float,
                     beta: float, k: float) -> torch.Tensor:
    """The tangent of lrn_backward(gy, x) along x's tangent t_x (gy fixed); the part along gy's tangent is
    lrn_backward itself (it is linear in gy)."""
    c2 = 2 * alpha * beta / size
    if c2 == 0:
        return torch.zeros_like(x)
    s = _scale(x, size, alpha, k)
    b = s.pow(-beta - 1)
    ds = (2 * alpha / size) * _window_sum(x * t_x, size)
    db = -(beta + 1) * (b / s) * ds
    return (-beta * grad_output * b * ds - c2 * t_x * _window_sum(grad_output * x * b, size, True)
            - c2 * x * _window_sum(grad_output * (t_x * b + x * db), size, True))
