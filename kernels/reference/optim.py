"""Fused per-optimizer row updates (see kernels/reference/optim.py for the definitions)."""
__all__ = []
