"""Compile every Triton kernel the ops launch, as the GPU would, on a machine without one: ``make triton-compile``.

The tests run the Triton kernels under triton's interpreter, which executes them in numpy and never compiles
them, so an error that only the compiler sees (a type it cannot lower, a constexpr misuse) passes them. This
script compiles the kernels for real, for an sm_90 (H100/H200) target, through a stand-in driver that reports
that target: the ops run on CPU tensors with the triton backend, and every launch becomes a warmup (compile
only: nothing runs and the outputs are garbage); the autotuner "times" each config by compiling it. It drives
each op over dtypes, layouts and parameters, forward, backward and with indices, and fails when a
specialisation does not compile or a kernel of ``classicnets_ext.triton_kernels`` was never reached. It leans
on triton internals (the active driver, ``JITFunction.run``); checked with triton 3.6 (the GPU machine's) and
3.8. ``TRACE=1`` prints each compile error's traceback.
"""
from __future__ import annotations

import collections
import importlib
import os
import pkgutil
import sys
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # triton must compile, not interpret

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.driver import CudaDriver  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import classicnets_ext  # noqa: E402
from classicnets_ext import _backend, ops  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


class _SM90(CudaDriver):
    """A CUDA driver that has no device: it names the target and a stream, and never loads libcuda."""

    def __init__(self):  # CudaDriver's loads the CUDA utilities
        pass

    def get_current_target(self):
        return TARGET

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        def bench(kernel_call, quantiles=None, **kwargs):
            kernel_call()  # compiles the config
            return [0.0] * len(quantiles) if quantiles else 0.0
        return bench


compiled: collections.Counter = collections.Counter()
errors: collections.Counter = collections.Counter()
_run = JITFunction.run


def _compile_only(self, *args, grid, warmup, **kwargs):
    try:
        kernel = _run(self, *args, grid=grid, warmup=True, **kwargs)
    except Exception as error:
        message = str(error).strip().splitlines()
        errors[(self.fn.__name__, f"{type(error).__name__}: {message[0][:200] if message else ''}")] += 1
        if os.environ.get("TRACE"):
            traceback.print_exc()
        return None
    compiled[self.fn.__name__] += 1
    return kernel


def _our_kernels() -> set[str]:
    import classicnets_ext.triton_kernels as package

    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for value in vars(module).values():
            fn = value.fn if isinstance(value, Autotuner) else value
            if isinstance(fn, JITFunction) and fn.fn.__name__.endswith("_kernel"):  # entry points, not helpers
                names.add(fn.fn.__name__)
    return names


def _attempt(label, call) -> None:
    """Run an op; a host-side failure after a warmup launch (garbage outputs) is reported, not fatal."""
    try:
        call()
    except Exception as error:
        print(f"host-side: {label}: {type(error).__name__}: {str(error).strip()[:160]}")


def _drive() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for channels_last in (False, True):
            x = torch.randn(2, 16, 13, 13, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            xg = x.detach().requires_grad_()
            case = (str(dtype), "channels_last" if channels_last else "nchw")
            for k, s, p, ceil in ((3, 2, 0, False), (2, 2, 0, False), (3, 1, 1, True), (5, 3, 2, True)):
                _attempt(("max_pool2d", *case, k), lambda: ops.max_pool2d(x, k, s, p, ceil_mode=ceil))
                _attempt(("max_pool2d indices", *case, k),
                         lambda: ops.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True))
                _attempt(("max_pool2d backward", *case, k),
                         lambda: ops.max_pool2d(xg, k, s, p, ceil_mode=ceil).sum().backward())
            for size in (3, 5, 40):  # 40 > 16: the running-sum path
                _attempt(("lrn", *case, size), lambda: ops.local_response_norm(x, size, k=2.0))
                _attempt(("lrn backward", *case, size),
                         lambda: ops.local_response_norm(xg, size, k=2.0).sum().backward())
            for relu in (False, True):
                _attempt(("max_pool2d_lrn", *case, relu),
                         lambda: ops.max_pool2d_lrn(x, 3, stride=2, size=5, k=2.0, relu=relu))
                _attempt(("max_pool2d_lrn backward", *case, relu),
                         lambda: ops.max_pool2d_lrn(xg, 3, stride=2, size=5, k=2.0, relu=relu).sum().backward())
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(2, 32, 9, 9, dtype=dtype)
        for style in ("torchvision", "paper"):
            block = classicnets_ext.nn.Inception(32, 8, 12, 16, 4, 8, 8, style=style).to(dtype)
            _attempt(("inception", style, str(dtype)), lambda: block(x))
            _attempt(("inception backward", style, str(dtype)),
                     lambda: block(x.detach().requires_grad_()).float().sum().backward())


