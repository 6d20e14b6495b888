"""The model zoo (classicnets_ext.models): the registry, every network's forward/backward, the published
parameter counts, torchvision parity (strict state_dict loading, equal eval outputs), the paper networks'
documented sizes, weights loading errors, and that every pool / LRN / Inception in a model is ours.

Sizes are kept small for CI: each network runs at the smallest input its architecture allows (AlexNet, VGG and
ResNet have adaptive pools; the paper networks' FC6 fixes their input size). Structural checks (counts, layer
types) build on the meta device, which allocates nothing. ``slow``: Inductor compiles and the VGG13/19 training
runs (minutes on 2 cores); ``-m "not slow"`` leaves them out.
"""
from __future__ import annotations

import copy

import pytest
import torch

import classicnets_ext
from classicnets_ext import models
from classicnets_ext.nn import Inception, LocalResponseNorm, MaxPool2d, MaxPoolLRN
from conftest import requires_cuda

slow = pytest.mark.slow

TORCHVISION_NAMES = ["alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
                     "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
PAPER_NAMES = ["lenet5", "alexnet_paper", "zfnet", "googlenet_paper"]

# Input side for the forward/backward tests: the smallest the architecture allows, or its only size.
SMALL = {"lenet5": 32, "alexnet": 64, "alexnet_paper": 227, "zfnet": 224, "googlenet": 64,
         "googlenet_paper": 224, **{n: 32 for n in TORCHVISION_NAMES if n.startswith("vgg")},
         **{n: 64 for n in TORCHVISION_NAMES if n.startswith("resnet")}}


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.get_model(name, **kwargs)


def build_meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return models.get_model(name, **kwargs)


def image(name: str, batch: int = 2, side: int | None = None) -> torch.Tensor:
    channels = models.get_model_entry(name).input_size[0]
    side = side or SMALL[name]
    return torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(1))


def outputs(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple) else (out,)


# ----------------------------------------------------------------------------------------------- registry

def test_registry_lists_every_network():
    assert models.list_models() == sorted(TORCHVISION_NAMES + PAPER_NAMES)
    assert models.list_models(include="vgg*", exclude="*_bn") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert models.get_model_builder("vgg16") is models.vgg16
    assert models.get_model_entry("alexnet_paper").input_size == (3, 227, 227)
    assert models.get_model_entry("lenet5").input_size == (1, 32, 32)


def test_registry_takes_torchvisions_arguments():
    """What torchvision's list_models / get_model / builders take: pattern lists, a family module, any case,
    progress= (nothing is downloaded here), and googlenet's init_weights=None (read as True)."""
    assert models.list_models(include=["vgg1*", "alexnet"], exclude=["*_bn"]) == ["alexnet", "vgg11", "vgg13",
                                                                                 "vgg16", "vgg19"]
    assert models.list_models(models.resnet) == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert models.list_models(models) == models.list_models()  # the package: all, as torchvision.models
    # torchvision's legacy forms, which it still takes with a warning: weights (and progress) by position, and
    # pretrained=False.
    for legacy in (lambda: models.lenet5(None), lambda: models.lenet5(None, False), lambda: models.lenet5(False),
                   lambda: models.lenet5(pretrained=False)):
        with pytest.warns(UserWarning, match="deprecated"):
            assert isinstance(legacy(), torch.nn.Module)
    assert type(models.get_model("ResNet18", progress=False)) is type(models.resnet18(progress=True))
    torch.manual_seed(0)
    default = models.googlenet(init_weights=True, aux_logits=False)
    torch.manual_seed(0)
    assert torch.equal(models.googlenet(init_weights=None, aux_logits=False).fc.weight, default.fc.weight)


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown model 'vgg61'.*vgg16"):
        models.get_model("vgg61")
    with pytest.raises(ValueError, match="already registered"):
        models.register_model()(models.vgg16)
    with pytest.raises(TypeError, match="by position at most"):  # torchvision's legacy form: weights, progress
        models.vgg11(None, True, 10)
    with pytest.warns(UserWarning, match="deprecated"), pytest.raises(ValueError, match="pretrained=True"):
        models.lenet5(True)  # torchvision's oldest form: pretrained by position
    with pytest.raises(ValueError, match=r"pretrained=True would download weights.*weights="):
        models.resnet18(pretrained=True)
    with pytest.raises(ValueError, match=r"vgg11\(\): memory_format must be torch.channels_last"):
        models.get_model("vgg11", memory_format="channels_last")
    # list_models: an unknown family or a wrong type names its argument (a typo gave [] silently)
    assert models.list_models("vgg") == models.list_models(models.vgg) == models.list_models(include="vgg*")
    with pytest.raises(ValueError, match=r"argument 'module': unknown family 'vggg' \(one of alexnet, googlenet"):
        models.list_models(module="vggg")
    with pytest.raises(TypeError, match="argument 'module' must be a module or a family name, got int"):
        models.list_models(module=5)
    for name in ("include", "exclude"):
        with pytest.raises(TypeError, match=f"argument '{name}' must be a str or an iterable of str, got int"):
            models.list_models(**{name: 5})


# -------------------------------------------------------------------------------- every network, trained

# VGG13/19 share VGG11/16's code (make_layers, the VGG class) and are parity-tested below; their ~140M
# parameters make each of these runs several seconds.
SLOW_FORWARD_BACKWARD = {"vgg13", "vgg13_bn", "vgg19", "vgg19_bn"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=slow) if n in SLOW_FORWARD_BACKWARD else n
                                  for n in TORCHVISION_NAMES + PAPER_NAMES])
def test_forward_backward(name):
    """Train mode, batch 2 (BatchNorm needs >1 sample): the output shape, finite values, and a nonzero finite
    gradient for every parameter after one backward -- a parameter left out of the graph would show None."""
    model = build(name).train()
    outs = outputs(model(image(name)))
    num_classes = 10 if name == "lenet5" else 1000
    expected = 3 if name.startswith("googlenet") else 1  # GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
    assert len(outs) == expected
    for out in outs:
        assert out.shape == (2, num_classes)
        assert torch.isfinite(out).all()
    # A random projection, so no gradient cancels by symmetry.
    sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(2))).sum() for o in outs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        # One fused pass over the gradient (VGG's FC6 holds 103M): inf/NaN anywhere make the norm non-finite.
        norm = torch.linalg.vector_norm(p.grad, 1)
        assert torch.isfinite(norm) and norm > 0, f"{name}: {pname} has gradient L1 norm {norm.item()}"


def test_googlenet_paper_without_aux_runs_small():
    """Without its aux heads (whose 5x5/3 pool needs 4a's 14x14, i.e. a 224 input) the paper GoogLeNet takes
    small inputs: every pool rounds up and the head's average pool is adaptive."""
    model = build("googlenet_paper", aux_logits=False).train()
    out = model(image("googlenet_paper", side=64))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", TORCHVISION_NAMES + PAPER_NAMES)
def test_forward_backward_on_the_meta_device(name):
    """Shape inference without allocating, as torch's own layers allow: a model built on the meta device runs
    forward and backward there at its full input size, and the shapes match the CPU run's."""
    model = build_meta(name).train()
    x = torch.empty(2, *models.get_model_entry(name).input_size, device="meta", requires_grad=True)
    outs = outputs(model(x))
    num_classes = 10 if name == "lenet5" else 1000
    assert [(o.device.type, tuple(o.shape)) for o in outs] == [("meta", (2, num_classes))] * len(outs)
    sum(o.sum() for o in outs).backward()
    assert x.grad is not None and x.grad.shape == x.shape
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, f"{name}: {pname}"
    with torch.no_grad():
        assert outputs(model.eval()(x))[0].shape == (2, num_classes)


