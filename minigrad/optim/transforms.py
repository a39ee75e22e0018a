"""Gradient transforms, applied in order inside the compiled step: ``transforms=[...]``.

A transform is any callable ``transform(grads, step) -> grads`` on symbolic gradients;
``step`` is the optimizer's shared step counter (the number of steps already taken).
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.ops import cast, minimum, sqrt
from minigrad.ops import sum as sum_
from minigrad.ops.rowsparse import coalesce, is_row_sparse, values
from minigrad.types import RowSparse


def _noise(shape, dtype, seed, step, index, std):
    rng = np.random.default_rng([seed, step, index])
    return (rng.standard_normal(shape) * std).astype(dtype, copy=False)


class AddGradientNoise(Op):
    """``g + N(0, eta / (1 + step)**gamma)``; a row-sparse ``g`` is coalesced and only its
    stored rows get noise. The draw depends only on ``(seed, step, index)``: stateless and
    reproducible, however many functions share the optimizer."""

    __props__ = ("eta", "gamma", "seed", "index")

    def __init__(self, eta, gamma, seed, index):
        self.eta, self.gamma, self.seed, self.index = eta, gamma, seed, index

    def make_node(self, g, step):
        return Apply(self, [g, step], [g.type])

    def std(self, step):
        return float(np.sqrt(self.eta / (1.0 + step) ** self.gamma))

    def perform(self, node, inputs):
        g, step = inputs
        step = int(step)
        return (self._ADD[type(g)](self, g, step),)

    def _dense(self, g, step):
        return g + _noise(g.shape, g.dtype, self.seed, step, self.index, self.std(step))

    def _rows(self, g, step):
        c = g.coalesce()
        noisy = c.values + _noise(c.values.shape, c.values.dtype, self.seed, step, self.index,
                                  self.std(step))
        return RowSparse(c.indices, noisy, c.shape, coalesced=True)

    _ADD = {np.ndarray: _dense, RowSparse: _rows}


class GradientNoise:
    """Annealed Gaussian gradient noise (Neelakantan et al. 2015, arXiv:1511.06807).

    At step ``t`` (0 for the first update) each gradient gets noise of **variance**
    ``eta / (1 + t)**gamma``; a row-sparse gradient gets it on its touched rows only. Noise
    for step ``t`` and parameter ``i`` comes from ``np.random.default_rng([seed, t, i])``.
    """

    def __init__(self, eta=0.3, gamma=0.55, seed=0):
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta, self.gamma, self.seed = float(eta), float(gamma), int(seed)

    def __call__(self, grads, step):
        return [AddGradientNoise(self.eta, self.gamma, self.seed, i)(g, step)
                for i, g in enumerate(grads)]

    def eager(self, grads, step, indices):
        """The same noise on run-time ``RowSparse`` gradients (``opt.apply``); ``indices``
        are the parameters' positions in the optimizer (the ``index`` of the draw)."""
        return [AddGradientNoise(self.eta, self.gamma, self.seed, i)._rows(g, int(step))
                for g, i in zip(grads, indices)]

    def __repr__(self):
        return f"GradientNoise(eta={self.eta}, gamma={self.gamma}, seed={self.seed})"


def _sum_squares(g):
    rows = values(coalesce(g)) if is_row_sparse(g) else g
    return cast(sum_(rows * rows), "float64")


def _scale(g, coef):
    coef = cast(coef, g.dtype)
    return coalesce(g) * coef if is_row_sparse(g) else g * coef


def clip_grad_norm(grads=None, max_norm=None):
    """Scale all gradients by ``min(1, max_norm / (norm + 1e-6))`` (torch's formula), where
    ``norm`` is the global L2 norm over dense and coalesced row-sparse gradients.

    ``clip_grad_norm(grads, max_norm)`` returns the clipped gradients;
    ``clip_grad_norm(max_norm=1.0)`` returns the transform for ``transforms=[...]``.
    """
    if max_norm is None:
        raise TypeError("clip_grad_norm needs max_norm")
    if grads is None:
        return ClipGradNorm(max_norm)
    grads = list(grads)
    total = None
    for g in grads:
        total = _sum_squares(g) if total is None else total + _sum_squares(g)
    coef = minimum(1.0, float(max_norm) / (sqrt(total) + 1e-6))
    return [_scale(g, coef) for g in grads]


class ClipGradNorm:
    """The ``transforms=[...]`` form of :func:`clip_grad_norm`."""

    def __init__(self, max_norm):
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)

    def __call__(self, grads, step=None):
        return clip_grad_norm(grads, self.max_norm)

    def eager(self, grads, step=None, indices=None):
        """Clip run-time ``RowSparse`` gradients by their global norm (``opt.apply``: the
        gradients of one call, so one parameter's)."""
        grads = [g.coalesce() for g in grads]
        total = sum(float((g.values.astype(np.float64) ** 2).sum()) for g in grads)
        coef = min(1.0, self.max_norm / (np.sqrt(total) + 1e-6))
        return [RowSparse(g.indices, g.values * np.asarray(coef, dtype=g.values.dtype),
                          g.shape, coalesced=True) for g in grads]

    def __repr__(self):
        return f"ClipGradNorm(max_norm={self.max_norm})"
