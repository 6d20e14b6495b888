"""The machinery behind each op's autograd: the Autograd and functorch kernels that apply an op's
``autograd.Function`` (``_register``), the eager calls past the dispatcher (``call``, ``_DIRECT``), the queries
that tell whether anything watches a call, and the folding of a vmapped dimension into the batch. The ops'
Functions and vmap rules are in this package's other modules, one per op."""
from __future__ import annotations

import warnings

import torch
import torch.autograd.forward_ad as _fwad
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter
from torch._subclasses.functional_tensor import FunctorchFunctionalizeAPI

_LIB = torch.library.Library("classicnets_ext", "IMPL")  # kept alive: the registrations below live in it


def _op(name: str):
    return getattr(torch.ops.classicnets_ext, name).default


# Each op's kernel reached from Python without dispatching the op, by op overload and packet: the C++ ops'
# direct entries in _C (csrc/module.cpp) and the Triton ops' launchers (triton_kernels/_launch.py: direct).
# An entry runs the op's CPU/CUDA kernel, or returns None where the dispatcher would run anything else (a
# mode, a tensor subclass, a functorch wrapper, the profiler...); _below_autograd then dispatches the op.
_DIRECT: dict = {}


def register_direct(name: str, entry) -> None:
    """Lets calls of classicnets_ext::<name> below autograd run ``entry`` (see ``_DIRECT``) past the dispatcher."""
    packet = getattr(torch.ops.classicnets_ext, name)
    _DIRECT[packet] = _DIRECT[packet.default] = entry


# torch.jit.is_tracing less its is_scripting test (scripting our ops is refused anyway): a third of _watched's cost.
_is_tracing = torch._C._is_tracing


def exporting() -> bool:
    """Whether torch.export is tracing: the flag torch.export sets around its trace, which Dynamo reads as a
    guarded global. (``torch.compiler.is_exporting()`` says the same in eager code and under torch 2.14's
    Dynamo, but torch 2.11's Dynamo folds it to True under any torch.compile: a compiled model then saved
    max-pool's argmax in inference and ran F.linear for our linear op.)"""
    return torch.compiler._is_exporting_flag


def _watched() -> bool:
    """Whether torch.compile, a jit trace or a torch.func transform can see this call."""
    return torch.compiler.is_compiling() or _is_tracing() or torch._C._are_functorch_transforms_active()


