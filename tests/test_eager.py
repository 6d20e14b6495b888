"""The one-call eager entries of the C++ ops (_C.lrn_eager, _C.max_pool2d_eager and _C.max_pool2d_lrn_eager, in
csrc/lrn/lrn_autograd.cpp, csrc/maxpool/maxpool_autograd.cpp and csrc/pool_lrn/pool_lrn_autograd.cpp; what they
share: csrc/common/eager.h): a plain eager call runs in one C++ call with a C++ autograd node, and gives exactly
what the Python path gives; every other call is declined to the Python path, which raises torch's errors.
"""
import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import classicnets_ext
from classicnets_ext import ops, reference
from _helpers import count_eager
from conftest import HAS_CUDA, backend_device

needs_cpp = pytest.mark.skipif(not classicnets_ext._extension.available(), reason="needs the compiled extension")

CPP_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_CUDA or "cuda" not in classicnets_ext.available_backends(), reason="needs a GPU and _C built with CUDA"))]


def _input(layout, device, seed=0, shape=(2, 4, 5, 6)):
    """Distinct values 4/numel apart in [-2, 2) (max-pool is differentiable there; some negative for ReLU)."""
    n = torch.Size(shape).numel()
    x = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)).double() * (4 / n) - 2).view(shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device)


def torch_max_pool2d_lrn(input, kernel_size, stride=None, padding=0, ceil_mode=False, size=5, alpha=1e-4, beta=0.75,
                         k=1.0, *, relu=False):
    """torch's composite with ops.max_pool2d_lrn's signature."""
    return reference.max_pool2d_lrn(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu)


def case_input(shape, layout, dtype, device):
    """A case's input, and the view the op is given: "sliced" is a strided view (neither layout: the ops copy it)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, (lambda t: t[:, ::2, 1:]) if layout == "sliced" else (lambda t: t)


def eager_python_and_torch(monkeypatch, op, ours, theirs, node, x, view, args, kwargs):
    """(inference, output, input gradient) by the eager entry of ``op``, which must serve both calls and attach
    the C++ node ``node``; by the Python path, which must give exactly the same values and strides; and by torch
    (``theirs``): returns the entry's and torch's."""
    calls = count_eager(monkeypatch)
    results = {}
    for path in ("eager", "python", "torch"):
        fn = theirs if path == "torch" else ours
        if path == "python":
            monkeypatch.setattr(ops, f"_{op}_eager", None)
        xg = x.clone().requires_grad_()
        with torch.no_grad():
            inference = fn(view(xg), *args, **kwargs)  # (no node: grad mode is off)
        assert inference.grad_fn is None
        y = fn(view(xg), *args, **kwargs)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(x.device, x.dtype))
        results[path] = (inference, y, xg.grad)
        if path == "eager":
            assert calls[f"{op}_eager"] == 2 and node in y.grad_fn.name()
    for eager, python in zip(results["eager"], results["python"]):
        torch.testing.assert_close(eager, python, rtol=0, atol=0)
        assert eager.stride() == python.stride()
    return results["eager"], results["torch"]


def assert_declined_with_the_python_paths_errors(monkeypatch, calls, op, fn, invalid):
    """Each invalid call raises the Python path's error (type and message) with the eager entry of ``op`` on as
    with it off, and the entry serves none of them."""
    attr, served = f"_{op}_eager", calls[f"{op}_eager"]
    entry = getattr(ops, attr)
    for args, kwargs in invalid:
        errors = []
        for present in (entry, None):
            monkeypatch.setattr(ops, attr, present)
            with pytest.raises(Exception) as error:
                fn(*args, **kwargs)
            errors.append((type(error.value), str(error.value)))
        monkeypatch.setattr(ops, attr, entry)
        assert errors[0] == errors[1], (args, kwargs)
    assert calls[f"{op}_eager"] == served


# ---- local_response_norm ----

# (shape, layout, dtype, args, kwargs): 3-, 4- and 5-D inputs, both layouts, int settings, N = 0, a strided view.
LRN_CASES = [
    ((2, 8, 5, 6), "contiguous", torch.float32, (5,), {"alpha": 1e-2, "k": 2}),
    ((2, 8, 5, 6), "channels_last", torch.float32, (3, 0.5, 0.6), {}),
    ((3, 7, 11), "contiguous", torch.float64, (4,), {"alpha": 0.5, "beta": 1}),
    ((2, 5, 3, 4, 2), "contiguous", torch.bfloat16, (3,), {"alpha": 0.1}),
    ((0, 3, 5), "contiguous", torch.float16, (2,), {}),
    ((2, 16, 5, 6), "sliced", torch.float32, (7,), {"alpha": 0.1}),
]


@needs_cpp
@pytest.mark.parametrize("device", CPP_DEVICES)
@pytest.mark.parametrize("shape, layout, dtype, args, kwargs", LRN_CASES)
def test_eager_lrn_runs_in_one_cpp_call_as_the_python_path(monkeypatch, device, shape, layout, dtype, args, kwargs):
    """The plain eager call -- inference and training -- is served by _C.lrn_eager, whose autograd node is C++;
    it gives exactly what the Python path (the op through its autograd.Function) gives: values, gradients and
    their strides. And torch's results."""
    monkeypatch.setattr(classicnets_ext._backend, "_default", device)
    x, view = case_input(shape, layout, dtype, device)
    ours, theirs = eager_python_and_torch(monkeypatch, "lrn", ops.local_response_norm, reference.local_response_norm,
                                          "LRNFunction", x, view, args, kwargs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=2e-2 if dtype == torch.bfloat16 else None,
                                   atol=2e-2 if dtype == torch.bfloat16 else None)
        assert a.is_contiguous(memory_format=torch.channels_last) == b.is_contiguous(memory_format=torch.channels_last)


