"""Network analysis (classicnets_ext.analysis): the lecture notes' numbers, MACs against torchinfo and ptflops,
receptive fields by hand, FlopCounterMode on our ops, and the summary / compare command line.

Registry models are summarised on fake tensors (no weights, no arithmetic: a fraction of a second each);
torchinfo and ptflops run on torchvision's models built on the meta device, which they support as well.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from classicnets_ext import _extension, models, reference
from classicnets_ext.__main__ import main
from classicnets_ext.analysis import compare, formulas, summary
from classicnets_ext.models.vgg import cfgs
from classicnets_ext.nn import Linear, LocalResponseNorm, MaxPool2d, MaxPoolLRN

requires_c = pytest.mark.skipif(not _extension.available(), reason="needs the compiled extension _C")


def meta_params(name: str) -> int:
    with torch.device("meta"):
        model = models.get_model(name)
    if hasattr(model, "drop_aux"):
        model.drop_aux()
    return sum(p.numel() for p in model.parameters())


def rows_by_name(result):
    return {r.name: r for r in result.layers}


def cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ----------------------------------------------------------------------------------- the lecture notes

def test_vgg16_parameters_and_fc6_share(capsys):
    result = summary("vgg16")
    assert result.total_params == result.trainable_params == 138_357_544
    assert sum(r.params for r in result.layers) == result.total_params
    largest = max(result.layers, key=lambda r: r.params)
    assert (largest.name, largest.type) == ("classifier.0", "Linear")
    assert largest.params == 7 * 7 * 512 * 4096 + 4096 == 102_764_544
    assert f"{100 * largest.params / result.total_params:.1f}" == "74.3"
    assert result.depth == 16
    assert result.param_bytes == 4 * result.total_params
    status, out, _ = cli(capsys, "summary", "vgg16")
    assert status == 0
    fc6 = next(line for line in out.splitlines() if "classifier.0" in line)
    assert "102,764,544" in fc6 and "74.3%" in fc6
    assert "Total params: 138,357,544" in out


def test_alexnet_paper_shapes_and_layers():
    result = summary("alexnet_paper")
    assert result.input_size == [1, 3, 227, 227]
    rows = result.layers
    assert rows[0].name == "features.conv1" and rows[0].output_shape == [1, 96, 55, 55]
    fc6 = next(i for i, r in enumerate(rows) if r.type == "Linear")
    assert rows[fc6 - 1].output_shape == [1, 256, 6, 6]  # pool5, flattened into FC6's 9216 inputs
    assert rows[fc6].params == 9216 * 4096 + 4096 and rows[fc6].name == "classifier.0"
    assert sum(r.type in ("Conv2d", "Linear") for r in rows) == result.depth == 8


def test_compare_parameter_ratio(capsys):
    alexnet, googlenet = compare(["alexnet_paper", "googlenet_paper"])
    assert (alexnet.params, googlenet.params) == (meta_params("alexnet_paper"), meta_params("googlenet_paper"))
    assert (alexnet.depth, googlenet.depth) == (8, 22)  # GoogLeNet's "22 layers": 3 stem + 9 x 2 + FC
    ratio = alexnet.params / googlenet.params
    assert 8 < ratio < 9  # the notes' "12x fewer" assumes 5M; Table 1 adds up to 7.0M without aux heads
    status, out, _ = cli(capsys, "compare", "alexnet_paper", "googlenet_paper")
    assert status == 0
    line = next(line for line in out.splitlines() if "googlenet_paper" in line)
    assert f"{ratio:.2f}x fewer" in line and f"{googlenet.params:,}" in line
    status, out, _ = cli(capsys, "compare", "alexnet_paper", "googlenet_paper", "--format", "json")
    rows = json.loads(out)["models"]
    assert [sorted(r) for r in rows] == [["activation_bytes", "depth", "macs", "name", "params"]] * 2
    assert [r["params"] for r in rows] == [alexnet.params, googlenet.params]


# ------------------------------------------------------------------------------ MACs against the tools

@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_macs_match_torchinfo_and_ptflops(name):
    torchinfo = pytest.importorskip("torchinfo")
    ptflops = pytest.importorskip("ptflops")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        tv = getattr(torchvision.models, name)()
    ours = summary(tv, (1, 3, 224, 224))
    info = torchinfo.summary(tv, input_size=(1, 3, 224, 224), device="meta", verbose=0)
    assert abs(ours.total_macs - info.total_mult_adds) / info.total_mult_adds < 0.01
    # Layer by layer the conv and linear MACs are exact: torchinfo adds one MAC per output element for a bias.
    names = {m: n for n, m in tv.named_modules()}
    layers = {r.name: r for r in ours.layers}
    checked = 0
    for layer in info.summary_list:
        if isinstance(layer.module, (nn.Conv2d, nn.Linear)):
            out = torch.Size(layer.output_size)
            bias = 0 if layer.module.bias is None else out.numel() if isinstance(layer.module, nn.Conv2d) else \
                out[0] * layer.module.bias.numel()
            assert layers[names[layer.module]].macs == layer.macs - bias, names[layer.module]
            checked += 1
    assert checked == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in tv.modules())
    macs, _ = ptflops.get_model_complexity_info(tv, (3, 224, 224), as_strings=False, print_per_layer_stat=False,
                                                backend="aten")
    assert abs(ours.total_macs - macs) / macs < 0.01
    # Our registry model (our max-pools, on fake tensors) counts the same as torchvision's (on meta tensors).
    registry = summary(name)
    assert (registry.total_macs, registry.activation_bytes) == (ours.total_macs, ours.activation_bytes)


# ---------------------------------------------------------------------------------- receptive fields

def test_vgg16_receptive_fields_by_hand():
    rows = [r for r in summary("vgg16").layers if r.name.startswith("features.")]
    field, jump, expected = 1, 1, []
    for v in cfgs["D"]:  # r += (k - 1) * j; j *= stride
        if v == "M":
            field, jump = field + jump, jump * 2
            expected.append((field, jump))
        else:
            field += 2 * jump
            expected += [(field, jump)] * 2  # the conv and the ReLU after it
    assert [(r.receptive_field, r.jump) for r in rows] == expected
    assert expected[-1] == (212, 32) and rows[-2].receptive_field == 196  # conv5_3 sees 196 px, pool5 212


def test_branching_blocks_take_the_largest_path():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.wide, self.narrow = nn.Conv2d(3, 4, 5, padding=2), nn.Conv2d(3, 4, 1)
            self.deep = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1))

        def forward(self, x):
            return self.wide(x) + self.narrow(x) + self.deep(x)

    result = summary(TwoPaths(), (1, 3, 8, 8))
    assert result.depth == 3 and result.total_macs == 64 * (4 * 3 * 25 + 4 * 3 + 4 * 3 + 2 * 4 * 4)
    assert rows_by_name(result)["wide"].receptive_field == 5
    # A residual block: the shortcut (stride-2 1x1) is shorter than the 3x3 -> 3x3 path.
    resnet = summary("resnet18")
    block = rows_by_name(resnet)
    assert block["layer2.0.downsample.0"].receptive_field < block["layer2.0.conv2"].receptive_field
    assert resnet.depth == 18 and summary("resnet50").depth == 50
    # The fused Inception block is one row: its 1x1 -> 5x5 path (3x3 in torchvision's), two conv layers deep.
    for name, k in (("googlenet_paper", 5), ("googlenet", 3)):
        rows = summary(name).layers
        for before, row in zip(rows, rows[1:]):
            if row.type == "Inception":
                assert row.receptive_field == before.receptive_field + (k - 1) * before.jump, (name, row.name)


def test_broadcast_gate_widens_the_field_but_keeps_the_jump():
    """A squeeze-and-excitation gate (SENet, MobileNetV3, EfficientNet) scales each pixel by a global
    statistic: the field becomes the whole map, the product stays on the map's grid (jump 1 here, where the
    gate's own (N, C, 1, 1) input has jump 14 and once leaked it to every later layer)."""
    class Gate(nn.Module):
        def forward(self, x):
            return x * F.adaptive_avg_pool2d(x, 1).sigmoid()

    model = nn.Sequential(nn.Conv2d(1, 1, 3), Gate(), nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3, stride=2))
    rows = summary(model, (1, 1, 16, 16)).layers
    assert [(r.receptive_field, r.jump) for r in rows] == [(3, 1), (3 + 13, 1), (18, 1), (20, 2)]


