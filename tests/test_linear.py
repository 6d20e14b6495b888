"""ops.linear / nn.Linear: F.linear's results, gradients and errors. On the CPU, fp32 with up to 8 rows (where
torch's products are MKL's on an AMD CPU, 256 with AVX-512, 32 with AVX2) runs our kernel
(classicnets_ext::linear) and its backward our two products (linear_grad_input, linear_grad_weight, each up to
its own row limit), more rows or fp64 the GEMM asked for column-major (see ops.linear); bf16 up to 8 rows (12
with AVX512-BF16, 16 at half width; AVX2: 4) and fp16 from 2 to 128 rows run the kernel's forward (the weight
read in its dtype, fp32 sums), and F.linear itself serves everything else."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import classicnets_ext
from _cpu import cpu_vendor_family
from _helpers import assert_runs_with_cpu_capability
from classicnets_ext import _autograd, _linear, models, ops
from classicnets_ext.nn import Linear

BIG = (1024, 512)   # in, out: 2^19 weights, the smallest layer that ops.linear computes its own way
SMALL = (1024, 511)


class _RecordProducts(TorchDispatchMode):
    """What computed each product inside: ``"kernel"`` (classicnets_ext::linear), ``"column_major"`` (an mm /
    addmm whose first operand is the weight, shaped (out, in)) or ``"row_major"`` (any other mm / addmm); and
    the dtype of the weight each kernel call read."""

    def __init__(self, weight_shape):
        super().__init__()
        self.weight_shape = tuple(weight_shape)
        self.calls = []
        self.kernel_weights = []

    @property
    def kernel_weight_dtypes(self):
        return [w.dtype for w in self.kernel_weights]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.classicnets_ext.linear.default:
            self.calls.append("kernel")
            self.kernel_weights.append(args[1])
        elif func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.calls.append("column_major" if tuple(args[-2].shape) == self.weight_shape else "row_major")
        return func(*args, **(kwargs or {}))


def _path(fn, *args, weight=None) -> str:
    """How ``fn(*args)`` computed its one product; the weight is ``args[1]`` unless given."""
    weight = args[1] if weight is None else weight
    with _RecordProducts(weight.shape) as record:
        fn(*args)
    assert len(record.calls) == 1, record.calls
    return record.calls[0]


def _inputs(rows, features, dtype=torch.float32, bias=True, grad=False):
    torch.manual_seed(rows * 31 + features[1])
    x = torch.randn(rows, features[0], dtype=dtype, requires_grad=grad)
    w = (torch.randn(features[1], features[0], dtype=dtype) / features[0] ** 0.5).requires_grad_(grad)
    b = torch.randn(features[1], dtype=dtype, requires_grad=grad) if bias else None
    return x, w, b


def _assert_same_gradients(out, expected, inputs, like):
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, [t for t in inputs if t is not None], grad_out)
    want = torch.autograd.grad(expected, [t for t in like if t is not None], grad_out)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_kernel_equals_f_linear(rows, bias):
    x, w, b = _inputs(rows, BIG, bias=bias, grad=True)
    assert _path(ops.linear, x, w, b) == "kernel"
    out = ops.linear(x, w, b)
    expected = F.linear(x, w, b)
    assert out.is_contiguous() and out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    _assert_same_gradients(out, expected, (x, w, b), (x, w, b))
    with torch.no_grad():
        assert _path(ops.linear, x, w, b) == "kernel"
        torch.testing.assert_close(ops.linear(x, w, b), expected)


def _reference(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


FP32_KERNEL_ROWS = _linear._LINEAR_KERNEL_ROWS[torch.float32][1]  # 256 with MKL on AMD, else 8
BF16_KERNEL_ROWS = _linear._LINEAR_KERNEL_ROWS[torch.bfloat16][1]  # AVX512-BF16 12 (16 half width), AVX-512 8, AVX2 4


@pytest.mark.parametrize("dtype,rows", [(torch.bfloat16, 1), (torch.bfloat16, BF16_KERNEL_ROWS), (torch.float16, 2),
                                        (torch.float16, 9)])
def test_kernel_in_bf16_and_fp16_equals_f_linear(dtype, rows):
    """The weight read in its dtype and the sums in fp32, rounded once: F.linear's result (oneDNN sums in fp32
    too) to within one rounding of the output, and no further than that from the exact product."""
    x, w, b = _inputs(rows, BIG, dtype, grad=True)
    assert _path(ops.linear, x, w, b) == "kernel"
    out, expected = ops.linear(x, w, b), F.linear(x, w, b)
    assert out.is_contiguous() and out.dtype == dtype and out.shape == expected.shape
    eps = torch.finfo(dtype).eps  # one ulp, relative
    torch.testing.assert_close(out, expected, rtol=eps, atol=1e-4)
    torch.testing.assert_close(out.double(), _reference(x, w, b), rtol=eps / 2, atol=1e-4)
    _assert_same_gradients(out, expected, (x, w, b), (x, w, b))  # the same matrix products, in dtype


# Shapes around the kernel's blocks: rows 1-8 (both register blocks, and partial ones), output features not a
# multiple of the 3- or 48-row blocks, depths with a partial last vector and several depth chunks, and rows past
# one register block (several passes over the same weight rows).
KERNEL_SHAPES = [(1, 5, 3), (2, 17, 7), (3, 100, 50), (4, 33, 49), (5, 16, 1), (6, 4100, 11), (7, 40000, 5),
                 (8, 9216, 97), (8, 1, 130), (13, 300, 50), (16, 64, 7)]


@pytest.mark.parametrize("rows,in_features,out_features", KERNEL_SHAPES)
def test_raw_op_matches_fp64_on_cpu(rows, in_features, out_features):
    torch.manual_seed(rows + in_features)
    x = torch.randn(rows, in_features)
    w = torch.randn(out_features, in_features) / in_features ** 0.5
    b = torch.randn(out_features)
    for bias in (b, None):
        out = torch.ops.classicnets_ext.linear(x, w, bias)
        torch.testing.assert_close(out.double(), _reference(x, w, bias), rtol=1e-5, atol=1e-5)
    # Strided arguments are made contiguous first.
    out = torch.ops.classicnets_ext.linear(x.t().contiguous().t(), w.t().contiguous().t(), b)
    torch.testing.assert_close(out.double(), _reference(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,in_features,out_features", KERNEL_SHAPES)
def test_raw_op_in_bf16_and_fp16_is_the_exact_product_rounded_once_on_cpu(rows, in_features, out_features, dtype):
    """The weight and bias in x's dtype, or in fp32 (rounded to x's dtype as the kernel reads them): the exact
    sums of the rounded products, rounded once. (In `make sanitize`'s selection: "cpu" in the name.)"""
    torch.manual_seed(rows + in_features)
    x = torch.randn(rows, in_features).to(dtype)
    w32, b32 = torch.randn(out_features, in_features) / in_features ** 0.5, torch.randn(out_features)
    w, b = w32.to(dtype), b32.to(dtype)
    for weight, bias, rounded_bias in ((w, b, b), (w, None, None), (w32, b32, b), (w32, None, None)):
        out = torch.ops.classicnets_ext.linear(x, weight, bias)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), _reference(x, w, rounded_bias), rtol=torch.finfo(dtype).eps / 2,
                                   atol=1e-4)


