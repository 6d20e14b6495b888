"""Local Response Normalization: every backend against F.local_response_norm in float64."""
import math

import pytest
import torch
import torch.nn.functional as F

import classicnets_ext
from classicnets_ext import ops
from _helpers import assert_aot_grads_match_eager, assert_compile_keeps_op, assert_inductor_matches_eager
from _helpers import assert_half_precision_matches_float
from _helpers import assert_runs_with_cpu_capability, assert_same_as_torch, assert_same_layout, integer_inputs
from _helpers import ran_isolated
from conftest import HAS_CUDA, backend_device, requires_cuda

ALL_BACKENDS = ["cpu", "cuda", "triton", "reference"]


def backend_param(name):
    why = None if name in classicnets_ext.available_backends() else f"backend {name!r} is not available here"
    return pytest.param(name, marks=pytest.mark.skipif(why is not None, reason=why or ""), id=name)


BACKEND_PARAMS = [backend_param(b) for b in ALL_BACKENDS]
OUR_BACKENDS = [p for p in BACKEND_PARAMS if p.values[0] != "reference"]

# (atol, rtol) per dtype. Kernels accumulate in fp32 (fp64 for fp64), so low-precision error is the final
# rounding to the dtype: 2^-11 relative for fp16, 2^-8 for bf16. The backward is a difference of two terms,
# so its absolute error scales with the larger term, hence the wider atol.
FWD_TOL = {torch.float64: (1e-12, 1e-10), torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 2e-3),
           torch.bfloat16: (8e-3, 1.6e-2)}
BWD_TOL = {torch.float64: (1e-11, 1e-9), torch.float32: (3e-5, 3e-5), torch.float16: (4e-3, 4e-3),
           torch.bfloat16: (3e-2, 3e-2)}


def _channels_last(t):
    """Channels-last (C innermost) version of an (N, C, *) tensor, whatever its dim."""
    return t.movedim(1, -1).contiguous().movedim(-1, 1)


# (id, shape, size, alpha, beta, k, layout): the sample inputs every correctness test draws from.
CASES = [
    ("alexnet-like", (2, 16, 7, 7), 5, 1e-4 * 5, 0.75, 2.0, "contiguous"),
    ("big-alpha", (2, 12, 5, 6), 5, 2.0, 0.75, 1.0, "contiguous"),
    ("beta-half", (2, 12, 5, 6), 5, 1.0, 0.5, 1.0, "contiguous"),
    ("beta-one", (2, 9, 4, 3), 3, 1.0, 1.0, 2.0, "contiguous"),
    ("3d", (3, 10, 11), 3, 0.5, 0.75, 1.0, "contiguous"),
    ("5d", (2, 6, 3, 4, 5), 4, 0.5, 0.75, 1.0, "contiguous"),
    ("c1", (2, 1, 5, 5), 5, 0.5, 0.75, 1.0, "contiguous"),
    ("c-less-than-size", (2, 3, 4, 4), 7, 0.5, 0.75, 1.0, "contiguous"),
    ("size1", (2, 8, 3, 3), 1, 0.5, 0.75, 1.0, "contiguous"),
    ("size2-even", (2, 8, 3, 3), 2, 0.5, 0.75, 1.0, "contiguous"),
    ("size6-even", (2, 13, 3, 5), 6, 0.5, 0.6, 1.5, "contiguous"),
    ("size-large", (1, 40, 3, 3), 17, 0.5, 0.75, 1.0, "contiguous"),
    ("many-columns", (2, 5, 17, 17), 5, 0.5, 0.75, 1.0, "contiguous"),
    ("n0", (0, 5, 3, 3), 5, 1e-4, 0.75, 1.0, "contiguous"),
    ("channels-last", (2, 16, 5, 6), 5, 0.5, 0.75, 1.0, "channels_last"),
    ("channels-last-3d", (2, 11, 7), 3, 0.5, 0.75, 1.0, "channels_last"),
    ("channels-last-5d", (2, 9, 3, 4, 2), 5, 0.5, 0.75, 1.0, "channels_last"),
    ("channels-last-size-large", (2, 30, 2, 3), 25, 0.5, 0.5, 1.0, "channels_last"),
    ("sliced", (2, 16, 6, 6), 5, 0.5, 0.75, 1.0, "sliced"),
    ("sliced-channels-last", (2, 16, 6, 6), 5, 0.5, 0.75, 1.0, "sliced_channels_last"),
    ("transposed-5d", (2, 6, 3, 4, 5), 3, 0.5, 0.75, 1.0, "transposed"),
    ("sliced-channels-last-5d", (2, 5, 3, 4, 2), 3, 0.5, 0.75, 1.0, "sliced_channels_last_5d"),
]