def _batched(t: torch.Tensor) -> bool:
    """Whether ``t`` wraps other tensors and has no layout to ask about (a channels-last query raises): a
    functorch wrapper (torch.func's grad, vmap...), or the legacy BatchedTensor that
    ``autograd.grad(..., is_grads_batched=True)`` runs the backward on."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t) or torch._C._functorch.is_legacy_batchedtensor(t)


def _plain_tensor(t: torch.Tensor) -> bool:
    """A dense CPU or CUDA tensor of torch's own class: no subclass (fake, functional, DTensor...), no
    functorch wrapper (grad, vmap, functionalize: type Tensor, even where no transform is active any more --
    inside a Function's forward) or legacy BatchedTensor (is_grads_batched), not sparse, nested or meta."""
    return (type(t) is torch.Tensor and not _batched(t)
            and t.layout == torch.strided and (t.is_cuda or t.is_cpu) and not t.is_nested)


def plain_only(launcher):
    """A Python launcher as a ``_DIRECT`` entry: run only where nothing but the op's own kernel would see the
    call -- no mode on the dispatch stack (fake tensors, make_fx and export tracing, FLOP counters...), no
    profiler recording (its op events come from the dispatcher) and only plain tensors among the arguments.
    (The C++ entries check the same in the dispatcher's own terms.)"""
    def entry(*args):
        if (torch._C._len_torch_dispatch_stack() == 0 and not torch._C._autograd._profiler_enabled()
                and all(_plain_tensor(a) for a in args if isinstance(a, torch.Tensor))):
            return launcher(*args)
        return None

    return entry


def _below_autograd(op, *args, watched: bool | None = None):
    """``op(*args)`` below the Autograd key: through its ``_DIRECT`` entry where nothing can watch the call
    (torch.compile, a jit trace, a torch.func transform; ``watched``: _watched(), when the caller already
    knows it) and nothing overrides it (__torch_function__ of a subclass or a mode, a ``torch.device``
    context included); else, or when the entry declines, through the dispatcher."""
    direct = _DIRECT.get(op)
    if (direct is not None and not (_watched() if watched is None else watched)
            and not torch._C._has_torch_function(args)):
        out = direct(*args)
        if out is not None:
            return out
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def dual_level_open() -> bool:
    """Whether forward_ad records an open dual level: the part of forward_ad_active that Dynamo traces (a
    global it guards on), without the grad-mode query it would break the graph on."""
    return _fwad._current_level >= 0


def forward_ad_active() -> bool:
    """Whether a forward-mode dual level is open (torch.autograd.forward_ad), tangents being propagated."""
    return _fwad._current_level >= 0 and torch._C._is_fwd_grad_enabled()


def forward_levels() -> int:
    """How many forward-mode AD levels can see a call: torch.func's jvp transforms (jacfwd's too) and an open
    dual level. With two or more, the Functions below are wrong: torch runs a Function's jvp with forward
    grad off, so the tangent it returns is a constant to every outer forward level (jvp of jvp came back 0)."""
    if not torch._C._are_functorch_transforms_active():
        return int(forward_ad_active())
    # The outermost jvp transform opens the dual level itself (the only one torch allows), the inner ones none.
    return max(sum(i.key() == TransformType.Jvp for i in torch._C._functorch.get_interpreter_stack()),
               int(forward_ad_active()))


def _has_tangent(args) -> bool:
    """Whether a tensor argument carries a tangent (of dual level 0: torch opens one level at a time, and the
    first is 0). torch.compile enters a dual level through torch._C, past forward_ad's Python record of it,
    so forward_ad_active() is False while the compiled graph runs. (A sparse or other non-strided tensor has
    none, and unpacking one raises "Cannot access storage": the dispatcher then names its backend, which our
    ops lack.)"""
    return any(isinstance(a, torch.Tensor) and a.layout == torch.strided
               and torch._unpack_dual(a, 0).tangent is not None for a in args)


def _needs_function(args) -> bool:
    """Whether a derivative may be asked for: reverse mode (grad enabled, an input requiring grad) or forward
    mode (a dual level open: register_autograd's kernel skipped autograd there, dropping the tangent)."""
    return ((torch.is_grad_enabled() and torch._C._any_requires_grad(*args))
            or forward_ad_active())


# op overload -> the Function its Autograd kernel applies (_register): call() applies it itself.
_FUNCTIONS: dict = {}


def call(op, *args, watched: bool | None = None):
    """``op(*args)`` as its Autograd kernel would run it, without dispatching the op where nothing watches the
    call (a torch.func transform, torch.compile or torch.export, a jit trace) and nothing overrides it
    (__torch_function__): where a derivative may be asked for, the op's Function applied here; else the
    op's direct entry, past the dispatcher (_below_autograd). A dispatch to a Python Autograd kernel costs two
    more crossings between Python and C++ and the boxing of every argument: ~15 us, as much as a small op.
    The public functions of ops.py call the ops through here; a raw ``torch.ops`` call takes the full path.
    ``watched``: _watched(), when the caller already knows it."""
    # _watched first: under torch.compile the rest is not traceable (and the op goes into the graph).
    if _watched() if watched is None else watched:
        return op(*args)
    if _needs_function(args):
        function = _FUNCTIONS.get(op)
        if function is None or torch._C._has_torch_function(args):
            return op(*args)
        return function.apply(*args)
    return _below_autograd(op, *args, watched=False)


def _ctx_style(function):
    """``function`` with a ``forward(ctx, *args)`` that runs its forward and setup_context: for plain autograd.
    ``apply`` binds a setup_context-style Function's arguments to its forward's signature (inspect) on every
    call, which costs more than the kernels on small tensors; torch.func needs that style and gets
    ``function`` itself. Backward and jvp are shared."""
    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    return type(f"{function.__name__}Eager", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(function.backward),
                 "jvp": staticmethod(function.jvp)})


