"""The guarded load of the compiled extension ``classicnets_ext._C``.

Importing classicnets_ext never fails because ``_C`` cannot load (not built, built against another torch,
missing CUDA runtime...). The error is kept, and every op that needs ``_C`` re-raises it with a hint on
how to rebuild; the ``reference`` and ``triton`` backends keep working.
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libc10 / libtorch, which _C links against)

try:
    from . import _C  # noqa: F401  (its import runs the C++ op registrations)
    LOAD_ERROR: BaseException | None = None
except Exception as e:  # ImportError, OSError (undefined symbol: ABI mismatch) ...
    _C = None
    LOAD_ERROR = e

# The ops the loaded _C registered (names in torch.ops.classicnets_ext), read once here, before the Triton
# twins join the namespace. A _C built from an older checkout lacks the newer ops: those run on the
# 'reference' and 'triton' backends until it is rebuilt. A frozenset global, so torch.compile guards on it.
CPP_OPS: frozenset[str] = frozenset(
    name.split("::", 1)[1].split(".", 1)[0] for name in torch._C._dispatch_get_all_op_names()
    if name.startswith("classicnets_ext::")
) if _C is not None else frozenset()

REBUILD_HINT = (
    "Rebuild it against the installed torch with `pip install --no-build-isolation -e .` "
    "(or `make install`) from the classicnets_ext checkout."
)


def available() -> bool:
    return _C is not None


def has_op(name: str) -> bool:
    """Whether the loaded _C defines the op ``torch.ops.classicnets_ext.<name>``."""
    return name in CPP_OPS


def require(what: str, op: str | None = None) -> None:
    """Raise a RuntimeError that explains why ``what`` cannot run without ``_C`` (or, given ``op``, without
    a _C that defines that op)."""
    if _C is None:
        raise RuntimeError(
            f"{what} needs the compiled extension classicnets_ext._C, which failed to load: "
            f"{type(LOAD_ERROR).__name__}: {LOAD_ERROR}. {REBUILD_HINT} "
            "The 'reference' and 'triton' backends work without it."
        ) from LOAD_ERROR
    if op is not None and not has_op(op):
        raise RuntimeError(
            f"{what} needs the op classicnets_ext::{op}, which the loaded classicnets_ext._C does not define: "
            f"it was built from sources older than this package. {REBUILD_HINT} "
            "The 'reference' and 'triton' backends work without it."
        )


def build_info() -> dict:
    """How _C was compiled: {'version', 'cuda', 'cuda_archs', 'cpu_capability'}; empty when not loaded."""
    if _C is None:
        return {}
    return {**_C.build_info(), "cpu_capability": _C.cpu_capability()}