@pytest.mark.skipif(not cpu_vendor_family()[0], reason="reads the CPU's family from /proc/cpuinfo")
@pytest.mark.parametrize("capability", ["avx2", "avx512"])
def test_row_limits_follow_the_build_and_the_cores_vector_width(capability):
    """_C.cpu_avx512_full_width() is False on AMD before family 1Ah (Zen 4 runs 512-bit ops as two halves) and for
    any build but AVX-512; the linear row limits then come from their table for that build (measured: see
    _autograd.linear and ops.linear), fp32's 8 where torch's products are not MKL's on an AMD CPU."""
    vendor, family = cpu_vendor_family()
    full = capability == "avx512" and (vendor != "AuthenticAMD" or family >= 0x1A)
    code = (
        "import torch\n"
        "from classicnets_ext import _autograd, _extension, _linear\n"
        "lin = _autograd.linear\n"
        f"assert _extension._C.cpu_avx512_full_width() == {full!r}\n"
        f"build = 'avx2' if {capability!r} == 'avx2' else 'avx512' if {full!r} else 'avx512-half'\n"
        "assert lin.cpu_build() == build, lin.cpu_build()\n"
        "rows = lin._MKL_AMD_FP32_ROWS[build] if lin.mkl_on_amd() else (8, 8, 8)\n"
        "assert lin.fp32_kernel_rows() == rows\n"
        "assert _linear._LINEAR_KERNEL_ROWS[torch.float32] == (1, rows[0])\n"
        "assert lin._LINEAR_GRAD_INPUT_ROWS[torch.float32] == rows[1]\n"
        "assert lin._LINEAR_GRAD_WEIGHT_ROWS == {torch.float32: rows[2]}\n"
        "assert lin._LINEAR_GRAD_INPUT_ROWS[torch.bfloat16] == {'avx512-half': 6, 'avx2': 6}.get(build, 8)\n"
        "dot = _extension._C.cpu_avx512_bf16() and not torch.cpu._is_amx_tile_supported()\n"
        "bf16 = (16 if build == 'avx512-half' else 12) if dot else 8 if build.startswith('avx512') else 4\n"
        "assert _linear._LINEAR_KERNEL_ROWS[torch.bfloat16] == (1, bf16), _linear._LINEAR_KERNEL_ROWS\n"
        "print('ok')\n")
    assert_runs_with_cpu_capability(code, capability)


# The kernel shapes, every row count to 17 (each register block and pass), and AVX512-BF16's dot products past 8
# rows with an odd depth.
ISA_SHAPES = KERNEL_SHAPES + [(r, 300, 50) for r in range(1, 18)] + [(12, 4097, 13), (16, 65, 30)]


@pytest.mark.parametrize("capability,bf16_dot", [("default", False), ("avx2", False), ("avx512", False),
                                               ("avx512", True)])
def test_raw_op_matches_fp64_on_every_instruction_set(capability, bf16_dot):
    """Every build of the kernels; on AVX-512 bf16 both with AVX512-BF16's dot products (where the CPU has them)
    and without (CNX_AVX512_BF16=0, as on an AVX-512 CPU that lacks them)."""
    if bf16_dot and not torch.cpu._is_avx512_bf16_supported():
        pytest.skip("this CPU has no AVX512-BF16")
    code = (
        "import torch, torch.nn.functional as F\n"
        "from classicnets_ext import _extension\n"
        f"assert _extension._C.cpu_capability() == {capability!r}, _extension._C.cpu_capability()\n"
        f"assert _extension._C.cpu_avx512_bf16() == {bf16_dot!r}\n"
        f"for rows, k, n in {ISA_SHAPES!r}:\n"
        "    torch.manual_seed(rows + k)\n"
        "    x, w, b = torch.randn(rows, k), torch.randn(n, k) / k ** 0.5, torch.randn(n)\n"
        "    out = torch.ops.classicnets_ext.linear(x, w, b).double()\n"
        "    torch.testing.assert_close(out, F.linear(x.double(), w.double(), b.double()), rtol=1e-5, atol=1e-5)\n"
        "    for dt in (torch.bfloat16, torch.float16):\n"  # the weight read in its dtype, or in fp32 and rounded
        "        xr, wr, br = x.to(dt), w.to(dt), b.to(dt)\n"
        "        for weight, bias in ((wr, br), (w, b)):\n"
        "            out = torch.ops.classicnets_ext.linear(xr, weight, bias).double()\n"
        "            torch.testing.assert_close(out, F.linear(xr.double(), wr.double(), br.double()),\n"
        "                                       rtol=torch.finfo(dt).eps / 2, atol=1e-4)\n"
        "        big = 2.0 ** (8 if dt == torch.bfloat16 else 11)\n"  # 2^p + 1 rounds to 2^p: 0, not 1
        "        x1, w1 = torch.zeros(rows, k + 1, dtype=dt), torch.zeros(n, k + 1)\n"
        "        x1[:, :2], w1[:, 0], w1[:, 1] = 1, big + 1, -big\n"
        "        assert not torch.ops.classicnets_ext.linear(x1, w1, None).any()\n"
        "    g = torch.randn(rows, n)\n"  # the backward's products
        "    torch.testing.assert_close(torch.ops.classicnets_ext.linear_grad_input(g, w).double(),\n"
        "                               g.double() @ w.double(), rtol=1e-5, atol=1e-4)\n"
        "    for dt in (torch.bfloat16, torch.float16):\n"
        "        gr, wr = g.to(dt), w.to(dt)\n"
        "        torch.testing.assert_close(torch.ops.classicnets_ext.linear_grad_input(gr, wr).double(),\n"
        "                                   gr.double() @ wr.double(), rtol=torch.finfo(dt).eps / 2, atol=1e-4)\n"
        "    torch.testing.assert_close(torch.ops.classicnets_ext.linear_grad_weight(g, x).double(),\n"
        "                               g.double().t() @ x.double(), rtol=1e-5, atol=1e-4)\n"
        "print('ok')\n")
    assert_runs_with_cpu_capability(code, capability, env={"CNX_AVX512_BF16": "1" if bf16_dot else "0"})


