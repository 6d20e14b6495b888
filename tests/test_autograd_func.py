"""Higher-order and functional derivatives of LRN, max-pool and the fused pool->LRN, against torch's own ops:
double backward (gradgradcheck, the issue's examples, a gradient-penalty model), ``torch.func`` grad / vjp /
jacrev / hessian, forward-mode AD (``torch.func.jvp``, dual tensors, gradcheck's forward-AD checks) and
vmap through the registered rules (no per-sample fallback). All in fp64 on tiny tensors, on every backend
of ours that runs here (Triton interpreted on CPU tensors without a GPU).
"""
import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils._python_dispatch import TorchDispatchMode

import classicnets_ext
from classicnets_ext import ops, reference
from classicnets_ext._autograd import _core
from _helpers import backend_params, count_eager
from conftest import HAS_CUDA, backend_device

BACKENDS = [p for p in backend_params("max_pool2d_lrn", "csrc/pool_lrn/") if p.values[0] in ("cpu", "cuda", "triton")]

# name -> (ours, torch's): alpha is large so that LRN's nonlinearity carries weight in every derivative.
OPS = {
    "max_pool2d": (lambda t: ops.max_pool2d(t, 3, 2, 1),
                   lambda t: F.max_pool2d(t, 3, 2, 1)),
    "max_pool2d_dilated_ceil": (lambda t: ops.max_pool2d(t, 2, 2, 1, 2, ceil_mode=True),
                                lambda t: F.max_pool2d(t, 2, 2, 1, 2, ceil_mode=True)),
    "lrn": (lambda t: ops.local_response_norm(t, 3, 0.5, 0.75, 1.0),
            lambda t: F.local_response_norm(t, 3, 0.5, 0.75, 1.0)),
    # alpha = 0: the scale is k alone, a branch of its own in every derivative (k != 1 so that k^-beta shows)
    "lrn_alpha0": (lambda t: ops.local_response_norm(t, 3, 0.0, 0.75, 2.0),
                   lambda t: F.local_response_norm(t, 3, 0.0, 0.75, 2.0)),
    "max_pool2d_lrn": (lambda t: ops.max_pool2d_lrn(t, 3, 2, 1, size=3, alpha=0.5),
                       lambda t: reference.max_pool2d_lrn(t, 3, 2, 1, size=3, alpha=0.5)),
    "max_pool2d_lrn_relu_ceil": (lambda t: ops.max_pool2d_lrn(t, 2, 2, 0, True, 4, 0.5, 0.6, 2.0, relu=True),
                                 lambda t: reference.max_pool2d_lrn(t, 2, 2, 0, True, 4, 0.5, 0.6, 2.0, relu=True)),
}
LAYOUTS = ["contiguous", "channels_last", "3d"]


def _input(layout, device, seed=0, shape=(2, 4, 5, 6)):
    """Distinct values 4/numel apart in [-2, 2) (max-pool is differentiable there; some negative for ReLU), in
    ``layout``: "3d" drops N (for LRN, a (N, C, L) input)."""
    if layout == "3d":
        shape = shape[1:]
    n = torch.Size(shape).numel()
    x = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)).double() * (4 / n) - 2).view(shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device)


# Triton without a GPU runs interpreted (slowly): there, a subset -- the same Python derivatives serve every
# backend, only the kernels they call differ -- keeps the file within its CI budget.
_INTERPRETED = not HAS_CUDA
_INTERPRETED_OPS = ("max_pool2d", "lrn", "max_pool2d_lrn_relu_ceil")


def _cases(op_names=OPS, layouts=LAYOUTS, interpreted_ops=_INTERPRETED_OPS, interpreted_layouts=("contiguous",)):
    cases = []
    for b in BACKENDS:
        backend = b.values[0]
        subset = backend == "triton" and _INTERPRETED
        for name in op_names:
            for layout in layouts:
                if subset and (name not in interpreted_ops or layout not in interpreted_layouts):
                    continue
                cases.append(pytest.param(backend, name, layout, id=f"{b.id}-{name}-{layout}", marks=b.marks))
    return cases


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------------------------------ double backward

def _ours_and_theirs(backend, name, layout, run):
    """[run(ours, x), run(theirs, x)] for OPS[name], each on its own leaf copy x of the input, under ``backend``."""
    x = _input(layout, backend_device(backend))
    results = []
    for fn in OPS[name]:
        with classicnets_ext.use_backend(backend):
            results.append(run(fn, x.clone().requires_grad_()))
    return results


@pytest.mark.parametrize("backend, name, layout", _cases())
def test_double_backward_matches_torch(backend, name, layout):
    """The issue's example: the gradient of a gradient's norm, here for every op and layout."""
    def run(fn, xr):
        g, = torch.autograd.grad(fn(xr).pow(2).sum(), xr, create_graph=True)
        return g, torch.autograd.grad(g.pow(2).sum(), xr)[0]

    (g, gg), (g_ref, gg_ref) = _ours_and_theirs(backend, name, layout, run)
    _close(g, g_ref)
    _close(gg, gg_ref)
    assert gg.abs().sum() > 0