def make_input(shape, layout, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    if layout in ("sliced", "sliced_channels_last"):  # every other channel and column: strides no dense layout has
        big = torch.randn(shape[0], 2 * shape[1], shape[2], 2 * shape[3], generator=g)
        if layout == "sliced_channels_last":  # a slice of a channels-last tensor: torch answers it channels-last
            big = big.contiguous(memory_format=torch.channels_last)
        return big[:, ::2, :, ::2].to(device=device, dtype=dtype)
    if layout == "sliced_channels_last_5d":  # channels [1, C + 1) of a channels_last_3d tensor: not dense
        big = torch.randn(shape[0], shape[1] + 2, *shape[2:], generator=g)
        big = big.contiguous(memory_format=torch.channels_last_3d)
        return big[:, 1:shape[1] + 1].to(device=device, dtype=dtype)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    if layout == "channels_last":
        return _channels_last(x)
    if layout == "transposed":  # non-contiguous 5-D: torch's own function cannot .view() it
        return x.transpose(2, 4).contiguous().transpose(2, 4)
    return x


def reference(x, size, alpha, beta, k):
    return F.local_response_norm(x.double().contiguous(), size, alpha, beta, k)


def run(backend, x, *args):
    with classicnets_ext.use_backend(backend):
        return ops.local_response_norm(x, *args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_forward_and_backward_match_float64_reference(backend, case, dtype):
    _, shape, size, alpha, beta, k, layout = case
    device = backend_device(backend)
    if dtype == torch.float64 and device == "cuda" and backend == "triton":
        pytest.skip("fp64 is not a Triton-kernel target")
    x = make_input(shape, layout, dtype, device).requires_grad_()
    y = run(backend, x, size, alpha, beta, k)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    if backend != "reference" and layout != "transposed":
        # torch's layout, from torch's function on x as it is (fp16/bf16 as fp32, which keeps the layout:
        # torch's CPU LRN has neither). A transposed tensor is answered contiguous, where torch's composite
        # keeps the permutation (docs/guide.md, Semantics).
        x_torch = x.detach().float() if dtype in (torch.float16, torch.bfloat16) else x.detach()
        assert_same_layout(y, F.local_response_norm(x_torch, size, alpha, beta, k))

    x64 = x.detach().double().requires_grad_()
    y64 = reference(x64, size, alpha, beta, k)
    atol, rtol = FWD_TOL[dtype]
    torch.testing.assert_close(y.double(), y64, atol=atol, rtol=rtol)

    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    (dx,) = torch.autograd.grad(y, x, grad)
    (dx64,) = torch.autograd.grad(y64, x64, grad.double())
    atol, rtol = BWD_TOL[dtype]
    torch.testing.assert_close(dx.double(), dx64, atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_channels_last_output_keeps_layout(backend):
    x = make_input((2, 8, 4, 5), "channels_last", torch.float32, backend_device(backend))
    y = run(backend, x, 5)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_non_finite_inputs_match_torch(backend):
    """Inf and NaN entering and leaving the window: the sums after them must recover, as torch's do."""
    device = backend_device(backend)
    for layout in ("contiguous", "channels_last"):
        x = make_input((1, 40, 2, 2), layout, torch.float32, device).detach()
        x[0, 3, 0, 0] = float("inf")
        x[0, 20, 1, 1] = float("nan")
        for size in (17, 21):  # the kernels' widest paths: no fast path, windows looped over
            y = run(backend, x, size, 0.5, 0.75, 1.0)
            torch.testing.assert_close(y.double(), reference(x, size, 0.5, 0.75, 1.0), equal_nan=True,
                                       atol=1e-5, rtol=1e-5)
        x = make_input((2, 12, 3, 3), layout, torch.float32, device).detach()
        x[0, 2, 0, 0] = float("inf")
        x[0, 7, 1, 1] = float("nan")
        x[1, 4, 2, 2] = float("-inf")
        x[1, 0, 0, 1] = 3e19  # its square overflows to Inf
        y = run(backend, x, 3, 0.5, 0.75, 1.0)
        torch.testing.assert_close(y.double(), reference(x, 3, 0.5, 0.75, 1.0), equal_nan=True, atol=1e-5, rtol=1e-5)
        # Far from the non-finite values the output is finite again.
        assert torch.isfinite(y[0, 11]).all() and torch.isfinite(y[1, 8:]).all()


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_zero_and_negative_k(backend):
    """s = 0 (0/0 -> NaN) and s < 0 (NaN) follow torch exactly, also on the beta = 0.75 fast path."""
    x = torch.zeros(1, 4, 2, 2, device=backend_device(backend))
    x[0, 0, 0, 0] = 1.0
    for k in (0.0, -1.0):
        y = run(backend, x, 3, 1e-4, 0.75, k)
        torch.testing.assert_close(y.double(), reference(x, 3, 1e-4, 0.75, k), equal_nan=True)


NON_FINITE_SETTINGS = ((0.0, math.inf, 1.0), (0.0, math.nan, 1.0), (0.0, -math.inf, 1.0), (1e-2, math.inf, 1.0),
                       (math.inf, 0.75, 1.0), (1e-2, 0.75, math.inf))


def test_non_finite_alpha_beta_or_k_follow_torch():
    """torch's pow gives 1 ** inf = 1 ** nan = 1, so where the window sum s is exactly 1 (alpha 0, k 1) an
    infinite or NaN beta leaves x as it is. The kernels' power (exp2 of a log2) would give NaN there, so they
    refuse such settings (below) and the op answers with torch's composite, on every backend alike."""
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    for alpha, beta, k in NON_FINITE_SETTINGS:
        torch.testing.assert_close(ops.local_response_norm(x, 3, alpha, beta, k),
                                   F.local_response_norm(x, 3, alpha, beta, k), equal_nan=True)
    assert torch.equal(ops.local_response_norm(x, 3, 0.0, math.inf, 1.0), x)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_kernels_refuse_non_finite_settings(backend):
    """The raw ops name the setting rather than answer NaN (the fused op's kernels do the same)."""
    x = torch.randn(2, 5, 3, 3, device=backend_device(backend))
    forward = getattr(torch.ops.classicnets_ext, "lrn_triton" if backend == "triton" else "lrn")
    backward = getattr(torch.ops.classicnets_ext, "lrn_triton_backward" if backend == "triton" else "lrn_backward")
    for alpha, beta, k in NON_FINITE_SETTINGS:
        name = "beta" if not math.isfinite(beta) else "alpha" if not math.isfinite(alpha) else "k"
        with pytest.raises(ValueError, match=f"`{name}` must be finite"):
            forward(x, 3, alpha, beta, k)
        with pytest.raises(ValueError, match=f"`{name}` must be finite"):
            backward(x, x, 3, alpha, beta, k)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_gradcheck_float64(layout):
    x = make_input((2, 7, 3, 4), layout, torch.float64, "cpu").requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.local_response_norm(t, 4, 0.5, 0.75, 1.5), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.local_response_norm(t, 3, 0.5, 0.6, 1.0), (x,))


def _opcheck_samples(device):
    for layout in ("contiguous", "channels_last", "sliced", "sliced_channels_last"):
        x = make_input((2, 10, 4, 4), layout, torch.float32, device).requires_grad_()
        yield x, 5, 0.5, 0.75, 2.0
    yield make_input((3, 4, 6), "contiguous", torch.float64, device).requires_grad_(), 2, 1e-2, 0.5, 1.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_opcheck_cpp_ops(device):
    if device == "cpu" and "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    for x, size, alpha, beta, k in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.classicnets_ext.lrn.default, (x, size, alpha, beta, k))
        g = torch.randn_like(x).detach()
        torch.library.opcheck(torch.ops.classicnets_ext.lrn_backward.default, (g, x.detach(), size, alpha, beta, k))


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="triton backend not available")
def test_opcheck_triton_ops():
    device = backend_device("triton")
    # Under TRITON_INTERPRET the fake-tensor tests cannot run a triton_op (the interpreter touches storage);
    # the fake kernel is the one shared with the C++ op, which test_opcheck_cpp_ops covers.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if device == "cpu":
        utils = ("test_schema", "test_autograd_registration")
    for x, size, alpha, beta, k in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.classicnets_ext.lrn_triton.default, (x, size, alpha, beta, k), test_utils=utils)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.norm = classicnets_ext.nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0)

    def forward(self, x):
        return self.norm(torch.relu(self.conv(x))).sum(dim=(2, 3))


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_compile_fullgraph_keeps_the_op(backend):
    device = backend_device(backend)
    op = getattr(torch.ops.classicnets_ext, "lrn_triton" if backend == "triton" else "lrn")
    assert_compile_keeps_op(_Net().to(device), torch.randn(2, 3, 9, 9, device=device), backend, op)


