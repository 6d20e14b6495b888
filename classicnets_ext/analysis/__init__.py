"""Network analysis: per-layer parameters, MACs, activation memory, receptive fields and depth
(:func:`summary`), models side by side (:func:`compare`), and FLOP formulas that make PyTorch's
``FlopCounterMode`` count our ops (``formulas``, registered on import).

The command line is ``python -m classicnets_ext summary MODEL`` / ``compare MODEL [MODEL ...]`` (``cli``).
"""
from . import formulas
from .geometry import Geometry
from .summary import LayerRow, ModelComparison, ModelSummary, build_for_inference, compare, summary

__all__ = ["formulas", "Geometry", "LayerRow", "ModelComparison", "ModelSummary", "build_for_inference", "compare",
           "summary"]
