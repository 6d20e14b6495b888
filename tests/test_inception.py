"""The fused Inception block: the op against the torch composite, the module against torchvision's
``Inception`` (weights loaded with strict=True, eval and train mode), the paper style, convert(), and the
op's registration (opcheck, gradcheck, torch.compile).

GoogLeNet's nine blocks keep their channel counts but run at tiny spatial sizes so the suite stays fast;
the sweep compares in float64 against float64 torch, where only summation order differs.
"""
import gc
import itertools
import threading
import weakref

import pytest
import torch
import torch.nn.functional as F

import classicnets_ext
from classicnets_ext import ops, reference
from classicnets_ext.nn import Inception
from _helpers import assert_compile_keeps_op, assert_runs_with_cpu_capability, backend_params, ran_isolated
from _helpers import torch_threads
from conftest import backend_device

torchvision = pytest.importorskip("torchvision")  # a test dependency (the Makefile's venv installs it)
from torchvision.models.googlenet import Inception as TVInception  # noqa: E402

BACKEND_PARAMS = backend_params("inception", "csrc/inception/")
OUR_BACKENDS = [p for p in BACKEND_PARAMS if p.values[0] != "reference"]

# GoogLeNet's blocks (Szegedy et al. 2014, Table 1): in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj.
BLOCKS = {
    "3a": (192, 64, 96, 128, 16, 32, 32), "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64), "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64), "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128), "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}
TINY = (6, 3, 2, 4, 2, 3, 2)  # channel counts small enough for the Triton interpreter and gradcheck


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial parameters and BatchNorm statistics, so a fold that dropped any of them would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif name.endswith("weight") and t.dim() == 4:
                    t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return module


def block_pair(cfg, seed=0):
    """(torchvision block, ours loaded from its state_dict with strict=True)."""
    theirs = randomize(TVInception(*cfg), seed)
    ours = Inception(*cfg)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def run(backend, fn, *args):
    with classicnets_ext.use_backend(backend):
        return fn(*args)


def tol(dtype):
    # fp32: the fold and the GEMM's summation order change the last bits, amplified by the 3x3 layer;
    # fp16/bf16: one rounding of the reductions and of the output (the composite rounds after each layer).
    return {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 2e-2),
            torch.bfloat16: (6e-2, 6e-2)}[dtype]


# ------------------------------------------------------------------------------- torchvision parity (eval)

@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("name", list(BLOCKS))
def test_eval_matches_torchvision_block(backend, name):
    if backend == "triton" and name != "3a" and backend_device(backend) == "cpu":
        pytest.skip("the Triton interpreter is slow: block 3a stands for the nine (the train test adds 4e, 5b)")
    device = backend_device(backend)
    theirs, ours = (m.eval().to(device) for m in block_pair(BLOCKS[name]))
    x = torch.randn(2, BLOCKS[name][0], 5, 4, device=device)
    with torch.no_grad():
        want = theirs(x)
        got = run(backend, ours, x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_cpu_gemm_paths_match_torchvision():
    """The CPU kernel's three fp32 GEMM paths (inception_cpu.cpp's gemm_rows), against torchvision's block on 2
    threads, both layouts: the block's own call, on the weights it packed for oneDNN (every tile), and a direct
    op call, where tiles of 128+ pixels run oneDNN 1x1 convolutions and smaller ones at::mm. Block 4e at batch 1
    and 15 x 17 makes a tile of 128 pixels and one of 127, at batch 2 and 20 x 21 four of 210 (the other tests'
    inputs make only small tiles)."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    theirs, ours = (m.eval() for m in block_pair(BLOCKS["4e"]))
    with torch_threads(2):
        for (n, h, w), layout in itertools.product(((1, 15, 17), (2, 20, 21)),
                                                   (torch.contiguous_format, torch.channels_last)):
            x = torch.randn(n, BLOCKS["4e"][0], h, w).contiguous(memory_format=layout)
            with torch.no_grad():
                want = theirs(x)
                packed = run("cpu", ours, x)
                direct = run("cpu", ops.inception, x, *ours.fused_parameters(), BLOCKS["4e"][1])
            assert ours._fold_cache[4].get("onednn_1x1") is not None  # the block's call did pack
            torch.testing.assert_close(packed, want, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(direct, want, atol=1e-4, rtol=1e-4)


def test_prepacked_weights_serve_only_their_own_tensors_on_their_own_thread():
    """The packs that nn.Inception sets around its call (_C.inception_set_cpu_prepacked) replace the 1x1 weights
    only for the very tensors they were packed from, only on the thread that set them, and only until cleared.
    Packs of other weights, registered here for `w`, show which weights the op ran with."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.fail("the C++ extension did not load")
    from classicnets_ext import _extension
    cfg = (16, 4, 6, 8, 2, 3, 5)
    weights = Inception(*cfg, style="paper").fused_parameters()
    other = Inception(*cfg, style="paper").fused_parameters()
    x = torch.randn(2, cfg[0], 6, 7)
    pack = torch.ops.mkldnn._reorder_linear_weight
    with torch.no_grad(), classicnets_ext.use_backend("cpu"):
        def op(w):
            return ops.inception(x, *w, cfg[1])

        mine, theirs = op(weights), op(other)
        assert not torch.allclose(mine, theirs)
        # weights[0] and [6] with the other block's packs, its biases and spatial weights: the other block's output
        swapped = (weights[0], *other[1:6], weights[6], other[7])
        copies = [tuple(w.clone() if i == j else w for j, w in enumerate(swapped)) for i in (0, 6)]
        unpacked = [op(c) for c in copies]  # an equal copy of either weight: not the tensor packed from
        _extension._C.inception_set_cpu_prepacked(weights[0], pack(other[0].flatten(1)), weights[6],
                                                  pack(other[6].flatten(1)))
        try:
            torch.testing.assert_close(op(swapped), theirs, atol=1e-5, rtol=1e-5)
            for c, want in zip(copies, unpacked):
                torch.testing.assert_close(op(c), want, atol=0, rtol=0)
            elsewhere = []
            thread = threading.Thread(target=lambda: elsewhere.append(op(weights)))
            thread.start()
            thread.join()
            torch.testing.assert_close(elsewhere[0], mine, atol=0, rtol=0)
        finally:
            _extension._C.inception_set_cpu_prepacked()
        torch.testing.assert_close(op(weights), mine, atol=0, rtol=0)
        # The block clears its packs after its call, also when the call fails: nothing on this thread still holds
        # its folded weights once the block is gone.
        block = randomize(Inception(*cfg, style="paper")).eval()
        block(x)
        with pytest.raises(ValueError, match="argument 'input'"):
            block(x[:, :, :0])
        assert block._fold_cache[4].get("onednn_1x1") is not None
        folded = weakref.ref(block._fold_cache[2][0])
        del block
        gc.collect()
        assert folded() is None


def _swap(block, change):
    """Apply one user edit of a block's submodules (the same to torchvision's and ours)."""
    torch.manual_seed(1)
    if change == "bn-train":  # test-time adaptation of one BatchNorm
        block.branch1.bn.train()
    elif change == "avg-pool":
        block.branch4[0] = torch.nn.AvgPool2d(3, 1, 1)
    elif change == "no-bn":
        block.branch2[1].bn = torch.nn.Identity()
    elif change == "frozen-bn":
        frozen = torchvision.ops.FrozenBatchNorm2d(block.branch3[0].bn.num_features, eps=0.001)
        frozen.load_state_dict({k: v for k, v in block.branch3[0].bn.state_dict().items()
                                if k != "num_batches_tracked"})
        block.branch3[0].bn = frozen
    elif change == "conv-3x3":
        conv = block.branch1.conv
        block.branch1.conv = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=False)
    elif change == "wide-pool":
        block.branch4[0] = torch.nn.MaxPool2d(5, 1, 2)
    elif change == "residual-branch":  # a Sequential subclass with the same two layers and another forward
        block.branch2 = _ResidualPair(*block.branch2)
    elif change.startswith("instance-forward:"):  # a forward set on the instance, as accelerate's hooks set it
        _double_forward(block.get_submodule(change.split(":")[1]))
    return block


