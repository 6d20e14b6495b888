"""Triton kernels of classicnets_ext, one file per op; installed as classicnets_ext.triton_kernels."""