@needs_cpp
def test_eager_lrn_double_backward_and_saved_hooks():
    """The C++ node saves the input, so a gradient penalty reaches x through the backward op's derivative:
    torch's second-order gradient, gradgradcheck. Saved-tensor hooks see the input."""
    x = _input("channels_last", "cpu")
    args = (3, 0.5, 0.75, 2.0)
    grads = []
    for fn in (ops.local_response_norm, F.local_response_norm):
        xg = x.clone().requires_grad_()
        g, = torch.autograd.grad(fn(xg, *args).pow(2).sum(), xg, create_graph=True)
        grads.append((g, torch.autograd.grad(g.pow(2).sum(), xg)[0]))
    torch.testing.assert_close(grads[0], grads[1])
    assert torch.autograd.gradgradcheck(lambda t: ops.local_response_norm(t, *args), (x.clone().requires_grad_(),))

    packed = []

    def pack(t):
        packed.append(t.dtype)
        return t

    xg = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ops.local_response_norm(xg, *args)
    y.sum().backward()
    assert "LRNFunction" in y.grad_fn.name() and packed == [torch.float64]
    ref = x.clone().requires_grad_()
    F.local_response_norm(ref, *args).sum().backward()
    torch.testing.assert_close(xg.grad, ref.grad)


@needs_cpp
def test_eager_lrn_declines_every_call_the_python_path_must_serve(monkeypatch):
    """_C.lrn_eager answers None -- and the Python path serves the call, with the same result or error -- for
    arguments not in their plain form, settings that are tensors or not finite, invalid arguments, dtypes our
    kernels do not take, a reduced-precision input under autocast (torch answers fp32), a __torch_function__
    mode, a jit trace, a forward-mode tangent, a torch.func transform, another backend."""
    calls = count_eager(monkeypatch)
    x = torch.randn(1, 4, 6, 6)
    entry = ops._lrn_eager

    def same(call, composite=F.local_response_norm):
        results = []
        for served in (entry, None):
            monkeypatch.setattr(ops, "_lrn_eager", served)
            results.append(call(ops.local_response_norm))
        torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
        torch.testing.assert_close(results[0], call(composite), rtol=1e-4, atol=1e-5)

    same(lambda fn: fn(x, np.int64(3)))
    same(lambda fn: fn(x, 3, alpha=np.float64(0.5)))  # a float subclass
    same(lambda fn: fn(x, 3, alpha=torch.tensor(0.5)))  # a constant tensor setting
    same(lambda fn: fn(x, 3, k=2 ** 60))  # an int a double cannot hold exactly
    same(lambda fn: fn(x, 3, beta=float("inf")))  # not finite: torch's composite
    same(lambda fn: fn((x * 10).long(), 3))  # not a dtype of our kernels: torch's composite
    with torch.autocast("cpu", dtype=torch.bfloat16):  # torch's LRN answers fp32 there
        same(lambda fn: fn(x.bfloat16(), 3))
        assert ops.local_response_norm(x.bfloat16(), 3).dtype == torch.float32
    with torch.device("cpu"):  # a __torch_function__ mode
        same(lambda fn: fn(x, 3))
    for backend in ("reference", "triton"):
        if backend in classicnets_ext.available_backends() and backend_device(backend) == "cpu":
            with classicnets_ext.use_backend(backend):
                same(lambda fn: fn(x, 3))
    traced = torch.jit.trace(lambda t: ops.local_response_norm(t, 3), x, check_trace=False)
    assert "classicnets_ext::lrn" in str(traced.graph)
    tangent = torch.randn_like(x)
    with fwAD.dual_level():
        ours = fwAD.unpack_dual(ops.local_response_norm(fwAD.make_dual(x, tangent), 3)).tangent
        theirs = fwAD.unpack_dual(F.local_response_norm(fwAD.make_dual(x, tangent), 3)).tangent
    torch.testing.assert_close(ours, theirs)
    w = torch.randn(1, 4, 6, 6)  # a transform over w; the normalised x is a plain tensor it captured
    same(lambda fn: torch.func.grad(lambda v: (fn(x, 3) * v).square().sum())(w))
    assert calls["lrn_eager"] == 0

    invalid = [((x[0, 0], 3), {}), ((x, 0), {}), ((x, 2 ** 63), {}), ((x, 3), {"alpha": "1"}), ((x, 3.0), {})]
    assert_declined_with_the_python_paths_errors(monkeypatch, calls, "lrn", ops.local_response_norm, invalid)
    assert calls["lrn_eager"] == 0


