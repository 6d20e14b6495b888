"""Fused ReLU -> max-pool -> LRN: every backend against the torch composite
``F.local_response_norm(F.max_pool2d(F.relu(x) if relu else x, ...), ...)``, forward and backward.

The sweep runs in float64, where the fused kernels and the composite differ only by rounding (the pooled
values are exact, the LRN sums are ordered alike), so tolerances are tight; the other dtypes compare
against the composite computed in that dtype. Inputs are drawn from {-2, ..., 2} (ties everywhere, and ReLU
zeroes whole windows) or randn; gradients are small integers. The Triton interpreter is slow, so shapes
stay tiny.
"""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from torch._C._dynamo.guards import assert_size_stride
from torch.utils._python_dispatch import TorchDispatchMode

import classicnets_ext
from classicnets_ext import _layouts, ops, reference
from _helpers import assert_aot_grads_match_eager, assert_compile_keeps_op, backend_params, grad_like, make_input
from _helpers import assert_half_precision_matches_float
from _helpers import assert_runs_with_cpu_capability, assert_same_as_torch, integer_inputs, ran_isolated
from _helpers import assert_same_layout, scatter_through_argmax, torch_threads
from conftest import HAS_CUDA, backend_device, requires_cuda

BACKEND_PARAMS = backend_params("max_pool2d_lrn", "csrc/pool_lrn/")
OUR_BACKENDS = [p for p in BACKEND_PARAMS if p.values[0] != "reference"]
OPS = {"cpu": ("max_pool2d_lrn", "max_pool2d_lrn_backward"),
       "cuda": ("max_pool2d_lrn", "max_pool2d_lrn_backward"),
       "triton": ("max_pool2d_lrn_triton", "max_pool2d_lrn_triton_backward")}


def _ops(backend):
    return [getattr(torch.ops.classicnets_ext, name) for name in OPS[backend]]


def composite(x, k, s=None, p=0, ceil_mode=False, size=5, alpha=1e-4, beta=0.75, kk=1.0, relu=False):
    """The torch composite the fused op replaces (4-D; a 3-D input is one sample)."""
    x4 = x.unsqueeze(0) if x.dim() == 3 else x
    y = F.local_response_norm(F.max_pool2d(F.relu(x4) if relu else x4, k, s, p, ceil_mode=ceil_mode),
                              size, alpha, beta, kk)
    return y.squeeze(0) if x.dim() == 3 else y


def check_against_composite(backend, x, k, s=None, p=0, ceil_mode=False, size=5, alpha=1e-4, beta=0.75, kk=1.0,
                            relu=False, tol=None, torch_k_p=None, torch_device=None):
    """Forward and gradient of the fused op against the float64 composite (which pools with ``torch_k_p``'s
    (kernel_size, padding) instead where given: an equivalent pooling, see test_maxpool's
    test_windows_far_wider_than_the_input), run on ``torch_device`` where given (default: x's)."""
    x = x.detach().requires_grad_()
    with classicnets_ext.use_backend(backend):
        y = ops.max_pool2d_lrn(x, k, s, p, ceil_mode, size, alpha, beta, kk, relu=relu)
    device = torch_device or x.device
    x64 = x.detach().to(device, torch.float64).requires_grad_()
    tk, tp = torch_k_p or (k, p)
    y64 = composite(x64, tk, s, tp, ceil_mode, size, alpha, beta, kk, relu)
    assert y.dtype == x.dtype and y.device == x.device and y.shape == y64.shape
    # torch's layouts, from the composite on x as it is (the values' reference x64 is a dense copy)
    x_torch = x.detach().to(device).requires_grad_()
    y_torch = composite(x_torch, tk, s, tp, ceil_mode, size, alpha, beta, kk, relu)
    assert_same_layout(y, y_torch)
    atol, rtol = tol or (1e-12, 1e-12)
    torch.testing.assert_close(y.to(device, torch.float64), y64, atol=atol, rtol=rtol, equal_nan=True)
    g = grad_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx64,) = torch.autograd.grad(y64, x64, g.to(device, torch.float64))
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert_same_layout(dx, torch.autograd.grad(y_torch, x_torch, g.to(device))[0])
    torch.testing.assert_close(dx.to(device, torch.float64), dx64, atol=atol * 10, rtol=rtol * 10, equal_nan=True)


# ----------------------------------------------------------------------------------- the parameter sweep