@pytest.mark.parametrize("backend, name, layout", _cases(["max_pool2d", "lrn", "max_pool2d_lrn"],
                                                           ["contiguous", "channels_last"], ["max_pool2d"]))
def test_is_grads_batched_matches_torch(backend, name, layout):
    """``autograd.grad(..., is_grads_batched=True)`` runs the backward under the legacy vmap, on BatchedTensors:
    a channels-last input's gradient raised there ("NYI: querying is_contiguous inside of vmap") when the
    backward asked for its layout."""
    def run(fn, xr):
        y = fn(xr)
        v = torch.randn((3, *y.shape), generator=torch.Generator().manual_seed(0), dtype=y.dtype).to(y.device)
        return torch.autograd.grad(y, xr, v, is_grads_batched=True)[0]

    _close(*_ours_and_theirs(backend, name, layout, run))


@pytest.mark.parametrize("backend, name, layout",
                         _cases(["max_pool2d", "lrn", "max_pool2d_lrn_relu_ceil"], ["contiguous", "channels_last"],
                                ["max_pool2d_lrn_relu_ceil"])
                         + _cases(["max_pool2d_dilated_ceil", "max_pool2d_lrn"], ["3d"], ()))
def test_gradgradcheck(backend, name, layout):
    """Second derivatives, reverse over reverse and forward over reverse, and first derivatives in both
    modes, against finite differences (fast mode: along random directions, to fit the CI budget)."""
    ours, _ = OPS[name]
    x = _input(layout, backend_device(backend), shape=(1, 3, 5, 5)).requires_grad_()
    with classicnets_ext.use_backend(backend):
        assert torch.autograd.gradcheck(ours, (x,), check_forward_ad=True, fast_mode=True)
        assert torch.autograd.gradgradcheck(ours, (x,), check_fwd_over_rev=True, fast_mode=True)


class _PenaltyModel(torch.nn.Module):
    """conv -> op -> conv, trained on its loss plus the squared norm of d(output)/d(input)."""

    def __init__(self, op):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1).double()
        self.conv2 = torch.nn.Conv2d(4, 2, 1).double()
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen, dtype=torch.double) * 0.5
        self.op = op

    def forward(self, x):
        return self.conv2(self.op(self.conv1(x)))


@pytest.mark.parametrize("backend, name, layout", _cases(_INTERPRETED_OPS, ["contiguous"]))
def test_gradient_penalty_model_matches_torch(backend, name, layout):
    """Every parameter's gradient of loss + gradient penalty equals that of the same model on torch's ops
    (before: conv1's was wrong and conv2's None)."""
    device = backend_device(backend)
    x = torch.randn(2, 3, 6, 7, dtype=torch.double, generator=torch.Generator().manual_seed(1)).to(device)
    grads = []
    for fn in OPS[name]:
        model = _PenaltyModel(fn).to(device)
        xr = x.clone().requires_grad_()
        with classicnets_ext.use_backend(backend):
            out = model(xr)
            g, = torch.autograd.grad(out.sum(), xr, create_graph=True)
            loss = out.pow(2).mean() + g.pow(2).sum()
            loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    ours, theirs = grads
    assert all(v is not None for v in ours.values())
    for n in theirs:
        _close(ours[n], theirs[n])


# --------------------------------------------------------------------------------------------- torch.func

@pytest.mark.parametrize("backend, name, layout", _cases(layouts=["contiguous", "channels_last"]))
def test_func_grad_vjp_jacrev_match_torch(backend, name, layout):
    ours, theirs = OPS[name]
    x = _input(layout, backend_device(backend), shape=(1, 3, 4, 4))
    out = theirs(x)
    cot = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2)).to(out.device)
    with classicnets_ext.use_backend(backend):
        got = (torch.func.grad(lambda t: ours(t).pow(2).sum())(x),
               torch.func.vjp(ours, x)[1](cot)[0],
               torch.func.jacrev(ours)(x))
    want = (torch.func.grad(lambda t: theirs(t).pow(2).sum())(x),
            torch.func.vjp(theirs, x)[1](cot)[0],
            torch.func.jacrev(theirs)(x))
    for g, w in zip(got, want):
        _close(g, w)


@pytest.mark.parametrize("backend, name, layout",
                         _cases(_INTERPRETED_OPS, ["contiguous"], ["max_pool2d_lrn_relu_ceil"]))
def test_func_hessian_and_per_sample_grads_match_torch(backend, name, layout):
    """hessian = jacfwd(jacrev): the backward ops' tangents, under vmap; vmap(grad): per-sample gradients."""
    ours, theirs = OPS[name]
    x = _input(layout, backend_device(backend), shape=(2, 2, 4, 4))

    def loss(fn):
        return lambda t: fn(t).pow(3).sum()

    with classicnets_ext.use_backend(backend):
        hessian = torch.func.hessian(loss(ours))(x[:1])
        per_sample = torch.func.vmap(torch.func.grad(loss(ours)))(x.unsqueeze(1))
    _close(hessian, torch.func.hessian(loss(theirs))(x[:1]))
    _close(per_sample, torch.func.vmap(torch.func.grad(loss(theirs)))(x.unsqueeze(1)))


