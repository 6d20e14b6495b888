"""What this CPU can run, read from /proc/cpuinfo with no other import: shared by the tests (``_helpers``) and by
``tests/sanitize.py``, which must not import torch or classicnets_ext before it has chosen the build to load."""
from __future__ import annotations

import platform

# The AVX-512 subsets ATen's and our avx512 builds use (csrc/common/cpu_dispatch.cpp checks the same four).
AVX512_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})


def cpu_flags() -> frozenset[str]:
    """The first CPU's flags; empty where /proc/cpuinfo is missing or unreadable (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_has_avx512() -> bool:
    return AVX512_FLAGS <= cpu_flags()


def machine_isa() -> str:
    """This CPU's best instruction set by csrc/common/cpu_dispatch.cpp's rule: the build its dispatcher picks."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "DEFAULT"
    flags = cpu_flags()
    if not {"avx2", "fma"} <= flags:
        return "DEFAULT"
    return "AVX512" if AVX512_FLAGS <= flags else "AVX2"
