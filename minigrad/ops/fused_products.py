"""Fused Ops for several CSR products that share one row gather of a table.

A factorization machine computes ``X @ V`` and ``square(X) @ V ** 2``. Both read the rows
``V[c]`` of the same stored columns ``c``; unfused, the step gathers them (``nnz x k``),
squares the copy, sums twice, and its backward materialises two ``nnz x k`` scaled copies,
gathers ``V`` again, and sorts ``nnz`` rows to coalesce them. The Ops below do each
direction in one pass over the stored entries, reading each ``V[c_k]`` once:

* :class:`FusedCSRGatherSums` ``(T, X_1, ..., X_K)``, ``powers = (p_1, ..., p_K)``:
  ``K`` outputs ``X_i @ T ** p_i`` (``p_i`` 1 or 2), the ``X_i`` of one sparsity pattern
  (``X`` and ``square(X)``);
* :class:`FusedCSRScatterSums` ``(shape_of(T), T, X_1..X_K, G_1..G_K)``, ``coefs``,
  ``powers``: the row-sparse gradient of ``T`` through ``sum_i coef_i * X_i^T (G_i *
  T ** m_i)`` (``m_i`` 0, 1 or 2), written straight into de-duplicated rows (a coalesced
  ``RowSparse``, sorted unique indices): the gradient of the products above, and of any
  linear combination of them the backward graph spells out.

``perform`` is the NumPy reference (``kernels/reference/fused_products.py``); the Numba
versions are in ``kernels/cpu/fused.py`` (thunks: ``backends/numba_fused.py``, jit source:
``backends/numba_jit.py``), the CuPy ones in ``kernels/gpu/fused_products.py``
(``backends/cupy_fused_products.py``). The rewrites introducing them are in
``rewrite_fusion.py``.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.types import CSRType, RowSparse, RowSparseType, TensorType, array_module
from minigrad.variables import as_variable


def _reference():
    import kernels.reference.fused_products as reference

    return reference


def check_pattern(node, Xs, table_rows, table_var):
    """Every ``X_i`` has the table's row count as columns (the message of ``sparse.dot``)
    and the first one's stored pattern (the rewrite pairs only such; users may not)."""
    from minigrad.ops.shape import value_name

    first = Xs[0]
    for k, X in enumerate(Xs):
        if X.shape[1] != table_rows:
            name = node.inputs[node.op.first_csr + k].name or "X"
            raise ValueError(f"sparse.dot: {name} has {X.shape[1]} columns but "
                             f"{value_name(table_var, 'W')} has {table_rows} rows")
        if X is first:
            continue
        xp = array_module(X.indices)  # NumPy, or CuPy on a GPU
        same = (X.shape == first.shape and X.nnz == first.nnz
                and (X.indices is first.indices or bool(xp.array_equal(X.indices,
                                                                       first.indices)))
                and (X.indptr is first.indptr or bool(xp.array_equal(X.indptr,
                                                                      first.indptr))))
        if not same:
            raise ValueError("fused CSR products need batches of one sparsity pattern")


def _datas(Xs, dtype):
    return [array_module(X.data).asarray(X.data, dtype=dtype) for X in Xs]


class FusedCSRGatherSums(Op):
    """``[X_i @ T ** p_i for i]`` in one pass over the stored entries (module docstring)."""

    __props__ = ("powers",)
    first_csr = 1  # the position of X_1 among the inputs

    def __init__(self, powers):
        self.powers = tuple(int(p) for p in powers)
        if not self.powers or any(p not in (1, 2) for p in self.powers):
            raise ValueError(f"powers must be 1 or 2, got {powers}")

    def __str__(self):
        return f"FusedCSRGatherSums{{powers={self.powers}}}"

    def make_node(self, table, *Xs):
        from minigrad.ops.elemwise import result_dtype

        table, Xs = as_variable(table), [as_variable(X) for X in Xs]
        if table.ndim != 2:
            raise TypeError(f"FusedCSRGatherSums needs a 2-D table, got {table.type}")
        if len(Xs) != len(self.powers) or not all(isinstance(X.type, CSRType) for X in Xs):
            raise TypeError(f"FusedCSRGatherSums{self.powers} needs {len(self.powers)} CSR "
                            "inputs after the table")
        dtype = result_dtype([*Xs, table])
        width = table.type.shape[1]
        return Apply(self, [table, *Xs], [TensorType(dtype, (None, width)) for _ in Xs])

    def arrays(self, node, inputs):
        table, *Xs = inputs
        check_pattern(node, Xs, table.shape[0], node.inputs[0])
        dtype = node.outputs[0].dtype
        return Xs, array_module(table).asarray(table, dtype=dtype), _datas(Xs, dtype)

    def perform(self, node, inputs):
        Xs, table, datas = self.arrays(node, inputs)
        outs = _reference().csr_gather_sums(Xs[0].indptr, Xs[0].indices, datas, table,
                                            self.powers)
        return tuple(outs)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.shape import shape_of

        table, *Xs = inputs
        live = [(X, g, p) for X, g, p in zip(Xs, output_grads, self.powers) if g is not None]
        if not live:
            return [None] * len(inputs)
        op = FusedCSRScatterSums(table.dtype, [float(p) for _, _, p in live],
                                 [p - 1 for _, _, p in live])
        grad_table = op(shape_of(table), table, *[X for X, _, _ in live],
                        *[g for _, g, _ in live])
        return [grad_table] + [None] * len(Xs)


