"""Deployment (issue 12): our models through ``torch.onnx.export(..., dynamo=True)`` -- with no translation
table passed: ``import classicnets_ext`` registers ours -- to standard ONNX that onnxruntime runs as eager
PyTorch does, and through ``torch.export`` to .pt2 archives another process loads.

Networks are exported at small inputs where their heads allow it (the same layers and ops, a fraction of the
time) with random BatchNorm statistics and He-initialised weights, so outputs depend on the input and on the
folds (torchvision's GoogLeNet init gives the same logits for every input). Full-size exports are ``slow``."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import classicnets_ext  # noqa: E402
from classicnets_ext import export, models, ops  # noqa: E402
from classicnets_ext.models.alexnet import ALEXNET_PAPER, ClassicConvNet  # noqa: E402
from classicnets_ext.models.resnet import Bottleneck, ResNet  # noqa: E402
from classicnets_ext.models.zfnet import ZFNET  # noqa: E402

slow = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """He-initialised convolutions and linears, random BatchNorm statistics and affines; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def onnx_export(model, example, path, dynamic: bool):
    """What a user writes: torch.onnx.export with dynamo=True and no custom_translation_table."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=shapes, verbose=False,
                      external_data=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} == {""}, "a node outside ONNX's default domain"
    assert not proto.functions, "local (custom) functions in the model"
    return proto


def assert_runs_as_eager(model, path, x) -> torch.Tensor:
    session = export.onnxruntime_session(path)
    got = export.run_onnxruntime(path, x, session=session)
    with torch.no_grad():
        expected = model(x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)
    return expected


def check_model(model, input_size, tmp_path, dynamic: bool):
    """Export ``model`` (batch 1, or a dynamic batch traced at 2) and compare onnxruntime with eager at batch 1
    and, for a dynamic batch, 3 (whose samples must give different outputs)."""
    gen = torch.Generator().manual_seed(1)
    path = tmp_path / "model.onnx"
    proto = onnx_export(model, torch.randn(2 if dynamic else 1, *input_size, generator=gen), path, dynamic)
    assert_runs_as_eager(model, path, torch.randn(1, *input_size, generator=gen))
    if dynamic:
        out = assert_runs_as_eager(model, path, torch.randn(3, *input_size, generator=gen))
        assert not torch.allclose(out[0], out[1]), "the model ignores its input: the comparison proves nothing"
    return proto


def op_types(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def test_registered_with_the_exporter():
    assert export.ONNX_REGISTRATION_ERROR is None
    table = export.onnx_translation_table()
    for name in ("lrn", "max_pool2d", "max_pool2d_lrn", "inception"):
        assert getattr(torch.ops.classicnets_ext, name).default in table


# ----------------------------------------------------------------------------------------------- networks

def test_alexnet_paper_graph(tmp_path):
    """The registry's alexnet_paper at 3x227x227: the fused POOL/NORM exports as Relu -> MaxPool -> LRN."""
    model = randomized(models.alexnet_paper())
    proto = check_model(model, (3, 227, 227), tmp_path, dynamic=False)
    types = op_types(proto)
    assert types.count("LRN") == 2 and types.count("MaxPool") == 3 and types.count("Conv") == 5, types
    producer = {out: n for n in proto.graph.node for out in n.output}
    for lrn in (n for n in proto.graph.node if n.op_type == "LRN"):
        pool = producer[lrn.input[0]]
        assert pool.op_type == "MaxPool" and producer[pool.input[0]].op_type == "Relu"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lrn.attribute}
        assert attrs["size"] == 5 and attrs["bias"] == 2.0 and attrs["alpha"] == pytest.approx(5e-4)
        assert attrs["beta"] == pytest.approx(0.75)


@pytest.mark.parametrize("order,groups", [("lecture", 1), ("paper", 1), ("paper", 2),
                                          pytest.param("lecture", 2, marks=slow)])  # as test_alexnet_paper_graph's
def test_alexnet_paper_orders_and_groups(order, groups, tmp_path):
    """alexnet_paper's layers (both orders, both groupings) at 3x67x67 (FC6 reads 256 x 1 x 1), dynamic batch."""
    torch.manual_seed(0)
    model = randomized(ClassicConvNet(ALEXNET_PAPER, 67, groups=groups, order=order))
    proto = check_model(model, (3, 67, 67), tmp_path, dynamic=True)
    types = op_types(proto)
    assert types.count("LRN") == 2 and types.count("MaxPool") == 3, types
    conv2 = next(n for n in proto.graph.node if n.op_type == "Conv" and n.input[1].endswith("conv2.weight"))
    assert {a.name: a.i for a in conv2.attribute}["group"] == groups