# --------------------------------------------------------------------------------- parameter counts

# Published counts: torchvision's weights metadata (num_params) for its models; the papers' arithmetic
# (NETWORKS.md) for the others.
PUBLISHED = [
    ("alexnet", {}, 61_100_840), ("vgg11", {}, 132_863_336), ("vgg11_bn", {}, 132_868_840),
    ("vgg13", {}, 133_047_848), ("vgg13_bn", {}, 133_053_736), ("vgg16", {}, 138_357_544),
    ("vgg16_bn", {}, 138_365_992), ("vgg19", {}, 143_667_240), ("vgg19_bn", {}, 143_678_248),
    ("googlenet", {"aux_logits": False}, 6_624_904), ("resnet18", {}, 11_689_512), ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032), ("resnet101", {}, 44_549_160), ("resnet152", {}, 60_192_808),
    ("lenet5", {}, 61_706), ("lenet5", {"c3_table": True}, 60_806),
    ("alexnet_paper", {}, 60_965_224), ("alexnet_paper", {"groups": 2}, 60_965_224),
    ("alexnet_paper", {"groups": 1}, 62_378_344), ("alexnet_paper", {"order": "paper"}, 60_965_224),
    ("zfnet", {}, 107_627_624), ("zfnet", {"paper_widths": True}, 62_357_608),
]


@pytest.mark.parametrize("name,kwargs,expected", PUBLISHED, ids=lambda v: str(v) if not isinstance(v, int) else "")
def test_published_parameter_count(name, kwargs, expected):
    assert n_params(build_meta(name, **kwargs)) == expected


def test_vgg16_fc6_share():
    """The lecture notes' "102M, 74%": FC6 (7*7*512 -> 4096) holds most of VGG16's parameters."""
    model = build_meta("vgg16")
    fc6 = n_params(model.classifier[0])
    assert fc6 == 102_764_544
    assert round(100 * fc6 / n_params(model)) == 74


def test_googlenet_paper_parameter_count():
    """"About 6.8M without the aux heads": Table 1's params column counts weights only, in K = 1024 (3a's
    "159K" = 163,328 / 1024). Our weights come to 6.83M such units; with biases, 7.0M plain parameters. The
    aux heads add two FC-heavy classifiers (~3.2M each)."""
    model = build_meta("googlenet_paper", aux_logits=False)
    weights = sum(p.numel() for k, p in model.named_parameters() if k.endswith("weight"))
    assert round(weights / 1024 / 1e3, 1) == 6.8
    assert round(n_params(model.inception3a) / 1024) in (159, 160)  # Table 1: 159K (+ biases)
    assert abs(n_params(model) - 6.8e6) / 6.8e6 < 0.03
    aux = n_params(build_meta("googlenet_paper")) - n_params(model)
    assert 6.0e6 < aux < 6.6e6


# ------------------------------------------------------------------------------------- torchvision parity

def _randomize_bn(model: torch.nn.Module) -> None:
    """BatchNorm statistics and affine parameters away from the identity, so BN folding has work to do."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 1.5), (m.weight, 0.5, 1.5),
                                  (m.bias, -0.5, 0.5)):
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)


def _torchvision(name: str, **kwargs) -> torch.nn.Module:
    """torchvision's model with random weights: built on the meta device and filled once with He-uniform
    weights (torchvision's own initialisation fills VGG's 138M parameters twice: seconds per model), biases
    and BatchNorm random too."""
    tvm = pytest.importorskip("torchvision.models")
    if name == "googlenet":
        kwargs.setdefault("init_weights", True)  # silences torchvision's FutureWarning (free on meta)
    with torch.device("meta"):
        model = getattr(tvm, name)(**kwargs)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            bound = (6 / p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1
            p.uniform_(-bound, bound, generator=g)
        for b in model.buffers():
            b.zero_()
    _randomize_bn(model)
    return model


def _assert_same(ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> None:
    # fp32 rounding: our Inception folds BatchNorm into its weights, so its sums are ordered differently.
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours, ref, rtol=10 * tol, atol=tol * max(scale, 1.0))


@pytest.mark.parametrize("name,kwargs", [(n, {}) for n in TORCHVISION_NAMES]
                         + [("googlenet", {"transform_input": True})], ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={w}" for k, w in v.items()))
def test_torchvision_parity_eval(name, kwargs):
    """Same state_dict keys, in the same order, with the same shapes; torchvision's state_dict loads with
    strict=True (through weights= and through load_state_dict); eval outputs are equal."""
    ref = _torchvision(name, **kwargs).eval()
    state = ref.state_dict()
    with torch.device("meta"):
        skeleton = models.get_model(name, **kwargs)
    assert list(skeleton.state_dict()) == list(state)
    assert all(skeleton.state_dict()[k].shape == v.shape for k, v in state.items())
    ours = models.get_model(name, weights=state, **kwargs).eval()
    x = image(name)
    with torch.no_grad():
        _assert_same(ours(x), ref(x))
    if name == "alexnet":  # load_state_dict itself, on a model built without weights=
        fresh = build(name)
        assert not fresh.load_state_dict(state, strict=True).missing_keys


def test_googlenet_train_mode_outputs_match_torchvision():
    """Train mode with aux heads: GoogLeNetOutputs(logits, aux_logits2, aux_logits1) in torchvision's order and
    values (batch statistics in the Inception blocks; dropout off so the outputs are deterministic)."""
    kwargs = dict(dropout=0.0, dropout_aux=0.0)
    ref = _torchvision("googlenet", **kwargs).train()
    ours = models.googlenet(aux_logits=True, weights=ref.state_dict(), **kwargs).train()
    x = image("googlenet")
    got, want = ours(x), ref(x)
    assert type(got).__name__ == "GoogLeNetOutputs" and got._fields == ("logits", "aux_logits2", "aux_logits1")
    for a, b in zip(got, want):
        # Batch statistics over 2 images x 4x4 pixels late in the net: each BatchNorm divides by a standard
        # deviation estimated from 32 values, which amplifies the rounding differences of our fused 1x1
        # convolution layer after layer (measured: up to 3e-5 of the output's scale).
        _assert_same(a, b, tol=1e-4)
    ours.eval()
    assert isinstance(ours(x), torch.Tensor)  # eval: logits only


# ------------------------------------------------------------------------ BatchNorm folded in eval mode

class _CountBatchNorm(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the BatchNorm kernels that run (eval: _native_batch_norm_legit_no_training)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += "batch_norm" in func.__name__
        return func(*args, **(kwargs or {}))


def _batch_norms_run(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), _CountBatchNorm() as counter:
        model(x)
    return counter.calls


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11_bn", "googlenet"])
def test_eval_mode_folds_every_batchnorm(name):
    """Eval mode runs no BatchNorm kernel -- each is folded into the convolution before it -- and still equals
    torchvision's model; the reference backend (stock PyTorch) runs each BatchNorm as torchvision does."""
    ref = _torchvision(name).eval()
    ours = models.get_model(name, weights=ref.state_dict()).eval()
    x = image(name, batch=1)
    batch_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
    assert batch_norms > 0 and _batch_norms_run(ours, x) == 0
    with classicnets_ext.use_backend("reference"):
        assert _batch_norms_run(ours, x) == _batch_norms_run(ref, x) == batch_norms
    with torch.no_grad():
        _assert_same(ours(x), ref(x))