def _sweep(count=48, seed=0):
    """Random configurations whose union covers every kernel, stride, padding, ceil_mode, ReLU and LRN size
    value listed, with sizes past the direct-sum limit (16) and channel counts below and above the window."""
    rng = random.Random(seed)
    configs = []
    sizes = [1, 2, 3, 4, 5, 7, 17]
    while len(configs) < count:
        kh, kw = rng.choice([1, 2, 3, 4]), rng.choice([1, 2, 3, 4])
        if rng.random() < 0.5:
            kw = kh
        stride = rng.choice([None, 1, 2, 3])
        sh, sw = (kh, kw) if stride is None else (stride, stride)
        ph, pw = rng.randint(0, kh // 2), rng.randint(0, kw // 2)
        ceil_mode = rng.random() < 0.5
        H, W = rng.randint(kh, 9), rng.randint(kw, 9)
        C = rng.choice([1, 2, 3, 6, 11, 20])
        size = sizes[len(configs) % len(sizes)]
        relu = len(configs) % 2 == 0
        kind = rng.choice(["ties", "ties", "randn", "nan"])
        layout = rng.choice(["contiguous", "channels_last", "sliced", "sliced_channels_last"])
        k = (kh, kw) if kh != kw else kh
        s = None if stride is None else stride
        configs.append(dict(shape=(2, C, H, W), k=k, s=s, p=(ph, pw), ceil_mode=ceil_mode, size=size, relu=relu,
                            kind=kind, layout=layout))
    return configs


SWEEP = _sweep()


def test_sweep_covers_every_parameter_value():
    ks = {c["k"] if isinstance(c["k"], int) else c["k"][0] for c in SWEEP}
    assert ks == {1, 2, 3, 4}
    assert {c["s"] for c in SWEEP} == {None, 1, 2, 3}
    assert {c["size"] for c in SWEEP} == {1, 2, 3, 4, 5, 7, 17}
    assert {c["relu"] for c in SWEEP} == {True, False}
    assert {c["ceil_mode"] for c in SWEEP} == {True, False}
    assert {c["layout"] for c in SWEEP} == {"contiguous", "channels_last", "sliced", "sliced_channels_last"}
    assert {c["kind"] for c in SWEEP} == {"ties", "randn", "nan"}
    assert any(c["p"] != (0, 0) for c in SWEEP)


@pytest.mark.parametrize("config", SWEEP, ids=lambda c: "k{k}-s{s}-p{p}-c{ceil_mode}-n{size}-r{relu}-{kind}-{layout}".format(**c))
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_sweep_matches_composite(backend, config):
    c = config
    x = make_input(c["shape"], c["layout"], torch.float64, backend_device(backend), c["kind"])
    check_against_composite(backend, x, c["k"], c["s"], c["p"], c["ceil_mode"], c["size"], 2e-2, 0.75, 1.5,
                            c["relu"])


@pytest.mark.parametrize("config", SWEEP[::3], ids=lambda c: "k{k}-s{s}-p{p}-c{ceil_mode}-n{size}-r{relu}-{kind}-{layout}".format(**c))
def test_separate_path_matches_composite(config, monkeypatch):
    """What "auto" runs on CUDA (AUTO_CUDA: "separate"): our max-pool, then ReLU on the pooled tensor, then
    our LRN -- forced here onto the CPU ops. ReLU after the pool is exact (it commutes with max, NaN stays NaN)
    and so is its gradient: the ties ReLU would make are windows whose gradient is 0 either way."""
    resolve, pool, pooled = ops._resolve, ops.max_pool2d, []
    monkeypatch.setattr(ops, "_resolve", lambda op, t: "separate" if op == "max_pool2d_lrn" else resolve(op, t))
    # (the one-call C++ entry serves only devices whose calls resolve to our fused kernel: cpp_devices; on CUDA,
    # where auto runs the pair, it declines)
    monkeypatch.setattr(ops, "_max_pool2d_lrn_eager", None)
    monkeypatch.setattr(ops, "max_pool2d", lambda *args: pooled.append(args[0].shape) or pool(*args))
    c = config
    for shape in (c["shape"], c["shape"][1:]):  # batched, and one (C, H, W) sample
        x = make_input(shape, c["layout"] if len(shape) == 4 else "contiguous", torch.float64, "cpu", c["kind"])
        check_against_composite("auto", x, c["k"], c["s"], c["p"], c["ceil_mode"], c["size"], 2e-2, 0.75, 1.5,
                                c["relu"])
        assert pooled.pop() == x.shape and not pooled  # the pair ran, not the fused op


@requires_cuda
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_auto_on_cuda_runs_the_measured_choice(grad):
    """AUTO_CUDA runs the fused op as its two ops, with a gradient recorded or not (the pair beat the fused
    kernels in every mode on lease 4's H100): the answer is the composite's either way, and the profile shows
    that no fused op ran."""
    assert classicnets_ext._backend.AUTO_CUDA["max_pool2d_lrn"] == "separate"
    for layout in ("contiguous", "channels_last"):
        x = make_input((2, 16, 13, 13), layout, torch.float32, "cuda", "randn")
        with torch.profiler.profile() as prof:
            if grad:  # forward and gradient against the composite
                check_against_composite("auto", x, 3, 2, 0, True, 5, 1e-2, 0.75, 2.0, True, tol=(1e-5, 1e-5))
            else:
                with classicnets_ext.use_backend("auto"):
                    y = ops.max_pool2d_lrn(x, 3, 2, 0, True, 5, 1e-2, 0.75, 2.0, relu=True)
                y64 = composite(x.double(), 3, 2, 0, True, 5, 1e-2, 0.75, 2.0, True)
                torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=1e-5)
        names = {e.name for e in prof.events()}
        fused = any(name.startswith("classicnets_ext::max_pool2d_lrn") for name in names)
        assert not fused and "classicnets_ext::max_pool2d" in names and "classicnets_ext::lrn" in names, sorted(names)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_outputs_are_fresh_tensors_that_take_in_place_ops(backend):
    """As torch's layers, every output is a tensor of its own (``_base`` None), so an in-place op after the layer
    -- an in-place ReLU, a residual ``+=``, one with grad on after a no_grad forward -- works. Our (C, H, W)
    answers were views of the 4-D result, and so was a channels-last output restrided contiguous (one channel,
    a 1x1 map): autograd refused the in-place ReLU."""
    device = backend_device(backend)
    calls = {
        "max_pool2d": lambda x: ops.max_pool2d(x, 3, 2),
        "max_pool2d indices": lambda x: ops.max_pool2d(x, 3, 2, return_indices=True)[0],
        "max_pool2d_lrn": lambda x: ops.max_pool2d_lrn(x, 3, 2, size=3),
        "max_pool2d_lrn relu": lambda x: ops.max_pool2d_lrn(x, 3, 2, size=3, relu=True),
    }
    inputs = {"3-D": torch.randn(6, 7, 7), "channels-last 1x1 map": torch.randn(2, 6, 3, 3),
              "channels-last one channel": torch.randn(2, 1, 7, 7), "4-D": torch.randn(2, 6, 7, 7)}
    for (name, call), (kind, x) in itertools.product(calls.items(), inputs.items()):
        x = x.to(device)
        if kind.startswith("channels-last"):
            x = x.contiguous(memory_format=torch.channels_last)
        leaf = x.clone().requires_grad_()
        with classicnets_ext.use_backend(backend):
            y = call(leaf)
            assert y._base is None, (name, kind)
            F.relu(y, inplace=True).sum().backward()
            with torch.no_grad():
                z = call(x)
            weight = torch.ones((), device=device, requires_grad=True)
            z.mul_(weight)  # (a view made under no_grad would refuse this with grad on)
        ref = x.clone().requires_grad_()  # the gradient through the in-place ReLU, against torch's layers'
        with classicnets_ext.use_backend("reference"):
            F.relu(call(ref), inplace=True).sum().backward()
        torch.testing.assert_close(leaf.grad, ref.grad, msg=f"{name}, {kind}")


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_a_pooled_negative_zero_keeps_its_sign(backend):
    """A 1x1 pool (no ties) passes -0.0 through, and LRN keeps it: the fused op answers the composite's signs.
    The Triton kernel picked channel c from its ring by a float sum with zeros, which turned -0.0 into +0.0."""
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([-0.0, 1.0, -0.0, -2.0, -0.0, 3.0], dtype=dtype).view(1, 6, 1, 1)
        x = torch.cat([x, x.flip(1)]).to(backend_device(backend))
        with classicnets_ext.use_backend(backend):
            y = ops.max_pool2d_lrn(x, 1, size=3)
        want = F.local_response_norm(F.max_pool2d(x.cpu(), 1), 3)
        assert torch.equal(torch.signbit(y.cpu()), torch.signbit(want)), (y, want)
        torch.testing.assert_close(y.cpu(), want)


