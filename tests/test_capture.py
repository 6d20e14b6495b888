"""Graph capture: a graph recorded by ``torch.jit.trace`` or ``torch.export`` runs correctly in either grad
mode, whichever mode it was recorded in (max-pool's "save the argmax?" is decided in Python and would be frozen
into the graph); ``torch.jit.script`` says it is unsupported."""
import warnings

import pytest
import torch

import classicnets_ext
from classicnets_ext import nn as cnn

torchvision = pytest.importorskip("torchvision")  # a test dependency (the Makefile's venv installs it)


def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), cnn.MaxPool2d(2), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3),
                               cnn.MaxPoolLRN(3, 2, size=3, relu=True), torch.nn.Flatten(),
                               torch.nn.Linear(6 * 3 * 3, 4))


def _grads(model, run, x):
    model.zero_grad()
    run(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


def _trace(model, x):
    """torch.jit.trace with its check (it re-traces under no_grad and compares the graphs), which fails with
    "Graphs differed across invocations" when grad mode changes what the graph does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice, and shape checks recorded as constants
        return torch.jit.trace(model, x, check_trace=True)


def _assert_runs_like_eager(model, run, x):
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x))
    for got, want in zip(_grads(model, run, x), _grads(model, model, x)):
        torch.testing.assert_close(got, want)


def test_jit_trace_checks_and_trains():
    model, x = _small_net(), torch.randn(2, 3, 20, 20)
    _assert_runs_like_eager(model, _trace(model, x), x)
    with torch.no_grad():  # recorded without grad, then trained
        traced = _trace(model, x)
    _assert_runs_like_eager(model, traced, x)


def test_jit_trace_of_a_converted_torchvision_alexnet():
    torch.manual_seed(0)
    model = classicnets_ext.convert(torchvision.models.alexnet(num_classes=10)).eval()  # (no dropout)
    assert any(isinstance(m, cnn.MaxPool2d) for m in model.modules())
    x = torch.randn(1, 3, 63, 63)  # the smallest size its three pools leave 1 x 1 of (its avgpool pads to 6 x 6)
    traced = _trace(model, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
    traced(x).sum().backward()
    assert model.features[0].weight.grad is not None and model.features[0].weight.grad.abs().sum() > 0


def test_export_under_no_grad_then_train():
    model, x = _small_net(), torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
    _assert_runs_like_eager(model, program.module(), x)


def _cifar_resnet18() -> torch.nn.Module:
    """The usual CIFAR recipe: torchvision's resnet18 without its stem max-pool, so that convert() swaps in only
    the zoo's folding blocks (none of the nn layers)."""
    model = torchvision.models.resnet18()
    model.maxpool = torch.nn.Identity()
    return classicnets_ext.convert(model)


@pytest.mark.parametrize("make, where", [
    (lambda: cnn.MaxPool2d(2), "classicnets_ext.nn.MaxPool2d"),
    (lambda: cnn.LocalResponseNorm(3), "classicnets_ext.nn.LocalResponseNorm"),
    (lambda: cnn.MaxPoolLRN(3, 2), "classicnets_ext.nn.MaxPoolLRN"),
    (_small_net, "classicnets_ext.nn."),
    (lambda: classicnets_ext.convert(torchvision.models.googlenet(init_weights=False, aux_logits=False)),
     "classicnets_ext."),
    # only the zoo's BatchNorm-folding blocks: scripting failed deep in resnet.py or torch.fx
    (_cifar_resnet18, "classicnets_ext.models.resnet."),
    (lambda: classicnets_ext.models.vgg11_bn(num_classes=10, pool_layer=torch.nn.MaxPool2d),
     "classicnets_ext.models.vgg.VGG"),
    (lambda: classicnets_ext.convert(torchvision.models.googlenet(init_weights=False, aux_logits=False)).conv1,
     "classicnets_ext._inception.ConvBNReLU"),
], ids=["MaxPool2d", "LocalResponseNorm", "MaxPoolLRN", "net", "googlenet", "cifar_resnet18", "vgg", "ConvBNReLU"])
def test_torchscript_script_says_it_is_unsupported(make, where):
    module = make()
    with warnings.catch_warnings(), pytest.raises(RuntimeError) as error:
        warnings.simplefilter("ignore")  # its deprecation notice
        torch.jit.script(module)
    message = str(error.value)
    assert message.startswith("torch.jit.script does not support " + where), message
    assert "torch.jit.trace, torch.compile or torch.export" in message, message


def test_traced_submodules_run_inside_folding_blocks():
    """A module straight from torch.jit.trace keeps its submodules and hooks outside ``__dict__``: the blocks'
    check for hooked submodules raised KeyError '_modules' on every forward. Such a module runs compiled code,
    so the block runs its submodules one by one, as with hooks, and computes what it did."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 9, 9)
    block = cnn.Inception(8, 4, 4, 4, 2, 2, 2).eval()
    with torch.no_grad():
        want = block(x)
        block.branch4 = torch.jit.trace(block.branch4, x)
        torch.testing.assert_close(block(x), want)
    net = classicnets_ext.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = net(x)
        net.layer1[0].relu = torch.jit.trace(net.layer1[0].relu, torch.randn(1, 64, 8, 8))
        torch.testing.assert_close(net(x), want)


def test_only_export_counts_as_capturing_under_dynamo():
    """torch.compile guards on grad mode, so its graphs decide as eager does; torch.export's are replayed in
    either mode, so they capture. torch 2.11's Dynamo folds torch.compiler.is_exporting() to True under any
    torch.compile: every compiled max-pool saved its argmax in inference, and linear ran F.linear."""
    from classicnets_ext import ops

    def f(x):
        return x + 1 if ops._capturing() else x - 1

    class M(torch.nn.Module):
        def forward(self, x):
            return f(x)

    x = torch.zeros(2)
    torch._dynamo.reset()
    assert torch.compile(f, backend="eager", fullgraph=True)(x).tolist() == [-1, -1]
    assert torch.export.export(M(), (x,)).module()(x).tolist() == [1, 1]
    assert f(x).tolist() == [-1, -1]
