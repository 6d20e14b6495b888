"""Test configuration.

Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter; TRITON_INTERPRET must be set
before triton is first imported, i.e. before classicnets_ext is.
"""
import importlib.util
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # The tests compare fp32 results with fp32/fp64 references at fp32 tolerances. cuDNN convolutions run in
    # TF32 by default (cudnn.allow_tf32), ~1e-3 relative: a torchvision reference block and ours then differ
    # by TF32 rounding, not by our arithmetic (seen on the H200: 3a-cuda off by 2.5e-3). Full fp32 for both.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

# Inductor's on-disk cache does not tell its CPU kernels apart by ATEN_CPU_CAPABILITY (torch 2.14): a run under
# ATEN_CPU_CAPABILITY=avx2 after an AVX-512 one got back kernels of the wrong vector width -- the compile tests
# saw garbage, and the reverse order aborted in malloc. One cache per capability, as bench/harness.py does.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default_cache_dir()}_{torch.backends.cpu.get_cpu_capability().lower()}"

import pytest  # noqa: E402

import classicnets_ext  # noqa: E402
from _watchdog import pytest_configure, pytest_runtest_logreport, pytest_runtest_protocol  # noqa: E402,F401

if importlib.util.find_spec("triton") is not None:
    # Wherever triton is installed our Triton kernels must import: one that does not stops the run here, with
    # its traceback, instead of leaving the 'triton' backend unavailable and every Triton test a skip.
    _error = classicnets_ext._registrations.load_triton()
    if _error is not None:
        raise ImportError(f"the Triton kernels failed to import: {type(_error).__name__}: {_error}") from _error

BACKENDS = [b for b in ("cpu", "cuda", "triton", "reference") if b in classicnets_ext.available_backends()]


def backend_device(backend: str) -> str:
    """The device a backend's tests run on: Triton runs interpreted on CPU tensors without a GPU."""
    if backend == "cuda" or (backend == "triton" and HAS_CUDA):
        return "cuda"
    return "cpu"


requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): the
    model and training tests check structure and numerics, not threading (the op tests cover the kernels'
    threads), and on a shared 2-core CI machine model-sized GEMMs in two OpenMP threads slow down up to 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
