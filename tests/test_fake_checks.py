"""The fake kernels check what the kernels check (classicnets_ext._checks, run by _fakes).

A call of torch.ops.classicnets_ext that the kernels refuse -- an integer input, a zero stride, a window
that leaves an empty output, a weight that does not fit -- must be refused while torch.compile or
torch.export traces it, with the kernels' own error, not traced as if it were good (its fake output a
made-up shape) and left to fail when the graph runs, or end in a ZeroDivisionError inside the tracer.
"""
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import classicnets_ext  # noqa: F401  (registers the ops)
from conftest import BACKENDS, backend_device
from _helpers import ran_isolated

KERNEL_BACKENDS = [b for b in ("cpu", "cuda", "triton") if b in BACKENDS]
OPS = torch.ops.classicnets_ext

# C++ names a dtype as c10 does, Python as torch does.
_CPP_DTYPES = {"Float": "torch.float32", "Double": "torch.float64", "Half": "torch.float16",
               "BFloat16": "torch.bfloat16", "Int": "torch.int32", "Long": "torch.int64", "Byte": "torch.uint8",
               "Bool": "torch.bool", "Float8_e4m3fn": "torch.float8_e4m3fn"}


def _normalised(message: str) -> str:
    message = message.splitlines()[0]
    return re.sub(r"\b(" + "|".join(_CPP_DTYPES) + r")\b", lambda m: _CPP_DTYPES[m.group(1)], message)


def _op(backend: str, name: str):
    """The op ``name`` of a backend: the Triton twin of lrn_backward is lrn_triton_backward."""
    if backend == "triton":
        base = next(b for b in ("max_pool2d_lrn", "max_pool2d", "lrn", "inception") if name.startswith(b))
        name = f"{base}_triton{name[len(base):]}"
    return getattr(OPS, name)


