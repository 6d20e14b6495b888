"""Tensors of more than 2^31 elements on the CPU: every offset is 64-bit (slow: ~13 GB of memory, minutes)."""
import pytest
import torch
import torch.nn.functional as F

import classicnets_ext
from classicnets_ext import ops

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif("cpu" not in classicnets_ext.available_backends(), reason="_C not built")]


def test_max_pool2d_past_2_31_elements():
    # 2^31 + 2^19 fp32 elements (8.6 GB): the last rows' offsets and flat indices need 64 bits.
    x = torch.empty(1, 1, 2**16, 2**15 + 16)
    x.view(-1)[::4096].normal_()  # cheap but not constant: the rest is set below, row by row, where checked
    tail = torch.randn(1, 1, 64, x.shape[-1], generator=torch.Generator().manual_seed(0))
    x[..., -64:, :] = tail
    with classicnets_ext.use_backend("cpu"):
        y, idx = ops.max_pool2d(x, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(tail, 2, return_indices=True)
    torch.testing.assert_close(y[..., -32:, :], ref, rtol=0, atol=0)
    # torch's indices are flat within the plane: the tail's rows sit (2^16 - 64) rows further down.
    assert torch.equal(idx[..., -32:, :], ref_idx + (2**16 - 64) * x.shape[-1])
    assert idx.max() >= 2**31


def test_lrn_past_2_31_elements():
    # 2 channels of 2^30 + 2^14 fp16 elements (4.3 GB in, 4.3 GB out): channel 1's offsets pass 2^31.
    x = torch.zeros(1, 2, 2**15, 2**15 + 1, dtype=torch.float16)
    tail = torch.randn(1, 2, 8, x.shape[-1], generator=torch.Generator().manual_seed(0)).half()
    x[..., -8:, :] = tail
    with classicnets_ext.use_backend("cpu"):
        y = ops.local_response_norm(x, 2, 0.5, 0.75, 1.0)
    ref = F.local_response_norm(tail.float(), 2, 0.5, 0.75, 1.0)
    torch.testing.assert_close(y[..., -8:, :].float(), ref, atol=1e-3, rtol=2e-3)


def test_lrn_backward_past_2_31_elements():
    # The backward's blocks of up to 10240 columns (fp16 windows of 2: a 160 KB ring) over the same planes:
    # 13 GB for grad, x and dx.
    x = torch.zeros(1, 2, 2**15, 2**15 + 1, dtype=torch.float16)
    g = torch.zeros_like(x)
    gen = torch.Generator().manual_seed(1)
    x_tail = torch.randn(1, 2, 8, x.shape[-1], generator=gen).half()
    g_tail = torch.randn(1, 2, 8, x.shape[-1], generator=gen).half()
    x[..., -8:, :] = x_tail
    g[..., -8:, :] = g_tail
    dx = torch.ops.classicnets_ext.lrn_backward(g, x, 2, 0.5, 0.75, 1.0)
    del g, x
    xt = x_tail.float().requires_grad_()
    want, = torch.autograd.grad(F.local_response_norm(xt, 2, 0.5, 0.75, 1.0), xt, g_tail.float())
    torch.testing.assert_close(dx[..., -8:, :].float(), want, atol=2e-3, rtol=4e-3)
    assert not dx[..., :-8, :].any()
