"""``summary(model)`` and ``compare(models)``: a network's layers, parameters, MACs, activation memory,
receptive fields and depth, from one forward pass.

The pass runs under three observers:

* forward hooks on every module: a module that runs no submodule of its own is a *leaf layer* and gets a row
  (so our fused Inception block, which runs one op instead of its branch convolutions, is one row holding all
  its parameters -- under ``hooks_only_watch``, as a block whose submodules have hooks otherwise calls them);
* PyTorch's ``FlopCounterMode`` for the cost of aten's ops (convolutions, matrix products), while our layers
  -- and torch's max-pool and LRN -- are costed by ``formulas``, whichever backend ran them (on the meta
  device every op runs as its reference composite, which FlopCounterMode would price differently);
* a ``TorchFunctionMode`` (``_Tracker``) that carries each tensor's :class:`~.geometry.Geometry` (receptive
  field, jump, depth) through every torch function -- residual adds, concatenations, flattens -- and takes the
  largest path where paths join; functional convolutions and pools (``F.conv2d``, ``F.max_pool2d``, ...) map it
  as their modules do.

Registry names are built of fake tensors (``build_for_inference``): no weights are allocated and the pass
costs no arithmetic, so even ResNet-152 is summarised in about a second. Models are analysed as built for
inference: eval mode (restored afterwards) and, for registry names, the aux heads dropped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import operator
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from .. import models
from .._inception import Inception, hooks_only_watch
from ..models.lenet import TableConv2d
from ..nn import MaxPoolLRN
from . import formulas
from .geometry import Geometry, join, layer_geometry, on_grid, op_geometry

DEFAULT_INPUT_SIZE = (1, 3, 224, 224)


@dataclass
class LayerRow:
    """One leaf layer's call. ``receptive_field`` and ``jump`` are None where the output has no spatial extent
    (fully connected layers and what follows them), floats where not whole (a jump of 0.5 after a stride-2
    transposed convolution), ints otherwise; ``activation_bytes`` counts only newly written outputs (an
    in-place ReLU, an eval-mode dropout write nothing)."""
    name: str
    type: str
    output_shape: list[int]
    params: int
    macs: int
    activation_bytes: int
    receptive_field: int | float | None
    jump: int | float | None


@dataclass
class ModelSummary:
    """Rows (``layers``) and totals. ``total_macs`` is the rows' sum plus any aten cost outside leaf layers;
    ``param_bytes`` counts parameters (not buffers); ``depth`` is conv + FC layers on the longest path."""
    input_size: list[int]
    layers: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0
    activation_bytes: int = 0
    param_bytes: int = 0
    depth: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ModelComparison:
    """One model in :func:`compare`: its totals at batch 1."""
    name: str
    params: int
    macs: int
    depth: int
    activation_bytes: int


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


class _Tracker(TorchFunctionMode):
    """Carries a :class:`Geometry` per tensor through every torch function: an op's outputs get the join of its
    inputs' geometries (tensors it has not seen, such as weights, do not count), mapped by the op when it is a
    functional convolution or pool (``op_geometry``). Leaf layers of a known kind then overwrite their outputs'
    geometry with their own effect, computed from their input's (``_Summarizer``): a conv module, whose forward
    calls ``F.conv2d``, counts once. Tensors are kept alive while tracked so that their ids are not reused.

    A mode sees only the outermost call: the torch functions that ``F.max_pool2d`` or a module's op calls in
    turn run with the mode off, so no op is mapped twice."""

    def __init__(self) -> None:
        super().__init__()
        self._geometry: dict[int, tuple[torch.Tensor, Geometry]] = {}

    def get(self, tree, output_shape=None) -> Geometry | None:
        """The join of the tracked tensors' geometries in ``tree``; with ``output_shape``, the jump of those on
        the output's grid (not broadcast over it)."""
        seen = [t for t in _tensors(tree) if id(t) in self._geometry]
        grid = None if output_shape is None else [on_grid(t.shape, output_shape) for t in seen]
        return join((self._geometry[id(t)][1] for t in seen), grid)

    def set(self, tree, geometry: Geometry) -> None:
        for t in _tensors(tree):
            self._geometry[id(t)] = (t, geometry)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = _tensors(out)
        output_shape = list(outputs[0].shape) if outputs else []
        geometry = self.get((args, kwargs), output_shape)
        if geometry is not None:
            self.set(out, op_geometry(func, geometry, args, kwargs, output_shape))
        return out