def test_fold_follows_batchnorm_and_weight_changes():
    """The folded tensors are cached between eval calls; an in-place change to a running statistic, a rebound
    weight (`.data =`, same version counter) and a changed eps each take effect on the next call."""
    ref = _torchvision("resnet18").eval()
    ours = models.resnet18(weights=ref.state_dict()).eval()
    x = image("resnet18", batch=1)
    with torch.no_grad():
        first = ours(x)
        assert torch.equal(ours(x), first)  # from the cache
        for m in (ref, ours):
            m.layer1[0].bn2.running_var.mul_(4.0)
        _assert_same(ours(x), ref(x))
        w = torch.randn_like(ref.layer2[0].downsample[0].weight)
        ref.layer2[0].downsample[0].weight.data = w.clone()
        ours.layer2[0].downsample[0].weight.data = w.clone()
        _assert_same(ours(x), ref(x))
        for m in (ref, ours):
            m.bn1.eps = m.layer4[1].bn1.eps = 0.5
        _assert_same(ours(x), ref(x))
        assert not torch.allclose(ours(x), first)


def _conv_bn_relu(seed: int = 0):
    from classicnets_ext._inception import ConvBNReLU
    torch.manual_seed(seed)
    block = ConvBNReLU(3, 8, kernel_size=3, padding=1)
    with torch.no_grad():
        block.bn.running_mean.uniform_(-0.5, 0.5), block.bn.running_var.uniform_(0.5, 2.0)
        block.bn.weight.uniform_(0.5, 1.5), block.bn.bias.uniform_(-0.5, 0.5)
    return block.eval()


def _unfolded(module, *args):
    with classicnets_ext.use_backend("reference"), torch.no_grad():
        return module(*args)


def test_fold_sees_a_training_forward_of_its_batchnorm():
    """A BatchNorm put in train mode alone (test-time adaptation, recalibration) and back: torch's kernel
    updates its running statistics in place without bumping their version counters; the fold follows them
    (num_batches_tracked, which counts the batch, is in the cache's key)."""
    model = build("resnet18").eval()
    x = image("resnet18", batch=2)
    with torch.no_grad():
        model(x)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        versions = [bn.running_mean._version for bn in bns]
        for bn in bns:
            bn.train()
        model(x)
        for bn in bns:
            bn.eval()  # BatchNorm's own train(): no cache of ours is cleared by it
        assert [bn.running_mean._version for bn in bns] == versions  # what the key cannot rely on
        _assert_same(model(x), _unfolded(model, x))


def test_fold_cache_holds_its_tensors_by_identity():
    """functional_call with new parameters on every call: a new tensor can land at a freed one's address with
    the same version (0), which a key of ids and addresses took for the cached one (32 of 300 calls of a
    resnet18 were stale); the cache holds its tensors and compares identity."""
    from torch.func import functional_call
    block, x = _conv_bn_relu(), torch.randn(1, 3, 6, 6)
    weight = block.bn.weight.detach().clone()
    with torch.no_grad():
        for scale in range(1, 101):
            params = {"bn.weight": weight * scale}
            got = functional_call(block, params, (x,))
            with classicnets_ext.use_backend("reference"):
                want = functional_call(block, params, (x,))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * scale)  # stale: off by ~1/scale
            del params  # frees this weight before the next is made, which may then take its id and address


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_fold_follows_an_optimizer_step_of_an_eval_model(fused):
    """Fine-tuning in eval mode (frozen BatchNorm) with validation passes between steps: Adam(fused=True) updates
    the parameters without bumping their versions, and the validation pass after the step computed with the
    folds of the one before it. A training forward drops the cache."""
    model = build("resnet18").eval()
    x = image("resnet18", batch=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused, foreach=not fused)
    for _ in range(2):
        with torch.no_grad():
            model(x)  # validation: fills the cache
        model(x).logsumexp(1).mean().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            _assert_same(model(x), _unfolded(model, x))


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
@pytest.mark.parametrize("grads", ["backward", "by-hand", "func-grad"])
def test_fold_follows_a_fused_step_after_a_cached_forward(name, grads):
    """A cached eval forward, then gradients from anywhere (this model's backward, gradients set by hand,
    torch.func.grad), a fused step, which updates the parameters without bumping their versions, and
    zero_grad: the next forward must fold the new weights (every torch.optim step is in the cache's key)."""
    model = build(name, **({"aux_logits": False} if name == "googlenet" else {})).eval()
    x = image(name, batch=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, fused=True)
    for _ in range(2):
        with torch.no_grad():
            model(x)  # fills the cache
        if grads == "backward":
            model(x).square().mean().backward()
        elif grads == "by-hand":
            for p in model.parameters():
                p.grad = torch.full_like(p, 0.01)
        else:
            params = dict(model.named_parameters())
            loss = lambda p: torch.func.functional_call(model, p, (x,)).square().mean()  # noqa: E731
            for key, g in torch.func.grad(loss)({k: v.detach() for k, v in params.items()}).items():
                params[key].grad = g
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            _assert_same(model(x), _unfolded(model, x))


def test_models_made_under_inference_mode_fold():
    """Parameters created or moved under inference_mode are inference tensors, which keep no version counter:
    the fold key used to read one and raise."""
    with torch.inference_mode():
        model = build("resnet18").eval().double()
        x = image("resnet18", batch=1).double()
        _assert_same(model(x), _unfolded(model, x))
        model.layer1[0].bn1.weight.mul_(2.0)  # an in-place edit the key cannot see: eval() refolds, as for .data
        model.eval()
        _assert_same(model(x), _unfolded(model, x))


def test_load_state_dict_by_swapping_tensors_after_a_forward():
    """torch.__future__.set_swap_module_params_on_conversion(True) loads a state_dict with
    torch.utils.swap_tensors, which refuses a tensor that has weak references: the cache held its tensors
    by weak reference, so any model that had run an eval forward could not load. It loads, and folds the new
    weights."""
    model = build("resnet18").eval()
    torch.manual_seed(1)
    other = models.get_model("resnet18").eval()
    x = image("resnet18", batch=1)
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with torch.no_grad():
            model(x)
            model.load_state_dict(other.state_dict())
            _assert_same(model(x), other(x))
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)


def test_swapped_activations_run_in_folded_resnet_blocks():
    """ReLU -> LeakyReLU swapped in every module of a resnet (a common edit): the folded eval path of the
    residual blocks called F.relu and ignored the swap (0.67 relative error against the unfolded model)."""
    for name in ("resnet18", "resnet50"):
        model = build(name).eval()
        for parent in list(model.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, torch.nn.ReLU):
                    setattr(parent, child_name, torch.nn.LeakyReLU(0.5))
        x = image(name, batch=1)
        with torch.no_grad():
            _assert_same(model(x), _unfolded(model, x))


