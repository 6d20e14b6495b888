"""The CUDA C++ kernels, run on the CPU by the emulator (csrc/emu/cuda_emu.h), against torch.

`make cuda-emu` builds the emulator's library -- each .cu file compiled whole by g++, launchers included, its
ops registered as torch.ops.classicnets_ext_emu.* for CPU tensors -- and runs this file three times: plain,
under AddressSanitizer (with UBSan) and under ThreadSanitizer (CNX_EMU_LIB names the library). Without the
library every test here skips, with the reason shown.

Every case is compared with stock torch in float64 (never with our CPU kernels, which could share a mistake),
and checks from the emulator's launch log that it took the kernel and launch path it is meant to cover:
LRN column / row kernels (vectorised and not), the column backward's ring in shared memory, in opt-in shared
memory and in global memory, the channels-last row fallback; max-pool forward (no argmax, uint8, int32; the
channels-first shared-memory tiles: whole planes, bands, misaligned data), gather backward and indices; the
fused op's column kernel (chunked, wide windows), row kernel, channels-last column fallback and gather
backward. Small shapes; a shrunken device reaches the grid-stride loops.
"""
import contextlib
import os
import re

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.environ.get("CNX_EMU_LIB") or os.path.join(ROOT, "build", "emu", "plain", "libclassicnets_ext_emu.so")
HAS_EMU = os.path.exists(LIB)
if HAS_EMU:
    torch.ops.load_library(LIB)

pytestmark = pytest.mark.skipif(not HAS_EMU, reason=f"CUDA emulator library not built ({LIB}): run `make cuda-emu`")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def emu():
    return torch.ops.classicnets_ext_emu


@contextlib.contextmanager
def device(sms=0, threads_per_sm=0, smem_optin=0, max_grid_y=0, concurrent_blocks=0):
    """The emulated device with fewer SMs / threads per SM / opt-in shared memory / a lower gridDim.y limit /
    another number of blocks running at once (0 keeps the H200's, and the emulator's 2)."""
    old = emu().emu_set_device(sms, threads_per_sm, smem_optin, max_grid_y, concurrent_blocks)
    try:
        yield
    finally:
        emu().emu_set_device(*old)


def launches():
    """The launches since the last call: dicts of the kernel's parameter types, grid, block and smem."""
    rows = [line.rsplit("|", 3) for line in emu().emu_launches(True).splitlines()]
    return [dict(params=p, grid=int(g), block=int(b), smem=int(s)) for p, g, b, s in rows]


@pytest.fixture(autouse=True)
def _fresh_log():
    if HAS_EMU:
        launches()


def make(shape, dtype, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def misaligned(shape, dtype, seed=0, offset=1, channels_last=True):
    """A dense (N, C, H, W) tensor, channels-last or not, whose data is not 16-byte aligned: a view ``offset``
    elements into its storage (8 bytes in: aligned for an 8-byte load, not for a 16-byte pack)."""
    n, c, h, w = shape
    flat = make((n * c * h * w + offset,), dtype, seed=seed)[offset:]
    t = flat.view(n, h, w, c).permute(0, 3, 1, 2) if channels_last else flat.view(shape)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert t.is_contiguous(memory_format=layout) and t.data_ptr() % 16 != 0
    return t


# (atol, rtol) against a float64 reference: the kernels accumulate in fp32 (fp64 for fp64) and round once,
# so one or two units in the last place of the dtype; the fused backward rounds gp to the dtype as the
# composite stores it, one rounding more: it compares at 4x.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12), torch.float16: (2e-3, 2e-3),
              torch.bfloat16: (1.6e-2, 1.6e-2)}


def close(got, expected, factor=1):
    atol, rtol = TOLERANCES[got.dtype]
    torch.testing.assert_close(got.double(), expected.double(), atol=atol * factor, rtol=rtol * factor,
                               equal_nan=True)


def test_emulator_static_shared_memory_and_2d_blocks():
    x = torch.arange(4 * 64, dtype=torch.float32)
    y = emu().emu_reverse_tiles(x)
    assert torch.equal(y, x.view(4, 64).flip(1).reshape(-1))
    assert [(r["grid"], r["block"], r["smem"]) for r in launches()] == [(4, 64, 0)]