def test_lenet5(tmp_path):
    model = randomized(models.lenet5())
    check_model(model, (1, 32, 32), tmp_path, dynamic=False)
    check_model(model, (1, 32, 32), tmp_path, dynamic=True)


def test_zfnet_layers(tmp_path):
    """ZFNet's table (ceil_mode pools, the fused POOL/NORM) at 3x64x64."""
    torch.manual_seed(0)
    model = randomized(ClassicConvNet(ZFNET, 64))
    assert op_types(check_model(model, (3, 64, 64), tmp_path, dynamic=True)).count("LRN") == 2


@pytest.mark.parametrize("name", ["googlenet", "googlenet_paper"])
def test_googlenet(name, tmp_path):
    """Both GoogLeNets at 3x64x64: every Inception block decomposes into Conv / Relu / MaxPool / Concat."""
    torch.manual_seed(0)
    model = randomized(models.get_model(name, num_classes=10, aux_logits=False))
    types = op_types(check_model(model, (3, 64, 64), tmp_path, dynamic=True))
    # 3 stem convolutions, 4 per block: the stacked input 1x1s, the 3x3, the "5x5" and the pool projection
    assert types.count("Conv") == 3 + 4 * 9 and types.count("Concat") >= 9, types
    assert types.count("LRN") == (2 if name == "googlenet_paper" else 0)


def test_resnet18(tmp_path):
    torch.manual_seed(0)
    check_model(randomized(models.resnet18(num_classes=10)), (3, 64, 64), tmp_path, dynamic=True)


def test_bottleneck_resnet(tmp_path):
    """ResNet-50's block (a 1x1 -> 3x3 -> 1x1 Bottleneck, folded), one per stage: each stage's first block has
    a downsample, so 1 + 4 * (3 + 1) convolutions, their BatchNorms folded in."""
    model = randomized(ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10))
    types = op_types(check_model(model, (3, 64, 64), tmp_path, dynamic=True))
    assert types.count("Conv") == 17 and "BatchNormalization" not in types, types


FULL_SIZE = [("lenet5", {}), ("alexnet", {}), ("alexnet_paper", dict(order="lecture", groups=2)),
             ("alexnet_paper", dict(order="paper", groups=1)), ("alexnet_paper", dict(order="lecture", groups=1)),
             ("alexnet_paper", dict(order="paper", groups=2)), ("zfnet", {}), ("vgg16", {}), ("vgg11_bn", {}),
             ("googlenet", {}), ("googlenet_paper", {}), ("resnet18", {}), ("resnet50", {})]


@slow
@pytest.mark.parametrize("name,kwargs", FULL_SIZE, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in FULL_SIZE])
@pytest.mark.parametrize("dynamic", [False, True])
def test_full_size(name, kwargs, dynamic, tmp_path):
    """Every listed network at its registry input size (seconds to a minute each, files up to 530 MB)."""
    torch.manual_seed(0)
    model = randomized(models.get_model(name, **kwargs))
    check_model(model, models.get_model_entry(name).input_size, tmp_path, dynamic)


# ------------------------------------------------------------------------------------------ op corner cases

class Pools(torch.nn.Module):
    """Max-pools whose ceil_mode rounding ONNX states differently from torch, on a (2, 3, 10, 10) input."""

    def forward(self, x):
        return (
            # H and W drop torch's last window (it would start in the right padding): 10 -> 4, not 5
            ops.max_pool2d(x, 2, 3, 1, ceil_mode=True),
            # H rounds up (10 -> 6), W drops its last window (10 -> 4): one ONNX ceil_mode cannot say both
            ops.max_pool2d(x, (3, 2), (2, 3), 1, ceil_mode=True),
            ops.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True),  # rounds up: 10 -> 5
            ops.max_pool2d(x[0], 2, 2, ceil_mode=True),  # unbatched (C, H, W)
            # 9x9: H rounds up (9 -> 3) by a whole stride of hand padding (3 rows; fewer gave 2), W drops its
            # last window (9 -> 3)
            ops.max_pool2d(x[..., :9, :9], (5, 2), 3, 0, ceil_mode=True),
        )