def _register(name: str, function, rule) -> None:
    """Kernels of classicnets_ext::<name>:

    - Autograd: applies ``function`` (its ctx-style twin) when a derivative may be needed, else runs the
      kernel directly (as register_autograd's kernel does).
    - FuncTorchDynamicLayerFrontMode (torch.func transforms active): applies ``function`` where functorch
      meets the op, before it starts processing the op's level -- exactly where a user's ``Function.apply``
      would run -- so the transform takes the Function (custom_function_call: grad, jvp, vmap) rather than
      seeing the op, whose Autograd kernel it would reach from inside that processing (a jvp there cannot
      call ops again). functionalize has no rule for Functions: the op (functional) runs a level down.
    - vmap: ``rule`` through ``register_vmap``, and the Function's ``vmap`` (the same rule).
    """
    op = _op(name)
    defaults = tuple(a.default_value for a in op._schema.arguments)
    n_args = len(defaults)
    eager = _ctx_style(function)

    def with_defaults(args):  # the dispatcher drops trailing arguments equal to their defaults: put them back
        return args if len(args) == n_args else (*args, *defaults[len(args):])

    _FUNCTIONS[op] = eager  # (call() passes every argument: no defaults to put back)

    def autograd_kernel(keyset, *args):
        if _needs_function(args) or _has_tangent(args):
            return eager.apply(*with_defaults(args))
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    def functorch_kernel(*args):
        args = with_defaults(args)
        interpreter = retrieve_current_functorch_interpreter()
        if interpreter.key() == TransformType.Functionalize:  # no rule for Functions there; the op is functional
            api = FunctorchFunctionalizeAPI(interpreter)
            with api.redispatch_to_next():
                return api.wrap_tensors(op(*api.unwrap_tensors(args)))
        if forward_levels() > 1:  # (the public functions of ops.py run torch's composite there)
            raise NotImplementedError(f"classicnets_ext::{name}: forward-mode AD of forward-mode AD (jvp of "
                                      f"jvp, jacfwd of jacfwd) is not supported by the raw op; call "
                                      f"classicnets_ext.ops.* or torch's function instead")
        return function.apply(*args)

    def vmap_rule(info, in_dims, *args):
        args = with_defaults(args)
        return rule(info, tuple(in_dims) + (None,) * (n_args - len(in_dims)), *args)

    # A triton_op (a custom_op) comes with an Autograd kernel of its own, which ours replaces: torch < 2.14
    # refuses that unless allow_override is given (seen with torch 2.11 on the GPU machine), and the
    # dispatcher warns about it, which says nothing a user can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*Overriding a previously registered kernel")
        _LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True, allow_override=True)
        _LIB.impl(name, functorch_kernel, "FuncTorchDynamicLayerFrontMode", allow_override=True)
    torch.library.register_vmap(f"classicnets_ext::{name}", vmap_rule, lib=_LIB)
    function.vmap = staticmethod(vmap_rule)


# ------------------------------------------------------------------------------------------------ vmap

def _batch_first(t: torch.Tensor, dim, batch_size: int) -> torch.Tensor:
    return t.unsqueeze(0).expand(batch_size, *t.shape) if dim is None else t.movedim(dim, 0)


def _fold(tensors, in_dims, batch_size: int, has_n: bool):
    """The vmapped dimension moved to the front of each tensor (expanded where a tensor is not vmapped), then
    merged with N (``has_n``) or, for a 3-D per-sample tensor, left in front as N. Returns the folded tensors
    and the function that unfolds a result."""
    tensors = [_batch_first(t, d, batch_size) for t, d in zip(tensors, in_dims)]
    if not has_n:
        return tensors, lambda t: t
    lead = tensors[0].shape[:2]
    return [t.flatten(0, 1) for t in tensors], lambda t: t.unflatten(0, lead)


def _folded_size(input_size, batch_size: int) -> list:
    """A per-sample input size as the folded op sees it."""
    if len(input_size) == 3:
        return [batch_size, *input_size]
    return [batch_size * input_size[0], *input_size[1:]]