def _double_forward(module):
    inner = module.forward
    module.forward = lambda *args, **kwargs: inner(*args, **kwargs) * 2.0


class _ResidualPair(torch.nn.Sequential):
    def forward(self, x):
        return super().forward(x) + 1.0


@pytest.mark.parametrize("change", ["bn-train", "avg-pool", "no-bn", "frozen-bn", "conv-3x3", "wide-pool",
                                    "residual-branch", "instance-forward:branch2.0.bn", "instance-forward:branch1",
                                    "instance-forward:branch4.0", "instance-forward:branch3.1.conv"])
def test_a_swapped_submodule_runs_as_in_torchvision(change):
    """A submodule replaced or put in train mode after construction: the fused op no longer computes the block,
    which then runs its submodules (it used to go on fusing, silently wrong, or fail on a missing attribute)."""
    theirs, ours = (m.eval() for m in block_pair(TINY))
    ours.load_state_dict(theirs.state_dict())
    _swap(theirs, change), _swap(ours, change)
    x = torch.randn(2, TINY[0], 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_wrong_channel_count_is_torchs_error():
    """An input with the wrong number of channels gets the convolution's RuntimeError, as torchvision's block
    does, not the fused op's message about its internal weight_1x1."""
    theirs, ours = (m.eval() for m in block_pair(TINY))
    x = torch.randn(1, TINY[0] + 1, 5, 5)
    for block in (theirs, ours):
        with pytest.raises(RuntimeError, match=f"expected input.* to have {TINY[0]} channels"):
            block(x)


# ------------------------------------------------------------------------------ torchvision parity (train)

@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("name", ["3a", "4e", "5b"])
def test_train_matches_torchvision_block(backend, name):
    device = backend_device(backend)
    theirs, ours = (m.train().to(device) for m in block_pair(BLOCKS[name], seed=1))
    x = torch.randn(2, BLOCKS[name][0], 4, 5, device=device)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = theirs(x1)
    got = run(backend, ours, x2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-4, rtol=1e-4)
    theirs_p, ours_p = dict(theirs.named_parameters()), dict(ours.named_parameters())
    assert theirs_p.keys() == ours_p.keys()
    for key in theirs_p:
        torch.testing.assert_close(ours_p[key].grad, theirs_p[key].grad, atol=1e-4, rtol=1e-4, msg=key)
    for key, buf in theirs.state_dict().items():  # running statistics and num_batches_tracked
        torch.testing.assert_close(ours.state_dict()[key], buf, msg=key)


def _convolutions(block, x) -> int:
    """How many convolutions one forward of ``block`` on ``x`` runs (the stacked training path: 4, else 6)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func is torch.ops.aten.convolution.default
            return func(*args, **(kwargs or {}))

    with Count():
        block(x)
    return Count.n


def _assert_same_step(got, want, ours, theirs):
    """After one backward of ``got`` and ``want`` with the same gradient: the same input gradients, parameter
    gradients and state (running statistics, batch counts) in ``ours`` and ``theirs``, each (block, input)."""
    g = torch.randn_like(want)
    want.backward(g), got.backward(g)
    (block, x), (their_block, their_x) = ours, theirs
    torch.testing.assert_close(x.grad, their_x.grad)
    for (key, p), q in zip(their_block.named_parameters(), block.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=key)
    for key, buf in their_block.state_dict().items():
        torch.testing.assert_close(block.state_dict()[key], buf, msg=key)


def _bn_edit(block, change):
    """One user edit of the three input BatchNorms (branch1, branch2.0, branch3.0), the same to both blocks."""
    bns = [block.branch1.bn, block.branch2[0].bn, block.branch3[0].bn]
    for i, bn in enumerate(bns):
        if change == "momentum":
            bn.momentum = 0.3
        elif change == "eps":
            bn.eps = 1e-5
        elif change == "no-affine":
            bn.affine, bn.weight, bn.bias = False, None, None
        elif change == "no-running-stats":  # batch statistics in eval mode too, nothing updated
            bn.track_running_stats, bn.running_mean, bn.running_var, bn.num_batches_tracked = False, None, None, None
        elif change == "cumulative":  # momentum None: a cumulative average, by each BatchNorm's own batch count
            bn.momentum = None
            bn.num_batches_tracked.fill_(3 + i)
        elif change == "one-momentum" and i == 1:
            bn.momentum = 0.2
        elif change == "one-eps" and i == 2:
            bn.eps = 1e-3 + 1e-6
        elif change == "one-eval" and i == 0:
            bn.eval()
    return block


# change -> whether the three 1x1 layers still run as one (4 convolutions) or one by one (6)
BN_EDITS = {"none": True, "momentum": True, "eps": True, "no-affine": True, "no-running-stats": True,
            "cumulative": False, "one-momentum": False, "one-eps": False, "one-eval": False}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("change", list(BN_EDITS))
def test_training_stacks_the_input_1x1_layers_as_torchvision_computes_them(change, layout):
    """In training the three 1x1 layers that read the input run as one convolution, one BatchNorm over the
    stacked channels and one ReLU, where their BatchNorms agree; the block's output, every gradient, the running
    statistics and batch counts stay torchvision's, over two steps (fp64: only summation order differs). Where
    the BatchNorms disagree (or count a cumulative average), the layers run one by one."""
    theirs, ours = block_pair(BLOCKS["3a"][:1] + TINY[1:], seed=3)
    theirs, ours = (_bn_edit(m.train().double(), change) for m in (theirs, ours))
    if change == "no-running-stats":
        theirs.eval(), ours.eval()
    x = torch.randn(2, BLOCKS["3a"][0], 5, 4, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        theirs, ours = (m.to(memory_format=torch.channels_last) for m in (theirs, ours))
    with classicnets_ext.use_backend("cpu"):
        assert _convolutions(ours, x) == (4 if BN_EDITS[change] else 6)
    with torch.no_grad():
        theirs(x)  # (the count's forward moved our running statistics once: theirs too)
    for _ in range(2):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        want = theirs(x1)
        with classicnets_ext.use_backend("cpu"):
            got = ours(x2)
        torch.testing.assert_close(got, want, **dict(zip(("atol", "rtol"), tol(torch.float64))))
        _assert_same_step(got, want, (ours, x2), (theirs, x1))


def test_stacked_training_reference_backend_and_gradients_of_gradients():
    """The reference backend runs the layers one by one (torch's own composition); the stacked path's
    gradients are right and differentiable again (its split's backward writes into one tensor)."""
    theirs, ours = block_pair(TINY, seed=4)
    ours = ours.train().double()
    x = torch.randn(2, TINY[0], 4, 3, dtype=torch.float64, requires_grad=True)
    with classicnets_ext.use_backend("reference"):
        assert _convolutions(ours, x) == 6
    with classicnets_ext.use_backend("cpu"):
        assert _convolutions(ours, x) == 4
        torch.autograd.gradcheck(ours, (x,))
        torch.autograd.gradgradcheck(ours, (x,))


def test_stacked_training_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) takes the stacked training path (its split is an autograd.Function, its
    statistics are written back in place): the same output, gradients and running statistics as eager."""
    torch._dynamo.reset()
    eager, ours = (block_pair(TINY, seed=5)[1].train() for _ in range(2))
    graphs = []

    def aot_eager_counting(gm, example_inputs):  # aot_eager, after counting the graph's convolutions
        graphs.append(sum(node.op == "call_function" and node.target in (torch.conv2d, F.conv2d)
                          for node in gm.graph.nodes))
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    compiled = torch.compile(ours, fullgraph=True, backend=aot_eager_counting)
    x = torch.randn(2, TINY[0], 5, 4)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with classicnets_ext.use_backend("cpu"):
        assert _convolutions(ours, x) == 4
        eager(x)  # (the count moved ours' statistics once)
        want, got = eager(x1), compiled(x2)
    assert graphs == [4]
    torch.testing.assert_close(got, want)
    _assert_same_step(got, want, (ours, x2), (eager, x1))


def test_stacked_split_backward_answers_in_the_stacked_layout():
    """The split's backward: the pieces' gradients in the stacked tensor's layout (torch's split answers NCHW
    for a channels-last tensor whose piece gradients suggest no layout: an expanded one), zeros where a piece
    got none."""
    from classicnets_ext._inception import _SplitChannels

    y = torch.randn(2, 6, 3, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    a, b, c = _SplitChannels.apply(y, [1, 3, 2])
    g, = torch.autograd.grad([a.sum(), c.sum()], y)  # b unused: its gradient is None
    assert g.stride() == y.stride()
    want = torch.zeros_like(y)
    want[:, :1] = 1
    want[:, 4:] = 1
    torch.testing.assert_close(g, want, atol=0, rtol=0)


# ----------------------------------------------------------------------------------- the op, every backend

def _paper_params(cfg, k5=5, dtype=torch.float64, device="cpu", seed=0):
    block = randomize(Inception(*cfg, style="paper"), seed)
    assert block.branch3[1].conv.kernel_size == (k5, k5) or k5 != 5
    return [p.to(device=device, dtype=dtype) for p in block.fused_parameters()], cfg[1]


@pytest.mark.parametrize("backend", OUR_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("shape", [(2, 7, 5), (1, 1, 1), (3, 6, 2)])  # (N, H, W): 1x1 images pool nothing
def test_op_matches_composite_float64(backend, layout, shape):
    device = backend_device(backend)
    if backend == "triton" and device == "cpu" and layout == "sliced":
        pytest.skip("the interpreter is slow: the sliced layout is covered by the C++ backends")
    params, ch1x1 = _paper_params(TINY, device=device)
    if backend == "triton" and device == "cuda":
        params = [p.float() for p in params]  # tl.dot has no fp64
    n, h, w = shape
    x = torch.randn(n, TINY[0] * (2 if layout == "sliced" else 1), h, w, dtype=params[0].dtype, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = x[:, ::2]
    got = run(backend, ops.inception, x, *params, ch1x1)
    want = reference.inception(x, *params, ch1x1)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, **dict(zip(("atol", "rtol"), tol(x.dtype))))


def test_op_under_autocast_casts_what_conv2d_would():
    """CPU autocast casts fp32 to bf16 for F.conv2d, never fp64 (an fp64 block came back bf16, 0.095 off), and
    an integer input is not a float to cast (it ran, as bf16): it fails as F.conv2d's does."""
    params, ch1x1 = _paper_params(TINY)
    x = torch.randn(2, TINY[0], 5, 4, dtype=torch.float64)
    want = ops.inception(x, *params, ch1x1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ops.inception(x, *params, ch1x1)
        low = ops.inception(x.float(), *(p.float() for p in params), ch1x1)
        with pytest.raises(RuntimeError, match="'weight_1x1'"):
            ops.inception(x.long(), *params, ch1x1)
    assert got.dtype == torch.float64 and low.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_forward_mode_ad_and_vmap_through_the_op_match_the_composite():
    """The op's registered autograd has no forward-mode rule: torch.func.jvp gave a zero tangent and a dual
    tensor none, silently. Forward AD and torch.func transforms run the composite."""
    import torch.autograd.forward_ad as fwAD

    params, ch1x1 = _paper_params(TINY)
    x, t = torch.randn(2, TINY[0], 5, 4, dtype=torch.float64), torch.randn(2, TINY[0], 5, 4, dtype=torch.float64)

    def ours(z):
        return ops.inception(z, *params, ch1x1)

    def theirs(z):
        return reference.inception(z, *params, ch1x1)

    want = torch.func.jvp(theirs, (x,), (t,))
    assert want[1].abs().sum() > 0
    for got, expected in zip(torch.func.jvp(ours, (x,), (t,)), want):
        torch.testing.assert_close(got, expected)
    with fwAD.dual_level():
        dual = fwAD.unpack_dual(ours(fwAD.make_dual(x, t)))
    torch.testing.assert_close(dual.tangent, want[1])
    torch.testing.assert_close(torch.func.vmap(ours)(x.unsqueeze(1)).squeeze(1), theirs(x))


def test_raw_op_refuses_a_weight_on_another_device():
    """A meta weight among CPU tensors sends the raw op to its fake kernel, which returned uninitialised CPU
    memory; it now checks devices and dtypes first, as the kernels do."""
    params, ch1x1 = _paper_params(TINY, dtype=torch.float32)
    x = torch.randn(2, TINY[0], 5, 4)
    for i, name in enumerate(["weight_1x1", "bias_1x1", "weight_3x3", "bias_3x3", "weight_5x5", "bias_5x5",
                              "weight_pool", "bias_pool"]):
        moved = [p.to("meta") if j == i else p for j, p in enumerate(params)]
        with pytest.raises(RuntimeError, match=f"`{name}` is on meta"):
            torch.ops.classicnets_ext.inception(x, *moved, ch1x1)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_op_low_precision(backend, dtype):
    device = backend_device(backend)
    params, ch1x1 = _paper_params(TINY, device=device, dtype=torch.float64, seed=3)
    x = torch.randn(2, TINY[0], 6, 5, dtype=torch.float64, device=device)
    want = reference.inception(x, *params, ch1x1)  # float64 truth, from the rounded inputs below
    got = run(backend, ops.inception, x.to(dtype), *(p.to(dtype) for p in params), ch1x1)
    assert got.dtype == dtype
    atol, rtol = tol(dtype)
    torch.testing.assert_close(got.double(), reference.inception(x.to(dtype).double(),
                                                                 *(p.to(dtype).double() for p in params), ch1x1),
                               atol=atol, rtol=rtol)
    assert want.shape == got.shape


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_branch_widths_one_past_whole_vectors_on_every_instruction_set(capability):
    """The C++ kernel adds each branch's bias and applies ReLU a vector at a time, then the tail: branch widths
    of 1, 9, 17 and 33 leave a tail of one after 0, 1, 2 or 4 vectors of 4, 8 or 16 -- every instruction
    set's width in fp32 and fp64. The paper's blocks (multiples of 16) and TINY have no such width."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.skip("no C++ CPU kernels in this build")
    assert_runs_with_cpu_capability(
        "import torch, classicnets_ext\n"
        "from classicnets_ext import ops, reference\n"
        "from classicnets_ext.nn import Inception\n"
        "torch.manual_seed(0)\n"
        "for cfg in ((5, 1, 17, 33, 9, 1, 17), (3, 9, 1, 9, 1, 17, 1)):\n"
        "    block = Inception(*cfg, style='paper')\n"
        "    for p in block.parameters():\n"
        "        torch.nn.init.normal_(p, std=0.5)\n"
        "    for dtype in (torch.float32, torch.float64):\n"
        "        params = [p.detach().to(dtype) for p in block.fused_parameters()]\n"
        "        x = torch.randn(2, cfg[0], 4, 3, dtype=dtype)\n"
        "        with classicnets_ext.use_backend('cpu'):\n"
        "            got = ops.inception(x, *params, cfg[1])\n"
        "        torch.testing.assert_close(got, reference.inception(x, *params, cfg[1]))\n"
        "print('ok')\n", capability)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_nan_propagates_like_torch(backend):
    device = backend_device(backend)
    params, ch1x1 = _paper_params(TINY, device=device, dtype=torch.float32)
    x = torch.randn(1, TINY[0], 4, 4, device=device)
    x[0, 2, 1, 3] = float("nan")
    got = run(backend, ops.inception, x, *params, ch1x1)
    want = reference.inception(x, *params, ch1x1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert got.isnan().any()


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_pool_branch_where_tiles_split_image_rows(threads):
    """The C++ CPU kernel pools a tile of pixels at a time, separably along each image row in it. With 3 images
    of 11 x 11 its tiles are 182 pixels on one thread or two, so the second starts mid-row (image 1, row 5,
    column 6), whose window reaches back into the first tile's column 5: the largest values are put there. An
    identity pool projection makes that branch relu(max_pool2d(x, 3, 1, 1)) exactly (fp64, one nonzero product
    per sum); NaNs inside an image and in two corners spread to their windows."""
    if "cpu" not in classicnets_ext.available_backends():
        pytest.skip("no C++ CPU kernels in this build")
    g = torch.Generator().manual_seed(0)
    c, (ch1x1, r3, c3, r5, c5) = 5, (2, 2, 3, 2, 2)
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in
              [(ch1x1 + r3 + r5, c, 1, 1), (ch1x1 + r3 + r5,), (c3, r3, 3, 3), (c3,), (c5, r5, 5, 5), (c5,)]]
    params += [torch.eye(c, dtype=torch.float64).view(c, c, 1, 1), torch.zeros(c, dtype=torch.float64)]
    x = torch.randn(3, c, 11, 11, generator=g, dtype=torch.float64)
    x[1, :, 4:7, 5] = 10.0
    x[1, 0, 8, 3] = x[2, 4, 10, 10] = x[0, 2, 0, 0] = float("nan")
    with torch_threads(threads), classicnets_ext.use_backend("cpu"):
        got = ops.inception(x, *params, ch1x1)[:, -c:]
    want = F.relu(F.max_pool2d(x, 3, 1, 1))
    want = torch.where(want.isnan().any(1, keepdim=True), float("nan"), want)  # NaN * 0 in the other channels
    torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)
    assert got.isnan().any(1).sum() == 9 + 4 + 4  # a 3x3 window inside, two 2x2 ones at the corners
    assert (got[1, :, 5, 6] == 10.0).all()


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_paper_style_matches_composite(backend):
    device = backend_device(backend)
    cfg = BLOCKS["3a"] if backend != "triton" else TINY
    block = randomize(Inception(*cfg, style="paper"), 2).to(device)
    assert block.branch3[1].conv.kernel_size == (5, 5) and block.branch3[1].conv.padding == (2, 2)
    x = torch.randn(2, cfg[0], 5, 6, device=device, requires_grad=True)
    got = run(backend, block, x)
    b = block
    want = torch.cat([
        F.relu(b.branch1.conv(x)),
        F.relu(b.branch2[1].conv(F.relu(b.branch2[0].conv(x)))),
        F.relu(b.branch3[1].conv(F.relu(b.branch3[0].conv(x)))),
        F.relu(b.branch4[1].conv(F.max_pool2d(x, 3, 1, 1))),
    ], 1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(want)
    grads_got = torch.autograd.grad(got, [x, *block.parameters()], g)
    grads_want = torch.autograd.grad(want, [x, *block.parameters()], g)
    for a, w in zip(grads_got, grads_want):
        torch.testing.assert_close(a, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_output_changed_in_place_before_the_backward(backend):
    """torchvision's block ends in a cat, which saves nothing: its output may be changed in place (a residual
    add, an in-place dropout) before the backward. Ours keeps its ReLU masks apart from the output, so the same
    holds, with the composite's gradients."""
    device = backend_device(backend)
    params, ch1x1 = _paper_params(TINY, device=device, dtype=torch.float32, seed=5)
    x = torch.randn(2, TINY[0], 4, 5, device=device)
    x[0, 0, 0, 0] = float("nan")  # a NaN output passes its gradient, as threshold_backward's mask lets it
    leaves = [t.detach().requires_grad_() for t in (x, *params)]
    got = run(backend, ops.inception, *leaves, ch1x1)
    got.mul_(2).add_(1)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, leaves, g)
    ref_leaves = [t.detach().requires_grad_() for t in (x, *params)]
    want = reference.inception(*ref_leaves, ch1x1) * 2 + 1
    for a, w in zip(grads, torch.autograd.grad(want, ref_leaves, g)):
        torch.testing.assert_close(a, w, atol=1e-4, rtol=1e-4, equal_nan=True)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_integer_input_runs_on_torch_whatever_the_backend(backend):
    """An integer input gives torch's result (the composite's), as the other ops' do, not the kernels' dtype
    error."""
    params, ch1x1 = _paper_params(TINY, device=backend_device(backend))
    params = [(p * 4).round().to(torch.int64) for p in params]
    assert all(p.any() for p in params)
    x = torch.randint(-3, 4, (1, TINY[0], 4, 4), device=params[0].device)
    got = run(backend, ops.inception, x, *params, ch1x1)
    assert got.dtype == torch.int64 and torch.equal(got, reference.inception(x, *params, ch1x1))


