"""Property-based fuzzing (hypothesis) of the three ops' CPU kernels against torch's composite in float64:
values, argmax indices and gradients, with shapes, strides, layouts, dtypes and parameters drawn across their
valid range -- edges included (size > C, kernel = input, padding = kernel / 2, ceil_mode windows that start in
the padding, 3-D unbatched inputs, non-dense strides). One pooling example in ten draws a window of over 256
taps, whose argmax is int32 instead of one byte. The linear op and its backward's two products likewise:
any rows, depths around the vector widths and the register blocks, strided operands, fp32, bf16 and fp16.

CI runs CNX_FUZZ_EXAMPLES (default 200) examples per op; `make fuzz` runs 2,000. A failure prints the
shrunk example: reproduce it with the `@example` hypothesis shows.
"""
import os

import pytest
import torch
import torch.nn.functional as F

import classicnets_ext
from classicnets_ext import ops

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif("cpu" not in classicnets_ext.available_backends(), reason="_C not built")

EXAMPLES = int(os.environ.get("CNX_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (atol, rtol) of one rounding to the dtype after fp32 (fp64) accumulation; backward a little wider.
TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 2e-5), torch.float16: (4e-3, 4e-3),
       torch.bfloat16: (3e-2, 3e-2)}


@st.composite
def tensors(draw, min_hw=1, max_hw=9):
    """An input of 3 or 4 dims in one of four layouts (dense, channels-last, sliced, transposed), any dtype."""
    unbatched = draw(st.booleans())
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    h, w = draw(st.integers(min_hw, max_hw)), draw(st.integers(min_hw, max_hw))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["dense", "channels_last", "sliced", "transposed"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if layout == "sliced":
        x = torch.randn(n, 2 * c, h, 2 * w, generator=g, dtype=torch.float64)[:, ::2, :, ::2]
    else:
        x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # ties: values on a coarse grid repeat inside windows
        x = (x * 2).round() / 2
    x = x.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    return x[0] if unbatched else x


@st.composite
def pool_params(draw, h, w, dilation=True, wide=False):
    """kernel, stride, padding, dilation, ceil_mode valid for an h x w input (padding <= kernel / 2, a
    non-empty output), often at the edges: kernel = input, padding = kernel / 2, ceil windows in the padding.
    ``wide``: a window of over 256 taps (h, w >= 17), undilated."""
    if wide:
        kh = draw(st.integers(16, h))
        kw = draw(st.integers(256 // kh + 1, w))
    else:
        kh, kw = draw(st.integers(1, min(h, 5))), draw(st.integers(1, min(w, 5)))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation and not wide else (1, 1)
    ceil = draw(st.booleans())
    for size, k, s, p, d in ((h, kh, sh, ph, dh), (w, kw, sw, pw, dw)):
        if size + 2 * p - d * (k - 1) - 1 < 0:  # the dilated window does not fit: no output
            hypothesis.assume(False)
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil


def pooled_input(data, dilation=True):
    """An input and pooling parameters for it; one draw in ten a window of over 256 taps."""
    wide = data.draw(st.integers(0, 9)) == 0
    x = data.draw(tensors(min_hw=17, max_hw=20) if wide else tensors())
    return x, data.draw(pool_params(x.shape[-2], x.shape[-1], dilation, wide))


def _grads(y, x, y64, x64, seed):
    g = torch.randn(y64.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, g.to(y.dtype))
    (dx64,) = torch.autograd.grad(y64, x64, g)
    return dx, dx64


@FUZZ
@given(data=st.data())
def test_fuzz_max_pool2d(data):
    x, (kernel, stride, padding, dilation, ceil) = pooled_input(data)
    x = x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    with classicnets_ext.use_backend("cpu"):
        y, idx = ops.max_pool2d(x, kernel, stride, padding, dilation, ceil, return_indices=True)
    y64, idx64 = F.max_pool2d(x64, kernel, stride, padding, dilation, ceil, return_indices=True)
    torch.testing.assert_close(y.double(), y64.to(x.dtype).double(), rtol=0, atol=0)  # a max is exact
    assert torch.equal(idx, idx64)
    with torch.no_grad(), classicnets_ext.use_backend("cpu"):  # the inference scan (no argmax) is another
        y_inference = ops.max_pool2d(x, kernel, stride, padding, dilation, ceil)
    torch.testing.assert_close(y_inference.double(), y64.to(x.dtype).double(), rtol=0, atol=0)
    dx, dx64 = _grads(y, x, y64, x64, 1)
    torch.testing.assert_close(dx.double(), dx64, atol=TOL[x.dtype][0] * 4, rtol=TOL[x.dtype][1] * 4)


@FUZZ
@given(data=st.data())
def test_fuzz_local_response_norm(data):
    x = data.draw(tensors())
    size = data.draw(st.integers(1, 20))  # often more than C
    alpha = data.draw(st.sampled_from([1e-4, 1e-2, 0.5, 2.0]))
    beta = data.draw(st.sampled_from([0.0, 0.5, 0.75, 1.0, 1.5]))
    k = data.draw(st.sampled_from([1.0, 2.0, 0.5]))
    x = x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    with classicnets_ext.use_backend("cpu"):
        y = ops.local_response_norm(x, size, alpha, beta, k)
    y64 = F.local_response_norm(x64, size, alpha, beta, k)  # torch's: a 3-D input is (N, C, L)
    atol, rtol = TOL[x.dtype]
    torch.testing.assert_close(y.double(), y64, atol=atol, rtol=rtol)
    dx, dx64 = _grads(y, x, y64, x64, 1)
    torch.testing.assert_close(dx.double(), dx64, atol=atol * 2, rtol=rtol * 2)


@FUZZ
@given(data=st.data())
def test_fuzz_max_pool2d_lrn(data):
    x, (kernel, stride, padding, _, ceil) = pooled_input(data, dilation=False)
    size = data.draw(st.integers(1, 9))
    alpha = data.draw(st.sampled_from([1e-4, 1e-2, 0.5, 2.0]))
    beta = data.draw(st.sampled_from([0.0, 0.5, 0.75, 1.0, 1.5]))
    k = data.draw(st.sampled_from([1.0, 2.0, 0.5]))
    relu = data.draw(st.booleans())
    x = x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    with classicnets_ext.use_backend("cpu"):
        y = ops.max_pool2d_lrn(x, kernel, stride, padding, ceil, size, alpha, beta, k, relu=relu)
    p64 = F.max_pool2d(F.relu(x64) if relu else x64, kernel, stride, padding, ceil_mode=ceil)
    # the fused op rounds the pooled values to the dtype, as the composite does between its two ops
    p64 = p64.detach().to(x.dtype).double() + (p64 - p64.detach())
    y64 = F.local_response_norm(p64 if p64.dim() == 4 else p64.unsqueeze(0), size, alpha, beta, k)
    y64 = y64 if p64.dim() == 4 else y64.squeeze(0)
    atol, rtol = TOL[x.dtype]
    torch.testing.assert_close(y.double(), y64, atol=atol, rtol=rtol)
    with torch.no_grad(), classicnets_ext.use_backend("cpu"):  # inference pools into a scratch tile instead
        y_inference = ops.max_pool2d_lrn(x, kernel, stride, padding, ceil, size, alpha, beta, k, relu=relu)
    torch.testing.assert_close(y_inference.double(), y64, atol=atol, rtol=rtol)
    dx, dx64 = _grads(y, x, y64, x64, 2)
    torch.testing.assert_close(dx.double(), dx64, atol=atol * 4, rtol=rtol * 4)


def _matrix(g, rows, cols, dtype, layout):
    """A (rows, cols) fp64 matrix rounded to dtype, dense, transposed in memory, or a slice of a wider one."""
    if layout == "sliced":
        m = torch.randn(rows, 2 * cols, generator=g, dtype=torch.float64)[:, ::2]
    else:
        m = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    m = m.to(dtype)
    return m.t().contiguous().t() if layout == "transposed" else m


@FUZZ
@given(data=st.data())
def test_fuzz_linear(data):
    """The raw ops (ops.linear sends layers this small to F.linear): each result the fp64 product of the
    operands as given, rounded once to their dtype after fp32 sums."""
    rows = data.draw(st.integers(1, 20))
    # depths at and around the vector widths (8, 16) and a few that need a partial last vector
    k = data.draw(st.one_of(st.integers(1, 70), st.sampled_from([127, 128, 129, 255, 256, 257, 600])))
    n = data.draw(st.integers(1, 40))  # output features around the 3/4/6/12-row register blocks and items
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    layouts = st.sampled_from(["dense", "transposed", "sliced"])
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x = _matrix(g, rows, k, dtype, data.draw(layouts))
    w = _matrix(g, n, k, dtype, data.draw(layouts)) / k ** 0.5
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) if data.draw(st.booleans()) else None
    dy = _matrix(g, rows, n, dtype, data.draw(layouts))
    rtol = TOL[torch.float32][1] if dtype == torch.float32 else torch.finfo(dtype).eps / 2
    atol = 1e-4 if dtype != torch.float32 else TOL[torch.float32][0]
    op = torch.ops.classicnets_ext
    y = op.linear(x, w, b)
    assert y.dtype == dtype and y.shape == (rows, n)
    y64 = F.linear(x.double(), w.double(), None if b is None else b.double())
    torch.testing.assert_close(y.double(), y64, atol=atol, rtol=rtol)
    torch.testing.assert_close(op.linear_grad_input(dy, w).double(), dy.double() @ w.double(), atol=atol, rtol=rtol)
    if dtype == torch.float32:  # the weight's gradient is fp32 only (bf16/fp16 take at::mm)
        torch.testing.assert_close(op.linear_grad_weight(dy, x).double(), dy.double().t() @ x.double(),
                                   atol=atol, rtol=rtol)
