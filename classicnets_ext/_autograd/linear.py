"""The linear op: F.linear's derivatives as matrix products, the backward's two products on our kernels where
they win, a jvp and a vmap rule."""
from __future__ import annotations

import functools

import torch

from .. import _checks, _extension
from ._core import _batched, _below_autograd, _op, _register, call


def _as_input_dtype(input: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor | None:
    """A float32 weight or bias of a bfloat16 / float16 input, as the op takes it: cast to the input's dtype."""
    return t if t is None or t.dtype == input.dtype else t.to(input.dtype)


def _linear_rule(info, in_dims, input, weight, bias):
    """vmap of ``input @ weight.T + bias`` (the op takes 2-D operands only): a batched matmul, whose result has
    the vmapped dimension first."""
    x_dim, w_dim, b_dim = in_dims
    weight, bias = _as_input_dtype(input, weight), _as_input_dtype(input, bias)
    out = torch.matmul(input if x_dim is None else input.movedim(x_dim, 0),
                       (weight if w_dim is None else weight.movedim(w_dim, 0)).transpose(-1, -2))
    if bias is not None:
        out = out + (bias if b_dim is None else bias.movedim(b_dim, 0).unsqueeze(-2))
    return out, 0


@functools.cache  # asked at import by ops.linear's row limits and by the backward's: answered once
def mkl_on_amd() -> bool:
    """Whether torch's fp32 matrix products here are MKL's on an AMD CPU, whose code paths for it are slow: on the
    2-core AMD EPYC (Zen 5) MKL multiplies AlexNet's 9216->4096 layer at batch 256 at ~200 GFLOP/s, and our
    kernels, register-blocked FMAs, outrun it at every batch measured (1 to 256 rows; ops.linear and below)."""
    return _extension.build_info().get("cpu_vendor") == "amd" and torch.backends.mkl.is_available()


def cpu_build() -> str:
    """Our CPU kernels' instruction set as the row limits below tell them apart: ``"avx512"`` on full-width
    512-bit units (Zen 5, Intel), ``"avx512-half"`` where each 512-bit op runs as two 256-bit halves (Zen 4:
    as many FLOPs a cycle as AVX2), ``"avx2"``, ``"default"``."""
    build = _extension.build_info()
    isa = build.get("cpu_capability", "default")
    return "avx512-half" if isa == "avx512" and not build.get("cpu_avx512_full_width", True) else isa


# fp32 rows (forward, grad_input, grad_weight) up to which our kernels run where torch's products are MKL's on an
# AMD CPU, by cpu_build(); elsewhere 8, one read of the weight from DRAM (on Intel, MKL's own products gain FLOPs per
# byte as the batch grows: the forward 0.75x at 32 rows on a Xeon). Cold operands, 2 threads, one process, against
# MKL's column-major product / at::mm, AlexNet's FC6 / FC7 / FC8 and VGG's FC6:
# - Zen 5, AVX-512: forward 1.2-1.7x at 128-256 rows; grad_input 2.7-3.0x / 1.6-2.0x / 1.0-1.3x at 16 / 64 / 256,
#   grad_weight 1.1-1.9x / 1.1-1.7x / 1.2-1.4x.
# - Zen 4, AVX-512 at half width: forward 1.00-1.17x at 128-256; grad_input (12-row register blocks) 1.56-2.39x at
#   16, 1.06-1.71x at 32, 0.98-1.38x at 48 and 0.90-1.25x at 64; grad_weight 1.05-1.44x at 64, 0.89-1.01x at 128,
#   0.65-0.86x at 256.
# - avx2 (our AVX2 build, which MKL's AVX2 code meets at equal width): forward 1.12-1.19x at 32 rows, 0.92-1.01x at
#   48 and 0.87-0.99x at 64 on Zen 4 (Zen 5 1.04-1.15x at 64-256); grad_input (6-row blocks, Zen 4) 1.68-2.66x at
#   12, 1.16-2.39x at 16 (one FC7 at 0.91x in four runs), 0.89-1.96x at 20 (Zen 5, 2-row blocks: 1.3-2.1x at 16,
#   0.63-0.73x at 256); grad_weight 1.07-1.11x at 16.
_MKL_AMD_FP32_ROWS = {"avx512": (256, 256, 256), "avx512-half": (256, 32, 64), "avx2": (32, 16, 16)}


@functools.cache
def fp32_kernel_rows() -> tuple[int, int, int]:
    """Up to how many rows fp32 (forward, grad_input, grad_weight) run our kernels here."""
    return _MKL_AMD_FP32_ROWS.get(cpu_build(), (8, 8, 8)) if mkl_on_amd() else (8, 8, 8)


def _grad_kernel_rows() -> tuple[dict, dict]:
    """Up to how many rows the backward's products run our kernels, by dtype: ({dtype: rows} for grad_input, the
    same for grad_weight). fp32 both (fp32_kernel_rows); bf16 and fp16 grad_input only, the weight read in its dtype
    (see linear_grad_weight_cpu for why not grad_weight).

    bf16, cold operands, 2 threads, against at::mm (oneDNN's product): Zen 5, AVX-512 (4-row register blocks)
    1.1-2.8x at 1-8 rows, 1.1-1.3x at 16, 0.42-0.56x at 64-128; avx2 1.1-2.2x at 1-6. Zen 4, AVX-512 at half width
    (12-row blocks): 1.23-3.15x at 1-4 rows, 1.06-2.18x at 6, 0.79-1.31x at 8 (FC8 the low end; VGG's FC6 1.7-1.8x);
    avx2 (6-row blocks) 1.08-2.05x at 6, 0.83-1.72x at 8. So 8 on full-width AVX-512, 6 at half width and on avx2.
    fp16: at::mm has no fast fp16 product on these CPUs (240-410x slower than ours at 16-128 rows): as far as the
    forward's kernel goes, 128."""
    _, fp32_input, fp32_weight = fp32_kernel_rows()
    bf16 = {"avx512-half": 6, "avx2": 6}.get(cpu_build(), 8)
    return ({torch.float32: fp32_input, torch.bfloat16: bf16, torch.float16: 128}, {torch.float32: fp32_weight})


_LINEAR_GRAD_INPUT_ROWS, _LINEAR_GRAD_WEIGHT_ROWS = _grad_kernel_rows()


# Whether _C has the backward's products (register_linear sets it; a _C built before them has none).
_linear_grad_ops = False


def _linear_grad_kernels(grad: torch.Tensor) -> tuple[bool, bool]:
    """Whether Linear's backward takes its products from (linear_grad_input, linear_grad_weight): a plain
    CPU gradient of a few rows (_grad_kernel_rows: fp32 for both; bf16 or fp16 for grad_input), outside
    torch.func transforms and not batched (is_grads_batched): the ops have no batching rule, which the matrix
    products have. Under create_graph the ops' own autograd (matrix products) makes the result differentiable
    again."""
    if not (_linear_grad_ops and grad.dim() == 2 and grad.dtype in _checks.LINEAR_DTYPES and grad.is_cpu
            and not torch._C._are_functorch_transforms_active() and not _batched(grad)):
        return False, False
    rows = grad.shape[0]
    return (rows <= _LINEAR_GRAD_INPUT_ROWS.get(grad.dtype, 0), rows <= _LINEAR_GRAD_WEIGHT_ROWS.get(grad.dtype, 0))


def _register_linear_grad_autograd() -> None:
    """The backward products' derivatives, as matrix products: linear_grad_input(g, w) = g @ w and
    linear_grad_weight(g, x) = g.T @ x."""
    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def grad_input_backward(ctx, gg):
        g, w = ctx.saved_tensors
        return gg.mm(w.t()), g.t().mm(gg)

    def grad_weight_backward(ctx, gg):
        g, x = ctx.saved_tensors
        return x.mm(gg.t()), g.mm(gg)

    torch.library.register_autograd("classicnets_ext::linear_grad_input", grad_input_backward, setup_context=setup)
    torch.library.register_autograd("classicnets_ext::linear_grad_weight", grad_weight_backward, setup_context=setup)


class Linear(torch.autograd.Function):
    """classicnets_ext::linear: F.linear's derivatives, as matrix products that are differentiable again. With
    a float32 weight and bias under a bfloat16 / float16 input, those of ``F.linear(input, weight.to(dtype),
    bias.to(dtype))``: the parameters' gradients computed in the input's dtype, returned in theirs."""

    @staticmethod
    def forward(input, weight, bias):
        return _below_autograd(_op("linear"), input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        # Each operand only where the other's gradient needs it, as torch's mm saves: a frozen weight and an
        # input changed in place after the layer read it, or inference-mode operands with only the bias
        # trained, must not stop the backward.
        need = ctx.needs_input_grad
        ctx.save_for_backward(input if need[1] else None, weight if need[0] else None)
        ctx.save_for_forward(input, weight)
        ctx.has_bias = bias is not None
        ctx.param_dtype = weight.dtype

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        if weight is not None:
            weight = weight.to(grad.dtype)
        ours_input, ours_weight = _linear_grad_kernels(grad)
        grad_input = grad_weight = None
        if need[0]:
            grad_input = call(_op("linear_grad_input"), grad, weight) if ours_input else grad.mm(weight)
        if need[1]:
            grad_weight = call(_op("linear_grad_weight"), grad, input) if ours_weight else grad.t().mm(input)
        grad_bias = grad.sum(0) if ctx.has_bias and need[2] else None
        if ctx.param_dtype != grad.dtype:
            grad_weight, grad_bias = (None if g is None else g.to(ctx.param_dtype) for g in (grad_weight, grad_bias))
        return grad_input, grad_weight, grad_bias

    @staticmethod
    def jvp(ctx, t_input, t_weight, t_bias):
        input, weight = ctx.saved_tensors
        weight, t_weight, t_bias = (_as_input_dtype(input, t) for t in (weight, t_weight, t_bias))
        out = None
        for term in (None if t_input is None else t_input.mm(weight.t()),
                     None if t_weight is None else input.mm(t_weight.t()), t_bias):
            if term is not None:
                out = term if out is None else out + term
        return out if out is not None else input.new_zeros(input.shape[0], weight.shape[0])


def register_linear() -> None:
    """classicnets_ext::linear (CPU only: no Triton twin), and its backward's products where _C has them."""
    global _linear_grad_ops
    _register("linear", Linear, _linear_rule)
    _linear_grad_ops = hasattr(torch.ops.classicnets_ext, "linear_grad_weight")
    if _linear_grad_ops:
        _register_linear_grad_autograd()