def _bad_calls(device: str):
    """(id, op name, argument builder): each call is one the kernels refuse."""
    def t(*shape, dtype=torch.float32):
        return torch.ones(shape, dtype=dtype, device=device)

    pool = ([3, 3], [2, 2], [0, 0], [1, 1])

    def mp(x, kernel=(3, 3), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil=False):
        return (x, list(kernel), list(stride), list(padding), list(dilation), ceil, True)

    def pl(x, kernel=(3, 3), stride=(2, 2), padding=(0, 0), ceil=False, size=5, alpha=1e-4):
        return (x, list(kernel), list(stride), list(padding), ceil, size, alpha, 0.75, 1.0, True, True)

    def argmax(shape, dtype=torch.uint8):
        return torch.zeros(shape, dtype=dtype, device=device)

    def inception(x=None, w1=(7, 4, 1, 1), w3=(3, 2, 3, 3), w5=(2, 2, 5, 5), wp=(1, 4, 1, 1), b5=2, ch1x1=3,
                  dtype=torch.float32):
        x = t(1, 4, 5, 5) if x is None else x
        return (x, t(*w1, dtype=dtype), t(w1[0]), t(*w3), t(w3[0]), t(*w5), t(b5), t(*wp), t(wp[0]), ch1x1)

    return [
        ("lrn-int", "lrn", lambda: (t(1, 4, 3, 3, dtype=torch.int32), 5)),
        ("lrn-float8", "lrn", lambda: (t(1, 4, 3, 3).to(torch.float8_e4m3fn), 5)),
        ("lrn-2d", "lrn", lambda: (t(4, 3), 3)),
        ("lrn-size0", "lrn", lambda: (t(1, 4, 3, 3), 0)),
        ("lrn-inf-alpha", "lrn", lambda: (t(1, 4, 3, 3), 3, float("inf"))),
        ("lrn-backward-shape", "lrn_backward", lambda: (t(1, 4, 3, 2), t(1, 4, 3, 3), 5, 1e-4, 0.75, 1.0)),
        ("lrn-backward-dtype", "lrn_backward",
         lambda: (t(1, 4, 3, 3, dtype=torch.float64), t(1, 4, 3, 3), 5, 1e-4, 0.75, 1.0)),
        ("pool-int", "max_pool2d", lambda: mp(t(1, 4, 8, 8, dtype=torch.int32))),
        ("pool-2d", "max_pool2d", lambda: mp(t(8, 8))),
        ("pool-no-channels", "max_pool2d", lambda: mp(t(1, 0, 8, 8))),
        ("pool-no-rows", "max_pool2d", lambda: mp(t(1, 2, 0, 8))),
        ("pool-kernel0", "max_pool2d", lambda: mp(t(1, 4, 8, 8), kernel=(0, 3))),
        ("pool-stride0", "max_pool2d", lambda: mp(t(1, 4, 8, 8), stride=(2, 0))),
        ("pool-dilation0", "max_pool2d", lambda: mp(t(1, 4, 8, 8), dilation=(0, 1))),
        ("pool-padding", "max_pool2d", lambda: mp(t(1, 4, 8, 8), padding=(2, 2))),
        ("pool-three-values", "max_pool2d", lambda: mp(t(1, 4, 8, 8), kernel=(3, 3, 3))),
        ("pool-huge-stride", "max_pool2d", lambda: mp(t(1, 4, 8, 8), stride=(2**40, 2))),
        ("pool-empty-output", "max_pool2d", lambda: mp(t(1, 4, 2, 2))),
        ("pool-backward-argmax-dtype", "max_pool2d_backward",
         lambda: (t(1, 4, 3, 3), argmax((1, 4, 3, 3), torch.int32), [1, 4, 8, 8], *pool)),
        ("pool-backward-not-pooled", "max_pool2d_backward",
         lambda: (t(1, 4, 3, 2), argmax((1, 4, 3, 2)), [1, 4, 8, 8], *pool)),
        ("pool-backward-input-size", "max_pool2d_backward",
         lambda: (t(1, 4, 3, 3), argmax((1, 4, 3, 3)), [4, 8], *pool)),
        ("pool-backward-grad-shape", "max_pool2d_backward",
         lambda: (t(1, 4, 3, 2), argmax((1, 4, 3, 3)), [1, 4, 8, 8], *pool)),
        ("pool-backward-grad-dtype", "max_pool2d_backward",
         lambda: (t(1, 4, 3, 3, dtype=torch.int64), argmax((1, 4, 3, 3)), [1, 4, 8, 8], *pool)),
        ("pool-backward-batch", "max_pool2d_backward",
         lambda: (t(1, 4, 3, 3), argmax((1, 4, 3, 3)), [2, 4, 8, 8], *pool)),
        ("pool-taps", "max_pool2d",  # 2^32 taps (2^16 x 2^16), padding within half: a 1 x 1 output
         lambda: mp(t(1, 1, 4, 4), kernel=(65536, 65536), stride=(1, 1), padding=(32766, 32766))),
        ("pool-indices-channels", "max_pool2d_indices", lambda: (argmax((1, 5, 3, 3)), [1, 4, 8, 8], *pool)),
        ("fused-int", "max_pool2d_lrn", lambda: pl(t(1, 4, 8, 8, dtype=torch.int32))),
        ("fused-stride0", "max_pool2d_lrn", lambda: pl(t(1, 4, 8, 8), stride=(0, 2))),
        ("fused-size0", "max_pool2d_lrn", lambda: pl(t(1, 4, 8, 8), size=0)),
        ("fused-nan-alpha", "max_pool2d_lrn", lambda: pl(t(1, 4, 8, 8), alpha=float("nan"))),
        ("fused-empty-output", "max_pool2d_lrn", lambda: pl(t(1, 4, 2, 2))),
        ("fused-backward-pooled", "max_pool2d_lrn_backward",
         lambda: (t(1, 4, 3, 3), t(1, 4, 3, 2), argmax((1, 4, 3, 3)), [1, 4, 8, 8], [3, 3], [2, 2], [0, 0], 5,
                  1e-4, 0.75, 1.0, True)),
        ("fused-backward-size0", "max_pool2d_lrn_backward",
         lambda: (t(1, 4, 3, 3), t(1, 4, 3, 3), argmax((1, 4, 3, 3)), [1, 4, 8, 8], [3, 3], [2, 2], [0, 0], 0,
                  1e-4, 0.75, 1.0, True)),
        ("inception-int", "inception", lambda: inception(x=t(1, 4, 5, 5, dtype=torch.int32))),
        ("inception-3d", "inception", lambda: inception(x=t(4, 5, 5))),
        ("inception-weight-dtype", "inception", lambda: inception(dtype=torch.float64)),
        ("inception-input-channels", "inception", lambda: inception(x=t(1, 5, 5, 5))),
        ("inception-stack", "inception", lambda: inception(ch1x1=4)),
        ("inception-ch1x1", "inception", lambda: inception(w1=(4, 4, 1, 1), ch1x1=0)),
        ("inception-even-kernel", "inception", lambda: inception(w3=(3, 2, 2, 2))),
        ("inception-pool-1x1", "inception", lambda: inception(wp=(1, 4, 3, 3))),
        ("inception-bias", "inception", lambda: inception(b5=3)),
        ("linear-features", "linear", lambda: (t(2, 3), t(4, 5))),
        ("linear-3d", "linear", lambda: (t(2, 2, 3), t(4, 3))),
        ("linear-double", "linear", lambda: (t(2, 3, dtype=torch.float64), t(4, 3, dtype=torch.float64))),
        ("linear-bias", "linear", lambda: (t(2, 3), t(4, 3), t(5))),
        ("linear-weight-dtype", "linear", lambda: (t(2, 3), t(4, 3, dtype=torch.bfloat16))),
        ("linear-mixed-weight-dtype", "linear", lambda: (t(2, 3, dtype=torch.bfloat16), t(4, 3, dtype=torch.float16))),
        ("linear-bias-dtype", "linear", lambda: (t(2, 3, dtype=torch.float16), t(4, 3, dtype=torch.float16), t(4))),
    ]


