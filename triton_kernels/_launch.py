"""How the launchers start their kernels, and the eager shortcut past the dispatcher.

Each launcher (one per ``*_triton`` op) is registered with ``torch.library.triton_op`` so that torch.compile,
export and AOT autograd see the op, and trace its kernels through ``wrap_triton``. A plain eager call pays
for that machinery on every call: the dispatcher's round trip into Python, the custom-op wrapper's checks
and ``wrap_triton``'s wrapper object -- ~40 us on these 2-core CPUs, more than the small kernels of
AlexNet's late layers take on a GPU. ``direct`` makes a launcher callable straight from Python for
``classicnets_ext._autograd``, which uses it only where nothing can watch the call (see
``_autograd._below_autograd``): there ``grid`` hands out the kernel itself.
"""
from __future__ import annotations

import functools
import threading

from torch.library import wrap_triton

_state = threading.local()


def grid(kernel, grid):
    """``kernel[grid]``, to be called with the launch arguments: through ``wrap_triton`` (which tracing turns
    into a graph node) unless a ``direct`` call is running on this thread."""
    if getattr(_state, "direct", False):
        return kernel[grid]
    return wrap_triton(kernel)[grid]


def direct(launcher):
    """``launcher`` run with its kernels started as they are: for plain tensors outside any tracing only."""
    @functools.wraps(launcher)
    def run(*args):
        before = getattr(_state, "direct", False)
        _state.direct = True
        try:
            return launcher(*args)
        finally:
            _state.direct = before

    return run
