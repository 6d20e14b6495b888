"""2-D max pooling: every backend against F.max_pool2d -- values, indices and gradients exactly.

A max only selects, so outputs must equal torch's bit for bit in every dtype, and the indices must be torch's
(ties keep the first max in (kh, kw) order, NaN propagates with the last NaN winning). Inputs are drawn from
{-2, ..., 2} so ties are everywhere, and gradients are small integers so every sum of them is exact: the
gradient comparisons are exact too. The Triton interpreter is slow, so shapes stay tiny.
"""
import contextlib
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import classicnets_ext
from classicnets_ext import _backend, _extension, _layouts, ops
from _helpers import backend_params, grad_like, make_input, assert_aot_grads_match_eager, assert_compile_keeps_op, assert_inductor_matches_eager
from _helpers import assert_half_precision_matches_float
from _helpers import assert_runs_with_cpu_capability, assert_same_as_torch, integer_inputs, ran_isolated
from _helpers import assert_same_layout, scatter_through_argmax
from conftest import HAS_CUDA, backend_device, requires_cuda

BACKEND_PARAMS = backend_params("max_pool2d", "csrc/maxpool/")
OUR_BACKENDS = [p for p in BACKEND_PARAMS if p.values[0] != "reference"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# The ops of each of our backends: (forward, backward, indices).
OPS = {"cpu": ("max_pool2d", "max_pool2d_backward", "max_pool2d_indices"),
       "triton": ("max_pool2d_triton", "max_pool2d_triton_backward", "max_pool2d_triton_indices")}
OPS["cuda"] = OPS["cpu"]


def _ops(backend):
    return [getattr(torch.ops.classicnets_ext, name) for name in OPS[backend]]


# ------------------------------------------------------------------------------------------ the checks

def run(backend, x, *args, **kwargs):
    with classicnets_ext.use_backend(backend):
        return ops.max_pool2d(x, *args, **kwargs)


def check_against_torch(backend, x, k, s=None, p=0, d=1, ceil_mode=False, check_layout=True, torch_k_p=None):
    """Our forward (with indices) and backward against torch's on the float64 copy of ``x``: all exact.
    ``torch_k_p``: the (kernel_size, padding) torch runs instead, an equivalent pooling (see
    test_windows_far_wider_than_the_input)."""
    x = x.detach().requires_grad_()
    y, idx = run(backend, x, k, s, p, d, ceil_mode, return_indices=True)
    x64 = x.detach().double().contiguous().requires_grad_()
    tk, tp = torch_k_p or (k, p)
    y64, idx64 = F.max_pool2d(x64, tk, s, tp, d, ceil_mode, return_indices=True)
    assert y.dtype == x.dtype and y.device == x.device and y.shape == y64.shape
    assert idx.dtype == torch.int64 and idx.shape == y64.shape
    torch.testing.assert_close(y.double(), y64, atol=0, rtol=0, equal_nan=True)
    assert torch.equal(idx.cpu(), idx64.cpu()), (idx, idx64)
    with torch.no_grad():  # the inference forward, which saves no argmax, is a scan of its own
        y_inference = run(backend, x, k, s, p, d, ceil_mode)
    torch.testing.assert_close(y_inference.double(), y64, atol=0, rtol=0, equal_nan=True)
    if check_layout:  # torch's layouts, from torch's function on x as it is (the values' reference is contiguous)
        x_torch = x.detach().requires_grad_()
        y_torch, idx_torch = F.max_pool2d(x_torch, tk, s, tp, d, ceil_mode, return_indices=True)
        assert_same_layout(y, y_torch)
        assert_same_layout(idx, idx_torch)
    if y.numel() == 0:
        return
    g = grad_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx64,) = torch.autograd.grad(y64, x64, g.double())
    assert dx.dtype == x.dtype and dx.shape == x.shape
    torch.testing.assert_close(dx.double(), dx64, atol=0, rtol=0)
    if check_layout:
        assert_same_layout(dx, torch.autograd.grad(y_torch, x_torch, g)[0])


# ----------------------------------------------------------------------------------- the parameter sweep

KERNELS, STRIDES, DILATIONS = (1, 2, 3, 4, 5), (None, 1, 2, 3, 4), (1, 2, 3)


def _ceil_drops(size, k, s, p, d):
    """Whether ceil_mode's rule drops a last window that would start past the input and left padding."""
    raw = (size + 2 * p - d * (k - 1) - 1 + s - 1) // s + 1
    return (raw - 1) * s >= size + p


def _windows_see_input(size, out, k, s, p, d):
    """Whether every window has a tap inside the input (dilation can step over a tiny input: torch then
    answers -inf with an out-of-range index, and its own backward aborts on that index)."""
    return all(any(0 <= o * s - p + t * d < size for t in range(k)) for o in range(out))