def _raised(call) -> tuple[type, str] | None:
    try:
        call()
    except Exception as e:  # noqa: BLE001  (the point: which exception)
        return type(e), _normalised(str(e))
    return None


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fake_kernels_refuse_what_the_kernels_refuse(backend, request):
    """Every bad call raises, in eager and under FakeTensorMode, the same exception with the same message."""
    device = backend_device(backend)
    if ran_isolated(request, device):  # the raw CUDA ops, fed bad arguments: in a process of their own
        return
    checked = 0
    for case, name, args in _bad_calls(device):
        if name == "linear" and (backend != "cpu" or not hasattr(OPS, "linear")):
            continue  # a CPU kernel only
        op = _op(backend, name)
        eager = _raised(lambda: op(*args()))
        with FakeTensorMode(allow_non_fake_inputs=True):
            fake = _raised(lambda: op(*args()))
        assert eager is not None, f"{case}: the {backend} kernel accepted the call"
        assert eager[0] in (ValueError, TypeError), f"{case}: {eager}"
        assert fake == eager, f"{case}: fake {fake}, eager {eager}"
        checked += 1
    assert checked >= 40


def test_compile_and_export_refuse_a_bad_raw_call_while_tracing():
    """torch.compile (fake tensors, dynamic shapes too) and torch.export stop at the trace, naming the
    argument, instead of compiling a graph around a made-up output."""
    x = torch.randn(1, 4, 8, 8)

    def zero_stride(x):
        return OPS.max_pool2d(x, [3, 3], [0, 2], [0, 0], [1, 1], False, False)[0]

    graphs = []

    def record(gm, inputs):
        graphs.append(gm)
        return gm.forward

    for dynamic in (False, True):
        torch._dynamo.reset()
        # The error is the trace's (the kernel, run by a compiled graph, would raise the same message as a
        # plain RuntimeError), and no graph was made.
        with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match=r"max_pool2d: `stride` must be positive"):
            torch.compile(zero_stride, backend=record, fullgraph=True, dynamic=dynamic)(x)
    assert graphs == []

    class Empty(torch.nn.Module):
        def forward(self, x):
            return OPS.max_pool2d_lrn(x, [3, 3], [2, 2], [0, 0], False, 5, 1e-4, 0.75, 1.0, True, False)[0]

    with pytest.raises(Exception, match=r"max_pool2d_lrn: the output would be empty"):
        torch.export.export(Empty(), (torch.randn(1, 4, 2, 2),))