@pytest.mark.parametrize("backend, name, layout", _cases(_INTERPRETED_OPS, ["contiguous"], ()))
def test_func_nested_third_order_and_functionalize(backend, name, layout):
    """grad(grad(f)), a third-order reverse derivative (the derivatives' composites are differentiable), and
    torch.func.functionalize (which has no rule for autograd.Functions: the op runs as itself)."""
    ours, theirs = OPS[name]
    x = _input(layout, backend_device(backend), shape=(1, 3, 5, 5))

    def nested(fn):
        return torch.func.grad(lambda t: torch.func.grad(lambda u: fn(u).pow(3).sum())(t).pow(2).sum())(x)

    def third(fn):
        xr = x.clone().requires_grad_()
        g, = torch.autograd.grad(fn(xr).pow(3).sum(), xr, create_graph=True)
        h, = torch.autograd.grad(g.pow(2).sum(), xr, create_graph=True)
        return torch.autograd.grad(h.pow(2).sum(), xr)[0]

    with classicnets_ext.use_backend(backend):
        got = nested(ours), third(ours), torch.func.functionalize(ours)(x)
    for g, w in zip(got, (nested(theirs), third(theirs), theirs(x))):
        _close(g, w)


@pytest.mark.parametrize("backend, name, layout", _cases())
def test_jvp_matches_torch(backend, name, layout):
    """Forward-mode AD, through torch.func.jvp and through dual tensors: before, a zero tangent."""
    ours, theirs = OPS[name]
    device = backend_device(backend)
    x, t = _input(layout, device), _input(layout, device, seed=1)
    want = torch.func.jvp(theirs, (x,), (t,))
    with classicnets_ext.use_backend(backend):
        got = torch.func.jvp(ours, (x,), (t,))
        with fwAD.dual_level():
            dual = fwAD.unpack_dual(ours(fwAD.make_dual(x, t)))
    for g, w in zip(got, want):
        _close(g, w)
    _close(dual.primal, want[0])
    _close(dual.tangent, want[1])
    assert want[1].abs().sum() > 0


@pytest.mark.parametrize("backend, name, layout", _cases(layouts=["contiguous"]))
def test_reverse_over_forward_matches_torch(backend, name, layout):
    """grad of a jvp (a Hessian-vector product) and jacrev(jacfwd): under the inner jvp level the input reads
    requires_grad=False although the outer grad differentiates it. Max-pool decided from that flag not to save
    its argmax, and the outer backward raised "the backward needs the argmax"."""
    ours, theirs = OPS[name]
    device = backend_device(backend)
    x, t = _input(layout, device, shape=(1, 2, 4, 4)), _input(layout, device, seed=1, shape=(1, 2, 4, 4))

    def hvp(fn):
        return torch.func.grad(lambda z: torch.func.jvp(lambda w: fn(w).pow(2).sum(), (z,), (t,))[1])(x)

    def hessian(fn):
        return torch.func.jacrev(torch.func.jacfwd(lambda w: fn(w).pow(2).sum()))(x)

    with classicnets_ext.use_backend(backend):
        got = hvp(ours), hessian(ours)
    for g, w in zip(got, (hvp(theirs), hessian(theirs))):
        _close(g, w)
    assert got[0].abs().sum() > 0


@pytest.mark.parametrize("backend, name, layout", _cases(layouts=["contiguous"]))
def test_forward_over_forward_matches_torch(backend, name, layout):
    """jvp of jvp and jacfwd(jacfwd): torch runs a Function's jvp with forward grad off, so its tangent is a
    constant to an outer forward level -- the second derivative came back 0 (and max-pool's of x * x too).
    The public functions run torch's composite under two forward levels."""
    ours, theirs = OPS[name]
    device = backend_device(backend)
    shape = (1, 2, 4, 4)
    x, t, u = (_input(layout, device, seed=s, shape=shape) for s in range(3))

    def second(fn):
        # max-pool alone is piecewise linear, and LRN with alpha = 0 linear: their second derivatives are 0
        g = (lambda w: fn(w * w)) if name.startswith("max_pool2d") or name == "lrn_alpha0" else fn
        along = torch.func.jvp(lambda v: torch.func.jvp(g, (v,), (t,))[1], (x,), (u,))[1]
        return along, torch.func.jacfwd(torch.func.jacfwd(lambda w: g(w).pow(2).sum()))(x)

    with classicnets_ext.use_backend(backend):
        got = second(ours)
    for g, w in zip(got, second(theirs)):
        _close(g, w)
    assert got[0].abs().sum() > 0