def test_window_of_one_value_counts_both_sides():
    """torch's pools take ``kernel_size=(3,)`` as 3x3: so do the MAC formulas (they failed to unpack it)."""
    for pool in (nn.MaxPool2d((3,), (2,)), MaxPool2d((3,), (2,)), MaxPoolLRN((3,), (2,), size=3)):
        row = summary(nn.Sequential(pool), (1, 2, 9, 9)).layers[0]
        lrn = 5 * 2 * 4 * 4 if isinstance(pool, MaxPoolLRN) else 0
        assert (row.output_shape, row.macs, row.receptive_field) == ([1, 2, 4, 4], 9 * 2 * 4 * 4 + lrn, 3)


def test_non_square_windows_count_both_sides():
    """A kh x kw window is kh * kw MACs per output element (counting kh * kh, the first side twice, passed every
    square-windowed check)."""
    row = summary(nn.Sequential(nn.MaxPool2d((1, 3), stride=1)), (1, 1, 8, 8)).layers[0]
    assert (row.output_shape, row.macs) == ([1, 1, 8, 6], 1 * 3 * 8 * 6) == ([1, 1, 8, 6], 144)
    for pool in (nn.MaxPool2d((3, 2), 1), MaxPool2d((3, 2), 1), MaxPoolLRN((3, 2), 1, size=3)):
        row = summary(nn.Sequential(pool), (1, 2, 8, 8)).layers[0]  # 6x7 out
        lrn = (3 + 2) * 2 * 6 * 7 if isinstance(pool, MaxPoolLRN) else 0
        assert (row.output_shape, row.macs) == ([1, 2, 6, 7], 3 * 2 * 2 * 6 * 7 + lrn), type(pool)
    # LeNet's table conv takes an int kernel, but its formula a pair: 60 connections of 5x3 at 2 x 10 x 10.
    assert formulas.table_conv2d_macs([2, 16, 10, 10], 60, (5, 3)) == 2 * 10 * 10 * 60 * 15 == 180_000
    assert formulas.table_conv2d_macs([2, 16, 10, 10], 60, (3, 5)) == 180_000