@pytest.mark.parametrize("backend", [p for p in OUR_BACKENDS if p.values[0] != "triton"])
def test_gradcheck_float64(backend):
    device = backend_device(backend)
    params, ch1x1 = _paper_params(TINY, device=device, seed=4)
    x = torch.randn(1, TINY[0], 3, 4, dtype=torch.float64, device=device)
    leaves = [t.detach().requires_grad_() for t in (x, *params)]
    with classicnets_ext.use_backend(backend):
        # fast mode: random projections of the Jacobian instead of all of it (the slow mode takes minutes here)
        assert torch.autograd.gradcheck(lambda *t: ops.inception(*t, ch1x1), leaves, fast_mode=True)
        assert torch.autograd.gradgradcheck(lambda *t: ops.inception(*t, ch1x1), leaves, fast_mode=True)


def test_opcheck_cpp_op():
    if "cpu" not in classicnets_ext.available_backends():
        pytest.skip("the C++ backend is not available")
    params, ch1x1 = _paper_params(TINY, dtype=torch.float32)
    for x in (torch.randn(2, TINY[0], 4, 3), torch.randn(1, TINY[0], 3, 5).contiguous(memory_format=torch.channels_last)):
        args = (x.requires_grad_(), *(p.detach().requires_grad_() for p in params), ch1x1)
        torch.library.opcheck(torch.ops.classicnets_ext.inception.default, args)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_compile_keeps_the_op_in_the_graph(backend):
    if backend == "reference":
        pytest.skip("the reference backend is the torch composite: there is no op to keep")
    device = backend_device(backend)
    block = randomize(Inception(*TINY)).eval().to(device)
    x = torch.randn(2, TINY[0], 4, 4, device=device)
    op = torch.ops.classicnets_ext.inception_triton if backend == "triton" else torch.ops.classicnets_ext.inception
    with torch.no_grad():
        assert_compile_keeps_op(block, x, backend, op)