# ---- max_pool2d ----

# (shape, layout, dtype, args, kwargs): the argument forms the entry takes, both layouts, unbatched, a 1x1
# output of a channels-last input (the gradient's layout), N = 0.
EAGER_CASES = [
    ((2, 8, 9, 9), "contiguous", torch.float32, (3, 2), {}),
    ((2, 8, 9, 9), "channels_last", torch.float32, ((3, 3), [2, 2], 1), {}),
    ((8, 7, 6), "contiguous", torch.float64, (2,), {"stride": None, "padding": 1, "dilation": 2, "ceil_mode": True}),
    ((1, 6, 4, 4), "channels_last", torch.bfloat16, (4,), {}),
    ((0, 3, 5, 5), "contiguous", torch.float16, (2, (1, 2)), {}),
    ((2, 16, 9, 9), "sliced", torch.float32, (3,), {"stride": 2, "padding": (0, 1)}),
]


@needs_cpp
@pytest.mark.parametrize("device", CPP_DEVICES)
@pytest.mark.parametrize("shape, layout, dtype, args, kwargs", EAGER_CASES)
def test_eager_max_pool2d_runs_in_one_cpp_call_as_the_python_path(monkeypatch, device, shape, layout, dtype, args,
                                                                  kwargs):
    """The plain eager call -- inference and training -- is served by _C.max_pool2d_eager, whose autograd node
    is C++; it gives exactly what the Python path (the op through its autograd.Function) gives: values,
    gradients and their strides. And torch's results."""
    x, view = case_input(shape, layout, dtype, device)
    ours, theirs = eager_python_and_torch(monkeypatch, "max_pool2d", ops.max_pool2d, F.max_pool2d, "MaxPool2dFunction",
                                          x, view, args, kwargs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, **({} if i == 2 else {"rtol": 0, "atol": 0}))  # (gradients: summed)
        assert a.stride() == b.stride()


