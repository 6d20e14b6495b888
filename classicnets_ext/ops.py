"""The functional API: torch's signatures, torch's argument rules, our kernels.

Each function validates its arguments the way the torch function it replaces does (raising an exception
that names the bad argument), asks ``_backend.resolve`` which implementation serves the tensor, and calls
one registered op. Autograd, fake (meta) kernels and torch.compile support live with the op registrations
(``_registrations.py``), so every backend differentiates and compiles the same way.

Inputs of a dtype our kernels do not take (integer, bool, complex, float8) run on torch itself -- the
``reference`` backend, whatever backend is selected -- so they give torch's result, or torch's exception, on
every device: torch pools integers on the CPU (and LRN of int64 there returns float) but rejects them on CUDA,
and our kernels take fp32, fp64, fp16 and bf16 only. The raw ops (``torch.ops.classicnets_ext.*``) reject them
with a TypeError instead.

Mixed precision: fp16/bf16 inputs are computed with fp32 accumulation and returned in their own dtype.
Under ``torch.autocast`` the ops return the dtype torch's own functions return there (see
:func:`_autocast_to_fp32`): max pooling keeps its input's dtype (autocast lists no max-pool), while torch's
LRN composite runs ops that autocast computes in fp32 -- ``pow`` on CUDA, ``avg_pool3d`` (inputs of 4 or more
dimensions) on the CPU -- and so returns fp32 for an fp16/bf16 input; ours then computes in fp32 too.

Graph capture: ``torch.jit.trace`` and ``torch.export`` record one run and replay it later in whatever grad
mode the caller has, so while they capture, max-pool always saves its argmax (and the fused op its pooled
values), whether or not this run needs them (see :func:`_capturing`). ``torch.compile`` needs no such care:
it guards on grad mode and recompiles. TorchScript's ``torch.jit.script`` cannot compile these functions (they
pick a backend in Python); the modules in ``classicnets_ext.nn`` say so when scripted.
"""
from __future__ import annotations

import contextlib
import math
import operator
import warnings

import torch

from . import _autograd, _backend, _extension, _layouts, reference


_INT32_MAX = 2**31 - 1
_DIFFERENTIATING = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)


def _fx_node(fn, *args, **kwargs):
    """Under torch.fx.symbolic_trace (torchvision's create_feature_extractor) the input is a Proxy: the call is
    recorded as one node that calls ``fn`` -- as fx records torch's own functions -- instead of tracing into its
    argument checks, which cannot test a Proxy."""
    return args[0].tracer.create_proxy("call_function", fn, args, kwargs)


def _check_tensor(fn: str, name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}(): argument '{name}' must be a Tensor, not {type(value).__name__}")


# The dtypes our kernels take; torch's composites answer every other one, with torch's results or errors
# (integers, and float8 -- torch's "not implemented for 'Float8_e4m3fn'", where our checks said TypeError).
_KERNEL_DTYPES = frozenset((torch.float32, torch.float64, torch.float16, torch.bfloat16))


def _resolve(op: str, input: torch.Tensor) -> str:
    """The backend for this call: ``reference`` (torch) for a dtype our kernels do not take (see the module
    docstring) or under nested forward-mode AD (jvp of jvp: our Functions' tangents are constants to the outer
    level, _autograd.forward_levels; not asked while Dynamo traces, which would break the graph on it: there
    the raw op refuses nested levels), else the one ``_backend.resolve`` picks."""
    if input.dtype not in _KERNEL_DTYPES:
        return "reference"
    # (Two cheap tests before the call: this runs on every eager call.)
    if ((_autograd.dual_level_open() or torch._C._are_functorch_transforms_active())
            and not torch.compiler.is_compiling() and _autograd.forward_levels() > 1):
        return "reference"
    return _backend.resolve(op, input)


def _autocast_to_fp32(input: torch.Tensor, lrn_dim: int) -> bool:
    """Whether torch's ``F.local_response_norm`` of an ``lrn_dim``-D tensor like ``input`` returns fp32 under the
    autocast state now: for an fp16/bf16 input, on CUDA (autocast runs its ``pow`` in fp32) and on the CPU for 4
    or more dimensions (it runs ``avg_pool3d`` in fp32; 3-D inputs take ``avg_pool2d``, which autocast leaves
    alone). tests/test_autocast.py holds this against torch itself."""
    device = input.device.type
    if input.dtype not in (torch.float16, torch.bfloat16) or device not in ("cpu", "cuda"):
        return False
    return torch.is_autocast_enabled(device) and (device == "cuda" or lrn_dim >= 4)


def _exporting() -> bool:
    """Whether torch.export is tracing: the flag torch.export sets around its trace, which Dynamo reads as a
    guarded global. (``torch.compiler.is_exporting()`` says the same in eager code and under torch 2.14's
    Dynamo, but torch 2.11's Dynamo folds it to True under any torch.compile: a compiled model then saved
    max-pool's argmax in inference and ran F.linear for our linear op.)"""
    return torch.compiler._is_exporting_flag


def _capturing() -> bool:
    """Whether this run is being recorded for a replay that may come in another grad mode: ``torch.jit.trace``
    (it even re-traces under ``no_grad`` to check the graph) or ``torch.export``. Decisions taken here on
    grad mode would be frozen into the graph; ``torch.compile`` guards on grad mode instead."""
    if torch.compiler.is_compiling():
        return _exporting()
    return torch.jit.is_tracing()


def _backward_possible(input: torch.Tensor, watched: bool) -> bool:
    """Whether a backward may come for this call, so the forward must save what it needs (max-pool's argmax):
    grad enabled and ``input`` requiring grad, or a capture (_capturing) or torch.func transform that may
    differentiate it later. Under a transform the input can read ``requires_grad=False`` although an outer
    level differentiates it (grad of a jvp, Dynamo tracing the body of ``torch.func.grad``): a grad or jvp
    level saves; vmap alone does not (its inference saved an argmax for nothing, 1.6x the time). Dynamo
    cannot walk the levels: there any transform saves (its test stays in the graph as a dead call)."""
    if torch.is_grad_enabled() and input.requires_grad:
        return True
    if not watched:
        return False
    if _capturing():
        return True
    if torch.compiler.is_compiling():
        return torch._C._are_functorch_transforms_active()
    levels = torch._C._functorch.get_interpreter_stack() or ()
    return any(level.key() in _DIFFERENTIATING for level in levels)