def test_inductor_compiles_the_block_forward_and_backward():
    block = randomize(Inception(*TINY, style="paper"))
    x = torch.randn(2, TINY[0], 5, 5, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    got = compiled(x)
    want = block(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    gx_got, = torch.autograd.grad(got.sum(), x)
    gx_want, = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(gx_got, gx_want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------- module behaviour

def test_state_dict_keys_match_torchvision_and_paper_style_has_biases():
    theirs, ours = block_pair(BLOCKS["3a"])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    paper = Inception(*BLOCKS["3a"], style="paper")
    keys = set(paper.state_dict())
    assert "branch3.1.conv.bias" in keys and not any(".bn." in k for k in keys)
    assert paper.state_dict()["branch3.1.conv.weight"].shape[-1] == 5


def test_fold_cache_is_never_stale():
    block = randomize(Inception(*TINY)).eval()
    x = torch.randn(1, TINY[0], 4, 4)
    with torch.no_grad():
        first = block(x)
        assert torch.equal(block(x), first)
        block.branch2[0].bn.running_var.mul_(4.0)  # a buffer changed in place
        second = block(x)
        assert not torch.allclose(second, first)
        block.branch4[1].conv.weight.zero_()  # a parameter changed in place
        third = block(x)
    want = torch.cat([block.branch1(x), block.branch2(x), block.branch3(x), block.branch4(x)], 1)
    torch.testing.assert_close(third, want, atol=1e-5, rtol=1e-5)
    pool_branch = third[:, -TINY[-1]:]  # zero weights: relu(the folded bias), the same at every pixel
    assert torch.equal(pool_branch, pool_branch[:, :, :1, :1].expand_as(pool_branch))


def test_fold_cache_follows_rebound_data_and_batchnorm_eps():
    """`param.data = other` keeps the parameter's version counter, and BatchNorm's eps is no tensor at all:
    the cache key missed both, and the block kept answering with the old fold (max error 10 and 1.9)."""
    torch.manual_seed(0)
    tv = randomize(TVInception(*TINY)).eval()
    block = Inception(*TINY).eval()
    block.load_state_dict(tv.state_dict())
    x = torch.randn(1, TINY[0], 5, 5)
    with torch.no_grad():
        block(x)  # fills the cache
        w = torch.randn_like(tv.branch1.conv.weight)
        tv.branch1.conv.weight.data = w.clone()
        block.branch1.conv.weight.data = w.clone()
        torch.testing.assert_close(block(x), tv(x), atol=1e-5, rtol=1e-5)
        tv.branch3[1].bn.eps = block.branch3[1].bn.eps = 0.5
        torch.testing.assert_close(block(x), tv(x), atol=1e-5, rtol=1e-5)
        # Two rebinds between forwards: the second storage often got the first's freed address, with the version
        # and the tensor the same -- the old fold came back (17 of 20 tries). The cache keeps its storages.
        block, x = Inception(64, 64, 32, 64, 16, 32, 32).eval(), torch.randn(1, 64, 4, 4)  # (16 KB weights)
        weight = block.branch1.conv.weight
        for _ in range(20):
            block(x)
            weight.data = torch.randn_like(weight)
            weight.data = torch.randn_like(weight)
            with classicnets_ext.use_backend("reference"):  # the unfused submodules
                want = block(x)
            torch.testing.assert_close(block(x), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_hooks_on_submodules_run_and_shape_the_output(training):
    """A forward hook on a branch's conv (a feature extractor's, a pruning mask's) must run and may change
    what follows, as in torchvision's block; the fused op calls no submodule, so a block with such hooks runs
    torchvision's forward."""
    torch.manual_seed(0)
    tv = randomize(TVInception(*TINY)).train(training)
    block = Inception(*TINY).train(training)
    block.load_state_dict(tv.state_dict())
    seen = []
    for m in (tv, block):
        m.branch2[0].conv.register_forward_hook(lambda mod, args, out: seen.append(out.shape) or out * 0.5)
        m.branch4[0].register_forward_pre_hook(lambda mod, args: (args[0] + 1,))
    x = torch.randn(2, TINY[0], 5, 5)
    torch.testing.assert_close(block(x), tv(x), atol=1e-5, rtol=1e-5)
    assert len(seen) == 2 and seen[0] == seen[1]


def test_eval_gradients_flow_to_the_folded_parameters():
    theirs, ours = (m.eval() for m in block_pair(TINY, seed=5))
    x = torch.randn(2, TINY[0], 4, 4)
    g = torch.randn(2, sum(TINY[i] for i in (1, 3, 5, 6)), 4, 4)
    theirs(x).backward(g)
    ours(x).backward(g)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_unbatched_input_and_autocast():
    """(C, H, W) runs in the paper style (convolutions and ReLU take it); the torchvision style refuses it with
    BatchNorm2d's error, in eval mode (folded) as in train mode and as torchvision's block does."""
    block = randomize(Inception(*TINY)).eval()
    x = torch.randn(TINY[0], 4, 5)
    paper = Inception(*TINY, style="paper").eval()
    with torch.no_grad():
        torch.testing.assert_close(paper(x), paper(x.unsqueeze(0)).squeeze(0))
        for mode in (False, True):
            with pytest.raises(ValueError, match="expected 4D input"):
                block.train(mode)(x)
            with pytest.raises(ValueError, match="expected 4D input"):
                TVInception(*TINY).train(mode)(x)
        block.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x.unsqueeze(0))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), block(x.unsqueeze(0)).detach(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_bad_arguments_raise_naming_the_problem(backend, request):
    """On CUDA in a process of its own (ran_isolated): on the H200 the first C++ argument error of this test
    (bias_pool's ValueError) killed the process (lease 2), as LRN's and max-pool's did on lease 1."""
    device = backend_device(backend)
    if ran_isolated(request, device):
        return
    params, ch1x1 = _paper_params(TINY, device=device, dtype=torch.float32)
    x = torch.randn(1, TINY[0], 3, 3, device=device)
    w1, b1, w3, b3, w5, b5, wp, bp = params
    with classicnets_ext.use_backend(backend):
        with pytest.raises(ValueError, match="weight_1x1"):
            ops.inception(torch.randn(1, TINY[0] + 1, 3, 3, device=device), *params, ch1x1)
        with pytest.raises(ValueError, match="input"):
            ops.inception(torch.randn(2, 1, TINY[0], 3, 3, device=device), *params, ch1x1)
        with pytest.raises(RuntimeError, match="weight_3x3"):
            ops.inception(x, w1, b1, w3.double(), b3, w5, b5, wp, bp, ch1x1)
        with pytest.raises(RuntimeError, match="'input' has torch.int64"):
            ops.inception(x.long(), *params, ch1x1)
        with pytest.raises(ValueError, match="weight_1x1"):
            ops.inception(x, *params, ch1x1 + 1)
        with pytest.raises(ValueError, match="bias_pool"):
            ops.inception(x, w1, b1, w3, b3, w5, b5, wp, bp[:-1], ch1x1)
    # A reduction of width 0 (weight_3x3 with no input channels, weight_1x1 stacking the other two): the raw C++
    # op used to pass it to its kernels and crash.
    r3 = w3.shape[1]
    no_red3 = (torch.cat([w1[:ch1x1], w1[ch1x1 + r3:]]), torch.cat([b1[:ch1x1], b1[ch1x1 + r3:]]), w3[:, :0], b3,
               w5, b5, wp, bp)
    raw = torch.ops.classicnets_ext.inception_triton if backend == "triton" else torch.ops.classicnets_ext.inception
    for call in (ops.inception, raw):
        with classicnets_ext.use_backend(backend), pytest.raises(ValueError, match="weight_3x3"):
            call(x, *no_red3, ch1x1)
    # No 1x1 branch: every raw op refuses it, as ops.inception does (the Triton one computed it).
    no_1x1 = (w1[ch1x1:], b1[ch1x1:], w3, b3, w5, b5, wp, bp)
    for call, error in ((ops.inception, RuntimeError), (raw, ValueError)):  # (ops: _check_int's, as torch's)
        with classicnets_ext.use_backend(backend), pytest.raises(error, match="ch1x1"):
            call(x, *no_1x1, 0)
    if backend != "triton":  # the raw C++ op checks for itself: errors, not crashes
        op = torch.ops.classicnets_ext.inception
        with pytest.raises(ValueError, match="bias_3x3"):
            op(x, w1, b1, w3, b3[:-1], w5, b5, wp, bp, ch1x1)
        with pytest.raises(TypeError, match="input"):
            op(x.long(), *params, ch1x1)
        with pytest.raises(ValueError, match="weight_5x5"):
            op(x, w1, b1, w3, b3, w5[..., :2], b5, wp, bp, ch1x1)
        with pytest.raises(TypeError, match="bias_1x1"):
            op(x, w1, b1.double(), w3, b3, w5, b5, wp, bp, ch1x1)


def test_style_and_widths_are_checked():
    with pytest.raises(ValueError, match="style"):
        Inception(*TINY, style="caffe")
    for i, name in enumerate(["in_channels", "ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5", "pool_proj"]):
        for bad in (0, -1, 2.0, True):
            with pytest.raises(ValueError, match=f"'{name}'"):
                Inception(*TINY[:i], bad, *TINY[i + 1:])
    import numpy as np

    assert Inception(*map(np.int64, TINY)).branch1.conv.out_channels == TINY[1]  # integers of any kind, as torch's


def test_conv_block_builds_the_layers_as_torchvisions():
    """torchvision's eighth argument: ``conv_block`` builds every conv layer. Its BasicConv2d gives torchvision's
    block (the same state_dict and outputs; run unfused, since the fused op knows only our two layer classes);
    our ConvBNReLU passed explicitly still fuses."""
    from torchvision.models.googlenet import BasicConv2d

    torch.manual_seed(0)
    theirs = TVInception(*TINY).eval()
    for ours in (Inception(*TINY, BasicConv2d), Inception(*TINY, conv_block=BasicConv2d)):
        ours.load_state_dict(theirs.state_dict())
        assert type(ours.branch2[1]) is BasicConv2d
        x = torch.randn(2, TINY[0], 5, 4)
        with torch.no_grad():
            torch.testing.assert_close(ours.eval()(x), theirs(x))
        assert ours._fusable(x) is None
    from classicnets_ext._inception import ConvBNReLU

    ours = Inception(*TINY, ConvBNReLU).eval()
    assert ours._fusable(torch.randn(1, TINY[0], 5, 4)) is not None
    with pytest.raises(TypeError, match="'conv_block'"):
        Inception(*TINY, "BasicConv2d")


# ------------------------------------------------------------------------------------------------- convert

def test_convert_torchvision_googlenet_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    randomize(model, seed=6).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    import copy
    ours = classicnets_ext.convert(copy.deepcopy(model))
    blocks = [m for m in ours.modules() if isinstance(m, Inception)]
    assert len(blocks) == 9 and not any(type(m) is torch.nn.MaxPool2d for m in ours.modules())
    assert not ours.training
    with torch.no_grad():
        torch.testing.assert_close(ours(x), want, atol=1e-4, rtol=1e-3)
    # train mode: same outputs and gradients (batch statistics, running stats updated alike)
    model.train(), ours.train()
    xb = torch.randn(2, 3, 64, 64)
    torch.manual_seed(7)  # the same dropout mask for both
    out_want = model(xb)
    torch.manual_seed(7)
    out_got = ours(xb)
    torch.testing.assert_close(out_got, out_want, atol=1e-4, rtol=1e-3)
    out_want.sum().backward()
    out_got.sum().backward()
    # 22 layers of fp32 BatchNorm backward, summed in another order: compare to each gradient's scale
    for (name, a), b in zip(ours.named_parameters(), model.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-3 * b.grad.abs().max(), name


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn", "resnet18"])
def test_convert_other_torchvision_models_keeps_outputs(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        classicnets_ext.convert(model)
        assert not any(type(m) is torch.nn.MaxPool2d for m in model.modules())
        torch.testing.assert_close(model(x), want)


def test_convert_fuses_only_what_it_keeps_exact():
    """No fusion where the fused module would answer differently: a subclass's own forward, or a hook, would be
    dropped (both happened); and an unbatched (C, H, W) input keeps the Sequential's LRN over H."""
    import copy

    class ScaledPool(torch.nn.MaxPool2d):
        def forward(self, x):
            return super().forward(x) * 2

    class ShiftedNorm(torch.nn.LocalResponseNorm):
        def forward(self, x):
            return super().forward(x) + 1

    torch.manual_seed(0)
    calls = []
    hooked = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2), torch.nn.LocalResponseNorm(5))
    hooked[1].register_forward_hook(lambda mod, args, out: calls.append(1) or out * 0.5)
    hooked_relu = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2), torch.nn.LocalResponseNorm(5))
    hooked_relu[0].register_forward_pre_hook(lambda mod, args: calls.append(0))
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2),
                                torch.nn.LocalResponseNorm(5, alpha=1e-2, k=2.0))
    models = [torch.nn.Sequential(ScaledPool(3, 2), torch.nn.LocalResponseNorm(5)),
              torch.nn.Sequential(torch.nn.MaxPool2d(3, 2), ShiftedNorm(5)), hooked, hooked_relu, plain]
    for model in models:
        want = copy.deepcopy(model)
        classicnets_ext.convert(model)
        x = torch.randn(2, 8 if model is not plain else 3, 9, 9)
        for xi in (x, x[0]):  # batched, and unbatched (C, H, W)
            calls.clear()
            torch.testing.assert_close(model(xi), want(xi), atol=1e-5, rtol=1e-5)
            if model is hooked or model is hooked_relu:
                assert calls == [1, 1] or calls == [0, 0]  # ours and the original's hook ran
    assert not any(isinstance(m, classicnets_ext.nn.MaxPoolLRN) for model in models[:3] for m in model.modules())
    assert type(hooked[1]) is classicnets_ext.nn.MaxPool2d
    # A hooked ReLU stays itself; the pool and LRN after it still fuse, without the ReLU.
    assert type(hooked_relu[0]) is torch.nn.ReLU and not hooked_relu[1].relu
    assert isinstance(plain[1], classicnets_ext.nn.MaxPoolLRN) and plain[1].relu