# ------------------------------------------------------------------------------------- the backward's products

GRAD_OPS = {"linear_grad_input": lambda g, other: g.double() @ other.double(),        # other: the weight (N, K)
            "linear_grad_weight": lambda g, other: g.double().t() @ other.double()}   # other: the input (M, K)


def _grad_operands(op, rows, in_features, out_features, seed=0):
    torch.manual_seed(seed)
    g = torch.randn(rows, out_features)
    other = torch.randn(out_features, in_features) if op == "linear_grad_input" else torch.randn(rows, in_features)
    return g, other


@pytest.mark.parametrize("op", list(GRAD_OPS))
@pytest.mark.parametrize("rows,in_features,out_features", KERNEL_SHAPES + [(9, 70, 30), (24, 33, 13)])
def test_backward_products_match_fp64_on_cpu(op, rows, in_features, out_features):
    """Rows past one chunk of 8 (the later chunks add to the first), weight rows past whole register blocks of
    4 / 2, depths with a partial vector; strided operands are made contiguous first."""
    g, other = _grad_operands(op, rows, in_features, out_features, seed=rows + in_features)
    fn = getattr(torch.ops.classicnets_ext, op)
    want = GRAD_OPS[op](g, other)
    torch.testing.assert_close(fn(g, other).double(), want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fn(g.t().contiguous().t(), other.t().contiguous().t()).double(), want, rtol=1e-5,
                               atol=1e-4)


def test_backward_products_edges_errors_and_opcheck():
    ops_ = torch.ops.classicnets_ext
    assert torch.equal(ops_.linear_grad_input(torch.randn(0, 4), torch.randn(4, 3)), torch.zeros(0, 3))
    assert torch.equal(ops_.linear_grad_input(torch.randn(2, 0), torch.randn(0, 3)), torch.zeros(2, 3))
    assert torch.equal(ops_.linear_grad_weight(torch.randn(0, 4), torch.randn(0, 3)), torch.zeros(4, 3))
    assert ops_.linear_grad_weight(torch.randn(2, 4), torch.randn(2, 0)).shape == (4, 0)
    g, w, x = torch.randn(2, 4), torch.randn(4, 3), torch.randn(2, 3)
    for op, args, kind, match in [
            (ops_.linear_grad_input, (g.double(), w), TypeError, "`grad_output` must be float32, bfloat16 or"),
            (ops_.linear_grad_input, (g, w.half()), TypeError, "`weight` must have `grad_output`'s dtype"),
            (ops_.linear_grad_weight, (g.bfloat16(), x.bfloat16()), TypeError, "`grad_output` must be float32, got"),
            (ops_.linear_grad_input, (g[0], w), ValueError, "2-D `grad_output` and `weight`"),
            (ops_.linear_grad_input, (g, w[:3]), ValueError, "`grad_output` has 4 features but `weight` has 3"),
            (ops_.linear_grad_weight, (g, x.double()), TypeError, "`input` must have `grad_output`'s dtype"),
            (ops_.linear_grad_weight, (g, x[:1]), ValueError, "`grad_output` has 2 rows but `input` has 1")]:
        with pytest.raises(kind, match=match):
            op(*args)
        with pytest.raises(kind, match=match), torch._subclasses.FakeTensorMode() as mode:  # the fake's checks
            op(*(mode.from_tensor(a) for a in args))
    for op, other in ((ops_.linear_grad_input.default, w), (ops_.linear_grad_weight.default, x)):
        torch.library.opcheck(op, (g.clone().requires_grad_(), other.clone().requires_grad_()))
    for dtype in (torch.bfloat16, torch.float16):
        torch.library.opcheck(ops_.linear_grad_input.default,
                              (g.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,in_features,out_features", KERNEL_SHAPES + [(9, 70, 30)])
def test_grad_input_in_bf16_and_fp16_is_the_exact_product_rounded_once(rows, in_features, out_features, dtype):
    g, w = (t.to(dtype) for t in _grad_operands("linear_grad_input", rows, in_features, out_features, rows))
    out = torch.ops.classicnets_ext.linear_grad_input(g, w)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), g.double() @ w.double(), rtol=torch.finfo(dtype).eps / 2, atol=1e-4)


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


