"""Refine-by-Align: reference-guided artifact refinement through cross-attention alignment."""

__version__ = "0.1.0"