class FusedCSRScatterSums(Op):
    """Row-sparse gradient of ``T`` through ``sum_i coef_i * X_i^T (G_i * T ** m_i)``.

    Inputs ``(shape_of(T), T, X_1, ..., X_K, G_1, ..., G_K)``; ``G_i`` is ``(batch, D)`` or
    ``(batch, 1)`` (broadcast), ``D`` the table's width. The value has one row per distinct
    stored column, sorted: ``RowSparse(coalesced=True)``.
    """

    __props__ = ("dtype", "coefs", "powers")
    first_csr = 2  # the position of X_1 among the inputs

    def __init__(self, dtype, coefs, powers):
        self.dtype = np.dtype(dtype).name
        self.coefs = tuple(float(c) for c in coefs)
        self.powers = tuple(int(m) for m in powers)
        if (not self.powers or len(self.coefs) != len(self.powers)
                or any(m not in (0, 1, 2) for m in self.powers)):
            raise ValueError(f"need one coefficient and one power in (0, 1, 2) per product, "
                             f"got {coefs}, {powers}")

    def __str__(self):  # the dtype shows in the output type
        terms = " + ".join(f"{c:g}*X{i}'(G{i}*T^{m})"
                           for i, (c, m) in enumerate(zip(self.coefs, self.powers)))
        return f"FusedCSRScatterSums{{{terms}}}"

    def make_node(self, shape, table, *rest):
        from minigrad.ops.shape import check_shape_input, static_shape

        shape = check_shape_input(as_variable(shape), self, "T")
        table, rest = as_variable(table), [as_variable(v) for v in rest]
        K = len(self.powers)
        if table.ndim != 2 or shape.type.shape[0] != 2:
            raise TypeError(f"FusedCSRScatterSums needs a 2-D table, got {table.type}")
        if len(rest) != 2 * K:
            raise TypeError(f"{self} takes {K} CSR batches and {K} gradients, got "
                            f"{len(rest)} inputs")
        Xs, grads = rest[:K], rest[K:]
        if not all(isinstance(X.type, CSRType) for X in Xs):
            raise TypeError("FusedCSRScatterSums: the batches must be CSR matrices")
        if not all(isinstance(g.type, TensorType) and g.ndim == 2 for g in grads):
            raise TypeError("FusedCSRScatterSums: the gradients must be (batch, D) tensors")
        return Apply(self, [shape, table, *Xs, *grads],
                     [RowSparseType(self.dtype, static_shape(shape))])

    def arrays(self, node, inputs):
        from minigrad.ops.shape import shape_tuple

        shape, table, *rest = inputs
        K = len(self.powers)
        Xs, grads = rest[:K], rest[K:]
        shape = shape_tuple(shape)
        check_pattern(node, Xs, shape[0], node.inputs[0])
        dtype, xp = self.dtype, array_module(table)
        table = xp.asarray(table, dtype=dtype)
        if table.shape != shape:
            raise ValueError(f"table of shape {table.shape} for the shape {shape}")
        return Xs, table, _datas(Xs, dtype), [xp.asarray(g, dtype=dtype) for g in grads]

    @staticmethod
    def value(table, unique, rows):
        # sorted unique int64 columns of a checked batch, in range: no second scan
        return RowSparse.trusted(unique, rows, table.shape, coalesced=True)

    def perform(self, node, inputs):
        Xs, table, datas, grads = self.arrays(node, inputs)
        unique, rows = _reference().csr_scatter_sums(Xs[0].indptr, Xs[0].indices, datas,
                                                     grads, table, self.coefs, self.powers)
        return (self.value(table, unique, rows),)


__all__ = ["FusedCSRGatherSums", "FusedCSRScatterSums", "check_pattern"]