class Norms(torch.nn.Module):
    """LRNs ONNX's LRN node cannot take as they are, on a (2, 7, 5, 5) input."""

    def forward(self, x):
        return (
            ops.local_response_norm(x, 4, 1e-2, 0.75, 2.0),  # even size: ONNX centres its window the other way
            ops.local_response_norm(x.flatten(2), 3, 1e-2, 0.75, 2.0),  # 3-D (N, C, L)
            ops.max_pool2d_lrn(x[0], 3, 2, 1, True, 4, 1e-2, 0.75, 2.0, relu=True),  # fused, unbatched, even size
            # alpha or beta <= 0, which torch allows and onnxruntime's LRN rejects ("alpha_ > 0")
            ops.local_response_norm(x, 5, 0.0, 0.75, 2.0),
            ops.local_response_norm(x, 3, -1e-2, 0.75, 2.0),
            ops.local_response_norm(x, 5, 1e-2, -0.5, 2.0),
            ops.max_pool2d_lrn(x, 3, 2, 0, False, 5, 1e-2, 0.0, 2.0, relu=False),
            ops.max_pool2d_lrn(x, 3, 2, 0, False, 5, 1e-2, 0.75, 2.0, relu=True),  # an LRN node of pooled values
        )


# fp64: ONNX's LRN and AveragePool take doubles, onnxruntime's kernels do not ("Could not find an implementation
# for LRN"), so fp64 LRNs run in fp32 inside the graph -- also where the LRN's input is a value the translation
# computed (3-D, fused), which carries no dtype -- and fp64 outside.
@pytest.mark.parametrize("module,dtype", [(Pools(), torch.float32), (Norms(), torch.float32), (Norms(), torch.float64)],
                         ids=["pools", "norms", "norms-fp64"])
def test_op_corner_cases(module, dtype, tmp_path):
    x = torch.randn(2, 7 if isinstance(module, Norms) else 3, *(5, 5) if isinstance(module, Norms) else (10, 10),
                    generator=torch.Generator().manual_seed(0), dtype=dtype) * 3
    onnx_export(module.eval(), x, tmp_path / "op.onnx", dynamic=False)
    session = export.onnxruntime_session(tmp_path / "op.onnx")
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = module(x)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-4, atol=1e-5)  # (dtypes equal too)


class LRNNodes(torch.nn.Module):
    """LRNs that ONNX's LRN node takes as they are, none at the defaults: (size, alpha, beta, k) per output."""
    SETTINGS = ((5, 1e-2, 0.5, 2.0), (3, 2e-2, 1.25, 0.5), (7, 3e-3, 0.6, 1.5))

    def forward(self, x):
        (n0, a0, b0, k0), (n1, a1, b1, k1), (n2, a2, b2, k2) = self.SETTINGS
        return (ops.local_response_norm(x, n0, a0, b0, k0), ops.local_response_norm(x, n1, a1, b1, k1),
                ops.max_pool2d_lrn(x, 3, 2, 0, False, n2, a2, b2, k2, relu=True))


def test_lrn_nodes_carry_every_setting(tmp_path):
    """Each LRN node's size, alpha, beta and bias are the call's (the networks' all share beta 0.75), and
    onnxruntime's results are eager's."""
    x = torch.randn(2, 9, 7, 7, generator=torch.Generator().manual_seed(0)) * 3
    module = LRNNodes().eval()
    proto = onnx_export(module, x, tmp_path / "lrn.onnx", dynamic=False)
    nodes = [n for n in proto.graph.node if n.op_type == "LRN"]
    got = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert [(g["size"], g["alpha"], g["beta"], g["bias"]) for g in got] == [
        (n, pytest.approx(a), pytest.approx(b), pytest.approx(k)) for n, a, b, k in LRNNodes.SETTINGS]
    session = export.onnxruntime_session(tmp_path / "lrn.onnx")
    for g, e in zip(session.run(None, {session.get_inputs()[0].name: x.numpy()}), module(x)):
        torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-4, atol=1e-5)


def test_triton_twins(tmp_path):
    """Under the Triton backend the graph holds the *_triton ops (interpreted on CPU without a GPU): the same
    translations."""
    if "triton" not in classicnets_ext.available_backends():
        pytest.skip("the triton backend is unavailable")
    from classicnets_ext import nn

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch.nn.Sequential(nn.MaxPoolLRN(3, 2, relu=True), nn.MaxPool2d(2, 2), nn.LocalResponseNorm(5)).eval()
    x = torch.randn(2, 8, 17, 17, device=device)
    with classicnets_ext.use_backend("triton"):
        program = torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=True, verbose=False)
        expected = model(x).cpu()
    called = {str(n.target) for n in program.exported_program.graph.nodes}
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert {"classicnets_ext.max_pool2d_lrn_triton.default", "classicnets_ext.lrn_triton.default"} <= called
    assert op_types(proto) == ["Relu", "MaxPool", "LRN", "MaxPool", "LRN"]
    torch.testing.assert_close(export.run_onnxruntime(tmp_path / "m.onnx", x), expected, rtol=1e-4, atol=1e-5)
    # return_indices: the indices op's twin is max_pool2d_triton_indices
    with classicnets_ext.use_backend("triton"):
        torch.onnx.export(PoolWithIndices().eval(), (x,), str(tmp_path / "i.onnx"), dynamo=True, verbose=False)
    session = export.onnxruntime_session(tmp_path / "i.onnx")
    got = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})
    for g, e in zip(got, torch.nn.functional.max_pool2d(x.cpu(), 3, 2, 1, return_indices=True)):
        assert torch.equal(torch.from_numpy(g), e)