def _as_int(fn: str, name: str, value, kind: str = "an int"):
    """``value`` as an int where torch takes it as one: anything with ``__index__`` (numpy integers, 0-d
    integer tensors) but not a bool; a SymInt stays symbolic."""
    if isinstance(value, torch.SymInt):
        return value
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{fn}(): argument '{name}' must be {kind}, not {type(value).__name__}")


def _check_int(fn: str, name: str, value, minimum: int) -> int:
    value = _as_int(fn, name, value)
    if isinstance(value, int) and value >= 2 ** 63:  # the schema's int is int64 (the dispatcher's message
        # said "Expected a value of type 'int' ... found type 'int'"): ValueError, as torch's argument parser
        raise ValueError(f"{fn}(): argument '{name}' must fit in 64 bits (at most {2 ** 63 - 1}), got {value}")
    if value < minimum:  # RuntimeError, as torch's LRN raises for size < 1 (its avg_pool3d's check)
        raise RuntimeError(f"{fn}(): argument '{name}' must be >= {minimum}, got {value}")
    return value


def _check_bool(fn: str, name: str, value) -> bool:
    """torch's bool arguments of its C++ functions (``ceil_mode``) take a bool and nothing else."""
    if not isinstance(value, (bool, torch.SymBool)):
        kind = type(value)
        kind = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
        raise TypeError(f"{fn}(): argument '{name}' must be bool, not {kind}")
    return value


def _learned(*scalars) -> bool:
    """Whether a scalar argument is a tensor that may want a derivative (a learned alpha, say): one that
    requires grad, carries a tangent, or is a torch.func transform's wrapper (vmap or grad over it; neither
    shows as requires_grad) -- not a constant tensor that a transform of the input merely captures. Our
    kernels take plain floats, so such a call runs torch's composite, which differentiates with respect to it
    (and vmaps over it); so does any tensor under torch.compile, where float() of it would not trace, and
    one of several elements (a per-channel alpha, which torch's composite broadcasts: no float for a kernel)."""
    tensors = [v for v in scalars if isinstance(v, torch.Tensor)]
    return bool(tensors) and (torch.compiler.is_compiling()
                              or any(v.numel() != 1 or v.requires_grad or _autograd._batched(v) for v in tensors)
                              or _autograd._has_tangent(tensors))


def _degenerate(alpha: float, beta: float, k: float) -> bool:
    """Whether an LRN's settings are not all finite: then it runs as the composite. torch's pow gives 1 ** inf =
    1 ** nan = 1 (a window sum s of exactly 1), where the kernels' exp2(-beta * log2(s)) give NaN. (Chained
    comparisons: math.isfinite does not trace under dynamic shapes.)"""
    return not (-math.inf < alpha < math.inf and -math.inf < beta < math.inf and -math.inf < k < math.inf)


def _lrn_scalars(fn: str, alpha, beta, k) -> tuple[float, float, float]:
    """alpha, beta and k as floats: a real number or a one-element tensor each, as torch's composite takes them;
    anything else (None, a string -- which float() would parse) a TypeError naming the argument."""
    if type(alpha) is float and type(beta) is float and type(k) is float:  # the usual call, first
        return alpha, beta, k
    out = []
    for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        try:
            if isinstance(value, (str, bytes)):
                raise TypeError
            out.append(float(value))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{fn}(): argument '{name}' must be a real number, got {type(value).__name__} "
                            f"{value!r}") from None
    return tuple(out)


# _C's one-call eager entries (csrc/common/eager.h); an older _C lacks them.
_lrn_eager = getattr(_extension._C, "lrn_eager", None)
_max_pool2d_eager = getattr(_extension._C, "max_pool2d_eager", None)
_max_pool2d_lrn_eager = getattr(_extension._C, "max_pool2d_lrn_eager", None)
_autocast_cached_cast = getattr(_extension._C, "autocast_cached_cast", None)


