"""Output layouts of the ops, shared by the fake (meta) kernels, the Triton launchers and the tests.

They mirror ``cnx::lrn::layout_of`` in csrc/lrn/lrn.cpp: kernels walk an (N, C, S) view in one of two
dense layouts -- channels-first (NCHW-like) or channels-last (C innermost). A channels-last input keeps its
layout; any other input is handled (and answered) channels-first.
"""
import torch


def is_channels_last_dense(t: torch.Tensor) -> bool:
    """(N, C, *) with C innermost and the rest dense: moving C to the end gives a contiguous tensor."""
    order = [0, *range(2, t.dim()), 1]
    return not t.is_contiguous() and t.permute(order).is_contiguous()


def lrn_output_like(input: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor shaped like ``input`` in the layout the LRN kernels write."""
    if is_channels_last_dense(input):
        return torch.empty_like(input)  # empty_like keeps a dense tensor's strides
    return torch.empty(input.shape, dtype=input.dtype, device=input.device)
