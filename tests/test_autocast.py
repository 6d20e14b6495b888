"""Under ``torch.autocast`` our ops return the dtype torch's own functions return (ops.py's module docstring):
max-pool keeps its input's dtype; LRN and the fused op return fp32 for fp16/bf16 inputs wherever torch's LRN
composite does (CPU: 4-D and larger; CUDA: always), computed in fp32."""
import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS, HAS_CUDA, backend_device

import classicnets_ext
from classicnets_ext import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def _backends(device):
    return [b for b in BACKENDS if backend_device(b) == device]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_dtypes_are_torchs(device, autocast_dtype):
    torch.manual_seed(0)
    for dtype in DTYPES:
        for shape in ((2, 6, 7), (2, 6, 7, 5), (2, 6, 3, 4, 5)):
            x = torch.randn(shape, device=device).to(dtype)
            with torch.autocast(device, dtype=autocast_dtype):
                want = F.local_response_norm(x, 3)
                want_pool = F.max_pool2d(x, 2) if x.dim() == 4 else None
                want_fused = F.local_response_norm(F.max_pool2d(x, 2), 3) if x.dim() == 4 else None
                for backend in _backends(device):
                    if backend == "triton" and (autocast_dtype == torch.float16 or x.dim() == 5):
                        continue  # (interpreted on the CPU: slow; the dtype rule is the same for every backend)
                    with classicnets_ext.use_backend(backend):
                        label = (backend, dtype, shape)
                        got = ops.local_response_norm(x, 3)
                        assert got.dtype == want.dtype, label
                        # fp32 from the fp16/bf16 values, more exactly than torch (which squares in fp16/bf16)
                        expected = reference.local_response_norm(x.double(), 3).to(got.dtype)
                        torch.testing.assert_close(got, expected, **_tolerance(got.dtype))
                        if x.dim() == 4:
                            assert ops.max_pool2d(x, 2).dtype == want_pool.dtype, label
                            fused = ops.max_pool2d_lrn(x, 2, size=3)
                            assert fused.dtype == want_fused.dtype, label
                            torch.testing.assert_close(fused, ops.local_response_norm(ops.max_pool2d(x, 2), 3))
                            # unbatched: one sample, as its LRN sees it
                            assert ops.max_pool2d_lrn(x[0], 2, size=3).dtype == want_fused.dtype, label


def _tolerance(dtype):
    """fp32's default where autocast answers fp32 (the kernels then compute in fp32, not in the input's
    precision); half precision's where the result is fp16/bf16."""
    return {} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}


def _torch_pool_lrn(x, kernel_size, stride, size, relu):
    return F.local_response_norm(F.max_pool2d(torch.relu(x) if relu else x, kernel_size, stride), size)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_under_autocast_reaches_the_input_in_its_dtype(device):
    """The gradient against torch's layers' under the same autocast, in bf16's precision."""
    def net(x, fused, lrn):
        with torch.autocast(device, dtype=torch.bfloat16):
            return fused(x, 3, 2, size=5, relu=True) + lrn(x, 5).sum()

    x = torch.randn(2, 8, 6, 6, device=device).bfloat16().requires_grad_()
    y = net(x, ops.max_pool2d_lrn, ops.local_response_norm)
    assert y.dtype == torch.float32
    (got,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert got.dtype == torch.bfloat16
    x_ref = x.detach().requires_grad_()
    y_ref = net(x_ref, _torch_pool_lrn, F.local_response_norm)
    (want,) = torch.autograd.grad(y_ref, x_ref, torch.ones_like(y_ref))
    torch.testing.assert_close(y, y_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