# ---- LRN ----
# (id, shape, channels_last, size, device, path of forward, path of backward); a path is "rows" or
# "columns" plus, for the column forward, how it sums ("direct": a thread's chunk of 8 channels with its
# window's neighbours loaded at once, for size <= 16; "walk": chunked walks along C), and for the column
# backward "direct" (size 5, likewise) or where the ring of its walk lives (smem bytes > 48 KB: opt-in; 0:
# global).
LRN_CASES = [
    ("columns", (2, 7, 5, 3), False, 5, {}, "columns-direct", "columns-direct"),
    # the direct forward's chunks of 8: 37 channels in five, the last short; W = 16 masked to sizes 7 and 16
    ("columns-chunked", (2, 37, 4, 3), False, 5, {}, "columns-direct", "columns-direct"),
    ("columns-chunked-size-7", (2, 37, 4, 3), False, 7, {}, "columns-direct", "columns-ring"),
    ("columns-widest-direct", (2, 19, 3, 3), False, 16, {}, "columns-direct", "columns-ring"),
    ("columns-window-over-channels", (2, 3, 4, 4), False, 5, {}, "columns-direct", "columns-direct"),
    ("columns-one-channel", (2, 1, 4, 4), False, 1, {}, "columns-direct", "columns-ring"),
    # over 16: walks, in chunks of 8 or more channels (40 in five here)
    ("columns-wide-window", (2, 40, 3, 3), False, 21, {}, "columns-walk", "columns-ring"),
    ("columns-3d", (2, 6, 9), False, 3, {}, "columns-direct", "columns-ring"),
    ("rows-vectorised", (2, 8, 3, 3), True, 5, {}, "rows", "rows"),
    ("rows-unaligned", (2, 7, 3, 3), True, 5, {}, "rows", "rows"),
    ("rows-spatial-1", (3, 12, 1, 1), False, 5, {}, "rows", "rows"),
    ("rows-wide-window", (2, 24, 2, 2), True, 21, {}, "rows", "rows"),
    # even sizes: the window reaches size / 2 channels below and size / 2 - 1 above (every odd size has the
    # two ends equal, so only an even one tells a kernel that swaps them)
    ("rows-even-size", (2, 8, 3, 3), True, 4, {}, "rows", "rows"),
    ("rows-even-size-unaligned", (2, 7, 3, 3), True, 6, {}, "rows", "rows"),
    ("columns-optin-ring", (1, 200, 2, 2), False, 199, {}, "columns-walk", "columns-optin"),
    ("columns-global-ring", (1, 200, 2, 2), False, 199, dict(smem_optin=48 * 1024), "columns-walk",
     "columns-global"),
    # 64 columns: two blocks, whose threads' rings interleave slot by slot over the whole grid
    ("columns-global-ring-blocks", (1, 200, 8, 8), False, 199, dict(smem_optin=48 * 1024), "columns-walk",
     "columns-global"),
    ("rows-fallback-channels-last", (1, 4100, 1, 2), True, 5, {}, "rows", "columns-direct"),
    ("grid-stride-columns", (5, 6, 16, 16), False, 5, dict(sms=1, threads_per_sm=256), "columns-direct",
     "columns-direct"),
    # 300 columns x 3 chunks = 6 tiles of 256 threads on a grid capped at 4 blocks
    ("grid-stride-direct-chunks", (3, 20, 10, 10), False, 5, dict(sms=1, threads_per_sm=256), "columns-direct",
     "columns-direct"),
    # 17 channels wide on 9 (a window over 2C - 1 = 11 runs as 11: lrn.h's kernel_window, the direct kernel)
    ("grid-stride-walk", (5, 9, 16, 16), False, 17, dict(sms=1, threads_per_sm=256), "columns-walk",
     "columns-ring"),
    # 288 columns reach the 8 waves of a 32-thread device: one walk over all 20 channels, not chunks of them
    ("walk-whole-channels", (2, 20, 12, 12), False, 17, dict(sms=1, threads_per_sm=32), "columns-walk",
     "columns-ring"),
    ("grid-stride-rows", (5, 8, 16, 16), True, 5, dict(sms=1, threads_per_sm=256), "rows", "rows"),
]


def row_loads(launch):
    """The elements per load of a row kernel's launch (its last, empty argument names it: ``Loads<VEC>``)."""
    return int(launch["params"].rsplit("integral_constant<int, ", 1)[1].split(">")[0])


def lrn_path(launch):
    rows = ", int, " in launch["params"]  # the row kernels take C as an int
    if rows:
        return "rows"
    if launch["params"].count("*") == 2:  # the forward column kernels: x, y; the walk also takes a chunk
        return "columns-walk" if launch["params"].count("int64_t") + launch["params"].count("long int") == 4 \
            else "columns-direct"
    if launch["params"].count("*") == 3:  # the direct column backward: g, x, dx (the ring kernel adds its ring)
        return "columns-direct"
    if launch["smem"] == 0:
        return "columns-global"
    return "columns-optin" if launch["smem"] > 48 * 1024 else "columns-ring"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LRN_CASES, ids=[c[0] for c in LRN_CASES])
def test_lrn_matches_torch(case, dtype):
    _, shape, channels_last, size, dev, forward_path, backward_path = case
    if dtype in (torch.float16, torch.bfloat16) and shape[1] > 1000:
        pytest.skip("one half-precision run per path is enough: the wide fallback case runs in fp32/fp64")
    beta = 0.75 if dtype in (torch.float32, torch.float16) else 0.6  # s^-0.75 by square roots, else pow
    alpha, k = 0.05, 1.5
    x = make(shape, dtype, channels_last)
    g = make(shape, dtype, channels_last, seed=1)
    ref_x = x.double().requires_grad_()
    ref = F.local_response_norm(ref_x, size, alpha, beta, k)
    ref.backward(g.double())
    with device(**dev):
        y = emu().lrn(x, size, alpha, beta, k)
        dx = emu().lrn_backward(g, x, size, alpha, beta, k)
    close(y, ref)
    close(dx, ref_x.grad)
    assert y.stride() == x.stride() and dx.stride() == x.stride()  # channels-last in, channels-last out
    logged = launches()
    paths = [lrn_path(launch) for launch in logged]
    assert paths == [forward_path, backward_path], paths
    if case[0].endswith("-blocks"):
        assert logged[1]["grid"] > 1, logged[1]
    # A row of a multiple of 16 bytes is staged 16 bytes per load (the data is aligned: a fresh tensor).
    vector = 16 // x.element_size() if shape[1] * x.element_size() % 16 == 0 else 1
    assert [row_loads(launch) for launch in logged if lrn_path(launch) == "rows"] == [vector] * paths.count("rows")


@pytest.mark.parametrize("size", [21, 5])
def test_lrn_non_finite_inputs_match_torch(size):
    # Inf and NaN in a wide window (the column walk and ring backward) and in the direct column kernels' sums
    # and terms.
    x = make((1, 40, 2, 2), torch.float32)
    x[0, 3, 0, 0] = float("inf")
    x[0, 20, 1, 1] = float("nan")
    ref_x = x.double().requires_grad_()
    ref = F.local_response_norm(ref_x, size, 0.05, 0.75, 1.5)
    g = make(x.shape, torch.float32, seed=1)
    ref.backward(g.double())
    close(emu().lrn(x, size, 0.05, 0.75, 1.5), ref)
    close(emu().lrn_backward(g, x, size, 0.05, 0.75, 1.5), ref_x.grad)