# Up to how many rows the backward's products are ours, by dtype: fp32 8 unless MKL runs on an AMD CPU (AVX-512
# 256 / 256, Zen 4's half-width AVX-512 16 / 64, avx2 12 / 16); bf16's grad_input 8 (Zen 4 4, avx2 6).
GRAD_INPUT_ROWS = _autograd.linear._LINEAR_GRAD_INPUT_ROWS
GRAD_WEIGHT_ROWS = _autograd.linear._LINEAR_GRAD_WEIGHT_ROWS
FP32_GRAD_ROWS = sorted({1, 8, GRAD_INPUT_ROWS[torch.float32], GRAD_INPUT_ROWS[torch.float32] + 1,
                         GRAD_WEIGHT_ROWS[torch.float32], GRAD_WEIGHT_ROWS[torch.float32] + 1})


@pytest.mark.parametrize("rows", FP32_GRAD_ROWS)
def test_backward_runs_our_products_on_cpu_up_to_their_rows(rows):
    """The op's first-order backward: each of our two products up to its row limit, a matrix product beyond (a
    raw op call with more rows); a double backward differentiates our products by matrix products
    (test_kernel_double_backward_matches_f_linear checks its values)."""
    x, w, b = _inputs(rows, BIG, grad=True)
    out = torch.ops.classicnets_ext.linear(x, w, b)
    with _RecordOps() as record:
        out.backward(torch.ones_like(out))
    ours_input, ours_weight = (rows <= limits[torch.float32] for limits in (GRAD_INPUT_ROWS, GRAD_WEIGHT_ROWS))
    assert ("linear_grad_input" in record.names) == ours_input, record.names
    assert ("linear_grad_weight" in record.names) == ours_weight, record.names
    assert ("mm" in record.names) == (not (ours_input and ours_weight)), record.names
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    F.linear(xr, wr, br).backward(torch.ones_like(out))
    for got, want in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,rows", [(torch.bfloat16, GRAD_INPUT_ROWS[torch.bfloat16]),
                                        (torch.bfloat16, GRAD_INPUT_ROWS[torch.bfloat16] + 1),
                                        (torch.float16, 8), (torch.float16, 128), (torch.float16, 129)])
def test_backward_in_bf16_and_fp16_runs_our_grad_input(dtype, rows):
    """In bf16 and fp16 the input's gradient is ours up to its row limit (the weight read in its dtype, fp32
    sums), the weight's is at::mm's; both as F.linear's to within a rounding of the result. bf16's grad_input
    takes 8 rows at most (4 on Zen 4's half-width AVX-512, 6 on avx2), fp16's as many as its forward (at::mm's fp16
    product is 240-410x slower). A raw op call, whose backward is ours at any row count."""
    x, w, b = _inputs(rows, BIG, dtype, grad=True)
    out = torch.ops.classicnets_ext.linear(x, w, b)
    grad = torch.randn_like(out)
    with _RecordOps() as record:
        out.backward(grad)
    assert ("linear_grad_input" in record.names) == (rows <= GRAD_INPUT_ROWS[dtype]), record.names
    assert "linear_grad_weight" not in record.names, record.names
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    F.linear(xr, wr, br).backward(grad)
    eps = torch.finfo(dtype).eps
    for got, want in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        torch.testing.assert_close(got, want, rtol=eps, atol=1e-3)


def test_batched_gradients_through_the_kernel_match_f_linear():
    """``autograd.grad(..., is_grads_batched=True)`` runs the backward on batched gradients: matrix products
    there (the backward's kernels take plain tensors only), F.linear's values."""
    x, w, b = _inputs(4, BIG, grad=True)
    assert _path(ops.linear, x, w, b) == "kernel"
    v = torch.randn(3, 4, BIG[1])
    got = torch.autograd.grad(ops.linear(x, w, b), (x, w, b), v, is_grads_batched=True)
    want = torch.autograd.grad(F.linear(x, w, b), (x, w, b), v, is_grads_batched=True)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_raw_op_edges_and_errors():
    op = torch.ops.classicnets_ext.linear
    w, b = torch.randn(4, 3), torch.randn(4)
    assert op(torch.randn(0, 3), w, b).shape == (0, 4)
    assert torch.equal(op(torch.randn(2, 0), torch.randn(4, 0), b), b.expand(2, 4))
    assert torch.equal(op(torch.randn(2, 0), torch.randn(4, 0)), torch.zeros(2, 4))
    x = torch.randn(2, 3)
    for args, kind, match in [((x.double(), w, b), TypeError, "`input` must be float32, bfloat16 or float16"),
                              ((x, w.half(), b), TypeError, "`weight` must have `input`'s dtype \\(Float\\)"),
                              ((x.bfloat16(), w.bfloat16(), b), TypeError, "`bias` must have `weight`'s dtype"),
                              ((x[0], w, b), ValueError, "2-D `input`"),
                              ((x, w[0], b), ValueError, "2-D `weight`"),
                              ((x[:, :2], w, b), ValueError, "`input` has 2 features but `weight` takes 3"),
                              ((x, w, b[:3]), ValueError, "`bias` of shape \\(4\\)")]:
        with pytest.raises(kind, match=match):
            op(*args)


def test_raw_op_opcheck():
    x, w, b = _inputs(3, (40, 20), grad=True)
    torch.library.opcheck(torch.ops.classicnets_ext.linear.default, (x, w, b))
    torch.library.opcheck(torch.ops.classicnets_ext.linear.default, (x, w, None))
    for dtype in (torch.bfloat16, torch.float16):
        torch.library.opcheck(torch.ops.classicnets_ext.linear.default, (x.to(dtype), w.to(dtype), b.to(dtype)))