@pytest.mark.parametrize("beta,kk", [(0.75, 2.0), (0.5, 1.0), (1.3, 0.7)])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_lrn_constants(backend, beta, kk):
    """beta = 0.75 takes the rsqrt path, other betas pow; alpha large enough to matter."""
    x = make_input((2, 7, 9, 8), "contiguous", torch.float64, backend_device(backend), "randn")
    check_against_composite(backend, x * 3, 3, 2, 0, False, 5, 0.5, beta, kk, relu=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "3d"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_lrn_windows_wider_than_the_register_ring(backend, layout):
    """min(size, C) past the Triton forward's register ring (64 rows; 128 here): that forward runs the pool and
    LRN kernels apart (a ring that wide took minutes to compile for a GPU, and past 32768 rows could not be
    built). Every backend must give the composite's answer, with and without ReLU, and the backward."""
    device = backend_device(backend)
    shape = (70, 5, 4) if layout == "3d" else (1, 70, 5, 4)
    x = make_input(shape, "contiguous" if layout == "3d" else layout, torch.float64, device, "randn")
    for relu in (False, True):
        check_against_composite(backend, x, 3, 2, 0, False, 66, 0.5, 0.75, 2.0, relu=relu)
    # randn leaves almost no 3x3 window all negative, so the ReLU hardly shows above: shifted down, about a
    # third of the windows are, and their outputs must be ReLU's zeros (a forward that dropped the ReLU on this
    # unfused path answered them negative).
    x = x - 1.5
    check_against_composite(backend, x, 3, 2, 0, False, 66, 0.5, 0.75, 2.0, relu=True)
    with classicnets_ext.use_backend(backend):
        y = ops.max_pool2d_lrn(x, 3, 2, 0, False, 66, 0.5, 0.75, 2.0, relu=True)
    want = composite(x.cpu(), 3, 2, 0, False, 66, 0.5, 0.75, 2.0, relu=True)
    assert (want == 0).any() and (y.cpu() < 0).sum() == 0
    assert torch.equal(y.cpu() == 0, want == 0)


@pytest.mark.parametrize("k,p", [(3, 1), (5, 2)], ids=["3x3-unrolled", "5x5-loop"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_window_whose_in_bounds_taps_are_all_minus_inf(backend, k, p):
    """test_maxpool's test_window_without_an_in_bounds_tap for the fused op (which has no dilation): a padded
    window whose in-bounds taps are all -inf pools -inf, and torch's argmax is then its first in-bounds tap --
    no tap beats the -inf it starts from -- so the gradient (NaN here: LRN of an infinite value) reaches that
    element and no other. A kernel starting its argmax at another tap (one in the padding, say) sends it nowhere
    or elsewhere. Unrolled (3x3) and looped (5x5) windows; float64 and float32."""
    device = backend_device(backend)
    for dtype in (torch.float64, torch.float32):
        x = make_input((1, 3, 5, 6), "contiguous", dtype, device, "randn")
        s, (H, W) = 2, x.shape[2:]
        last_h, last_w = ((H + 2 * p - k) // s) * s - p, ((W + 2 * p - k) // s) * s - p  # the last windows' starts
        x[0, 1, :k - p, :k - p] = float("-inf")  # window (0, 0)'s in-bounds taps, behind padding on two sides
        x[0, 2, :k - p, last_w:] = float("-inf")  # the top-right window's: padding above and to the right
        x[0, 0, last_h:, :k - p] = float("-inf")  # the bottom-left window's
        check_against_composite(backend, x, k, s, p, False, 3, 1e-2, 0.75, 1.0, relu=False,
                                tol=None if dtype == torch.float64 else (1e-5, 1e-5))
        # where the gradient lands, spelled out: only the first in-bounds tap of each all -inf window
        xr = x.detach().requires_grad_()
        with classicnets_ext.use_backend(backend):
            y = ops.max_pool2d_lrn(xr, k, s, p, False, 3, 1e-2, 0.75, 1.0, relu=False)
        (dx,) = torch.autograd.grad(y, xr, torch.ones_like(y))
        xt = x.detach().cpu().double().requires_grad_()
        y_ref = composite(xt, k, s, p, False, 3, 1e-2, 0.75, 1.0)
        (dx_ref,) = torch.autograd.grad(y_ref, xt, torch.ones_like(y_ref))
        assert torch.isnan(dx_ref).any()
        assert torch.equal(torch.isnan(dx.cpu()), torch.isnan(dx_ref)), (dx, dx_ref)
        torch.testing.assert_close(dx.cpu().double(), dx_ref, atol=1e-5, rtol=1e-5, equal_nan=True)


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="triton backend not available")
def test_triton_64bit_offsets(monkeypatch):
    """The fused kernels' 64-bit offsets (IDX64, past 2^31 - 1 elements: test_maxpool's
    test_triton_needs_int64_at_its_boundary) forced on small inputs: forward (pooled and argmax saved, and the
    inference one) and backward with and without ReLU, both layouts, equal to the 32-bit path's answers."""
    from classicnets_ext.triton_kernels import maxpool as triton_maxpool
    from classicnets_ext.triton_kernels import pool_lrn as triton_pool_lrn

    forward, backward = _ops("triton")
    device = backend_device("triton")

    def run_all():
        results = []
        for layout in ("contiguous", "channels_last"):
            for relu in (False, True):
                x = make_input((2, 7, 9, 8), layout, torch.float32, device, "randn")
                args = ([3, 3], [2, 2], [1, 1], False, 5, 0.5, 0.75, 2.0, relu)
                y, pooled, argmax = forward(x, *args, True)
                y_inference = forward(x, *args, False)[0]
                g = grad_like(y)
                dx = backward(g, pooled, argmax, list(x.shape), [3, 3], [2, 2], [1, 1], 5, 0.5, 0.75, 2.0, relu)
                results.append((y, pooled, argmax, y_inference, dx))
        return results

    narrow = run_all()
    calls = []
    forced = lambda *tensors: calls.append(len(tensors)) or True  # noqa: E731
    monkeypatch.setattr(triton_maxpool, "_needs_int64", forced)
    monkeypatch.setattr(triton_pool_lrn, "_needs_int64", forced)
    wide = run_all()
    assert calls  # the rule was consulted (and forced)
    for a, b in zip(narrow, wide):
        for t32, t64 in zip(a, b):
            assert t32.dtype == t64.dtype and t32.stride() == t64.stride()
            assert torch.equal(t32, t64)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_channels_last_1x1_map_is_answered_channels_last(backend):
    """A channels-last (2, 3, 1, 1) map is contiguous too, but channels-last to torch's strides test: its
    max-pool (here padded to 2x2) answers channels-last, and so do we. (Without the ReLU: torch's relu hands
    such a tensor back with contiguous strides, which its max-pool then follows.)"""
    x = torch.randn(2, 1, 1, 3, dtype=torch.float64, device=backend_device(backend)).permute(0, 3, 1, 2)
    assert x.is_contiguous() and x.stride() == (3, 1, 3, 3)
    check_against_composite(backend, x, 2, 1, 1, False, 3, 1e-2, 0.75, 1.0, relu=False)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_any_size_runs_in_time_and_memory_bounded_by_the_channels(backend, layout):
    """torch takes any LRN size >= 1; the kernels' rings and loops once grew with it (a size of 2^31 allocated
    16 GiB in the channels-last CPU forward; 2^40 overflowed the Triton kernel's int32 constants). From 2C - 1
    up the clipped window covers all C channels: each pooled value is normalised by the sum over all of them,
    weighted alpha / size."""
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, device=backend_device(backend))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for size in (5, 6, 2**31 + 5, 2**40):
        alpha = 1e-4 * size
        xr = x.detach().requires_grad_()
        with classicnets_ext.use_backend(backend):
            y = ops.max_pool2d_lrn(xr, 3, 2, 1, False, size, alpha, 0.75, 1.0, relu=True)
        x64 = x.detach().cpu().requires_grad_()
        p = F.max_pool2d(F.relu(x64), 3, 2, 1)
        ref = p * (1.0 + alpha / size * p.pow(2).sum(1, keepdim=True)).pow(-0.75)
        torch.testing.assert_close(y.cpu(), ref.detach(), atol=1e-12, rtol=1e-12)
        g = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, xr, g)
        torch.testing.assert_close(dx.cpu(), torch.autograd.grad(ref, x64, g.cpu())[0], atol=1e-11, rtol=1e-11)


TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2),
              torch.float64: (1e-12, 1e-12)}


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "sliced_channels_last", "3d"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_dtypes_and_layouts(backend, layout, dtype):
    """Every dtype against the composite computed in that dtype (fp16/bf16 in fp32 then rounded, as our
    reference does on the CPU)."""
    device = backend_device(backend)
    shape = (5, 9, 8) if layout == "3d" else (2, 6, 9, 8)
    x = make_input(shape, "contiguous" if layout == "3d" else layout, dtype, device, "randn").requires_grad_()
    with classicnets_ext.use_backend(backend):
        y = ops.max_pool2d_lrn(x, 3, 2, 1, True, 3, 1e-2, 0.75, 1.0, relu=True)
    xr = x.detach().requires_grad_()
    yr = reference.max_pool2d_lrn(xr, (3, 3), (2, 2), (1, 1), True, 3, 1e-2, 0.75, 1.0, True)
    atol, rtol = TOLERANCES[dtype]
    assert y.dtype == dtype and y.shape == yr.shape
    torch.testing.assert_close(y, yr, atol=atol, rtol=rtol)
    g = grad_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    (dxr,) = torch.autograd.grad(yr, xr, g)
    torch.testing.assert_close(dx, dxr, atol=atol * 4, rtol=rtol * 4)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_tiles_and_blocks(backend):
    """Shapes with several row tiles per sample and column blocks past 256 (the CPU kernels' tiling), and a
    tall input whose backward blocks split the covering pooled rows. The CPU kernels split a sample when its
    pooled values outgrow a tile (the last shape, 408K of them) and to give each of 5 threads an item (the
    others: 3 blocks a sample at batch 2, 5 at batch 1), whatever this machine's thread count."""
    device = backend_device(backend)
    if backend == "triton" and device == "cpu":
        shapes = [(1, 3, 40, 37)]
    else:
        shapes = [(2, 96, 55, 55), (1, 5, 200, 31), (1, 128, 113, 112)]
    with torch_threads(5):
        for shape in shapes:
            for layout in ("contiguous", "channels_last"):
                x = make_input(shape, layout, torch.float64, device, "randn")
                check_against_composite(backend, x, 3, 2, 1, True, 5, 1e-2, 0.75, 2.0, relu=True)