def test_fake_kernels_keep_dynamic_shapes_symbolic():
    """The checks compare symbolic sizes (guards), as torch's meta functions do: a dynamic-shape compile of a
    valid call still traces once for a range of sizes and matches eager."""
    calls = []

    def count(gm, inputs):
        calls.append(gm)
        return gm

    def fn(x):
        y, _ = OPS.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True, False)
        return OPS.lrn(y, 3, 1e-4, 0.75, 1.0)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=count, dynamic=True, fullgraph=True)
    for size in (9, 12, 17):
        x = torch.randn(2, 4, size, size + 1)
        torch.testing.assert_close(compiled(x), fn(x))
    assert len(calls) == 1


@pytest.mark.parametrize("op", ["max_pool2d", "max_pool2d_lrn"])
def test_a_data_dependent_batch_traces_as_torchs_pool_does(op):
    """A channels-last batch picked by a mask has an unbacked (data-dependent) size under torch.compile with
    capture_dynamic_output_shape_ops: torch's max_pool2d traces it, and so must ours -- the layout test no
    longer asks whether that size is 1 (which raised GuardOnDataDependentSymNode). Forward and backward, against
    eager, with torch's channels-last layout."""
    from classicnets_ext import ops

    pool = getattr(ops, op)

    def fn(x, keep):
        picked = x[keep].contiguous(memory_format=torch.channels_last)
        return pool(picked, 3, 2, 1)

    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    keep = torch.tensor([True, False, True, True])
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True):
        y = torch.compile(fn, backend="aot_eager", fullgraph=True)(x, keep)
    expected = fn(x, keep)
    assert y.is_contiguous(memory_format=torch.channels_last) and expected.is_contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(expected, x, g)[0])