def test_compile_aot_autograd_matches_eager():
    """aot_eager traces forward and backward through the fake kernels and the registered autograd."""
    assert_aot_grads_match_eager(_Net(), torch.randn(2, 3, 9, 9))


def test_compile_inductor_cpu():
    assert_inductor_matches_eager(_Net(), torch.randn(2, 3, 9, 9))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_bad_arguments_raise_naming_the_argument(backend):
    device = backend_device(backend)
    x = torch.randn(2, 4, 3, 3, device=device)
    cases = [  # (integer inputs are not errors for torch: see test_integer_input_behaves_as_torch)
        ((x[0, 0], 3), ValueError, "input"),
        ((x, 0), RuntimeError, "size"),  # torch's type: code that catches torch's error catches ours
        ((x, -2), RuntimeError, "size"),
        ((x, 2.5), TypeError, "size"),
        (([1.0, 2.0], 3), TypeError, "input"),
    ]
    for args, exc, name in cases:
        with pytest.raises(exc, match=name):
            run(backend, *args)
        if isinstance(args[0], torch.Tensor) and isinstance(args[1], int):
            with pytest.raises(exc):
                F.local_response_norm(*args)
    # Past the schema's int64 (torch: a RuntimeError about padding, or past 2^64 a TypeError from pad): named.
    for fn in (ops.local_response_norm, lambda x, size: ops.max_pool2d_lrn(x, 2, size=size)):
        with classicnets_ext.use_backend(backend), pytest.raises(ValueError, match="'size' must fit in 64 bits"):
            fn(x, 2 ** 63)


def test_integer_like_size_as_torch_takes_it():
    """torch's LRN takes any integer-like size (numpy integers, 0-d integer tensors); so do ours."""
    import numpy as np
    x = torch.randn(2, 6, 4, 4)
    for size in (np.int64(3), torch.tensor(3), np.uint8(3)):
        torch.testing.assert_close(ops.local_response_norm(x, size), F.local_response_norm(x, size))
        torch.testing.assert_close(ops.max_pool2d_lrn(x, 2, size=size), F.local_response_norm(F.max_pool2d(x, 2), 3))


def test_a_learned_alpha_beta_or_k_gets_its_gradient():
    """torch's LRN is a composite, so a tensor alpha / beta / k that requires grad gets a gradient; ours used to
    turn it into a float (only a UserWarning said so) and the gradient was silently lost."""
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    for name in ("alpha", "beta", "k"):
        params = {"alpha": 0.5, "beta": 0.75, "k": 2.0}
        ours, theirs = (torch.tensor(params[name], dtype=torch.float64, requires_grad=True) for _ in range(2))
        y = ops.local_response_norm(x, 3, **{**params, name: ours})
        y_ref = F.local_response_norm(x, 3, **{**params, name: theirs})
        y.sum().backward(), y_ref.sum().backward()
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(ours.grad, theirs.grad)
        ours.grad = None
        ops.max_pool2d_lrn(x, 2, size=3, relu=True, **{**params, name: ours}).sum().backward()
        theirs.grad = None
        F.local_response_norm(F.max_pool2d(x.relu(), 2), 3, **{**params, name: theirs}).sum().backward()
        torch.testing.assert_close(ours.grad, theirs.grad)