@pytest.mark.parametrize("projection", ["custom", "one-layer"])
def test_a_resnet_block_with_another_projection_runs_it(projection):
    """A downsample that is not torchvision's conv -> BatchNorm pair runs as it is, unfolded (the forward once
    indexed it for fold pairs before checking its type: TypeError / IndexError)."""
    block = build("resnet18").layer2[0].eval()
    conv = block.downsample[0]
    if projection == "custom":
        class Projection(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = conv

            def forward(self, x):
                return self.conv(x)
        block.downsample = Projection()
    else:
        block.downsample = torch.nn.Sequential(conv)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        _assert_same(block(x), _unfolded(block, x))


def test_vmap_over_stacked_models_folds_each():
    """torch.func's model ensembling (stack_module_state + functional_call under vmap) runs and equals each
    model alone: batched parameters have no storage to key a cache on, so they fold afresh."""
    from torch.func import functional_call, stack_module_state, vmap
    members = [_conv_bn_relu(seed) for seed in range(3)]
    params, buffers = stack_module_state(members)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        got = vmap(lambda p, b: functional_call(members[0], (p, b), (x,)))(params, buffers)
        for k, member in enumerate(members):
            torch.testing.assert_close(got[k], _unfolded(member, x))


def test_fold_after_an_edit_through_data_needs_eval():
    """``p.data.mul_()`` bumps a version counter of its own, which the cache cannot see; ``.eval()`` (and
    ``.train()``) clear the cache, the documented remedy."""
    block, x = _conv_bn_relu(), torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        block(x)
        block.bn.weight.data.mul_(2.0)
        block.eval()
        torch.testing.assert_close(block(x), _unfolded(block, x))


def test_global_module_hooks_see_every_layer_run():
    """Hooks registered for every module (register_module_forward_hook: torch.utils.module_tracker,
    FlopCounterMode's per-module counts) see the layers run as torchvision's do: nothing is folded under them."""
    ref = _torchvision("resnet18").eval()
    ours = models.resnet18(weights=ref.state_dict()).eval()
    x = image("resnet18", batch=1)
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: calls.append(type(m).__name__))
    try:
        counts = []
        for model in (ref, ours):
            calls.clear()
            with torch.no_grad():
                model(x)
            counts.append(sorted(n for n in calls if n in ("Conv2d", "BatchNorm2d", "ReLU")))
    finally:
        handle.remove()
    assert counts[0] == counts[1] and "BatchNorm2d" in counts[0]
    assert _batch_norms_run(ours, x) == 0  # hook removed: folded again


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_folds_in_float32(dtype):
    """A bf16 / fp16 model's fold is computed in fp32 from its (rounded) parameters and rounded once, as
    BatchNorm itself computes in fp32 for those dtypes."""
    from classicnets_ext._fold import fold_conv_bn
    ref = _torchvision("resnet18").eval()
    conv, bn = ref.layer1[0].conv1, ref.layer1[0].bn1
    half = copy.deepcopy(conv).to(dtype), copy.deepcopy(bn).to(dtype)
    wide = copy.deepcopy(half[0]).float(), copy.deepcopy(half[1]).float()
    with torch.no_grad():
        (w, b), (w32, b32) = fold_conv_bn(*half), fold_conv_bn(*wide)
    assert w.dtype == b.dtype == dtype
    assert torch.equal(w, w32.to(dtype)) and torch.equal(b, b32.to(dtype))


def test_pickled_model_leaves_the_fold_cache_out():
    """torch.save(model) / deepcopy carry the parameters once: the cached folded copies stay behind, and the
    loaded model folds afresh to the same outputs."""
    import io
    model = build("resnet18").eval()
    x = image("resnet18", batch=1)
    with torch.no_grad():
        want = model(x)  # fills the caches
    whole, weights = io.BytesIO(), io.BytesIO()
    torch.save(model, whole)
    torch.save(model.state_dict(), weights)
    assert len(whole.getvalue()) < 1.1 * len(weights.getvalue())
    whole.seek(0)
    for copy_ in (torch.load(whole, weights_only=False), copy.deepcopy(model)):
        assert all(m._fold_cache is None for m in copy_.modules() if hasattr(m, "_fold_cache"))
        with torch.no_grad():
            assert torch.equal(copy_(x), want)


def test_converted_models_pickle_into_a_new_process(tmp_path):
    """torch.save of a convert()ed torchvision model names its blocks' classes (ours and torchvision's at once)
    by module and qualified name: a new process that imports only torch loads it and computes the same."""
    import subprocess
    import sys

    nets = [classicnets_ext.convert(_torchvision(name).eval()) for name in ("resnet18", "googlenet")]
    x = image("googlenet", batch=1)
    with torch.no_grad():
        torch.save((nets, x, [net(x) for net in nets]), tmp_path / "nets.pt")
    script = ("import sys, torch\n"
              "nets, x, want = torch.load(sys.argv[1], weights_only=False)\n"
              "with torch.no_grad():\n"
              "    for net, w in zip(nets, want):\n"
              # (this process's thread count may differ, and with it the convolutions' sums' order)
              "        torch.testing.assert_close(net(x), w, rtol=1e-4, atol=1e-5 * w.abs().max().item())\n"
              "print(*sorted({type(m).__qualname__ for net in nets for m in net.modules()"
              " if type(m).__qualname__.startswith('_torchvision')}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "nets.pt")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["_torchvision__googlenet__BasicConv2d", "_torchvision__googlenet__Inception",
                                  "_torchvision__resnet__BasicBlock"], out.stdout


def test_frozen_batchnorm_fine_tuning_gradients_match_torchvision():
    """Train mode with every BatchNorm in eval (fine-tuning with frozen statistics) folds too, computed afresh
    and differentiably: the gradients of the convolutions, the BatchNorms' affine parameters and the input
    equal torchvision's."""
    ref = _torchvision("resnet18").train()
    ours = models.resnet18(weights=ref.state_dict()).train()
    for m in (*ref.modules(), *ours.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = image("resnet18", batch=2)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    for model, xi in zip((ours, ref), xs):
        model(xi).square().sum().backward()
    assert _batch_norms_run(ours, x) == 0
    _assert_same(xs[0].grad, xs[1].grad, tol=1e-4)
    theirs = dict(ref.named_parameters())
    for key in ("conv1.weight", "bn1.weight", "bn1.bias", "layer3.0.downsample.1.weight", "layer4.1.conv2.weight"):
        _assert_same(dict(ours.named_parameters())[key].grad, theirs[key].grad, tol=1e-4)


def test_hooks_on_a_folded_layer_see_it_run():
    """A forward hook on a BatchNorm (a feature extractor's) runs and sees its output: the block runs unfolded."""
    ref = _torchvision("resnet18").eval()
    ours = models.resnet18(weights=ref.state_dict()).eval()
    seen = {}
    for tag, m in (("ours", ours), ("ref", ref)):
        m.layer2[1].bn1.register_forward_hook(lambda mod, args, out, tag=tag: seen.setdefault(tag, out.clone()))
        m.bn1.register_forward_hook(lambda mod, args, out: out * 0.5)
    x = image("resnet18", batch=1)
    with torch.no_grad():
        _assert_same(ours(x), ref(x))
    _assert_same(seen["ours"], seen["ref"])


@pytest.mark.parametrize("layer", ["layer1.0.bn2", "layer2.0.conv1", "layer2.0.downsample.1"])
def test_a_forward_set_on_a_folded_layers_instance_runs(layer):
    """A forward set on a layer's instance (accelerate's add_hook_to_module sets one; so does a hand patch) runs
    as in torchvision: the block does not fold past it (it once gave the unpatched answer in eval)."""
    ref = _torchvision("resnet18").eval()
    ours = models.resnet18(weights=ref.state_dict()).eval()
    for m in (ours, ref):
        inner = m.get_submodule(layer).forward
        m.get_submodule(layer).forward = lambda *args, inner=inner, **kwargs: inner(*args, **kwargs) * 2.0
    x = image("resnet18", batch=1)
    with torch.no_grad():
        _assert_same(ours(x), ref(x))


def _randomized_batchnorm(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


class _Doubled(torch.nn.Sequential):
    def forward(self, x):
        return 2 * super().forward(x)


class _OneConv(torch.nn.Module):  # not iterable: torchvision's VGG takes any module as its features
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 512, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("features", ["sequential subclass", "conv used twice", "not iterable"])
def test_vgg_takes_any_features_as_torchvision_does(features):
    """The zoo's VGG walked its features layer by layer in eval to fold conv -> BatchNorm: a Sequential
    subclass's own forward was skipped (half the answer), a conv used twice was folded with the second
    BatchNorm both times, and a module that cannot be iterated raised TypeError (train mode too)."""
    torchvision = pytest.importorskip("torchvision")
    from classicnets_ext.models.vgg import VGG

    torch.manual_seed(0)
    if features == "sequential subclass":
        layers = _Doubled(torch.nn.Conv2d(3, 512, 3, padding=1), torch.nn.BatchNorm2d(512), torch.nn.ReLU())
    elif features == "conv used twice":
        shared = torch.nn.Conv2d(64, 512, 3, padding=1)
        layers = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), shared,
                                     torch.nn.BatchNorm2d(512), torch.nn.ReLU(), torch.nn.Conv2d(512, 64, 1),
                                     shared, torch.nn.BatchNorm2d(512), torch.nn.ReLU())
    else:
        layers = _OneConv()
    _randomized_batchnorm(layers)
    theirs = torchvision.models.VGG(copy.deepcopy(layers), num_classes=10).eval()
    ours = VGG(copy.deepcopy(layers), num_classes=10)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for mode in (False, True):  # eval (folded where it folds), then train (dropout off: compare the features)
            theirs.train(mode)
            ours.train(mode)
            torch.testing.assert_close(ours.forward_features(x), theirs.features(x))