def test_convert_leaves_runs_whose_forward_is_not_the_classs():
    """A Sequential subclass with its own forward (which indexes or taps its slots), a forward set on a
    Sequential or on one of the run's layers: fusing rewrote the slots or dropped the forward (outputs off by
    up to 0.86). Each stays as it was, and computes what it did."""
    class PoolAndNorm(torch.nn.Sequential):  # keeps the pooled map beside the normalised one
        def forward(self, x):
            p = self[1](self[0](x))
            return p + self[2](p)

    def run():
        return [torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2), torch.nn.LocalResponseNorm(5, k=2.0)]

    torch.manual_seed(0)
    subclass = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), PoolAndNorm(*run()))
    patched_seq = torch.nn.Sequential(*run())
    patched_seq.forward = lambda x: patched_seq[2](patched_seq[1](x))  # skips the ReLU
    models = [subclass, patched_seq]
    for i in range(3):  # the ReLU, the pool, the LRN
        layers = run()
        original = layers[i].forward
        layers[i].forward = lambda x, original=original: original(x) * 0.5
        models.append(torch.nn.Sequential(*layers))
    x = torch.randn(2, 3, 9, 9)
    for k, model in enumerate(models):
        xi = x if model is subclass else x.repeat(1, 3, 1, 1)
        want = model(xi)
        classicnets_ext.convert(model)
        fused = [m for m in model.modules() if isinstance(m, classicnets_ext.nn.MaxPoolLRN)]
        if k == 2:  # the patched ReLU stays itself; the pool and LRN after it fuse without it
            assert "forward" in vars(model[0]) and len(fused) == 1 and not fused[0].relu
        else:
            assert not fused
        torch.testing.assert_close(model(xi), want)