class PoolWithIndices(torch.nn.Module):
    def forward(self, x):
        return ops.max_pool2d(x, 3, 2, 1, return_indices=True)


def test_triton_archive_and_onnx_in_a_fresh_process(tmp_path):
    """The *_triton ops exist once the Triton kernels are imported, which ``import classicnets_ext`` leaves for
    first use: a .pt2 traced under the Triton backend loads in a process that imported only classicnets_ext,
    and an ONNX export under that backend works after an earlier ONNX export registered our translations."""
    if "triton" not in classicnets_ext.available_backends():
        pytest.skip("the triton backend is unavailable")
    from classicnets_ext import nn

    model = torch.nn.Sequential(nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5)).eval()
    x = torch.randn(2, 4, 9, 9, device="cuda" if torch.cuda.is_available() else "cpu")
    with classicnets_ext.use_backend("triton"):
        program = export.export_pt2(model, x, tmp_path / "m.pt2")
    assert torch.ops.classicnets_ext.lrn_triton.default in {n.target for n in program.graph.nodes}
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x).cpu(), tmp_path / "expected.pt")
    out = run_python(f"""
        import torch, classicnets_ext, onnx
        from classicnets_ext import nn
        m = torch.nn.Sequential(nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5)).eval()
        x, expected = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'expected.pt')!r})
        torch.onnx.export(m, (x.cpu(),), {str(tmp_path / 'a.onnx')!r}, dynamo=True, verbose=False)
        assert not classicnets_ext._registrations._triton_loaded  # the kernels are not imported yet
        program = torch.export.load({str(tmp_path / 'm.pt2')!r})
        torch.testing.assert_close(program.module()(x).cpu(), expected)
        with classicnets_ext.use_backend("triton"):
            torch.onnx.export(m, (x,), {str(tmp_path / 'b.onnx')!r}, dynamo=True, verbose=False)
        print([n.op_type for n in onnx.load({str(tmp_path / 'b.onnx')!r}).graph.node])
    """)
    assert out.strip().splitlines()[-1] == "['MaxPool', 'LRN']", out


class PoolsWithIndices(torch.nn.Module):
    """Max-pools with ``return_indices``: a converted stock MaxPool2d feeding MaxUnpool2d, and the paths
    where ONNX's MaxPool sees another tensor (ceil rounding padded by hand) or none of the padding, dilation
    and an unbatched input."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = torch.nn.MaxUnpool2d(2, 2)

    def forward(self, x):
        y, i = self.pool(x)
        return (self.unpool(y, i), i,
                *ops.max_pool2d(x, (3, 2), (2, 3), 1, ceil_mode=True, return_indices=True),  # ceil H, floor W
                *ops.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True, return_indices=True),
                *ops.max_pool2d(x[1], 3, (1, 2), (1, 0), return_indices=True))


@pytest.mark.parametrize("size", [(10, 10), (10, 14)], ids=["square", "wide"])
def test_max_pool_indices(size, tmp_path):
    """ONNX MaxPool's indices count through the whole (N, C, H, W) tensor: they become torch's per-plane
    ``h * W + w``, equal to torch's own pools' (stock F.max_pool2d as the reference). Windows of -inf alone (a
    masked region) tie: the first real tap wins, as in torch; in the pool that rounds H up and W down, a
    hand-made -inf pad used to win it, and the index came out negative. A wide input tells rows from columns
    (an index's row width is W, not H)."""
    model = classicnets_ext.convert(PoolsWithIndices()).eval()
    assert type(model.pool) is not torch.nn.MaxPool2d  # ours: its indices come from max_pool2d_indices
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    onnx_export(model, x, tmp_path / "indices.onnx", dynamic=True)
    session = export.onnxruntime_session(tmp_path / "indices.onnx")
    F = torch.nn.functional
    masked = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(1))
    masked[..., :4, :] = float("-inf")
    for batch in (x, masked):
        got = [torch.from_numpy(g) for g in session.run(None, {session.get_inputs()[0].name: batch.numpy()})]
        y, i = F.max_pool2d(batch, 2, 2, return_indices=True)
        expected = (F.max_unpool2d(y, i, 2, 2), i,
                    *F.max_pool2d(batch, (3, 2), (2, 3), 1, ceil_mode=True, return_indices=True),
                    *F.max_pool2d(batch, 3, 2, 1, dilation=2, ceil_mode=True, return_indices=True),
                    *F.max_pool2d(batch[1], 3, (1, 2), (1, 0), return_indices=True))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and torch.equal(g, e)