def test_kernel_double_backward_matches_f_linear():
    """A gradient penalty through the layer: the op's backward is made of differentiable products."""
    x, w, b = _inputs(4, BIG, grad=True)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    assert _path(ops.linear, x, w, b) == "kernel"
    g, = torch.autograd.grad(ops.linear(x, w, b).tanh().sum(), x, create_graph=True)
    gr, = torch.autograd.grad(F.linear(xr, wr, br).tanh().sum(), xr, create_graph=True)
    got = torch.autograd.grad(g.pow(2).sum(), (x, w, b))
    want = torch.autograd.grad(gr.pow(2).sum(), (xr, wr, br))
    # Both sides in float32 sum 1024-long products in their own orders (F.linear's BLAS differs by CPU: on an
    # AMD EPYC 85 of 2^19 weight-gradient elements differed by up to 1.9e-5): each is held to the float64
    # result instead, by its norm-wise error, with torch's own float32 error as the yardstick.
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    g64, = torch.autograd.grad(F.linear(x64, w64, b64).tanh().sum(), x64, create_graph=True)
    exact = torch.autograd.grad(g64.pow(2).sum(), (x64, w64, b64))
    for a, e, r in zip(got, want, exact):
        assert e.abs().max() > 0

        def error(t):
            return ((t.double() - r).norm() / r.norm()).item()
        assert error(a) < max(4 * error(e), 1e-6), (error(a), error(e))


def test_forward_mode_and_torch_func_take_f_linear():
    x, w, b = _inputs(4, BIG)
    t = torch.randn_like(x)
    out, tangent = torch.func.jvp(lambda v: ops.linear(v, w, b), (x,), (t,))
    torch.testing.assert_close(out, F.linear(x, w, b))
    torch.testing.assert_close(tangent, F.linear(t, w))
    grad = torch.func.grad(lambda v: ops.linear(v, w, b).sum())(x)
    torch.testing.assert_close(grad, w.sum(0).expand_as(x))
    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():
        dual = fwad.make_dual(x, t)
        with _RecordProducts(w.shape) as record:
            ops.linear(dual, w, b)
        assert record.calls and "kernel" not in record.calls  # (the tangent adds products of its own)
        torch.testing.assert_close(fwad.unpack_dual(ops.linear(dual, w, b)).tangent, F.linear(t, w))


@pytest.mark.parametrize("trained", ["weight and bias", "input", "bias of inference tensors"])
def test_operands_are_saved_only_for_the_gradients_asked_for(trained):
    """As torch's mm saves them: the weight only for the input's gradient, the input only for the weight's. A
    frozen layer whose input is changed in place after it ran, a weight updated before the backward of a
    layer that trains only it, or inference-mode operands under a trained bias must not stop the backward."""
    x, w, b = _inputs(4, BIG)
    if trained == "bias of inference tensors":
        with torch.inference_mode():
            x, w = x.clone(), w.clone()
    leaves = {"weight and bias": (w, b), "input": (x,), "bias of inference tensors": (b,)}[trained]
    for t in leaves:
        t.requires_grad_()
    results = []
    for fn in (ops.linear, F.linear):
        source = x * 1 if trained == "input" else x  # a non-leaf, so that it can be changed in place
        assert fn is F.linear or _path(fn, source, w, b) == "kernel"
        out = fn(source, w, b)
        with torch.no_grad():
            (source if trained == "input" else w if trained == "weight and bias" else b.clone()).add_(1)
        results.append(torch.autograd.grad(out.square().sum(), leaves))
        if trained == "weight and bias":
            with torch.no_grad():
                w.sub_(1)
    for got, want in zip(*results):  # (each side's float32 sums in its own order)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_raw_op_under_forward_ad_and_torch_func():
    """torch.ops.classicnets_ext.linear itself (which ops.linear keeps out of transforms) differentiates
    forward and backward, and vmaps, as F.linear does -- not a zero or missing tangent."""
    op = torch.ops.classicnets_ext.linear
    x, w, b = _inputs(4, BIG)
    tx, tw, tb = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    out, tangent = torch.func.jvp(op, (x, w, b), (tx, tw, tb))
    _, want = torch.func.jvp(F.linear, (x, w, b), (tx, tw, tb))
    torch.testing.assert_close(tangent, want)
    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():
        torch.testing.assert_close(fwad.unpack_dual(op(fwad.make_dual(x, tx), w, b)).tangent, F.linear(tx, w))
    for argnums in (0, 1, 2):
        got = torch.func.grad(lambda *a: op(*a).tanh().sum(), argnums)(x, w, b)
        torch.testing.assert_close(got, torch.func.grad(lambda *a: F.linear(*a).tanh().sum(), argnums)(x, w, b))
    xs, ws = torch.randn(3, *x.shape), torch.randn(3, *w.shape) / 32
    torch.testing.assert_close(torch.func.vmap(op, (0, None, None))(xs, w, b),
                               torch.func.vmap(F.linear, (0, None, None))(xs, w, b))
    torch.testing.assert_close(torch.func.vmap(op, (1, 0, None))(xs.transpose(0, 1), ws, None),
                               torch.func.vmap(F.linear, (0, 0, None))(xs, ws, None))


def test_raw_op_refuses_operands_on_other_devices():
    """A meta bias beside CPU operands dispatches to the op's fake kernel: it raises, naming the argument,
    instead of returning an uninitialised CPU tensor."""
    x, w, b = _inputs(2, BIG)
    for args, name in (((x, w, b.to("meta")), "bias"), ((x, w.to("meta"), b), "weight")):
        with pytest.raises(RuntimeError, match=f"`{name}` is on meta but `input` is on cpu"):
            torch.ops.classicnets_ext.linear(*args)