def test_raw_ops_refuse_forward_over_forward():
    """A raw torch.ops call cannot fall back to a composite: it says so rather than answer 0."""
    x, t = _input("contiguous", "cpu"), _input("contiguous", "cpu", seed=1)

    def lrn(v):
        return torch.ops.classicnets_ext.lrn(v, 3, 0.5, 0.75, 1.0)

    with pytest.raises(NotImplementedError, match="forward-mode AD of forward-mode AD"):
        torch.func.jvp(lambda v: torch.func.jvp(lrn, (v,), (t,))[1], (x,), (t,))


@pytest.mark.parametrize("name", ["max_pool2d", "lrn", "max_pool2d_lrn", "linear"])
def test_compiled_dual_level_keeps_the_tangent(name):
    """A dual level opened inside compiled code: torch.compile enters it through torch._C, so forward_ad's
    Python record (which the ops read) said none was open while the graph ran, and the ops ran without their
    Function -- the tangent came back None. linear ran its kernel, whose autograd has no forward-mode rule."""
    if name == "linear":
        weight = torch.randn(1024, 600, generator=torch.Generator().manual_seed(0))  # large: ours, not F.linear
        x, t = torch.randn(4, 600), torch.randn(4, 600)
        fn, ref = (lambda v: ops.linear(v, weight)), (lambda v: F.linear(v, weight))
    else:
        fn, ref = OPS[name]
        x, t = _input("contiguous", "cpu"), _input("contiguous", "cpu", seed=1)

    def tangent(f):
        def g(v, tv):
            with fwAD.dual_level():
                return fwAD.unpack_dual(f(fwAD.make_dual(v, tv))).tangent
        return g

    want = tangent(ref)(x, t)
    for backend in ("eager", "aot_eager"):
        torch._dynamo.reset()
        got = torch.compile(tangent(fn), backend=backend, fullgraph=True)(x, t)
        assert got is not None, backend
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["lrn", "max_pool2d_lrn"])
def test_tensor_settings_keep_their_tangent_and_vmap(name):
    """A tensor alpha (or beta, k) runs torch's composite when it may be differentiated; only requires_grad was
    asked, so a jvp or a dual tangent of it was dropped (0, None) and vmap over it raised a TypeError."""
    x = _input("contiguous", "cpu")

    def run(impl, alpha, beta=torch.tensor(0.75, dtype=torch.float64)):
        if name == "lrn":
            return impl.local_response_norm(x, 3, alpha, beta, 1.0)
        return impl.max_pool2d_lrn(x, 3, 2, 1, size=3, alpha=alpha, beta=beta)

    alpha, ta = torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for impl in (ops, reference):
        got_jvp = torch.func.jvp(lambda a: run(impl, a).sum(), (alpha,), (ta,))[1]
        with fwAD.dual_level():
            got_dual = fwAD.unpack_dual(run(impl, fwAD.make_dual(alpha, ta)).sum()).tangent
        got_vmap = torch.func.vmap(lambda a, b: run(impl, a, b))(torch.tensor([0.3, 0.5], dtype=torch.float64),
                                                                 torch.tensor([0.6, 0.75], dtype=torch.float64))
        if impl is ops:
            ours = (got_jvp, got_dual, got_vmap)
    for g, w in zip(ours, (got_jvp, got_dual, got_vmap)):
        assert g is not None
        _close(g, w)
    assert got_jvp.abs() > 0


def test_lrn_derivatives_run_any_size_in_memory_bounded_by_the_channels():
    """The forward-mode and second-order derivatives padded the window to the full size: a size of 2^40 asked
    for terabytes (RuntimeError), 2e7 took 0.5 s and 620 MB on 16 elements. The window is clipped to the
    channels as the kernels' is, alpha/size kept: the same answer as size 2C - 1 with alpha scaled."""
    x, t = _input("contiguous", "cpu", shape=(1, 3, 2, 2)), _input("contiguous", "cpu", seed=1, shape=(1, 3, 2, 2))
    size = 2**40
    got = torch.func.jvp(lambda v: ops.local_response_norm(v, size, 1.0, 0.75, 1.0), (x,), (t,))[1]
    want = torch.func.jvp(lambda v: F.local_response_norm(v, 5, 5 / size, 0.75, 1.0), (x,), (t,))[1]
    _close(got, want)
    xr = x.clone().requires_grad_()
    g, = torch.autograd.grad(ops.local_response_norm(xr, size, 1.0, 0.75, 1.0).pow(2).sum(), xr, create_graph=True)
    gg, = torch.autograd.grad(g.sum(), xr)
    xr5 = x.clone().requires_grad_()
    g5, = torch.autograd.grad(F.local_response_norm(xr5, 5, 5 / size, 0.75, 1.0).pow(2).sum(), xr5,
                              create_graph=True)
    _close(gg, torch.autograd.grad(g5.sum(), xr5)[0])


