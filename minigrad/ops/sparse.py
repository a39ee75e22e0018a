"""Sparse inputs: ``mg.sparse.dot(X_csr, W)``, ``sum_rows``, ``square``.

``X @ W`` with ``X`` in CSR form only ever reads the rows of ``W`` whose index is a stored
column of ``X``. So the product is built from two pieces:

    rows = W[X.indices]                  # a row gather (Take): nnz rows of W
    out[i] = sum_j X.data[j] * rows[j]   # for j in row i's slice of X (CSRGatheredDot)

Because the dependence on ``W`` goes through ``Take``, its gradient is automatically
row-sparse (only the columns present in the batch), and the rewrites that push
element-wise ops through gathers apply here too: ``dot(square(X), V ** 2)`` squares only
the gathered rows of ``V``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from minigrad.graph import Apply, Op
from minigrad.types import CSRType, TensorType
from minigrad.variables import as_variable


def _require_csr(x, what):
    if not isinstance(getattr(x, "type", None), CSRType):
        raise TypeError(f"{what} needs a csr_matrix input variable, got {x!r}")


class CSRColumns(Op):
    """The stored column indices of ``X`` (int64, length nnz), checked against ``W``.

    ``W`` is used only for its row count (``shape_only_inputs``): a mismatch between the
    columns of ``X`` and the rows of ``W`` fails here, before any state changes.
    """

    shape_only_inputs = (1,)

    def make_node(self, X, W):
        return Apply(self, [X, W], [TensorType("int64", (None,))])

    def perform(self, node, inputs):
        X, W = inputs
        n_rows = np.shape(W)[0]
        if X.shape[1] != n_rows:
            raise ValueError(
                f"sparse.dot: {node.inputs[0].name or 'X'} has {X.shape[1]} columns but "
                f"{node.inputs[1].name or 'W'} has {n_rows} rows"
            )
        return (X.indices.astype(np.int64, copy=False),)


class CSRGatheredDot(Op):
    """``out[i] = sum over stored (i, j) of X.data * rows[k]``; ``rows`` are pre-gathered."""

    def make_node(self, X, rows):
        from minigrad.ops.elemwise import result_dtype

        dtype = result_dtype([X, rows])
        return Apply(self, [X, rows], [TensorType(dtype, (None,) + rows.type.shape[1:])])

    def perform(self, node, inputs):
        X, rows = inputs
        from minigrad.kernels_dispatch import csr_gathered_dot

        out = csr_gathered_dot(X.indptr, X.data, rows)
        return (out.astype(node.outputs[0].dtype, copy=False),)

    def grad(self, inputs, outputs, output_grads):
        X, rows = inputs
        return [None, CSRGatheredDotGradRows()(X, output_grads[0])]


class CSRGatheredDotGradRows(Op):
    """VJP w.r.t. the gathered rows: ``X.data[k] * gz[row of k]`` for each stored k."""

    def make_node(self, X, gz):
        return Apply(self, [X, gz], [TensorType(gz.dtype, (None,) + gz.type.shape[1:])])

    def perform(self, node, inputs):
        from minigrad.kernels_dispatch import csr_scale_rows

        X, gz = inputs
        return (csr_scale_rows(X.indptr, X.data, np.ascontiguousarray(gz)),)


def dot(X, W):
    """``X @ W`` for a CSR input ``X`` and a dense ``W``; row-sparse gradient for ``W``."""
    from minigrad.ops.indexing import take

    _require_csr(X, "sparse.dot")
    W = as_variable(W)
    return CSRGatheredDot()(X, take(W, CSRColumns()(X, W)))


class SumRows(Op):
    """Row sums of a CSR matrix: a dense vector (no gradient w.r.t. the data)."""

    def make_node(self, X):
        return Apply(self, [X], [TensorType(X.dtype, (None,))])

    def perform(self, node, inputs):
        return (np.asarray(inputs[0].sum(axis=1)).reshape(-1).astype(node.outputs[0].dtype),)

    def grad(self, inputs, outputs, output_grads):
        return [None]


class Square(Op):
    """Element-wise square of the stored values (same sparsity pattern).

    ``same_pattern``: the rewriter may read the stored columns of ``Square(X)`` from ``X``
    (so ``dot(X, V)`` and ``dot(square(X), V ** 2)`` share one gather of ``V``).
    """

    same_pattern = True

    def make_node(self, X):
        return Apply(self, [X], [X.type])

    def perform(self, node, inputs):
        X = inputs[0]
        return (sp.csr_matrix((X.data * X.data, X.indices, X.indptr), shape=X.shape),)

    def grad(self, inputs, outputs, output_grads):
        return [None]


def sum_rows(X):
    _require_csr(X, "sparse.sum_rows")
    return SumRows()(X)


def square(X):
    _require_csr(X, "sparse.square")
    return Square()(X)
