"""`make sanitize`: the CPU kernels built with AddressSanitizer and UndefinedBehaviorSanitizer, and the op
tests' CPU cases and the fuzz tests run against that build. Any sanitizer report stops the run with a non-zero exit.

    python tests/sanitize.py [--ci] [--no-build] [-- pytest arguments]

The sanitized extension is built apart from the normal one (build/sanitize/, CNX_SANITIZE=address,undefined,
without CUDA) and imported from a copy of the package (build/sanitize/pkg) put first on PYTHONPATH, with the
sanitizer runtimes preloaded into Python (which is not itself instrumented).

--ci (`make sanitize-ci`, run by CI) is the same check with a build cut to fit CI's budget: the CPU kernels
compiled for the baseline and for this CPU's own instruction set only (CNX_CPU_ISAS, in build/sanitize-ci/), and
the tests run with ATEN_CPU_CAPABILITY naming that set (checked before any test: the build that runs is the one
asked for; the set left out aborts if dispatched to). The build is what costs (under 3 minutes on 2 idle cores); the
tests themselves take under a minute, so CI runs all of the selection.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time

from _cpu import machine_isa  # tests/, this script's directory, is first on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANITIZE = "address,undefined"
# The CPU cases of the op tests and the fuzz tests (CPU only, which the selection once missed). compile/opcheck/
# gradcheck/network shapes add time under the sanitizer, not kernel coverage (the GPU suite's memcheck selection).
SELECTION = "(cpu or fuzz) and not compile and not opcheck and not gradcheck and not network and not inductor"
# test_eager.py: the one-call eager entries' C++ (argument parsing, autograd nodes) on their CPU cases.
TESTS = ["tests/test_lrn.py", "tests/test_maxpool.py", "tests/test_pool_lrn.py", "tests/test_inception.py",
         "tests/test_linear.py", "tests/test_eager.py",
         "tests/test_fuzz.py"]


def compiler_file(name: str) -> str:
    return subprocess.check_output([os.environ.get("CXX", "g++"), f"-print-file-name={name}"], text=True).strip()


def build(out: str, isas: str | None) -> None:
    env = dict(os.environ, CNX_SANITIZE=SANITIZE, FORCE_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    env.pop("CNX_CPU_ISAS", None)
    if isas:
        env["CNX_CPU_ISAS"] = isas
    subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp", os.path.join(out, "temp"),
                    "--build-lib", os.path.join(out, "lib")], cwd=ROOT, env=env, check=True)
    pkg_root = os.path.join(out, "pkg")
    shutil.rmtree(pkg_root, ignore_errors=True)
    pkg = os.path.join(pkg_root, "classicnets_ext")
    shutil.copytree(os.path.join(ROOT, "classicnets_ext"), pkg,
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    shutil.copytree(os.path.join(ROOT, "triton_kernels"), os.path.join(pkg, "triton_kernels"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    (library,) = glob.glob(os.path.join(out, "lib", "classicnets_ext", "_C*.so"))
    shutil.copy2(library, pkg)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ci", action="store_true",
                        help="CI's cut: kernels for the baseline and this CPU's ISA only (build/sanitize-ci)")
    parser.add_argument("--no-build", action="store_true", help="reuse the last build (build/sanitize*/pkg)")
    args, extra = parser.parse_known_args()
    extra = extra[1:] if extra[:1] == ["--"] else extra  # the usage's separator, not a path for pytest
    out = os.path.join(ROOT, "build", "sanitize-ci" if args.ci else "sanitize")
    pkg = os.path.join(out, "pkg")
    isa = machine_isa() if args.ci else None
    start = time.monotonic()
    if not args.no_build:
        build(out, ",".join(dict.fromkeys(["DEFAULT", isa])) if isa else None)
        print(f"sanitize: built in {time.monotonic() - start:.0f} s", flush=True)
    # The fuzz tests run their CI default (200 examples per op) unless CNX_FUZZ_EXAMPLES says otherwise.
    env = dict(os.environ, PYTHONPATH=pkg + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="2")
    if isa:
        # The build that runs must be the one built: the dispatcher would otherwise take the CPU's best.
        env["ATEN_CPU_CAPABILITY"] = isa.lower()
    # libstdc++ too: the sanitizer's __cxa_throw interceptor needs it loaded when the runtime starts.
    env["LD_PRELOAD"] = " ".join(compiler_file(n) for n in ("libasan.so", "libubsan.so", "libstdc++.so"))
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    # Run from build/sanitize: from the checkout, the current directory (first on sys.path) would give
    # Python the checkout's own package.
    check = subprocess.run([sys.executable, "-c", "import classicnets_ext; from classicnets_ext import _extension; "
                            "print(classicnets_ext.__file__, _extension.build_info().get('cpu_capability'))"],
                           cwd=out, env=env, capture_output=True, text=True)
    loaded = check.stdout.split()
    if check.returncode != 0 or len(loaded) != 2 or not loaded[0].startswith(pkg):
        print(f"the sanitized package did not load: {check.stdout}{check.stderr}", file=sys.stderr)
        return 1
    if isa and loaded[1] != isa.lower():
        print(f"the sanitized build runs the {loaded[1]} CPU kernels, not the {isa.lower()} ones it was built "
              f"and asked for (ATEN_CPU_CAPABILITY={isa.lower()})", file=sys.stderr)
        return 1
    print(f"sanitize: {loaded[0]}, CPU kernels {loaded[1]}", flush=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "--capture=sys", "-p", "no:cacheprovider",
           "--rootdir", ROOT, *(os.path.join(ROOT, t) for t in TESTS), "-m", "not slow"] + (extra or ["-k", SELECTION])
    start = time.monotonic()
    code = subprocess.run(cmd, cwd=out, env=env).returncode
    print(f"sanitize: tests ran in {time.monotonic() - start:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