@pytest.mark.parametrize("name", ["max_pool2d", "lrn", "max_pool2d_lrn"])
def test_compiled_func_grad_fullgraph_matches_eager(name):
    """torch.compile(torch.func.grad(f), fullgraph=True): Dynamo traces grad's body with an input that reads
    requires_grad=False; max-pool then ran without its argmax and the compile failed."""
    ours, theirs = OPS[name]
    x = _input("contiguous", "cpu", shape=(1, 3, 6, 6))
    torch._dynamo.reset()
    with classicnets_ext.use_backend("cpu"):
        got = torch.compile(torch.func.grad(lambda z: ours(z).pow(2).sum()), fullgraph=True, backend="aot_eager")(x)
    _close(got, torch.func.grad(lambda z: theirs(z).pow(2).sum())(x))


def test_vmap_alone_saves_no_argmax_and_grad_under_it_does():
    """A grad (or jvp) level may differentiate what it cannot see requiring grad, so max-pool saves its argmax
    there; vmap alone differentiates nothing, and saving made its inference 1.6x slower."""
    class Saves(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.flags = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.classicnets_ext.max_pool2d.default:
                self.flags.append(args[-1])
            return func(*args, **(kwargs or {}))

    x = _input("contiguous", "cpu", shape=(3, 2, 4, 6)).unsqueeze(1)
    with classicnets_ext.use_backend("cpu"):
        with Saves() as alone:
            torch.func.vmap(lambda z: ops.max_pool2d(z, 2))(x)
        with Saves() as graded:
            torch.func.vmap(torch.func.grad(lambda z: ops.max_pool2d(z, 2).sum()))(x)
    assert alone.flags == [False] and graded.flags == [True]


@pytest.mark.parametrize("backend, name, layout", _cases(["lrn", "max_pool2d_lrn"], ["contiguous"], ["lrn"]))
def test_batched_hessian_vector_products_match_torch(backend, name, layout):
    """``autograd.grad(gx, x, v, is_grads_batched=True)`` through a first-order gradient: the double backward
    runs on legacy BatchedTensors, which had no batching rule for the derivatives' flatten."""
    def run(fn, xr):
        y = fn(xr)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype).to(y.device)
        gx, = torch.autograd.grad(y, xr, gy, create_graph=True)
        v = torch.randn((3, *xr.shape), generator=torch.Generator().manual_seed(2), dtype=xr.dtype).to(xr.device)
        return torch.autograd.grad(gx, xr, v, is_grads_batched=True)[0]

    got, want = _ours_and_theirs(backend, name, layout, run)
    _close(got, want)
    assert want.abs().sum() > 0


def test_lrn_of_zero_channels_has_forward_and_second_derivatives():
    """C = 0: the derivatives' window sum unfolded size windows over size - 1 padded channels and raised."""
    x, t = torch.randn(2, 0, 4, 4, dtype=torch.double), torch.randn(2, 0, 4, 4, dtype=torch.double)
    with classicnets_ext.use_backend("cpu"):
        primal, tangent = torch.func.jvp(lambda z: ops.local_response_norm(z, 3, 1.0), (x,), (t,))
        xr = x.clone().requires_grad_()
        gy = torch.randn(2, 0, 4, 4, dtype=torch.double, requires_grad=True)
        gx, = torch.autograd.grad(ops.local_response_norm(xr, 3, 1.0), xr, gy, create_graph=True)
        second = torch.autograd.grad(gx.sum(), (xr, gy), materialize_grads=True)
    assert primal.shape == tangent.shape == gx.shape == x.shape
    assert [g.shape for g in second] == [x.shape, x.shape]


# --------------------------------------------------------------------------------------------------- vmap

@pytest.fixture
def no_vmap_fallback(capfd):
    """vmap must use the registered rules: the per-sample fallback raises (and would have warned)."""
    enabled = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(enabled)
    assert "performance drop" not in capfd.readouterr().err


def _batched(layout, device, in_dim):
    """Three samples of ``layout`` stacked along ``in_dim``; channels-last samples keep C innermost."""
    samples = [_input(layout, device, seed=s) for s in range(3)]
    x = torch.stack(samples)
    if layout == "channels_last":
        x = x.movedim(2, -1).contiguous().movedim(-1, 2)
    return x.movedim(0, in_dim), samples