def test_dilated_conv_and_pool_modules_widen_the_field():
    """A module's dilation d spreads its k taps over d(k - 1) + 1 input steps: r += d (k - 1) j (its dilation was
    taken as 1, and only F.conv2d's was tested)."""
    row = summary(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2)), (1, 1, 16, 16)).layers[0]
    assert (row.output_shape, row.receptive_field, row.jump) == ([1, 1, 12, 12], 1 + 2 * 2, 1) == ([1, 1, 12, 12], 5, 1)
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2),                # 31 -> 15, r 3, j 2
                          nn.Conv2d(1, 1, 3, dilation=3),              # 15 -> 9, r 3 + 3*2*2 = 15, j 2
                          nn.MaxPool2d(3, stride=2, dilation=2),       # 9 -> 3, r 15 + 2*2*2 = 23, j 4
                          MaxPool2d(2, stride=1, dilation=2))          # 3 -> 1, r 23 + 2*1*4 = 31, j 4
    rows = summary(model, (1, 1, 31, 31)).layers
    assert [r.output_shape[-1] for r in rows] == [15, 9, 3, 1]
    assert [(r.receptive_field, r.jump) for r in rows] == [(3, 2), (15, 2), (23, 4), (31, 4)]
    # The larger kernel and the larger dilation on different sides: a 3x2 kernel dilated (1, 3) spans 3 x 4
    # (the field is the larger side, 4; it was counted 1 + 3 * (3 - 1) = 7), as a module and as F.conv2d.
    weight = torch.randn(1, 1, 3, 2)

    class Functional(nn.Module):
        def forward(self, x):
            return F.conv2d(x, weight, dilation=(1, 3))

    for layer in (nn.Conv2d(1, 1, (3, 2), dilation=(1, 3)), nn.MaxPool2d((3, 2), 1, dilation=(1, 3)), Functional()):
        rows = summary(nn.Sequential(layer), (1, 1, 16, 16)).layers
        assert (rows[0].output_shape, rows[0].receptive_field) == ([1, 1, 14, 13], 4), layer


def test_fused_inception_counts_as_torchvisions_branches():
    """Our googlenet (one fused row per Inception block, its largest path built in) against torchvision's (every
    branch its own rows, joined by the tracker at the concatenation): the same parameters, MACs, depth and
    receptive fields."""
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        tv = summary(torchvision.models.googlenet(aux_logits=False, init_weights=False))
    ours = summary("googlenet")
    assert (tv.total_params, tv.total_macs, tv.depth) == (ours.total_params, ours.total_macs, ours.depth)
    assert len(tv.layers) > len(ours.layers)
    tv_rows = rows_by_name(tv)
    for row in ours.layers:
        if row.type != "Inception":  # a block's output: torchvision's has no row of its own
            assert (tv_rows[row.name].receptive_field, tv_rows[row.name].jump) == (row.receptive_field, row.jump)


