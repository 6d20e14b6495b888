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
from ._linear import linear  # noqa: F401 (ops.linear; how it picks a product is _linear.py)


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


def _capturing() -> bool:
    """Whether this run is being recorded for a replay that may come in another grad mode: ``torch.jit.trace``
    (it even re-traces under ``no_grad`` to check the graph) or ``torch.export``. Decisions taken here on
    grad mode would be frozen into the graph; ``torch.compile`` guards on grad mode instead."""
    if torch.compiler.is_compiling():
        return _autograd.exporting()
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
