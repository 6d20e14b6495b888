"""Test configuration.

Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter; TRITON_INTERPRET must be set
before triton is first imported, i.e. before classicnets_ext is.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import classicnets_ext  # noqa: E402

BACKENDS = [b for b in ("cpu", "cuda", "triton", "reference") if b in classicnets_ext.available_backends()]


def backend_device(backend: str) -> str:
    """The device a backend's tests run on: Triton runs interpreted on CPU tensors without a GPU."""
    if backend == "cuda" or (backend == "triton" and HAS_CUDA):
        return "cuda"
    return "cpu"


requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