def test_per_channel_alpha_beta_or_k_tensors_give_torchs_answer():
    """torch's composite broadcasts a (C, 1, 1) alpha, beta or k; ours raised a TypeError ("must be a real
    number"), and convert() of a model with such an LRN (frozen: nothing requires grad) made it raise."""
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    per_channel = torch.linspace(0.5, 2.0, 6, dtype=torch.float64).view(6, 1, 1)
    for name in ("alpha", "beta", "k"):
        params = {"alpha": 0.5, "beta": 0.75, "k": 2.0, name: per_channel}
        torch.testing.assert_close(ops.local_response_norm(x, 3, **params), F.local_response_norm(x, 3, **params))
        torch.testing.assert_close(ops.max_pool2d_lrn(x, 2, size=3, relu=True, **params),
                                   F.local_response_norm(F.max_pool2d(x.relu(), 2), 3, **params))
    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.LocalResponseNorm(3, k=per_channel))
    want = model(x)
    classicnets_ext.convert(model)
    assert isinstance(model[0], classicnets_ext.nn.MaxPoolLRN)
    torch.testing.assert_close(model(x), want)


def test_sparse_input_is_refused_by_the_dispatcher():
    """A sparse tensor has no tangent to look for: unpacking one raised "Cannot access storage of
    SparseTensorImpl" before the dispatcher could say that the op has no sparse kernel."""
    x = torch.randn(1, 4, 3, 3).to_sparse()
    for call in (lambda: ops.local_response_norm(x, 3), lambda: torch.ops.classicnets_ext.lrn(x, 3, 1e-4, 0.75, 1.0),
                 lambda: ops.max_pool2d(x, 2)):
        with pytest.raises(NotImplementedError, match="'SparseCPU' backend"):
            call()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_integer_input_behaves_as_torch(device):
    """Non-floating inputs go to torch whatever the backend: on the CPU torch normalises int64 (into float32)
    and rejects the other integer dtypes; ops.local_response_norm and the module do exactly the same."""
    backends = [None] + [b for b in classicnets_ext.available_backends() if backend_device(b) == device]
    for x in [*integer_inputs((2, 6, 3, 4), device), *integer_inputs((2, 6, 5), device)]:
        for backend in backends:
            with classicnets_ext.use_backend(backend or classicnets_ext.get_backend()):
                assert_same_as_torch(lambda: ops.local_response_norm(x, 3, 1e-2, 0.75, 2.0),
                                     lambda: F.local_response_norm(x, 3, 1e-2, 0.75, 2.0))
                ours, theirs = classicnets_ext.nn.LocalResponseNorm(3), torch.nn.LocalResponseNorm(3)
                assert_same_as_torch(lambda: ours(x), lambda: theirs(x))


@pytest.mark.parametrize("backend", BACKEND_PARAMS[:2])
def test_cpp_op_rejects_bad_arguments_without_crashing(backend, request):
    """Calling torch.ops directly skips the Python checks: the C++ checks must still raise cleanly, on either
    device, before any device code runs. On CUDA in a process of its own (ran_isolated)."""
    if ran_isolated(request, backend_device(backend)):
        return
    x = torch.randn(2, 4, 3, 3, device=backend_device(backend))
    for dtype in (torch.int64, torch.int32, torch.uint8, torch.bool, torch.float8_e4m3fn):
        with pytest.raises(TypeError, match="input"):
            torch.ops.classicnets_ext.lrn(x.to(dtype), 3)
        with pytest.raises(TypeError, match="input"):
            torch.ops.classicnets_ext.lrn_backward(x, x.to(dtype), 3, 1e-4, 0.75, 1.0)
    with pytest.raises(TypeError, match="grad_output"):
        torch.ops.classicnets_ext.lrn_backward(x.long(), x, 3, 1e-4, 0.75, 1.0)
    with pytest.raises(ValueError, match="input"):
        torch.ops.classicnets_ext.lrn(x[0, 0], 3)
    with pytest.raises(ValueError, match="size"):
        torch.ops.classicnets_ext.lrn(x, 0)
    with pytest.raises(ValueError, match="grad_output"):
        torch.ops.classicnets_ext.lrn_backward(x[:1], x, 3, 1e-4, 0.75, 1.0)


def test_autocast_returns_torchs_dtype():
    # torch's LRN composite runs avg_pool3d, which CPU autocast computes in fp32 (tests/test_autocast.py: all cases)
    x = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.local_response_norm(x, 5)
        y_half = ops.local_response_norm(x.bfloat16(), 5)
        assert y_half.dtype == F.local_response_norm(x.bfloat16(), 5).dtype == torch.float32
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.local_response_norm(x, 5))


def test_module_is_a_drop_in():
    ours = classicnets_ext.nn.LocalResponseNorm(5, alpha=2e-4, beta=0.7, k=2.0)
    theirs = torch.nn.LocalResponseNorm(5, alpha=2e-4, beta=0.7, k=2.0)
    assert isinstance(ours, torch.nn.LocalResponseNorm)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict() == theirs.state_dict() == {}
    x = torch.randn(2, 10, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x))


def test_convert_swaps_modules_in_place():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.LocalResponseNorm(3), torch.nn.ReLU())
    x = torch.randn(1, 3, 7, 7)
    expected = model(x)
    norm = model[1]
    assert classicnets_ext.convert(model) is model
    assert type(model[1]) is classicnets_ext.nn.LocalResponseNorm and model[1] is norm
    torch.testing.assert_close(model(x), expected)