@needs_cpp
def test_eager_max_pool2d_double_backward_saved_hooks_and_anomaly_mode():
    """The C++ node's backward is itself differentiable (create_graph dispatches the backward op, whose
    derivative _autograd registers): a gradient penalty gives torch's second-order gradient. Saved-tensor hooks
    see its argmax, and anomaly mode works through it."""
    x = _input("channels_last", "cpu")
    grads = []
    for pool in (ops.max_pool2d, F.max_pool2d):
        xg = x.clone().requires_grad_()
        g, = torch.autograd.grad(pool(xg, 2).pow(2).sum(), xg, create_graph=True)
        grads.append((g, torch.autograd.grad(g.pow(2).sum(), xg)[0]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert torch.autograd.gradgradcheck(lambda t: ops.max_pool2d(t, 3, 2, 1), (x.clone().requires_grad_(),))

    packed = []

    def pack(t):
        packed.append(t.dtype)
        return t

    xg = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autograd.detect_anomaly():
        y = ops.max_pool2d(xg, 3, 2)
        y.sum().backward()
    assert "MaxPool2dFunction" in y.grad_fn.name() and packed == [torch.uint8]
    ref = x.clone().requires_grad_()
    F.max_pool2d(ref, 3, 2).sum().backward()
    torch.testing.assert_close(xg.grad, ref.grad, rtol=0, atol=0)


@needs_cpp
def test_eager_max_pool2d_declines_every_call_the_python_path_must_serve(monkeypatch):
    """_C.max_pool2d_eager answers None -- and the Python path serves the call -- for arguments not in their
    plain form, invalid ones (torch's errors, as before), dtypes our kernels do not take, return_indices, a
    __torch_function__ mode, a jit trace, a forward-mode tangent, a torch.func transform, another backend."""
    calls = count_eager(monkeypatch)
    x = torch.randn(1, 4, 6, 6)

    def same(call):
        torch.testing.assert_close(call(ops.max_pool2d), call(F.max_pool2d), rtol=0, atol=0)

    for kernel in (np.int64(2), (2,), torch.tensor(2)):
        same(lambda pool: pool(x, kernel))
    same(lambda pool: pool(x, 2, stride=()))
    same(lambda pool: pool(x.long(), 2))
    same(lambda pool: pool(x, 2, return_indices=True)[1])
    with torch.device("cpu"):  # a __torch_function__ mode
        same(lambda pool: pool(x, 2))
    for backend in ("reference", "triton"):
        if backend in classicnets_ext.available_backends() and backend_device(backend) == "cpu":
            with classicnets_ext.use_backend(backend):
                same(lambda pool: pool(x, 2))
    traced = torch.jit.trace(lambda t: ops.max_pool2d(t, 2), x, check_trace=False)  # (its check runs eagerly)
    assert "classicnets_ext::max_pool2d" in str(traced.graph)
    tangent = torch.randn_like(x)
    with fwAD.dual_level():
        ours = fwAD.unpack_dual(ops.max_pool2d(fwAD.make_dual(x, tangent), 2)).tangent
        theirs = fwAD.unpack_dual(F.max_pool2d(fwAD.make_dual(x, tangent), 2)).tangent
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    w = torch.randn(1, 4, 3, 3)  # a transform over w; the pooled x is a plain tensor it captured
    same(lambda pool: torch.func.grad(lambda v: (pool(x, 2) * v).square().sum())(w))
    assert calls["max_pool2d_eager"] == 0

    invalid = [((x, 0), {}), ((x, 3), {"padding": 2}), ((x, 7), {}), ((x[None], 2), {}), ((x, 2), {"ceil_mode": 0}),
               ((x, 2), {"dilation": -1}), ((x, 2**31), {}), ((x.new_empty(1, 0, 6, 6), 2), {})]
    assert_declined_with_the_python_paths_errors(monkeypatch, calls, "max_pool2d", ops.max_pool2d, invalid)
    assert calls["max_pool2d_eager"] == 0


# ---- max_pool2d_lrn ----

# (shape, layout, dtype, args, kwargs): the argument forms the entry takes (an int k among them), both layouts,
# unbatched (one sample to the LRN), a 1x1 output of a channels-last input (the gradient's layout), N = 0, a
# strided view (copied), with and without the ReLU.
FUSED_CASES = [
    ((2, 8, 9, 9), "contiguous", torch.float32, (3, 2), {"size": 5, "alpha": 1e-2, "k": 2, "relu": True}),
    ((2, 8, 9, 9), "channels_last", torch.float32, ((3, 3), [2, 2], 1), {"size": 3, "alpha": 0.5, "beta": 0.6}),
    ((8, 7, 6), "contiguous", torch.float64, (2,),
     {"stride": None, "padding": 1, "ceil_mode": True, "size": 4, "alpha": 0.5, "relu": True}),
    ((1, 6, 4, 4), "channels_last", torch.bfloat16, (4,), {"size": 3, "alpha": 0.1}),
    ((0, 3, 5, 5), "contiguous", torch.float16, (2, (1, 2)), {}),
    ((2, 16, 9, 9), "sliced", torch.float32, (3,), {"stride": 2, "padding": (0, 1), "size": 7, "alpha": 0.1,
                                                    "relu": True}),
]


@needs_cpp
@pytest.mark.parametrize("device", CPP_DEVICES)
@pytest.mark.parametrize("shape, layout, dtype, args, kwargs", FUSED_CASES)
def test_eager_max_pool2d_lrn_runs_in_one_cpp_call_as_the_python_path(monkeypatch, device, shape, layout, dtype, args,
                                                                      kwargs):
    """The plain eager call -- inference and training -- is served by _C.max_pool2d_lrn_eager, whose autograd node
    is C++; it gives exactly what the Python path (the op through its autograd.Function) gives: values,
    gradients and their strides. And torch's composite's results."""
    monkeypatch.setattr(classicnets_ext._backend, "_default", device)  # (auto runs CUDA calls as the two ops)
    x, view = case_input(shape, layout, dtype, device)
    ours, theirs = eager_python_and_torch(monkeypatch, "max_pool2d_lrn", ops.max_pool2d_lrn, torch_max_pool2d_lrn,
                                          "MaxPool2dLRNFunction", x, view, args, kwargs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=2e-2 if dtype == torch.bfloat16 else None,
                                   atol=2e-2 if dtype == torch.bfloat16 else None)
        assert a.stride() == b.stride()


@needs_cpp
@pytest.mark.parametrize("layout, relu", [("contiguous", True), ("channels_last", False)])
def test_eager_max_pool2d_lrn_double_backward_saved_hooks_and_anomaly_mode(layout, relu):
    """The C++ node returns the pooled values as a differentiable output and sends a gradient reaching them
    through LRN's backward and the gather: a gradient penalty gives torch's second-order gradient, also with
    respect to a convolution before and after (the issue's conv -> pool -> conv model); gradgradcheck passes.
    Saved-tensor hooks see the pooled values and the argmax, and anomaly mode works through the node."""
    x = _input(layout, "cpu", shape=(2, 6, 7, 7))
    args = (3, 2, 1, False, 3, 0.5, 0.75, 2.0)
    grads = []
    for fn in (ops.max_pool2d_lrn, torch_max_pool2d_lrn):
        xg = x.clone().requires_grad_()
        g, = torch.autograd.grad(fn(xg, *args, relu=relu).pow(2).sum(), xg, create_graph=True)
        grads.append((g, torch.autograd.grad(g.pow(2).sum(), xg)[0]))
    torch.testing.assert_close(grads[0], grads[1])
    assert torch.autograd.gradgradcheck(lambda t: ops.max_pool2d_lrn(t, *args, relu=relu),
                                        (x.clone().requires_grad_(),))

    torch.manual_seed(0)
    w1, w2 = torch.randn(6, 6, 3, 3, dtype=torch.float64), torch.randn(4, 6, 3, 3, dtype=torch.float64)
    penalties = []
    for fn in (ops.max_pool2d_lrn, torch_max_pool2d_lrn):
        xg, a, b = x.clone().requires_grad_(), w1.clone().requires_grad_(), w2.clone().requires_grad_()
        out = F.conv2d(fn(F.conv2d(xg, a, padding=1), *args, relu=relu), b, padding=1)
        g, = torch.autograd.grad(out.square().sum(), xg, create_graph=True)
        penalties.append(torch.autograd.grad(g.square().sum(), (a, b)))
    torch.testing.assert_close(penalties[0], penalties[1])

    packed = []

    def pack(t):
        packed.append(t.dtype)
        return t

    xg = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autograd.detect_anomaly():
        y = ops.max_pool2d_lrn(xg, *args, relu=relu)
        y.sum().backward()
    assert "MaxPool2dLRNFunction" in y.grad_fn.name() and packed == [torch.float64, torch.uint8]
    ref = x.clone().requires_grad_()
    torch_max_pool2d_lrn(ref, *args, relu=relu).sum().backward()
    torch.testing.assert_close(xg.grad, ref.grad)


@needs_cpp
def test_eager_max_pool2d_lrn_declines_every_call_the_python_path_must_serve(monkeypatch):
    """_C.max_pool2d_lrn_eager answers None -- and the Python path serves the call, with the same result or error
    -- for arguments not in their plain form, settings that are tensors or not finite, invalid arguments, dtypes
    our kernels do not take, a reduced-precision input under autocast (torch answers fp32), a __torch_function__
    mode, a jit trace, a forward-mode tangent, a torch.func transform, another backend."""
    calls = count_eager(monkeypatch)
    x = torch.randn(1, 4, 6, 6)
    entry = ops._max_pool2d_lrn_eager

    def same(call, composite=torch_max_pool2d_lrn):
        results = []
        for served in (entry, None):
            monkeypatch.setattr(ops, "_max_pool2d_lrn_eager", served)
            results.append(call(ops.max_pool2d_lrn))
        torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
        torch.testing.assert_close(results[0], call(composite), rtol=1e-4, atol=1e-5)

    for kernel in (np.int64(2), (2,), torch.tensor(2)):
        same(lambda fn: fn(x, kernel, size=3))
    same(lambda fn: fn(x, 2, stride=(), size=3))
    same(lambda fn: fn(x, 2, size=np.int64(3)))
    same(lambda fn: fn(x, 2, size=3, alpha=np.float64(0.5)))  # a float subclass
    same(lambda fn: fn(x, 2, size=3, alpha=torch.tensor(0.5)))  # a constant tensor setting
    same(lambda fn: fn(x, 2, size=3, k=2 ** 60))  # an int a double cannot hold exactly
    same(lambda fn: fn(x, 2, size=3, beta=float("inf")))  # not finite: torch's composite
    same(lambda fn: fn(x, 2, size=3, relu=1))
    same(lambda fn: fn((x * 10).long(), 2, size=3))  # not a dtype of our kernels: torch's composite
    with torch.autocast("cpu", dtype=torch.bfloat16):  # torch's LRN answers fp32 there (reference's: the input's)
        same(lambda fn: fn(x.bfloat16(), 2, size=3),
             lambda t, *a, size: F.local_response_norm(F.max_pool2d(t, *a), size))
        assert ops.max_pool2d_lrn(x.bfloat16(), 2, size=3).dtype == torch.float32
    with torch.device("cpu"):  # a __torch_function__ mode
        same(lambda fn: fn(x, 2, size=3))
    for backend in ("reference", "triton"):
        if backend in classicnets_ext.available_backends() and backend_device(backend) == "cpu":
            with classicnets_ext.use_backend(backend):
                same(lambda fn: fn(x, 2, size=3))
    traced = torch.jit.trace(lambda t: ops.max_pool2d_lrn(t, 2, size=3), x, check_trace=False)
    assert "classicnets_ext::max_pool2d_lrn" in str(traced.graph)
    tangent = torch.randn_like(x)
    with fwAD.dual_level():
        ours = fwAD.unpack_dual(ops.max_pool2d_lrn(fwAD.make_dual(x, tangent), 2, size=3, relu=True)).tangent
        theirs = fwAD.unpack_dual(torch_max_pool2d_lrn(fwAD.make_dual(x, tangent), 2, size=3, relu=True)).tangent
    torch.testing.assert_close(ours, theirs)
    w = torch.randn(1, 4, 3, 3)  # a transform over w; the pooled x is a plain tensor it captured
    same(lambda fn: torch.func.grad(lambda v: (fn(x, 2, size=3) * v).square().sum())(w))
    assert calls["max_pool2d_lrn_eager"] == 0

    invalid = [((x, 0), {}), ((x, 3), {"padding": 2}), ((x, 7), {}), ((x[None], 2), {}), ((x, 2), {"ceil_mode": 0}),
               ((x, 2), {"size": 0}), ((x, 2), {"size": 2 ** 63}), ((x, 2), {"alpha": "1"}), ((x, 2**31), {}),
               ((x.new_empty(1, 0, 6, 6), 2), {})]
    assert_declined_with_the_python_paths_errors(monkeypatch, calls, "max_pool2d_lrn", ops.max_pool2d_lrn, invalid)
    assert calls["max_pool2d_lrn_eager"] == 0


# ---- both ----

@pytest.mark.parametrize("op", ["lrn", "max_pool2d", "max_pool2d_lrn"])
def test_cpp_devices_follows_the_backend_setting(op):
    """Which devices' calls of ``op`` its C++ eager entry may serve, per backend: what resolve() answers (under
    auto, CUDA calls of the fused op run as its two ops: AUTO_CUDA)."""
    expected = {"reference": 0, "triton": 0, "cpu": 1, "cuda": 2}
    for backend in classicnets_ext.available_backends():
        with classicnets_ext.use_backend(backend):
            mask = classicnets_ext._backend.cpp_devices(op)
            if backend == "auto":
                cuda = ("cuda" in classicnets_ext.available_backends()
                        and classicnets_ext._backend.AUTO_CUDA[op] == "cuda")
                assert mask == classicnets_ext._extension.has_op(op) | 2 * cuda
            else:
                assert mask == expected[backend]
            x = torch.randn(1, 2, 4, 4)
            if mask & 1:
                assert classicnets_ext._backend.resolve(op, x) == "cpu"
            else:
                assert classicnets_ext._backend.resolve(op, x) != "cpu"
