"""The gradient transforms a worker applies to the whole gradient, before the split by shard.

A shard holds one optimizer per parameter and sees only its own rows, so a transform
left in its optimizer would act on a slice, one parameter at a time:

* ``ClipGradNorm`` would clip each slice by its own norm instead of one global norm;
* ``GradientNoise`` would draw each shard's noise with the shard's parameter index (0)
  and its own row count: a different stream from the one process's, where the noise of
  step ``t`` and parameter ``i`` comes from ``default_rng([seed, t, i])`` over the
  parameter's coalesced gradient rows.

So both move to the worker, which holds the whole gradient of batch ``b`` with every
parameter at its position ``i`` in the caller's list: it clips with ``clip_grad_norm``'s
formula and adds the very same draws (``AddGradientNoise`` of index ``i`` at step ``b``:
the ``b``-th update of a run is batch ``b``, as in one process), and the shards build
their optimizers without them. The local rows of a table are the global ones in the same
(sorted) order, so the coalesced rows, and hence the draws, are the one process's.

The order of the transforms is kept only when these come first; a factory that puts one
of them after another transform (which stays on the shards) is refused before Ray
starts.
"""
from __future__ import annotations

import numpy as np

from minigrad.distributed import clipping


def _worker_side():
    from minigrad.optim.transforms import ClipGradNorm, GradientNoise

    return ClipGradNorm, GradientNoise


def leading(opt):
    """The ``ClipGradNorm`` / ``GradientNoise`` transforms at the start of
    ``opt.transforms`` (the workers apply them, in this order).

    Raises ``ValueError`` for one of them after another transform.
    """
    kinds = _worker_side()
    transforms = list(getattr(opt, "transforms", []) or [])
    n = 0
    while n < len(transforms) and isinstance(transforms[n], kinds):
        n += 1
    if any(isinstance(t, kinds) for t in transforms[n:]):
        raise ValueError(
            "optimizer: mg.distributed applies ClipGradNorm and GradientNoise on the worker, "
            "to the whole gradient before it is split by shard, so they must come first in "
            f"transforms= (before any other transform; got {transforms})")
    return transforms[:n]


def without_leading(opt):
    """Drop the leading worker-side transforms of ``opt`` (the workers apply them)."""
    kinds = _worker_side()
    transforms = list(opt.transforms)
    while transforms and isinstance(transforms[0], kinds):
        transforms.pop(0)
    opt.transforms = transforms
    return opt


def apply(grads, transforms, step):
    """``grads`` (``RowSparse`` or arrays, one per parameter, in the caller's order) after
    ``transforms`` at optimizer step ``step`` (0 for the first update)."""
    from minigrad.optim.transforms import AddGradientNoise, ClipGradNorm
    from minigrad.types import RowSparse

    for t in transforms:
        if isinstance(t, ClipGradNorm):
            grads = clipping.clip_global(grads, [t.max_norm])
            continue
        noisy = []
        for i, g in enumerate(grads):
            g = g if isinstance(g, RowSparse) else np.asarray(g)
            op = AddGradientNoise(t.eta, t.gamma, t.seed, i)
            noisy.append(op.perform(None, (g, np.int64(step)))[0])  # coalesces a RowSparse
        grads = noisy
    return grads
