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


def test_torchscript_script_says_it_is_unsupported():
    for module in (cnn.MaxPool2d(2), cnn.LocalResponseNorm(3), cnn.MaxPoolLRN(3, 2), _small_net(),
                   classicnets_ext.convert(torchvision.models.googlenet(init_weights=False, aux_logits=False))):
        with warnings.catch_warnings(), pytest.raises(RuntimeError) as error:
            warnings.simplefilter("ignore")  # its deprecation notice
            torch.jit.script(module)
        message = str(error.value)
        assert message.startswith("torch.jit.script does not support classicnets_ext.nn."), message
        assert "torch.jit.trace, torch.compile or torch.export" in message, message