def test_resnet_blocks_run_their_layers_in_torchvisions_order():
    """The unfolded blocks (training, hooks) ran the projection first and summed out of place: hooks fired in
    another order than torchvision's, a hook keeping bn2's output saw other values (torchvision sums into
    it), and under autocast a block's output was fp32 in train and bf16 in eval."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    ours = models.resnet18(num_classes=10).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 64, 64)

    def hooked(model):
        order, kept = [], {}
        for name, m in model.layer2[0].named_modules():
            if name:
                m.register_forward_hook(lambda m, i, o, name=name: (order.append(name), kept.setdefault(name, o))
                                        and None)
        with torch.no_grad():
            model(x)
        return order, kept

    (order, kept), (their_order, their_kept) = hooked(ours), hooked(theirs)
    assert order == their_order
    torch.testing.assert_close(kept["bn2"], their_kept["bn2"])
    block = models.resnet18().layer1[0].train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(torch.randn(2, 64, 8, 8)).dtype == torch.bfloat16


def test_hooks_on_vgg_features_run_with_batchnorm_folded_or_not():
    """VGG's folded path walks ``features`` itself; a hook on the Sequential, or on a layer in it, still runs."""
    ref = _torchvision("vgg11_bn").eval()
    ours = models.vgg11_bn(weights=ref.state_dict()).eval()
    x = image("vgg11_bn", batch=1)
    for module in (ours.features, ours.features[1]):
        calls = []
        handle = module.register_forward_hook(lambda mod, args, out: calls.append(out.shape))
        with torch.no_grad():
            _assert_same(ours(x), ref(x))
        handle.remove()
        assert len(calls) == 1
    assert _batch_norms_run(ours, x) == 0  # no hooks left: folded again


# name -> BatchNorms a converted torchvision model still runs in eval mode: ResNet's stem (its ResNet class stays
# torchvision's; the blocks become ours).
CONVERTED_BATCH_NORMS = {"alexnet": 0, "googlenet": 0, "resnet18": 1, "resnet50": 1}


@pytest.mark.parametrize("name", list(CONVERTED_BATCH_NORMS))
def test_convert_keeps_torchvision_outputs(name):
    """convert() swaps in our pools, Inception blocks, ResNet blocks and BasicConv2d (which fold
    their BatchNorms in eval mode): the same outputs in eval mode, and in train mode the same outputs and
    gradients (BatchNorm on batch statistics, as torchvision's)."""
    ref = _torchvision(name).eval()
    converted = classicnets_ext.convert(copy.deepcopy(ref))
    assert not _plain_torch_layers(converted)
    kinds = {type(m) for m in converted.modules()}
    theirs = {k.__name__ for k in kinds if k.__module__.startswith("torchvision")}
    assert not {"BasicBlock", "Bottleneck", "BasicConv2d"} & theirs
    # Every module stays an instance of its torchvision class (the blocks too: code that finds a model's blocks
    # by class, to zero-init, freeze or group them, found none after convert()), and our blocks' are ours.
    for (label, before), after in zip(ref.named_modules(), converted.modules()):
        assert isinstance(after, type(before)), label
        if type(before).__name__ in ("BasicBlock", "Bottleneck", "BasicConv2d"):
            assert classicnets_ext.nn.ours_of(type(after)) in (models.resnet.BasicBlock, models.resnet.Bottleneck,
                                                      classicnets_ext._inception.ConvBNReLU), label
    x = image(name)
    with torch.no_grad():
        _assert_same(converted(x), ref(x))
    assert _batch_norms_run(converted, x) == CONVERTED_BATCH_NORMS[name]
    if not name.startswith("resnet"):
        return  # dropout: train-mode outputs are random (GoogLeNet's train mode: test_inception)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [m.train()(xi) for m, xi in zip((converted, ref), xs)]
    _assert_same(outs[0], outs[1])
    for out, xi in zip(outs, xs):
        out.square().sum().backward()
    _assert_same(xs[0].grad, xs[1].grad, tol=1e-4)


# ---------------------------------------------------------------------------------- our layers everywhere

PLAIN = (torch.nn.MaxPool2d, torch.nn.LocalResponseNorm)


def _plain_torch_layers(model: torch.nn.Module) -> list[str]:
    """Names of modules that are exactly torch's pool / LRN (ours subclass them), or torchvision's Inception."""
    return [n for n, m in model.named_modules()
            if type(m) in PLAIN or (type(m).__name__ == "Inception" and not isinstance(m, Inception))]


VARIANTS = [(n, {}) for n in TORCHVISION_NAMES + PAPER_NAMES] + [
    ("alexnet_paper", {"order": "paper"}), ("zfnet", {"order": "paper"}), ("lenet5", {"c3_table": True})]


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={w}" for k, w in v.items()))
def test_no_plain_torch_pool_or_lrn(name, kwargs):
    model = build_meta(name, **kwargs)
    assert not _plain_torch_layers(model)
    kinds = {type(m) for m in model.modules()}
    if name in ("alexnet_paper", "zfnet"):
        assert (MaxPoolLRN in kinds) == (kwargs.get("order", "lecture") == "lecture")
        assert LocalResponseNorm in kinds or MaxPoolLRN in kinds
    if name.startswith("googlenet"):
        assert Inception in kinds and MaxPool2d in kinds
    if name == "googlenet_paper":
        assert {MaxPoolLRN, LocalResponseNorm} <= kinds
        assert all(m.style == "paper" for m in model.modules() if isinstance(m, Inception))


# ------------------------------------------------------------------------------ the papers' documented sizes

