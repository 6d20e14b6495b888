"""The functional API: torch's signatures, torch's argument rules, our kernels.

Each function validates its arguments the way the torch function it replaces does (raising an exception
that names the bad argument), asks ``_backend.resolve`` which implementation serves the tensor, and calls
one registered op. Autograd, fake (meta) kernels and torch.compile support live with the op registrations
(``_registrations.py``), so every backend differentiates and compiles the same way.

Mixed precision: fp16/bf16 inputs are computed with fp32 accumulation and returned in their own dtype.
Under ``torch.autocast`` the ops run in their input's dtype, as torch's own LRN does (autocast lists
neither): a normalisation gains nothing from a cast, and the kernels already accumulate in fp32.
"""
from __future__ import annotations

import torch

from . import _backend, _extension, reference


def _check_tensor(fn: str, name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}(): argument '{name}' must be a Tensor, not {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{fn}(): argument '{name}' must be a floating-point tensor, got dtype {value.dtype}")


def _check_int(fn: str, name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}(): argument '{name}' must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{fn}(): argument '{name}' must be >= {minimum}, got {value}")


def local_response_norm(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.local_response_norm` (same arguments and results).

    ``y[c] = x[c] / (k + alpha/size * sum(x[c']^2 for c' in [c - size//2, c + (size-1)//2]))^beta`` over
    the channel dimension (dim 1) of an input of shape (N, C, *). Any strides and layout; fp16, bf16, fp32,
    fp64. Forward reads x once and writes y once; backward recomputes the window sums from x.
    """
    _check_tensor("local_response_norm", "input", input)
    if input.dim() < 3:
        raise ValueError(f"local_response_norm(): argument 'input' must have 3 or more dimensions (N, C, *), "
                         f"got {input.dim()}")
    _check_int("local_response_norm", "size", size, 1)
    alpha, beta, k = float(alpha), float(beta), float(k)
    backend = _backend.resolve("lrn", input)
    if backend == "reference":
        return reference.local_response_norm(input, size, alpha, beta, k)
    if backend == "triton":
        return torch.ops.classicnets_ext.lrn_triton(input, size, alpha, beta, k)
    _extension.require("local_response_norm")
    return torch.ops.classicnets_ext.lrn(input, size, alpha, beta, k)
