"""Symbolic operations on row-sparse values (``RowSparseType``).

Gradients that reach a table through row gathers stay row-sparse while they are
accumulated, scaled, or multiplied by an element-wise derivative. Each operation works on
the stored rows only:

* ``a + b`` of two row-sparse values concatenates their (indices, rows): no coalescing is
  needed until an optimizer wants unique rows;
* ``dense + rowsparse`` is dense (a scatter-add into a copy);
* ``rowsparse * x`` multiplies the stored rows by the matching rows of ``x``
  (a row gather of ``x``, which the rewriter pushes through element-wise ops so a full
  ``f(table)`` is never computed).
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.types import RowSparse, RowSparseType, TensorType
from minigrad.variables import as_variable


def _scatter_add(out, indices, values):
    from minigrad.kernels_dispatch import scatter_add_rows

    scatter_add_rows(out, indices, values)


class RowSparseToDense(Op):
    """Materialise a row-sparse value (only when a dense consumer needs it)."""

    def make_node(self, rs):
        return Apply(self, [rs], [rs.type.dense_type()])

    def perform(self, node, inputs):
        (rs,) = inputs
        out = np.zeros(rs.shape, dtype=rs.values.dtype)
        _scatter_add(out, rs.indices, rs.values)
        return (out,)


class RowSparseAdd(Op):
    """``a + b`` for two row-sparse values: concatenated rows (duplicates allowed)."""

    def make_node(self, a, b):
        return Apply(self, [a, b], [a.type])

    def perform(self, node, inputs):
        a, b = inputs
        return (a + b,)


class DenseAddRowSparse(Op):
    """``dense + rowsparse`` -> dense: a copy of ``dense`` with the rows scatter-added."""

    def make_node(self, dense, rs):
        from minigrad.ops.elemwise import result_dtype

        dtype = result_dtype([dense, rs])
        return Apply(self, [dense, rs], [TensorType(dtype, rs.type.shape)])

    def perform(self, node, inputs):
        dense, rs = inputs
        out = np.array(np.broadcast_to(dense, rs.shape), dtype=node.outputs[0].dtype)
        _scatter_add(out, rs.indices, rs.values.astype(out.dtype, copy=False))
        return (out,)


class RowSparseIndices(Op):
    """The int64 row indices of a row-sparse value."""

    def make_node(self, rs):
        return Apply(self, [rs], [TensorType("int64", (None,))])

    def perform(self, node, inputs):
        return (inputs[0].indices,)


class RowSparseValues(Op):
    """The stored rows of a row-sparse value, shape ``(n,) + shape[1:]``."""

    def make_node(self, rs):
        return Apply(self, [rs], [TensorType(rs.dtype, (None,) + rs.type.shape[1:])])

    def perform(self, node, inputs):
        return (inputs[0].values,)


class RowSparseWithValues(Op):
    """A row-sparse value with the indices and shape of ``rs`` and new ``values``."""

    def make_node(self, rs, values):
        return Apply(self, [rs, values], [RowSparseType(values.dtype, rs.type.shape)])

    def perform(self, node, inputs):
        rs, values = inputs
        return (RowSparse(rs.indices, values, rs.shape, rs._coalesced),)


class RowSparseCoalesce(Op):
    """Sorted unique indices with duplicate rows summed."""

    def make_node(self, rs):
        return Apply(self, [rs], [rs.type])

    def perform(self, node, inputs):
        return (inputs[0].coalesce(),)


def to_dense(rs):
    return RowSparseToDense()(rs)


def rowsparse_to_dense(rs):
    return RowSparseToDense()(rs)


def is_row_sparse(x):
    return isinstance(getattr(x, "type", None), RowSparseType)


def coalesce(rs):
    return RowSparseCoalesce()(rs)


def indices(rs):
    return RowSparseIndices()(rs)


def values(rs):
    return RowSparseValues()(rs)


def with_values(rs, new_values):
    return RowSparseWithValues()(rs, new_values)


def rowsparse_add(a, b):
    """Sum dispatched on the pair of types: sparse + sparse stays sparse."""
    a_sparse, b_sparse = is_row_sparse(a), is_row_sparse(b)
    if a_sparse and b_sparse:
        return RowSparseAdd()(a, b)
    if a_sparse:
        a, b = b, a
    return DenseAddRowSparse()(as_variable(a), b)


def rowsparse_mul(rs, x):
    """``rs * x``: scale the stored rows by the matching rows (or broadcast) of ``x``."""
    from minigrad.ops.elemwise import Binary
    from minigrad.ops.indexing import take

    x = as_variable(x)
    if x.ndim == rs.ndim and x.type.shape[0] != 1:
        factor = take(x, indices(rs))
    else:
        factor = x
    return with_values(rs, Binary("mul")(values(rs), factor))


class RowSparseReduceColumns(Op):
    """Sum the stored rows over the trailing axes along which ``x`` was broadcast.

    The gradient of ``(s * W)[idx]`` for a per-row scale ``s`` of shape ``(V, 1)``: still
    row-sparse (same rows), each row reduced to ``x``'s trailing shape.
    """

    def make_node(self, rs, shape):
        from minigrad.ops.shape import check_shape_input, static_shape

        shape = check_shape_input(as_variable(shape), self, "x")
        return Apply(self, [rs, shape], [RowSparseType(rs.dtype, static_shape(shape))])

    def perform(self, node, inputs):
        from minigrad.ops.elemwise import sum_to_shape
        from minigrad.ops.shape import shape_tuple

        rs, shape = inputs
        shape = shape_tuple(shape)
        rows = sum_to_shape(rs.values, (rs.values.shape[0],) + tuple(shape[1:]))
        return (RowSparse(rs.indices, rows, (rs.shape[0],) + tuple(shape[1:]), rs._coalesced),)


def rowsparse_reduce_like(rs, x):
    """Bring a row-sparse gradient to the shape of ``x`` (the target of broadcasting).

    A full-rank ``x`` (not broadcast along rows) keeps the gradient row-sparse, its rows
    reduced over the trailing axes where ``x`` has a static length 1; an ``x`` that was
    broadcast along the rows gets the stored rows summed (dense and small).
    """
    from minigrad.ops.elemwise import reduce_like
    from minigrad.ops.reduce import sum as sum_

    if x.ndim == rs.ndim and x.type.shape[0] != 1:
        trailing = zip(x.type.shape[1:], rs.type.shape[1:])
        if any(a == 1 and b != 1 for a, b in trailing):
            from minigrad.ops.shape import shape_of

            return RowSparseReduceColumns()(rs, shape_of(x))
        return rs
    return reduce_like(sum_(values(rs), axis=0, keepdims=True), x)