def _sweep(count=60, seed=0):
    """``count`` configurations (kernel, stride, padding, dilation, ceil_mode, (H, W)), drawn deterministically.
    Kernel height, stride and dilation cycle through their values with co-prime periods so every value
    appears with varied partners; the rest is random. Ends with ceil_mode cases whose last window is dropped."""
    rng = random.Random(seed)
    configs = []
    i = 0
    while len(configs) < count - 4:
        kh = KERNELS[i % 5]
        kw = kh if i % 3 == 0 else rng.choice(KERNELS)
        sh = STRIDES[(i // 2) % 5]
        stride = None if sh is None else (sh, sh if i % 4 else rng.choice(STRIDES[1:]))
        dh = DILATIONS[i % 3]
        dilation = (dh, dh if i % 2 else rng.choice(DILATIONS))
        padding = (rng.randint(0, kh // 2), rng.randint(0, kw // 2))
        ceil_mode = (i // 3) % 2 == 1
        i += 1
        st = stride or (kh, kw)
        for _ in range(100):  # input sizes that give at least one output
            hw = (rng.randint(1, 11), rng.randint(1, 11))
            out = _layouts.max_pool2d_output_shape(hw, (kh, kw), st, padding, dilation, ceil_mode)
            if min(out) > 0 and all(_windows_see_input(hw[a], out[a], (kh, kw)[a], st[a], padding[a], dilation[a])
                                    for a in (0, 1)):
                configs.append(((kh, kw), stride, padding, dilation, ceil_mode, hw))
                break
    configs += [((2, 2), (2, 2), (1, 1), (1, 1), True, (5, 5)),
                ((3, 3), (2, 2), (1, 1), (1, 1), True, (4, 7)),
                ((3, 2), (3, 2), (1, 1), (1, 2), True, (5, 6)),
                ((4, 4), (4, 3), (2, 1), (1, 1), True, (6, 9))]
    return configs


SWEEP = _sweep()


def _sweep_id(c):
    (kh, kw), s, p, d, ceil, (h, w) = c
    s = "n" if s is None else f"{s[0]}x{s[1]}"
    return f"k{kh}x{kw}-s{s}-p{p[0]}x{p[1]}-d{d[0]}x{d[1]}-{'ceil' if ceil else 'floor'}-{h}x{w}"


def test_sweep_covers_every_parameter_value():
    assert len(SWEEP) == 60
    assert {c[0][0] for c in SWEEP} == {c[0][1] for c in SWEEP} == set(KERNELS)
    assert any(c[0][0] != c[0][1] for c in SWEEP)
    assert {None if c[1] is None else c[1][0] for c in SWEEP} == set(STRIDES)
    assert {c[1][1] for c in SWEEP if c[1] is not None} == set(STRIDES[1:])
    assert {c[3][0] for c in SWEEP} == {c[3][1] for c in SWEEP} == set(DILATIONS)
    assert {c[2][0] for c in SWEEP} == {0, 1, 2}
    assert {c[4] for c in SWEEP} == {False, True}
    drops = [c for c in SWEEP if c[4] and any(_ceil_drops(c[5][a], c[0][a], (c[1] or c[0])[a], c[2][a], c[3][a])
                                              for a in (0, 1))]
    assert len(drops) >= 4
    assert any(c[5][0] < c[0][0] or c[5][1] < c[0][1] for c in SWEEP)  # inputs smaller than the kernel


@pytest.mark.parametrize("config", SWEEP, ids=[_sweep_id(c) for c in SWEEP])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_sweep_matches_torch(backend, config):
    k, s, p, d, ceil_mode, (h, w) = config
    x = make_input((2, 3, h, w), device=backend_device(backend), seed=h * 16 + w)
    check_against_torch(backend, x, k, s, p, d, ceil_mode)


# ------------------------------------------------------------------------------- dtypes, layouts, shapes

# (id, shape, kernel_size, stride, padding, dilation, ceil_mode, layout, kind)
CASES = [
    ("alexnet-3s2", (2, 4, 13, 13), 3, 2, 0, 1, False, "contiguous", "ties"),
    # Full 3x3 stride-2 windows over rows of 18 outputs (whole and partial vectors; the argmax scan of
    # pool_full_3x3_stride2 in the fp32 training forward): ties, and NaNs where the last NaN must win.
    ("alexnet-3s2-wide", (1, 3, 9, 37), 3, 2, 0, 1, False, "contiguous", "ties"),
    ("alexnet-3s2-nan", (2, 3, 11, 37), 3, 2, 0, 1, False, "contiguous", "nan"),
    ("stem-3s2p1-cl", (2, 5, 12, 11), 3, 2, 1, 1, False, "channels_last", "ties"),
    ("vgg-2s2", (2, 3, 8, 10), 2, None, 0, 1, False, "contiguous", "randn"),
    ("ceil-cl", (2, 3, 9, 10), 3, 2, 1, 1, True, "channels_last", "ties"),
    ("dilated-sliced", (1, 3, 11, 9), (3, 2), (2, 1), (1, 1), (2, 3), False, "sliced", "ties"),
    ("sliced-cl", (2, 5, 9, 8), 3, 2, 1, 1, True, "sliced_channels_last", "ties"),
    ("transposed", (2, 3, 7, 9), 3, 1, 1, 1, True, "transposed", "ties"),
    ("3d", (4, 9, 7), 3, 2, 1, 1, False, "contiguous", "ties"),
    ("3d-transposed", (4, 9, 7), (2, 3), 1, (1, 0), 1, True, "transposed", "ties"),
    ("1x1-output-cl", (2, 6, 3, 3), 3, 3, 0, 1, False, "channels_last", "ties"),
    ("n0", (0, 3, 6, 6), 2, 2, 0, 1, False, "contiguous", "ties"),
    ("nan", (2, 3, 8, 9), 3, 2, 1, 1, False, "contiguous", "nan"),
    ("nan-cl", (2, 4, 8, 9), 3, 1, 1, 1, True, "channels_last", "nan"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_dtypes_and_layouts_match_torch(backend, case, dtype):
    _, shape, k, s, p, d, ceil_mode, layout, kind = case
    x = make_input(shape, layout, dtype, backend_device(backend), kind)
    check_against_torch(backend, x, k, s, p, d, ceil_mode, check_layout=backend != "reference")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_channels_last_1x1_map_is_answered_channels_last(backend):
    """A channels-last (2, 3, 1, 1) map is contiguous too, but channels-last to torch's strides test
    (suggest_memory_format reads size-1 dimensions' strides): torch answers its padded 2x2 pooling
    channels-last, and so do we."""
    x = torch.randn(2, 1, 1, 3, dtype=torch.float64, device=backend_device(backend)).permute(0, 3, 1, 2)
    assert x.is_contiguous() and x.stride() == (3, 1, 3, 3)
    check_against_torch(backend, x, 2, 1, 1)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_large_window_int32_argmax(backend):
    """17 x 16 = 272 taps: the argmax no longer fits a byte."""
    x = make_input((1, 2, 18, 17), device=backend_device(backend), kind="randn")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        check_against_torch(backend, x, (17, 16), 1, (8, 3), 1, False)
    if backend != "reference":
        assert saved[0].dtype == torch.int32


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_a_stride_past_the_input_is_one_window(backend):
    """Any stride up to torch's 2^31 - 1 is valid, and one longer than the padded input leaves one window.
    The CPU kernels sized their scratch rows by stride x output columns: 2^31 - 1 ran out of memory, 2^62 (which
    torch rejects) crashed the process."""
    x = make_input((2, 3, 5, 6), device=backend_device(backend), kind="randn")
    check_against_torch(backend, x, 2, 2**31 - 1)
    check_against_torch(backend, x, (2, 3), (10**8, 1), (1, 1), 1, True)
    check_against_torch(backend, x.to(memory_format=torch.channels_last), 3, (1, 2**31 - 1), 1)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "unbatched"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_windows_far_wider_than_the_input(backend, layout):
    """A kernel up to 2^31 taps long with half of it as padding is valid and pools the whole row. The
    channels-first kernels keep rows as wide as a window (a 2^31-tap one: gigabytes, and the process was killed
    for memory); such problems run through the channels-last kernels, whose scratch does not grow with the
    window. The Triton kernels walk only the taps some window of their block has inside the input (the
    backward: the taps some window can read an element by), not all 2^31.
    torch's own kernel walks them too once it records indices (half a minute a call), so it runs the equivalent
    window of 2 x size - 1 taps padded by size - 1: every window then also covers the whole row (column) and
    reads its elements in the same order, so values, indices and gradients must be the same."""
    x = make_input((2, 3, 5, 6), device=backend_device(backend), kind="randn")
    x = {"contiguous": x, "channels_last": x.to(memory_format=torch.channels_last), "unbatched": x[0]}[layout]
    check_against_torch(backend, x, (1, 2**31 - 1), 1, (0, 2**30 - 1), torch_k_p=((1, 11), (0, 5)))
    check_against_torch(backend, x, (2**31 - 1, 1), 1, (2**30 - 1, 0), 1, True, torch_k_p=((9, 1), (4, 0)))
    check_against_torch(backend, x, (3, 200001), (1, 7), (1, 100000))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_window_without_an_in_bounds_tap(backend):
    """Dilation can step over a tiny input: torch answers -inf, its argmax the first tap past the padding. Its
    backward adds the gradient at that index, outside the plane (into the next channel here); ours drops it, no
    input element having produced the -inf (docs/guide.md, Semantics)."""
    x = torch.randn(1, 2, 1, 1, device=backend_device(backend), requires_grad=True)
    y, idx = run(backend, x, 2, 1, 1, 2, return_indices=True)
    y_ref, idx_ref = F.max_pool2d(x, 2, 1, 1, 2, return_indices=True)
    assert torch.equal(y, y_ref) and torch.equal(idx, idx_ref)
    if backend != "reference":
        (dx,) = torch.autograd.grad(y, x, torch.tensor([1.0, 0.0], device=x.device).view(1, 2, 1, 1))
        assert torch.equal(dx, torch.zeros_like(x))


@pytest.mark.parametrize("backend", OUR_BACKENDS)
@pytest.mark.parametrize("kernel", [(16, 16), (1, 256), (17, 16), (1, 257)], ids=str)
def test_a_max_at_the_last_tap_of_the_widest_windows(backend, kernel):
    """The largest byte argmax, 255 (tap 15, 15 of 16 x 16; tap 255 of 1 x 256), and the first int32 windows
    past it, as torch's indices and gradients: channel 0's maximum is the last tap of the first window, channel
    1's the last tap of the last window (its other windows are all ties at 0: the first tap)."""
    kh, kw = kernel
    x = torch.zeros(1, 2, kh + 1, kw + 1, device=backend_device(backend))
    x[0, 0, kh - 1, kw - 1] = 1.0
    x[0, 1, kh, kw] = 1.0
    check_against_torch(backend, x, list(kernel), 1)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_argmax_dtype_and_inference_path(backend):
    forward, _, _ = _ops(backend)
    x = make_input((2, 3, 7, 7), device=backend_device(backend))
    out, argmax = forward(x, [3, 3], [2, 2], [1, 1], [1, 1], False, True)
    assert argmax.dtype == torch.uint8 and argmax.shape == out.shape
    out_inf, argmax_inf = forward(x, [3, 3], [2, 2], [1, 1], [1, 1], False, False)
    assert argmax_inf.dtype == torch.uint8 and argmax_inf.numel() == 0
    assert torch.equal(out, out_inf)


@pytest.mark.parametrize("backend", OUR_BACKENDS + ["fake"])
def test_argmax_is_a_byte_up_to_256_taps(backend):
    """The argmax holds the window-local tap kh * KW + kw: a byte up to 16 x 16 = 256 taps (0 .. 255), int32 from
    17 x 16 = 272 (test_large_window_int32_argmax). Each backend's raw forward, and the fake kernel (what
    torch.compile allocates) of the C++ and Triton ops alike."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cases = (([16, 16], [8, 8], torch.uint8), ([17, 16], [8, 8], torch.int32), ([16, 17], [8, 8], torch.int32),
             ([1, 256], [0, 128], torch.uint8), ([1, 257], [0, 128], torch.int32))
    for k, p, dtype in cases:
        for save in (True, False):
            if backend == "fake":
                with FakeTensorMode():
                    x = torch.empty(1, 2, 3, 4)
                    outs = [torch.ops.classicnets_ext.max_pool2d_triton(x, k, [1, 1], p, [1, 1], False, save)]
                    if "cpu" in classicnets_ext.available_backends() and _extension.has_op("max_pool2d"):
                        outs.append(torch.ops.classicnets_ext.max_pool2d(x, k, [1, 1], p, [1, 1], False, save))
            else:
                forward, _, _ = _ops(backend)
                x = make_input((1, 2, 3, 4), device=backend_device(backend), kind="randn")
                outs = [forward(x, k, [1, 1], p, [1, 1], False, save)]
            for out, argmax in outs:
                if save:
                    assert argmax.dtype == dtype and argmax.shape == out.shape, (k, argmax.dtype)
                else:
                    assert argmax.dtype == torch.uint8 and argmax.numel() == 0
        assert _layouts.max_pool2d_argmax_dtype(k) == dtype


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="triton backend not available")
def test_triton_needs_int64_at_its_boundary():
    """The Triton kernels switch to 64-bit offsets when a tensor's extent plus one block (a program's block start
    runs up to BLOCK past the last element) would pass 2^31 - 1. Meta tensors: only shapes and strides count."""
    from classicnets_ext.triton_kernels import maxpool as triton_maxpool

    need, block = triton_maxpool._needs_int64, triton_maxpool._BLOCK
    limit = 2**31 - 1
    assert triton_maxpool._INT32_LIMIT == limit

    def extent(e):  # a tensor reaching offsets 0 .. e - 1
        return torch.empty_strided((2, e // 2 + 1), (e - 1 - e // 2, 1), device="meta") if e % 2 else \
            torch.empty(e, device="meta")

    assert triton_maxpool._extent(extent(limit - block)) == limit - block
    assert triton_maxpool._extent(extent(limit - block + 1)) == limit - block + 1
    assert need(extent(limit - block)) is False  # the last block start + BLOCK is 2^31 - 1 exactly
    assert need(extent(limit - block + 1)) is True  # one more element
    assert need(torch.empty(3, device="meta"), extent(limit - block + 1)) is True  # any of the tensors
    assert need(extent(limit - block + 1), torch.empty(3, device="meta")) is True
    assert need(torch.empty(2, 3, 5, 7, device="meta")) is False
    # a strided view reaches as far as its last element, not its numel
    assert need(torch.empty_strided((2, 2), (limit - block, 1), device="meta")) is True


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="triton backend not available")
def test_triton_64bit_offsets(monkeypatch):
    """Past 2^31 - 1 elements the kernels compute offsets in 64 bits (IDX64), too big a tensor to test here: the
    64-bit path is forced on small inputs and must give the 32-bit path's answers -- forward values and argmax,
    the backward (the unrolled walk over covering windows, the unrolled walk over taps with dilation, the looped
    walk of windows past the unroll limit) and the indices, both layouts."""
    from classicnets_ext.triton_kernels import maxpool as triton_maxpool

    forward, backward, indices = _ops("triton")
    device = backend_device("triton")
    cases = (((2, 3, 9, 8), [3, 3], [2, 2], [1, 1], [1, 1], True),
             ((1, 2, 9, 10), [3, 2], [1, 2], [1, 0], [2, 1], False),
             ((1, 2, 11, 9), [5, 4], [2, 1], [2, 1], [1, 1], True))

    def run_all():
        results = []
        for shape, k, s, p, d, ceil in cases:
            for layout in ("contiguous", "channels_last"):
                x = make_input(shape, layout, torch.float32, device, "ties")
                y, argmax = forward(x, k, s, p, d, ceil, True)
                y_inference, _ = forward(x, k, s, p, d, ceil, False)
                g = grad_like(y)
                results.append((y, argmax, y_inference, backward(g, argmax, list(x.shape), k, s, p, d),
                                indices(argmax, list(x.shape), k, s, p, d)))
        return results

    narrow = run_all()
    calls = []
    monkeypatch.setattr(triton_maxpool, "_needs_int64", lambda *tensors: calls.append(len(tensors)) or True)
    wide = run_all()
    assert len(calls) == 4 * len(narrow)  # every launch took the forced rule
    for a, b in zip(narrow, wide):
        for t32, t64 in zip(a, b):
            assert t32.dtype == t64.dtype and t32.stride() == t64.stride()
            assert torch.equal(t32, t64)
    # and both against torch
    for (shape, k, s, p, d, ceil), i in zip(cases, range(0, len(wide), 2)):
        x = make_input(shape, "contiguous", torch.float32, device, "ties")
        ref, ref_idx = F.max_pool2d(x.cpu(), k, s, p, d, ceil, return_indices=True)
        assert torch.equal(wide[i][0].cpu(), ref) and torch.equal(wide[i][4].cpu(), ref_idx)


class _RecordSaveArgmax(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "classicnets_ext" and "max_pool2d" in func.name() and len(args) == 7:
            self.calls.append(args[6])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_argmax_saved_only_when_needed(backend):
    x = make_input((1, 2, 6, 6), device=backend_device(backend))
    leaf = x.clone().requires_grad_()
    cases = [(x, True, False, False), (leaf, True, False, True), (leaf, False, False, False),
             (x, True, True, True), (leaf, False, True, True)]
    for t, grad_mode, return_indices, expected in cases:
        with _RecordSaveArgmax() as mode, torch.set_grad_enabled(grad_mode):
            run(backend, t, 3, 2, 1, return_indices=return_indices)
        assert mode.calls == [expected], (grad_mode, t.requires_grad, return_indices)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_autograd_saves_only_the_argmax(backend):
    x = make_input((2, 3, 6, 6), device=backend_device(backend)).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = run(backend, x, 3, 2, 1)
    assert [t.dtype for t in saved] == [torch.uint8] and saved[0].shape == y.shape


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_indices_are_not_differentiable(backend):
    x = make_input((1, 2, 6, 6), device=backend_device(backend)).requires_grad_()
    y, idx = run(backend, x, 2, return_indices=True)
    assert y.requires_grad and not idx.requires_grad


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_backward_is_deterministic(backend):
    """Overlapping windows (3x3, stride 1 and 2): many windows share an input element, and their gradient sum
    must come out bitwise the same on every run."""
    device = backend_device(backend)
    for layout, stride in (("contiguous", 1), ("channels_last", 2)):
        x = make_input((2, 4, 9, 10), layout, device=device).requires_grad_()
        y = run(backend, x, 3, stride, 1)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(device)
        grads = [torch.autograd.grad(y, x, g, retain_graph=True)[0] for _ in range(3)]
        assert all(torch.equal(grads[0], other) for other in grads[1:])
        expected = torch.autograd.grad(F.max_pool2d(x, 3, stride, 1), x, g)[0]
        torch.testing.assert_close(grads[0], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", [p for p in OUR_BACKENDS if p.values[0] != "cuda"])
def test_backward_sums_shared_windows_in_torchs_order(backend, layout):
    """An input element that is the argmax of several windows gets their gradients summed in torch's CPU scatter
    order, increasing (oh, ow), so fp32 sums round as torch's (maxpool.py's backward kernel, docs/guide.md: the CPU
    backward is bitwise reproducible in torch's order). The other gradient tests use small integers, exact in
    any order; here grad_output spans 16 decades, so a sum of 4-9 of them rounds differently in almost any other
    order. An 8x8 plateau with one peak under 3x3/1 padded windows (the peak is the argmax of 9 windows, the
    corners of 4 by ties), and a lattice of tied peaks under 3x3/2 windows (each odd (ih, iw) the first max of
    the 4 windows covering it): the unrolled Triton walk over the covering windows (COVER_H x COVER_W)."""
    device = backend_device(backend)
    plateau = torch.zeros(2, 32, 8, 8)
    plateau[:, :, 3, 4] = 1.0
    lattice = torch.zeros(2, 32, 9, 9)
    lattice[:, :, 1::2, 1::2] = 1.0
    for x, k, s, p in ((plateau, 3, 1, 1), (lattice, 3, 2, 1)):
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        x_ref = x.clone().requires_grad_()
        y_ref = F.max_pool2d(x_ref, k, s, p)
        gen = torch.Generator().manual_seed(1)
        scale = torch.logspace(-8, 8, 5)[torch.randint(0, 5, y_ref.shape, generator=gen)]
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        g = (torch.randn(y_ref.shape, generator=gen) * scale).to(memory_format=fmt)
        (dx_ref,) = torch.autograd.grad(y_ref, x_ref, g)
        # the case is order-sensitive: float64 sums rounded once differ from torch's fp32 ones
        xd = x.double().requires_grad_()
        (dx_exact,) = torch.autograd.grad(F.max_pool2d(xd, k, s, p), xd, g.double())
        assert not torch.equal(dx_exact.float(), dx_ref)
        xr = x.to(device).requires_grad_()
        y = run(backend, xr, k, s, p)
        (dx,) = torch.autograd.grad(y, xr, g.to(device))
        assert torch.equal(dx.cpu(), dx_ref), (k, s, p, (dx.cpu() != dx_ref).sum().item())


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_backward_of_any_argmax(backend):
    """The raw backward takes an argmax from the caller, not only from max_pool2d: values that are no tap of
    the window (up to 255 for a 3x3 uint8 argmax; negative or past 289 taps for an int32 one) and taps in the
    padding must add nothing, and stay inside grad_input -- the CPU kernel scatters, so its every target is
    bounds-checked (ASan: make sanitize). Channels-first and channels-last, a partial last window. Unpadded
    3x3/2 and 2x2/2 pools take the AVX-512 CPU gather instead of the scatter: rows of more than one vector of
    windows, argmax bytes mostly taps and anything (0-255)."""
    device = backend_device(backend)
    _, backward, _ = _ops(backend)
    gen = torch.Generator().manual_seed(5)
    for (N, C, H, W), k, s, p, dtype, low, high in (((2, 3, 9, 8), (3, 3), (2, 2), (1, 1), torch.uint8, 0, 256),
                                                   ((1, 2, 20, 19), (17, 17), (3, 3), (8, 8), torch.int32, -5, 300),
                                                   ((2, 2, 9, 70), (3, 3), (2, 2), (0, 0), torch.uint8, 0, 12),
                                                   ((1, 3, 8, 35), (3, 3), (2, 2), (0, 0), torch.uint8, 0, 256),
                                                   ((2, 2, 9, 67), (2, 2), (2, 2), (0, 0), torch.uint8, 0, 6)):
        OH, OW = (H + 2 * p[0] - k[0]) // s[0] + 1, (W + 2 * p[1] - k[1]) // s[1] + 1
        argmax = torch.randint(low, high, (N, C, OH, OW), generator=gen).to(dtype)
        grad = torch.randint(-3, 4, (N, C, OH, OW), generator=gen).float()
        expected = scatter_through_argmax(grad, argmax, (N, C, H, W), k, s, p)
        for layout in ("contiguous", "channels_last"):
            to = (lambda t: t.contiguous(memory_format=torch.channels_last)) if layout == "channels_last" else (lambda t: t)
            out = backward(to(grad).to(device), to(argmax).to(device), [N, C, H, W], k, s, p, [1, 1])
            torch.testing.assert_close(out.double().cpu(), expected, atol=0, rtol=0, msg=f"{k} {layout}")


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_backward_without_saved_argmax_raises(backend):
    forward, _, _ = _ops(backend)
    x = make_input((1, 2, 6, 6), device=backend_device(backend)).requires_grad_()
    y, _ = forward(x, [2, 2], [2, 2], [0, 0], [1, 1], False, False)
    with pytest.raises(RuntimeError, match="save_argmax"):
        y.sum().backward()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_gradcheck_float64(backend, layout):
    # Distinct, well-separated values: the max is differentiable there (a tie is not).
    shape = (1, 2, 5, 6)
    device = backend_device(backend)
    values = torch.randperm(2 * 2 * 5 * 12, generator=torch.Generator().manual_seed(0)).double()
    x = make_input(shape, layout, torch.float64, device).detach()
    x.copy_(values[: x.numel()].view(shape))
    x.requires_grad_()
    # The interpreter takes ~0.1 s a launch: there, gradcheck's fast mode (a few random projections).
    fast = device == "cpu" and backend == "triton"
    with classicnets_ext.use_backend(backend):
        assert torch.autograd.gradcheck(lambda t: ops.max_pool2d(t, 3, 2, 1), (x,), fast_mode=fast)
        assert torch.autograd.gradcheck(lambda t: ops.max_pool2d(t, (2, 3), 1, (1, 0), (2, 1), True), (x,),
                                        fast_mode=fast)


# ------------------------------------------------------------------------------------- opcheck, compile

def _opcheck_samples(backend):
    device = backend_device(backend)
    samples = [((2, 3, 6, 7), "contiguous", [3, 3], [2, 2], [1, 1], [1, 1], False),
               ((2, 4, 6, 7), "channels_last", [3, 2], [2, 1], [1, 0], [1, 2], True),
               ((3, 7, 6), "contiguous", [2, 2], [1, 1], [0, 0], [1, 1], True),
               ((2, 3, 6, 7), "sliced", [2, 2], [2, 2], [1, 1], [1, 1], False),
               ((2, 3, 6, 7), "sliced_channels_last", [3, 3], [2, 2], [1, 1], [1, 1], False)]
    for shape, layout, k, s, p, d, ceil in samples:
        x = make_input(shape, layout, torch.float32, device, kind="randn")
        yield x, (k, s, p, d), ceil


def _opcheck(backend, utils=None):
    forward, backward, indices = _ops(backend)
    kw = {} if utils is None else {"test_utils": utils}
    for x, args, ceil in _opcheck_samples(backend):
        torch.library.opcheck(forward.default, (x.detach().requires_grad_(), *args, ceil, True), **kw)
        torch.library.opcheck(forward.default, (x, *args, ceil, False), **kw)
        y, argmax = forward(x, *args, ceil, True)
        g = torch.randn(y.shape, device=y.device)
        torch.library.opcheck(backward.default, (g, argmax, list(x.shape), *args), **kw)
        torch.library.opcheck(indices.default, (argmax, list(x.shape), *args), **kw)


@pytest.mark.parametrize("backend", BACKEND_PARAMS[:2])
def test_opcheck_cpp_ops(backend):
    _opcheck(backend)


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="triton backend not available")
def test_opcheck_triton_ops():
    # Under TRITON_INTERPRET the fake-tensor tests cannot run a triton_op (the interpreter touches storage);
    # the fake kernels are the ones shared with the C++ ops, which test_opcheck_cpp_ops covers.
    utils = None if HAS_CUDA else ("test_schema", "test_autograd_registration")
    _opcheck("triton", utils)


def test_fake_kernels_match_the_triton_launchers():
    """The shared fakes against the Triton outputs' shapes, dtypes and strides (what opcheck's fake-tensor
    test would compare, which the interpreter cannot run)."""
    if "triton" not in classicnets_ext.available_backends():
        pytest.skip("triton backend not available")
    forward, backward, indices = _ops("triton")
    for x, args, ceil in _opcheck_samples("triton"):
        for save in (True, False):
            real = forward(x, *args, ceil, save)
            fake = _layouts.max_pool2d_outputs_like(x, *args, ceil, save)
            for r, f in zip(real, fake):
                assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())
        y, argmax = real if save else forward(x, *args, ceil, True)
        g = torch.randn(y.shape, device=y.device)
        for real, fake in ((backward(g, argmax, list(x.shape), *args),
                            _layouts.max_pool2d_grad_input_like(g, argmax, list(x.shape), *args)),
                           (indices(argmax, list(x.shape), *args),
                            _layouts.max_pool2d_indices_like(argmax, list(x.shape), *args))):
            assert (real.shape, real.dtype, real.stride()) == (fake.shape, fake.dtype, fake.stride())


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.pool = classicnets_ext.nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).sum(dim=(2, 3))


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_compile_fullgraph_keeps_the_op(backend):
    device = backend_device(backend)
    op = getattr(torch.ops.classicnets_ext, OPS[backend][0])
    assert_compile_keeps_op(_Net().to(device), torch.randn(2, 3, 9, 9, device=device), backend, op)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_compile_aot_autograd_matches_eager(backend, dynamic):
    """aot_eager traces forward and backward through the fake kernels and the registered autograd."""
    device = backend_device(backend)
    assert_aot_grads_match_eager(_Net().to(device), torch.randn(2, 3, 9, 9, device=device), backend, dynamic)


def test_compile_inductor_cpu():
    assert_inductor_matches_eager(_Net(), torch.randn(2, 3, 9, 9))


# ----------------------------------------------------------------------------------------- bad inputs

def _bad_cases(x):
    """(args, kwargs, argument named in the message), each an error for torch too. (Integer inputs are not
    errors: see test_integer_input_pools_as_torch_does.)"""
    return [
        ((x[0, 0], 2), {}, "input"),
        ((x[None], 2), {}, "input"),
        ((x[:, :0], 2), {}, "input"),
        ((x[:, :, :0], 2), {}, "input"),
        (([1.0, 2.0], 2), {}, "input"),
        ((x[:1, :1, :2, :2], 3), {}, "input"),  # the output would be empty
        ((x, 0), {}, "kernel_size"),
        ((x, (2, -1)), {}, "kernel_size"),
        ((x, 2.5), {}, "kernel_size"),
        ((x, True), {}, "kernel_size"),
        ((x, "2"), {}, "kernel_size"),
        ((x, (2, 2, 2)), {}, "kernel_size"),
        ((x, 2, 0), {}, "stride"),
        ((x, 2, (1, -1)), {}, "stride"),
        ((x, 2, (1, 1, 1)), {}, "stride"),
        ((x, 2, 1.5), {}, "stride"),
        ((x, 3, 1, -1), {}, "padding"),
        ((x, 2, 2, 2), {}, "padding"),
        ((x, (3, 2), 2, (1, 2)), {}, "padding"),
        ((x, 2, 2, 2, 3), {}, "padding"),  # dilation does not widen torch's padding limit
        ((x, 2, 2, 0.5), {}, "padding"),
        ((x, 2, 2, 0, 0), {}, "dilation"),
        ((x, 2, 2, 0, (1, -2)), {}, "dilation"),
        ((x, 2, 2**31), {}, "stride"),  # torch keeps the four in 32-bit ints
        ((x, 2, (1, 2**62)), {}, "stride"),
        ((x, 2**63), {}, "kernel_size"),  # past int64: torch's argument parser raises a ValueError
        ((x, 3, 1, 1, 2**31), {}, "dilation"),
        ((x, 2), {"ceil_mode": None}, "ceil_mode"),
        ((x, 2), {"ceil_mode": 1}, "ceil_mode"),
    ]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_bad_arguments_raise_like_torch_naming_the_argument(backend):
    x = torch.randn(2, 3, 6, 6, device=backend_device(backend))
    for args, kwargs, name in _bad_cases(x):
        with pytest.raises(Exception) as theirs:
            F.max_pool2d(*args, **kwargs)
        with pytest.raises(type(theirs.value), match=name):
            run(backend, *args, **kwargs)


def test_integer_like_arguments_as_torch_takes_them():
    """torch takes anything with __index__ (numpy integers, 0-d integer tensors) for the int arguments, and
    only a bool for ceil_mode; so do ours (np.int64 sizes come with configs read by numpy)."""
    import numpy as np
    x = torch.randn(2, 3, 7, 7)
    for k in (np.int64(3), torch.tensor(3), [np.int32(3), torch.tensor(2)]):
        for args in ((k,), (k, np.int64(2), torch.tensor(1), np.int8(1))):
            assert torch.equal(ops.max_pool2d(x, *args, return_indices=True)[1],
                               F.max_pool2d(x, *args, return_indices=True)[1])
    with pytest.raises(TypeError, match="'ceil_mode' must be bool, not numpy.bool"):
        ops.max_pool2d(x, 2, ceil_mode=np.bool_(True))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_integer_input_pools_as_torch_does(device):
    """Integer (and bool) inputs go to torch whatever the backend: torch pools them on the CPU -- values and
    indices -- and (in the releases we know) rejects them on CUDA; ops.max_pool2d and MaxPool2d do exactly the
    same, result or exception."""
    backends = [None] + [b for b in classicnets_ext.available_backends() if backend_device(b) == device]
    for x in [*integer_inputs((2, 3, 7, 8), device), *integer_inputs((3, 5, 6), device)]:
        for args, kwargs in (((2,), {}), ((3, 2, 1), {"ceil_mode": True}), ((3, 1, 1, 2), {})):
            for backend in backends:
                with contextlib.nullcontext() if backend is None else classicnets_ext.use_backend(backend):
                    assert_same_as_torch(lambda: ops.max_pool2d(x, *args, return_indices=True, **kwargs),
                                         lambda: F.max_pool2d(x, *args, return_indices=True, **kwargs))
                    assert_same_as_torch(lambda: ops.max_pool2d(x, *args, **kwargs),
                                         lambda: F.max_pool2d(x, *args, **kwargs))
                    ours = classicnets_ext.nn.MaxPool2d(*args, return_indices=True, **kwargs)
                    theirs = torch.nn.MaxPool2d(*args, return_indices=True, **kwargs)
                    assert_same_as_torch(lambda: ours(x), lambda: theirs(x))


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_ops_reject_bad_arguments_without_crashing(backend, request):
    """Calling torch.ops directly skips ops.py's checks: the ops' own checks (csrc/maxpool/maxpool.cpp, mirrored
    by the Triton launchers) must still raise cleanly -- ValueError for values, TypeError for dtypes."""
    if ran_isolated(request, backend_device(backend)):  # on CUDA in a process of its own
        return
    forward, backward, indices = _ops(backend)
    x = torch.randn(2, 3, 6, 6, device=backend_device(backend))
    ok = ([2, 2], [2, 2], [0, 0], [1, 1])
    size = list(x.shape)
    # Every non-floating dtype, and float8 (floating, but not one the kernels take), on either device: the op's
    # own checks reject them before any device code runs (on CUDA a long input once crashed the process).
    for dtype in (torch.int64, torch.int32, torch.uint8, torch.bool, torch.float8_e4m3fn):
        for save_argmax in (False, True):
            with pytest.raises(TypeError, match="input"):
                forward(x.to(dtype), *ok, False, save_argmax)
    with pytest.raises(ValueError, match="input"):
        forward(x[0, 0], *ok, False, False)
    with pytest.raises(ValueError, match="input"):
        forward(x[:, :0], *ok, False, False)
    with pytest.raises(ValueError, match="padding"):
        forward(x, [2, 2], [2, 2], [2, 2], [1, 1], False, False)
    with pytest.raises(ValueError, match="stride"):
        forward(x, [2, 2], [0, 2], [0, 0], [1, 1], False, False)
    with pytest.raises(ValueError, match="dilation"):
        forward(x, [2, 2], [2, 2], [0, 0], [1, 0], False, False)
    with pytest.raises(ValueError, match="stride"):
        forward(x, [2, 2], [2**62, 2], [0, 0], [1, 1], False, False)  # once a crash in the CPU kernel
    with pytest.raises(ValueError, match="output would be empty"):
        forward(x[:, :, :1, :1], *ok, False, False)
    y, argmax = forward(x, *ok, False, True)
    with pytest.raises(ValueError, match="grad_output"):
        backward(y[:, :1], argmax, size, *ok)
    with pytest.raises(TypeError, match="grad_output"):
        backward(y.long(), argmax, size, *ok)
    with pytest.raises(TypeError, match="argmax"):
        indices(argmax.long(), size, *ok)
    if backend == "cuda":  # a CPU tensor beside a CUDA one dispatches to the CUDA kernel, whose checks reject it
        with pytest.raises(RuntimeError, match="grad_output"):
            backward(y.cpu(), argmax, size, *ok)
    with pytest.raises(TypeError, match="argmax"):
        backward(y, argmax.int(), size, *ok)
    with pytest.raises(ValueError, match="argmax"):
        backward(y[:, :, :2], argmax[:, :, :2], size, *ok)  # not the pooled size
    with pytest.raises(ValueError, match="input_size"):
        backward(y, argmax, size[:2], *ok)
    _, no_argmax = forward(x, *ok, False, False)
    with pytest.raises(ValueError, match="argmax"):
        backward(y, no_argmax, size, *ok)
    with pytest.raises(ValueError, match="argmax"):
        indices(no_argmax, size, *ok)


# ------------------------------------------------------------------------------ backends, modules, CUDA

@pytest.mark.parametrize("has_op", [True, False], ids=["built", "stale"])
def test_cpp_backend_without_the_op_is_a_clear_error(has_op, monkeypatch):
    """A _C built before the max-pool kernels (stood in for by taking the op off the list _C registered): 'auto'
    passes over it, an explicit 'cpu' says to rebuild."""
    x = torch.randn(1, 2, 4, 4)
    if "cpu" not in classicnets_ext.available_backends():
        pytest.skip("the C++ extension did not load")
    if not has_op:
        monkeypatch.setattr(_extension, "CPP_OPS", _extension.CPP_OPS - {"max_pool2d"})
    monkeypatch.setattr(_backend, "_CPP_DEVICES", {})  # resolve() caches what the op list said
    assert _backend.resolve("max_pool2d", x) == ("cpu" if has_op else "reference")
    with classicnets_ext.use_backend("cpu"):
        if has_op:
            assert _backend.resolve("max_pool2d", x) == "cpu"
        else:
            with pytest.raises(RuntimeError, match="classicnets_ext::max_pool2d.*Rebuild"):
                ops.max_pool2d(x, 2)


def test_import_without_extension_pools_on_the_reference_backend():
    from test_import_guard import _BLOCK_C
    code = _BLOCK_C + (
        "import pytest, torch, torch.nn.functional as F, classicnets_ext\n"
        "from classicnets_ext import _backend, ops\n"
        "x = torch.randn(2, 3, 7, 7)\n"
        "assert _backend.resolve('max_pool2d', x) == 'reference'\n"
        "torch.testing.assert_close(ops.max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1))\n"
        "torch.testing.assert_close(classicnets_ext.nn.MaxPool2d(2)(x), F.max_pool2d(x, 2))\n"
        "with pytest.raises(RuntimeError, match='simulated'):\n"
        "    classicnets_ext._extension.require('max_pool2d', op='max_pool2d')\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("return_indices", [False, True])
def test_module_is_a_drop_in(return_indices, ceil_mode):
    kwargs = dict(stride=(2, 1), padding=1, dilation=(1, 2), return_indices=return_indices, ceil_mode=ceil_mode)
    ours = classicnets_ext.nn.MaxPool2d(3, **kwargs)
    theirs = torch.nn.MaxPool2d(3, **kwargs)
    assert isinstance(ours, torch.nn.MaxPool2d)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict() == theirs.state_dict() == {}
    x = make_input((2, 3, 7, 8), kind="randn")
    got, want = ours(x), theirs(x)
    if return_indices:
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    else:
        assert torch.equal(got, want)
    assert repr(classicnets_ext.nn.MaxPool2d(2)) == repr(torch.nn.MaxPool2d(2))


def test_convert_swaps_modules_in_place():
    # (A pool directly followed by an LRN would be fused into MaxPoolLRN: test_inception.py covers that.)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, ceil_mode=True),
                                torch.nn.Conv2d(8, 8, 1), torch.nn.LocalResponseNorm(3))
    x = torch.randn(1, 3, 10, 10)
    expected = model(x)
    pool = model[2]
    assert classicnets_ext.convert(model) is model
    assert type(model[2]) is classicnets_ext.nn.MaxPool2d and model[2] is pool
    assert type(model[4]) is classicnets_ext.nn.LocalResponseNorm
    torch.testing.assert_close(model(x), expected)


def test_auto_cuda_rule_names_the_op():
    assert _backend.AUTO_CUDA["max_pool2d"] == "cuda"


def test_cpu_matches_torch_on_network_shapes():
    """The networks' pools at batch 1 on the CPU kernels, both layouts: output heights that span several
    of the inference's groups of vertical passes (8 rows) and of the row blocks (32 rows), and AlexNet's
    13-column planes -- values, indices, gradients and the inference forward, exactly torch's."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    cases = [((1, 96, 55, 55), 3, 2, 0, False), ((1, 256, 13, 13), 3, 2, 0, False), ((1, 64, 112, 112), 3, 2, 1, False),
             ((1, 64, 112, 112), 3, 2, 0, True), ((1, 16, 224, 224), 2, 2, 0, False), ((1, 8, 70, 70), 3, 1, 1, False)]
    for shape, k, s, p, ceil in cases:
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(shape).contiguous(memory_format=fmt)
            check_against_torch("cpu", x, k, s, p, 1, ceil)


@requires_cuda
@pytest.mark.parametrize("backend", [p for p in OUR_BACKENDS if p.values[0] != "cpu"])
def test_cuda_matches_torch_on_network_shapes(backend):
    """AlexNet, ResNet-stem and VGG pools, both layouts, fp16 and fp32, against torch's CUDA kernels."""
    for shape, k, s, p in [((4, 96, 55, 55), 3, 2, 0), ((4, 64, 112, 112), 3, 2, 1), ((2, 64, 224, 224), 2, 2, 0)]:
        for fmt in (torch.contiguous_format, torch.channels_last):
            for dtype in (torch.float16, torch.float32):
                x = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
                y, idx = run(backend, x, k, s, p, return_indices=True)
                y_ref, idx_ref = F.max_pool2d(x, k, s, p, return_indices=True)
                assert torch.equal(y, y_ref) and torch.equal(idx, idx_ref)
                g = torch.randn_like(y_ref)
                dx = torch.autograd.grad(y, x, g)[0]
                dx_ref = torch.autograd.grad(y_ref, x, g)[0]
                torch.testing.assert_close(dx, dx_ref, atol=1e-3, rtol=1e-3)


@requires_cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_cuda_int32_argmax_windows_over_256_taps(channels_last):
    """Windows of more than 256 taps keep the argmax in int32 (the fast path never takes them): values,
    indices and gradient against torch's CUDA kernel."""
    x = torch.randn(2, 3, 40, 37, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    forward = torch.ops.classicnets_ext.max_pool2d
    y, argmax = forward(x, [17, 16], [3, 2], [8, 8], [1, 1], True, True)
    assert argmax.dtype == torch.int32
    y_ref, idx_ref = F.max_pool2d(x, (17, 16), (3, 2), (8, 8), ceil_mode=True, return_indices=True)
    assert torch.equal(y, y_ref)
    idx = torch.ops.classicnets_ext.max_pool2d_indices(argmax, list(x.shape), [17, 16], [3, 2], [8, 8], [1, 1])
    assert torch.equal(idx, idx_ref)
    g = torch.randn_like(y_ref)
    dx = torch.ops.classicnets_ext.max_pool2d_backward(g, argmax, list(x.shape), [17, 16], [3, 2], [8, 8], [1, 1])
    torch.testing.assert_close(dx, torch.autograd.grad(y_ref, x, g)[0])


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_channels_last_backward_writes_every_channel_on_every_instruction_set(capability):
    """The channels-last backward gathers a position's channels in blocks of 4 vectors, then a last block of 1
    to 4: with 4 (C % (4 * lanes) > 3 * lanes: C = 25-31 in fp32 on AVX2, 49-63 on AVX-512) its last vector
    was never written, and grad_input kept whatever memory held there (up to 1.8e308). For each dtype, C on
    both sides of each block count's edges, for either lane width (32- and 64-byte vectors), for max-pool and
    the fused op's backward."""
    if not _extension.available():
        pytest.fail("the C++ extension did not load")
    code = (
        "import torch, torch.nn.functional as F, classicnets_ext\n"
        "from classicnets_ext import ops, reference\n"
        "torch.manual_seed(0)\n"
        "for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):\n"
        "    size = torch.empty((), dtype=dtype).element_size()\n"
        "    edges = {k * L + d for L in (32 // size, 64 // size) for k in range(5) for d in (-1, 0, 1, L // 2)}\n"
        "    for C in sorted(c for c in edges if c >= 1):\n"
        "        x0 = torch.randn(1, C, 5, 5).contiguous(memory_format=torch.channels_last)\n"
        "        for name, ours, theirs in (\n"
        "                ('max_pool2d', lambda t: ops.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),\n"
        "                ('fused', lambda t: ops.max_pool2d_lrn(t, 2, 2, size=3, alpha=0.5),\n"
        "                 lambda t: reference.max_pool2d_lrn(t, 2, 2, 0, False, 3, 0.5, 0.75, 1.0, False))):\n"
        "            x = x0.to(dtype).requires_grad_()\n"
        "            y = ours(x)\n"
        "            g = torch.randn(y.shape).to(dtype)\n"
        "            got, = torch.autograd.grad(y, x, g)\n"
        "            xr = x.detach().double().requires_grad_()  # the rounded values: the same ties\n"
        "            want, = torch.autograd.grad(theirs(xr), xr, g.double())\n"
        "            tol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 2e-2\n"
        "            torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol, msg=f'{name} {dtype} C={C}')\n"
        "print('ok')\n")
    assert_runs_with_cpu_capability(code, capability)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_update_rules_match_torch_on_every_instruction_set(capability):
    """Each instruction set's build has its own update rules: a mask-register one on AVX-512, and for the
    inference forward (no argmax) on AVX2 and AVX-512 maxps plus a blend that lets a NaN in (channels-first),
    or maxps alone plus a NaN witness, the sum of the taps, and a rescan of the windows it flags
    (channels-last; its training forward also moves the argmax on an ordered `value > max` alone, under the
    same witness). Against torch on inputs full of ties, signed zeros, infinities (+inf meeting -inf in a
    sum is a false alarm) and NaNs of distinct payloads, in both layouts, for channel counts that take the
    4-vector blocks, single vectors and the partial vector, and windows inside the input (bounds known
    at compile time) and clipped by the padding. The training forward is torch's bit for bit (the last NaN of
    the (kh, kw) scan, the first of tied zeros), and so are its indices; the inference forward equal in value
    -- by design it may report another NaN or the other zero of a tie (maxpool_cpu_vec.h,
    pool_rows_inference). The avx512 case skips on a CPU without AVX-512 (assert_runs_with_cpu_capability)."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    code = (
        "import torch, torch.nn.functional as F, classicnets_ext\n"
        "torch.manual_seed(0)\n"
        "nans = torch.tensor([0x7fc00001, 0x7fc00002, -0x3fffff], dtype=torch.int32).view(torch.float32)\n"
        "values = torch.cat([torch.tensor([-1.0, -0.0, 0.0, 1.0, float('inf'), -float('inf')]), nans])\n"
        "op = torch.ops.classicnets_ext.max_pool2d\n"
        "for C in (3, 80, 83):\n"
        "    for k, s, p in ((3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 1, 1)):\n"
        "        for cl in (False, True):\n"
        "            pick = torch.multinomial(torch.tensor([4.0, 8, 8, 4, 2, 2, 1, 1, 1]), 2 * C * 9 * 8, True)\n"
        "            x = values[pick].view(2, C, 9, 8)\n"
        "            if cl: x = x.contiguous(memory_format=torch.channels_last)\n"
        "            ref, ref_indices = F.max_pool2d(x, k, s, p, return_indices=True)\n"
        "            ref = ref.contiguous()\n"
        "            y = op(x, [k, k], [s, s], [p, p], [1, 1], False, False)[0].contiguous()\n"
        "            torch.testing.assert_close(y, ref, atol=0, rtol=0, equal_nan=True)\n"
        "            y, argmax = op(x, [k, k], [s, s], [p, p], [1, 1], False, True)\n"
        "            assert torch.equal(y.contiguous().view(torch.int32), ref.view(torch.int32)), (C, k, s, p, cl)\n"
        "            indices = torch.ops.classicnets_ext.max_pool2d_indices(argmax, x.shape, [k, k], [s, s], [p, p],"
        " [1, 1])\n"
        "            assert torch.equal(indices, ref_indices), (C, k, s, p, cl)\n"
        "print('ok')\n")
    assert_runs_with_cpu_capability(code, capability)


@pytest.mark.parametrize("capability", ["avx2", "avx512"])
def test_3x3_stride2_windows_match_torch(capability):
    """3x3 stride-2 windows (AlexNet's, ZFNet's, GoogLeNet's, ResNet's stem) have a path of their own on AVX2 and
    AVX-512 (pool_full_3x3_stride2), max-pool's and the fused op's: rows that end inside a vector or span
    several, whole vectors that read into the next rows and, at the input's end, partial ones; stores that run
    into the next output rows but not into another task's. With padding 1 or ceil_mode, the rows whose windows
    hang over the plane go through RowPooler and the columns that do are rescanned one by one. Against torch,
    with NaNs and infinities, for widths around the vector sizes and tensors big enough to be split among
    threads, inference and training (values and indices): max-pool exactly, in fp32 and in bf16 (whose taps
    come from pairs of elements per 32-bit lane, and whose rounded values tie more often); the fused op to fp32
    rounding (its LRN sums in another order)."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    code = (
        "import torch, torch.nn.functional as F, classicnets_ext\n"
        "from classicnets_ext import ops\n"
        "torch.manual_seed(0)\n"
        "torch.set_num_threads(2)\n"
        "def check(got, want, what, exact=True):\n"
        "    tol = dict(atol=0, rtol=0) if exact else {}\n"
        "    torch.testing.assert_close(got, want, equal_nan=True, msg=lambda m: f'{what}: {m}', **tol)\n"
        "for W in (3, 4, 7, 9, 13, 15, 16, 17, 18, 27, 33, 34, 55):\n"
        "    for shape in ((1, 1, 3, W), (2, 3, 7, W), (8, 64, 13, W), (1, 2, 2 * W + 1, W), (1, 3, 2 * W, W)):\n"
        "        x = torch.randn(shape)\n"
        "        flat = x.view(-1)\n"
        "        for value in (float('nan'), float('inf'), -float('inf')):\n"
        "            flat[torch.randint(flat.numel(), (max(1, flat.numel() // 50),))] = value\n"
        "        for padding in (0, 1):\n"
        "            for ceil_mode in (False, True):\n"
        "                what = (shape, padding, ceil_mode)\n"
        "                args = (3, 2, padding)\n"
        "                for t in (x, x.bfloat16()):\n"
        "                    with torch.no_grad():\n"
        "                        check(ops.max_pool2d(t, *args, ceil_mode=ceil_mode),"
        " F.max_pool2d(t, *args, ceil_mode=ceil_mode), what + (t.dtype,))\n"
        "                    y, i = ops.max_pool2d(t, *args, ceil_mode=ceil_mode, return_indices=True)\n"
        "                    y_ref, i_ref = F.max_pool2d(t, *args, ceil_mode=ceil_mode, return_indices=True)\n"
        "                    check(y, y_ref, ('training', t.dtype) + what)\n"
        "                    check(i, i_ref, ('indices', t.dtype) + what)\n"
        "                if shape[1] > 1:\n"
        "                    x0 = x.nan_to_num(nan=0.5)\n"
        "                    ref = F.local_response_norm(F.max_pool2d(F.relu(x0), *args, ceil_mode=ceil_mode), 3, k=2.0)\n"
        "                    with torch.no_grad():\n"
        "                        check(ops.max_pool2d_lrn(x0, *args, ceil_mode=ceil_mode, size=3, k=2.0, relu=True),"
        " ref, ('fused',) + what, exact=False)\n"
        "                    y = ops.max_pool2d_lrn(x0.requires_grad_(), *args, ceil_mode=ceil_mode, size=3, k=2.0,"
        " relu=True)\n"
        "                    check(y.detach(), ref.detach(), ('fused training',) + what, exact=False)\n"
        "print('ok')\n")
    assert_runs_with_cpu_capability(code, capability)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_half_precision_whole_vectors_match_torch_on_every_instruction_set(capability):
    """bf16 and fp16 are pooled in float: a whole vector converts with the instruction set's own conversion
    (common/cpu_vec.h), a partial one element by element. Channel counts and row widths that take both, in both
    layouts, with NaNs: the forward equals torch's float result rounded to the dtype (a max rounds nothing), the
    backward matches it to the dtype's rounding."""
    assert_half_precision_matches_float(
        capability, [("ops.max_pool2d(t, 3, 2, 1)", "F.max_pool2d(t, 3, 2, 1)"),
                     ("ops.max_pool2d(t, 3, 2, 0)", "F.max_pool2d(t, 3, 2, 0)"),  # every window inside: AlexNet's
                     ("ops.max_pool2d(t, 2, 2, 0)", "F.max_pool2d(t, 2, 2, 0)")],
        shapes=((2, 37, 13, 35), (1, 64, 9, 20)), nan=True, forward_tol="atol=0, rtol=0, equal_nan=True")


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_channels_last_input_pooled_to_one_pixel_gets_a_channels_last_gradient(backend):
    """A 1x1 output is both contiguous and channels-last, so the backward, which takes its layout from the
    argmax, wrote the gradient of a channels-last input contiguous; torch's keeps the input's layout."""
    device = backend_device(backend)
    x = torch.randn(2, 3, 4, 4, device=device).contiguous(memory_format=torch.channels_last)
    for ours, theirs in ((lambda t: ops.max_pool2d(t, 4), lambda t: F.max_pool2d(t, 4)),
                         (lambda t: ops.max_pool2d_lrn(t, 4, size=3),
                          lambda t: F.local_response_norm(F.max_pool2d(t, 4), 3))):
        grads = []
        for f in (ours, theirs):
            xr = x.clone().requires_grad_()
            with classicnets_ext.use_backend(backend if f is ours else "reference"):
                (g,) = torch.autograd.grad(f(xr).sum(), xr)
            grads.append(g)
        assert grads[0].stride() == grads[1].stride() == (48, 1, 12, 3)
        torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_layout_of_ambiguous_strides_follows_torch(backend):
    """A dense channels-last tensor whose size-1 dimensions have out-of-order strides -- (1, 3, 1, 5) with
    strides (1, 1, 3, 3) -- is contiguous to torch's max_pool2d (suggest_memory_format); ours answered it
    channels-last. Output, indices and gradient strides as torch's, for it and for channels-last tensors with
    size-1 dimensions that torch does take as channels-last; the fused op's as torch's composite, also with
    windows far wider than the input (the CPU kernels' channels-last detour)."""
    device = backend_device(backend)
    ambiguous = torch.randn(15, device=device).as_strided((1, 3, 1, 5), (1, 1, 3, 3))
    inputs = [ambiguous, torch.randn(1, 3, 1, 5, device=device).contiguous(memory_format=torch.channels_last),
              torch.randn(2, 4, 5, 1, device=device).contiguous(memory_format=torch.channels_last)]
    wide = dict(kernel_size=(1, 2**31 - 1), stride=1, padding=(0, 2**30 - 1))
    for x in inputs:
        for ours, theirs in ((lambda t: ops.max_pool2d(t, 1, return_indices=True),
                              lambda t: F.max_pool2d(t, 1, return_indices=True)),
                             (lambda t: (ops.max_pool2d_lrn(t, 1, size=3),),
                              lambda t: (F.local_response_norm(F.max_pool2d(t, 1), 3),)),
                             (lambda t: (ops.max_pool2d_lrn(t, **wide, size=3),),
                              lambda t: (F.local_response_norm(F.max_pool2d(t, (1, 9), 1, (0, 4)), 3),))):
            results = []
            for f in (ours, theirs):
                xr = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
                assert xr.stride() == x.stride()
                with classicnets_ext.use_backend(backend if f is ours else "reference"):
                    out = f(xr)
                    (g,) = torch.autograd.grad(out[0].sum(), xr)
                results.append((*out, g))
            for got, want in zip(*results):
                assert got.stride() == want.stride(), (x.stride(), got.shape)
                torch.testing.assert_close(got, want)


@pytest.mark.skipif(not _extension.available(), reason="the C++ extension did not load")
def test_jit_trace_with_indices_and_without_warnings():
    """torch.jit.trace of max_pool2d(return_indices=True) hit an INTERNAL ASSERT in torch's tracer (the indices
    op's SymInt[] input_size from traced sizes); a traced call with indices records torch's op, and the trace
    runs on another size. Tracing also printed a TracerWarning per shape test of the argument checks."""
    import warnings

    x = torch.randn(1, 3, 9, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(lambda t: ops.max_pool2d(t, 3, 2, 1, return_indices=True), x)
        torch.jit.trace(classicnets_ext.nn.MaxPool2d(3, 2, 1), x)
        torch.jit.trace(classicnets_ext.nn.MaxPoolLRN(3, 2), x)
    y = torch.randn(2, 3, 11, 11)
    for got, want in zip(traced(y), F.max_pool2d(y, 3, 2, 1, return_indices=True)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
