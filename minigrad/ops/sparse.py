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

    Inputs ``(X, shape_of(W))`` (``csr_columns(X, W)``): ``W`` matters only for its row
    count, so its data is not read: a mismatch between the columns of ``X`` and the rows
    of ``W`` fails here, before any state changes.
    """

    def make_node(self, X, W_shape):
        from minigrad.ops.shape import check_shape_input

        X, W_shape = as_variable(X), check_shape_input(as_variable(W_shape), self, "W")
        return Apply(self, [X, W_shape], [TensorType("int64", (None,))])

    def perform(self, node, inputs):
        from minigrad.ops.shape import value_name

        X, W_shape = inputs
        n_rows = int(W_shape[0])
        if X.shape[1] != n_rows:
            raise ValueError(
                f"sparse.dot: {node.inputs[0].name or 'X'} has {X.shape[1]} columns but "
                f"{value_name(node.inputs[1], 'W')} has {n_rows} rows"
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


class CSRScaledGatheredDot(Op):
    """``out[i] = sum over stored (i, k) of X.data[k] * scale[k] * rows[k]``.

    ``X @ (s * W)`` for a per-row scale ``s`` of ``W`` (shape ``(V,)`` or ``(V, 1)``),
    without ever forming ``s * W`` or even the gathered products: the forward pass is one
    weighted CSR product, and the VJPs are ``X.data * s * gz[row]`` for the rows and
    ``X.data * <gz[row], rows>`` for the scales, one pass each.
    """

    def make_node(self, X, rows, scale):
        from minigrad.ops.elemwise import result_dtype

        if scale.ndim not in (1, 2) or (scale.ndim == 2 and scale.type.shape[1] not in (1, None)):
            raise TypeError(f"scale must be a vector or an (n, 1) column, got {scale.type}")
        dtype = result_dtype([X, rows, scale])
        return Apply(self, [X, rows, scale], [TensorType(dtype, (None,) + rows.type.shape[1:])])

    def perform(self, node, inputs):
        from minigrad.kernels_dispatch import csr_gathered_dot

        X, rows, scale = inputs
        data = X.data * np.reshape(scale, -1)
        return (csr_gathered_dot(X.indptr, data, rows).astype(node.outputs[0].dtype,
                                                              copy=False),)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.shape import shape_of

        X, rows, scale = inputs
        (gz,) = output_grads
        return [None, CSRScaledDotGradRows()(X, scale, gz),
                CSRScaledDotGradScale()(X, gz, rows, shape_of(scale))]


class CSRScaledDotGradRows(Op):
    """VJP w.r.t. the gathered rows: ``X.data[k] * scale[k] * gz[row of k]``."""

    def make_node(self, X, scale, gz):
        return Apply(self, [X, scale, gz], [TensorType(gz.dtype, (None,) + gz.type.shape[1:])])

    def perform(self, node, inputs):
        from minigrad.kernels_dispatch import csr_scale_rows

        X, scale, gz = inputs
        data = X.data * np.reshape(scale, -1)
        return (csr_scale_rows(X.indptr, data, np.ascontiguousarray(gz)),)


class CSRScaledDotGradScale(Op):
    """VJP w.r.t. the scales: ``X.data[k] * <gz[row of k], rows[k]>`` in ``scale``'s shape
    (inputs ``(X, gz, rows, shape_of(scale))``)."""

    def make_node(self, X, gz, rows, scale_shape):
        from minigrad.ops.shape import check_shape_input, static_shape

        X, gz, rows = as_variable(X), as_variable(gz), as_variable(rows)
        scale_shape = check_shape_input(as_variable(scale_shape), self, "scale")
        return Apply(self, [X, gz, rows, scale_shape],
                     [TensorType(gz.dtype, static_shape(scale_shape))])

    def perform(self, node, inputs):
        from minigrad.kernels_dispatch import csr_row_dots
        from minigrad.ops.shape import shape_tuple

        X, gz, rows, scale_shape = inputs
        dots = csr_row_dots(X.indptr, X.data, np.ascontiguousarray(gz),
                            np.ascontiguousarray(rows, dtype=gz.dtype))
        return (dots.reshape(shape_tuple(scale_shape)),)


def csr_columns(X, W):
    """The stored columns of ``X`` as row ids of ``W`` (checked against ``W``'s rows)."""
    from minigrad.ops.shape import shape_of

    return CSRColumns()(X, shape_of(W))


def dot(X, W, scale=None):
    """``X @ W`` for a CSR input ``X`` and a dense ``W``; row-sparse gradient for ``W``.

    ``scale`` (optional, shape ``(V,)`` or ``(V, 1)`` for a ``W`` of ``V`` rows) gives
    ``X @ (scale * W)``, computed on the gathered rows only; both ``W`` and ``scale`` get
    row-sparse gradients (e.g. word vectors and per-word weights of a bag of words).
    """
    from minigrad.ops.indexing import take

    _require_csr(X, "sparse.dot")
    W = as_variable(W)
    cols = csr_columns(X, W)
    if scale is None:
        return CSRGatheredDot()(X, take(W, cols))
    return CSRScaledGatheredDot()(X, take(W, cols), take(as_variable(scale), cols))


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
