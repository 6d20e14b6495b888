"""Helpers shared by the op test files: ``from _helpers import ...`` (tests/ is on sys.path, as for conftest).

Import it after conftest has set up the environment (conftest sets TRITON_INTERPRET before classicnets_ext is
first imported), as the test files do: pytest imports conftest first.
"""
import contextlib
import os
import subprocess
import sys

import pytest
import torch

import classicnets_ext
from _cpu import cpu_has_avx512
from classicnets_ext import _extension


def _backend(name):
    """``use_backend(name)``, or no change for None (the session's backend: "auto" unless CLASSICNETS_BACKEND)."""
    return contextlib.nullcontext() if name is None else classicnets_ext.use_backend(name)


def compile_and_record(model, *inputs):
    """Run ``torch.compile(model, fullgraph=True)`` on ``inputs`` through a backend that records the graphs
    dynamo hands it and runs them as traced (no inductor). Returns ``(output, graphs)``, one list per graph of
    the targets of its ``call_function`` nodes (OpOverloads, OpOverloadPackets or Python callables)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append([n.target for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward

    torch._dynamo.reset()  # no graph cached by an earlier test (another backend, another module)
    output = torch.compile(model, backend=record, fullgraph=True)(*inputs)
    return output, graphs


def assert_compile_keeps_op(model, x, backend: str | None, op) -> None:
    """Under ``backend``, ``torch.compile(model, fullgraph=True)(x)`` equals ``model(x)``, dynamo makes one
    graph, and that graph calls ``op`` (a ``torch.ops.classicnets_ext.<name>`` packet, or its overload)
    itself: the op is not decomposed or traced through."""
    with _backend(backend):
        expected = model(x)
        got, graphs = compile_and_record(model, x)
    torch.testing.assert_close(got, expected)
    called = [target for graph in graphs for target in graph]
    assert len(graphs) == 1 and (op in called or op.default in called), called


def assert_aot_grads_match_eager(model, x, backend: str | None = None, dynamic: bool | None = None) -> None:
    """``torch.compile(model, backend="aot_eager", fullgraph=True)``, which traces forward and backward through
    the ops' fake kernels and registered autograd, gives eager's parameter gradients for ``model(x).sum()``.
    Skips the test for the Triton backend on CPU tensors: AOT autograd runs a triton_op's kernels on fake
    tensors, which TRITON_INTERPRET cannot."""
    if backend == "triton" and x.device.type == "cpu":
        pytest.skip("AOT autograd traces a triton_op's kernels on fake tensors, which TRITON_INTERPRET cannot run")
    torch._dynamo.reset()
    with _backend(backend):
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=dynamic)
        compiled(x).sum().backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model(x).sum().backward()
    for g, want in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(g, want)


def assert_inductor_matches_eager(model, x) -> None:
    """``torch.compile(model, fullgraph=True)`` (inductor) gives eager's output."""
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def backend_params(op: str, sources: str) -> list:
    """pytest params for the backends cpu, cuda, triton and reference, each skipped -- visibly, with the
    reason -- where it cannot run here, or (cpu, cuda) where the loaded _C predates ``op`` (whose kernels
    live in ``sources``)."""
    params = []
    for name in ("cpu", "cuda", "triton", "reference"):
        why = None
        if name not in classicnets_ext.available_backends():
            why = f"backend {name!r} is not available here"
        elif name in ("cpu", "cuda") and not _extension.has_op(op):
            why = (f"classicnets_ext._C has no {op} op (built before {sources} landed); rebuild it with "
                   "`pip install --no-build-isolation -e .`")
        params.append(pytest.param(name, marks=pytest.mark.skipif(why is not None, reason=why or ""), id=name))
    return params


@contextlib.contextmanager
def torch_threads(n):
    """torch's intra-op thread count for the block (the CPU kernels' tilings depend on it), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_input(shape, layout="contiguous", dtype=torch.float32, device="cpu", kind="ties", seed=0):
    """kind: 'ties' (integers in [-2, 2]), 'randn', or 'nan' (ties plus NaNs, several per window)."""
    g = torch.Generator().manual_seed(seed)
    big = list(shape)
    if layout in ("sliced", "sliced_channels_last"):  # every other channel and column: strides no dense layout has
        big[-3] *= 2
        big[-1] *= 2
    if kind == "randn":
        x = torch.randn(big, generator=g)
    else:
        x = torch.randint(-2, 3, big, generator=g).float()
        if kind == "nan":
            x[torch.rand(big, generator=g) < 0.15] = float("nan")
    if layout == "sliced_channels_last":  # a slice of a channels-last tensor: torch answers it channels-last
        x = x.contiguous(memory_format=torch.channels_last)
    if layout in ("sliced", "sliced_channels_last"):
        x = x[..., ::2, :, ::2]
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # H and W swapped in memory
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


def assert_same_layout(got: torch.Tensor, expected: torch.Tensor) -> None:
    """The same strides wherever a dimension has more than one element (a size-1 dimension's stride is
    arbitrary): the layout torch's own function answers in."""
    assert got.shape == expected.shape
    assert all(g == e for n, g, e in zip(got.shape, got.stride(), expected.stride()) if n > 1), \
        (got.stride(), expected.stride())