@pytest.mark.parametrize("in_dim", [0, 1])
@pytest.mark.parametrize("backend, name, layout", _cases(interpreted_layouts=("contiguous", "channels_last")))
def test_vmap_uses_the_rule_and_matches_torch(no_vmap_fallback, backend, name, layout, in_dim):
    ours, theirs = OPS[name]
    x, samples = _batched(layout, backend_device(backend), in_dim)
    with classicnets_ext.use_backend(backend):
        got = torch.func.vmap(ours, in_dims=in_dim)(x)
    _close(got, torch.stack([theirs(s) for s in samples]))
    _close(got, torch.func.vmap(theirs, in_dims=in_dim)(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_of_indices_and_of_the_backward_ops(no_vmap_fallback, backend):
    """return_indices under vmap, and the backward ops vmapped over cotangents (jacrev's vmap(vjp)) and over
    argmax and grad together (vmap(grad))."""
    device = backend_device(backend)
    x, samples = _batched("contiguous", device, 0)
    with classicnets_ext.use_backend(backend):
        out, idx = torch.func.vmap(lambda t: ops.max_pool2d(t, 3, 2, 1, return_indices=True))(x)
        for name in ("max_pool2d", "lrn", "max_pool2d_lrn"):
            ours, theirs = OPS[name]
            _, vjp = torch.func.vjp(ours, samples[0])
            cots = torch.randn(3, *theirs(samples[0]).shape, dtype=x.dtype, device=device)
            _close(torch.func.vmap(vjp)(cots)[0], torch.func.vmap(torch.func.vjp(theirs, samples[0])[1])(cots)[0])
    want = [F.max_pool2d(s, 3, 2, 1, return_indices=True) for s in samples]
    _close(out, torch.stack([w[0] for w in want]))
    assert torch.equal(idx, torch.stack([w[1] for w in want]))


@pytest.mark.parametrize("backend, name, layout", _cases(_INTERPRETED_OPS, ["contiguous", "3d"]))
def test_autograd_through_vmap_matches_torch(no_vmap_fallback, backend, name, layout):
    """Autograd around vmap: a vmapped input does not report requires_grad to the ops' wrappers, so the rule
    itself must save what the backward needs (before: 'the backward needs the argmax')."""
    ours, theirs = OPS[name]
    x, _ = _batched(layout, backend_device(backend), 0)

    def loss(fn):
        return lambda t: torch.func.vmap(fn)(t).pow(2).sum()

    grads = []
    for fn in (ours, theirs):
        xr = x.clone().requires_grad_()
        with classicnets_ext.use_backend(backend):
            loss(fn)(xr).backward()
            grads.append((xr.grad, torch.func.grad(loss(fn))(x)))
    for g, w in zip(*grads):
        _close(g, w)


# ---- Eager calls past the dispatcher (_autograd/_core.py: _below_autograd; csrc/module.cpp, _launch.py) ----

def _count_direct(monkeypatch, names):
    """Wraps the registered direct entries of ``names`` to count the calls they served (did not decline)."""
    calls = {name: 0 for name in names}
    for name in names:
        packet = getattr(torch.ops.classicnets_ext, name)
        entry = _core._DIRECT[packet]

        def counted(*args, _name=name, _entry=entry):
            out = _entry(*args)
            calls[_name] += out is not None
            return out

        monkeypatch.setitem(_core._DIRECT, packet, counted)
        monkeypatch.setitem(_core._DIRECT, packet.default, counted)
    return calls


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="needs the triton backend")
def test_eager_triton_calls_run_their_launchers_directly_with_the_ops_results(monkeypatch):
    """Plain eager calls -- inference, and training's forward and backward -- run the launchers themselves,
    and give what the ops give through the dispatcher."""
    names = ("max_pool2d_lrn_triton", "max_pool2d_lrn_triton_backward")
    calls = _count_direct(monkeypatch, names)
    device = backend_device("triton")
    x = torch.randn(2, 8, 9, 9, device=device)
    args = ([3, 3], [2, 2], [1, 1], False, 5, 1e-2, 0.75, 1.0, True)
    with classicnets_ext.use_backend("triton"):
        with torch.no_grad():
            y = ops.max_pool2d_lrn(x, 3, 2, 1, size=5, alpha=1e-2, relu=True)
        assert calls == {names[0]: 1, names[1]: 0}
        torch.testing.assert_close(y, torch.ops.classicnets_ext.max_pool2d_lrn_triton(x, *args, False)[0],
                                   rtol=0, atol=0)
        xg = x.clone().requires_grad_()
        ops.max_pool2d_lrn(xg, 3, 2, 1, size=5, alpha=1e-2, relu=True).square().sum().backward()
        assert calls == {names[0]: 2, names[1]: 1}
    ref = x.clone().requires_grad_()
    F.local_response_norm(F.max_pool2d(F.relu(ref), 3, 2, 1), 5, 1e-2).square().sum().backward()
    torch.testing.assert_close(xg.grad, ref.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("triton" not in classicnets_ext.available_backends(), reason="needs the triton backend")
def test_watched_triton_calls_go_through_the_op(monkeypatch):
    """A dispatch mode (FLOP counters, fake tensors, make_fx), the profiler or a tensor subclass must see the
    op itself: there the launchers are not called directly. (Under a torch.func transform the op is seen where the
    transform meets it; the Function's forward and backward then run a level down on plain tensors, where a
    direct call is what the dispatcher would reach.)"""
    calls = _count_direct(monkeypatch, ("max_pool2d_triton", "max_pool2d_triton_backward"))
    x = torch.randn(1, 4, 6, 6, device=backend_device("triton"))
    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with classicnets_ext.use_backend("triton"):
        with Log(), torch.no_grad():
            ops.max_pool2d(x, 2)
        assert "classicnets_ext.max_pool2d_triton.default" in seen
        with torch.no_grad():
            ops.max_pool2d(torch.nn.Parameter(x), 2)
            with torch.profiler.profile() as prof:  # the profiler's op events come from the dispatcher
                ops.max_pool2d(x, 2)
        assert "classicnets_ext::max_pool2d_triton" in {e.name for e in prof.events()}
        assert calls == {"max_pool2d_triton": 0, "max_pool2d_triton_backward": 0}
        grad = torch.func.grad(lambda t: ops.max_pool2d(t, 2).square().sum())(x)
    torch.testing.assert_close(grad, torch.func.grad(lambda t: F.max_pool2d(t, 2).square().sum())(x))


needs_cpp = pytest.mark.skipif(not classicnets_ext._extension.available(), reason="needs the compiled extension")


@needs_cpp
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_CUDA or "cuda" not in classicnets_ext.available_backends(), reason="needs a GPU and _C built with CUDA"))])
def test_eager_cpp_calls_run_their_kernels_directly_with_the_ops_results(monkeypatch, device):
    """Plain eager calls of the C++ backend -- inference, training's forward and backward, a Parameter input,
    under autocast and inference_mode -- run the kernels through _C's one-call eager entries (the backward in
    their C++ nodes, past the direct entries too), and give exactly what the ops give through the dispatcher
    (and the gradient torch gives)."""
    names = ("max_pool2d", "max_pool2d_backward", "lrn", "lrn_backward", "max_pool2d_lrn", "max_pool2d_lrn_backward")
    calls = count_eager(monkeypatch, _count_direct(monkeypatch, names))
    monkeypatch.setattr(classicnets_ext._backend, "_default", device)  # (auto sends some CUDA calls to Triton)
    x = torch.randn(2, 8, 9, 9, device=device)
    with torch.no_grad():
        pooled = ops.max_pool2d(x, 3, 2, 1)
        normed = ops.local_response_norm(x, 5, 1e-2)
        fused = ops.max_pool2d_lrn(x, 3, 2, 1, size=5, alpha=1e-2, relu=True)
    # (the C++ ops' eager calls are _C.<op>_eager's: one C++ call, the backward in its C++ autograd node)
    assert calls == dict.fromkeys(calls, 0) | {"max_pool2d_eager": 1, "lrn_eager": 1, "max_pool2d_lrn_eager": 1}
    exact = {"rtol": 0, "atol": 0}
    torch.testing.assert_close(pooled, torch.ops.classicnets_ext.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1],
                                                                             False, False)[0], **exact)
    torch.testing.assert_close(normed, torch.ops.classicnets_ext.lrn(x, 5, 1e-2, 0.75, 1.0), **exact)
    torch.testing.assert_close(fused, torch.ops.classicnets_ext.max_pool2d_lrn(
        x, [3, 3], [2, 2], [1, 1], False, 5, 1e-2, 0.75, 1.0, True, False)[0], **exact)

    for fn, ref, forward, node in (
            (lambda t: ops.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1), "max_pool2d_eager",
             "MaxPool2dFunction"),
            (lambda t: ops.local_response_norm(t, 5, 1e-2), lambda t: F.local_response_norm(t, 5, 1e-2),
             "lrn_eager", "LRNFunction"),
            (lambda t: ops.max_pool2d_lrn(t, 3, 2, 1, size=5, alpha=1e-2, relu=True),
             lambda t: F.local_response_norm(F.max_pool2d(F.relu(t), 3, 2, 1), 5, 1e-2), "max_pool2d_lrn_eager",
             "MaxPool2dLRNFunction")):
        before = dict(calls)
        ours, theirs = x.clone().requires_grad_(), torch.nn.Parameter(x.clone())
        out = fn(ours)
        out.square().sum().backward()
        ref(theirs).square().sum().backward()
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)
        assert calls[forward] - before[forward] == 1 and node in out.grad_fn.name()  # the C++ node
        assert calls == calls | dict.fromkeys(names, 0)  # its backward ran the kernel itself
        with torch.no_grad():
            torch.testing.assert_close(fn(theirs), ref(x), rtol=1e-5, atol=1e-6)  # a Parameter is plain
        with torch.autocast(device, dtype=torch.bfloat16), torch.inference_mode():
            assert fn(x).dtype == ref(x).dtype
        assert calls[forward] - before[forward] == 3