def assert_indices_as_torchs(module, pools, batches, path):
    """``module`` (``pools``: F.max_pool2d arguments after the input, with return_indices) exported at
    ``batches[0]``'s shape gives onnxruntime outputs and indices equal to torch's own pools', for each batch."""
    onnx_export(module.eval(), batches[0], path, dynamic=False)
    session = export.onnxruntime_session(path)
    for batch in batches:
        got = [torch.from_numpy(g) for g in session.run(None, {session.get_inputs()[0].name: batch.numpy()})]
        expected = [t for args, kwargs in pools
                    for t in torch.nn.functional.max_pool2d(batch, *args, return_indices=True, **kwargs)]
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and torch.equal(g, e)


class PoolsOf(torch.nn.Module):
    """ops.max_pool2d with return_indices, one call per (args, kwargs) of ``pools``."""

    def __init__(self, pools):
        super().__init__()
        self.pools = pools

    def forward(self, x):
        return tuple(t for args, kwargs in self.pools
                     for t in ops.max_pool2d(x, *args, return_indices=True, **kwargs))


def test_max_pool_indices_of_windows_over_256_taps(tmp_path):
    """Windows of more than 256 taps (17x17: 289, 16x17: 272) keep an int32 argmax, not a 1-byte one: on an
    increasing input each maximum is a window's last tap (288, 271), or after a flip of the columns the first
    of its last row (272, 256), which a byte would wrap."""
    pools = [((17, 2), {}), (((16, 17), (1, 3), (8, 4)), {}), ((17, 3, 8), dict(ceil_mode=True))]
    x = torch.arange(2 * 2 * 21 * 23, dtype=torch.float32).reshape(2, 2, 21, 23)
    assert_indices_as_torchs(PoolsOf(pools), pools, [x, x.flip(-1).contiguous()], tmp_path / "wide.onnx")


def test_max_pool_indices_with_dilations_unequal_per_dimension(tmp_path):
    """Row and column dilations differ ((2, 1), (1, 3)): each dimension's window steps by its own."""
    pools = [((3, 2, 1), dict(dilation=(2, 1))), (((3, 2), 1, 1), dict(dilation=(1, 3))),
             ((3, (2, 1), (1, 0)), dict(dilation=(2, 1), ceil_mode=True))]
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 11, 13, generator=gen) for _ in range(2)]
    assert_indices_as_torchs(PoolsOf(pools), pools, batches, tmp_path / "dilated.onnx")


# ------------------------------------------------------------------------------------------------- .pt2

def test_pool_indices_export_with_a_dynamic_height_and_width():
    """A SegNet-style pool with return_indices exports for a range of image sizes, as F.max_pool2d does: the
    indices op's fake kernel tested the argmax against the ceil_mode size too, a guard torch.export cannot
    prove over the range ("Constraints violated (h, w)")."""
    class Pool(torch.nn.Module):
        def forward(self, x):
            return ops.max_pool2d(x, 3, 2, 1, return_indices=True)

    h, w = torch.export.Dim("h", min=8, max=64), torch.export.Dim("w", min=8, max=64)
    program = torch.export.export(Pool(), (torch.randn(2, 3, 10, 10),), dynamic_shapes=({2: h, 3: w},))
    x = torch.randn(2, 3, 13, 11)
    for got, expected in zip(program.module()(x), torch.nn.functional.max_pool2d(x, 3, 2, 1, return_indices=True)):
        assert torch.equal(got, expected)


def test_a_dynamic_batch_has_no_upper_bound(tmp_path):
    """--dynamic-batch's archive refused a batch over 4096 (a Dim max nobody asked for) where its ONNX file
    ran it."""
    model = models.lenet5().eval()
    export.export_pt2(model, torch.randn(1, 1, 32, 32), tmp_path / "m.pt2", dynamic_batch=True)
    x = torch.randn(4100, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(tmp_path / "m.pt2").module()(x), model(x))


def run_python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def all_ops_net() -> torch.nn.Module:
    """A small net on all four ops: the fused POOL/NORM, an Inception block, a max-pool and an LRN."""
    from classicnets_ext import nn

    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), nn.MaxPoolLRN(3, 2, relu=True),
                               nn.Inception(16, 8, 4, 8, 4, 8, 8, style="paper"), nn.MaxPool2d(2, 2),
                               nn.LocalResponseNorm(5))


