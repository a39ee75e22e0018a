"""Row gather ``table[idx]`` and its row-sparse gradient: the reason minigrad exists.

``Take`` picks rows of a table with an integer index array of any rank; the output has
shape ``idx.shape + table.shape[1:]``. Its VJP is "add row ``gz[i]`` into row ``idx[i]``"
— a scatter-add that touches only the gathered rows. Instead of materialising that into a
``V x D`` zero matrix, ``TakeGrad`` returns the pair (indices, rows) as a value of type
``RowSparseType``. Everything downstream (accumulation, optimizers) keeps it that way, so
a training step costs O(rows touched), not O(table).
"""
from __future__ import annotations

import numpy as np

from kernels import _validate as V
from minigrad.graph import Apply, Op
from minigrad.types import INT_KINDS, RowSparse, RowSparseType, TensorType
from minigrad.variables import as_variable


def check_index_range(idx, n_rows, node, what="index"):
    """Raise ``IndexError`` naming the index input and the first bad value.

    Vectorised and O(len(idx)); the compiled kernels rely on it (Numba does not
    bounds-check), and it runs before any state changes.
    """
    def message(bad, n):
        idx_name = node.inputs[1].name or "index"
        table_name = node.inputs[0].name or "the table"
        return (f"{what} {idx_name!r}: value {bad} is out of range for {table_name} "
                f"with {n} rows (valid: 0..{n - 1})")

    V.check_index_range("index", idx, int(n_rows), message=message)


class Take(Op):
    """``table[idx]``: gather whole rows of ``table`` (rank >= 1) by an integer array."""

    def make_node(self, table, idx):
        table, idx = as_variable(table), as_variable(idx)
        if not isinstance(table.type, TensorType) or table.ndim < 1:
            raise TypeError(f"row gather needs a table of rank >= 1, got {table.type}")
        if np.dtype(idx.dtype).kind not in INT_KINDS:
            raise TypeError(f"row gather needs an integer index, got {idx.dtype}")
        shape = idx.type.shape + table.type.shape[1:]
        return Apply(self, [table, idx], [TensorType(table.dtype, shape)])

    def perform(self, node, inputs):
        table, idx = inputs
        check_index_range(idx, table.shape[0], node)
        # fancy indexing, not np.take: np.take copies a non-contiguous table first (a
        # broadcast or transposed 10^8-row table would be materialised just to read rows)
        return (table[idx.reshape(-1)].reshape(idx.shape + table.shape[1:]),)

    def grad(self, inputs, outputs, output_grads):
        table, idx = inputs
        return [take_grad(table, idx, output_grads[0]), None]


class TakeGrad(Op):
    """The VJP of ``Take``: a ``RowSparse`` of dtype ``dtype`` (the table's) with rows
    ``gz`` at ``idx`` (flattened). Inputs ``(shape_of(table), idx, gz)``: the table is
    needed only for its shape, so the graph does not read its data (``take_grad``).
    """

    __props__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name

    def __str__(self):  # the dtype shows in the output type
        return type(self).__name__

    def make_node(self, shape, idx, gz):
        from minigrad.ops.shape import check_shape_input, static_shape

        shape = check_shape_input(as_variable(shape), self, "table")
        idx, gz = as_variable(idx), as_variable(gz)
        return Apply(self, [shape, idx, gz], [RowSparseType(self.dtype, static_shape(shape))])

    def perform(self, node, inputs):
        from minigrad.ops.shape import shape_tuple

        shape, idx, gz = inputs
        shape = shape_tuple(shape)
        values = np.asarray(gz, dtype=node.outputs[0].dtype).reshape((-1,) + shape[1:])
        return (RowSparse(idx.reshape(-1), values, shape),)


def take(table, idx):
    return Take()(table, idx)


def take_grad(table, idx, gz):
    """The row-sparse gradient of ``table[idx]`` given the output gradient ``gz``."""
    from minigrad.ops.shape import shape_of

    table = as_variable(table)
    return TakeGrad(table.dtype)(shape_of(table), idx, gz)


def getitem(x, key):
    """``x[key]``: a row gather for integer variables/arrays, basic slicing otherwise."""
    from minigrad.graph import Variable
    from minigrad.ops.shape import subtensor

    if isinstance(key, Variable) or (
        isinstance(key, (np.ndarray, list)) and np.asarray(key).dtype.kind in INT_KINDS
    ):
        return take(x, key)
    return subtensor(x, key)