def local_response_norm(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.local_response_norm` (same arguments and results).

    ``y[c] = x[c] / (k + alpha/size * sum(x[c']^2 for c' in [c - size//2, c + (size-1)//2]))^beta`` over
    the channel dimension (dim 1) of an input of shape (N, C, *). Any strides and layout; fp16, bf16, fp32,
    fp64. Forward reads x once and writes y once; backward recomputes the window sums from x.
    """
    # The common eager call in one C++ call, its autograd node included (csrc/lrn/lrn_autograd.cpp), as for
    # max_pool2d below: None for any other call, which the path below serves.
    if _lrn_eager is not None and not torch.compiler.is_compiling():
        output = _lrn_eager(input, size, alpha, beta, k, _backend.cpp_devices("lrn"))
        if output is not None:
            return output
    if isinstance(input, torch.fx.Proxy):
        return _fx_node(local_response_norm, input, size, alpha, beta, k)
    _check_tensor("local_response_norm", "input", input)
    if input.dim() < 3:
        raise ValueError(f"local_response_norm(): argument 'input' must have 3 or more dimensions (N, C, *), "
                         f"got {input.dim()}")
    size = _check_int("local_response_norm", "size", size, 1)
    if _learned(alpha, beta, k):
        return reference.local_response_norm(input, size, alpha, beta, k)
    alpha, beta, k = _lrn_scalars("local_response_norm", alpha, beta, k)
    if _degenerate(alpha, beta, k):
        return reference.local_response_norm(input, size, alpha, beta, k)
    if _autocast_to_fp32(input, input.dim()):
        input = input.float()
    backend = _resolve("lrn", input)
    if backend == "reference":
        return reference.local_response_norm(input, size, alpha, beta, k)
    if backend == "triton":
        return _autograd.call(torch.ops.classicnets_ext.lrn_triton.default, input, size, alpha, beta, k)
    _extension.require("local_response_norm")
    return _autograd.call(torch.ops.classicnets_ext.lrn.default, input, size, alpha, beta, k)


def _pair(fn: str, name: str, value, default: tuple[int, int] | None = None) -> tuple[int, int]:
    """torch's int-or-pair argument: an int, or a sequence of one or two ints (an empty sequence means
    ``default`` where there is one, as torch's ``stride=()`` does). A wrong type raises TypeError, a wrong
    length RuntimeError -- as torch does."""
    if type(value) is int:  # the common case first: the checks below cost more than small kernels
        return value, value
    if type(value) in (tuple, list) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value[0], value[1]
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) == 0 and default is not None:
            return default
        if len(value) not in (1, 2):
            raise RuntimeError(f"{fn}(): argument '{name}' must be a single int or a tuple of two ints, got "
                               f"{len(value)} values")
        items = (value[0], value[-1])
    else:
        items = (value, value)
    return tuple(_as_int(fn, name, v, "an int or a tuple of two ints") for v in items)


def _check_pool_pairs(fn: str, kernel_size, stride, padding, dilation) -> None:
    """torch's rules for max_pool2d's pairs, each with its own message."""
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding),
                        ("dilation", dilation)):
        if any(isinstance(v, int) and v > _INT32_MAX for v in value):  # torch keeps them in 32-bit ints
            # torch's type: a RuntimeError, or past int64 its argument parser's ValueError
            error = ValueError if any(isinstance(v, int) and v >= 2 ** 63 for v in value) else RuntimeError
            raise error(f"{fn}(): argument '{name}' must fit in 32 bits (at most {_INT32_MAX}), got {value}")
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if value[0] <= 0 or value[1] <= 0:
            raise RuntimeError(f"{fn}(): argument '{name}' must be greater than zero, got {value}")
    if padding[0] < 0 or padding[1] < 0:
        raise RuntimeError(f"{fn}(): argument 'padding' must be non-negative, got {padding}")
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        # torch's rule (pool2d_shape_check): at most half the kernel size -- dilation does not widen it.
        raise RuntimeError(f"{fn}(): argument 'padding' must be at most half of kernel_size, got padding={padding}"
                           f" and kernel_size={kernel_size}")


def _pool_args(fn: str, input, kernel_size, stride, padding, dilation, ceil_mode):
    """max_pool2d's argument rules (torch's): returns (kernel_size, stride, padding, dilation) as pairs.
    Written for the valid call, which every op call pays for (~10 us as loops, ~4 us as below): one chained
    test of all the pairs, and _check_pool_pairs to name the argument when it fails."""
    _check_tensor(fn, "input", input)
    _check_bool(fn, "ceil_mode", ceil_mode)
    kernel_size = _pair(fn, "kernel_size", kernel_size)
    stride = kernel_size if stride is None else _pair(fn, "stride", stride, default=kernel_size)
    padding = _pair(fn, "padding", padding)
    dilation = _pair(fn, "dilation", dilation)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    if not (0 < kh <= _INT32_MAX and 0 < kw <= _INT32_MAX and 0 < sh <= _INT32_MAX and 0 < sw <= _INT32_MAX
            and 0 < dh <= _INT32_MAX and 0 < dw <= _INT32_MAX and 0 <= ph <= kh // 2 and 0 <= pw <= kw // 2):
        _check_pool_pairs(fn, kernel_size, stride, padding, dilation)
    if torch.jit.is_tracing():
        # jit.trace gives sizes as traced values, and each test of one warns that the trace takes it as a
        # constant: these tests only validate (they raise or record nothing), so the warnings are noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            _check_pool_input(fn, input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    else:
        _check_pool_input(fn, input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return kernel_size, stride, padding, dilation


def _check_pool_input(fn: str, shape, kernel_size, stride, padding, dilation, ceil_mode) -> None:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation

    def shape_error():
        return (f"{fn}(): argument 'input' must be a 3-D (C, H, W) or 4-D (N, C, H, W) tensor with non-zero C, H "
                f"and W (N may be 0), got shape {list(shape)}")

    def size_error():
        out_shape = _layouts.max_pool2d_output_shape(shape, kernel_size, stride, padding, dilation, ceil_mode)
        return (f"{fn}(): argument 'input' of size {list(shape)} is too small: the calculated output size is "
                f"{out_shape} (kernel_size={kernel_size}, stride={stride}, padding={padding}, dilation={dilation})")

    if len(shape) not in (3, 4):
        raise RuntimeError(shape_error())
    if torch.compiler.is_compiling():
        # Sizes may be symbolic, and a test of a data-dependent one cannot trace: the op's fake kernel runs the
        # kernels' checks (_checks.max_pool2d), which check such a size when the graph runs, as torch's meta
        # kernels do. (So under torch.compile a bad size is the kernels' ValueError.)
        return
    if 0 in shape[-3:]:
        raise RuntimeError(shape_error())
    if (_layouts.pooling_output_size(shape[-2], kh, sh, ph, dh, ceil_mode) <= 0
            or _layouts.pooling_output_size(shape[-1], kw, sw, pw, dw, ceil_mode) <= 0):
        raise RuntimeError(size_error())


def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Drop-in for :func:`torch.nn.functional.max_pool2d` (same arguments, results and indices).

    Input (N, C, H, W) or (C, H, W), any strides (a channels-last input is answered channels-last);
    fp16, bf16, fp32, fp64 (other dtypes: torch's F.max_pool2d). ``kernel_size``, ``stride`` (default:
    ``kernel_size``), ``padding`` and ``dilation`` are ints or pairs. Ties keep the first maximum in (kh, kw)
    order and NaN propagates, as in torch, so the indices equal torch's exactly.

    The forward writes the output and, only when autograd will need it (grad enabled and ``input``
    requiring grad, or a graph being captured: see the module docstring) or ``return_indices`` is set, a
    one-byte window-local argmax -- not torch's 8-byte indices. The backward sums the gradient through it,
    deterministically; ``return_indices`` converts it to torch's int64 ``h * W + w`` indices.
    """
    # The common eager call -- a plain tensor, int or pair arguments, our C++ kernel, nothing watching -- in one
    # C++ call, its autograd node included (csrc/maxpool/maxpool_autograd.cpp): the path below costs ~0.1 ms
    # more when the caches are cold. None: any other call, which the path below serves (and raises torch's
    # errors for). torch.compile traces the path below (is_compiling: a constant there).
    if _max_pool2d_eager is not None and not return_indices and not torch.compiler.is_compiling():
        output = _max_pool2d_eager(input, kernel_size, stride, padding, dilation, ceil_mode,
                                   _backend.cpp_devices("max_pool2d"))
        if output is not None:
            return output
    if isinstance(input, torch.fx.Proxy):
        return _fx_node(max_pool2d, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    fn = "max_pool2d"
    kernel_size, stride, padding, dilation = _pool_args(fn, input, kernel_size, stride, padding, dilation, ceil_mode)
    return_indices = bool(return_indices)
    backend = _resolve("max_pool2d", input)
    # jit.trace cannot record the indices op's input_size (SymInt[]: its tracer asserts on traced sizes), so a
    # traced call with indices records torch's own op, which also generalises to other input sizes.
    if backend == "reference" or (return_indices and torch.jit.is_tracing()):
        return reference.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    watched = _autograd._watched()  # (a capture is always watched: one test serves both)
    save_argmax = return_indices or _backward_possible(input, watched)
    args = (kernel_size, stride, padding, dilation)
    if backend == "triton":
        forward = torch.ops.classicnets_ext.max_pool2d_triton.default
        indices = torch.ops.classicnets_ext.max_pool2d_triton_indices
    else:
        _extension.require(fn, op="max_pool2d")
        forward = torch.ops.classicnets_ext.max_pool2d.default
        indices = torch.ops.classicnets_ext.max_pool2d_indices
    output, argmax = _autograd.call(forward, input, *args, ceil_mode, save_argmax, watched=watched)
    if return_indices:
        return output, indices(argmax, input.shape, *args)
    return output


def max_pool2d_lrn(input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False, size: int = 5,
                   alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *, relu: bool = False) -> torch.Tensor:
    """Fused ``local_response_norm(max_pool2d(relu(input) if relu else input, ...), size, alpha, beta, k)``.

    AlexNet's CONV -> ReLU -> POOL -> NORM (and GoogLeNet's stem) in one pass: the pooled tensor is never
    written in inference -- x is read once and y written once. Arguments and results are those of
    :func:`max_pool2d` (without dilation and indices) and :func:`local_response_norm`; input (N, C, H, W)
    or (C, H, W), any strides (channels-last is answered channels-last), fp16, bf16, fp32, fp64.

    When autograd needs it, the forward also saves the pooled values (LRN's input, a quarter of x for 3x3
    stride-2 pools) and a one-byte argmax; the backward sums the LRN gradient through the argmax,
    deterministically, without reading x or y.
    """
    # The common eager call in one C++ call, its autograd node included (csrc/pool_lrn/pool_lrn_autograd.cpp),
    # as for max_pool2d above: None for any other call, which the path below serves.
    if _max_pool2d_lrn_eager is not None and not torch.compiler.is_compiling():
        output = _max_pool2d_lrn_eager(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu,
                                       _backend.cpp_devices("max_pool2d_lrn"))
        if output is not None:
            return output
    if isinstance(input, torch.fx.Proxy):
        return _fx_node(max_pool2d_lrn, input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k,
                        relu=relu)
    fn = "max_pool2d_lrn"
    kernel_size, stride, padding, _ = _pool_args(fn, input, kernel_size, stride, padding, 1, ceil_mode)
    size = _check_int(fn, "size", size, 1)
    if _learned(alpha, beta, k):
        return reference.max_pool2d_lrn(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k,
                                        bool(relu))
    alpha, beta, k = _lrn_scalars(fn, alpha, beta, k)
    if _degenerate(alpha, beta, k):  # (so that convert() of such a Sequential computes what it did)
        return reference.max_pool2d_lrn(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k,
                                        bool(relu))
    relu = bool(relu)
    if _autocast_to_fp32(input, 4):  # (the LRN sees (N, C, H, W): a 3-D input is one sample)
        input = input.float()  # pooling commutes with the cast: the result is the composite's
    backend = _resolve(fn, input)
    if backend == "separate":  # pool first: relu commutes with max, and then touches a quarter of the data
        pooled = max_pool2d(input, kernel_size, stride, padding, 1, ceil_mode)
        pooled = torch.relu(pooled) if relu else pooled
        unbatched = pooled.dim() == 3  # LRN wants (N, C, *): a (C, H, W) input is one sample
        output = local_response_norm(pooled.unsqueeze(0) if unbatched else pooled, size, alpha, beta, k)
        return output.squeeze(0) if unbatched else output
    if backend == "reference":
        return reference.max_pool2d_lrn(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu)
    if backend == "triton":
        op = torch.ops.classicnets_ext.max_pool2d_lrn_triton.default
    else:
        _extension.require(fn, op=fn)
        op = torch.ops.classicnets_ext.max_pool2d_lrn.default
    watched = _autograd._watched()
    save = _backward_possible(input, watched)
    output, _, _ = _autograd.call(op, input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu, save,
                                  watched=watched)
    return output


@contextlib.contextmanager
def untraced():
    """Sizes read as plain ints under ``torch.jit.trace``, which hands them out as traced values and warns, at
    each Python test of one, that the trace might not generalise (36 warnings per GoogLeNet trace; torchvision's
    gives none). For checks and path choices that record nothing in the graph; the tracing state is the
    thread's own."""
    state = torch._C._get_tracing_state()
    if state is None:
        yield
        return
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def _check_weight(fn: str, name: str, value, input: torch.Tensor, dims: int) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}(): argument '{name}' must be a Tensor, not {type(value).__name__}")
    if value.dim() != dims:
        raise ValueError(f"{fn}(): argument '{name}' must be {dims}-D, got shape {list(value.shape)}")
    if value.dtype != input.dtype:  # a RuntimeError, as F.conv2d's ("expected scalar type Double but found Float")
        raise RuntimeError(f"{fn}(): argument '{name}' has dtype {value.dtype} but 'input' has {input.dtype} (cast "
                           f"the block or the input; under torch.autocast both are cast for you)")
    if value.device != input.device:
        raise RuntimeError(f"{fn}(): argument '{name}' is on {value.device} but 'input' is on {input.device}")


def inception(input: torch.Tensor, weight_1x1: torch.Tensor, bias_1x1: torch.Tensor, weight_3x3: torch.Tensor,
              bias_3x3: torch.Tensor, weight_5x5: torch.Tensor, bias_5x5: torch.Tensor, weight_pool: torch.Tensor,
              bias_pool: torch.Tensor, ch1x1: int) -> torch.Tensor:
    """The fused GoogLeNet Inception block (conv + bias + ReLU branches, BatchNorm already folded):

    ``cat([relu(conv1x1(x)), relu(conv_k(relu(conv1x1(x)))), relu(conv_k(relu(conv1x1(x)))),
    relu(conv1x1(max_pool2d(x, 3, 1, 1)))], dim=1)`` with the weights below; see
    :func:`classicnets_ext.reference.inception` for the exact composite.

    ``weight_1x1`` [ch1x1 + ch3x3red + ch5x5red, C, 1, 1] stacks the three 1x1 convolutions that read the input
    (computed as one GEMM); ``weight_3x3`` [ch3x3, ch3x3red, k, k] and ``weight_5x5`` [ch5x5, ch5x5red, k, k] are
    the spatial convolutions (odd k, padding k // 2); ``weight_pool`` [pool_proj, C, 1, 1] the pool projection;
    biases are 1-D. Input (N, C, H, W) or (C, H, W); fp32, fp64, fp16, bf16; under ``torch.autocast`` input
    and weights are cast to the autocast dtype, as ``F.conv2d`` is. The result is channels-last (the layout the
    kernels write, and the fast one for whatever follows).
    """
    if isinstance(input, torch.fx.Proxy):
        return _fx_node(inception, input, weight_1x1, bias_1x1, weight_3x3, bias_3x3, weight_5x5, bias_5x5,
                        weight_pool, bias_pool, ch1x1)
    fn = "inception"
    _check_tensor(fn, "input", input)
    params = {"weight_1x1": weight_1x1, "bias_1x1": bias_1x1, "weight_3x3": weight_3x3, "bias_3x3": bias_3x3,
              "weight_5x5": weight_5x5, "bias_5x5": bias_5x5, "weight_pool": weight_pool, "bias_pool": bias_pool}
    device_type = input.device.type
    # torch.is_autocast_enabled raises for device types autocast does not know (meta, lazy), where F.conv2d runs.
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(t):  # what autocast casts for F.conv2d: floating-point tensors but fp64 (integers stay, and fail)
            eligible = isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
            return t.to(dtype) if eligible else t

        input = cast(input)
        params = {name: cast(p) for name, p in params.items()}
    # Validation only, recording nothing: under jit.trace it reads the sizes untraced (see untraced).
    with untraced():
        if input.dim() not in (3, 4) or 0 in input.shape[-3:]:
            raise ValueError(f"{fn}(): argument 'input' must be a 3-D (C, H, W) or 4-D (N, C, H, W) tensor with "
                             f"non-zero C, H and W, got shape {list(input.shape)}")
        for name, value in params.items():
            _check_weight(fn, name, value, input, 1 if name.startswith("bias") else 4)
        ch1x1 = _check_int(fn, "ch1x1", ch1x1, 1)
        channels = input.shape[-3]
        for name in ("weight_1x1", "weight_pool"):
            if tuple(params[name].shape[1:]) != (channels, 1, 1):
                raise ValueError(f"{fn}(): argument '{name}' must have shape [out, {channels}, 1, 1] for an input "
                                 f"with {channels} channels, got {list(params[name].shape)}")
        for name in ("weight_1x1", "weight_3x3", "weight_5x5", "weight_pool"):
            # Every width at least 1, as F.conv2d requires of a weight (the reductions are the spatial weights'
            # inputs).
            shape = params[name].shape
            if 0 in shape[:2] or shape[2] != shape[3] or shape[2] % 2 == 0:
                raise ValueError(f"{fn}(): argument '{name}' must be a convolution weight [out, in, k, k] with out "
                                 f"and in at least 1 and an odd k (padding is k // 2), got shape {list(shape)}")
            bias_name = name.replace("weight", "bias")
            if params[bias_name].shape != shape[:1]:
                raise ValueError(f"{fn}(): argument '{bias_name}' must have shape [{shape[0]}] (its weight's "
                                 f"output channels), got {list(params[bias_name].shape)}")
        r3, r5 = params["weight_3x3"].shape[1], params["weight_5x5"].shape[1]
        if params["weight_1x1"].shape[0] != ch1x1 + r3 + r5:
            raise ValueError(f"{fn}(): argument 'weight_1x1' must stack ch1x1 + ch3x3red + ch5x5red = {ch1x1} + "
                             f"{r3} + {r5} output channels, got {params['weight_1x1'].shape[0]}")
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    backend = _resolve(fn, x)
    # The op's autograd (register_autograd) has no forward-mode rule and no functorch support: a tangent through
    # it came back zero, silently. The composite has both.
    if _autograd.forward_ad_active() or torch._C._are_functorch_transforms_active():
        backend = "reference"
    if backend == "reference":
        out = reference.inception(x, *params.values(), ch1x1)
    else:
        if backend == "triton":
            op = torch.ops.classicnets_ext.inception_triton.default
        else:
            _extension.require(fn, op=fn)
            op = torch.ops.classicnets_ext.inception.default
        out = _autograd.call(op, x, *params.values(), ch1x1)[0]
    return out.squeeze(0) if unbatched else out


# Below this many weights (in_features * out_features) the two GEMM layouts of linear() cost the same to
# within noise (LeNet's layers, ResNet-18's classifier).
_LINEAR_COLUMN_MAJOR_MIN_WEIGHTS = 1 << 19
# The rows (first, last) for which linear() runs our kernel (classicnets_ext::linear), by dtype.
# fp32: up to 8, one read of the weight from DRAM (AVX-512's register blocks hold 8 rows of x, or 4 in each of two
# passes over the same weight rows in cache). Beyond, it makes further passes over each block of weight rows and
# becomes compute-bound, and past 1 MB of x it chunks x's columns: cold weights, 2 threads, Intel Xeon, AVX-512,
# against the column-major product, AlexNet's FC6 at 12/16/32 rows 1.49x/1.23x/0.75x, VGG's FC6 at 12/16 rows
# 0.78x/0.67x. MKL on an AMD CPU (_autograd.linear.mkl_on_amd) is another matter: there the kernel, with passes of
# the narrow block, outruns the column-major product at every batch measured on AVX-512 (Zen 5 and Zen 4: 256 rows,
# the most measured) and to 32 rows on our avx2 build (_autograd.linear.fp32_kernel_rows has the figures).
# bf16 and fp16: the kernel reads the weight in its dtype (half the bytes) and sums in fp32, so it turns compute-bound
# at fewer rows. Against F.linear (oneDNN), cold weights, 2 threads, AMD EPYC Zen 5: bf16 at 1/5/6/7/8 rows, AVX-512,
# AlexNet's FC6 1.30x/1.22x/1.23x/1.22x/1.12x, FC7 1.47x/1.23x/1.12x/1.25x/1.15x, a 1000-class FC8
# 1.49x/1.29x/1.18x/1.33x/1.20x, VGG's FC6 1.45x/1.78x/1.65x/1.59x/1.38x (7 rows and more in narrow passes:
# linear_cpu_kernel.cpp); our AVX2 build, whose narrow register block takes 2 rows, not 4, at 1/4/5/6 rows: FC6
# 1.40x/1.23-1.35x/0.95x/0.94-1.01x, FC7 1.59x/1.30-1.68x/1.24x/0.97-1.30x, FC8 1.55x/1.19-1.60x/1.26x/0.94-1.28x (so 4
# rows there). With AVX512-BF16 (the CPU has it and CNX_AVX512_BF16 is not 0: _C.cpu_avx512_bf16()) bf16 runs on its
# pair dot products, twice the FMA's products per instruction, and stays ahead to 12 rows: FC6/FC7/FC8/VGG's FC6 at 8
# rows 1.26x/1.34x/1.43x/1.14x, at 12 1.22-1.25x/1.18-1.19x/1.27-1.35x/1.16-1.18x; at 16 mixed (1.12-1.20x, but VGG's
# FC6 0.97x), 24 and more lost. On Zen 4 (AVX-512 at half width), where oneDNN's bf16 product runs at half width
# too, the kernel stays ahead further: 1.26-1.83x at 8 rows, 1.02-1.63x at 12, 1.13-1.55x at 16, 1.05-1.30x at 20,
# 1.03-1.24x at 24 (two runs each): 16 there. A CPU with AMX-BF16, whose matrix units serve oneDNN's product, keeps 8
# (unmeasured there).
# fp16: F.linear has no fast product on these CPUs (5-6 GB/s at 8 rows, against 45 for one row, a GEMV), so from 2 rows
# to 128 (the most measured) the kernel is 2.3x/5.2x/4.1x F.linear on FC6 at 2/8/128 rows (AVX2: 2.3x/4.1x/3.4x); one
# row stays F.linear (0.71-1.07x).
# A CPU with fp16 matrix units (AMX-FP16), where oneDNN's product is another matter, keeps F.linear in fp16.
def _bf16_kernel_rows() -> int:
    build = _autograd.linear.cpu_build()
    if _extension.build_info().get("cpu_avx512_bf16") and not torch.cpu._is_amx_tile_supported():
        return 16 if build == "avx512-half" else 12
    return 8 if build.startswith("avx512") else 4


_LINEAR_KERNEL_ROWS = {torch.float32: (1, _autograd.linear.fp32_kernel_rows()[0]),
                       torch.bfloat16: (1, _bf16_kernel_rows())}
if not torch.cpu._is_amx_fp16_supported():
    _LINEAR_KERNEL_ROWS[torch.float16] = (2, 128)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _linear_path(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 autocast_cast: bool = False) -> str | None:
    """How linear() computes this call: ``"kernel"`` (classicnets_ext::linear), ``"column_major"`` (``(weight @
    input.T).T``), ``"autocast"`` (_autocast_linear), ``"autocast_rounded"`` / ``"autocast_frozen"`` (compiled
    autocast: _compiled_autocast_path) or None (``F.linear``; anything unusual -- a bad argument included, for
    F.linear to reject -- goes there). ``autocast_cast``: the operands are autocast's casts."""
    if not (isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor)
            and (bias is None or isinstance(bias, torch.Tensor))):
        return None
    tensors = (input, weight) if bias is None else (input, weight, bias)
    # torch.compile records our op like the library's others (fake and autograd registered: Inductor calls the
    # kernel) -- but not under a torch.func transform, which that autograd does not support (a compiled jvp
    # came back zero). torch.export, jit.trace and eager torch.func transforms record or see the plain
    # F.linear, and so do tensor subclasses and torch function modes, whose F.linear handlers must run
    # (torchao's quantized weights implement F.linear, not the addmm of the column-major product). The order
    # keeps small layers cheap, and lets a mode or a tracer see nothing before F.linear (no dim() calls, no
    # TracerWarnings). Dynamo folds is_compiling, is_exporting, the types and the transforms' test (that one
    # stays in the graph as a dead call); it would break the graph on _watched's other tests.
    compiling = torch.compiler.is_compiling()
    if not compiling and (torch._C._has_torch_function(tensors) or _autograd._is_tracing()):
        return None
    # Sizes under torch.compile are symbolic: a test of one guards (a dynamic batch specialised at the row limit:
    # one recompile more than F.linear) or, for a data-dependent one (the rows a mask picks), cannot trace. There
    # only what is known for every size counts: a dynamic batch records F.linear, as one that may exceed it.
    if compiling:
        from torch.fx.experimental.symbolic_shapes import statically_known_true as known
    else:
        known = bool
    if not (input.dim() == 2 and weight.dim() == 2 and known(weight.numel() >= _LINEAR_COLUMN_MAJOR_MIN_WEIGHTS)):
        return None
    if any(type(t) not in _PLAIN_TENSORS for t in tensors):
        return None
    if compiling:
        # A dual level open in the compiled code (forward_ad): Dynamo reads forward_ad's record of it (where
        # the running graph will not), and the op's autograd has no forward-mode rule -- its tangent was None.
        if (_exporting() or torch._C._are_functorch_transforms_active()
                or _autograd.dual_level_open()):
            return None
    elif _autograd._watched():
        return None
    if any(not t.is_cpu or t.layout != torch.strided for t in tensors):
        return None  # (sparse and mkldnn tensors too: F.linear serves them)
    if not (known(input.shape[0] > 0) and known(input.shape[1] == weight.shape[1])
            and (bias is None or (bias.dim() == 1 and known(bias.shape[0] == weight.shape[0])))
            and _backend.get_backend() != "reference"):
        return None
    if torch.is_autocast_enabled("cpu") and not autocast_cast:  # (its casts first: the dtypes may differ)
        if not compiling:
            return "autocast"
        return _compiled_autocast_path(input, weight, bias, tensors, known)
    if not (all(t.dtype == input.dtype for t in tensors)
            and input.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)):
        return None
    # A strided weight would be copied whole on every call (the kernel streams rows): MKL takes it as it is.
    rows = _LINEAR_KERNEL_ROWS.get(input.dtype)
    if (rows is not None and known(rows[0] <= input.shape[0]) and known(input.shape[0] <= rows[1])
            and weight.is_contiguous() and _extension.has_op("linear")
            and (compiling or not _autograd.forward_ad_active())):
        return "kernel"
    if input.dtype in (torch.bfloat16, torch.float16):
        return None  # the column-major product is no faster (bf16, 8-64 rows: 0.5-1.19x F.linear; fp16 slower)
    return "column_major" if not compiling and input.shape[0] > 1 else None


# Under torch.autocast on the CPU, the rows to which an fp32 weight read once in a region (or one that autocast's
# cache would not keep) is rounded as the kernel reads it (else it is cast, as autocast does): autocast's own
# F.linear casts it on every call its cache does not serve, most of its time: AlexNet's FC6 at 8 rows, cold,
# 2-core AMD EPYC (Zen 4, AVX-512), 36.7 ms of which 30.2 the cast.
# Rounding costs the kernel more with each pass over x's rows (the weight vector is rounded again in each): against
# autocast's F.linear on AlexNet's FC6 / FC7 / FC8 and VGG's FC6 (two runs), bf16 4.6-8.0x / 4.5-7.7x / 1.2-1.8x /
# 4.6-9.6x at 1-8 rows, but FC8 0.89x at 16 rows and 0.63x at 32 (at 16 the cast and our bf16 kernel give 1.24x);
# fp16, whose conversion is one instruction, 1.4-8.2x at 1-64 rows (FC8 at one row 1.4-1.6x; 2.9-3.5x at 128).
_AUTOCAST_ROUNDED_ROWS = {torch.bfloat16: 8, torch.float16: 64}


def _rounds_as_read(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> bool:
    """Whether the op can take this weight and bias as they are, rounded to the autocast ``dtype`` as the kernel
    reads them: fp32, the weight contiguous (the kernel streams its rows), the input fp32 or of ``dtype``."""
    return (weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
            and input.dtype in (torch.float32, dtype) and weight.is_contiguous())


def _autocast_caches(weight: torch.Tensor) -> bool:
    """Whether torch.autocast's cache keeps its cast of this fp32 weight until the autocast region ends
    (autocast_mode.cpp's cached_cast: a leaf that requires grad, not a view, the cache enabled)."""
    return torch.is_autocast_cache_enabled() and weight.is_leaf and weight.requires_grad and not weight._is_view()


# A parameter read once in an autocast region (inference with a region per call: `with torch.autocast(...):
# model(x)`) costs its cast more than it saves: the cast reads the fp32 weight, writes a copy (fresh pages each
# region) and the product reads that copy, where rounding as the kernel reads it is one fp32 read. A weight used
# again in the same region is worth the cache (each later product reads half the bytes), so the second use casts
# it. Autocast's cache says nothing of what it holds to Python; the region is told apart by the cast of a
# sentinel parameter, which the cache keeps until the region ends (or torch.clear_autocast_cache()) and makes
# anew in the next one.
_REGION_SENTINEL = torch.zeros(1, requires_grad=True)
_first_region_use: "torch.utils.weak.WeakIdKeyDictionary" = None


def _first_use_in_region(weight: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether this is the first time in the current autocast region (cache enabled) that ``weight`` is read by
    _autocast_linear: recorded, so that the next read in the region is not."""
    global _first_region_use
    if _first_region_use is None:
        from torch.utils.weak import WeakIdKeyDictionary
        _first_region_use = WeakIdKeyDictionary()
    region = _autocast_cached_cast(_REGION_SENTINEL, dtype)
    if _first_region_use.get(weight) is region:
        return False
    _first_region_use[weight] = region  # (held, so no later region's cast can reuse its address)
    return True


def _compiled_autocast_path(input, weight, bias, tensors, known) -> str | None:
    """linear()'s path under torch.compile and CPU autocast, for inference on fp32 parameters: the graph
    records our op (else autocast's F.linear, whose cast of the weight runs in every run of the graph: no cache
    there). ``"autocast_rounded"``: the op on the fp32 weight, rounded as the kernel reads it (one fp32 read,
    where the cast reads it, writes a copy and reads that); ``"autocast_frozen"`` under Inductor's freezing
    (``torch._inductor.config.freezing``, which Dynamo reads here and guards), which folds the cast of a frozen
    parameter into a constant: the op on that constant, half the bytes, in fp16. (``torch.compile(options=
    {"freezing": True})`` sets it after Dynamo has traced: the graph then rounds as it reads.)"""
    dtype = torch.get_autocast_dtype("cpu")
    if not (dtype in _AUTOCAST_ROUNDED_ROWS and _rounds_as_read(input, weight, bias, dtype)
            and _extension.has_op("linear")
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))):  # (forward AD: no path)
        return None
    import torch._inductor.config as inductor_config
    if inductor_config.freezing:
        # bf16: Inductor packs the frozen weight for oneDNN's product, which our kernel does not beat there
        # (0.84-1.01x on AlexNet's and VGG's classifier layers at 1-16 rows, two runs); fp16 has no fast product
        # there (our op on the folded cast: 3.2-4.1x on AlexNet's FC6 at 8-64 rows).
        rows = _LINEAR_KERNEL_ROWS.get(dtype) if dtype == torch.float16 else None
        return ("autocast_frozen" if rows is not None and known(rows[0] <= input.shape[0])
                and known(input.shape[0] <= rows[1]) else None)
    return "autocast_rounded" if known(input.shape[0] <= _AUTOCAST_ROUNDED_ROWS[dtype]) else None


def _autocast_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """linear() under torch.autocast on the CPU (eager, nothing watching, operands of the kernel's shapes:
    _linear_path's "autocast"): what autocast does to F.linear -- each float32 operand cast to the autocast
    dtype, a parameter through autocast's own cache -- then linear() of that dtype, on our kernel where it wins.
    Where no derivative is needed, a float32 weight read for the first time in the region, or one the cache would
    not keep (a frozen one, or the cache off), is not cast at all: our kernel rounds it to the autocast dtype as
    it reads it, the values autocast's cast would have given."""
    dtype = torch.get_autocast_dtype("cpu")
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if (dtype not in (torch.bfloat16, torch.float16) or _autocast_cached_cast is None or not _extension.has_op("linear")
            or any(t.dtype not in (torch.float32, dtype) for t in tensors)):
        return torch.nn.functional.linear(input, weight, bias)
    rows = input.shape[0]
    if (_rounds_as_read(input, weight, bias, dtype) and rows <= _AUTOCAST_ROUNDED_ROWS[dtype]
            and not _autograd._needs_function(tensors)
            and (not _autocast_caches(weight) or _first_use_in_region(weight, dtype))):
        return _autograd.call(torch.ops.classicnets_ext.linear.default, input.to(dtype), weight, bias, watched=False)
    kernel_rows = _LINEAR_KERNEL_ROWS.get(dtype, (1, 0))
    if not kernel_rows[0] <= rows <= kernel_rows[1]:
        # F.linear's casts are the same: made there, they cost no separate calls (~60 us, cold, a third of an fp16
        # GEMV of AlexNet's FC8).
        return torch.nn.functional.linear(input, weight, bias)
    input, weight = _autocast_cached_cast(input, dtype), _autocast_cached_cast(weight, dtype)
    bias = None if bias is None else _autocast_cached_cast(bias, dtype)
    # (F.linear, if it takes them, casts nothing more: autocast leaves operands of its dtype as they are.)
    return _linear_on(_linear_path(input, weight, bias, autocast_cast=True), input, weight, bias)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.linear` (same arguments, results and errors): ``input @ weight.T
    + bias``.

    On the CPU, for a 2-D input and a weight of at least 2^19 entries (the classifiers of AlexNet, ZFNet and
    VGG; the last layer of GoogLeNet and ResNet-50), the product that MKL serves slowly at small batches is
    computed another way:

    - fp32, 1 to 8 rows (inference batch sizes; 256 where torch's products are MKL's on an AMD CPU, which runs slow code
      paths there), bf16 1 to 8 rows (12 with AVX512-BF16, 4 on AVX2), fp16 2 to 128 rows: our kernel,
      ``classicnets_ext::linear`` (csrc/linear/linear_cpu_kernel.cpp), which streams the weight once, front to back, at
      DRAM read speed, with all the rows register-blocked against it (a bf16/fp16 weight is read as it is, half the
      bytes, and the sums are fp32, rounded once: F.linear's results, to within that rounding). Its backward's two
      products are ours as well (``linear_grad_input``: one pass over the weight, in its dtype; ``linear_grad_weight``,
      fp32 only: one write of its gradient), differentiable again as matrix products. Cold weights (the bench's flush of
      twice the L3), 2 threads, Intel Xeon, batch 8, against F.linear: AlexNet's 9216->4096 2.1-2.3x, VGG's 25088->4096
      2.0-2.1x; batch 1, a GEMV either way, 1.0-1.04x. On a 2-core AMD EPYC (Zen 5, AVX-512), AlexNet's FC6: fp32 at 32
      / 128 rows 1.97x / 1.55x F.linear (a forward and backward 1.52x / 1.37x); bf16 1.26-1.38x at 1-8 rows and 1.22x at
      12 (AVX512-BF16's dot products; 1.12-1.30x at 1-8 without); fp16 2.3x at 2 rows, 4-5x at 8-128 (F.linear has no
      fast fp16 product there).
    - more fp32 rows, or fp64: the same GEMM asked for column-major, ``(weight @ input.T + bias[:, None]).T``. The MKL
      in torch's CPU build runs F.linear's row-major product for a few rows no faster on two threads than on one, and
      the column-major product on both, with better kernels: on the 2-core AMD EPYC (AVX2), batch 8, ms, AlexNet's
      9216->4096 59 -> 17, VGG's 25088->4096 193 -> 60.

    - under ``torch.autocast`` (eager, CPU): autocast's casts (a parameter through its cache), then the path of the
      autocast dtype; where no gradient is asked for, the kernel rounds a weight as it reads it instead, the first
      time the region reads it (a region per call never casts) and every time for one the cache would not keep
      (``_autocast_linear``).

    ``torch.compile`` records our op where eager runs the kernel (Inductor calls it: compiled AlexNet keeps the
    fast classifier) and, under ``torch.autocast``, for inference on fp32 parameters at the rows eager rounds
    (the op rounding the weight as it reads it; under Inductor's freezing, fp16 on the folded cast); ``F.linear``
    elsewhere. ``F.linear`` itself serves everything else: small layers (no gain), one fp64 row (a GEMV either
    way), bf16 past its rows, one fp16 row, compiled autocast training, other devices (cuBLAS picks its own
    layout), inputs of other ranks, the ``reference`` backend, ``torch.export`` and ``torch.jit.trace`` (the
    runtime lowers the plain ``linear`` they record: portable programs) and ``torch.func`` transforms.
    The result is contiguous, as ``F.linear``'s is; its sums add the same products in another order.
    """
    if isinstance(input, torch.fx.Proxy):
        return _fx_node(linear, input, weight, bias)
    path = _linear_path(input, weight, bias)
    if path == "autocast":
        return _autocast_linear(input, weight, bias)
    if path in ("autocast_rounded", "autocast_frozen"):  # (compiling)
        dtype = torch.get_autocast_dtype("cpu")
        if path == "autocast_frozen":
            weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
        return _autograd.call(torch.ops.classicnets_ext.linear.default, input.to(dtype), weight, bias, watched=True)
    return _linear_on(path, input, weight, bias)


def _linear_on(path: str | None, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """linear() by the path _linear_path chose for these operands."""
    if path == "kernel":
        # Dispatched (the op's autograd in _registrations, or the graph) where a derivative may be asked for or
        # Dynamo traces; else its direct entry.
        return _autograd.call(torch.ops.classicnets_ext.linear.default, input, weight, bias,
                              watched=torch.compiler.is_compiling())
    if path == "column_major":
        product = torch.mm(weight, input.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, input.t())
        return product.t().contiguous()
    return torch.nn.functional.linear(input, weight, bias)