@pytest.mark.parametrize("dtype,rows", [(torch.float32, FP32_KERNEL_ROWS + 1), (torch.float32, FP32_KERNEL_ROWS + 8),
                                        (torch.float64, 2),
                                        (torch.float64, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_column_major_product_equals_f_linear(rows, bias, dtype):
    x, w, b = _inputs(rows, BIG, dtype, bias, grad=True)
    assert _path(ops.linear, x, w, b) == "column_major"
    out = ops.linear(x, w, b)
    expected = F.linear(x, w, b)
    assert out.is_contiguous() and out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    _assert_same_gradients(out, expected, (x, w, b), (x, w, b))


def test_a_strided_weight_is_not_copied_for_the_kernel():
    x, w, b = _inputs(4, BIG)
    w_t = w.t().contiguous().t()  # the same values, column-major
    assert _path(ops.linear, x, w_t, b) == "column_major"
    torch.testing.assert_close(ops.linear(x, w_t, b), F.linear(x, w, b))


def test_gradcheck_through_the_column_major_product():
    x, w, b = _inputs(3, BIG, torch.float64, grad=True)
    assert _path(ops.linear, x, w, b) == "column_major"
    assert torch.autograd.gradcheck(ops.linear, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("case", ["one fp64 row", "small layer", "bf16 past its rows", "one fp16 row", "3-D input",
                                  "reference backend"])
def test_everything_else_is_f_linear(case):
    rows, features, dtype = 8, BIG, torch.float32
    if case == "one fp64 row":
        rows, dtype = 1, torch.float64
    elif case == "small layer":
        features = SMALL
    elif case == "bf16 past its rows":
        rows, dtype = BF16_KERNEL_ROWS + 1, torch.bfloat16
    elif case == "one fp16 row":
        rows, dtype = 1, torch.float16
    x, w, b = _inputs(rows, features, dtype)
    if case == "3-D input":
        x = x.reshape(2, rows // 2, -1)
    context = {"reference backend": classicnets_ext.use_backend("reference")}.get(case, contextlib.nullcontext())
    with context:
        assert _path(ops.linear, x, w, b) == "row_major"
        out, expected = ops.linear(x, w, b), F.linear(x, w, b)
    assert out.dtype == expected.dtype
    assert torch.equal(out, expected)  # the very same call


AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


def _autocast_reference(x, w, b, dtype):
    """F.linear of the operands autocast gives it, in float64: the exact sums of the rounded products."""
    return F.linear(*(None if t is None else t.detach().to(dtype).double() for t in (x, w, b)))


def _assert_as_close_as_f_linear(out, want, x, w, b, dtype):
    """``out`` (ops.linear under autocast) is as near the exact sums as ``want`` (F.linear under autocast), both
    rounded once to ``dtype``: within one ulp of its magnitude more."""
    exact = _autocast_reference(x, w, b, dtype)
    assert out.dtype == want.dtype == dtype and out.shape == want.shape
    ulp = torch.finfo(dtype).eps * exact.abs().max()
    assert (out.double() - exact).abs().max() <= (want.double() - exact).abs().max() + ulp


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("weights", ["frozen", "parameters", "parameters, cache off"])
def test_autocast_inference_matches_f_linear(dtype, weights):
    """Under torch.autocast on the CPU, ops.linear gives autocast's F.linear: the operands cast to the autocast
    dtype, summed, rounded once. At the kernel's rows a weight is not cast for its first read in a region: the
    op reads it in fp32, rounded as it goes. A parameter read again in the region is cast through autocast's own
    cache (once per region) and the kernel of that dtype takes the cast; a weight the cache would not keep
    (frozen, or the cache off) is rounded as it is read every time."""
    rows = 4
    x, w, b = _inputs(rows, BIG)
    if weights != "frozen":
        w, b = torch.nn.Parameter(w), torch.nn.Parameter(b)
    cached = weights == "parameters"
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, cache_enabled=cached):
        with _RecordProducts(w.shape) as record:
            out, again = ops.linear(x, w, b), ops.linear(x, w, b)
        want = F.linear(x, w, b)
        _assert_as_close_as_f_linear(out, want, x, w, b, dtype)
        _assert_as_close_as_f_linear(again, want, x, w, b, dtype)
    kernel_rows = _linear._LINEAR_KERNEL_ROWS.get(dtype, (1, 0))
    second = "kernel" if not cached or kernel_rows[0] <= rows <= kernel_rows[1] else "row_major"
    assert record.calls == ["kernel", second]
    # Which weight the op read: fp32 where nothing cast it.
    assert record.kernel_weight_dtypes == [torch.float32] + ([dtype if cached else torch.float32]
                                                             if second == "kernel" else [])


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_autocast_casts_a_parameter_from_its_second_read_in_a_region(dtype):
    """A region per call (``with torch.autocast(...): model(x)``) reads each parameter once: rounded as it is read,
    never cast. From its second read in one region on, a parameter is autocast's cached cast (the same tensor
    each time); a new region, or torch.clear_autocast_cache(), starts again from a first read."""
    x, w, b = _inputs(4, BIG)
    w, b = torch.nn.Parameter(w), torch.nn.Parameter(b)
    other = torch.nn.Parameter(w.detach().clone())
    with torch.no_grad():
        for _ in range(2):
            with torch.autocast("cpu", dtype=dtype), _RecordProducts(w.shape) as record:
                outs = [ops.linear(x, w, b), ops.linear(x, other, b), ops.linear(x, w, b), ops.linear(x, w, b)]
            assert record.kernel_weight_dtypes == [torch.float32, torch.float32, dtype, dtype]
            assert record.kernel_weights[3] is record.kernel_weights[2]
            for out in outs:
                _assert_as_close_as_f_linear(out, outs[0], x, w, b, dtype)
        with torch.autocast("cpu", dtype=dtype), _RecordProducts(w.shape) as record:
            ops.linear(x, w, b)
            torch.clear_autocast_cache()
            ops.linear(x, w, b)
        assert record.kernel_weight_dtypes == [torch.float32, torch.float32]


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_autocast_frozen_weight_past_the_rounding_rows_is_cast(dtype):
    """Past _AUTOCAST_ROUNDED_ROWS a frozen weight is cast as autocast casts it (rounding it as it is read costs
    the kernel's passes more than the cast): the same results either way."""
    rows = _linear._AUTOCAST_ROUNDED_ROWS[dtype] + 1
    x, w, b = _inputs(rows, BIG)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        with _RecordProducts(w.shape) as record:
            out = ops.linear(x, w, b)
        _assert_as_close_as_f_linear(out, F.linear(x, w, b), x, w, b, dtype)
    assert all(d == dtype for d in record.kernel_weight_dtypes)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_autocast_training_gradients_match_f_linear(dtype):
    """With a derivative asked for, ops.linear under autocast casts as autocast does (through its cache) and
    its gradients reach the fp32 parameters in fp32, as F.linear's do."""
    x, w, b = _inputs(4, BIG, grad=True)
    w, b = torch.nn.Parameter(w.detach()), torch.nn.Parameter(b.detach())
    xr, wr, br = (torch.nn.Parameter(t.detach().clone()) for t in (x, w, b))
    g = torch.randn(4, BIG[1])
    with torch.autocast("cpu", dtype=dtype):
        out, want = ops.linear(x, w, b), F.linear(xr, wr, br)
    assert out.dtype == want.dtype == dtype
    out.backward(g.to(dtype))
    want.backward(g.to(dtype))
    for got, ref in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        assert got.dtype == ref.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_raw_op_takes_an_fp32_weight_with_a_reduced_input(dtype):
    """classicnets_ext::linear(x in bf16/fp16, weight and bias in fp32) is F.linear of the weight and bias cast
    to x's dtype, derivatives included (the parameters' in fp32)."""
    op = torch.ops.classicnets_ext.linear.default
    x, w, b = _inputs(3, BIG)
    xr = x.to(dtype)
    _assert_as_close_as_f_linear(op(xr, w, b), F.linear(xr, w.to(dtype), b.to(dtype)), x, w, b, dtype)
    _assert_as_close_as_f_linear(op(xr, w, None), F.linear(xr, w.to(dtype)), x, w, None, dtype)
    torch.library.opcheck(op, (xr[:, :40].clone().requires_grad_(), w[:20, :40].clone().requires_grad_(),
                               b[:20].clone().requires_grad_()))
    for args, match in [((xr, w, b.to(dtype)), "`bias` must have `weight`'s dtype \\(Float\\)"),
                        ((xr, w.double(), b), "`weight` must have `input`'s dtype"),
                        ((x, w.to(dtype), b), "`weight` must have `input`'s dtype \\(Float\\)")]:
        with pytest.raises(TypeError, match=match):
            op(*args)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_fp32_weight_and_bias_are_rounded_as_autocast_rounds_them(dtype):
    """Sums that show the rounding of each operand: 2^p + 1 rounds to 2^p in a p-bit significand (bf16 p = 8,
    fp16 p = 11), so (2^p + 1) - 2^p is 0 from the rounded weight or bias and 1 from the fp32 one. Through the
    raw op and through ops.linear under autocast with a frozen weight (rounded as it is read), as F.linear."""
    big = 2.0 ** (8 if dtype == torch.bfloat16 else 11)
    x = torch.zeros(2, BIG[0])
    x[:, :2] = 1
    w = torch.zeros(BIG[1], BIG[0])
    w[:, 0], w[:, 1] = big + 1, -big  # weight rounding: 0, not 1
    b = torch.zeros(BIG[1])
    w_b = torch.zeros(BIG[1], BIG[0])
    w_b[:, 0] = -big
    b_b = torch.full((BIG[1],), big + 1)  # bias rounding: 0, not 1
    op = torch.ops.classicnets_ext.linear.default
    for weight, bias in ((w, b), (w_b, b_b)):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            assert torch.equal(F.linear(x, weight, bias), torch.zeros(2, BIG[1], dtype=dtype))
            with _RecordProducts(weight.shape) as record:
                out = ops.linear(x, weight, bias)
        assert record.kernel_weight_dtypes == [torch.float32]
        assert torch.equal(out, torch.zeros(2, BIG[1], dtype=dtype))
        assert torch.equal(op(x.to(dtype), weight, bias), torch.zeros(2, BIG[1], dtype=dtype))
    # NaN and infinities stay what they are.
    w_special = torch.zeros(BIG[1], BIG[0])
    w_special[0, 0], w_special[1, 0], w_special[2, 0] = float("nan"), float("inf"), -float("inf")
    got = op(x.to(dtype), w_special, None)[0, :3]
    assert got[0].isnan() and got[1] == float("inf") and got[2] == -float("inf")


def test_export_records_plain_linear():
    """torch.export records aten.linear, not our op: an exported program runs wherever torch does."""
    layer = Linear(*BIG)
    x = torch.randn(4, BIG[0])
    program = torch.export.export(layer, (x,))
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.linear.default in targets, targets
    torch.testing.assert_close(program.module()(x), F.linear(x, layer.weight, layer.bias))


def _compiled_targets(fn, *args):
    """Compiles ``fn`` (fullgraph: no graph break allowed) with a backend that records the call targets of the
    graph Dynamo captures, runs it, and returns (result, targets)."""
    targets = set()

    def backend(gm, example_inputs):
        targets.update(n.target for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, fullgraph=True)(*args), targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compile_records_our_op_where_eager_runs_the_kernel(dtype):
    layer = Linear(*BIG).to(dtype)
    x = torch.randn(4, BIG[0], dtype=dtype)
    with torch.no_grad():
        out, targets = _compiled_targets(layer, x)
    assert torch.ops.classicnets_ext.linear.default in targets, targets
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))
    # More rows: F.linear, for Inductor to lower as it does any linear.
    x = torch.randn(_linear._LINEAR_KERNEL_ROWS[dtype][1] + 1, BIG[0], dtype=dtype)
    with torch.no_grad():
        out, targets = _compiled_targets(layer, x)
    assert torch.ops.classicnets_ext.linear.default not in targets
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("freezing", [False, True], ids=["eager-weights", "freezing"])
def test_compiled_autocast_inference_records_our_op(dtype, freezing):
    """Under torch.compile and CPU autocast, inference on fp32 parameters records our op on the fp32 weight,
    rounded as the kernel reads it (autocast's F.linear casts the weight in every run of the graph). Under
    Inductor's freezing, which folds that cast into a constant, fp16 records the op on the cast weight and bf16
    F.linear (Inductor's packed oneDNN product). A derivative asked for, or rows past the rounding rows,
    record F.linear."""
    layer = Linear(*BIG)
    weight_dtypes = []

    def backend(gm, example_inputs):
        weight_dtypes.extend(node.args[1].meta["example_value"].dtype for node in gm.graph.nodes
                             if node.target is torch.ops.classicnets_ext.linear.default)
        return gm

    def compiled(rows, grad=False):
        weight_dtypes.clear()
        torch._dynamo.reset()
        x = torch.randn(rows, BIG[0])
        with (torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=dtype),
              torch._inductor.config.patch(freezing=freezing)):
            out = torch.compile(layer, backend=backend, fullgraph=True)(x)
            want = F.linear(x, layer.weight, layer.bias)
        _assert_as_close_as_f_linear(out, want, x, layer.weight, layer.bias, dtype)
        return list(weight_dtypes)

    expected = [torch.float32] if not freezing else [] if dtype == torch.bfloat16 else [dtype]
    assert compiled(4) == expected
    assert compiled(4, grad=True) == []
    if not freezing:
        assert compiled(_linear._AUTOCAST_ROUNDED_ROWS[dtype] + 1) == []


def test_a_dynamic_or_data_dependent_batch_compiles_once_as_f_linear_does():
    """A batch marked dynamic compiles one graph for every size, as F.linear's (the kernel's 8-row limit was a
    guard: a second graph past 8 rows, a RecompileError under error_on_recompile), and the rows a mask picks
    (a data-dependent batch) trace, where the size tests raised GuardOnDataDependentSymNode."""
    x, w, b = _inputs(16, BIG)
    f = torch.compile(lambda v: ops.linear(v, w, b), backend="aot_eager", fullgraph=True)
    torch._dynamo.reset()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for rows in (4, 16, 3):
            v = x[:rows].clone()
            torch._dynamo.mark_dynamic(v, 0)
            torch.testing.assert_close(f(v), F.linear(v, w, b))
    mask = torch.arange(16) % 3 == 0
    g = torch.compile(lambda v, m: ops.linear(v[m], w, b), backend="aot_eager", fullgraph=True)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        torch.testing.assert_close(g(x, mask), F.linear(x[mask], w, b))


def test_inductor_runs_the_op_forward_and_backward():
    x, w, b = _inputs(4, BIG, grad=True)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    torch._dynamo.reset()
    out = torch.compile(ops.linear, fullgraph=True)(x, w, b)
    expected = F.linear(xr, wr, br)
    torch.testing.assert_close(out, expected)
    _assert_same_gradients(out, expected, (x, w, b), (xr, wr, br))


@pytest.mark.parametrize("dtype,freezing", [(torch.bfloat16, False), (torch.float16, True)],
                         ids=["bf16", "fp16-frozen"])
def test_inductor_runs_the_op_under_autocast(dtype, freezing):
    """Inductor calls the op on the fp32 weight (rounded as read), and under freezing on the cast it folded."""
    layer = Linear(*BIG).eval()
    x = torch.randn(4, BIG[0])
    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype), torch._inductor.config.patch(freezing=freezing):
        out = torch.compile(layer, fullgraph=True)(x)
        want = F.linear(x, layer.weight, layer.bias)
    _assert_as_close_as_f_linear(out, want, x, layer.weight, layer.bias, dtype)


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
    assert _path(ours, x, weight=ours.weight) == "kernel"
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(RuntimeError, match="torch.jit.script does not support classicnets_ext.nn.Linear"):
        torch.jit.script(ours)