def test_functional_convs_and_pools_map_the_field():
    """Pools and convolutions called as functions in a forward (F.max_pool2d, F.conv2d, torch.max_pool2d, our
    ops) widen the field and the jump, and a functional convolution adds to the depth, as their modules do: the
    field used to pass through them unchanged. A conv module, whose forward calls F.conv2d, still counts once."""
    from classicnets_ext import ops

    class PoolBetween(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.c2(F.max_pool2d(F.relu(self.c1(x)), 2))

    rows = rows_by_name(summary(PoolBetween(), (1, 1, 16, 16)))
    assert (rows["c1"].receptive_field, rows["c1"].jump) == (3, 1)
    assert (rows["c2"].receptive_field, rows["c2"].jump) == (3 + 1 + 2 * 2, 2) == (8, 2)

    class ConvFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.c = nn.Parameter(torch.randn(8, 3, 3, 3)), nn.Conv2d(8, 8, 3)

        def forward(self, x):
            return self.c(F.conv2d(x, self.w, stride=2))

    result = summary(ConvFirst(), (1, 3, 17, 17))
    assert result.depth == 2 and (result.layers[0].receptive_field, result.layers[0].jump) == (3 + 2 * 2, 2)
    # The MACs of a convolution outside any leaf layer's row count too, as MACs (half FlopCounterMode's FLOPs):
    # F.conv2d 3 -> 8, 3x3 at 8x8 out, then c 8 -> 8, 3x3 at 6x6 out.
    assert [r.macs for r in result.layers] == [8 * 8 * 9 * 6 * 6]
    assert result.total_macs == 8 * 3 * 9 * 8 * 8 + 8 * 8 * 9 * 6 * 6 == 34_560

    class EveryForm(nn.Module):  # by position and by keyword; torch's, F's and ours; a pool's default stride
        def __init__(self):
            super().__init__()
            self.out = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            x = torch.max_pool2d(x, 3, 1)                                 # 38x38, r 3, j 1
            x = F.avg_pool2d(x, kernel_size=2)                            # 19x19, r 4, j 2
            x = torch.conv2d(x, torch.ones(2, 2, 3, 3), None, 1, 0, 2)    # 15x15, r 4 + 2*2*2 = 12, j 2
            x = ops.max_pool2d(x, 2, 2)                                   # 7x7, r 14, j 4
            return self.out(F.adaptive_max_pool2d(x, 1))                  # 7x7 windows: r 14 + 6*4 = 38, j 28

    result = summary(EveryForm(), (1, 2, 40, 40))
    assert (result.layers[-1].receptive_field, result.layers[-1].jump, result.depth) == (38, 28, 2)
    # By hand: the 1x1 `out` row (2 x 2 at 1x1), torch.conv2d's 2 x 2 x 3x3 at 15x15 and our 2x2 max-pool's 4
    # per output at 2 x 7x7 (torch's own pools have no FlopCounterMode formula: 0) -- the functional ones halved
    # from FLOPs to MACs.
    assert [r.macs for r in result.layers] == [2 * 2]
    assert result.total_macs == 2 * 2 + 2 * 2 * 9 * 15 * 15 + 4 * 2 * 7 * 7 == 8_496

    class PoolingLayer(nn.Module):  # a leaf layer of no known kind: what its functional pool made of it
        def forward(self, x):
            return F.max_pool2d(x, 3, 2)

    rows = summary(nn.Sequential(nn.Conv2d(1, 1, 3), PoolingLayer(), nn.Conv2d(1, 1, 3)), (1, 1, 16, 16)).layers
    assert [(r.receptive_field, r.jump) for r in rows] == [(3, 1), (5, 2), (9, 2)]
    # LeNet's TableConv2d convolves with F.conv2d inside its forward: one conv layer, as the dense C3.
    table, dense = summary(models.lenet5(c3_table=True), (1, 1, 32, 32)), summary("lenet5")
    assert [(r.receptive_field, r.jump) for r in table.layers] == [(r.receptive_field, r.jump) for r in dense.layers]
    assert table.depth == dense.depth == 5


def test_adaptive_pool_field_is_its_largest_window():
    """torch's adaptive windows run from floor(i * in / out) to ceil((i + 1) * in / out): 5 -> 3 gives windows
    of 2, 3 and 2, so the field is 3 (ceil(5 / 3) = 2 is too small)."""
    row = summary(nn.Sequential(nn.AdaptiveAvgPool2d(3)), (1, 1, 5, 5)).layers[0]
    assert (row.output_shape, row.receptive_field) == ([1, 1, 3, 3], 3)


def test_a_layer_called_twice_counts_its_parameters_once():
    """A shared layer (weight tying, a block applied twice) has one row per call but its parameters once: the
    rows add up to total_params."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.fc(x))

    result = summary(Twice(), (2, 8))
    assert [r.params for r in result.layers] == [72, 0]
    assert sum(r.params for r in result.layers) == result.total_params == 72


def test_in_place_layers_add_no_activations():
    """ReLU(inplace=True) writes into its input: no new activation memory (an out-of-place ReLU's output is
    counted)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.ReLU())
    result = summary(model, (1, 1, 8, 8))
    conv, in_place, out_of_place = result.layers
    assert (conv.activation_bytes, in_place.activation_bytes, out_of_place.activation_bytes) == (288, 0, 288)
    assert result.activation_bytes == 2 * 2 * 6 * 6 * 4 == 288 * 2


