"""What this CPU can run, read from /proc/cpuinfo with no other import: shared by the tests (``_helpers``) and by
``tests/sanitize.py``, which must not import torch or classicnets_ext before it has chosen the build to load."""
from __future__ import annotations

import platform

# The AVX-512 subsets ATen's and our avx512 builds use (csrc/common/cpu_dispatch.cpp checks the same four).
AVX512_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})


def _first_cpu() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo; empty where it is missing or unreadable (not Linux)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first CPU's block
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return {}
    return fields


def cpu_flags() -> frozenset[str]:
    """The first CPU's flags; empty where /proc/cpuinfo is missing or unreadable (not Linux)."""
    return frozenset(_first_cpu().get("flags", "").split())


def cpu_vendor_family() -> tuple[str, int]:
    """(vendor id, family) of the first CPU, the family as cpuid's (base plus extended); ("", 0) where
    /proc/cpuinfo is missing or unreadable."""
    fields = _first_cpu()
    return fields.get("vendor_id", ""), int(fields.get("cpu family", "0"))


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
