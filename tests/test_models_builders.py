"""The model builders' contract beyond the networks themselves (test_models.py): where ``weights=`` puts the
model, which keywords a builder refuses, ``list_models`` filters, meta-device initialisation of LeNet's
connection table, the paper GoogLeNet's aux heads as separate modules, and ``torch.jit.trace`` of GoogLeNet.
Structural checks build on the meta device; the runs are small."""
from __future__ import annotations

import warnings

import pytest
import torch

from classicnets_ext import models

pytestmark = pytest.mark.usefixtures("one_thread")


def _devices(model: torch.nn.Module) -> set[str]:
    return {t.device.type for t in (*model.parameters(), *model.buffers())}


@pytest.mark.parametrize("kwargs", [{}, {"c3_table": True}], ids=["plain", "c3_table"])
def test_weights_follow_the_default_device(kwargs):
    """As torchvision's builders (build, then load_state_dict): the model is on the default device in effect at
    the call, with weights as without them -- under ``with torch.device("meta")`` the meta device, not the
    CPU. (c3_table: a non-persistent buffer, which build_model builds the ordinary way.)"""
    torch.manual_seed(0)
    src = models.lenet5(**kwargs)
    with torch.device("meta"):
        without = models.lenet5(**kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's: copying into a meta tensor is a no-op
            loaded = models.lenet5(weights=src.state_dict(), **kwargs)
    assert _devices(without) == {"meta"}
    assert _devices(loaded) == {"meta"}
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in src.state_dict().items()}
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(models.lenet5(weights=src.state_dict(), **kwargs)(x), src(x), rtol=0, atol=0)


@pytest.mark.parametrize("groups", [1, 2])
def test_zfnet_refuses_groups(groups):
    """ZFNet ran on one GPU: no row of its table is split, so groups= would be taken and change nothing."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'groups'"):
        models.zfnet(groups=groups)


def test_zfnet_orders():
    """The zfnet docstring's account: "lecture" (default) is Fig. 3's conv -> ReLU -> pool -> LRN, fused;
    "paper" is AlexNet's ReLU -> LRN -> pool."""
    def stem(order):
        with torch.device("meta"):
            names = list(dict(models.zfnet(order=order).features.named_children()))
        return names[:names.index("conv3")]
    assert stem("lecture") == ["conv1", "pool_norm1", "conv2", "pool_norm2"]
    assert stem("paper") == ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2"]


def test_list_models_empty_filters_filter_nothing():
    """torchvision tests include and exclude for truth: an empty list or string keeps every model."""
    everything = models.list_models()
    assert len(everything) == 19
    for empty in ([], "", ()):
        assert models.list_models(include=empty) == everything
        assert models.list_models(exclude=empty) == everything
    assert models.list_models(include="", exclude="vgg*") == [n for n in everything if not n.startswith("vgg")]


def test_lenet5_c3_table_from_the_meta_device():
    """Meta-device init (to_empty, then load_state_dict) runs the source model's function: the connection
    index, which no checkpoint holds, is derived again from Table I (it was uninitialised memory)."""
    from classicnets_ext.models.lenet import C3_TABLE
    torch.manual_seed(0)
    src = models.lenet5(c3_table=True).eval()
    with torch.device("meta"):
        model = models.lenet5(c3_table=True)
    model.to_empty(device="cpu").load_state_dict(src.state_dict())
    model.eval()
    assert "features.c3.index" not in src.state_dict()  # checkpoints stay as they were
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)
    connected = (model.features.c3.dense_weight() != 0).flatten(2).any(-1)
    assert [tuple(torch.nonzero(row).flatten().tolist()) for row in connected] == [tuple(sorted(t)) for t in C3_TABLE]


def test_googlenet_paper_aux_heads_pool_apart():
    """Each aux head has its own 5x5/3 pool: both are listed, and a hook on one fires for its head only."""
    with torch.device("meta"):
        model = models.googlenet_paper().train()
    assert model.aux1.pool is not model.aux2.pool
    names = dict(model.named_modules())
    assert isinstance(names.get("aux1.pool"), torch.nn.AvgPool2d)
    assert isinstance(names.get("aux2.pool"), torch.nn.AvgPool2d)
    calls = []
    model.aux1.pool.register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    model(torch.empty(1, 3, 224, 224, device="meta"))
    assert calls == [(1, 512, 4, 4)]


@pytest.mark.parametrize("name,side", [("googlenet", 32), ("googlenet_paper", 64)])
def test_jit_trace_of_googlenet_warns_nothing(name, side):
    """torchvision's googlenet traces without a TracerWarning, and so do ours (the Inception block's and op's
    size checks read untraced sizes); the trace runs another batch size as eager does."""
    torch.manual_seed(0)
    model = models.get_model(name, aux_logits=False).eval()
    with torch.no_grad():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = torch.jit.trace(model, torch.randn(1, 3, side, side))
        tracer = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        assert not tracer, tracer[:3]
        x = torch.randn(3, 3, side, side)
        torch.testing.assert_close(traced(x), model(x))


def test_weights_by_position_are_loaded():
    """torchvision's legacy form, ``lenet5(state_dict)``: the weights are loaded (with its deprecation
    warning), not dropped for a freshly initialised model."""
    torch.manual_seed(0)
    src = models.lenet5()
    torch.manual_seed(1)  # another init: a builder that ignored the weights would differ
    with pytest.warns(UserWarning, match="by position are deprecated"):
        loaded = models.lenet5(src.state_dict())
    assert loaded.state_dict().keys() == src.state_dict().keys()
    for key, value in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.warns(UserWarning, match="by position are deprecated"):
        also = models.lenet5(src.state_dict(), False)  # weights, progress
    assert torch.equal(also.features.c1.weight, src.features.c1.weight)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_weights_nested_in_a_training_checkpoint_are_loaded(key, tmp_path):
    """A training script's checkpoint dict, ``{"epoch": 3, key: state_dict}``, loads as its state_dict, as a
    mapping and as a torch.save file."""
    torch.manual_seed(0)
    src = models.lenet5()
    checkpoint = {"epoch": 3, key: src.state_dict()}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    torch.manual_seed(1)
    for weights in (checkpoint, str(tmp_path / "ckpt.pt")):
        loaded = models.lenet5(weights=weights)
        for name, value in src.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), (type(weights), name)