@pytest.mark.parametrize("channels_last", [False, True], ids=["columns", "rows"])
def test_lrn_exact_next_to_huge_values_and_beta_zero(channels_last):
    """Every window is summed directly (the column backward's t too), at every size: a running sum cancels
    after x^2 = 1e36 or a t of 1e25 leaves it. beta = 0 gives dx = g exactly, also where s = 0 makes t = 0/0."""
    x = make((1, 40, 2, 3), torch.float32, channels_last)
    x[0, 1] = 1e18
    g = make(x.shape, torch.float32, channels_last, seed=1)
    g[0, 3] = 1e25
    for size, alpha, beta, k in ((3, 0.5, 0.75, 1.0), (5, 0.5, 0.75, 1.0), (17, 0.5, 0.75, 1.0),
                                 (33, 0.5, 0.75, 1.0), (3, 0.5, 0.0, 0.0), (5, 0.5, 0.0, 0.0)):
        if beta == 0.0:
            x[0, 5:8] = 0.0
        ref_x = x.double().requires_grad_()
        ref = F.local_response_norm(ref_x, size, alpha, beta, k)
        ref.backward(g.double())
        close(emu().lrn(x, size, alpha, beta, k), ref)
        dx = emu().lrn_backward(g, x, size, alpha, beta, k)
        assert torch.isfinite(dx).all()
        close(dx, ref_x.grad)