def test_cpu_answers_do_not_depend_on_the_thread_count():
    """The CPU kernels' tiling follows the thread count (at least one item a thread: pool_lrn_cpu_kernel.h's
    split_rows), so 1, 2, 3 and 7 threads cut these samples into 1, 2, 3 and 7 row blocks (uneven ones
    included); every element is still computed the same way, so the output, the saved pooled values and
    argmax, and the gradient are the same bits."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    forward, backward = _ops("cpu")
    cases = [((1, 96, 55, 55), "contiguous", [3, 3], [2, 2], [0, 0], False, True),
             ((1, 96, 55, 55), "channels_last", [3, 3], [2, 2], [0, 0], False, True),
             ((1, 64, 112, 112), "contiguous", [3, 3], [2, 2], [1, 1], True, False)]
    for shape, layout, k, s, p, ceil, relu in cases:
        x = make_input(shape, layout, torch.float32, "cpu", "randn")
        answers = []
        for threads in (1, 2, 3, 7):
            with torch_threads(threads):
                inference = forward(x, k, s, p, ceil, 5, 1e-4, 0.75, 2.0, relu, False)[0]
                y, pooled, argmax = forward(x, k, s, p, ceil, 5, 1e-4, 0.75, 2.0, relu, True)
                g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
                g = g.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else g
                dx = backward(g, pooled, argmax, list(shape), k, s, p, 5, 1e-4, 0.75, 2.0, relu)
            answers.append((inference, y, pooled, argmax, dx))
        for threads, answer in zip((2, 3, 7), answers[1:]):
            for name, want, got in zip(("inference", "y", "pooled", "argmax", "dx"), answers[0], answer):
                assert torch.equal(want, got), (shape, layout, threads, name)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_infinities(backend):
    x = make_input((1, 20, 7, 7), "contiguous", torch.float64, backend_device(backend), "randn")
    x[0, 3, 2, 2] = float("inf")
    x[0, 11, 4, 4] = float("-inf")
    check_against_composite(backend, x, 3, 2, 0, False, 17, 1e-2, 0.75, 1.0, relu=False)
    check_against_composite(backend, x, 3, 2, 0, False, 5, 1e-2, 0.75, 1.0, relu=True)


# ------------------------------------------------------------------------------------ what gets saved

class _RecordCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_inference_saves_nothing(backend):
    forward, _ = _ops(backend)
    device = backend_device(backend)
    x = make_input((2, 4, 9, 9), device=device)
    y, pooled, argmax = forward(x, [3, 3], [2, 2], [0, 0], False, 5, 1e-4, 0.75, 1.0, True, False)
    assert pooled.numel() == 0 and argmax.numel() == 0 and argmax.dtype == torch.uint8
    y2, pooled, argmax = forward(x, [3, 3], [2, 2], [0, 0], False, 5, 1e-4, 0.75, 1.0, True, True)
    assert torch.equal(y, y2)
    assert argmax.dtype == torch.uint8 and argmax.shape == y.shape
    torch.testing.assert_close(pooled, F.relu(F.max_pool2d(x, 3, 2)))
    with _RecordCalls() as rec, classicnets_ext.use_backend(backend):
        ops.max_pool2d_lrn(x, 3, 2)
        ops.max_pool2d_lrn(x.requires_grad_(), 3, 2)
        with torch.no_grad():
            ops.max_pool2d_lrn(x, 3, 2)
    saves = [args[-1] for func, args in rec.calls if func.__name__.startswith(OPS[backend][0] + ".")]
    assert saves == [False, True, False]


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_backward_is_deterministic(backend):
    device = backend_device(backend)
    for layout in ("contiguous", "channels_last"):
        x = make_input((2, 6, 11, 10), layout, torch.float32, device, "randn").requires_grad_()
        with classicnets_ext.use_backend(backend):
            y = ops.max_pool2d_lrn(x, 3, 1, 1, size=3, relu=True)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(device)
        grads = [torch.autograd.grad(y, x, g, retain_graph=True)[0] for _ in range(3)]
        assert all(torch.equal(grads[0], other) for other in grads[1:])


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_backward_of_any_argmax(backend):
    """test_maxpool's case of the same name on the fused backward: the LRN gradient of `pooled` goes through
    whatever argmax the caller passes, an invalid tap or one in the padding adding nothing. On 3 threads the
    CPU kernel cuts this sample's 70 input rows into three backward blocks (pool_lrn_cpu_kernel.h's
    split_rows), whose boundary rows each block must skip; both layouts. Triton, which has no tiles and is
    interpreted here, takes a small input."""
    device = backend_device(backend)
    _, backward = _ops(backend)
    gen = torch.Generator().manual_seed(6)
    N, C, H, W = (1, 6, 9, 7) if backend == "triton" else (1, 64, 70, 127)
    k, s, p = (3, 3), (2, 2), (1, 1)
    OH, OW = (H + 2 - 3) // 2 + 1, (W + 2 - 3) // 2 + 1
    argmax = torch.randint(0, 256, (N, C, OH, OW), generator=gen).to(torch.uint8)
    grad = torch.randint(-3, 4, (N, C, OH, OW), generator=gen).double()
    pooled = torch.randint(-2, 3, (N, C, OH, OW), generator=gen).double().requires_grad_()
    lrn_grad, = torch.autograd.grad(F.local_response_norm(pooled, 3, 1e-1, 0.75, 1.0), pooled, grad)
    expected = scatter_through_argmax(lrn_grad, argmax, (N, C, H, W), k, s, p)
    for layout in ("contiguous", "channels_last"):
        to = (lambda t: t.contiguous(memory_format=torch.channels_last)) if layout == "channels_last" else (lambda t: t)
        with torch_threads(3):
            out = backward(to(grad).to(device), to(pooled.detach()).to(device), to(argmax).to(device), [N, C, H, W],
                           k, s, p, 3, 1e-1, 0.75, 1.0, False)
        torch.testing.assert_close(out.double().cpu(), expected, atol=1e-12, rtol=1e-12, msg=layout)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_backward_without_saved_tensors_raises(backend):
    forward, _ = _ops(backend)
    x = make_input((1, 2, 6, 6), device=backend_device(backend)).requires_grad_()
    y, _, _ = forward(x, [2, 2], [2, 2], [0, 0], False, 5, 1e-4, 0.75, 1.0, False, False)
    with pytest.raises(RuntimeError, match="save_for_backward"):
        y.sum().backward()


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_gradcheck_float64(backend, layout, relu):
    # Distinct values (the max is differentiable there), some negative (ReLU's zeros).
    shape = (1, 4, 5, 6)
    device = backend_device(backend)
    values = torch.randperm(120, generator=torch.Generator().manual_seed(0)).double() / 20 - 2
    x = make_input(shape, layout, torch.float64, device).detach()
    x.copy_(values.view(shape))
    x.requires_grad_()
    fast = device == "cpu" and backend == "triton"
    with classicnets_ext.use_backend(backend):
        assert torch.autograd.gradcheck(lambda t: ops.max_pool2d_lrn(t, 3, 2, 1, False, 3, 0.5, 0.75, 1.0, relu=relu),
                                        (x,), fast_mode=fast)


# ------------------------------------------------------------------------------------- opcheck, compile

def _opcheck_samples(backend):
    device = backend_device(backend)
    samples = [((2, 5, 9, 8), "contiguous", [3, 3], [2, 2], [1, 1], False, 5, True),
               ((2, 6, 7, 9), "channels_last", [3, 2], [2, 1], [1, 0], True, 3, False),
               ((4, 7, 6), "contiguous", [2, 2], [1, 1], [0, 0], True, 5, True),
               ((2, 3, 6, 7), "sliced", [2, 2], [2, 2], [1, 1], False, 2, False)]
    for shape, layout, k, s, p, ceil, size, relu in samples:
        x = make_input(shape, layout, torch.float32, device, kind="randn")
        yield x, (k, s, p, ceil, size, 1e-2, 0.75, 1.0, relu)


def _opcheck(backend, utils=None):
    forward, backward = _ops(backend)
    kw = {} if utils is None else {"test_utils": utils}
    for x, args in _opcheck_samples(backend):
        torch.library.opcheck(forward.default, (x.detach().requires_grad_(), *args, True), **kw)
        torch.library.opcheck(forward.default, (x, *args, False), **kw)
        y, pooled, argmax = forward(x, *args, True)
        g = torch.randn(y.shape, device=y.device)
        k, s, p, _, size, alpha, beta, kk, relu = args
        torch.library.opcheck(backward.default, (g, pooled, argmax, list(x.shape), k, s, p, size, alpha, beta, kk,
                                                 relu), **kw)


@pytest.mark.parametrize("backend", BACKEND_PARAMS[:2])
def test_opcheck_cpp_ops(backend):
    _opcheck(backend)


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="triton backend not available")
def test_opcheck_triton_ops():
    # The interpreter cannot run opcheck's fake-tensor tests (see test_maxpool.py); the fakes are shared with
    # the C++ ops, and test_fake_kernels_match_the_triton_launchers checks them against the launchers.
    _opcheck("triton", None if HAS_CUDA else ("test_schema", "test_autograd_registration"))


def test_fake_kernels_match_the_triton_launchers():
    if "triton" not in classicnets_ext.available_backends():
        pytest.skip("triton backend not available")
    forward, backward = _ops("triton")
    for x, args in _opcheck_samples("triton"):
        for save in (True, False):
            real = forward(x, *args, save)
            fake = _layouts.max_pool2d_lrn_outputs_like(x, *args, save)
            for r, f in zip(real, fake):
                assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())
        y, pooled, argmax = real if save else forward(x, *args, True)
        g = torch.randn(y.shape, device=y.device)
        k, s, p, _, size, alpha, beta, kk, relu = args
        bargs = (g, pooled, argmax, list(x.shape), k, s, p, size, alpha, beta, kk, relu)
        r, f = backward(*bargs), _layouts.max_pool2d_lrn_grad_input_like(*bargs)
        assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.pool_norm = classicnets_ext.nn.MaxPoolLRN(3, stride=2, size=5, k=2.0, relu=True)

    def forward(self, x):
        return self.pool_norm(self.conv(x)).sum(dim=(2, 3))


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_compile_fullgraph_keeps_the_op(backend):
    device = backend_device(backend)
    op = getattr(torch.ops.classicnets_ext, OPS[backend][0])
    assert_compile_keeps_op(_Net().to(device), torch.randn(2, 3, 11, 11, device=device), backend, op)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_compile_aot_autograd_matches_eager(backend, dynamic):
    device = backend_device(backend)
    assert_aot_grads_match_eager(_Net().to(device), torch.randn(2, 3, 11, 11, device=device), backend, dynamic)


# ----------------------------------------------------------------------------------------- the module

@pytest.mark.parametrize("relu", [True, False])
def test_module_equals_the_sequential_it_fuses(relu):
    """Values and gradients, batched and unbatched (a (C, H, W) input takes a path of its own); the input sits
    mostly below 0, so that whole windows are negative and a dropped or extra ReLU shows."""
    fused = classicnets_ext.nn.MaxPoolLRN(3, stride=2, padding=1, ceil_mode=True, size=5, alpha=1e-3, beta=0.75,
                                          k=2.0, relu=relu)
    seq = torch.nn.Sequential(*[torch.nn.ReLU()] * relu, torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                              torch.nn.LocalResponseNorm(5, 1e-3, 0.75, 2.0))
    x = torch.randn(2, 8, 15, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 1.5
    for sample in (x, x[0]):
        leaves = [sample.clone().requires_grad_() for _ in range(2)]
        got, want = (module(leaf) for module, leaf in zip((fused, seq), leaves))
        torch.testing.assert_close(got, want)
        g = torch.randn_like(want)
        torch.testing.assert_close(*(torch.autograd.grad(y, leaf, g)[0] for y, leaf in zip((got, want), leaves)))
    assert f"relu={relu}" in repr(fused) and "kernel_size=3" in repr(fused)
    assert fused.stride == 2 and classicnets_ext.nn.MaxPoolLRN(3).stride == 3
    assert dict(fused.state_dict()) == {}


# ----------------------------------------------------------------------------------------- bad inputs

def _bad_cases(x):
    """(Integer inputs are not errors for torch's composite: see test_integer_input_behaves_as_the_composite.)"""
    return [
        ((x[0, 0], 3), {}, "input"),
        ((x[:, :0], 3), {}, "input"),
        ((x[:1, :1, :2, :2], 3), {}, "input"),
        ((x, 0), {}, "kernel_size"),
        ((x, 3, 0), {}, "stride"),
        ((x, 3, 2, 2), {}, "padding"),
        ((x, 3, 2, -1), {}, "padding"),
        ((x, 3), {"size": 0}, "size"),
        ((x, 3), {"size": 2.5}, "size"),
    ]


def test_non_finite_lrn_settings_give_the_composites_answer():
    """A NaN or infinite alpha, beta or k is a degenerate LRN, not an error: the answer is torch's composite's
    (it was a ValueError, so convert() broke such a model). The kernels refuse such settings
    (test_ops_reject_bad_arguments_without_crashing), so every backend answers with the composite."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for alpha, beta, k in ((float("nan"), 0.75, 1.0), (0.0, float("inf"), 1.0), (1e-2, 0.75, float("nan"))):
        got = ops.max_pool2d_lrn(x, 3, 2, size=3, alpha=alpha, beta=beta, k=k, relu=True)
        torch.testing.assert_close(got, composite(x, 3, 2, 0, False, 3, alpha, beta, k, relu=True), equal_nan=True)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_bad_arguments_raise_naming_the_argument(backend):
    x = torch.randn(2, 3, 6, 6, device=backend_device(backend))
    for args, kwargs, name in _bad_cases(x):
        with classicnets_ext.use_backend(backend), pytest.raises((TypeError, ValueError, RuntimeError),
                                                                  match=f"'{name}'"):
            ops.max_pool2d_lrn(*args, **kwargs)


@pytest.mark.parametrize("channels", [6, 1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "unbatched"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_windows_far_wider_than_the_input_and_strides_past_it(backend, layout, channels):
    """test_maxpool's cases of the same names on the fused op. Its channels-first CPU kernels pool rows in the
    same window-wide scratch, which a 2^31-tap window made gigabytes: such problems run on channels-last
    copies and answer in the input's layout (a contiguous input's gradient came back channels-last). With one
    channel the copy is contiguous as well, and the op called itself on it until the stack overflowed."""
    x = make_input((2, channels, 5, 6), dtype=torch.float64, device=backend_device(backend), kind="randn")
    x = {"contiguous": x, "channels_last": x.to(memory_format=torch.channels_last), "unbatched": x[0]}[layout]
    # torch's references on the CPU: torch 2.11's CUDA channels-last fp64 max-pool (max_pool_forward_nhwc<double>)
    # writes misaligned shared memory for one channel and these windows (compute-sanitizer, H100), and the
    # launch failure took the rest of the worker's GPU tests down with it.
    cpu = {"torch_device": "cpu"}
    check_against_composite(backend, x, (1, 2**31 - 1), 1, (0, 2**30 - 1), size=3, relu=True,
                            torch_k_p=((1, 11), (0, 5)), **cpu)
    check_against_composite(backend, x, (2**31 - 1, 1), 1, (2**30 - 1, 0), True, size=3, torch_k_p=((9, 1), (4, 0)),
                            **cpu)
    check_against_composite(backend, x, 2, 2**31 - 1, size=3, **cpu)
    check_against_composite(backend, x, (2, 3), (10**8, 1), (1, 1), True, size=4, relu=True, **cpu)
    # The raw op's output and saved tensors in the strides of its fake kernel, checked as compiled code checks
    # them (size-1 dimensions' strides aside): the CPU kernels' channels-last detour left pooled and argmax
    # channels-last.
    op = getattr(torch.ops.classicnets_ext, "max_pool2d_lrn_triton" if backend == "triton" else "max_pool2d_lrn")
    args = ((1, 2**31 - 1), (1, 1), (0, 2**30 - 1), False, 3, 1e-4, 0.75, 1.0, True, True)
    for got, want in zip(op(x, *args), _layouts.max_pool2d_lrn_outputs_like(x, *args)):
        assert_size_stride(got, tuple(want.shape), want.stride())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_integer_input_behaves_as_the_composite(device):
    """Non-floating inputs go to torch whatever the backend: the fused op and MaxPoolLRN give what torch's
    relu -> max_pool2d -> local_response_norm gives (int64 on the CPU: float32) or raise what it raises."""
    backends = [None] + [b for b in classicnets_ext.available_backends() if backend_device(b) == device]
    for x in integer_inputs((2, 6, 7, 7), device):
        for relu in (False, True):
            def composite():
                pooled = F.max_pool2d(torch.relu(x) if relu else x, 3, 2, 1)
                return F.local_response_norm(pooled, 3, 1e-2, 0.75, 2.0)
            for backend in backends:
                with classicnets_ext.use_backend(backend or classicnets_ext.get_backend()):
                    assert_same_as_torch(lambda: ops.max_pool2d_lrn(x, 3, 2, 1, False, 3, 1e-2, 0.75, 2.0, relu=relu),
                                         composite)
                    module = classicnets_ext.nn.MaxPoolLRN(3, 2, 1, size=3, alpha=1e-2, k=2.0, relu=relu)
                    assert_same_as_torch(lambda: module(x), composite)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_ops_reject_bad_arguments_without_crashing(backend, request):
    """The ops themselves (not just the Python API) check what they are given."""
    if ran_isolated(request, backend_device(backend)):  # on CUDA in a process of its own
        return
    forward, backward = _ops(backend)
    device = backend_device(backend)
    x = torch.randn(2, 3, 6, 6, device=device)
    good = ([3, 3], [2, 2], [1, 1], False, 5, 1e-4, 0.75, 1.0, False)
    bad_forward = [
        ((x, [3], [2, 2], [1, 1]), "kernel_size"),
        ((x, [3, 3], [0, 2], [1, 1]), "stride"),
        ((x, [3, 3], [2, 2**62], [1, 1]), "stride"),  # once a crash in the CPU kernel
        ((x, [3, 3], [2, 2], [2, 1]), "padding"),
        ((x[0, 0], [3, 3], [2, 2], [1, 1]), "input"),
    ]
    for head, name in bad_forward:
        with pytest.raises((RuntimeError, ValueError, TypeError), match=name):
            forward(*head, *good[3:], True)
    # The op's own checks reject every dtype the kernels do not take, on either device, before any device code
    # runs (on CUDA an integer input once crashed the process).
    for dtype in (torch.int64, torch.int32, torch.uint8, torch.bool, torch.float8_e4m3fn):
        for save in (False, True):
            with pytest.raises(TypeError, match="input"):
                forward(x.to(dtype), *good, save)
    with pytest.raises((RuntimeError, ValueError), match="size"):
        forward(x, *good[:4], 0, *good[5:], True)
    for i, name in ((5, "alpha"), (6, "beta"), (7, "k")):  # the kernels' power would give NaN: ops.py answers these
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"`{name}` must be finite"):
                forward(x, *good[:i], value, *good[i + 1:], True)
    y, pooled, argmax = forward(x, *good, True)
    g = torch.randn_like(y)
    rest = (list(x.shape), *good[:3], *good[4:])
    with pytest.raises((RuntimeError, ValueError), match="pooled"):
        backward(g, pooled[:, :, :1], argmax, *rest)
    with pytest.raises((RuntimeError, TypeError), match="pooled"):
        backward(g, pooled.double(), argmax, *rest)
    with pytest.raises((RuntimeError, TypeError), match="argmax"):
        backward(g, pooled, argmax.int(), *rest)
    with pytest.raises((RuntimeError, ValueError), match="grad_output"):
        backward(g[:, :1], pooled, argmax, *rest)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_backward_reads_pooled_in_any_layout(backend):
    """The raw backward given ``pooled`` as a slice of a channels-last tensor (which the LRN backward answers
    channels-last) or of a contiguous one: the ReLU mask must read pooled where the LRN gradient was written."""
    forward, backward = _ops(backend)
    device = backend_device(backend)
    x = torch.randn(2, 6, 7, 7, generator=torch.Generator().manual_seed(0)).to(device) - 1.0  # many ReLU zeros
    args = ([3, 3], [2, 2], [0, 0], False, 3, 0.5, 0.75, 1.0, True)
    y, pooled, argmax = forward(x, *args, True)
    g = torch.randn_like(y)
    rest = (list(x.shape), *args[:3], *args[4:])
    want = backward(g, pooled, argmax, *rest)
    for big, view in ((torch.empty(2, 8, 3, 3, device=device).contiguous(memory_format=torch.channels_last),
                       lambda t: t[:, 1:7]),
                      (torch.empty(2, 12, 3, 3, device=device), lambda t: t[:, ::2])):
        pooled_view = view(big)
        pooled_view.copy_(pooled)
        torch.testing.assert_close(backward(g, pooled_view, argmax, *rest), want, atol=1e-6, rtol=1e-6)


def test_cpu_matches_composite_on_network_shapes():
    """AlexNet's POOL1/NORM1 (ReLU folded in) and GoogLeNet's stem at batch 1 on the CPU kernels, both
    layouts: tiles of several pooled rows, split evenly (the stem's 56 rows), each pooled in groups of 8
    rows. The training forward and gradient against the float64 composite, and the inference forward,
    which pools into a scratch tile instead of the saved tensor."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    for shape, ceil, relu, kk in (((1, 96, 55, 55), False, True, 2.0), ((1, 64, 112, 112), True, False, 1.0)):
        for layout in ("contiguous", "channels_last"):
            x = make_input(shape, layout, torch.float32, "cpu", "randn")
            check_against_composite("cpu", x, 3, 2, 0, ceil, 5, 1e-4, 0.75, kk, relu, tol=(1e-5, 1e-5))
            with torch.no_grad(), classicnets_ext.use_backend("cpu"):
                y = ops.max_pool2d_lrn(x, 3, 2, 0, ceil, 5, 1e-4, 0.75, kk, relu=relu)
            y64 = composite(x.double(), 3, 2, 0, ceil, 5, 1e-4, 0.75, kk, relu)
            torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=1e-5)