def test_trainable_params_leave_out_frozen_ones():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 1))
    model[0].requires_grad_(False)
    result = summary(model, (1, 1, 8, 8))
    assert (result.total_params, result.trainable_params) == (2 * 9 + 2 + 3 * 2 + 3, 3 * 2 + 3) == (29, 9)


def test_compare_reports_the_summarys_activation_bytes():
    (row,) = compare(["lenet5"])
    whole = summary("lenet5")
    assert whole.activation_bytes != whole.param_bytes  # (so that the two cannot be confused unseen)
    assert (row.params, row.macs, row.depth, row.activation_bytes) == (
        whole.total_params, whole.total_macs, whole.depth, whole.activation_bytes)


def test_bench_command_passes_its_arguments_on(monkeypatch):
    """`python -m classicnets_ext bench ARGS` runs bench/run.py with ARGS: --help prints the runner's usage
    (and runs no bench). In process first, the runner stubbed (a dropped --help would run the whole bench)."""
    import classicnets_ext.__main__ as entry

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = []
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main sets it for the runner
    monkeypatch.setattr(entry.runpy, "run_path", lambda path, run_name: runs.append((path, run_name, sys.argv[:])))
    assert main(["bench", "--quick", "--ops", "lrn", "--help"]) == 0
    runner = os.path.join(root, "bench", "run.py")
    assert runs == [(runner, "__main__", [runner, "--quick", "--ops", "lrn", "--help"])]
    monkeypatch.undo()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "classicnets_ext", "bench", "--help"], capture_output=True,
                         text=True, env=env, cwd=root, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "classicnets_ext benchmarks" in out.stdout and "--quick" in out.stdout and "--ops" in out.stdout
    assert out.stdout.lstrip().startswith("usage: run.py ")


def test_adaptive_pool_takes_the_longer_side():
    """ResNet's adaptive average pool on a non-square map: the field and jump of its longer side, whichever side
    that is (it took the width's: 627 / 224 for a tall input, 851 / 448 for a wide one)."""
    tall, wide = (rows_by_name(summary("resnet18", (1, 3, 448, 224)))["avgpool"],
                  rows_by_name(summary("resnet18", (1, 3, 224, 448)))["avgpool"])
    assert (tall.receptive_field, tall.jump) == (wide.receptive_field, wide.jump) == (851, 448)