def test_classifiers_of_the_fc_heavy_models_are_ours():
    net = models.alexnet_paper(num_classes=10)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(type(m) is Linear for m in linears)


def test_compiled_torch_func_transforms_see_f_linear():
    """Under torch.compile inside a torch.func transform the op's autograd (no jvp, no functorch support) was
    recorded: a compiled jvp came back all zeros, a compiled grad failed to compile."""
    x, w, b = _inputs(4, BIG)
    t = torch.ones_like(x)

    def tangent(fn):
        return lambda z: torch.func.jvp(lambda u: fn(u, w, b), (z,), (t,))[1]

    def gradient(fn):
        return torch.func.grad(lambda z: fn(z, w, b).pow(2).sum())

    for transform in (tangent, gradient):
        torch._dynamo.reset()
        got = torch.compile(transform(ops.linear), fullgraph=True, backend="aot_eager")(x)
        want = transform(F.linear)(x)
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want)


def test_sparse_tensors_subclasses_and_modes_get_f_linear():
    """F.linear serves what it alone knows: a sparse input (our op had no sparse kernel: NotImplementedError),
    a torch function mode (which must see linear, not the column-major addmm) and a tensor subclass (torchao's
    quantized weights implement F.linear, not the transposed addmm)."""
    from torch.overrides import TorchFunctionMode

    x, w, b = _inputs(4, BIG)
    for sparse in (x.to_sparse(), x.to_sparse_csr()):
        torch.testing.assert_close(ops.linear(sparse, w, b), F.linear(sparse, w, b))

    class Seen(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with Seen() as seen:
        ops.linear(x, w, b)
    assert seen.names == ["linear"], seen.names

    class Marked(torch.Tensor):  # a subclass that only runs through dispatch
        __torch_function__ = torch._C._disabled_torch_function_impl

    marked = w.as_subclass(Marked)
    assert _path(ops.linear, x, marked, b, weight=w) == "row_major"

    class Quantized(torch.Tensor):  # as torchao's: it implements F.linear and nothing of our op
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func is F.linear:
                return F.linear(*(a.as_subclass(torch.Tensor) if isinstance(a, Quantized) else a for a in args))
            return super().__torch_function__(func, types, args, kwargs)

    quantized = w.as_subclass(Quantized)
    torch._dynamo.reset()
    for fn in (lambda z: ops.linear(z, quantized, b), torch.compile(lambda z: ops.linear(z, quantized, b))):
        torch.testing.assert_close(fn(x).as_subclass(torch.Tensor), F.linear(x, w, b))


def test_jit_trace_warns_no_more_than_torchs_linear():
    import warnings

    layer, x = Linear(*BIG), torch.randn(4, BIG[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(layer, x)
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)], [str(w.message) for w in caught]
    torch.testing.assert_close(traced(x), F.linear(x, layer.weight, layer.bias))
