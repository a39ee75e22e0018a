"""Factorization machine (Rendle, 2010) as a plain cost function over mg ops.

For a CSR batch ``X`` (one row per example, one column per feature):

    y_hat = b + X @ w + 0.5 * sum_f [ (X V)_f^2 - (X^2)(V^2)_f ]

The pairwise term is Rendle's O(nnz * k) rewrite of ``sum_{i<j} <V_i, V_j> x_i x_j``.
``w`` and ``V`` are only ever reached through ``mg.sparse.dot`` (a row gather of the
columns stored in ``X``), so both get row-sparse gradients: a step costs O(features in
the batch), not O(n_features). ``V ** 2`` inside ``sparse.dot`` is squared on the
gathered rows only (the core pushes the gather through the element-wise square).
"""
from __future__ import annotations

import numpy as np

import minigrad as mg
from minigrad.models.masked_embedding import normal_table
from minigrad.ops.sparse import csr_columns

LOSSES = ("logistic", "squared")


class FactorizationMachine:
    """Second-order FM: ``b + <w, x> + sum_{i<j} <V_i, V_j> x_i x_j``.

    Parameters (``.params``, all ``mg.shared``): ``b`` (1,), ``w`` (n_features, 1) and
    ``V`` (n_features, k), ``V`` initialised N(0, init_std^2) from ``seed``.
    The object holds only shared variables and plain numbers, so it pickles (Hogwild).
    """

    def __init__(self, n_features, k, seed=0, dtype=None, init_std=0.01):
        if n_features < 1 or k < 1:
            raise ValueError(f"need n_features >= 1 and k >= 1, got {n_features}, {k}")
        dtype = np.dtype(dtype or mg.config.floatX)
        rng = np.random.default_rng(seed)
        self.n_features, self.k = int(n_features), int(k)
        self.b = mg.shared(np.zeros(1, dtype), name="fm_b")
        self.w = mg.shared(np.zeros((n_features, 1), dtype), name="fm_w")
        self.V = mg.shared(normal_table(rng, (n_features, k), init_std, dtype), name="fm_V")

    @property
    def params(self):
        return [self.b, self.w, self.V]

    def predict(self, X):
        """Symbolic scores (logits for the logistic loss), one per row of the CSR ``X``."""
        linear = mg.sparse.dot(X, self.w).sum(axis=1)
        xv = mg.sparse.dot(X, self.V)
        x2v2 = mg.sparse.dot(mg.sparse.square(X), self.V ** 2)
        pairwise = 0.5 * (xv ** 2 - x2v2).sum(axis=1)
        return self.b + linear + pairwise

    def cost(self, X, y, loss="logistic", l2=0.0):
        """Mean loss over the batch, plus an optional L2 penalty on the rows present.

        ``loss="logistic"``: ``y`` in {0, 1}, mean of ``softplus(s) - y * s``
        (binary cross-entropy on the logits ``s``); ``"squared"``: mean of ``(s - y)^2``.

        ``l2`` is a *per-batch* penalty on the parameter rows the batch touches,
        ``l2 * sum over stored entries (i, j) of X of (w_j^2 + |V_j|^2) / batch_size``
        (a feature is penalised once per occurrence, as in libFM's SGD). A full-table
        penalty would make every gradient dense; this one keeps them row-sparse, and
        rare features are regularised less often, in proportion to how often they are
        updated.
        """
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        s = self.predict(X)
        if loss == "logistic":
            data = mg.softplus(s) - y * s
        else:
            data = (s - y) ** 2
        total = data.mean()
        if l2:
            total = total + l2 * self.row_penalty(X)
        return total

    def row_penalty(self, X):
        """``sum over stored (i, j) of (w_j^2 + |V_j|^2) / n_rows``; row-sparse gradients."""
        cols = csr_columns(X, self.V)
        rows_sq = (self.V[cols] ** 2).sum() + (self.w[cols] ** 2).sum()
        n_rows = mg.cast(X.shape[0], rows_sq.dtype)
        return rows_sq / n_rows
