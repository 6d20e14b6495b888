"""Autograd, forward-mode AD and vmap for the LRN, max-pool and fused pool->LRN ops (and their ``*_triton``
twins) and the linear op: every op, the backward ops included, is differentiable again, and works under
``torch.func``.

Why not ``torch.library.register_autograd``: the function it generates takes ``ctx`` in ``forward`` and has no
``setup_context``, so ``torch.func.grad`` / ``vjp`` / ``jacrev`` refuse it; it has no ``jvp``, and it skips
autograd altogether when no input requires grad, so ``torch.func.jvp`` got a zero tangent. Here each op gets
its own Autograd kernel that applies a setup_context-style ``autograd.Function`` (forward below autograd,
``setup_context``, ``backward``, ``jvp``, ``vmap``) whenever a derivative of any kind may be asked for.

Backward formulas call the ops (the first-order kernels), so first-order training runs as fast as before;
the backward ops' own derivatives are torch composites (``_derivatives``): max-pool's backward is linear in
grad_output (a scatter through the argmax, whose derivative is the gather by the same argmax), LRN's is
differentiated in closed form, and the fused op's is the composition of the two.

vmap folds the vmapped dimension into the batch dimension N (or makes it N for a 3-D unbatched input) and
runs the op once. The rule is registered twice: as the Function's ``vmap`` staticmethod -- the path vmap
takes, since under torch.func the op enters through its Function -- and for the op with
``torch.library.register_vmap`` (the path of max_pool2d_indices, which has no Function, and of any call that
reaches the op's batched key directly). No per-sample fallback either way.
"""
from __future__ import annotations

import warnings

import torch
import torch.autograd.forward_ad as _fwad
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter
from torch._subclasses.functional_tensor import FunctorchFunctionalizeAPI

from . import _derivatives as D
from . import _layouts

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


def _lrn_rule(name: str):
    def rule(info, in_dims, input, size, alpha, beta, k):
        (x,), unfold = _fold([input], in_dims[:1], info.batch_size, True)
        return unfold(_op(name)(x, size, alpha, beta, k)), 0
    return rule


def _lrn_backward_rule(name: str):
    def rule(info, in_dims, grad_output, input, size, alpha, beta, k):
        (g, x), unfold = _fold([grad_output, input], in_dims[:2], info.batch_size, True)
        return unfold(_op(name)(g, x, size, alpha, beta, k)), 0
    return rule


def _pool_forward_rule(name: str, n_outputs: int):
    """max_pool2d and max_pool2d_lrn: (output, [pooled,] argmax), the saved ones empty (not vmapped) unless
    the last argument asks for them.

    The Python wrappers decide whether to save from ``input.requires_grad``, which a vmapped tensor does not
    report: the rule, which sees the tensor itself, saves whenever autograd will need it (the Function a
    level down keeps what it saved) and still answers empty saved tensors where they were not asked for."""
    def rule(info, in_dims, input, *args):
        (x,), unfold = _fold([input], in_dims[:1], info.batch_size, input.dim() == 5)
        save = args[-1]
        outputs = _op(name)(x, *args[:-1], save or (torch.is_grad_enabled() and x.requires_grad))
        if not save:
            empty = [outputs[0].new_empty(0)] * (n_outputs - 2) + [torch.empty(0, dtype=torch.uint8, device=x.device)]
            return (unfold(outputs[0]), *empty), (0,) + (None,) * (n_outputs - 1)
        return tuple(unfold(t) for t in outputs), (0,) * n_outputs
    return rule


def _pool_backward_rule(name: str, n_tensors: int):
    """max_pool2d_backward, max_pool2d_indices, max_pool2d_lrn_backward: tensors, then the input size."""
    def rule(info, in_dims, *args):
        tensors, (input_size, *rest) = args[:n_tensors], args[n_tensors:]
        folded, unfold = _fold(tensors, in_dims[:n_tensors], info.batch_size, len(input_size) == 4)
        return unfold(_op(name)(*folded, _folded_size(input_size, info.batch_size), *rest)), 0
    return rule


# ------------------------------------------------------------------------------------------------- LRN

