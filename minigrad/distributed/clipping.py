"""Global gradient-norm clipping across shards (``mg.optim.ClipGradNorm`` in a factory).

In one process ``ClipGradNorm`` scales every gradient of a step by
``min(1, max_norm / (norm + 1e-6))`` with ``norm`` the L2 norm over *all* parameters'
gradients (row-sparse ones coalesced). A shard holds one optimizer per parameter and
sees only its own rows, so the transform left there would clip each slice by its own
norm: a different, silently wrong update. So the clip moves to the worker, which has the
whole gradient of the batch before it is split by shard: it clips there with the same
formula, and the shards build their optimizers without it.

Which transforms move to the worker, and in which order, is ``worker_transforms.py``.
"""
from __future__ import annotations

import numpy as np


def clip_global(grads, max_norms):
    """``grads`` (``RowSparse`` or arrays, one per parameter) clipped by their global norm,
    once per ``max_norm``, as ``mg.optim.clip_grad_norm`` does in one process: row-sparse
    gradients coalesced, squares summed per parameter in its dtype then in float64,
    every gradient scaled by ``min(1, max_norm / (norm + 1e-6))`` cast to its dtype."""
    from minigrad.types import RowSparse

    grads = [g.coalesce() if isinstance(g, RowSparse) else np.asarray(g) for g in grads]
    for max_norm in max_norms:
        total = 0.0
        for g in grads:
            v = g.values if isinstance(g, RowSparse) else g
            total += float(np.sum(v * v))
        coef = min(1.0, float(max_norm) / (np.sqrt(total) + 1e-6))
        out = []
        for g in grads:
            if isinstance(g, RowSparse):
                c = np.asarray(coef, dtype=g.values.dtype)
                out.append(RowSparse(g.indices, g.values * c, g.shape, coalesced=True))
            else:
                out.append(g * np.asarray(coef, dtype=g.dtype))
        grads = out
    return grads
