"""Adam / AdamW (``torch.optim.Adam``/``AdamW``; lazy: ``torch.optim.SparseAdam``): one
element, one step."""
from __future__ import annotations

import numpy as np


def update(p, m, v, vmax, g, b1, b2, eps, l2, q, step_size, sqrt_bc2, lazy, amsgrad):
    """``(p, m, v, vmax)`` after one step.

    ``q = 1 - lr*wd`` (AdamW's decoupled decay, else 1) and ``l2 = wd`` (Adam's L2 term,
    else 0); ``step_size``/``sqrt_bc2`` are the step's bias-correction scalars from
    ``scalars`` (scalars or per-row columns). ``vmax`` is only read with ``amsgrad``.
    """
    p = p * q
    g = g + l2 * p
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * (g * g)
    if amsgrad:
        vmax = np.maximum(vmax, v)
        denom = vmax
    else:
        denom = v
    if lazy:
        p = p - step_size * (m / (np.sqrt(denom) + eps))
    else:
        p = p - step_size * (m / (np.sqrt(denom) / sqrt_bc2 + eps))
    return p, m, v, vmax


def scalars(lr, b1, b2, s, lazy):
    """``(step_size, sqrt(1 - b2**s))`` of step ``s``: dense Adam's ``lr / bc1``, or
    SparseAdam's ``lr * sqrt(bc2) / bc1`` (lazy, with ``sqrt(v) + eps`` undivided)."""
    bc1, bc2 = 1.0 - b1 ** s, 1.0 - b2 ** s
    if lazy:
        return lr * np.sqrt(bc2) / bc1, np.sqrt(bc2)
    return lr / bc1, np.sqrt(bc2)


def matrix(lr, wd):
    """AdamW's decoupled decay of one skipped step (``p *= 1 - lr*wd``) as a 2x2 map."""
    return (1.0 - lr * wd, 0.0, 0.0, 1.0)