def test_every_cpu_instruction_set_gives_the_same_answers():
    """The baseline (non-AVX) build of the CPU kernels, forced through ATEN_CPU_CAPABILITY=default."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    code = (
        "import torch, torch.nn.functional as F, classicnets_ext\n"
        "from classicnets_ext import _extension, ops\n"
        "assert _extension.build_info()['cpu_capability'] == 'default', _extension.build_info()\n"
        "for layout in ('cf', 'cl'):\n"
        "    for beta in (0.75, 0.5):\n"
        "        x = torch.randn(2, 13, 5, 7, dtype=torch.float64)\n"
        "        if layout == 'cl': x = x.contiguous(memory_format=torch.channels_last)\n"
        "        x.requires_grad_()\n"
        "        y = ops.local_response_norm(x.float(), 5, 0.5, beta, 1.0)\n"
        "        ref = F.local_response_norm(x, 5, 0.5, beta, 1.0)\n"
        "        torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)\n"
        "        g = torch.randn_like(ref)\n"
        "        dx = torch.ops.classicnets_ext.lrn_backward(g.float(), x.detach().float(), 5, 0.5, beta, 1.0)\n"
        "        torch.testing.assert_close(dx.double(), torch.autograd.grad(ref, x, g)[0], atol=3e-5, rtol=3e-5)\n"
        "print('ok')\n"
    )
    assert_runs_with_cpu_capability(code)


@pytest.mark.parametrize("capability", ["avx2", "avx512"])
def test_channels_last_gives_the_channels_first_bits(capability):
    """The channels-last float forward and backward sum shifted, masked loads of each row (AVX2/AVX-512, windows
    up to 16) in the channels-first kernels' order, the backward's t through row buffers one row behind: the two
    layouts agree bit for bit, for rows that end inside, at and just past a vector, windows reaching over both
    ends of a row, and tasks of one to many rows (the backward's pipeline drains at a task's end: a task of one
    row after one of two, the 16384-channel case, on a machine of two threads or more)."""
    code = (
        "import torch, classicnets_ext\n"
        "from classicnets_ext import _extension, ops\n"
        f"assert _extension.build_info()['cpu_capability'] == {capability!r}, _extension.build_info()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "cl_of = lambda t: t.contiguous(memory_format=torch.channels_last)\n"
        "def agree(shape, size):\n"
        "    x = torch.randn(*shape, generator=g) * 4\n"
        "    grad = torch.randn(*shape, generator=g)\n"
        "    cf = ops.local_response_norm(x, size, 0.1, 0.75, 1.0)\n"
        "    cl = ops.local_response_norm(cl_of(x), size, 0.1, 0.75, 1.0)\n"
        "    assert cl.is_contiguous(memory_format=torch.channels_last)\n"
        "    assert torch.equal(cf, cl), (size, shape, (cf - cl).abs().max())\n"
        "    dcf = torch.ops.classicnets_ext.lrn_backward(grad, x, size, 0.1, 0.75, 1.0)\n"
        "    dcl = torch.ops.classicnets_ext.lrn_backward(cl_of(grad), cl_of(x), size, 0.1, 0.75, 1.0)\n"
        "    assert dcl.is_contiguous(memory_format=torch.channels_last)\n"
        "    assert torch.equal(dcf, dcl), (size, shape, (dcf - dcl).abs().max())\n"
        "for C in (1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 96):\n"
        "    for size in (1, 2, 3, 5, 8, 9, 16):\n"
        "        for shape in ((2, C, 3, 5), (1, C, 1, 1), (1, C, 1, 2), (3, C, 17, 23)):\n"
        "            if shape[2] != 17 or size in (5, 9):\n"
        "                agree(shape, size)\n"
        # 3 rows of 16384 channels: ~32K elements a task makes tasks of 2 rows and 1 (on two threads or more)
        "agree((1, 16384, 1, 3), 5)\n"
        "print('ok')\n"
    )
    assert_runs_with_cpu_capability(code, capability)


@pytest.mark.parametrize("size", [5, 17])
def test_channels_first_forward_blocks_follow_the_threads_and_keep_the_bits(size):
    """The channels-first forward sums windows over blocks of whole planes, split as the thread count needs
    (planes over 256 columns; a block of any width, its last one ragged): every split gives the same bits and
    matches fp64 torch; windows up to 16 give those of the channels-last forward (over 16, the channels-last
    rows square before they add, where the columns fuse the multiply-add)."""
    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    try:
        for n in (1, 2, 3):
            x = torch.randn(n, 19, 23, 29, generator=g) * 3  # 667 columns: 1 to 3 blocks per plane
            outs = []
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                outs.append(ops.local_response_norm(x, size, 0.1, 0.75, 1.0))
            for y in outs[1:]:
                assert torch.equal(y, outs[0]), n
            if size <= 16:
                cl = ops.local_response_norm(x.contiguous(memory_format=torch.channels_last), size, 0.1, 0.75, 1.0)
                assert torch.equal(cl, outs[0]), n
            torch.testing.assert_close(outs[0].double(), reference(x.double(), size, 0.1, 0.75, 1.0),
                                       atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("size", [5, 16, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_first_backward_blocks_follow_the_threads_and_their_ring(size, dtype):
    """The channels-first backward takes blocks as wide as the threads allow, no wider than its ring's 160 KB
    (4096 columns for fp32 and size 5, 1280 for size 16, half that in fp64): every split of a plane gives the
    same bits and matches fp64 torch's gradient. 667 columns make 1 to 3 blocks per plane; 4355 columns are
    over every cap, so even one thread splits the plane, its last block ragged."""
    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(1)
    try:
        for n, c, h, w in [(1, 19, 23, 29), (2, 19, 23, 29), (3, 19, 23, 29), (1, 21, 65, 67)]:
            x = (torch.randn(n, c, h, w, generator=g) * 3).to(dtype)
            grad = torch.randn(n, c, h, w, generator=g).to(dtype)
            outs = []
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                outs.append(torch.ops.classicnets_ext.lrn_backward(grad, x, size, 0.1, 0.75, 1.0))
            for dx in outs[1:]:
                assert torch.equal(dx, outs[0]), (n, h, w)
            xd = x.double().requires_grad_()
            want, = torch.autograd.grad(reference(xd, size, 0.1, 0.75, 1.0), xd, grad.double())
            torch.testing.assert_close(outs[0].double(), want, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


@requires_cuda
def test_cuda_matches_cpu_on_network_shapes():
    """The CUDA kernels on AlexNet / GoogLeNet shapes, both layouts, against our CPU kernel."""
    for shape in [(2, 96, 55, 55), (2, 64, 56, 56), (2, 192, 56, 56)]:
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(shape).contiguous(memory_format=fmt)
            g = torch.randn(shape)
            with classicnets_ext.use_backend("cpu"):
                y_cpu = ops.local_response_norm(x, 5, 1e-4, 0.75, 2.0)
            y = torch.ops.classicnets_ext.lrn(x.cuda(), 5, 1e-4, 0.75, 2.0)
            torch.testing.assert_close(y.cpu(), y_cpu, atol=1e-5, rtol=1e-5)
            dx = torch.ops.classicnets_ext.lrn_backward(g.cuda(), x.cuda(), 5, 1e-4, 0.75, 2.0)
            dx_cpu = torch.ops.classicnets_ext.lrn_backward(g, x, 5, 1e-4, 0.75, 2.0)
            torch.testing.assert_close(dx.cpu(), dx_cpu, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_negative_scale_with_integer_beta_is_finite_as_in_torch(backend):
    """s < 0 (k < 0) with an integer beta: pow is finite there (Triton's exp2(log2) once gave NaN)."""
    device = backend_device(backend)
    x = make_input((2, 6, 3, 3), "contiguous", torch.float32, device).detach()
    for beta in (1.0, 2.0):
        x64 = x.double().requires_grad_()
        ref = reference(x64, 3, 1e-3, beta, -2.0)
        xr = x.clone().requires_grad_()
        y = run(backend, xr, 3, 1e-3, beta, -2.0)
        assert torch.isfinite(ref).all() and torch.isfinite(y).all()
        torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(x)
        (dx,) = torch.autograd.grad(y, xr, g)
        (dx64,) = torch.autograd.grad(ref, x64, g.double())
        torch.testing.assert_close(dx.double(), dx64, atol=3e-5, rtol=3e-5)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_beta_zero_backward_has_no_nan(backend):
    """beta = 0: the scale does not depend on x, so dx = grad exactly, also where s = 0 (k = 0 over a window of
    zeros, where t = 0/0): the kernels once spread that NaN to the neighbouring channels."""
    device = backend_device(backend)
    for layout in ("contiguous", "channels_last"):
        x = make_input((1, 7, 2, 3), layout, torch.float32, device).detach()
        x[:, 2:5] = 0.0
        x64 = x.double().requires_grad_()
        ref = reference(x64, 3, 0.5, 0.0, 0.0)
        xr = x.clone().requires_grad_()
        y = run(backend, xr, 3, 0.5, 0.0, 0.0)
        torch.testing.assert_close(y.double(), ref)
        g = torch.randn_like(x)
        (dx,) = torch.autograd.grad(y, xr, g)
        (dx64,) = torch.autograd.grad(ref, x64, g.double())
        assert torch.isfinite(dx).all()
        torch.testing.assert_close(dx.double(), dx64)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_non_finite_input_with_alpha_or_beta_zero_gives_torchs_gradient(backend):
    """beta = 0: torch's gradient is g except NaN where x is Inf or NaN (x^2's own backward, 2x * 0); the
    kernels gave g there. alpha = 0: s = k + 0 * Inf is NaN, and torch spreads it over the transposed window."""
    device = backend_device(backend)
    for alpha, beta, k in ((0.5, 0.0, 1.0), (0.0, 0.75, 1.0), (0.0, 0.75, 2.0), (0.0, 0.0, 1.0), (0.5, 0.0, 0.0)):
        for bad in (float("nan"), float("inf")):
            for layout in ("contiguous", "channels_last"):
                x = make_input((1, 9, 2, 2), layout, torch.float32, device).detach()
                x[0, 4, 1, 0] = bad
                g = make_input((1, 9, 2, 2), layout, torch.float32, device, seed=1)
                x64 = x.double().requires_grad_()
                ref = reference(x64, 3, alpha, beta, k)
                (dx64,) = torch.autograd.grad(ref, x64, g.double())
                xr = x.clone().requires_grad_()
                y = run(backend, xr, 3, alpha, beta, k)
                (dx,) = torch.autograd.grad(y, xr, g)
                torch.testing.assert_close(y.double(), ref, equal_nan=True, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(dx.double(), dx64, equal_nan=True, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_infinite_window_sum_with_beta_over_1_gives_the_finite_limit(backend):
    """The one documented difference from torch (lrn_math.h): an Inf in channel 2 makes s_2 and s_3 infinite.
    torch's x / s^beta differentiates to inf * 0 = NaN for channel 3's gradient when beta > 1; channel 3's input
    is finite, and its gradient is the limit in which s_3's window contributes nothing (t_3 = 0). The
    channels whose gradient reads x_2 itself stay NaN, as torch's."""
    device = backend_device(backend)
    alpha, beta, k, size = 1e4, 2.5, 1.0, 2
    x = torch.tensor([1.0, 2.0, float("inf"), 3.0, 0.5], dtype=torch.float64, device=device).view(1, 5, 1, 1)
    xr = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(run(backend, xr, size, alpha, beta, k).sum(), xr)
    x64 = x.clone().requires_grad_()
    (dx_torch,) = torch.autograd.grad(reference(x64, size, alpha, beta, k).sum(), x64)
    dx, dx_torch = dx.flatten().cpu(), dx_torch.flatten().cpu()
    assert dx[1:3].isnan().all() and dx_torch[1:4].isnan().all()
    torch.testing.assert_close(dx[[0, 4]], dx_torch[[0, 4]])
    s4 = k + alpha / size * (3.0 ** 2 + 0.5 ** 2)
    t4 = 0.5 * s4 ** -beta / s4
    torch.testing.assert_close(dx[3].item(), -2 * alpha * beta / size * 3.0 * t4, rtol=1e-12, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_huge_values_do_not_cancel(backend, layout):
    """A running window sum cancels: after x^2 = 1e36 (or a t of 1e25) leaves it, the small terms are gone
    (the kernels' running sums for windows over 16 gave NaN after 1e15 at size 17). Every window is summed
    directly in every kernel: exact to fp32 rounding next to huge values, at every size."""
    device = backend_device(backend)
    x = make_input((1, 40, 2, 2), layout, torch.float32, device).detach()
    x[0, 1] = 1e18
    g = make_input((1, 40, 2, 2), layout, torch.float32, device, seed=1).detach()
    g[0, 3] = 1e25
    for size in (3, 5, 17, 33):
        x64 = x.double().requires_grad_()
        ref = reference(x64, size, 0.5, 0.75, 1.0)
        xr = x.clone().requires_grad_()
        y = run(backend, xr, size, 0.5, 0.75, 1.0)
        torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
        (dx,) = torch.autograd.grad(y, xr, g)
        (dx64,) = torch.autograd.grad(ref, x64, g.double())
        torch.testing.assert_close(dx.double(), dx64, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_wide_window_after_a_large_channel_matches_torch(backend, layout):
    """The report: ones with one channel of 1e15 (or 1e3), size 17 -- torch gives 0.5946 after the large
    channel has left the window; the running sum gave NaN (1e15) and a 1e-2 relative error (1e3)."""
    device = backend_device(backend)
    for big in (1e15, 1e3):
        x = torch.ones(1, 40, 1, 1)
        x[0, 0] = big
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        ref = F.local_response_norm(x.double(), 17, 1.0, 0.75, 1.0)
        y = run(backend, x.to(device), 17, 1.0, 0.75, 1.0).cpu()
        torch.testing.assert_close(y.double(), ref, atol=1e-6, rtol=1e-6)


def whole_channel_lrn(x, size, alpha, beta, k):
    """LRN whose window, clipped to the C channels, covers all of them (size >= 2C - 1): every channel is
    normalised by the same sum of squares."""
    return x * (k + alpha / size * x.pow(2).sum(1, keepdim=True)).pow(-beta)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_any_size_runs_in_time_and_memory_bounded_by_the_channels(backend, layout):
    """torch takes any size >= 1. The kernels' scratch and loops once grew with the size itself: a size of 2^31
    allocated two 8 GiB rows in the channels-last CPU kernel (the process was killed), 2^40 ran for minutes in
    the CPU backward and overflowed the Triton kernels' int32 constants. Every size from 2C - 1 up, where the
    clipped window covers all C channels, must give that window's answer, alpha / size weighting the sum."""
    device = backend_device(backend)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for size in (5, 6, 2**31 + 5, 2**40):
        alpha = 1e-4 * size  # a weight alpha / size that matters
        xr = x.detach().requires_grad_()
        y = run(backend, xr, size, alpha, 0.75, 1.0)
        x64 = x.detach().cpu().requires_grad_()
        ref = whole_channel_lrn(x64, size, alpha, 0.75, 1.0)
        torch.testing.assert_close(y.cpu(), ref.detach(), atol=1e-12, rtol=1e-12)
        g = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, xr, g)
        torch.testing.assert_close(dx.cpu(), torch.autograd.grad(ref, x64, g.cpu())[0], atol=1e-11, rtol=1e-11)


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="triton backend not available")
def test_triton_64bit_channel_offsets(monkeypatch):
    """A channels-first sample of 2^31 elements needs c * stride in 64 bits (too big to test here: the kernels'
    64-bit path is forced on a small input and must give the same answers)."""
    from classicnets_ext.triton_kernels import lrn as triton_lrn

    monkeypatch.setattr(triton_lrn, "_channel_offsets_need_int64", lambda C, S, channels_last: True)
    assert triton_lrn._problem(torch.zeros(1, 2, 3, 3), 3, 1e-4, 0.75, 1.0)[-1]["IDX64"]
    device = backend_device("triton")
    x = make_input((2, 7, 3, 3), "contiguous", torch.float32, device).requires_grad_()
    y = run("triton", x, 5, 0.5, 0.75, 1.0)
    x64 = x.detach().double().requires_grad_()
    ref = reference(x64, 5, 0.5, 0.75, 1.0)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(x)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0].double(), torch.autograd.grad(ref, x64, g.double())[0],
                               atol=3e-5, rtol=3e-5)


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="triton backend not available")
def test_triton_channel_offsets_need_int64_at_its_boundary():
    """The rule itself (the test above forces it on): channels-first, S > 1 and C * S >= 2^31."""
    from classicnets_ext.triton_kernels import lrn as triton_lrn

    need = triton_lrn._channel_offsets_need_int64
    assert need(2, 2**30, False) is True  # C * S = 2^31 exactly
    assert need(2**16, 2**15, False) is True
    assert need(3, 2**31, False) is True
    assert need(1, 2**31 - 1, False) is False  # one short
    assert need(2, 2**30 - 1, False) is False
    assert need(7, 9, False) is False
    assert need(2, 2**30, True) is False  # channels-last: the channel stride is 1
    assert need(2**31, 1, False) is False  # S = 1: the channel stride is 1
    assert need(2**32, 1, False) is False
    assert need(2**31, 2, False) is True