@pytest.mark.parametrize("build,size", [(all_ops_net, 32), pytest.param(
    lambda: models.googlenet_paper(num_classes=10, aux_logits=False), 64, marks=slow)], ids=["all-ops", "googlenet_paper"])
def test_pt2_loads_in_a_fresh_process(build, size, tmp_path):
    """Saved here with a dynamic batch; loaded and run in another process that imports only torch and
    classicnets_ext."""
    torch.manual_seed(0)
    model = randomized(build())
    program = export.export_pt2(model, torch.randn(1, 3, size, size), tmp_path / "m.pt2", dynamic_batch=True)
    called = {n.target for n in program.graph.nodes if n.op == "call_function"}
    for name in ("max_pool2d_lrn", "lrn", "max_pool2d", "inception"):
        assert getattr(torch.ops.classicnets_ext, name).default in called
    x = torch.randn(3, 3, size, size)
    torch.save(x, tmp_path / "x.pt")
    run_python(f"""
        import torch, classicnets_ext
        program = torch.export.load({str(tmp_path / 'm.pt2')!r})
        torch.save(program.module()(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})
    """)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x))


def test_googlenet_train_outputs_save_and_load(tmp_path):
    """googlenet in train mode with its aux heads returns GoogLeNetOutputs; torch.export.save could not write
    the namedtuple ("didn't register a serialized_type_name") until the model registered it."""
    torch.manual_seed(0)
    model = models.googlenet(aux_logits=True, init_weights=True).train()
    for m in model.modules():  # the same outputs from both runs
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = torch.randn(2, 3, 96, 96)
    path = tmp_path / "googlenet_train.pt2"
    export.export_pt2(model, x, path)
    got = torch.export.load(path).module()(x)
    want = model(x)
    assert type(got) is models.GoogLeNetOutputs
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_onnx_from_an_exported_program(tmp_path):
    """torch.onnx.export of a torch.export program (ours: traced without grad; captured, the ops still save
    what a backward reads) -- our ops are still in it and translate the same way, the saved outputs dropped."""
    torch.manual_seed(0)
    model = randomized(ClassicConvNet(ALEXNET_PAPER, 67))
    program = export.export_pt2(model, torch.randn(1, 3, 67, 67), tmp_path / "m.pt2", dynamic_batch=True)
    pools = [n for n in program.graph.nodes if n.target == torch.ops.classicnets_ext.max_pool2d_lrn.default]
    assert len(pools) == 2 and all(n.args[-1] for n in pools)  # save_for_backward: the archive can train
    proto = onnx_export(program, torch.randn(2, 3, 67, 67), tmp_path / "m.onnx", dynamic=True)
    assert op_types(proto).count("LRN") == 2
    assert_runs_as_eager(model, tmp_path / "m.onnx", torch.randn(3, 3, 67, 67))


@slow  # a fresh process: ~20 s on 2 busy cores
def test_registration_when_the_exporter_is_loaded_first(tmp_path):
    """torch.onnx's exporter imported before classicnets_ext: the translations are registered at once."""
    out = run_python(f"""
        import torch
        import torch.onnx._internal.exporter._core  # the exporter (and its registry) first
        import classicnets_ext, onnx
        from classicnets_ext import nn
        m = torch.nn.Sequential(nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5))
        torch.onnx.export(m, (torch.randn(1, 8, 9, 9),), {str(tmp_path / 'm.onnx')!r}, dynamo=True, verbose=False)
        print(sorted(n.op_type for n in onnx.load({str(tmp_path / 'm.onnx')!r}).graph.node))
    """)
    assert "['LRN', 'MaxPool']" in out


# ------------------------------------------------------------------------------------------------- CLI