def _lrn_functions(name: str):
    lrn, lrn_backward = _op(name), _op(f"{name}_backward")

    class LRN(torch.autograd.Function):
        @staticmethod
        def forward(input, size, alpha, beta, k):
            return _below_autograd(lrn, input, size, alpha, beta, k)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, size, alpha, beta, k = inputs
            # Only x: the backward recomputes the window sums from it (less memory traffic than saving s).
            ctx.save_for_backward(input)
            ctx.save_for_forward(input)
            ctx.args = (size, alpha, beta, k)

        @staticmethod
        def backward(ctx, grad_output):
            (input,) = ctx.saved_tensors
            return call(lrn_backward, grad_output, input, *ctx.args), None, None, None, None

        @staticmethod
        def jvp(ctx, tangent, *_):
            (input,) = ctx.saved_tensors
            return D.lrn_jvp(input, tangent, *ctx.args)

    class LRNBackward(torch.autograd.Function):
        @staticmethod
        def forward(grad_output, input, size, alpha, beta, k):
            return _below_autograd(lrn_backward, grad_output, input, size, alpha, beta, k)

        @staticmethod
        def setup_context(ctx, inputs, output):
            grad_output, input, *args = inputs
            ctx.save_for_backward(grad_output, input)
            ctx.save_for_forward(grad_output, input)
            ctx.args = tuple(args)

        @staticmethod
        def backward(ctx, gg):
            grad_output, input = ctx.saved_tensors
            need = ctx.needs_input_grad
            d_grad = D.lrn_jvp(input, gg, *ctx.args) if need[0] else None
            d_input = D.lrn_backward_grad_input(gg, grad_output, input, *ctx.args) if need[1] else None
            return d_grad, d_input, None, None, None, None

        @staticmethod
        def jvp(ctx, t_grad, t_input, *_):
            grad_output, input = ctx.saved_tensors
            out = torch.zeros_like(input) if t_grad is None else lrn_backward(t_grad, input, *ctx.args)
            if t_input is not None:
                out = out + D.lrn_backward_jvp(grad_output, input, t_input, *ctx.args)
            return out

    return LRN, LRNBackward


def register_lrn(name: str) -> None:
    """classicnets_ext::<name> and <name>_backward (``lrn`` or ``lrn_triton``)."""
    forward, backward = _lrn_functions(name)
    _register(name, forward, _lrn_rule(name))
    _register(f"{name}_backward", backward, _lrn_backward_rule(f"{name}_backward"))


# -------------------------------------------------------------------------------------------- max pool