def grad_like(y, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, y.shape, generator=g).to(device=y.device, dtype=y.dtype)


def assert_same_as_torch(ours, theirs) -> None:
    """``ours()`` behaves as ``theirs()`` (torch's own function): the same exception type and message, or the
    same results -- tensors (or tuples of them) equal exactly, with the same dtype and device."""
    try:
        expected = theirs()
    except Exception as e:
        with pytest.raises(type(e)) as got:
            ours()
        assert str(got.value) == str(e)
        return
    got = ours()
    expected, got = (expected, got) if isinstance(expected, tuple) else ((expected,), (got,))
    assert len(got) == len(expected)
    for g, want in zip(got, expected):
        assert g.dtype == want.dtype and g.device == want.device, (g.dtype, want.dtype, g.device, want.device)
        torch.testing.assert_close(g, want, rtol=0, atol=0, equal_nan=True)


# Non-floating dtypes: the ops hand them to torch (see classicnets_ext/ops.py).
# The dtypes our kernels do not take, which the ops hand to torch (float8 raised our TypeError where torch
# raises NotImplementedError).
NON_FLOAT_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
                    torch.float8_e4m3fn, torch.float8_e5m2]


def integer_inputs(shape, device):
    """Each dtype our kernels do not take (integers, bool, float8), channels-first and channels-last, with many
    ties."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 7, shape, generator=g)
    for dtype in NON_FLOAT_DTYPES:
        x = base.to(device=device, dtype=dtype)
        yield x
        if x.dim() == 4:
            yield x.contiguous(memory_format=torch.channels_last)


def assert_runs_with_cpu_capability(code: str, capability: str = "default", env: dict | None = None) -> None:
    """Runs ``code`` in a fresh Python with ATEN_CPU_CAPABILITY=capability (which picks the build of our CPU
    kernels too) and the variables of ``env``, and asserts it printed exactly ``ok``. Skips avx512 on a CPU
    without it: ATen takes the variable at its word, and torch's own kernels then die of an illegal
    instruction (ours check the CPU and stay on avx2)."""
    if capability == "avx512" and not cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512")
    env = {**os.environ, **(env or {}), "ATEN_CPU_CAPABILITY": capability}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def assert_half_precision_matches_float(capability: str, cases, shapes, *, nan: bool = False,
                                        forward_tol: str = "", backward_tol: str = "") -> None:
    """For bf16 and fp16, each shape and both layouts, in a fresh Python with ATEN_CPU_CAPABILITY=capability:
    each (ours, reference) pair of ``cases`` -- expressions in the input ``t``, our op and torch's composite --
    against the reference run in float and rounded to the dtype: the inference forward, the training forward
    and the gradient. ``nan`` puts NaNs in the input; ``forward_tol`` / ``backward_tol`` are assert_close's
    keyword arguments as source (in terms of ``dt``), its defaults for the dtype when empty."""
    fwd = ", " + forward_tol if forward_tol else ""
    bwd = ", " + backward_tol if backward_tol else ""
    pairs = ", ".join(f"(lambda t: {ours}, lambda t: {reference})" for ours, reference in cases)
    code = (
        "import torch, torch.nn.functional as F, classicnets_ext\n"
        "from classicnets_ext import ops\n"
        "torch.manual_seed(0)\n"
        f"cases = [{pairs}]\n"
        "for dt in (torch.bfloat16, torch.float16):\n"
        f"    for shape in {tuple(shapes)!r}:\n"
        "        for cl in (False, True):\n"
        "            for ours, reference in cases:\n"
        "                x = torch.randn(shape).to(dt)\n"
        + ("                x.view(-1)[::97] = float('nan')\n" if nan else "")
        + "                if cl: x = x.contiguous(memory_format=torch.channels_last)\n"
        "                xr = x.float().requires_grad_(True)\n"
        "                ref = reference(xr)\n"
        "                with torch.no_grad(): y = ours(x)\n"
        f"                torch.testing.assert_close(y, ref.detach().to(dt){fwd})\n"
        "                xg = x.clone().requires_grad_(True)\n"
        "                y = ours(xg)\n"
        f"                torch.testing.assert_close(y.detach(), ref.detach().to(dt){fwd})\n"
        "                g = torch.randn_like(y)\n"
        "                dx, = torch.autograd.grad(y, xg, g)\n"
        "                dr, = torch.autograd.grad(ref, xr, g.float())\n"
        f"                torch.testing.assert_close(dx, dr.to(dt){bwd})\n"
        "print('ok')\n")
    assert_runs_with_cpu_capability(code, capability)


_ISOLATED = "CNX_TEST_ISOLATED"  # set, to its node id, in the process that runs one test for ran_isolated


def ran_isolated(request, device: str) -> bool:
    """For a test of ``device`` "cuda": runs this same test in a fresh pytest process and returns True once it
    passed there (the caller then returns); fails with the child's output if it did not. Else (the CPU, or
    already the child) returns False and the test runs here. For tests that feed the raw ops bad arguments:
    on the H200 two such calls killed the process with a segfault (issue 14), taking a pytest-xdist worker or
    a whole compute-sanitizer run down with them. Isolated, the crash fails one test, with the line that
    crashed (pytest's faulthandler prints the Python stack of a fatal signal)."""
    if device != "cuda" or os.environ.get(_ISOLATED) == request.node.nodeid:
        return False
    env = dict(os.environ, **{_ISOLATED: request.node.nodeid})
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "no:xdist",
           request.node.nodeid]
    out = subprocess.run(cmd, cwd=request.config.rootpath, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        crash = out.stderr.find("Fatal Python error")  # faulthandler's report, the crashing line first
        err = out.stderr[crash:crash + 3000] if crash >= 0 else out.stderr[-3000:]
        pytest.fail(f"in a fresh process, {request.node.nodeid} ended with exit code {out.returncode} "
                    f"(negative: killed by that signal):\n{out.stdout[-3000:]}\n{err}")
    return True


def scatter_through_argmax(grad, argmax, input_size, kernel_size, stride, padding, dilation=(1, 1)):
    """The float64 gradient of max pooling through any window-local argmax (kh * kW + kw): each output's grad
    added at the tap its argmax names, where that is a tap of the window (0 <= argmax < kH * kW) inside the
    input, and nowhere otherwise -- what the gather never visits, the scatter must skip. Small-integer grads
    keep every sum exact, whatever the order."""
    N, C, H, W = input_size
    (kH, kW), (sH, sW), (pH, pW), (dH, dW) = kernel_size, stride, padding, dilation
    OH, OW = argmax.shape[-2:]
    t = argmax.long().cpu().reshape(N * C, OH * OW)
    oh = torch.arange(OH).repeat_interleave(OW)
    ow = torch.arange(OW).repeat(OH)
    ih = oh * sH - pH + torch.div(t, kW, rounding_mode="floor") * dH
    iw = ow * sW - pW + (t % kW) * dW
    keep = (t >= 0) & (t < kH * kW) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    flat = torch.where(keep, ih * W + iw, torch.zeros_like(t))
    g = torch.where(keep, grad.double().cpu().reshape(N * C, OH * OW), torch.zeros((), dtype=torch.float64))
    return torch.zeros(N * C, H * W, dtype=torch.float64).scatter_add_(1, flat, g).reshape(N, C, H, W)


EAGER_ENTRIES = ("lrn", "max_pool2d", "max_pool2d_lrn")  # ops whose plain eager call _C serves in one C++ call


def count_eager(monkeypatch, calls=None):
    """Wraps _C's one-call eager entries as ops.py holds them (``ops._max_pool2d_eager``...) to count the calls
    each served (did not decline), in ``calls`` (a new dict by default) under "<op>_eager"."""
    from classicnets_ext import ops

    calls = {} if calls is None else calls
    for op in EAGER_ENTRIES:
        key = f"{op}_eager"
        calls[key] = 0
        entry = getattr(ops, f"_{key}")

        def counted(*args, _key=key, _entry=entry):
            out = _entry(*args)
            calls[_key] += out is not None
            return out

        if entry is not None:
            monkeypatch.setattr(ops, f"_{key}", counted)
    return calls