def _sizes(model: torch.nn.Module, x: torch.Tensor, names) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape of each named submodule, from one eval forward."""
    found, hooks = {}, []
    modules = dict(model.named_modules())
    for name in names:
        hooks.append(modules[name].register_forward_hook(
            lambda mod, inp, out, name=name: found.__setitem__(name, tuple(out.shape[1:]))))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return found


@pytest.mark.parametrize("order", ["lecture", "paper"])
def test_alexnet_paper_sizes(order):
    model = build("alexnet_paper", order=order)
    pools = ("features.pool_norm1", "features.pool_norm2") if order == "lecture" else ("features.pool1",
                                                                                         "features.pool2")
    sizes = _sizes(model, image("alexnet_paper", batch=1),
                   ["features.conv1", pools[0], "features.conv2", pools[1], "features.conv5", "features.pool5"])
    assert sizes == {"features.conv1": (96, 55, 55), pools[0]: (96, 27, 27), "features.conv2": (256, 27, 27),
                     pools[1]: (256, 13, 13), "features.conv5": (256, 13, 13), "features.pool5": (256, 6, 6)}
    assert model.classifier[0].in_features == 9216  # 256 * 6 * 6, flattened row by row
    if order == "paper":  # ReLU -> NORM -> POOL: the LRN runs on the 55x55 map
        assert _sizes(model, image("alexnet_paper", batch=1), ["features.norm1"]) == {"features.norm1": (96, 55, 55)}


def test_alexnet_paper_orders_differ_only_in_order():
    """Both orders hold the same weights (the same state_dict keys). The lecture order normalises after
    pooling, so the outputs differ: LRN and max commute only where LRN is a constant scale (small activations
    against k = 2), so the input is at pixel scale (0-255 less the mean, as the paper's)."""
    lecture, paper = build("alexnet_paper"), build("alexnet_paper", order="paper")
    paper.load_state_dict(lecture.state_dict(), strict=True)
    x = 60 * image("alexnet_paper", batch=1)
    with torch.no_grad():
        a, b = lecture.eval()(x), paper.eval()(x)
        with classicnets_ext.use_backend("reference"):  # the fused op equals its unfused composite here
            _assert_same(a, lecture(x))
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


@pytest.mark.parametrize("paper_widths", [False, True])
def test_zfnet_figure3_sizes(paper_widths):
    model = build("zfnet", paper_widths=paper_widths)
    widths = (384, 384, 256) if paper_widths else (512, 1024, 512)
    names = ["features.conv1", "features.pool_norm1", "features.conv2", "features.pool_norm2", "features.conv3",
             "features.conv4", "features.conv5", "features.pool5"]
    sizes = _sizes(model, image("zfnet", batch=1), names)
    assert [s[1:] for s in sizes.values()] == [(110, 110), (55, 55), (26, 26), (13, 13), (13, 13), (13, 13),
                                                (13, 13), (6, 6)]  # 224 -> 110 -> 55 -> 26 -> 13 -> 6
    assert [sizes[f"features.conv{i}"][0] for i in (3, 4, 5)] == list(widths)
    assert model.classifier[0].in_features == widths[-1] * 36


@pytest.mark.parametrize("name", ["alexnet_paper", "zfnet"])
def test_paper_nets_drop_out_fc6_and_fc7_outputs_and_start_as_their_papers(name):
    """AlexNet Sec. 4.2 / ZFNet Sec. 3: dropout on the outputs of the first two FC layers (torchvision's alexnet
    drops their inputs); weights N(0, 0.01); biases 1 in conv2/4/5, FC6 and FC7 for AlexNet, all 0 for ZFNet."""
    model = build(name)
    assert [type(m).__name__ for m in model.classifier] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU",
                                                             "Dropout", "Linear"]
    model.train()
    features = torch.randn(1, model.classifier[0].in_features).abs() + 1
    fc6 = []
    model.classifier[0].register_forward_hook(lambda m, i, o: fc6.append(o.clone()))  # (before the in-place ReLU)
    model.classifier[3].register_forward_hook(lambda m, i, o: fc6.append(i[0].clone()))
    with torch.no_grad():
        model.classifier(features)
    assert torch.equal(model.classifier[0](features), fc6[0])  # FC6 saw every feature
    assert ((fc6[0] > 0) & (fc6[1] == 0)).any()  # and some of its positive outputs were dropped before FC7
    convs = {n: m for n, m in model.features.named_children() if isinstance(m, torch.nn.Conv2d)}
    linears = [model.classifier[i] for i in (0, 3, 6)]
    for m in (*convs.values(), *linears):
        assert abs(m.weight.std().item() - 0.01) < 1e-3 and abs(m.weight.mean().item()) < 1e-3
    ones = {"conv2", "conv4", "conv5"} if name == "alexnet_paper" else set()
    assert {n for n, m in convs.items() if bool((m.bias == 1).all())} == ones
    assert [bool((m.bias == 1).all()) for m in linears] == [name == "alexnet_paper"] * 2 + [False]
    assert all(bool((m.bias == 0).all()) for n, m in convs.items() if n not in ones)


# The papers' numbers, written out here and not read from the models' tables: (stride, padding, groups, 3x3/2
# pool after the ReLU, LRN, the pool's ceil_mode) per conv layer, and the LRN in torch's convention.
_ALEXNET_PAPER = ((4, 0, 1, True, True, False), (1, 2, 2, True, True, False), (1, 1, 1, False, False, False),
                  (1, 1, 2, False, False, False), (1, 1, 2, True, False, False))
_ZFNET = ((2, 1, 1, True, True, True), (2, 0, 1, True, True, True), (1, 1, 1, False, False, False),
          (1, 1, 1, False, False, False), (1, 1, 1, True, False, False))
_ALEXNET_LRN = (5, 5e-4, 0.75, 2.0)  # the paper's alpha 1e-4 times n: torch divides alpha by n
_GOOGLENET_LRN = (5, 1e-4, 0.75, 1.0)


def _classic_written_out(model, specs, x, order):
    """AlexNet / ZFNet in torch.nn.functional with ``model``'s weights (read by name), eval mode."""
    F = torch.nn.functional
    for i, (stride, padding, groups, pool, norm, ceil) in enumerate(specs, 1):
        conv = getattr(model.features, f"conv{i}")
        x = F.relu(F.conv2d(x, conv.weight, conv.bias, stride, padding, groups=groups))
        if norm and order == "paper":
            x = F.local_response_norm(x, *_ALEXNET_LRN)
        if pool:
            x = F.max_pool2d(x, 3, 2, ceil_mode=ceil)
        if norm and order == "lecture":
            x = F.local_response_norm(x, *_ALEXNET_LRN)
    fc6, fc7, fc8 = (model.classifier[i] for i in (0, 3, 6))
    x = F.relu(F.linear(x.flatten(1), fc6.weight, fc6.bias))
    return F.linear(F.relu(F.linear(x, fc7.weight, fc7.bias)), fc8.weight, fc8.bias)


def _googlenet_stem_written_out(model, x):
    F = torch.nn.functional
    x = F.relu(F.conv2d(x, model.conv1.weight, model.conv1.bias, 2, 3))
    x = F.local_response_norm(F.max_pool2d(x, 3, 2, ceil_mode=True), *_GOOGLENET_LRN)
    x = F.relu(F.conv2d(x, model.conv2.conv.weight, model.conv2.conv.bias))
    x = F.relu(F.conv2d(x, model.conv3.conv.weight, model.conv3.conv.bias, padding=1))
    return F.max_pool2d(F.local_response_norm(x, *_GOOGLENET_LRN), 3, 2, ceil_mode=True)


def _lenet_written_out(model, x):
    """LeCun 1998: f(a) = 1.7159 tanh(2a / 3) after every layer but the output; 2x2 average subsampling."""
    F = torch.nn.functional
    f = model.features

    def squash(a):
        return 1.7159 * torch.tanh(a * 2 / 3)

    c3 = f.c3.dense_weight() if hasattr(f.c3, "dense_weight") else f.c3.weight
    x = F.avg_pool2d(squash(F.conv2d(x, f.c1.weight, f.c1.bias)), 2)
    x = F.avg_pool2d(squash(F.conv2d(x, c3, f.c3.bias)), 2)
    x = squash(F.conv2d(x, f.c5.weight, f.c5.bias)).flatten(1)
    x = squash(F.linear(x, model.classifier.f6.weight, model.classifier.f6.bias))
    return F.linear(x, model.classifier.output.weight, model.classifier.output.bias)