def _input_layout(grad_input: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The input's gradient in the input's layout, as torch's. The backward ops take the layout from the argmax,
    which cannot show it when the output's layout is ambiguous (a 1x1 output is both contiguous and
    channels-last): a channels-last input pooled to 1x1 got a contiguous gradient."""
    if (channels_last and not _batched(grad_input)
            and not grad_input.is_contiguous(memory_format=torch.channels_last)):
        return grad_input.contiguous(memory_format=torch.channels_last)
    return grad_input


def _max_pool2d_functions(name: str):
    forward_op, backward_op, indices_op = _op(name), _op(f"{name}_backward"), _op(f"{name}_indices")

    class MaxPool2d(torch.autograd.Function):
        @staticmethod
        def forward(input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax):
            return _below_autograd(forward_op, input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax = inputs
            _, argmax = output
            ctx.mark_non_differentiable(argmax)
            # The one-byte argmax and the input's size: the backward gathers the gradient through the argmax
            # and never reads the input, so the input is not kept alive. The tangent needs the argmax too:
            # without one (save_argmax=False, as under forward-mode AD alone) it recomputes it from x.
            ctx.save_for_backward(argmax)
            ctx.save_for_forward(argmax if save_argmax else input)
            ctx.input_size = input.shape
            ctx.channels_last = _layouts.max_pool2d_is_channels_last(input)
            ctx.args = (kernel_size, stride, padding, dilation)
            ctx.ceil_mode, ctx.saved_argmax = ceil_mode, save_argmax

        @staticmethod
        def backward(ctx, grad_output, grad_argmax):
            if not ctx.saved_argmax:
                raise RuntimeError(
                    "max_pool2d: the backward needs the argmax, but the forward ran with save_argmax=False; pass "
                    "save_argmax=True when the input requires grad (classicnets_ext.ops.max_pool2d does)")
            (argmax,) = ctx.saved_tensors
            grad_input = call(backward_op, grad_output, argmax, ctx.input_size, *ctx.args)
            return _input_layout(grad_input, ctx.channels_last), None, None, None, None, None, None

        @staticmethod
        def jvp(ctx, tangent, *_):
            (saved,) = ctx.saved_tensors
            argmax = saved if ctx.saved_argmax else _below_autograd(forward_op, saved, *ctx.args, ctx.ceil_mode,
                                                                    True)[1]
            out = D.gather_windows(tangent, indices_op(argmax, ctx.input_size, *ctx.args))
            return out, None

    class MaxPool2dBackward(torch.autograd.Function):
        """Linear in grad_output: a scatter through the argmax. Its derivative is the gather by the same
        argmax (max pooling with a fixed argmax); the argmax itself is piecewise constant."""

        @staticmethod
        def forward(grad_output, argmax, input_size, kernel_size, stride, padding, dilation):
            return _below_autograd(backward_op, grad_output, argmax, input_size, kernel_size, stride, padding,
                                   dilation)

        @staticmethod
        def setup_context(ctx, inputs, output):
            _, argmax, input_size, *args = inputs
            ctx.save_for_backward(argmax)
            ctx.save_for_forward(argmax)
            ctx.input_size, ctx.args = input_size, tuple(args)

        @staticmethod
        def backward(ctx, gg):
            (argmax,) = ctx.saved_tensors
            grad = None
            if ctx.needs_input_grad[0]:
                grad = D.gather_windows(gg, indices_op(argmax, ctx.input_size, *ctx.args))
            return grad, None, None, None, None, None, None

        @staticmethod
        def jvp(ctx, tangent, *_):
            (argmax,) = ctx.saved_tensors
            return backward_op(tangent, argmax, ctx.input_size, *ctx.args)

    return MaxPool2d, MaxPool2dBackward


def register_max_pool2d(name: str) -> None:
    """classicnets_ext::<name>, <name>_backward and <name>_indices (``max_pool2d`` or ``max_pool2d_triton``)."""
    forward, backward = _max_pool2d_functions(name)
    _register(name, forward, _pool_forward_rule(name, 2))
    _register(f"{name}_backward", backward, _pool_backward_rule(f"{name}_backward", 2))
    # Integer-valued: no derivative, but a vmap rule (tangents and return_indices call it under vmap).
    torch.library.register_vmap(f"classicnets_ext::{name}_indices", _pool_backward_rule(f"{name}_indices", 1),
                                lib=_LIB)


# ------------------------------------------------------------------------------------ fused pool -> LRN

def _nchw(t: torch.Tensor) -> torch.Tensor:
    """LRN reads (N, C, *): a 3-D (C, H, W) pooled tensor is one sample."""
    return t.unsqueeze(0) if t.dim() == 3 else t


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.squeeze(0) if ref.dim() == 3 else t


def _max_pool2d_lrn_functions(name: str):
    suffix = name[len("max_pool2d_lrn"):]  # "" or "_triton": the backend's own pool and LRN ops
    forward_op, backward_op = _op(name), _op(f"{name}_backward")
    lrn_backward = _op(f"lrn{suffix}_backward")
    pool_backward, indices_op = _op(f"max_pool2d{suffix}_backward"), _op(f"max_pool2d{suffix}_indices")
    dilation = [1, 1]

    class MaxPool2dLRN(torch.autograd.Function):
        @staticmethod
        def forward(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu, save_for_backward):
            return _below_autograd(forward_op, input, kernel_size, stride, padding, ceil_mode, size, alpha, beta,
                                   k, relu, save_for_backward)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu, save = inputs
            _, pooled, argmax = output
            ctx.mark_non_differentiable(argmax)
            # LRN's input (the pooled values) and the one-byte argmax: the backward needs neither x nor y.
            # pooled stays a differentiable output: a double backward reaches x through it.
            ctx.save_for_backward(pooled, argmax)
            if save:
                ctx.save_for_forward(pooled, argmax)
            else:
                ctx.save_for_forward(input)
            ctx.input_size = input.shape
            ctx.channels_last = _layouts.max_pool2d_is_channels_last(input)
            ctx.pool, ctx.ceil_mode = (kernel_size, stride, padding), ceil_mode
            ctx.lrn, ctx.relu, ctx.saved = (size, alpha, beta, k), relu, save
            ctx.set_materialize_grads(False)

        @staticmethod
        def backward(ctx, grad_output, grad_pooled, grad_argmax):
            if not ctx.saved:
                raise RuntimeError(
                    "max_pool2d_lrn: the backward needs the pooled values and the argmax, but the forward ran with "
                    "save_for_backward=False; pass save_for_backward=True when the input requires grad "
                    "(classicnets_ext.ops.max_pool2d_lrn does)")
            pooled, argmax = ctx.saved_tensors
            if grad_pooled is None:
                if grad_output is None:
                    return (None,) * 11
                grad_input = call(backward_op, grad_output, pooled, argmax, ctx.input_size, *ctx.pool, *ctx.lrn,
                                  ctx.relu)
            else:  # a double backward: the gradient reaching the pooled values, plus LRN's
                grad = grad_pooled
                if grad_output is not None:
                    grad = grad + _like(lrn_backward(_nchw(grad_output), _nchw(pooled), *ctx.lrn), pooled)
                grad_input = pool_backward(D.relu_mask(grad, pooled, ctx.relu), argmax, ctx.input_size, *ctx.pool,
                                           dilation)
            return (_input_layout(grad_input, ctx.channels_last),) + (None,) * 10

        @staticmethod
        def jvp(ctx, tangent, *_):
            if ctx.saved:
                pooled, argmax = ctx.saved_tensors
            else:
                (input,) = ctx.saved_tensors
                _, pooled, argmax = _below_autograd(forward_op, input, *ctx.pool, ctx.ceil_mode, *ctx.lrn, ctx.relu,
                                                    True)
            indices = indices_op(argmax, ctx.input_size, *ctx.pool, dilation)
            t_pooled = D.relu_mask(D.gather_windows(tangent, indices), pooled, ctx.relu)
            t_out = _like(D.lrn_jvp(_nchw(pooled), _nchw(t_pooled), *ctx.lrn), pooled)
            return t_out, t_pooled if ctx.saved else tangent.new_zeros(0), None

    class MaxPool2dLRNBackward(torch.autograd.Function):
        """grad_input = P^T(R(L^T(grad_output, pooled))): LRN's backward L^T, the ReLU mask R, max-pool's
        scatter P^T. Its derivatives compose those of the pieces (see _derivatives)."""

        @staticmethod
        def forward(grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size, alpha, beta, k,
                    relu):
            return _below_autograd(backward_op, grad_output, pooled, argmax, input_size, kernel_size, stride,
                                   padding, size, alpha, beta, k, relu)

        @staticmethod
        def setup_context(ctx, inputs, output):
            grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size, alpha, beta, k, relu = inputs
            ctx.save_for_backward(grad_output, pooled, argmax)
            ctx.save_for_forward(grad_output, pooled, argmax)
            ctx.input_size, ctx.pool = input_size, (kernel_size, stride, padding)
            ctx.lrn, ctx.relu = (size, alpha, beta, k), relu

        @staticmethod
        def backward(ctx, gg):
            grad_output, pooled, argmax = ctx.saved_tensors
            need = ctx.needs_input_grad
            h = D.relu_mask(D.gather_windows(gg, indices_op(argmax, ctx.input_size, *ctx.pool, dilation)), pooled,
                            ctx.relu)
            d_grad = d_pooled = None
            if need[0]:
                d_grad = _like(D.lrn_jvp(_nchw(pooled), _nchw(h), *ctx.lrn), pooled)
            if need[1]:
                d_pooled = _like(D.lrn_backward_grad_input(_nchw(h), _nchw(grad_output), _nchw(pooled), *ctx.lrn),
                                 pooled)
            return (d_grad, d_pooled) + (None,) * 10

        @staticmethod
        def jvp(ctx, t_grad, t_pooled, *_):
            grad_output, pooled, argmax = ctx.saved_tensors
            out = None
            if t_grad is not None:
                out = backward_op(t_grad, pooled, argmax, ctx.input_size, *ctx.pool, *ctx.lrn, ctx.relu)
            if t_pooled is not None:
                t_lrn = _like(D.lrn_backward_jvp(_nchw(grad_output), _nchw(pooled), _nchw(t_pooled), *ctx.lrn), pooled)
                part = pool_backward(D.relu_mask(t_lrn, pooled, ctx.relu), argmax, ctx.input_size, *ctx.pool, dilation)
                out = part if out is None else out + part
            if out is None:
                out = pool_backward(torch.zeros_like(grad_output), argmax, ctx.input_size, *ctx.pool, dilation)
            return out

    return MaxPool2dLRN, MaxPool2dLRNBackward


def register_max_pool2d_lrn(name: str) -> None:
    """classicnets_ext::<name> and <name>_backward (``max_pool2d_lrn`` or ``max_pool2d_lrn_triton``); the
    backend's LRN and max-pool ops must be registered (their backward ops serve the double backward)."""
    forward, backward = _max_pool2d_lrn_functions(name)
    _register(name, forward, _pool_forward_rule(name, 3))
    _register(f"{name}_backward", backward, _pool_backward_rule(f"{name}_backward", 3))


