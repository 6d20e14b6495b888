"""``linear()``: :func:`torch.nn.functional.linear` with the CPU products that MKL serves slowly at small batches
computed another way -- our kernel (``classicnets_ext::linear``) or the column-major GEMM -- and what it does
under ``torch.autocast`` and ``torch.compile``. ``ops.linear`` is this function; its docstring has the paths
and their measurements, ``_linear_path`` the rules that pick one.
"""
from __future__ import annotations

import torch

from . import _autograd, _backend, _extension

# _C's cast through autocast's own cache (csrc/module.cpp); an older _C lacks it.
_autocast_cached_cast = getattr(_extension._C, "autocast_cached_cast", None)


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
        if (_autograd.exporting() or torch._C._are_functorch_transforms_active()
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
        from .ops import _fx_node  # (ops imports this module)
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