@needs_cpp
def test_watched_cpp_calls_go_through_the_op(monkeypatch):
    """Where the dispatcher would run anything besides the backend kernel, the C++ direct entries decline and
    the op is dispatched: a dispatch mode (FLOP counters, fake tensors, make_fx) and the profiler see the op; a
    __torch_function__ subclass or mode, meta tensors and negative views get what the dispatcher gives them;
    a torch.func transform sees the op where it meets it. Arguments the entries cannot take (SymInts in a
    size) decline rather than raise, and errors keep their Python types."""
    names = ("max_pool2d", "max_pool2d_backward", "lrn")
    calls = count_eager(monkeypatch, _count_direct(monkeypatch, names))
    x = torch.randn(1, 4, 6, 6)
    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    class Traced(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(f"torch_function {func}")
            return super().__torch_function__(func, types, args, kwargs)

    with torch.no_grad():
        with Log():
            ops.max_pool2d(x, 2)
            ops.max_pool2d_lrn(x, 2, size=3)
        assert {"classicnets_ext.max_pool2d.default", "classicnets_ext.max_pool2d_lrn.default"} <= set(seen)
        with torch.profiler.profile() as prof:  # the profiler's op events come from the dispatcher
            ops.local_response_norm(x, 3)
            ops.max_pool2d_lrn(x, 2, size=3)
        assert {"classicnets_ext::lrn", "classicnets_ext::max_pool2d_lrn"} <= {e.name for e in prof.events()}
        seen.clear()
        _core._below_autograd(torch.ops.classicnets_ext.lrn.default, x.as_subclass(Traced), 3, 1e-4, 0.75, 1.0)
        assert "torch_function classicnets_ext.lrn.default" in seen
        assert ops.max_pool2d(torch.empty(1, 4, 6, 6, device="meta"), 2).shape == (1, 4, 3, 3)
        negative = torch._neg_view(x)
        assert negative.is_neg()
        torch.testing.assert_close(ops.local_response_norm(negative, 3), F.local_response_norm(-x, 3))
        assert calls == dict.fromkeys(calls, 0)

        entry = _core._DIRECT[torch.ops.classicnets_ext.max_pool2d_backward.default]
        indices = ops.max_pool2d(x, 2, return_indices=True)[1]  # int64: not the one-byte argmax the op takes
        symbolic = ShapeEnv().create_unbacked_symint()
        assert entry(torch.ones(1, 4, 3, 3), indices, [1, 4, symbolic, 6], [2, 2], [2, 2], [0, 0], [1, 1]) is None
        with pytest.raises(TypeError, match="argmax"):
            entry(torch.ones(1, 4, 3, 3), indices, [1, 4, 6, 6], [2, 2], [2, 2], [0, 0], [1, 1])
        with pytest.raises(TypeError, match="float32"):
            _core._DIRECT[torch.ops.classicnets_ext.lrn.default](x.long(), 3, 1e-4, 0.75, 1.0)
        with pytest.raises(ValueError, match="size"):
            _core._DIRECT[torch.ops.classicnets_ext.lrn.default](x, 0, 1e-4, 0.75, 1.0)
    x = x.detach()
    grad = torch.func.grad(lambda t: ops.max_pool2d(t, 2).square().sum())(x)
    torch.testing.assert_close(grad, torch.func.grad(lambda t: F.max_pool2d(t, 2).square().sum())(x))
    grad = torch.func.grad(lambda t: ops.max_pool2d_lrn(t, 2, size=3).square().sum())(x)
    torch.testing.assert_close(grad, torch.func.grad(
        lambda t: reference.max_pool2d_lrn(t, 2, 2, size=3).square().sum())(x))
    assert calls["max_pool2d_eager"] == calls["max_pool2d_lrn_eager"] == 0


@needs_cpp
def test_compiled_autograd_runs_the_backward_of_our_nodes():
    """Compiled autograd (torch._dynamo.compiled_autograd) captures a backward through max_pool2d's C++ node and
    LRN's Function, with torch's gradients."""
    from torch._dynamo import compiled_autograd

    x0, w0 = torch.randn(2, 4, 8, 8), torch.randn(4, 4, 3, 3)
    grads = []
    for pool, norm in ((ops.max_pool2d, ops.local_response_norm), (F.max_pool2d, F.local_response_norm)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with compiled_autograd._enable(torch.compile(backend="eager")):
            norm(pool(F.conv2d(x, w, padding=1), 3, 2), 3).square().sum().backward()
        grads.append((x.grad, w.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


def test_a_constant_tensor_setting_under_a_transform_of_the_input_runs_our_kernel(monkeypatch):
    """A tensor alpha that nothing differentiates (a constant the function captures) keeps our kernel under a
    transform of the input; only a tensor that requires grad, carries a tangent or is transformed itself
    sends the call to torch's composite."""
    calls = []
    composite = reference.local_response_norm
    monkeypatch.setattr(reference, "local_response_norm", lambda *a: (calls.append(1), composite(*a))[1])
    x = _input("contiguous", "cpu")
    alpha = torch.tensor(0.5, dtype=torch.float64)
    got = torch.func.grad(lambda v: ops.local_response_norm(v, 3, alpha).sum())(x)
    assert calls == []
    _close(got, torch.func.grad(lambda v: F.local_response_norm(v, 3, 0.5).sum())(x))
    torch.func.grad(lambda a: ops.local_response_norm(x, 3, a).sum())(alpha)
    assert calls == [1]
