"""`make cuda-emu`: builds the CUDA emulator's library in its three variants and runs tests/test_cuda_emu.py against
each -- plain, under AddressSanitizer + UBSan (memcheck, misaligned loads) and under ThreadSanitizer (racecheck) --
then shows that the planted bugs of tests/emu/planted_bugs.py make it fail. Any sanitizer report fails the run.

    python tests/emu/run.py [plain|asan|tsan ...] [--no-planted] [-- pytest arguments]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402
import planted_bugs  # noqa: E402


# The cases each variant runs (pytest -k; None: all). ThreadSanitizer slows the emulated threads ~15x, so
# its run keeps to fp32 (each kernel and launch path once) plus fp16 for the row kernels, whose staging
# loads 8 halves per thread instead of 4 floats; plain and ASan run every case.
SELECTION = {"tsan": "float32 or (rows and float16) or emulator or non_finite"}


def run_suite(variant, library, extra):
    # --capture=sys: a sanitizer writes its report to fd 2 and exits; pytest's fd capture would swallow it.
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "--capture=sys", "-p", "no:cacheprovider",
           os.path.join(build.ROOT, "tests", "test_cuda_emu.py")] + extra
    if SELECTION.get(variant) and "-k" not in extra:
        cmd += ["-k", SELECTION[variant]]
    return subprocess.run(cmd, cwd=build.ROOT, env=planted_bugs.sanitized_env(variant, library)).returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help=f"of {list(build.VARIANTS)} (default: all)")
    parser.add_argument("--no-planted", action="store_true", help="skip the planted-bug runs")
    args, extra = parser.parse_known_args()
    if set(args.variants) - set(build.VARIANTS):
        parser.error(f"unknown variants: {sorted(set(args.variants) - set(build.VARIANTS))}")
    extra = [a for a in extra if a != "--"]
    times = []
    for variant in args.variants or list(build.VARIANTS):
        started = time.time()
        print(f"cuda-emu: building {variant}", flush=True)
        library = build.build(variant)
        built = time.time()
        print(f"cuda-emu: running tests/test_cuda_emu.py ({variant})", flush=True)
        if run_suite(variant, library, extra) != 0:
            raise SystemExit(f"cuda-emu: the emulated suite failed ({variant})")
        times.append(f"{variant}: build {built - started:.0f} s, run {time.time() - built:.0f} s")
    if not args.no_planted:
        started = time.time()
        planted_bugs.main()
        times.append(f"planted bugs: {time.time() - started:.0f} s")
    print("cuda-emu: " + "; ".join(times))


if __name__ == "__main__":
    main()