def _drive_large() -> None:
    """The specialisations only tensors past 2^31 elements reach (IDX64: 64-bit offsets), on meta tensors
    (nothing is allocated; the launchers need only shapes and strides), and a fused LRN window too wide for
    the forward's register ring. The interpreter runs these; two failed only to compile: a loop-carried
    argmax that the int64 window starts turned int64, and an int64 cast of a channel stride triton had
    specialised to the constant 1."""
    from classicnets_ext import _layouts
    from classicnets_ext.triton_kernels import _launch, lrn, maxpool, pool_lrn

    def launch(label, launcher, *args):
        _attempt(label, lambda: _launch.direct(launcher)(*args))

    pool = ([5, 5], [2, 2], [2, 2])
    for dtype, shape in ((torch.float32, (1, 1, 2**16, 2**15 + 16)), (torch.float16, (1, 8, 2**14, 2**14 + 64))):
        x = torch.empty(shape, dtype=dtype, device="meta")
        for save in (False, True):
            launch(("max_pool2d idx64", str(dtype), save), maxpool.max_pool2d_forward, x, *pool, [1, 1], False, save)
            launch(("max_pool2d_lrn idx64", str(dtype), save), pool_lrn.max_pool2d_lrn_forward, x, *pool, False, 5,
                   1e-4, 0.75, 1.0, True, save)
        y, argmax = _layouts.max_pool2d_outputs_like(x, *pool, [1, 1], False, True)
        launch(("max_pool2d backward idx64", str(dtype)), maxpool.max_pool2d_backward, y, argmax, list(shape),
               *pool, [1, 1])
    for shape in ((1, 2**31, 1), (1, 2**16, 2**15 + 16)):  # S = 1: a channel stride of 1, specialised
        x = torch.empty(shape, dtype=torch.float16, device="meta")
        launch(("lrn idx64", shape), lrn.lrn_forward, x, 5, 1e-4, 0.75, 1.0)
        launch(("lrn backward idx64", shape), lrn.lrn_backward, torch.empty_like(x), x, 5, 1e-4, 0.75, 1.0)
    x = torch.randn(1, 200, 5, 5)
    launch(("max_pool2d_lrn wide window",), pool_lrn.max_pool2d_lrn_forward, x, [3, 3], [2, 2], [0, 0], False, 150,
           1e-4, 0.75, 1.0, True, True)


def main() -> int:
    driver.set_active(_SM90())
    JITFunction.run = _compile_only
    _backend._TRITON_INTERPRET = True  # lets CPU tensors take the triton backend; triton itself compiles
    with classicnets_ext.use_backend("triton"):
        _drive()
    _drive_large()
    print(f"triton {triton.__version__}, torch {torch.__version__}, target sm_{TARGET.arch}: compiled "
          f"{sum(compiled.values())} specialisations of {len(compiled)} kernels")
    for name, count in sorted(compiled.items()):
        print(f"  {name}: {count}")
    for (name, message), count in sorted(errors.items()):
        print(f"compile error ({count}x) in {name}: {message}")
    missing = _our_kernels() - set(compiled)
    if missing:
        print(f"never compiled: {sorted(missing)}")
    return 1 if errors or missing else 0


if __name__ == "__main__":
    sys.exit(main())