# ------------------------------------------------------------------------------------------------ linear

def _linear_rule(info, in_dims, input, weight, bias):
    """vmap of ``input @ weight.T + bias`` (the op takes 2-D operands only): a batched matmul, whose result has
    the vmapped dimension first."""
    x_dim, w_dim, b_dim = in_dims
    out = torch.matmul(input if x_dim is None else input.movedim(x_dim, 0),
                       (weight if w_dim is None else weight.movedim(w_dim, 0)).transpose(-1, -2))
    if bias is not None:
        out = out + (bias if b_dim is None else bias.movedim(b_dim, 0).unsqueeze(-2))
    return out, 0


# Up to this many rows (the forward kernel's, ops._LINEAR_KERNEL_MAX_ROWS), the backward's two products run our
# kernels (csrc/linear): cold operands, 2 threads, AMD EPYC Zen 5, batch 8, against at::mm, AVX-512 / avx2:
# AlexNet's FC6 grad_input 3.5-4.4x / 2.4-2.8x, grad_weight 1.3x / 1.3x (a fresh 151 MB tensor, whose page faults
# are most of its time), FC8 3.2-4.2x / 2.5-2.8x. Beyond, a rank-M update gains FLOPs per byte and the library
# GEMM is the better tool.
_LINEAR_GRAD_KERNEL_MAX_ROWS = 8