def test_transposed_convolution_upsamples(capsys):
    """A transposed convolution divides the jump by its stride (it was multiplied, as for a downsampling conv),
    and adds (d(k - 1) // s) input steps to the field. Fractional jumps and fields are floats in the rows,
    JSON and CSV; whole ones stay ints."""
    rows = summary(nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ConvTranspose2d(2, 1, 2, stride=2)),
                   (1, 1, 9, 9)).layers
    assert [(r.receptive_field, r.jump) for r in rows] == [(3, 2), (3 + (2 - 1) // 2 * 2, 1)]
    assert all(type(v) is int for r in rows for v in (r.receptive_field, r.jump))
    up = nn.Sequential(nn.ConvTranspose2d(1, 1, 2, stride=2), nn.Conv2d(1, 1, 2), nn.ConvTranspose2d(1, 1, 5, stride=2))
    result = summary(up, (1, 1, 4, 4))
    assert [(r.receptive_field, r.jump) for r in result.layers] == [(1, 0.5), (1.5, 0.5), (2.5, 0.25)]
    assert type(result.layers[0].receptive_field) is int and result.depth == 3
    assert json.loads(json.dumps(result.to_dict()))["layers"][2]["jump"] == 0.25
    from classicnets_ext.analysis import render
    assert render.summary_csv(result).splitlines()[3].endswith(",2.5,0.25")

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(1, 1, 4, 4))

        def forward(self, x):
            return F.conv_transpose2d(x, self.w, stride=4)

    model = nn.Sequential(nn.Conv2d(1, 1, 4, stride=4), Functional())
    assert [(r.receptive_field, r.jump) for r in summary(model, (1, 1, 8, 8)).layers] == [(4, 4), (4, 1)]


# --------------------------------------------------------------------------------- FlopCounterMode

def _op_calls(x):
    """(op, args, expected FLOPs by hand) for each op on x = (2, 8, 9, 9); "op:tag" is another call of op."""
    w = [torch.randn(s) for s in ((4 + 3 + 2, 8, 1, 1), (5, 3, 3, 3), (6, 2, 5, 5), (7, 8, 1, 1))]
    b = [torch.randn(s[0]) for s in ((9,), (5,), (6,), (7,))]
    pixels = 2 * 9 * 9
    inception = pixels * (9 * 8 + 5 * 3 * 9 + 6 * 2 * 25 + 7 * 8) + 2 * 8 * 81 * 9
    return {
        "lrn": ((x, 5, 1e-4, 0.75, 2.0), 2 * (2 * 8 * 81) * 7),
        "max_pool2d": ((x, [3, 3], [2, 2], [0, 0], [1, 1], False, False), 2 * (2 * 8 * 4 * 4) * 9),
        "max_pool2d_lrn": ((x, [3, 3], [2, 2], [0, 0], False, 5, 1e-4, 0.75, 2.0, True, False),
                           2 * (2 * 8 * 4 * 4) * (9 + 7)),
        # Non-square windows (kh * kw, not kh * kh): 3x2/1 -> 7x8 out; 1x3 stride (1, 2) -> 9x4 out.
        "max_pool2d:3x2": ((x, [3, 2], [1, 1], [0, 0], [1, 1], False, False), 2 * (2 * 8 * 7 * 8) * 6),
        "max_pool2d_lrn:1x3": ((x, [1, 3], [1, 2], [0, 0], False, 5, 1e-4, 0.75, 2.0, True, False),
                               2 * (2 * 8 * 9 * 4) * (3 + 7)),
        "inception": ((x, w[0], b[0], w[1], b[1], w[2], b[2], w[3], b[3], 4), 2 * inception),
        "linear": ((x.flatten(1), torch.randn(10, 8 * 81), b[0].new_zeros(10)), 2 * (2 * 8 * 81) * 10),
    }


@requires_c
def test_flop_counter_counts_each_op():
    assert {"lrn", "max_pool2d", "max_pool2d_lrn", "inception", "linear"} <= set(formulas.registered_ops())
    x = torch.randn(2, 8, 9, 9)
    for name, (args, flops) in _op_calls(x).items():  # the C++ ops on real CPU tensors
        with FlopCounterMode(display=False) as counter:
            getattr(torch.ops.classicnets_ext, name.partition(":")[0])(*args)
        assert counter.get_total_flops() == flops > 0, name
    with FakeTensorMode() as fake:  # every registered op, Triton twins included, through its fake kernel
        calls = _op_calls(torch.empty(2, 8, 9, 9))
    for name in formulas.registered_ops():
        ours = [key for key in calls if key.partition(":")[0] == name.removesuffix("_triton")]
        assert ours, name
        for key in ours:
            args, flops = calls[key]
            with fake, FlopCounterMode(display=False) as counter:
                getattr(torch.ops.classicnets_ext, name)(*args)
            assert counter.get_total_flops() == flops, (name, key)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_summary_and_compare_in_half_precision(dtype):
    """A registry name is built in the asked dtype (it was built in fp32 and the half input failed in its first
    convolution): the same layers and MACs, half the parameter and activation bytes."""
    full, half = summary("googlenet"), summary("googlenet", dtype=dtype)
    assert [r.macs for r in half.layers] == [r.macs for r in full.layers] and half.total_macs == full.total_macs
    assert 2 * half.param_bytes == full.param_bytes and 2 * half.activation_bytes == full.activation_bytes
    (row,) = compare(["alexnet"], dtype=dtype)
    assert row.macs == summary("alexnet").total_macs


def test_summary_names_a_bad_input_size():
    for bad in ("1x32x32", (1, 1, 32.0, 32)):  # was int()'s "invalid literal for int() with base 10: 'x'"
        with pytest.raises(TypeError, match="`input_size` must be a sequence of ints"):
            summary("lenet5", bad)


def test_summary_names_a_size_beyond_int64():
    with pytest.raises(ValueError, match="`input_size`"):  # was torch.zeros' TypeError about unpacking a long
        summary("lenet5", (10 ** 20, 1, 32, 32))


def test_table_conv_counts_its_connections():
    """LeNet-5's C3 with the paper's connection table: 60 5x5 kernels at each of 10x10 positions (it counted the
    dense 16 x 6 kernels its forward convolves with, zeros included: 240,000)."""
    result = summary(models.lenet5(c3_table=True), (2, 1, 32, 32))
    c3 = rows_by_name(result)["features.c3"]
    assert (c3.type, c3.params) == ("TableConv2d", 60 * 25 + 16)
    assert c3.macs == 2 * 60 * 25 * 10 * 10
    assert formulas.table_conv2d_macs([2, 16, 10, 10], 60, 5) == c3.macs
    assert result.total_macs == 2 * 326_520 == summary("lenet5", (2, 1, 32, 32)).total_macs - 2 * 90_000


@requires_c
def test_flop_counter_counts_our_linear_as_torchs():
    """A classifier big enough for our CPU linear kernel (AlexNet's, VGG's) counted 0 FLOPs under FlopCounterMode:
    the kernel's op had no formula. It counts as F.linear's addmm."""
    layer = Linear(1024, 512)  # 2^19 weights: batches of 1-8 take the kernel
    x = torch.randn(2, 1024)
    with FlopCounterMode(display=False) as ours:
        layer(x)
    with FlopCounterMode(display=False) as torchs:
        F.linear(x, layer.weight, layer.bias)
    assert "classicnets_ext.linear" in {str(op) for op in ours.get_flop_counts()["Global"]}
    assert ours.get_total_flops() == torchs.get_total_flops() == 2 * 2 * 1024 * 512


def test_inception_formula_is_the_composite_convolutions_plus_the_pool():
    x = torch.randn(2, 8, 9, 9)
    args, flops = _op_calls(x)["inception"]
    with FlopCounterMode(display=False) as counter:  # aten counts the composite's convolutions, not its pool
        reference.inception(*args)
    assert flops == counter.get_total_flops() + 2 * formulas.max_pool2d_macs(x.shape, 3)


@requires_c
def test_real_cpu_run_counts_as_the_fake_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), MaxPool2d(3, 2), LocalResponseNorm(5),
                          MaxPoolLRN(3, 2, size=3, relu=True), MaxPool2d((1, 3), 1, (0, 1)), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 10)).train()
    real = summary(model, (2, 3, 32, 32))
    assert model.training and all(m.training for m in model.modules())  # the mode is restored
    with FakeTensorMode():
        model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype))
    fake = summary(model, (2, 3, 32, 32))
    assert real == fake
    macs = [r.macs for r in real.layers]
    assert macs[2] == 2 * 8 * 14 * 14 * 9 and macs[3] == 2 * 8 * 14 * 14 * 7 and macs[4] == 2 * 8 * 6 * 6 * (9 + 5)
    assert macs[5] == 2 * 8 * 6 * 6 * (1 * 3) == 1728  # the 1x3 window (padded: 6x6 stays 6x6)
    with FlopCounterMode(display=False) as counter:
        torch.manual_seed(0)
        F.linear(torch.randn(2, 288), torch.randn(10, 288))
    assert macs[-1] == counter.get_total_flops() // 2 == 2 * 288 * 10