def test_convert_keeps_a_degenerate_lrn_computing_what_it_did():
    """An infinite beta with a window sum of 1 leaves x as it is in torch (1 ** inf = 1); the fused op refused
    non-finite settings, so convert() turned a working model into one that raised."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.LocalResponseNorm(3, alpha=0.0, beta=float("inf"), k=1.0))
    x = torch.randn(2, 3, 9, 9)
    want = model(x)
    classicnets_ext.convert(model)
    assert isinstance(model[1], classicnets_ext.nn.MaxPoolLRN)
    torch.testing.assert_close(model(x), want)


def test_convert_fuses_relu_pool_lrn_runs_keeping_indices():
    torch.manual_seed(0)
    seq = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2), torch.nn.LocalResponseNorm(5, k=2.0),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.MaxPool2d(3, 2, ceil_mode=True), torch.nn.LocalResponseNorm(3),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    x = torch.randn(2, 3, 31, 31, requires_grad=True)
    want = seq(x)
    gw, = torch.autograd.grad(want.sum(), seq[0].weight)
    keys = list(seq.state_dict())
    classicnets_ext.convert(seq)
    assert len(seq) == 9 and list(seq.state_dict()) == keys
    assert isinstance(seq[1], classicnets_ext.nn.MaxPoolLRN) and seq[1].relu
    assert isinstance(seq[2], torch.nn.Identity) and isinstance(seq[3], torch.nn.Identity)
    assert isinstance(seq[5], classicnets_ext.nn.MaxPoolLRN) and not seq[5].relu and seq[5].ceil_mode
    assert type(seq[8]) is classicnets_ext.nn.MaxPool2d  # a pool with no LRN after it stays a pool
    got = seq(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    gw_got, = torch.autograd.grad(got.sum(), seq[0].weight)
    torch.testing.assert_close(gw_got, gw, atol=1e-4, rtol=1e-4)


def test_convert_keeps_every_module_in_the_models_mode_and_refuses_what_it_cannot_convert():
    """The Identity slots of a fused run take the model's mode, as fuse_modules' do (an eval model stays all
    eval); a TorchScript module, whose layers cannot be swapped, and a non-module are refused by name."""
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2),
                              torch.nn.LocalResponseNorm(5)).eval()
    classicnets_ext.convert(seq)
    assert isinstance(seq[1], classicnets_ext.nn.MaxPoolLRN) and not any(m.training for m in seq.modules())
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.MaxPool2d(2), torch.nn.LocalResponseNorm(3)))
    with pytest.raises(TypeError, match="'model' is a TorchScript module"):
        classicnets_ext.convert(scripted)
    for bad in (None, lambda x: x):
        with pytest.raises(TypeError, match="'model' must be a torch.nn.Module"):
            classicnets_ext.convert(bad)


def test_convert_fuses_an_inplace_relu_only_where_its_write_is_unseen():
    """A fused ReLU no longer overwrites its input. After a hook-free Conv2d nobody else holds that tensor, so
    ReLU(inplace=True) fuses; where someone does -- a forward hook keeping the conv's output, the caller's own
    input -- the ReLU stays and writes as before (fusing it made the hook's tensor differ by up to 2.1)."""
    import copy

    def net(first_conv=True):
        layers = [torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(3, 2), torch.nn.LocalResponseNorm(5)]
        return torch.nn.Sequential(*([torch.nn.Conv2d(3, 8, 3)] if first_conv else []), *layers)

    torch.manual_seed(0)
    x = torch.randn(2, 3, 15, 15)
    fused = net()
    want = fused(x)
    classicnets_ext.convert(fused)
    assert isinstance(fused[1], classicnets_ext.nn.MaxPoolLRN) and fused[1].relu
    torch.testing.assert_close(fused(x), want, atol=1e-5, rtol=1e-5)

    hooked, seen = net(), {}
    hooked[0].register_forward_hook(lambda mod, args, out: seen.__setitem__("conv", out))
    hooked(x)
    want_seen = seen["conv"].clone()
    assert want_seen.min() >= 0  # torch's in-place ReLU wrote into the conv's output the hook kept
    classicnets_ext.convert(hooked)
    assert type(hooked[1]) is torch.nn.ReLU and not hooked[2].relu
    hooked(x)
    torch.testing.assert_close(seen["conv"], want_seen)

    first = net(first_conv=False)
    theirs = copy.deepcopy(first)
    x_theirs, x_ours = x.clone(), x.clone()
    want = theirs(x_theirs)
    classicnets_ext.convert(first)
    assert type(first[0]) is torch.nn.ReLU and not first[1].relu
    torch.testing.assert_close(first(x_ours), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_ours, x_theirs)  # the caller's input was overwritten by both


@pytest.mark.parametrize("style", ["torchvision", "paper"])
def test_torch_func_transforms_run_the_block(style):
    """torch.func.grad over the parameters (functional_call) and per-sample gradients (vmap of grad) through an
    eval-mode block: the fused op's register_autograd gradient does not support functorch transforms, which
    raised; inside a transform the block runs its submodules. Equal to plain autograd through the fused op
    (and, torchvision style, to torchvision's block)."""
    from torch.func import functional_call, grad, vmap

    theirs, ours = block_pair(TINY)
    if style == "paper":
        ours = randomize(Inception(*TINY, style="paper"))
    theirs.double().eval(), ours.double().eval()
    x = torch.randn(3, TINY[0], 5, 5, dtype=torch.float64)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    got = grad(lambda p: functional_call(ours, p, (x,)).square().sum())(params)
    want = dict(zip(params, torch.autograd.grad(ours(x).square().sum(), list(ours.parameters()))))
    if style == "torchvision":
        want_tv = dict(zip(params, torch.autograd.grad(theirs(x).square().sum(), list(theirs.parameters()))))
    for name in params:
        torch.testing.assert_close(got[name], want[name])
        if style == "torchvision":
            torch.testing.assert_close(got[name], want_tv[name])
    per_sample = vmap(grad(lambda xi: ours(xi[None]).square().sum()))(x)
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_()
        (gi,) = torch.autograd.grad(ours(xi).square().sum(), xi)
        torch.testing.assert_close(per_sample[i], gi[0])