# Whether _C has the backward's products (register_linear sets it; a _C built before them has none).
_linear_grad_ops = False


def _linear_grad_kernels(grad: torch.Tensor) -> bool:
    """Whether Linear's backward takes its products from linear_grad_input / linear_grad_weight: a plain fp32
    CPU gradient of a few rows, outside torch.func transforms and not batched (is_grads_batched): the ops have
    no batching rule, which the matrix products have. Under create_graph the ops' own autograd (matrix
    products) makes the result differentiable again."""
    return (_linear_grad_ops and grad.dtype == torch.float32 and grad.dim() == 2
            and grad.shape[0] <= _LINEAR_GRAD_KERNEL_MAX_ROWS and grad.is_cpu
            and not torch._C._are_functorch_transforms_active() and not _batched(grad))


def _register_linear_grad_autograd() -> None:
    """The backward products' derivatives, as matrix products: linear_grad_input(g, w) = g @ w and
    linear_grad_weight(g, x) = g.T @ x."""
    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def grad_input_backward(ctx, gg):
        g, w = ctx.saved_tensors
        return gg.mm(w.t()), g.t().mm(gg)

    def grad_weight_backward(ctx, gg):
        g, x = ctx.saved_tensors
        return x.mm(gg.t()), g.mm(gg)

    torch.library.register_autograd("classicnets_ext::linear_grad_input", grad_input_backward, setup_context=setup)
    torch.library.register_autograd("classicnets_ext::linear_grad_weight", grad_weight_backward, setup_context=setup)


class Linear(torch.autograd.Function):
    """classicnets_ext::linear: F.linear's derivatives, as matrix products that are differentiable again."""

    @staticmethod
    def forward(input, weight, bias):
        return _below_autograd(_op("linear"), input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        # Each operand only where the other's gradient needs it, as torch's mm saves: a frozen weight and an
        # input changed in place after the layer read it, or inference-mode operands with only the bias
        # trained, must not stop the backward.
        need = ctx.needs_input_grad
        ctx.save_for_backward(input if need[1] else None, weight if need[0] else None)
        ctx.save_for_forward(input, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        ours = _linear_grad_kernels(grad)
        grad_input = grad_weight = None
        if need[0]:
            grad_input = call(_op("linear_grad_input"), grad, weight) if ours else grad.mm(weight)
        if need[1]:
            grad_weight = call(_op("linear_grad_weight"), grad, input) if ours else grad.t().mm(input)
        grad_bias = grad.sum(0) if ctx.has_bias and need[2] else None
        return grad_input, grad_weight, grad_bias

    @staticmethod
    def jvp(ctx, t_input, t_weight, t_bias):
        input, weight = ctx.saved_tensors
        out = None
        for term in (None if t_input is None else t_input.mm(weight.t()),
                     None if t_weight is None else input.mm(t_weight.t()), t_bias):
            if term is not None:
                out = term if out is None else out + term
        return out if out is not None else input.new_zeros(input.shape[0], weight.shape[0])


def register_linear() -> None:
    """classicnets_ext::linear (CPU only: no Triton twin), and its backward's products where _C has them."""
    global _linear_grad_ops
    _register("linear", Linear, _linear_rule)
    _linear_grad_ops = hasattr(torch.ops.classicnets_ext, "linear_grad_weight")
    if _linear_grad_ops:
        _register_linear_grad_autograd()