def _number(value):
    """A field or jump for the rows: an int where whole, else a float (a Fraction does not go into JSON)."""
    return float(value) if isinstance(value, Fraction) else value


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # tensors without storage (some subclasses)
        return id(t)


def _formula_macs(module: nn.Module, input_shape, output_shape) -> int | None:
    """Our formulas for the layers we have ops for (torch's own max-pool and LRN included), else None."""
    if isinstance(module, Inception) and input_shape is not None:
        heads = (module.branch1.conv, module.branch2[0].conv, module.branch3[0].conv)
        weight_1x1 = (sum(c.out_channels for c in heads), heads[0].in_channels, 1, 1)
        return formulas.inception_macs(input_shape, weight_1x1, module.branch2[1].conv.weight.shape,
                                       module.branch3[1].conv.weight.shape, module.branch4[1].conv.weight.shape)
    if isinstance(module, TableConv2d):
        return formulas.table_conv2d_macs(output_shape, len(module.index), module.kernel_size)
    if isinstance(module, MaxPoolLRN):
        return formulas.max_pool2d_lrn_macs(output_shape, module.kernel_size, module.size)
    if isinstance(module, nn.MaxPool2d):
        return formulas.max_pool2d_macs(output_shape, module.kernel_size)
    if isinstance(module, nn.LocalResponseNorm):
        return formulas.lrn_macs(output_shape, module.size)
    return None


class _Summarizer:
    """The hooks: a stack of module calls; a call during which no other module ran becomes a row."""

    def __init__(self, model: nn.Module, counter: FlopCounterMode, tracker: _Tracker) -> None:
        self.names = {m: name or "(model)" for name, m in model.named_modules()}
        self.counter, self.tracker = counter, tracker
        self.stack: list[dict] = []
        self.rows: list[LayerRow] = []
        self.row_flops = 0  # FlopCounterMode's count inside rows (replaced by the rows' MACs in the total)
        self.seen_params: set[int] = set()

    def pre(self, module, args, kwargs):
        if self.stack:
            self.stack[-1]["ran_child"] = True
        self.stack.append(dict(flops=self.counter.get_total_flops(), ran_child=False,
                               inputs=_tensors((args, kwargs)), geometry=self.tracker.get((args, kwargs))))

    def post(self, module, args, kwargs, output):
        frame = self.stack.pop()
        if frame["ran_child"]:
            return
        flops = self.counter.get_total_flops() - frame["flops"]
        self.row_flops += flops
        outputs = _tensors(output)
        inputs = frame["inputs"]
        input_shape = list(inputs[0].shape) if inputs else None
        output_shape = list(outputs[0].shape) if outputs else []
        macs = _formula_macs(module, input_shape, output_shape)
        params = 0
        for p in module.parameters():
            if id(p) not in self.seen_params:
                self.seen_params.add(id(p))
                params += p.numel()
        written = {_storage(t) for t in inputs}
        activation = sum(t.numel() * t.element_size() for t in outputs if _storage(t) not in written)
        before = frame["geometry"] or Geometry()
        geometry = layer_geometry(module, before, input_shape or [], output_shape)
        if geometry is None:  # no kind of its own (ReLU, BatchNorm, a custom layer): what its ops made of it
            geometry = self.tracker.get(output) or before
        self.tracker.set(output, geometry)
        spatial = len(output_shape) >= 3 and not isinstance(module, nn.Linear)
        self.rows.append(LayerRow(self.names.get(module, type(module).__name__), type(module).__name__,
                                  output_shape, params, flops // 2 if macs is None else macs, activation,
                                  _number(geometry.receptive_field) if spatial else None,
                                  _number(geometry.jump) if spatial else None))


