"""ops.linear / nn.Linear: F.linear's results, gradients and errors, with the GEMM asked for column-major on
the CPU where that is the fast layout (see ops.linear), and F.linear itself everywhere else."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import classicnets_ext
from classicnets_ext import models, ops
from classicnets_ext.nn import Linear

BIG = (1024, 512)   # in, out: 2^19 weights, the smallest layer that takes the column-major product
SMALL = (1024, 511)


class _RecordGemms(TorchDispatchMode):
    """The shapes of the first two operands of every mm / addmm that runs inside."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            a, b = args[-2:]
            self.calls.append((tuple(a.shape), tuple(b.shape)))
        return func(*args, **(kwargs or {}))


def _column_major(fn, *args, weight=None) -> bool:
    """Whether ``fn(*args)`` ran its GEMM as weight @ input.T (the weight's (out, in) shape first) rather than
    F.linear's input @ weight.T; the weight is ``args[1]`` unless given."""
    weight = args[1] if weight is None else weight
    with _RecordGemms() as record:
        fn(*args)
    assert len(record.calls) == 1, record.calls
    return record.calls[0][0] == tuple(weight.shape)


def _inputs(rows, features, dtype=torch.float32, bias=True, grad=False):
    torch.manual_seed(rows * 31 + features[1])
    x = torch.randn(rows, features[0], dtype=dtype, requires_grad=grad)
    w = (torch.randn(features[1], features[0], dtype=dtype) / features[0] ** 0.5).requires_grad_(grad)
    b = torch.randn(features[1], dtype=dtype, requires_grad=grad) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [2, 8])
def test_column_major_product_equals_f_linear(rows, bias, dtype):
    x, w, b = _inputs(rows, BIG, dtype, bias, grad=True)
    assert _column_major(ops.linear, x, w, b)
    out = ops.linear(x, w, b)
    expected = F.linear(x, w, b)
    assert out.is_contiguous() and out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], grad_out)
    want = torch.autograd.grad(expected, [t for t in (x, w, b) if t is not None], grad_out)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


def test_gradcheck_through_the_column_major_product():
    x, w, b = _inputs(3, BIG, torch.float64, grad=True)
    assert _column_major(ops.linear, x, w, b)
    assert torch.autograd.gradcheck(ops.linear, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("case", ["one row", "small layer", "bf16", "3-D input", "reference backend", "autocast"])
def test_everything_else_is_f_linear(case):
    rows, features, dtype = 8, BIG, torch.float32
    if case == "one row":
        rows = 1
    elif case == "small layer":
        features = SMALL
    elif case == "bf16":
        dtype = torch.bfloat16
    x, w, b = _inputs(rows, features, dtype)
    if case == "3-D input":
        x = x.reshape(2, rows // 2, -1)
    context = {"reference backend": classicnets_ext.use_backend("reference"),
               "autocast": torch.autocast("cpu", dtype=torch.bfloat16)}.get(case, contextlib.nullcontext())
    with context:
        assert not _column_major(ops.linear, x, w, b)
        out, expected = ops.linear(x, w, b), F.linear(x, w, b)
    assert out.dtype == expected.dtype
    assert torch.equal(out, expected)  # the very same call


def test_capture_records_plain_linear():
    """torch.export (and torch.compile, which traces the same way) records aten.linear, not our layout."""
    layer = Linear(*BIG)
    x = torch.randn(4, BIG[0])
    program = torch.export.export(layer, (x,))
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.linear.default in targets, targets
    torch.testing.assert_close(program.module()(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("bad", ["in_features", "bias size", "weight dtype", "input type"])
def test_bad_arguments_raise_f_linears_errors(bad):
    x, w, b = _inputs(4, BIG)
    if bad == "in_features":
        x = x[:, :-1]
    elif bad == "bias size":
        b = b[:-1]
    elif bad == "weight dtype":
        w = w.double()
    else:
        x = x.tolist()
    with pytest.raises((RuntimeError, TypeError)) as expected:
        F.linear(x, w, b)
    with pytest.raises(type(expected.value)) as got:
        ops.linear(x, w, b)
    assert str(got.value) == str(expected.value)


def test_module_is_a_torch_linear_with_its_state_dict():
    torch.manual_seed(0)
    theirs = torch.nn.Linear(*BIG)
    torch.manual_seed(0)
    ours = Linear(*BIG)
    assert isinstance(ours, torch.nn.Linear) and repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    x = torch.randn(8, BIG[0])
    assert _column_major(ours, x, weight=ours.weight)
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(RuntimeError, match="torch.jit.script does not support classicnets_ext.nn.Linear"):
        torch.jit.script(ours)


def test_classifiers_of_the_fc_heavy_models_are_ours():
    net = models.alexnet_paper(num_classes=10)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(type(m) is Linear for m in linears)
