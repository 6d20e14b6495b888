"""`make sanitize`: the CPU kernels built with AddressSanitizer and UndefinedBehaviorSanitizer, and the op
tests' CPU cases run against that build. Any sanitizer report stops the run with a non-zero exit.

    python tests/sanitize.py [--no-build] [-- pytest arguments]

The sanitized extension is built apart from the normal one (build/sanitize/, CNX_SANITIZE=address,undefined,
without CUDA) and imported from a copy of the package (build/sanitize/pkg) put first on PYTHONPATH, with the
sanitizer runtimes preloaded into Python (which is not itself instrumented).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "sanitize")
PKG = os.path.join(OUT, "pkg")
SANITIZE = "address,undefined"
# The CPU cases of the op tests: compile/opcheck/gradcheck/network shapes add minutes under the sanitizer,
# not kernel coverage (the same selection as the GPU suite's memcheck, on the CPU).
SELECTION = "cpu and not compile and not opcheck and not gradcheck and not network and not inductor"
TESTS = ["tests/test_lrn.py", "tests/test_maxpool.py", "tests/test_pool_lrn.py", "tests/test_inception.py",
         "tests/test_fuzz.py"]


def compiler_file(name: str) -> str:
    return subprocess.check_output([os.environ.get("CXX", "g++"), f"-print-file-name={name}"], text=True).strip()


def build() -> None:
    env = dict(os.environ, CNX_SANITIZE=SANITIZE, FORCE_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp", os.path.join(OUT, "temp"),
                    "--build-lib", os.path.join(OUT, "lib")], cwd=ROOT, env=env, check=True)
    shutil.rmtree(PKG, ignore_errors=True)
    pkg = os.path.join(PKG, "classicnets_ext")
    shutil.copytree(os.path.join(ROOT, "classicnets_ext"), pkg,
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    shutil.copytree(os.path.join(ROOT, "triton_kernels"), os.path.join(pkg, "triton_kernels"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    (library,) = glob.glob(os.path.join(OUT, "lib", "classicnets_ext", "_C*.so"))
    shutil.copy2(library, pkg)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true", help="reuse build/sanitize/pkg")
    args, extra = parser.parse_known_args()
    if not args.no_build:
        build()
    env = dict(os.environ, PYTHONPATH=PKG + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="2",
               CNX_FUZZ_EXAMPLES=os.environ.get("CNX_FUZZ_EXAMPLES", "50"))
    # libstdc++ too: the sanitizer's __cxa_throw interceptor needs it loaded when the runtime starts.
    env["LD_PRELOAD"] = " ".join(compiler_file(n) for n in ("libasan.so", "libubsan.so", "libstdc++.so"))
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    # Run from build/sanitize: from the checkout, the current directory (first on sys.path) would give
    # Python the checkout's own package.
    check = subprocess.run([sys.executable, "-c", "import classicnets_ext, sys; print(classicnets_ext.__file__)"],
                           cwd=OUT, env=env, capture_output=True, text=True)
    if check.returncode != 0 or not check.stdout.startswith(PKG):
        print(f"the sanitized package did not load: {check.stdout}{check.stderr}", file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "--capture=sys", "-p", "no:cacheprovider",
           "--rootdir", ROOT, *(os.path.join(ROOT, t) for t in TESTS), "-m", "not slow"] + (extra or ["-k", SELECTION])
    return subprocess.run(cmd, cwd=OUT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