@pytest.mark.parametrize("name, kwargs", [("alexnet_paper", {}), ("alexnet_paper", {"order": "paper"}),
                                          ("zfnet", {"paper_widths": True}), ("googlenet_paper", {}),
                                          ("lenet5", {}), ("lenet5", {"c3_table": True})])
def test_paper_nets_compute_their_papers_written_out(name, kwargs):
    """Each paper net against its layers written out with torch.nn.functional and the papers' constants (the
    other tests compare a model with itself on another backend, or check sizes and types, which a wrong LRN
    constant, a swapped stem order or a lost activation pass). fp64, inputs at pixel scale, so that LRN is far
    from a constant scale and its place in the order shows."""
    model = build(name, **kwargs).double().eval()
    x = image(name, batch=1).double()
    with torch.no_grad():
        if name == "lenet5":
            got, want = model(x), _lenet_written_out(model, x)
        elif name == "googlenet_paper":
            x = 60 * x
            got, want = model.forward_stem(x), _googlenet_stem_written_out(model, x)
        else:
            x = 60 * x
            specs = _ALEXNET_PAPER if name == "alexnet_paper" else _ZFNET
            got, want = model(x), _classic_written_out(model, specs, x, kwargs.get("order", "lecture"))
    torch.testing.assert_close(got, want)


def test_googlenet_paper_starts_with_caffes_xavier():
    """bvlc_googlenet's XavierFiller: uniform in +-sqrt(3 / fan_in) (not torch's xavier_uniform_, which divides
    by fan_in + fan_out); biases 0.2, 0 for the classifiers."""
    model = build("googlenet_paper")
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            bound = (3 / (m.weight[0].numel())) ** 0.5
            assert 0.95 * bound < m.weight.abs().max().item() <= bound, name
            assert bool((m.bias == (0.0 if name.endswith(("fc", "fc2")) else 0.2)).all()), name


def test_googlenet_paper_table1_sizes():
    model = build("googlenet_paper", aux_logits=False)
    table = {"conv1": (64, 112, 112), "pool_norm1": (64, 56, 56), "conv2": (64, 56, 56), "conv3": (192, 56, 56),
             "maxpool2": (192, 28, 28), "inception3a": (256, 28, 28), "inception3b": (480, 28, 28),
             "maxpool3": (480, 14, 14), "inception4a": (512, 14, 14), "inception4b": (512, 14, 14),
             "inception4c": (512, 14, 14), "inception4d": (528, 14, 14), "inception4e": (832, 14, 14),
             "maxpool4": (832, 7, 7), "inception5a": (832, 7, 7), "inception5b": (1024, 7, 7)}
    assert _sizes(model, image("googlenet_paper", batch=1), table) == table


def test_lenet5_sizes():
    model = build("lenet5", c3_table=True)
    table = {"features.c1": (6, 28, 28), "features.s2": (6, 14, 14), "features.c3": (16, 10, 10),
             "features.s4": (16, 5, 5), "features.c5": (120, 1, 1), "classifier.f6": (84,),
             "classifier.output": (10,)}
    assert _sizes(model, image("lenet5", batch=1), table) == table


def test_lenet5_c3_table_connections():
    """C3 map o sees exactly the S2 maps of Table I: the gradient of map o wrt an unconnected map is zero."""
    from classicnets_ext.models.lenet import C3_TABLE
    c3 = build("lenet5", c3_table=True).features.c3
    connected = (c3.dense_weight() != 0).flatten(2).any(-1)
    expected = torch.zeros(16, 6, dtype=torch.bool)
    for o, inputs in enumerate(C3_TABLE):
        expected[o, list(inputs)] = True
    assert torch.equal(connected, expected) and int(expected.sum()) == 60


# ------------------------------------------------------------------------------------------ weights files

def test_weights_from_file_roundtrip(tmp_path):
    src = build("lenet5").eval()
    path = tmp_path / "lenet5.pth"
    torch.save(src.state_dict(), path)
    x = image("lenet5")
    for weights in (path, str(path)):
        torch.testing.assert_close(models.lenet5(weights=weights).eval()(x), src(x), rtol=0, atol=0)
    # Wrapped checkpoints: a training script's dict, DistributedDataParallel's "module." prefix.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    torch.testing.assert_close(models.get_model("lenet5", weights=path).eval()(x), src(x), rtol=0, atol=0)


def test_weights_from_training_checkpoints_and_old_torchvision_files(tmp_path):
    """Checkpoints as training scripts write them -- flags as an argparse Namespace (torchvision's reference
    scripts), numpy RNG states -- load without running code from the file; an object that would run code is
    refused, naming it. Files from before BatchNorm counted its steps load as torch's strict load does
    (counters 0), and torch.compile's prefix over DDP's unwraps."""
    import argparse
    import numpy as np
    src = build("lenet5").eval()
    x = image("lenet5")
    path = tmp_path / "run.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(lr=0.1), "rng": np.random.get_state(),
                "best": np.float64(0.97)}, path)
    torch.testing.assert_close(models.lenet5(weights=path).eval()(x), src(x), rtol=0, atol=0)
    torch.save({"model": src.state_dict(), "hook": print}, path)
    with pytest.raises(ValueError, match=r"holds objects other than tensors and plain data \(builtins\.print\)"):
        models.lenet5(weights=path)
    wrapped = {f"_orig_mod.module.{k}": v for k, v in src.state_dict().items()}
    torch.testing.assert_close(models.lenet5(weights=wrapped).eval()(x), src(x), rtol=0, atol=0)
    old = {k: v for k, v in _torchvision("resnet18").state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = models.resnet18(weights=old)
    assert int(ours.bn1.num_batches_tracked) == 0
    assert models.load_weights(models.resnet18(), old).layer1[0].bn2.num_batches_tracked.item() == 0
    with pytest.raises(IsADirectoryError, match="is a directory"):
        models.lenet5(weights=tmp_path)


def test_weights_wrong_keys_and_shapes():
    state = build("lenet5").state_dict()
    renamed = {k.replace("c5.", "conv5."): v for k, v in state.items()}
    with pytest.raises(models.IncompatibleWeightsError,
                       match=r"2 missing keys: features\.c5\.weight, features\.c5\.bias; "
                             r"2 unexpected keys: features\.conv5\.weight, features\.conv5\.bias"):
        models.lenet5(weights=renamed)
    with pytest.raises(models.IncompatibleWeightsError,
                       match=r"shape mismatches: features\.c3\.weight \(checkpoint \[16, 6, 5, 5\], model \[60, 5, 5\]\)"):
        models.lenet5(weights=state, c3_table=True)
    with pytest.raises(RuntimeError, match=r"classifier\.output\.weight \(checkpoint \[10, 84\], model \[7, 84\]\)"):
        models.lenet5(weights=state, num_classes=7)


def test_weights_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes\.txt' is not a checkpoint saved with torch\.save"):
        models.lenet5(weights=text)
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(ValueError, match="expected a state_dict .* got list"):
        models.lenet5(weights=listed)
    odd = tmp_path / "odd.pth"
    torch.save({"lr": 0.1, "epoch": 3}, odd)
    with pytest.raises(ValueError, match="not a state_dict: 2 entries are not tensors"):
        models.lenet5(weights=odd)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.lenet5(weights=tmp_path / "missing.pth")
    hello = tmp_path / "hello.pth"  # read as pickle opcodes, its 'h' looks up memo 101: a KeyError before
    hello.write_text("hello world\n")
    with pytest.raises(ValueError, match="is not a checkpoint saved with torch.save"):
        models.lenet5(weights=hello)


def test_googlenet_weights_aux_heads():
    """As torchvision's builder: with weights, aux heads are loaded strictly and then dropped unless
    aux_logits=True; a checkpoint without aux heads cannot give a model with them."""
    with_aux = build("googlenet").state_dict()
    assert any(k.startswith("aux1.") for k in with_aux)
    plain = models.googlenet(weights=with_aux)
    assert plain.aux1 is None and not plain.aux_logits
    kept = models.googlenet(weights=with_aux, aux_logits=True)
    torch.testing.assert_close(kept.aux2.fc2.weight, with_aux["aux2.fc2.weight"], rtol=0, atol=0)
    no_aux = plain.state_dict()
    assert models.googlenet(weights=no_aux).aux1 is None
    with pytest.raises(models.IncompatibleWeightsError, match=r"missing keys: aux1\.conv\.conv\.weight"):
        models.googlenet(weights=no_aux, aux_logits=True)


# ------------------------------------------------------------------------ layouts, backends, compile, export

def _first_conv_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("name", ["alexnet_paper", "googlenet", "resnet18", "vgg11_bn", "lenet5"])
def test_models_are_built_channels_last(name):
    """The zoo's default layout: every 4-D weight channels-last, so an NCHW input runs channels-last from the
    first convolution on; memory_format=torch.contiguous_format gives torchvision's NCHW. Either layout, and a
    channels-last input, compute the same function; a state_dict moves between them."""
    cl = build(name).eval()
    nchw = build(name, memory_format=torch.contiguous_format).eval()
    cl_weights = [p for p in cl.parameters() if p.dim() == 4]
    assert cl_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in cl_weights)
    assert all(p.is_contiguous() for p in nchw.parameters())
    x = image(name)
    with torch.no_grad():
        assert _first_conv_output(cl, x).is_contiguous(memory_format=torch.channels_last)
        assert _first_conv_output(nchw, x).is_contiguous()
        want = nchw(x)
        _assert_same(cl(x), want)
        _assert_same(cl(x.contiguous(memory_format=torch.channels_last)), want)
        nchw.load_state_dict(cl.state_dict())
        assert all(p.is_contiguous() for p in nchw.parameters())  # loading copies values, keeps the layout