def _placement(model: nn.Module):
    """(device, context) to run ``model`` in: its first parameter's or buffer's device (CPU without any) and,
    for a model of fake tensors, their FakeTensorMode (so the input and any tensor made inside are fake)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device, (_quiet_fake(t.fake_mode) if isinstance(t, FakeTensor) else contextlib.nullcontext())
    return torch.device("cpu"), contextlib.nullcontext()


@contextlib.contextmanager
def _quiet_fake(mode: FakeTensorMode):
    """``mode``, with its logger muted: fake tensors log a traceback for every shape error before raising it
    (a model given too small an input), and the exception says it all."""
    logger = logging.getLogger(FakeTensor.__module__)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with mode:
            yield
    finally:
        logger.setLevel(level)


def build_for_inference(name: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, tuple[int, int, int]]:
    """The registry model ``name`` in eval mode without aux heads, made of fake tensors (floating-point ones of
    ``dtype``), and its natural (C, H, W) input size. An unknown name raises ValueError (listing the close
    matches).

    Fake tensors (``FakeTensorMode``) carry shapes and a device but no data: building and running the model
    allocates nothing and computes nothing. Unlike the meta device they keep the CPU device, so our layers
    dispatch to our ops (and their fake kernels) as they would on real CPU tensors."""
    entry = models.get_model_entry(name)
    with torch.device("meta"):  # (fake tensors cannot run every initialiser: trunc_normal_ reads values)
        model = entry.builder()
    with FakeTensorMode():
        model._apply(lambda t: torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype,
                                           device="cpu"))  # to_empty, meta -> fake
    if hasattr(model, "drop_aux"):
        model.drop_aux()
    return model.eval(), entry.input_size


def summary(model: nn.Module | str, input_size=None, *, dtype: torch.dtype = torch.float32) -> ModelSummary:
    """Summarise ``model`` (a module, or a registry name built of fake tensors) for an input of
    ``input_size`` (N, C, H, W): default (1, 3, 224, 224), or (1, *natural size) for a registry name.

    The forward runs once, in eval mode (the mode is restored), on the model's device (that of its first
    parameter or buffer; CPU without any) with a zero input of ``dtype`` (a registry name is built in it; a
    module is taken as it is). Returns a :class:`ModelSummary`:
    a :class:`LayerRow` per leaf-layer call and the totals.

    Fake tensors (see :func:`build_for_inference`) cost nothing; so does the meta device, where our layers run
    as their reference composites -- except our Inception block, whose op does not take meta tensors.
    """
    if isinstance(model, str):
        model, natural = build_for_inference(model, dtype)
        input_size = input_size or (1, *natural)
    try:
        if isinstance(input_size, str):
            raise TypeError
        input_size = [operator.index(s) for s in (input_size or DEFAULT_INPUT_SIZE)]
    except TypeError:
        raise TypeError(f"summary: `input_size` must be a sequence of ints (N, C, H, W), got {input_size!r}") from None
    if any(abs(s) >= 2 ** 63 for s in input_size):  # (torch.zeros: a TypeError about unpacking a long)
        raise ValueError(f"summary: `input_size` {input_size} has a size beyond a tensor dimension's 2^63 - 1")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    counter, tracker = FlopCounterMode(display=False), _Tracker()
    summarizer = _Summarizer(model, counter, tracker)
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(summarizer.pre, with_kwargs=True))
        handles.append(m.register_forward_hook(summarizer.post, with_kwargs=True))
    try:
        device, fake = _placement(model)
        # The hooks watch: blocks run fused, as without them (one row per Inception block).
        with torch.no_grad(), fake, counter, tracker, hooks_only_watch():
            x = torch.zeros(input_size, dtype=dtype, device=device)
            tracker.set(x, Geometry())
            out = model(x)
            final = tracker.get(out)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    rows = summarizer.rows
    outside = max(0, counter.get_total_flops() - summarizer.row_flops) // 2
    params = list(model.parameters())
    return ModelSummary(
        input_size=input_size, layers=rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_macs=sum(r.macs for r in rows) + outside,
        activation_bytes=sum(r.activation_bytes for r in rows),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        depth=final.depth if final is not None else 0,
    )


def compare(names: list[str], *, dtype: torch.dtype = torch.float32) -> list[ModelComparison]:
    """A :class:`ModelComparison` per registry name, each at batch 1 and its natural input size."""
    out = []
    for name in names:
        s = summary(name, dtype=dtype)
        out.append(ModelComparison(name, s.total_params, s.total_macs, s.depth, s.activation_bytes))
    return out
