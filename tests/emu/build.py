"""Builds the CUDA emulator's test library: every CUDA C++ file of the extension compiled by the host compiler
with -DCNX_CUDA_EMU (csrc/emu/cuda_emu.h), its ops registered as classicnets_ext_emu::* for CPU tensors.

    python tests/emu/build.py [plain|asan|tsan ...] [--replace SRC=COPY] [--out DIR]

One library per variant, build/emu/<variant>/libclassicnets_ext_emu.so: `plain`, `asan` (AddressSanitizer:
out-of-bounds global and shared accesses; with UndefinedBehaviorSanitizer, which also reports a load or store
misaligned for its type -- a fault on a GPU, which x86 lets pass) and `tsan` (ThreadSanitizer: races between the
emulated threads of a block). g++ only, no nvcc. Objects are rebuilt only when a source, a header it includes or
the flags changed. `--replace` swaps one source for an edited copy (tests/emu/planted_bugs.py): only that file is
compiled again, into --out, and linked with the variant's other objects.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARY = "libclassicnets_ext_emu.so"

# Each CUDA file with the host file that declares its ops' schemas (the emulated ops need them under their
# own namespace). A new CUDA file joins this list (see the pattern in csrc/common/cuda_compat.h).
EMU_SOURCES = [
    "csrc/lrn/lrn.cpp", "csrc/lrn/lrn_cuda.cu",
    "csrc/maxpool/maxpool.cpp", "csrc/maxpool/maxpool_cuda.cu",
    "csrc/pool_lrn/pool_lrn.cpp", "csrc/pool_lrn/pool_lrn_cuda.cu",
    "csrc/inception/inception.cpp", "csrc/inception/inception_cuda.cu",
    "tests/emu/emu_ops.cpp",
]

# -O1 for the sanitizers (their usual advice: readable reports, little slower than -O2).
VARIANTS = {
    "plain": ["-O2"],
    "asan": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "tsan": ["-O1", "-g", "-fsanitize=thread"],
}
SANITIZER_LIBS = {"asan": ["libasan.so", "libubsan.so"], "tsan": ["libtsan.so"]}


def torch_flags():
    import torch
    from torch.utils.cpp_extension import include_paths
    cflags = [f"-isystem{d}" for d in include_paths()] + [f"-isystem{sysconfig.get_paths()['include']}"]
    cflags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    return cflags, [f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-lc10", "-ltorch_cpu"]


def compile_flags(variant):
    cflags, _ = torch_flags()
    return (["-std=c++20", "-fPIC", "-pthread", "-Wall", "-Wno-unknown-pragmas", "-DCNX_CUDA_EMU",
             "-DCNX_OPS=classicnets_ext_emu", f"-I{os.path.join(ROOT, 'csrc')}"] + cflags + VARIANTS[variant])


def compiler_file(name):
    """The compiler's own copy of a library (g++ -print-file-name)."""
    return subprocess.check_output([os.environ.get("CXX", "g++"), f"-print-file-name={name}"], text=True).strip()


def sanitizer_runtime(variant):
    """The sanitizers' shared runtimes, to LD_PRELOAD into Python (space-separated; None for `plain`)."""
    return " ".join(compiler_file(n) for n in SANITIZER_LIBS[variant]) if variant in SANITIZER_LIBS else None


def _stale(obj, command):
    """Whether obj must be rebuilt: missing, built by another command, or older than a file it depends on."""
    if not (os.path.exists(obj) and os.path.exists(obj + ".cmd") and os.path.exists(obj + ".d")):
        return True
    if open(obj + ".cmd").read() != command:
        return True
    deps = open(obj + ".d").read().replace("\\\n", " ").split(":", 1)[1].split()
    built = os.path.getmtime(obj)
    return any(not os.path.exists(d) or os.path.getmtime(d) > built for d in deps)


def _compile(src, obj, flags, language="c++"):
    cmd = [os.environ.get("CXX", "g++"), "-x", language, "-c", src, "-o", obj, "-MMD", "-MF", obj + ".d"] + flags
    command = shlex.join(cmd)
    if not _stale(obj, command):
        return False
    print(f"  compile {os.path.relpath(src, ROOT)}", flush=True)
    subprocess.run(cmd, check=True)
    with open(obj + ".cmd", "w") as f:
        f.write(command)
    return True


def build(variant, out=None, replace=None, jobs=None):
    """Builds (or brings up to date) one variant; returns the library's path."""
    base = os.path.join(ROOT, "build", "emu", variant)
    out = out or base
    os.makedirs(out, exist_ok=True)
    replace = replace or {}
    flags = compile_flags(variant)
    jobs = jobs or int(os.environ.get("MAX_JOBS", "2"))
    units = []
    for src in EMU_SOURCES:
        obj_name = src.replace("/", "_") + ".o"
        if src in replace:
            units.append((os.path.abspath(replace[src]), os.path.join(out, obj_name)))
        else:
            units.append((os.path.join(ROOT, src), os.path.join(base, obj_name)))
    os.makedirs(base, exist_ok=True)
    # The torch headers every source includes, whose parsing is most of a compile: precompiled once per variant.
    # Only headers the sources include anyway (not ATen/ATen.h), so the emulator builds still fail where a source
    # calls an at:: function without including its ATen/ops header, as the extension's build does.
    pch = os.path.join(base, "pch", "emu_pch.h")
    os.makedirs(os.path.dirname(pch), exist_ok=True)
    pch_text = "#define TORCH_ASSERT_ONLY_METHOD_OPERATORS\n#include <ATen/core/Tensor.h>\n#include <torch/library.h>\n"
    if not os.path.exists(pch) or open(pch).read() != pch_text:
        with open(pch, "w") as f:
            f.write(pch_text)
    _compile(pch, pch + ".gch", flags, language="c++-header")
    flags = flags + ["-Winvalid-pch", "-include", pch]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        changed = any(list(pool.map(lambda u: _compile(u[0], u[1], flags), units)))
    library = os.path.join(out, LIBRARY)
    objects = [obj for _, obj in units]
    if changed or not os.path.exists(library) or any(os.path.getmtime(o) > os.path.getmtime(library) for o in objects):
        _, ldflags = torch_flags()
        sanitize = [f for f in VARIANTS[variant] if f.startswith("-fsanitize")]
        subprocess.run([os.environ.get("CXX", "g++"), "-shared", "-pthread", "-o", library] + objects + sanitize + ldflags,
                       check=True)
    return library


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help=f"of {list(VARIANTS)} (default: all)")
    parser.add_argument("--replace", action="append", default=[], metavar="SRC=COPY",
                        help="compile COPY in place of the source SRC (a path in EMU_SOURCES)")
    parser.add_argument("--out", help="folder of the library (default build/emu/<variant>)")
    args = parser.parse_args(argv)
    if set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants: {sorted(set(args.variants) - set(VARIANTS))}")
    replace = dict(r.split("=", 1) for r in args.replace)
    unknown = set(replace) - set(EMU_SOURCES)
    if unknown:
        parser.error(f"not in EMU_SOURCES: {sorted(unknown)}")
    for variant in args.variants or list(VARIANTS):
        print(f"cuda-emu: building {variant}", flush=True)
        print(build(variant, args.out, replace))


if __name__ == "__main__":
    sys.exit(main())