@requires_cuda
@pytest.mark.parametrize("backend", BACKEND_PARAMS[1:3])
def test_gpu_matches_composite_on_network_shapes(backend):
    """AlexNet's POOL1/NORM1 and GoogLeNet's stem at batch 2, fp32 and fp16, on the GPU."""
    for shape, ceil, relu, kk in (((2, 96, 55, 55), False, True, 2.0), ((2, 64, 112, 112), True, False, 1.0)):
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
            for layout in ("contiguous", "channels_last"):
                x = make_input(shape, layout, dtype, "cuda", "randn")
                check_against_composite(backend, x, 3, 2, 0, ceil, 5, 1e-4, 0.75, kk, relu, tol=(tol, tol))


def test_baseline_cpu_build_gives_the_same_answers():
    """The baseline (non-AVX) build of the max-pool and fused pool->LRN kernels, forced through
    ATEN_CPU_CAPABILITY=default: values, argmax indices and gradients against torch, both layouts."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    code = (
        "import torch, torch.nn.functional as F, classicnets_ext\n"
        "from classicnets_ext import _extension, ops\n"
        "assert _extension.build_info()['cpu_capability'] == 'default', _extension.build_info()\n"
        "classicnets_ext.set_backend('cpu')\n"
        "for cl in (False, True):\n"
        "    for k, s, p, ceil in ((3, 2, 0, False), (2, 2, 1, True), (3, 1, 1, False)):\n"
        "        x = torch.randn(2, 19, 9, 11, dtype=torch.float64)\n"
        "        if cl: x = x.contiguous(memory_format=torch.channels_last)\n"
        "        x.requires_grad_()\n"
        "        y, i = ops.max_pool2d(x.float(), k, s, p, ceil_mode=ceil, return_indices=True)\n"
        "        ref, ri = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)\n"
        "        torch.testing.assert_close(y.double(), ref)\n"
        "        assert torch.equal(i, ri)\n"
        "        g = torch.randn_like(ref)\n"
        "        xf = x.detach().float().requires_grad_()\n"
        "        dx, = torch.autograd.grad(ops.max_pool2d(xf, k, s, p, ceil_mode=ceil), xf, g.float())\n"
        "        torch.testing.assert_close(dx.double(), torch.autograd.grad(ref, x, g)[0], atol=1e-5, rtol=1e-5)\n"
        "        for relu in (False, True):\n"
        "            xf = x.detach().float().requires_grad_()\n"
        "            y = ops.max_pool2d_lrn(xf, k, s, p, ceil_mode=ceil, size=5, alpha=0.5, beta=0.75, k=1.0, relu=relu)\n"
        "            xr = F.relu(x) if relu else x\n"
        "            ref = F.local_response_norm(F.max_pool2d(xr, k, s, p, ceil_mode=ceil), 5, 0.5, 0.75, 1.0)\n"
        "            torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)\n"
        "            g = torch.randn_like(ref)\n"
        "            dx, = torch.autograd.grad(y, xf, g.float())\n"
        "            torch.testing.assert_close(dx.double(), torch.autograd.grad(ref, x, g)[0], atol=3e-5, rtol=3e-5)\n"
        "print('ok')\n"
    )
    assert_runs_with_cpu_capability(code)


@requires_cuda
def test_cuda_fused_int32_argmax_windows_over_256_taps():
    """The fused op's int32 argmax (windows over 256 taps) on CUDA: values and gradient against the composite."""
    x = torch.randn(2, 7, 36, 35, device="cuda", dtype=torch.float64, requires_grad=True)
    y = torch.ops.classicnets_ext.max_pool2d_lrn(x, [17, 17], [2, 3], [8, 8], False, 5, 0.5, 0.75, 1.0, True, True)[0]
    ref = F.local_response_norm(F.max_pool2d(F.relu(x), 17, (2, 3), 8), 5, 0.5, 0.75, 1.0)
    torch.testing.assert_close(y, ref)
    with classicnets_ext.use_backend("cuda"):
        out = ops.max_pool2d_lrn(x, 17, (2, 3), 8, size=5, alpha=0.5, beta=0.75, k=1.0, relu=True)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_half_precision_whole_vectors_match_torch_on_every_instruction_set(capability):
    """bf16 and fp16 through the fused op's vector code (the ReLU, its mask in the backward, max-pool's rows and
    gather, LRN's columns), whole vectors converted by the instruction set and partial ones element by element,
    in both layouts: forward and backward against the composite in float, rounded to the dtype. The backward
    keeps the LRN gradient of the pooled values in the dtype (as the composite run in the dtype does), so an input
    that two windows pick sums two rounded values: up to 2 ulps (of the gradient's scale, or of the value) off."""
    assert_half_precision_matches_float(
        capability, [("ops.max_pool2d_lrn(t, 3, 2, 1, size=5, alpha=1e-2, beta=0.75, k=2.0, relu=True)",
                      "F.local_response_norm(F.max_pool2d(torch.relu(t), 3, 2, 1), 5, 1e-2, 0.75, 2.0)")],
        shapes=((2, 37, 13, 35), (1, 64, 9, 20)),
        backward_tol="atol=2 * torch.finfo(dt).eps, rtol=2 * torch.finfo(dt).eps")