def test_cli_onnx(tmp_path, capsys):
    from classicnets_ext.__main__ import main

    out = tmp_path / "lenet.onnx"
    assert main(["export", "lenet5", "--format", "onnx", "--dynamic-batch", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnx.checker: ok" in text and out.exists()
    assert os.listdir(tmp_path) == ["lenet.onnx"], "a small model's .onnx does not stand alone (external data)"
    diffs = [float(line.rsplit(": ", 1)[1].rstrip(")")) for line in text.splitlines() if "onnxruntime vs eager" in line]
    assert len(diffs) == 2 and max(diffs) < 1e-4, text


def test_cli_pt2(tmp_path, capsys):
    from classicnets_ext.__main__ import main

    # no --format: pt2 by the suffix
    assert main(["export", "lenet5", "--model-arg", "c3_table=True", "--out", str(tmp_path / "m.pt2")]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if line.startswith("loaded .pt2 vs eager, batch 1: "))
    assert float(line.rsplit(": ", 1)[1].rstrip(")")) < 1e-6, text
    # A model with no outputs (num_classes=0, a valid nn.Linear(84, 0)): its check used to end in a traceback.
    assert main(["export", "lenet5", "--model-arg", "num_classes=0", "--out", str(tmp_path / "empty.pt2")]) == 0
    assert "max |difference| 0 (an empty output)" in capsys.readouterr().out


def test_cli_exports_the_weights_it_is_given(tmp_path, capsys):
    """--weights: the archive holds those weights (the CLI built the model without them and nothing noticed:
    its check compares the archive with the same model)."""
    from classicnets_ext.__main__ import main

    torch.manual_seed(5)
    trained = models.lenet5().eval()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "m.pt2"
    assert main(["export", "lenet5", "--weights", str(tmp_path / "w.pt"), "--out", str(out)]) == 0
    capsys.readouterr()
    x = torch.randn(1, 1, 32, 32)  # (exported at batch 1: no --dynamic-batch)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(x), trained(x))
    torch.manual_seed(0)  # the CLI's own seed: a model built without the file would be this one
    with torch.no_grad():
        assert not torch.allclose(models.lenet5().eval()(x), trained(x))


def printed_differences(text: str, label: str) -> list[float]:
    """The absolute differences of the CLI's ``<label>, batch N: max |difference| D (...)`` lines."""
    return [float(re.search(r"max \|difference\| (\S+) ", line).group(1))
            for line in text.splitlines() if line.startswith(label + ", batch ")]


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_cli_compares_the_written_file_with_eager(fmt, tmp_path, capsys, monkeypatch):
    """The printed difference is the written file's outputs (onnxruntime's run, the loaded archive's) against
    eager's: a file answering eager's outputs + 1 prints a difference of 1, not a comparison of eager with
    itself."""
    from classicnets_ext.__main__ import main
    from classicnets_ext.export import _api

    if fmt == "onnx":
        run_onnxruntime = _api.run_onnxruntime
        shifted = lambda *args, **kwargs: run_onnxruntime(*args, **kwargs) + 1  # noqa: E731
        monkeypatch.setattr(_api, "run_onnxruntime", shifted)
        monkeypatch.setattr(export, "run_onnxruntime", shifted)
        label = "onnxruntime vs eager"
    else:
        load = torch.export.load

        class Shifted:
            def __init__(self, program):
                self.program = program

            def module(self):
                module = self.program.module()
                return lambda x: module(x) + 1

        monkeypatch.setattr(torch.export, "load", lambda *args, **kwargs: Shifted(load(*args, **kwargs)))
        label = "loaded .pt2 vs eager"
    assert main(["export", "lenet5", "--format", fmt, "--dynamic-batch", "--out", str(tmp_path / f"m.{fmt}")]) == 0
    text = capsys.readouterr().out
    diffs = printed_differences(text, label)
    assert len(diffs) == 2 and all(d == pytest.approx(1, abs=1e-3) for d in diffs), text


def test_cli_model_arg_bare_string(tmp_path, capsys, monkeypatch):
    """``--model-arg order=paper`` (the help's example): a value that is no Python literal is a string, and
    the builder gets it (with ``groups=1``, a literal, as an int)."""
    from classicnets_ext import nn
    from classicnets_ext.__main__ import main

    built = []
    get_model = models.get_model

    def spy(name, **kwargs):
        built.append((name, kwargs, get_model(name, **kwargs)))
        return built[-1][2]

    monkeypatch.setattr(models, "get_model", spy)
    assert main(["export", "alexnet_paper", "--model-arg", "order=paper", "--model-arg", "groups=1",
                 "--out", str(tmp_path / "m.pt2")]) == 0
    assert "loaded .pt2 vs eager, batch 1: " in capsys.readouterr().out
    [(name, kwargs, model)] = built
    assert name == "alexnet_paper" and kwargs == dict(weights=None, order="paper", groups=1), kwargs
    assert not any(isinstance(m, nn.MaxPoolLRN) for m in model.modules())  # ReLU -> NORM -> POOL, unfused
    assert all(m.groups == 1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("argv,message", [
    (["lenet5", "--format", "onnx", "--input", "1x32"], "--input"),
    (["lenet5", "--format", "onnx", "--model-arg", "c3_table"], "--model-arg"),
    (["lenet", "--format", "onnx"], "unknown model 'lenet'"),
    # Each of these ended in a traceback (from the exporter, or from writing the file):
    (["lenet5", "--format", "onnx", "--input", "3x32x32"], "argument --input: lenet5 cannot run on 3x32x32"),
    (["lenet5", "--format", "pt2", "--input", "1x20x20"], "argument --input: lenet5 cannot run on 1x20x20"),
    (["lenet5", "--format", "onnx", "--model-arg", "num_classes=-3"], "negative dimension"),
    (["lenet5", "--format", "pt2", "--out", "{tmp}/missing/m.pt2"], "argument --out: folder"),
    (["lenet5", "--format", "pt2", "--out", "{tmp}"], "argument --out: cannot write"),  # a folder
    (["lenet5", "--format", "onnx", "--out", "{tmp}"], "argument --out: cannot write"),
    (["lenet5", "--format", "pt2", "--out", "{tmp}/m.onnx"], "argument --out: '{tmp}/m.onnx' ends in .onnx but"),
    (["lenet5", "--out", "{tmp}/m.bin"], "argument --format: needed when --out does not end in .onnx or .pt2"),
])
def test_cli_bad_arguments(argv, message, tmp_path, capsys):
    from classicnets_ext.__main__ import main

    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["export", *argv, *([] if "--out" in argv else ["--out", str(tmp_path / "m")])]) == 2
    err = capsys.readouterr().err
    message = message.format(tmp=tmp_path)
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv,message", [
    (["nope", "--format", "onnx"], "argument MODEL: unknown model 'nope' (choose from alexnet, "),
    (["lenet5", "--format", "onnx", "--model-arg", "foo=1"], "argument --model-arg: "),
    (["lenet5", "--format", "onnx", "--model-arg", "num_classes=-1"], "argument --model-arg: "),
    (["lenet5", "--format", "pt2", "--weights", "{tmp}/none.pth"], "argument --weights: "),
    # A traceback: a side beyond int64 (torch.randn's TypeError), an input beyond the machine's memory.
    (["lenet5", "--format", "pt2", "--input", "1x99999999999999999999x32"], "argument --input: "),
    (["lenet5", "--format", "pt2", "--input", "1x4000000x4000000"], "argument --input: 1x4000000x4000000 "),
])
def test_cli_errors_name_their_argument(argv, message, tmp_path, capsys):
    """One line naming the argument, as the other commands' errors: ``python -m classicnets_ext export: error:
    argument ...: ...``, exit status 2."""
    from classicnets_ext.__main__ import main

    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["export", *argv, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m classicnets_ext export: error: " + message) and len(err.splitlines()) == 1, err


def test_cli_reader_that_leaves_early(tmp_path):
    """``... export ... | head -1``: the rest of the output goes nowhere, without a BrokenPipeError traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "classicnets_ext", "export", "lenet5", "--out", str(tmp_path / "m.pt2")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as process:
        assert process.stdout.readline().startswith(b"wrote ")
        process.stdout.close()  # as head does: the lines that follow meet a closed pipe
        err = process.stderr.read().decode()
    assert process.returncode == 1 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert (tmp_path / "m.pt2").exists()


def test_input_size_in_any_case():
    assert export.parse_input_size("1X32x32") == export.parse_input_size(" 1 x 32 x 32 ") == (1, 32, 32)
    with pytest.raises(ValueError, match="--input"):
        export.parse_input_size("1x32")


def test_cli_bad_format(tmp_path, capsys):
    from classicnets_ext.__main__ import main

    with pytest.raises(SystemExit):
        main(["export", "lenet5", "--format", "tflite", "--out", str(tmp_path / "m")])
    assert "--format" in capsys.readouterr().err


def test_an_option_onnx_cannot_express_is_named_by_the_export(monkeypatch):
    """Our translations refuse what ONNX cannot say with a ValueError starting "ONNX export:"; torch.onnx wraps
    it (maybe twice), and export_onnx raises UnsupportedExportError with its message. The search looked only
    for a NotImplementedError, which no translation raises, so the user got torch.onnx's wrapper instead."""
    from classicnets_ext.export import _api

    cause = ValueError("ONNX export: inception's weights must have static shapes")
    try:
        try:
            raise cause
        except ValueError as inner:
            raise RuntimeError("translation failed") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert _api._unsupported_cause(wrapped) is cause
    assert _api._unsupported_cause(RuntimeError("ONNX export: not ours")) is None  # not a translation's kind
    assert _api._unsupported_cause(ValueError("some other error")) is None

    def refuse(*args, **kwargs):
        raise RuntimeError("the exporter failed") from cause

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(export.UnsupportedExportError, match="inception's weights must have static shapes"):
        export.export_onnx(torch.nn.Identity(), torch.randn(1, 3, 4, 4), "unused.onnx")
