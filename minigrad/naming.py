"""How error messages name a variable: by the name the user gave it, else by its formula.

A student's first errors happen far from where the variable was made, so ``'x'`` or
``'(A - P) ** 2'`` in the message is what lets them find it; ``add_out #17`` is not.
"""
from __future__ import annotations

MAX_FORMULA = 48


def describe(var) -> str:
    """A short human name for ``var``: ``'x'``, ``'x @ W'``, ``a constant 2.0``..."""
    from minigrad.graph import Constant

    if getattr(var, "name", None):
        return repr(var.name)
    if isinstance(var, Constant):
        import numpy as np

        data = np.asarray(var.data)
        return f"the constant {data.item()!r}" if data.size == 1 else (
            f"a constant of shape {data.shape}")
    if getattr(var, "owner", None) is None:
        return f"an unnamed input of type {var.type}"
    from minigrad.formula import pp_string

    text = pp_string(var)
    if len(text) > MAX_FORMULA:
        text = text[: MAX_FORMULA - 3] + "..."
    return f"'{text}'"