@pytest.mark.parametrize("name", ["alexnet_paper", "googlenet_paper"])
def test_reference_backend_matches(name):
    """The same model on stock torch layers (the bench's baseline) computes the same function."""
    model = build(name, aux_logits=False) if name == "googlenet_paper" else build(name)
    x = image(name, batch=1, side=64 if name == "googlenet_paper" else None)
    with torch.no_grad():
        ours = model.eval()(x)
        with classicnets_ext.use_backend("reference"):
            ref = model(x)
    _assert_same(ours, ref)


@pytest.mark.parametrize("name", ["alexnet_paper", "googlenet"])
def test_autocast_bfloat16_cpu(name):
    model = build(name).eval()
    x = image(name, batch=1)
    with torch.no_grad():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    # bf16 keeps 8 mantissa bits; errors add up over the layers: compare at a few % of the output's scale.
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05 * want.abs().max().item())


def test_autocast_bfloat16_cpu_compiles_fullgraph():
    """Inference under CPU autocast traces without graph breaks and computes what eager does (the classifier on
    our op, the weights rounded as they are read, in both)."""
    torch._dynamo.reset()
    model = build("alexnet_paper").eval()
    x = image("alexnet_paper", batch=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(x)
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.02, atol=0.02 * want.abs().max().item())


@pytest.mark.parametrize("name", ["alexnet_paper", pytest.param("googlenet", marks=slow)])  # googlenet: ~1 min
def test_compile_fullgraph_forward_backward(name):
    """torch.compile(fullgraph=True) traces forward and backward without graph breaks (aot_eager: dynamo's and
    AOTAutograd's tracing, which is where breaks happen, without Inductor's slow code generation)."""
    torch._dynamo.reset()
    model = build(name).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = image(name)
    outs = outputs(compiled(x))
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters())


@slow
@pytest.mark.parametrize("name", ["alexnet_paper", "googlenet_paper"])
def test_compile_inductor_matches_eager(name):
    torch._dynamo.reset()
    model = build(name, aux_logits=False) if name == "googlenet_paper" else build(name)
    model.eval()
    x = image(name, batch=1, side=64 if name == "googlenet_paper" else None)
    with torch.no_grad():
        _assert_same(torch.compile(model, fullgraph=True)(x), model(x))


def test_export_runs_and_matches():
    model = build("googlenet_paper", aux_logits=False).eval()
    x = image("googlenet_paper", batch=1, side=64)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        _assert_same(program.module()(x), model(x))


# ------------------------------------------------------------------------------------------------ GPU


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["alexnet_paper", "googlenet_paper", "googlenet", "resnet50"])
def test_cuda_autocast_channels_last(name, dtype):
    """On the GPU, channels_last, under autocast: ours (backend auto; BatchNorm folded in eval mode) against
    the same model on the reference backend (unfolded), inference and one training step."""
    model = build(name).cuda().to(memory_format=torch.channels_last)
    x = image(name, batch=4).cuda().contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        got = model.eval()(x)
        with classicnets_ext.use_backend("reference"):
            want = model(x)
    assert got.dtype == dtype and torch.isfinite(got).all()
    # Half precision over a whole network: a few % of the output's scale.
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05 * want.abs().max().item())
    with torch.autocast("cuda", dtype=dtype):
        outs = outputs(model.train()(x))
    sum(o.float().sum() for o in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name,nodes", [
    ("resnet18", ["maxpool", "layer2", "layer4.1.relu_1"]), ("googlenet", ["maxpool1", "inception3b", "inception4e"]),
    ("alexnet", ["features.2", "features.5", "classifier.1"]), ("vgg11_bn", ["features.3", "features.10"])])
def test_fx_feature_extraction_as_torchvision(name, nodes):
    """torch.fx.symbolic_trace and torchvision's create_feature_extractor failed on every zoo model (our layers are
    not torch.nn leaf modules, so fx traced into their argument checks and the fold's tests of the input). Our
    ops record one node each and folded blocks trace their torchvision layers: the features equal
    torchvision's, by torchvision's module names."""
    tvm = pytest.importorskip("torchvision.models")
    from torchvision.models.feature_extraction import create_feature_extractor

    theirs = getattr(tvm, name)().eval()
    ours = build(name).eval()
    ours.load_state_dict(theirs.state_dict())
    x = image(name, batch=1)
    with torch.no_grad():
        _assert_same(torch.fx.symbolic_trace(ours)(x), theirs(x))
        got = create_feature_extractor(ours, {n: n for n in nodes})(x)
        want = create_feature_extractor(theirs, {n: n for n in nodes})(x)
    for n in nodes:
        _assert_same(got[n], want[n])


@pytest.mark.parametrize("name", ["lenet5", "alexnet_paper", "googlenet_paper"])
def test_fx_symbolic_trace_of_paper_nets(name):
    """The paper nets under torch.fx.symbolic_trace: MaxPoolLRN (alexnet_paper, googlenet_paper's stem) tested
    its input's rank, which a Proxy cannot answer; it records one node."""
    model = build(name).eval()
    x = image(name, batch=1)
    with torch.no_grad():
        _assert_same(torch.fx.symbolic_trace(model)(x), model(x))
