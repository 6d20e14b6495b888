"""The guarded load of the compiled extension ``classicnets_ext._C``.

Importing classicnets_ext never fails because ``_C`` cannot load (not built, built against another torch,
missing CUDA runtime...). The error is kept, and every op that needs ``_C`` re-raises it with a hint on
how to rebuild; the ``reference`` and ``triton`` backends keep working.
"""
from __future__ import annotations

import importlib
import os

import torch  # noqa: F401  (loads libc10 / libtorch, which _C links against)

REBUILD_HINT = (
    "Rebuild it against the installed torch with `pip install --no-build-isolation -e .` "
    "(or `make install`) from the classicnets_ext checkout."
)

# importlib, not `from . import _C`: for a module that is not there, the latter reports "cannot import name '_C'
# from partially initialized module ... (most likely due to a circular import)", which sends one looking
# for a circular import in an unbuilt checkout.
try:
    _C = importlib.import_module(f"{__package__}._C")  # its import runs the C++ op registrations
    LOAD_ERROR: BaseException | None = None
    NOT_BUILT = False
except ModuleNotFoundError as e:
    _C = None
    LOAD_ERROR = e
    NOT_BUILT = e.name == f"{__package__}._C"  # (not some module _C itself imports)
    if NOT_BUILT:
        LOAD_ERROR = ImportError(
            f"the extension is not built (no compiled {__package__}._C in "
            f"{os.path.dirname(os.path.abspath(__file__))}): run `pip install --no-build-isolation -e .` "
            "(or `make install`) in the classicnets_ext checkout")
except Exception as e:  # ImportError, OSError (undefined symbol: ABI mismatch) ...
    _C = None
    LOAD_ERROR = e
    NOT_BUILT = False

# The ops the loaded _C registered (names in torch.ops.classicnets_ext), read once here, before the Triton
# twins join the namespace. A _C built from an older checkout lacks the newer ops: those run on the
# 'reference' and 'triton' backends until it is rebuilt. A frozenset global, so torch.compile guards on it.
CPP_OPS: frozenset[str] = frozenset(
    name.split("::", 1)[1].split(".", 1)[0] for name in torch._C._dispatch_get_all_op_names()
    if name.startswith("classicnets_ext::")
) if _C is not None else frozenset()


def available() -> bool:
    return _C is not None


def load_error_hint() -> str:
    """Why _C is missing and what to do, in one sentence or two (empty when it loaded)."""
    if _C is not None:
        return ""
    if NOT_BUILT:  # the message says how to build it
        return f"{type(LOAD_ERROR).__name__}: {LOAD_ERROR}."
    return f"{type(LOAD_ERROR).__name__}: {LOAD_ERROR}. {REBUILD_HINT}"


def has_op(name: str) -> bool:
    """Whether the loaded _C defines the op ``torch.ops.classicnets_ext.<name>``."""
    return name in CPP_OPS


def require(what: str, op: str | None = None) -> None:
    """Raise a RuntimeError that explains why ``what`` cannot run without ``_C`` (or, given ``op``, without
    a _C that defines that op)."""
    if _C is None:
        raise RuntimeError(
            f"{what} needs the compiled extension classicnets_ext._C, which failed to load: {load_error_hint()} "
            "The 'reference' and 'triton' backends work without it."
        ) from LOAD_ERROR
    if op is not None and not has_op(op):
        raise RuntimeError(
            f"{what} needs the op classicnets_ext::{op}, which the loaded classicnets_ext._C does not define: "
            f"it was built from sources older than this package. {REBUILD_HINT} "
            "The 'reference' and 'triton' backends work without it."
        )


def build_info() -> dict:
    """How _C was compiled and what its CPU kernels run on: {'version', 'cuda', 'cuda_archs', 'cpu_capability',
    'cpu_avx512_bf16', 'cpu_vendor', 'cpu_avx512_full_width'}; empty when not loaded."""
    if _C is None:
        return {}
    # A _C built from older sources lacks the later queries: its kernels do without what they report.
    later = {"cpu_avx512_bf16": False, "cpu_vendor": "other",
             "cpu_avx512_full_width": _C.cpu_capability() == "avx512"}
    return {**_C.build_info(), "cpu_capability": _C.cpu_capability(),
            **{name: getattr(_C, name)() if hasattr(_C, name) else default for name, default in later.items()}}