# --------------------------------------------------------------------------------------- command line

def test_cli_formats_and_default_input(capsys, tmp_path):
    status, out, _ = cli(capsys, "summary", "lenet5", "--format", "json")
    result = json.loads(out)
    assert status == 0 and result["input_size"] == [1, 1, 32, 32]
    assert sorted(result["layers"][0]) == ["activation_bytes", "jump", "macs", "name", "output_shape", "params",
                                           "receptive_field", "type"]
    assert result["total_params"] == 61_706 and result["layers"][-1]["receptive_field"] is None
    status, out, _ = cli(capsys, "summary", "alexnet_paper", "--input", "3x227x227", "--batch", "2", "--format",
                         "csv", "--plot", str(tmp_path / "alexnet.png"))
    lines = out.splitlines()
    assert status == 0 and lines[0].split(",")[:3] == ["name", "type", "output_shape"]
    assert lines[1].split(",")[:3] == ["features.conv1", "Conv2d", "2x96x55x55"] and len(lines) == 19
    assert (tmp_path / "alexnet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, where", [
    (["summary", "vgg61"], "argument MODEL: unknown model 'vgg61' (choose from alexnet, alexnet_paper"),
    (["compare", "vgg16", "resnet"], "argument MODEL: unknown model 'resnet' (choose from"),
    (["summary", "vgg16", "--input", "3x224"], "argument --input: expected CxHxW"),
    (["summary", "vgg16", "--input", "3x0x224"], "argument --input: expected CxHxW"),
    (["summary", "vgg16", "--batch", "0"], "argument --batch: expected a positive integer"),
    (["summary", "alexnet_paper", "--input", "3x224x224"], "argument --input: alexnet_paper cannot run on"),
    (["summary", "lenet5", "--plot", "/nonexistent-folder/x.png"], "argument --plot: folder '/nonexistent-folder'"),
    (["summary", "lenet5", "--plot", "x.txt"], "argument --plot: cannot tell the image format of 'x.txt'"),
    # These ended in a traceback, exited 0 or named the wrong argument:
    (["summary", "lenet5", "--plot", ""], "argument --plot: expected a file name"),
    (["summary", "lenet5", "--batch", "99999999999999999999"], "argument --batch: 99999999999999999999 is more"),
    (["summary", "lenet5", "--input", "99999999999999999999x3x3"], "argument --input: '99999999999999999999x3x3'"),
    (["summary", "lenet5", "--batch", "9223372036854775807"], "argument --batch: lenet5 runs on one 1x32x32 input"),
    (["summary", "lenet5", "--input", "3x4000000000x4000000000"], "argument --input: lenet5 cannot run on"),
])
def test_cli_errors(capsys, argv, where):
    status, out, err = cli(capsys, *argv)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and where in err


