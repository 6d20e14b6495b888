"""Shows that the CUDA emulator's harness fails on real kernel bugs: each planted bug is one edit of a kernel
source, compiled into the sanitizer variant meant to catch it, and run through tests/test_cuda_emu.py. The run
must fail, with the sanitizer's report (or a wrong answer) in its output; a planted bug the harness lets pass
fails this script. Each edit must match its source exactly once, so that a changed kernel cannot turn a
planted bug into a silent no-op.

    python tests/emu/planted_bugs.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402

ROOT = build.ROOT

# (name, variant, source, text, replacement, pytest -k selection, what the output must show)
PLANTED = [
    # The LRN row forward reads its neighbours' staged channels: without the barrier after staging, a
    # thread reads shared memory another thread may still be writing.
    ("lrn-rows-missing-syncthreads", "tsan", "csrc/lrn/lrn_cuda.cu",
     "    stage<VEC>(x + offset, xs, count);\n    __syncthreads();\n",
     "    stage<VEC>(x + offset, xs, count);\n",
     "test_lrn_matches_torch and rows-vectorised and float32",
     "WARNING: ThreadSanitizer: data race"),
    # The fused row kernel stages each pooled value one slot too far: the last one overruns shared memory.
    ("pool-lrn-rows-shared-index-off-by-one", "asan", "csrc/pool_lrn/pool_lrn_cuda.cu",
     "      ps[e] = pool_row_element<acc_t>(x, pooled, argmax, pb, offset + e);\n",
     "      ps[e + 1] = pool_row_element<acc_t>(x, pooled, argmax, pb, offset + e);\n",
     "test_max_pool2d_lrn_matches_torch and rows and float32 and not grid-stride and not wide",
     "ERROR: AddressSanitizer: heap-buffer-overflow"),
    # The fused tile kernel without its barrier at the end of a tile: on a strided grid, a thread stages the
    # block's next tile while its neighbours still sum the last one.
    ("pool-lrn-tiles-missing-trailing-syncthreads", "tsan", "csrc/pool_lrn/pool_lrn_cuda.cu",
     "    __syncthreads();  // the next tile overwrites the staged values\n",
     "",
     "test_max_pool2d_lrn_matches_torch and grid-stride-tiles and float32",
     "WARNING: ThreadSanitizer: data race"),
    # The column backward's ring in global memory strided by the block, not the grid: the two blocks' rings
    # overlap slot by slot, and blocks run at once (on a GPU, and two at a time in the emulator).
    ("lrn-global-ring-strided-by-block", "tsan", "csrc/lrn/lrn_cuda.cu",
     "const int64_t stride = global_ring ? cuda::grid_threads() : int64_t(blockDim.x);",
     "const int64_t stride = int64_t(blockDim.x);",
     "test_lrn_matches_torch and columns-global-ring-blocks and float32",
     "WARNING: ThreadSanitizer: data race"),
    # The LRN row kernels pack 16 bytes per load without checking the data's alignment: a channels-last view
    # one element into its storage is staged by misaligned loads (a fault on a GPU; UBSan's report here).
    ("lrn-rows-packs-ignore-alignment", "asan", "csrc/lrn/lrn_cuda.cu",
     "return cuda::is_aligned(d, 16);",
     "return d != nullptr;",
     "test_lrn_misaligned_channels_last_rows and float32",
     "runtime error: reference binding to misaligned address"),
    # The Inception epilogue takes 16-byte packs without checking where its output slice starts: 8 fp16 columns
    # at channel 4 of a 24-channel output are stored by misaligned 16-byte stores (UBSan's report here).
    ("inception-epilogue-packs-ignore-slice-alignment", "asan", "csrc/inception/inception_cuda.cu",
     "cuda::is_aligned(scatter.dst[i], 16);",
     "scatter.dst[i] != nullptr;",
     "test_inception_matches_torch and unaligned-slice and float16",
     "misaligned address"),
]


def plant(name, source, text, replacement):
    with open(os.path.join(ROOT, source)) as f:
        code = f.read()
    if code.count(text) != 1:
        raise SystemExit(f"{name}: the text to edit occurs {code.count(text)} times in {source}, not once; "
                         "update tests/emu/planted_bugs.py to the kernel as it is now")
    out = os.path.join(ROOT, "build", "emu", "planted", name)
    os.makedirs(out, exist_ok=True)
    copy = os.path.join(out, os.path.basename(source))
    with open(copy, "w") as f:
        f.write(code.replace(text, replacement))
    return out, copy


def sanitized_env(variant, library):
    env = dict(os.environ, CNX_EMU_LIB=library, OMP_NUM_THREADS="1")
    runtime = build.sanitizer_runtime(variant)
    if runtime:
        # libstdc++ too: Python does not link it, and the sanitizer's __cxa_throw interceptor needs it loaded
        # when the sanitizer starts (else "CHECK failed: real___cxa_throw" at the first C++ exception).
        env["LD_PRELOAD"] = f"{runtime} {build.compiler_file('libstdc++.so')}"
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    env["TSAN_OPTIONS"] = "halt_on_error=1:report_signal_unsafe=0"
    return env


def main():
    failures = []
    for name, variant, source, text, replacement, select, expected in PLANTED:
        started = time.time()
        out, copy = plant(name, source, text, replacement)
        library = build.build(variant, out=out, replace={source: copy})
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "--capture=sys", "-p", "no:cacheprovider",
                              os.path.join(ROOT, "tests", "test_cuda_emu.py"), "-k", select],
                             cwd=ROOT, env=sanitized_env(variant, library), capture_output=True, text=True)
        output = run.stdout + run.stderr
        reported = expected in output
        # A race can corrupt the values before ThreadSanitizer has both of its accesses in view (its shadow keeps a
        # few accesses per word): the selected test then fails on the values, which catches the bug too (seen once
        # in ~10 CI runs, pool-lrn-tiles-missing-trailing-syncthreads: "Tensor-likes are not close", no report).
        wrong_values = variant == "tsan" and "AssertionError: Tensor-likes are not close" in output
        caught = run.returncode != 0 and (reported or wrong_values)
        how = "" if reported or not caught else ", by wrong values, without a ThreadSanitizer report"
        print(f"planted bug {name}: {'caught' if caught else 'NOT CAUGHT'} ({variant}, exit {run.returncode}, "
              f"{time.time() - started:.0f} s{how})", flush=True)
        if not caught:
            failures.append(name)
            print(output[-4000:])
    if failures:
        raise SystemExit(f"the emulated suite passed with planted bugs: {failures}")


if __name__ == "__main__":
    main()
