"""The Triton Inception forward, classicnets_ext::inception_triton (triton_kernels/inception.py), against an
fp64 reference built from F.conv2d, F.max_pool2d, F.relu and cat. Without a GPU it runs interpreted on CPU
tensors (conftest sets TRITON_INTERPRET), so the shapes are tiny -- chosen so that GEMM tiles straddle the
output/red3/red5 column boundaries and the K loop takes several steps."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import HAS_CUDA

import classicnets_ext  # noqa: F401  (loads the library; conftest has set TRITON_INTERPRET first)
from _helpers import make_input

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
# Imported, not importorskip'ed: with triton installed, a kernel file that does not import is a failure.
from classicnets_ext.triton_kernels import inception  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"
op = torch.ops.classicnets_ext.inception_triton

# (N, C_in, H, W, ch1x1, r3, c3, r5, c5, cp, k5)
SMALL = (2, 8, 5, 5, 4, 3, 5, 2, 3, 4, 5)
TORCHVISION = (2, 8, 5, 5, 4, 3, 5, 2, 3, 4, 3)  # torchvision's "5x5" branch is 3x3
# H != W, C_in > BLOCK_K (two K steps, the second masked), ch1x1 + r3 + r5 = 19 > BLOCK_N (two column tiles,
# the first straddling every boundary of the split store), M = 3 * 7 not a multiple of BLOCK_M.
ODD = (1, 20, 3, 7, 11, 5, 17, 3, 2, 6, 5)


def make_params(shape, dtype=torch.float32, seed=0):
    """Weights ~ randn / sqrt(fan_in) and biases ~ randn / 4, so outputs are O(1) and ReLU cuts about half."""
    N, C, H, W, ch1x1, r3, c3, r5, c5, cp, k5 = shape
    g = torch.Generator().manual_seed(seed)

    def w(*s):
        return torch.randn(s, generator=g) / (s[1] * s[2] * s[3]) ** 0.5

    def b(n):
        return torch.randn(n, generator=g) / 4

    params = [w(ch1x1 + r3 + r5, C, 1, 1), b(ch1x1 + r3 + r5), w(c3, r3, 3, 3), b(c3), w(c5, r5, k5, k5), b(c5),
              w(cp, C, 1, 1), b(cp)]
    return [p.to(device=DEVICE, dtype=dtype) for p in params]


def reference(x, w1, b1, w3, b3, w5, b5, wp, bp, ch1x1, reduced=None):
    """The unfused block in fp64 from the op's (possibly low-precision) inputs: (output, reduced_3x3,
    reduced_5x5). The k x k convolutions read ``reduced`` (the op's own reductions) when given, else the
    reference's rounded to the input's dtype -- in low precision a reduction the op rounds to the other
    neighbour (its fp32 sum is not the fp64 one) would otherwise move the k x k outputs by one ulp of it times
    the weights, an error that is not the op's."""
    dtype = x.dtype
    x, w1, b1, w3, b3, w5, b5, wp, bp = (t.double() for t in (x, w1, b1, w3, b3, w5, b5, wp, bp))
    r3 = w3.shape[1]
    y = F.relu(F.conv2d(x, w1, b1))
    red3, red5 = y[:, ch1x1:ch1x1 + r3], y[:, ch1x1 + r3:]
    in3, in5 = (t.to(dtype).double() for t in (reduced or (red3, red5)))
    out = torch.cat([y[:, :ch1x1], F.relu(F.conv2d(in3, w3, b3, padding=w3.shape[-1] // 2)),
                     F.relu(F.conv2d(in5, w5, b5, padding=w5.shape[-1] // 2)),
                     F.relu(F.conv2d(F.max_pool2d(x, 3, 1, 1), wp, bp))], 1)
    return out, red3, red5


def strided_bias(b):
    """``b`` as a stride-2 view of a larger tensor, NaN in the elements between: a kernel that reads the bias
    as contiguous (ignoring its stride) picks up NaNs and shifted values."""
    big = torch.full((2 * b.shape[0],), float("nan"), dtype=b.dtype, device=b.device)
    big[::2] = b
    view = big[::2]
    assert view.stride() == (2,) and torch.equal(view, b)
    return view


def check(shape, dtype=torch.float32, layout="channels_last", kind="randn", atol=1e-5, rtol=1.3e-6,
          strided_biases=False):
    x = make_input(shape[:4], layout, dtype, DEVICE, kind)
    params = make_params(shape, dtype)
    if strided_biases:  # every bias (the odd entries) a stride-2 view
        params = [strided_bias(p) if i % 2 else p for i, p in enumerate(params)]
    ch1x1 = shape[4]
    got = op(x, *params, ch1x1)
    want = reference(x, *params, ch1x1, reduced=got[1:])
    for name, g, e in zip(("output", "reduced_3x3", "reduced_5x5"), got, want):
        assert g.dtype == dtype and g.shape == e.shape, name
        assert g.is_contiguous(memory_format=torch.channels_last), name
        torch.testing.assert_close(g.double(), e, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{name}: {m}")
    return got


@pytest.mark.parametrize("shape, layout", [
    (SMALL, "contiguous"),
    (SMALL, "channels_last"),
    (TORCHVISION, "sliced"),        # strided channels: copied channels-last by the launcher
    (TORCHVISION, "transposed"),    # H and W swapped in memory, channels not unit-stride
    (ODD, "channels_last"),
], ids=["5x5-contiguous", "5x5-channels_last", "3x3-sliced", "3x3-transposed", "odd"])
def test_fp32(shape, layout):
    # fp32 accumulation of at most 25 * 17 products of O(1) terms: a few ulps.
    check(shape, torch.float32, layout)


def test_channels_last_view_read_in_place():
    # A channel slice of a channels-last tensor has unit channel stride but no dense layout: read as it is.
    x = make_input((2, 16, 5, 5), "channels_last", device=DEVICE, kind="randn")[:, 3:11]
    params = make_params(SMALL)
    got = op(x, *params, SMALL[4])
    for g, e in zip(got, reference(x, *params, SMALL[4], reduced=got[1:])):
        torch.testing.assert_close(g.double(), e, atol=1e-5, rtol=1.3e-6)


@pytest.mark.parametrize("shape", [SMALL, ODD], ids=["small", "odd"])
def test_strided_biases(shape):
    # Biases that are views with stride 2 (e.g. every other element of a larger parameter): the GEMM must
    # read bias[j] at j * stride, not j.
    check(shape, torch.float32, strided_biases=True)


def test_fp64_exact():
    check(SMALL, torch.float64, atol=1e-12, rtol=1e-12)


# Against the fp64 sums of the same rounded inputs: the op accumulates in fp32 (error ~1e-7 relative) and
# rounds once to the dtype, which may land on either neighbour of the exact sum when the fp32 one sits near a
# midpoint: one ulp, 2^-7 (bf16) or 2^-10 (fp16) relative -- torch's default rtol for each dtype, doubled
# for values just above a power of two. atol covers the fp32 sums' absolute error near 0 (after ReLU).
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float16, 1e-5, 2e-3), (torch.bfloat16, 1e-5, 1.6e-2)],
                         ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [SMALL, ODD], ids=["small", "odd"])
def test_low_precision(shape, dtype, atol, rtol):
    check(shape, dtype, atol=atol, rtol=rtol)


@pytest.mark.parametrize("shape", [SMALL, TORCHVISION], ids=["5x5", "3x3"])
def test_nan_propagates(shape):
    # make_input's 'nan' kind: integers in [-2, 2] with 15% NaNs. The pool's max propagates a NaN, every
    # conv window over one is NaN, and relu keeps it.
    got = check(shape, layout="contiguous", kind="nan")
    assert got[0].isnan().any() and not got[0].isnan().all()


@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul")  # the interpreter's inf * 0
def test_inf_in_input():
    x = make_input(SMALL[:4], "channels_last", device=DEVICE, kind="randn")
    x[0, 1, 2, 3] = float("-inf")
    x[1, 0, 0, 0] = float("inf")
    params = make_params(SMALL)
    got = op(x, *params, SMALL[4])
    for g, e in zip(got, reference(x, *params, SMALL[4], reduced=got[1:])):
        torch.testing.assert_close(g.double(), e, atol=1e-5, rtol=1.3e-6, equal_nan=True)


def test_int64_offsets(monkeypatch):
    # The 64-bit path (taken when a tensor spans 2^31 elements) forced on a small problem.
    monkeypatch.setattr(inception, "_needs_int64", lambda *tensors: True)
    check(SMALL)


def test_empty_batch():
    x = torch.empty(0, 8, 5, 5, device=DEVICE)
    out, red3, red5 = op(x, *make_params(SMALL), SMALL[4])
    assert out.shape == (0, 16, 5, 5) and red3.shape == (0, 3, 5, 5) and red5.shape == (0, 2, 5, 5)


def test_fake_kernel():
    # The op's registered fake (its launcher cannot run on fake tensors under the interpreter): shapes, dtype
    # and the channels-last layout.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(SMALL[:4], dtype=torch.bfloat16, device=DEVICE)
        outs = op(x, *(torch.empty_like(p) for p in make_params(SMALL, torch.bfloat16)), SMALL[4])
    assert [tuple(o.shape) for o in outs] == [(2, 16, 5, 5), (2, 3, 5, 5), (2, 2, 5, 5)]
    assert all(o.dtype == torch.bfloat16 and o.is_contiguous(memory_format=torch.channels_last) for o in outs)


def test_bad_inputs():
    x = make_input(SMALL[:4], "contiguous", device=DEVICE)
    w1, b1, w3, b3, w5, b5, wp, bp = make_params(SMALL)
    with pytest.raises(ValueError, match="weight_1x1"):
        op(x, w1[:-1], b1[:-1], w3, b3, w5, b5, wp, bp, 4)
    with pytest.raises(ValueError, match="weight_1x1"):
        op(x, w1, b1, w3, b3, w5, b5, wp, bp, 3)
    with pytest.raises(ValueError, match="weight_pool"):
        op(x, w1, b1, w3, b3, w5, b5, wp[:, :-1], bp, 4)
    with pytest.raises(ValueError, match="weight_3x3"):
        op(x, w1, b1, w3[..., :2, :2], b3, w5, b5, wp, bp, 4)
    with pytest.raises(ValueError, match="bias_5x5"):
        op(x, w1, b1, w3, b3, w5, b5[:-1], wp, bp, 4)
    with pytest.raises(ValueError, match="input"):
        op(x[0], w1, b1, w3, b3, w5, b5, wp, bp, 4)
    with pytest.raises(TypeError, match="weight_3x3"):
        op(x, w1, b1, w3.double(), b3, w5, b5, wp, bp, 4)
    with pytest.raises(TypeError, match="input"):
        op(x.to(torch.int32), w1, b1, w3, b3, w5, b5, wp, bp, 4)


def test_config_pruning():
    # The GPU configs, pruned for a narrow problem: no tile wider than 32 columns or K steps over 16.
    import triton

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=s, num_warps=w)
               for bm, bn, bk, s, w in inception._GPU_TILES]
    kept = inception._prune_configs(configs, {"N_OUT": 9, "C_A": 3})
    assert kept and all(c.kwargs["BLOCK_N"] <= 32 and c.kwargs["BLOCK_K"] <= 16 for c in kept)
    assert inception._prune_configs(configs, {"N_OUT": 256, "C_A": 832}) == configs