@requires_cuda
@pytest.mark.parametrize("case", [
    # (shape, size, channels_last): the column backward's ring in shared memory past 48 KB (opt-in), in
    # global memory (past the opt-in limit), and the channels-last row fallback (C > 4096 in fp32)
    ((1, 400, 3, 5), 399, False),
    ((1, 13000, 2, 2), 12001, False),
    ((1, 4200, 2, 3), 5, True),
], ids=["optin-smem-ring", "global-ring", "channels-last-row-fallback"])
def test_cuda_large_window_and_wide_row_paths(case):
    """The CUDA C++ paths no network shape reaches, against torch in float64 (the emulator covers their
    logic on the CPU: tests/test_cuda_emu.py)."""
    shape, size, channels_last = case
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape, dtype=torch.float64)
    x64 = x.clone().requires_grad_()
    ref = F.local_response_norm(x64, size, 0.5, 0.75, 1.0)
    (ref_dx,) = torch.autograd.grad(ref, x64, g)
    xc = x.float().cuda()
    y = torch.ops.classicnets_ext.lrn(xc, size, 0.5, 0.75, 1.0)
    dx = torch.ops.classicnets_ext.lrn_backward(g.float().cuda(), xc, size, 0.5, 0.75, 1.0)
    torch.testing.assert_close(y.cpu().double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx.cpu().double(), ref_dx, atol=3e-5, rtol=3e-5)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_half_precision_whole_vectors_match_torch_on_every_instruction_set(capability):
    """bf16 and fp16 are normalised in float: a whole vector converts with the instruction set's own conversion
    (common/cpu_vec.h), a partial one element by element. Channel counts and widths that take both, in both
    layouts, forward and backward, against torch's LRN in float rounded to the dtype. Channels-last rows of
    several positions run through the widened-row ring (DirectRows' WideRows); beta 0.75 and an even window
    with another beta take its two compiled instances."""
    assert_half_precision_matches_float(
        capability,
        [("ops.local_response_norm(t, 5, 1e-2, 0.75, 2.0)", "F.local_response_norm(t, 5, 1e-2, 0.75, 2.0)"),
         ("ops.local_response_norm(t, 4, 1e-2, 0.6, 1.0)", "F.local_response_norm(t, 4, 1e-2, 0.6, 1.0)")],
        shapes=((2, 37, 5, 19), (1, 64, 3, 16)))


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_half_precision_results_round_to_nearest_on_every_instruction_set(capability):
    """A float result becomes bf16 / fp16 rounded to nearest even, as torch's ``.to(dtype)``: against torch's
    LRN in float, each element is within half a unit in the last place (up to the two float computations'
    own difference; for |values| under 2^-6, of 2^-6, where a backward's cancellation leaves the float
    results' difference larger than such a value's unit), and only one whose two float values straddle a
    rounding boundary differs from the rounded reference -- under 0.1% here (the test allows 1%). A conversion
    that truncates (bf16: the float's top 16 bits) is off by up to a whole unit in half of them, which
    assert_close's bf16 tolerance lets through. LRN forward and backward, the fused op's forward (its backward
    rounds the pooled gradient before max-pool sums it), both layouts, whole vectors and partial ones."""
    assert_runs_with_cpu_capability(
        "import torch, torch.nn.functional as F\n"
        "from classicnets_ext import ops\n"
        "torch.manual_seed(0)\n"
        "def rounded(got, ref):\n"
        "    ulp = torch.finfo(got.dtype).eps * torch.exp2(ref.abs().clamp_min(2 ** -6).log2().floor())\n"
        "    ulps = (got.float() - ref).abs() / ulp\n"
        "    differ = (got != ref.to(got.dtype)).float().mean()\n"
        "    assert ulps.max() <= 0.55 and differ < 1e-2, (got.dtype, ulps.max().item(), differ.item())\n"
        "for dt in (torch.bfloat16, torch.float16):\n"
        "    for cl in (False, True):\n"
        "        x = torch.randn(4, 32, 13, 13).to(dt)\n"
        "        x = x.contiguous(memory_format=torch.channels_last) if cl else x\n"
        "        xg, xr = x.clone().requires_grad_(), x.float().requires_grad_()\n"
        "        y, r = ops.local_response_norm(xg, 5, 1.0, 0.75, 2.0), F.local_response_norm(xr, 5, 1.0, 0.75, 2.0)\n"
        "        rounded(y.detach(), r.detach())\n"
        "        g = torch.randn(y.shape).to(dt)\n"
        "        y.backward(g)\n"
        "        r.backward(g.float())\n"
        "        rounded(xg.grad, xr.grad)\n"
        "        fused = ops.max_pool2d_lrn(x, 3, 1, 1, size=5, alpha=1.0, k=2.0, relu=True)\n"
        "        pooled = F.max_pool2d(F.relu(x.float()), 3, 1, 1)\n"
        "        rounded(fused, F.local_response_norm(pooled, 5, 1.0, 0.75, 2.0))\n"
        "print('ok')\n", capability)


def test_alpha_beta_k_that_are_not_numbers_are_named():
    """alpha=None gave float()'s message, which names no argument, and alpha="1" was parsed where torch raises."""
    x = torch.randn(1, 4, 2, 2)
    for name in ("alpha", "beta", "k"):
        for bad in (None, "1"):
            kwargs = {name: bad}
            with pytest.raises(TypeError, match=f"argument '{name}' must be a real number"):
                ops.local_response_norm(x, 3, **kwargs)
            with pytest.raises(TypeError, match=f"argument '{name}' must be a real number"):
                ops.max_pool2d_lrn(x, 2, size=3, **kwargs)
        # a tensor of several elements broadcasts, in torch's composite (test_per_channel_alpha_beta_or_k_...)
        kwargs = {name: torch.full((2,), 0.5)}
        torch.testing.assert_close(ops.local_response_norm(x, 3, **kwargs), F.local_response_norm(x, 3, **kwargs))
    # what torch's composite takes: ints, bools and one-element tensors
    torch.testing.assert_close(ops.local_response_norm(x, 3, 1, torch.tensor(0.5), True),
                               F.local_response_norm(x, 3, 1, 0.5, 1.0))