@pytest.mark.parametrize("size", [4, 5])
@pytest.mark.parametrize("channels_last", [False, True], ids=["columns", "rows"])
def test_lrn_backward_with_k_zero_next_to_zero_channels(channels_last, size):
    """k = 0, beta > 0, the channels at both ends zero -- as many as a window reaches past each end, (size - 1)
    // 2 below and size // 2 above: every channel's own window holds a non-zero one, but a window centred on a
    channel past either end (there is none there) would have s = 0 and a term 0 * 0^(-beta - 1) = NaN. The
    backward sums no such term, so dx is finite, as torch's."""
    x = make((1, 9, 2, 3), torch.float32, channels_last)
    x[:, :(size - 1) // 2] = 0.0
    x[:, x.shape[1] - size // 2:] = 0.0
    g = make(x.shape, torch.float32, channels_last, seed=1)
    ref_x = x.double().requires_grad_()
    F.local_response_norm(ref_x, size, 0.05, 0.75, 0.0).backward(g.double())
    assert torch.isfinite(ref_x.grad).all()
    close(emu().lrn_backward(g, x, size, 0.05, 0.75, 0.0), ref_x.grad)


@pytest.mark.parametrize("channels_last", [False, True], ids=["columns", "rows"])
def test_any_size_runs_the_narrowest_window_that_covers_every_channel(channels_last):
    """From 2C - 1 up, the window clipped to C channels covers them all: the kernels run 2C - 1 with alpha
    scaled to keep alpha / size (lrn.h's kernel_window). A size of 2^40 once meant loops and rings that long.
    LRN and the fused op, forward and backward, against the closed form."""
    x = make((2, 3, 4, 4), torch.float64, channels_last)
    beta, k = 0.75, 1.5
    for size in (2**31 + 5, 2**40):
        alpha = 1e-4 * size
        ref_x = x.clone().requires_grad_()
        ref = ref_x * (k + alpha / size * ref_x.pow(2).sum(1, keepdim=True)).pow(-beta)
        g = make(ref.shape, torch.float64, channels_last, seed=1)
        ref.backward(g)
        pool_x = x.clone().requires_grad_()
        p = F.max_pool2d(F.relu(pool_x), 2, 2)
        pooled_ref = p * (k + alpha / size * p.pow(2).sum(1, keepdim=True)).pow(-beta)
        gp = make(pooled_ref.shape, torch.float64, channels_last, seed=2)
        pooled_ref.backward(gp)
        y = emu().lrn(x, size, alpha, beta, k)
        dx = emu().lrn_backward(g, x, size, alpha, beta, k)
        fy, fp, argmax = emu().max_pool2d_lrn(x, [2, 2], [2, 2], [0, 0], False, size, alpha, beta, k, True, True)
        fdx = emu().max_pool2d_lrn_backward(gp, fp, argmax, x.shape, [2, 2], [2, 2], [0, 0], size, alpha, beta, k,
                                            True)
        close(y, ref)
        close(dx, ref_x.grad)
        close(fy, pooled_ref)
        close(fdx, pool_x.grad)


@pytest.mark.parametrize("offset", [1, 8], ids=["1-element", "8-bytes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_lrn_misaligned_channels_last_rows_load_one_element_at_a_time(dtype, offset):
    """Channels-last rows of a multiple of 16 bytes whose data is not 16-byte aligned (a view one element into
    its storage) are staged one element per load: a 16-byte pack load there would fault on a GPU. The emulator
    cannot fault, but its AddressSanitizer build also runs UndefinedBehaviorSanitizer, which reports such a
    load as misaligned."""
    offset = 1 if offset == 1 else 8 // torch.empty((), dtype=dtype).element_size()
    x, g = misaligned((2, 16, 3, 3), dtype, offset=offset), misaligned((2, 16, 3, 3), dtype, seed=1, offset=offset)
    ref_x = x.double().requires_grad_()
    F.local_response_norm(ref_x, 5, 0.05, 0.75, 1.5).backward(g.double())
    y = emu().lrn(x, 5, 0.05, 0.75, 1.5)
    dx = emu().lrn_backward(g, x, 5, 0.05, 0.75, 1.5)
    close(y, F.local_response_norm(x.double(), 5, 0.05, 0.75, 1.5))
    close(dx, ref_x.grad)
    logged = launches()
    assert [lrn_path(launch) for launch in logged] == ["rows", "rows"]
    assert [row_loads(launch) for launch in logged] == [1, 1]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_empty_batches_launch_nothing(channels_last):
    """A batch of 0 answers empty tensors of torch's shapes without launching a kernel (a grid of 0 blocks is
    an invalid launch on a GPU, and the emulator refuses it as one)."""
    x = make((0, 16, 9, 9), torch.float32, channels_last)
    y, argmax = emu().max_pool2d(x, (3, 3), (2, 2), (0, 0), (1, 1), False, True)
    assert y.shape == argmax.shape == F.max_pool2d(x, 3, 2).shape == (0, 16, 4, 4)
    assert emu().max_pool2d_indices(argmax, x.shape, (3, 3), (2, 2), (0, 0), (1, 1)).shape == y.shape
    assert emu().max_pool2d_backward(y, argmax, x.shape, (3, 3), (2, 2), (0, 0), (1, 1)).shape == x.shape
    assert emu().lrn(x, 5, 0.05, 0.75, 1.5).shape == x.shape
    assert emu().lrn_backward(x, x, 5, 0.05, 0.75, 1.5).shape == x.shape
    out, pooled, argmax = emu().max_pool2d_lrn(x, (3, 3), (2, 2), (0, 0), False, 5, 0.05, 0.75, 1.5, True, True)
    assert out.shape == pooled.shape == argmax.shape == (0, 16, 4, 4)
    dx = emu().max_pool2d_lrn_backward(out, pooled, argmax, x.shape, (3, 3), (2, 2), (0, 0), 5, 0.05, 0.75, 1.5,
                                       True)
    assert dx.shape == x.shape
    shapes = [(7, 16, 1, 1), (7,), (4, 2, 3, 3), (4,), (3, 2, 5, 5), (3,), (5, 16, 1, 1), (5,)]
    params = [make(s, torch.float32, seed=3 + i) for i, s in enumerate(shapes)]
    out, red3, red5 = emu().inception(x, *params, 3)
    assert out.shape == (0, 3 + 4 + 3 + 5, 9, 9) and red3.shape == (0, 2, 9, 9) and red5.shape == (0, 2, 9, 9)
    assert launches() == []


# ---- Max pooling ----
# (id, shape, channels_last, kernel, stride, padding, dilation, ceil_mode, device, path). Path: the problem type
# the kernels take -- "fixed": the fast path (window known at compile time, 32-bit coordinates), else the
# generic "Problem".
POOL_CASES = [
    ("3x3s2", (2, 3, 9, 9), False, (3, 3), (2, 2), (0, 0), (1, 1), False, {}, "FixedProblem<3, 2>"),
    ("3x3s2-channels-last", (2, 5, 9, 9), True, (3, 3), (2, 2), (0, 0), (1, 1), False, {}, "FixedProblem<3, 2>"),
    ("3x3s2-padded-ceil", (1, 4, 10, 8), False, (3, 3), (2, 2), (1, 1), (1, 1), True, {}, "FixedProblem<3, 2>"),
    ("3x3s1-padded-channels-last", (2, 6, 7, 5), True, (3, 3), (1, 1), (1, 1), (1, 1), False, {},
     "FixedProblem<3, 1>"),
    ("2x2s2-odd-ceil", (2, 3, 7, 9), False, (2, 2), (2, 2), (0, 0), (1, 1), True, {}, "FixedProblem<2, 2>"),
    ("2x2s2-channels-last-padded", (1, 7, 6, 5), True, (2, 2), (2, 2), (1, 1), (1, 1), False, {},
     "FixedProblem<2, 2>"),
    ("padded-ceil", (2, 3, 10, 7), False, (3, 2), (2, 1), (1, 1), (1, 1), True, {}, "Problem"),
    ("dilated-channels-last", (1, 4, 11, 9), True, (3, 3), (2, 1), (1, 0), (2, 2), True, {}, "Problem"),
    ("int32-argmax", (1, 2, 20, 19), False, (17, 17), (1, 1), (0, 0), (1, 1), False, {}, "Problem"),
    ("int32-argmax-channels-last", (1, 3, 19, 19), True, (17, 16), (1, 2), (2, 3), (1, 1), True, {}, "Problem"),
    # the fast path's threads take 4 outputs of 2x2 windows (4,608 here) and 4 input elements: every kernel's
    # grid of 4 x 256 threads strides
    ("grid-stride", (4, 8, 24, 24), False, (2, 2), (2, 2), (0, 0), (1, 1), False, dict(sms=1, threads_per_sm=256),
     "FixedProblem<2, 2>"),
    # 2 outputs of 3x3 windows per thread, 4 inputs: 5,915 outputs and 25,515 inputs, each with a short last run
    ("grid-stride-unrolled-tails", (5, 7, 27, 27), False, (3, 3), (2, 2), (0, 0), (1, 1), False,
     dict(sms=1, threads_per_sm=256), "FixedProblem<3, 2>"),
    ("grid-stride-generic", (4, 8, 12, 12), True, (2, 3), (2, 2), (0, 1), (1, 1), False,
     dict(sms=1, threads_per_sm=256), "Problem"),
    # channels-last rows of 16-byte multiples: a thread per pack of channels (C = 16, 8, 24 pack every dtype;
    # C = 4 packs fp32 only)
    ("3x3s2-channels-last-packs", (2, 16, 9, 9), True, (3, 3), (2, 2), (0, 0), (1, 1), False, {},
     "FixedProblem<3, 2>"),
    ("2x2s2-channels-last-packs-padded-ceil", (1, 8, 7, 9), True, (2, 2), (2, 2), (1, 1), (1, 1), True, {},
     "FixedProblem<2, 2>"),
    ("3x3s1-channels-last-packs-padded", (2, 24, 6, 5), True, (3, 3), (1, 1), (1, 1), (1, 1), False, {},
     "FixedProblem<3, 1>"),
    ("3x3s2-channels-last-C4", (1, 4, 9, 8), True, (3, 3), (2, 2), (1, 1), (1, 1), True, {}, "FixedProblem<3, 2>"),
    ("grid-stride-packs", (4, 16, 24, 24), True, (2, 2), (2, 2), (0, 0), (1, 1), False,
     dict(sms=1, threads_per_sm=256), "FixedProblem<2, 2>"),
]


def packs_channels(x, path):
    """Whether the fast path gives each thread a 16-byte pack of channels: channels-last rows of a multiple of
    16 bytes, 16-byte aligned data."""
    return (path.startswith("Fixed") and x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4
            and x.shape[1] > 1 and x.shape[1] * x.element_size() % 16 == 0 and x.data_ptr() % 16 == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_max_pool2d_matches_torch(case, dtype):
    _, shape, channels_last, kernel, stride, padding, dilation, ceil_mode, dev, path = case
    x = make(shape, dtype, channels_last)
    x[0, 0, 0, 1] = x[0, 0, 0, 2]  # a tie and a NaN: torch's rules (the first max wins; a NaN wins and stays)
    x[0, -1, 1, 1] = float("nan")
    ref_x = x.double().requires_grad_()
    ref, ref_indices = F.max_pool2d(ref_x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    g = make(ref.shape, dtype, channels_last, seed=1)
    ref.backward(g.double())
    with device(**dev):
        y_only, none = emu().max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, False)
        y, argmax = emu().max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, True)
        indices = emu().max_pool2d_indices(argmax, x.shape, kernel, stride, padding, dilation)
        dx = emu().max_pool2d_backward(g, argmax, x.shape, kernel, stride, padding, dilation)
    torch.testing.assert_close(y_only, ref.detach().to(dtype), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(y, ref.detach().to(dtype), rtol=0, atol=0, equal_nan=True)
    assert none.numel() == 0
    assert argmax.dtype == (torch.uint8 if kernel[0] * kernel[1] <= 256 else torch.int32)
    assert torch.equal(indices, ref_indices)
    close(dx, ref_x.grad)
    log = launches()
    assert len(log) == 4 and all(launch["block"] == 256 for launch in log)
    assert "void*" in log[0]["params"] and "void*" not in log[1]["params"]  # forward without, with argmax
    # forward (both) and backward take the case's path; the indices kernel is always generic
    problems = [re.search(r"cnx::maxpool::(\w*Problem(<[^>]*>)?)", launch["params"]).group(1) for launch in log]
    assert problems == [path, path, "Problem", path]
    packed = packs_channels(x, path)
    # a pack is 16 bytes of channels: its width shows in the launch, Lanes<scalar, 16 / element size>
    lanes = [re.search(r"Lanes<[^,]*, (\d+)>", launch["params"]) for launch in log]
    width = 16 // x.element_size() if packed else None
    assert [m and int(m.group(1)) for m in lanes] == [width, width, None, width]
    # channels-first fast-path forwards stage their input in shared memory (forward_tiles_kernel)
    tiled = path.startswith("Fixed") and not channels_last
    assert [is_tiles_launch(launch) for launch in log] == [tiled, tiled, False, False]
    if dev:  # capped: the threads grid-stride (a tiles launch over its tiles, here at most 4 blocks)
        assert all(launch["grid"] == 4 or is_tiles_launch(launch) and launch["grid"] <= 4 for launch in log)


def is_tiles_launch(launch):
    """forward_tiles_kernel's launch: the only max-pool kernel with dynamic shared memory."""
    return "cnx::maxpool::" in launch["params"] and launch["smem"] > 0


# Channels-first fast-path forwards on shared-memory tiles: (id, shape, kernel, stride, padding, ceil_mode, device,
# tiles). "planes": tiles of whole planes; "bands": a plane's input over the 16 KB a tile takes (every dtype
# here), in bands of output rows; "none": not even one output row's input rows fit, the element kernel.
TILE_CASES = [
    ("bands-3x3s2", (1, 2, 91, 93), (3, 3), (2, 2), (0, 0), False, {}, "bands"),
    ("bands-3x3s2-padded-ceil", (1, 2, 90, 91), (3, 3), (2, 2), (1, 1), True, {}, "bands"),
    ("bands-2x2s2-ceil", (2, 1, 95, 91), (2, 2), (2, 2), (0, 0), True, {}, "bands"),
    ("bands-3x3s1-padded", (1, 2, 94, 90), (3, 3), (1, 1), (1, 1), False, {}, "bands"),
    ("planes-grid-stride", (4, 16, 33, 33), (3, 3), (2, 2), (0, 0), False, dict(sms=1, threads_per_sm=256), "planes"),
    ("planes-3x3s1-padded", (3, 5, 7, 6), (3, 3), (1, 1), (1, 1), False, {}, "planes"),
    ("rows-too-wide", (1, 1, 3, 2100), (3, 3), (2, 2), (0, 0), False, {}, "none"),
]


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "1-element-in"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TILE_CASES, ids=[c[0] for c in TILE_CASES])
def test_max_pool2d_channels_first_tiles_match_torch(case, dtype, offset):
    _, shape, kernel, stride, padding, ceil_mode, dev, tiles = case
    # misaligned data: a tile's staging loads the ragged ends of its 16-byte packs element by element
    x = misaligned(shape, dtype, channels_last=False) if offset else make(shape, dtype)
    x[0, 0, 0, 1] = x[0, 0, 0, 2]  # a tie, and NaNs in the first and last tiles
    x[0, 0, 1, 1] = x[-1, -1, -1, -2] = float("nan")
    ref, ref_indices = F.max_pool2d(x.double(), kernel, stride, padding, 1, ceil_mode, return_indices=True)
    with device(**dev):
        y_only, _ = emu().max_pool2d(x, kernel, stride, padding, (1, 1), ceil_mode, False)
        y, argmax = emu().max_pool2d(x, kernel, stride, padding, (1, 1), ceil_mode, True)
    indices = emu().max_pool2d_indices(argmax, x.shape, kernel, stride, padding, (1, 1))
    torch.testing.assert_close(y_only, ref.to(dtype), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(y, ref.to(dtype), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(indices, ref_indices)
    log = launches()[:2]
    assert [is_tiles_launch(launch) for launch in log] == [tiles != "none"] * 2
    if tiles == "bands":  # a plane's input is over the 16 KB: each of its tiles a band of its output rows
        assert all(launch["smem"] < x.shape[-2] * x.shape[-1] * x.element_size() for launch in log)
        assert all(launch["grid"] >= 2 * x.shape[0] * x.shape[1] for launch in log)
    if dev:
        assert all(launch["grid"] == 4 for launch in log)  # fewer blocks than tiles: they stride


def test_max_pool2d_channels_first_tiles_can_be_turned_off(monkeypatch):
    """CNX_MAXPOOL_TILES=0 (for comparing the two kernels on a GPU) runs the element kernel, with the same
    result."""
    x = make((2, 3, 20, 21), torch.float16)
    y_tiles, a_tiles = emu().max_pool2d(x, (3, 3), (2, 2), (0, 0), (1, 1), False, True)
    monkeypatch.setenv("CNX_MAXPOOL_TILES", "0")
    y, argmax = emu().max_pool2d(x, (3, 3), (2, 2), (0, 0), (1, 1), False, True)
    assert torch.equal(y, y_tiles) and torch.equal(argmax, a_tiles)
    assert [is_tiles_launch(launch) for launch in launches()] == [True, False]


@pytest.mark.parametrize("offset", [1, 8], ids=["1-element", "8-bytes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_max_pool2d_misaligned_channels_last_keeps_one_channel_per_thread(dtype, offset):
    """A channels-last input whose data is not 16-byte aligned (a view one element into its storage) takes
    the one-channel kernels: a pack load there would be misaligned."""
    offset = 1 if offset == 1 else 8 // torch.empty((), dtype=dtype).element_size()
    x = misaligned((2, 16, 9, 9), dtype, offset=offset)
    ref_x = x.double().requires_grad_()
    ref = F.max_pool2d(ref_x, 3, 2)
    g = misaligned((2, 16, 4, 4), dtype, seed=1, offset=offset)  # the backward's gradient
    ref.backward(g.double())
    y, argmax = emu().max_pool2d(x, (3, 3), (2, 2), (0, 0), (1, 1), False, True)
    dx = emu().max_pool2d_backward(g, argmax, x.shape, (3, 3), (2, 2), (0, 0), (1, 1))
    torch.testing.assert_close(y, ref.detach().to(dtype), rtol=0, atol=0)
    close(dx, ref_x.grad)
    assert ["Lanes<" in launch["params"] for launch in launches()] == [False, False]


# ---- Fused ReLU -> max-pool -> LRN ----
# (id, shape, channels_last, kernel, stride, padding, ceil_mode, size, relu, device, forward kernel). "tiles":
# channels-first, a fast-path window and size <= 16 -- a block pools 64 positions x 32 channels and their halo
# into shared memory, then sums each output's window there.
FUSED_CASES = [
    ("tiles", (2, 6, 9, 9), False, (3, 3), (2, 2), (0, 0), False, 5, True, {}, "tiles"),
    ("tiles-padded-ceil", (1, 20, 7, 7), False, (3, 3), (2, 2), (1, 1), True, 5, False, {}, "tiles"),
    ("tiles-3x3s1-padded", (2, 11, 6, 6), False, (3, 3), (1, 1), (1, 1), False, 5, True, {}, "tiles"),
    ("tiles-2x2s2-odd-ceil", (1, 9, 7, 9), False, (2, 2), (2, 2), (0, 0), True, 5, False, {}, "tiles"),
    ("tiles-fewer-channels-than-window", (2, 3, 5, 5), False, (3, 3), (2, 2), (0, 0), False, 5, True, {}, "tiles"),
    # 70 channels: tiles of 32, 32 and 6 with their halos; 81 positions: a full tile of 64 and a partial one
    ("tiles-channel-tiles-and-halos", (1, 70, 19, 19), False, (3, 3), (2, 2), (0, 0), False, 5, True, {}, "tiles"),
    ("tiles-size-3", (1, 40, 7, 7), False, (3, 3), (2, 2), (1, 1), True, 3, False, {}, "tiles"),
    ("tiles-even-size-16", (2, 37, 6, 6), False, (2, 2), (2, 2), (0, 0), False, 16, True, {}, "tiles"),
    # size 16 on 80 channels: the middle channel tile stages its halos, 8 channels below and 7 above, both
    # inside C (a tile that stages 8 above overruns its shared memory)
    ("tiles-even-size-middle-tile", (1, 80, 9, 9), False, (3, 3), (2, 2), (0, 0), False, 16, True, {}, "tiles"),
    # 300 positions x 1 channel tile = 5 tiles on a grid capped at 4 blocks
    ("grid-stride-tiles", (3, 17, 21, 21), False, (3, 3), (2, 2), (0, 0), False, 5, True,
     dict(sms=1, threads_per_sm=256), "tiles"),
    ("columns-size-17", (1, 20, 7, 7), False, (3, 3), (2, 2), (1, 1), True, 17, False, {}, "columns"),
    ("columns-wide-window", (1, 40, 5, 5), False, (2, 2), (2, 2), (0, 0), False, 21, True, {}, "columns"),
    # channels-last rows: fast-path windows pool with 32-bit coordinates ("rows-fixed"), others generically
    ("rows-fixed", (2, 8, 9, 9), True, (3, 3), (2, 2), (0, 0), False, 5, True, {}, "rows-fixed"),
    ("rows-fixed-3x3s1-padded", (2, 40, 6, 6), True, (3, 3), (1, 1), (1, 1), False, 5, False, {}, "rows-fixed"),
    ("rows-fixed-2x2s2-odd-ceil", (1, 24, 7, 9), True, (2, 2), (2, 2), (0, 0), True, 3, True, {}, "rows-fixed"),
    # 1,600 rows in 7 chunks of 256 on 4 blocks: a block runs a second chunk after its first
    ("grid-stride-rows-fixed", (4, 8, 40, 40), True, (3, 3), (2, 2), (1, 1), False, 5, True,
     dict(sms=1, threads_per_sm=256), "rows-fixed"),
    ("rows-wide-window", (1, 30, 6, 6), True, (3, 2), (2, 1), (1, 0), True, 21, False, {}, "rows"),
    ("int32-argmax", (1, 6, 18, 18), False, (17, 17), (1, 1), (0, 0), False, 5, True, {}, "columns"),
    ("int32-argmax-rows", (1, 8, 18, 18), True, (17, 17), (1, 1), (0, 0), False, 5, True, {}, "rows"),
    ("grid-stride-columns", (4, 6, 24, 24), False, (2, 2), (1, 1), (0, 0), False, 5, True,
     dict(sms=1, threads_per_sm=256), "columns"),
    ("grid-stride-rows", (4, 8, 24, 24), True, (2, 2), (1, 1), (0, 0), False, 5, True,
     dict(sms=1, threads_per_sm=256), "rows"),
]


def fused_path(launch):
    if "FixedRows" in launch["params"]:
        return "rows-fixed"
    if "FixedProblem" in launch["params"]:
        return "tiles"
    return "rows" if launch["smem"] > 0 else "columns"


def is_fused_backward(log):
    """The fused backward's launches: LRN's backward kernel on p (lrn_cuda.cu), then max-pool's gather."""
    *lrn, gather = log
    return (len(lrn) == 1 and "cnx::lrn::Params" in lrn[0]["params"] and "cnx::pool_lrn" not in lrn[0]["params"]
            and "cnx::maxpool::" in gather["params"] and "cnx::lrn::" not in gather["params"])


def check_fused(shape, dtype, channels_last, kernel, stride, padding, ceil_mode, size, relu, dev):
    alpha, beta, k = 0.05, 0.75, 1.5
    x = make(shape, dtype, channels_last)
    ref_x = x.double().requires_grad_()
    pooled = F.max_pool2d(F.relu(ref_x) if relu else ref_x, kernel, stride, padding, ceil_mode=ceil_mode)
    ref = F.local_response_norm(pooled, size, alpha, beta, k)
    g = make(ref.shape, dtype, channels_last, seed=1)
    ref.backward(g.double())
    with device(**dev):
        y_only, _, _ = emu().max_pool2d_lrn(x, kernel, stride, padding, ceil_mode, size, alpha, beta, k, relu, False)
        y, p, argmax = emu().max_pool2d_lrn(x, kernel, stride, padding, ceil_mode, size, alpha, beta, k, relu, True)
        dx = emu().max_pool2d_lrn_backward(g, p, argmax, x.shape, kernel, stride, padding, size, alpha, beta, k, relu)
    assert argmax.dtype == (torch.uint8 if kernel[0] * kernel[1] <= 256 else torch.int32)
    close(y_only, ref)
    close(y, ref)
    close(p, pooled)
    close(dx, ref_x.grad, factor=4)
    return launches()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", FUSED_CASES, ids=[c[0] for c in FUSED_CASES])
def test_max_pool2d_lrn_matches_torch(case, dtype):
    *args, forward_path = case[1:]
    log = check_fused(args[0], dtype, *args[1:])
    assert [fused_path(launch) for launch in log[:2]] == [forward_path, forward_path], log
    if case[0].startswith("grid-stride") and forward_path.startswith("rows"):
        # the blocks stride: more chunks of rows (a chunk: smem / (C * sizeof(acc_t)) rows) than blocks
        shape, (kernel, stride, padding, ceil_mode) = args[0], args[2:6]
        pooled = F.max_pool2d(torch.empty(shape, device="meta"), kernel, stride, padding, ceil_mode=ceil_mode)
        n, _, oh, ow = pooled.shape
        chunk = log[0]["smem"] // (shape[1] * (8 if dtype == torch.float64 else 4))
        assert -(-n * oh * ow // chunk) > log[0]["grid"], log[0]
    assert is_fused_backward(log[2:]), log
    assert "void*" in log[0]["params"] and "void*" not in log[1]["params"]


@pytest.mark.parametrize("relu", [False, True])
def test_max_pool2d_lrn_tiles_pool_as_the_column_kernel(relu):
    """The tiled forward's one unrolled scan (border taps read as -inf) pools exactly as the column kernel's
    scan over the inside taps: the same pooled values and window-local argmax where taps tie, where a window
    holds -inf or NaN, and in padded border windows. p and the argmax do not depend on the LRN size, so size 17
    (the column kernel) is the oracle for size 5 (tiles); y is checked against torch. The channels-last rows'
    fast path, the same scan at channels-last strides, gives the same p, argmax and y bit for bit."""
    gen = torch.Generator().manual_seed(3)
    values = torch.tensor([float("-inf"), -1.0, 0.0, 1.0, float("nan")])
    x = values[torch.randint(0, 5, (2, 11, 9, 8), generator=gen)]
    x[:, :, :4] = values[torch.randint(1, 4, (2, 11, 4, 8), generator=gen)]  # finite ties in the top half
    x[:, 4] = float("-inf")  # all-(-inf) windows: the argmax stays at the first tap inside, as torch's
    x[:, 6, :, 2:] = float("nan")
    pool = ((3, 3), (2, 2), (1, 1), True)
    y, p, argmax = emu().max_pool2d_lrn(x, *pool, 5, 0.05, 0.75, 1.5, relu, True)
    _, p_col, argmax_col = emu().max_pool2d_lrn(x, *pool, 17, 0.05, 0.75, 1.5, relu, True)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y_cl, p_cl, argmax_cl = emu().max_pool2d_lrn(x_cl, *pool, 5, 0.05, 0.75, 1.5, relu, True)
    assert [fused_path(launch) for launch in launches()] == ["tiles", "columns", "rows-fixed"]
    assert torch.equal(argmax, argmax_col) and torch.equal(argmax_cl, argmax)
    torch.testing.assert_close(p, p_col, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(p_cl, p, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(y_cl, y, rtol=0, atol=0, equal_nan=True)
    ref = F.local_response_norm(F.max_pool2d(F.relu(x) if relu else x, *pool[:3], ceil_mode=True), 5, 0.05, 0.75, 1.5)
    torch.testing.assert_close(y, ref, equal_nan=True)


@pytest.mark.parametrize("window", [3, 17], ids=["uint8-argmax", "int32-argmax"])
def test_max_pool2d_lrn_channels_last_column_fallback(window):
    # Channels-last rows wider than 48 KB of fp32 go through the column kernel, channels-last.
    log = check_fused((1, 12290, window, window), torch.float32, True, (window, window), (2, 2), (0, 0), False, 5,
                      True, {})
    assert [fused_path(launch) for launch in log[:2]] == ["columns"] * 2, log
    assert is_fused_backward(log[2:]), log


# ---- Inception block ----
# (id, N, C_in, H, W, (ch1x1, r3, c3, r5, c5, cp), k5, device). Odd widths (every epilogue column by column),
# widths that are all multiples of 8 (16-byte packs in every dtype), a mix (the 3x3 branch's 12 columns split
# fp16's packs of 8 but not fp32's of 4), and 8 columns at a slice offset of 4 (its rows not 16-byte aligned in
# fp16: columns there); 1-pixel-wide images (pool windows clipped on every side); epilogue grids capped below the
# work, which they grid-stride over.
INCEPTION_CASES = [
    ("small", 1, 6, 5, 4, (3, 2, 4, 2, 3, 5), 5, {}),
    ("wide-projection", 2, 37, 9, 8, (5, 4, 6, 3, 4, 70), 3, {}),
    ("thin-image", 3, 20, 1, 7, (2, 3, 2, 2, 2, 3), 5, {}),
    ("packs", 2, 16, 5, 6, (8, 8, 16, 8, 8, 16), 5, {}),
    ("mixed-packs", 1, 24, 4, 4, (8, 8, 12, 8, 4, 8), 3, {}),
    ("unaligned-slice", 1, 8, 3, 3, (4, 8, 8, 8, 4, 8), 3, {}),
    ("grid-stride-epilogue", 2, 19, 6, 6, (9, 5, 7, 4, 3, 65), 3, dict(sms=1, threads_per_sm=256)),
    ("blocks-per-sm-cap", 2, 8, 32, 32, (9, 5, 7, 4, 3, 8), 3, dict(sms=1, threads_per_sm=65536)),
]
# The 1x1 epilogue's grid (256 threads a block) where a case caps it: one SM of 256 threads holds one block
# (4 waves: 4 blocks); one SM whose threads would hold 256 such blocks still holds only 32 (sm_90's block
# limit per SM): 4 waves of 32.
EPILOGUE_GRID = {"grid-stride-epilogue": 4, "blocks-per-sm-cap": 4 * 32}


def epilogue_pack(dtype, *widths):
    """The columns an Inception epilogue thread takes: a 16-byte pack where every width, leading dimension and
    slice offset is a multiple of one (the tensors themselves are fresh, so aligned), else one."""
    pack = 16 // torch.empty((), dtype=dtype).element_size()
    return pack if all(w % pack == 0 for w in widths) else 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", INCEPTION_CASES, ids=[c[0] for c in INCEPTION_CASES])
def test_inception_matches_torch(case, dtype):
    from classicnets_ext import reference
    _, n, c_in, h, w, (c1, r3, c3, r5, c5, cp), k5, dev = case
    x = make((n, c_in, h, w), dtype, seed=2)
    shapes = [(c1 + r3 + r5, c_in, 1, 1), (c1 + r3 + r5,), (c3, r3, 3, 3), (c3,), (c5, r5, k5, k5), (c5,),
              (cp, c_in, 1, 1), (cp,)]
    params = [make(s, dtype, seed=3 + i) * (0.5 if len(s) == 1 else 1.0 / (s[1] * s[2] * s[3]) ** 0.5)
              for i, s in enumerate(shapes)]
    with device(**dev):
        out, red3, red5 = emu().inception(x, *params, c1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    # The reference from the op's own (checked) reductions for the spatial branches: a reduction that rounds to
    # the other neighbour in fp16 would otherwise move the 3x3 output by more than the op's own error.
    x64, p64 = x.double(), [p.double() for p in params]
    ref = reference.inception(x64, *p64, c1)
    reduce = F.relu(F.conv2d(x64, p64[0], p64[1]))
    close(red3, reduce[:, c1:c1 + r3])
    close(red5, reduce[:, c1 + r3:])
    spatial3 = F.relu(F.conv2d(red3.double(), p64[2], p64[3], padding=1))
    spatial5 = F.relu(F.conv2d(red5.double(), p64[4], p64[5], padding=k5 // 2))
    close(out[:, :c1], ref[:, :c1])
    close(out[:, c1:c1 + c3], spatial3, factor=4)
    close(out[:, c1 + c3:c1 + c3 + c5], spatial5, factor=4)
    close(out[:, c1 + c3 + c5:], ref[:, c1 + c3 + c5:], factor=4)  # K up to 37 products summed in fp32
    log = launches()
    # In launch order: max-pool's 3x3/s1 kernel (the pool branch; the GEMMs are at::mm's), then the epilogues of
    # the 1x1 GEMM, of the projection GEMM, of the 3x3 and of the 5x5 convolution.
    assert len(log) == 5 and "FixedProblem<3, 1>" in log[0]["params"], log
    co, n1 = c1 + c3 + c5 + cp, c1 + r3 + r5
    packs = [epilogue_pack(dtype, co, n1, r3, r5, c1, c1 + r3), epilogue_pack(dtype, co, cp, c1 + c3 + c5),
             epilogue_pack(dtype, co, c3, c1), epilogue_pack(dtype, co, c5, c1 + c3)]
    name = {torch.float32: "float", torch.float64: "double", torch.float16: "c10::Half",
            torch.bfloat16: "c10::BFloat16"}[dtype]
    assert [launch["params"].count(f"Pack<{name}, {pack}>") for launch, pack in zip(log[1:], packs)] == [3] * 4, log
    if case[0] == "packs":
        assert min(packs) > 1
    if case[0] == "unaligned-slice" and dtype == torch.float16:
        assert packs == [1, 8, 1, 1], packs
    if case[0] == "mixed-packs":  # 1x1 epilogue in packs; 3x3 in packs of 4 fp32 or 2 fp64, in columns for fp16 and bf16
        assert packs[0] > 1 and packs[2] == {torch.float32: 4, torch.float64: 2}.get(dtype, 1), packs
    cap = EPILOGUE_GRID.get(case[0])
    if cap:  # the epilogues' grids are capped, and grid-stride over the rest
        assert log[1]["grid"] == cap and all(launch["grid"] <= cap for launch in log[2:])