@pytest.mark.parametrize("bounded", [True, False], ids=["at-least-5-rows", "any-rows"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", ["local_response_norm", "max_pool2d", "max_pool2d_lrn"])
def test_a_data_dependent_height_traces(op, layout, bounded):
    """A map cut to a size read from a tensor (``.item()``) has an unbacked height while torch.compile traces:
    LRN's layout test (is_contiguous) guarded on it and raised GuardOnDataDependentSymNode, where torch's
    composite traces. The layout tests decide without guards there; forward and backward match eager. Without
    a lower bound the pools' size checks (non-zero, a non-empty output) could not trace either: they are
    run-time asserts there, as in torch's meta kernels."""
    from classicnets_ext import ops

    fn = getattr(ops, op)

    def cut(x, n):
        rows = n.item()
        if bounded:
            torch._check(rows >= 5)
        torch._check(rows <= x.shape[2])
        v = x[:, :, :rows]
        if layout == "channels_last":
            v = v.contiguous(memory_format=torch.channels_last)
        return fn(v, 3) if op == "local_response_norm" else fn(v, 3, 2, 1)

    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    n = torch.tensor(9)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        y = torch.compile(cut, backend="aot_eager", fullgraph=True)(x, n)
    expected = cut(x, n)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(expected, x, g)[0])


def _degenerate_inputs(device):
    """Dense inputs whose size-1 dimensions carry odd strides (which is_contiguous ignores), channels-last
    views, and one-channel and 1x1 tensors that are both contiguous and channels-last."""
    def strided(shape, strides):
        return torch.randn(4096, device=device).as_strided(shape, strides)

    cl = torch.randn(2, 3, 6, 6, device=device).contiguous(memory_format=torch.channels_last)
    return {
        "channel stride 1000": strided((2, 1, 6, 6), (36, 1000, 6, 1)),
        "batch stride 1": strided((1, 3, 6, 6), (1, 36, 6, 1)),
        "channels-last batch stride 999": strided((1, 3, 6, 6), (999, 1, 18, 3)),
        "channels-last 1x1 odd": strided((2, 3, 1, 1), (3, 1, 77, 5)),
        "channels-last one channel": cl[:, :1],
        "channels-last 1x1 slice": cl[:, :, :1, :1],
        "channels-last row slice": cl[:, :, :1],
        "one channel, contiguous": torch.randn(2, 1, 6, 6, device=device),
        "channels-last 2x2 map (pooled to 1x1)": cl[:, :, :2, :2].contiguous(memory_format=torch.channels_last),
        "empty channels-last batch": cl[:0],
    }


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_outputs_have_their_fake_kernels_strides(backend, request):
    """Compiled code allocates by the fake kernels' strides and asserts them on the real outputs, so each op's
    outputs (and gradients) have them exactly, size-1 dimensions included: the C++ LRN passed on its input's
    odd stride in a size-1 dimension ((2, 1, 6, 6) with channel stride 1000 came back with it, where torch and
    the fake answer 36), the fused op's wide-window detour handed a one-channel output back in channels-last
    strides, and the fused op answered a channels-last 1x1 output channels-last where torch's composite (and our
    two separate ops) answer it contiguous. LRN's and the fused op's strides are also torch's."""
    device = backend_device(backend)
    if ran_isolated(request, device):
        return
    lrn = (3, 1e-4, 0.75, 1.0)
    pool = ([3, 3], [2, 2], [1, 1])
    wide = ([2**17 + 1, 3], [1, 2], [2**16, 1])  # windows far wider than the input: the CPU's detour
    calls = []
    for name, x in _degenerate_inputs(device).items():
        calls += [
            (name, "lrn", (x, *lrn)),
            (name, "lrn_backward", (torch.randn_like(x), x, *lrn)),
            (name, "max_pool2d", (x, *pool, [1, 1], False, True)),
            (name, "max_pool2d_lrn", (x, *pool, True, 5, 1e-4, 0.75, 1.0, True, True)),
            (name + ", wide", "max_pool2d_lrn", (x, *wide, False, 5, 1e-4, 0.75, 1.0, False, True)),
        ]
    for name, op_name, args in calls:
        op = _op(backend, op_name)
        real = op(*args)
        with FakeTensorMode(allow_non_fake_inputs=True):
            fake = op(*args)
        real, fake = (real, fake) if isinstance(real, tuple) else ((real,), (fake,))
        assert [(t.shape, t.stride()) for t in real] == [(t.shape, t.stride()) for t in fake], (name, op_name)
        if op_name == "lrn":
            assert real[0].stride() == torch.nn.functional.local_response_norm(args[0], 3).stride(), name
        if op_name == "max_pool2d_lrn" and "wide" not in name:  # as torch's composite
            pooled = torch.nn.functional.max_pool2d(args[0].relu(), *pool, ceil_mode=True)
            assert real[0].stride() == torch.nn.functional.local_response_norm(pooled, 5).stride(), name
        if op_name == "max_pool2d_lrn" and real[1].numel():
            y, pooled, argmax = real
            bargs = (torch.randn_like(y), pooled, argmax, list(args[0].shape), *args[1:4], *args[5:10])
            grad = _op(backend, "max_pool2d_lrn_backward")(*bargs)
            with FakeTensorMode(allow_non_fake_inputs=True):
                fake_grad = _op(backend, "max_pool2d_lrn_backward")(*bargs)
            assert grad.stride() == fake_grad.stride(), (name, "backward")