def test_plot_without_matplotlib_names_the_extra(capsys, monkeypatch, tmp_path):
    """matplotlib is the optional extra 'plot': without it, --plot is a one-line usage error (was a traceback)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    monkeypatch.delitem(sys.modules, "matplotlib.backend_bases", raising=False)
    status, out, err = cli(capsys, "summary", "lenet5", "--plot", str(tmp_path / "x.png"))
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "argument --plot: needs matplotlib" in err and "classicnets_ext[plot]" in err


def test_plot_is_written_when_the_reader_leaves(tmp_path):
    """`summary MODEL --plot FILE | head -1`: the plot is drawn before the table, so a reader that leaves early
    (here, before the first line) does not stop it (the BrokenPipeError of printing ended the command first)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    path = tmp_path / "lenet.png"
    process = subprocess.Popen([sys.executable, "-m", "classicnets_ext", "summary", "lenet5", "--plot", str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.close()  # the reader is gone before the first write
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1 and err == b"", err[-3000:]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["summary", "vgg16"], ["compare", "alexnet_paper", "zfnet", "googlenet_paper"]])
def test_a_narrow_terminal_gets_whole_tables(argv, capsys, monkeypatch):
    """On a terminal narrower than the table (80 columns: nearly every table), rich cut the layer names, shapes
    and counts to "…" (every name read "featu…"); pipes always got the whole table."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    status, out, _ = cli(capsys, *argv)
    assert status == 0 and "…" not in out
    assert ("features.28" in out) if argv[0] == "summary" else ("googlenet_paper" in out)


def test_a_plot_format_whose_tool_is_missing_is_one_line(capsys, monkeypatch, tmp_path):
    """.pgf needs a TeX program (matplotlib's pgf.texsystem): without it, matplotlib's RuntimeError came out as
    a traceback with exit status 1."""
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("PATH", str(tmp_path))  # no TeX program to be found
    status, out, err = cli(capsys, "summary", "lenet5", "--plot", str(tmp_path / "x.pgf"))
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "argument --plot: cannot write" in err
