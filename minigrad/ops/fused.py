"""Fused Ops of the sparse path, introduced by the rewrites in ``minigrad/rewrite_fusion.py``.

Unfused, ``mg.sparse.dot(X, E * M)`` of a bag of words is five nodes: the stored columns of
``X``, two row gathers (``nnz x D`` each), their product, and the weighted CSR row sum; its
backward adds the scaled rows ``X.data * gz[row]`` (another ``nnz x D``), their product with
the other table's gathered rows, a ``TakeGrad`` and, inside the optimizer, a sort of the
``nnz`` indices to coalesce them. The fused Ops below do each direction in one pass over the
stored entries and never materialise a gathered row:

* :class:`FusedCSRGatherSum` ``(X, T[, F]) -> X @ (T * F)`` (``F`` of width 1 or ``T``'s
  width; ``F`` may be ``T`` itself for ``X @ T**2``);
* :class:`FusedCSRScatterGrad` ``(X, gz, T[, F])``: the row-sparse gradient of ``T``,
  written straight into de-duplicated rows through a slot map: a *coalesced* ``RowSparse``
  (sorted unique indices, as ``RowSparse(coalesced=True)`` promises);
* :class:`SlotTakeGrad` ``(T, idx, rows)``: ``TakeGrad`` whose value is already coalesced
  (when the rows had to be materialised anyway); its Numba version sorts, which measured
  faster than the slot map for rows that exist.

``perform`` is the NumPy reference (``kernels.reference.fused``); the Numba versions are
registered in ``minigrad/backends/numba_fused.py``. Every Op checks the shapes a user could
get wrong (a CSR batch with more columns than the table has rows) with the message the
unfused graph gives, before any state changes.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Op, toposort
from minigrad.types import (
    INT_KINDS,
    CSRType,
    RowSparse,
    RowSparseType,
    TensorType,
    array_module,
)
from minigrad.variables import as_variable


def _reference():
    import kernels.reference.fused as reference

    return reference


def _as_table(a):
    """A 1-D table of scalars ``(V,)`` as the column ``(V, 1)`` the kernels take."""
    return a.reshape(-1, 1) if a.ndim == 1 else a


def check_columns(node, X, table_shape):
    """``X`` must have one column per row of the table (as ``CSRColumns`` checks)."""
    from minigrad.ops.shape import value_name

    n_rows = int(table_shape[0])
    if X.shape[1] != n_rows:
        table = value_name(node.inputs[_TABLE_POSITION[type(node.op)]], "W")
        raise ValueError(
            f"sparse.dot: {node.inputs[0].name or 'X'} has {X.shape[1]} columns but "
            f"{table} has {n_rows} rows"
        )


class FusedCSRGatherSum(Op):
    """``out[r] = sum over stored (r, c) of X.data * T[c] * F[c]`` in one pass.

    Inputs ``(X, T)`` or ``(X, T, F)``: ``T`` a ``(V, D)`` table, ``F`` a ``(V, D)``,
    ``(V, 1)`` or ``(V,)`` factor (a per-dimension mask, a per-word weight, or ``T`` again).
    Output ``(batch, D)``. The gradient is :class:`FusedCSRScatterGrad` (row-sparse).
    """

    def make_node(self, X, table, factor=None):
        X, table = as_variable(X), as_variable(table)
        if not isinstance(X.type, CSRType):
            raise TypeError(f"FusedCSRGatherSum needs a CSR input, got {X.type}")
        if table.ndim != 2:
            raise TypeError(f"FusedCSRGatherSum needs a 2-D table, got {table.type}")
        inputs = [X, table]
        if factor is not None:
            factor = as_variable(factor)
            if factor.ndim not in (1, 2):
                raise TypeError(f"factor must be a vector or a table, got {factor.type}")
            inputs.append(factor)
        from minigrad.ops.elemwise import _broadcast_static, result_dtype

        width = table.type.shape[1]
        if factor is not None and factor.ndim == 2:
            (width,) = _broadcast_static([(width,), (factor.type.shape[1],)])
        return Apply(self, inputs, [TensorType(result_dtype(inputs), (None, width))])

    @staticmethod
    def arrays(node, inputs):
        """``(X, table, factor)`` checked and cast to the output dtype (what kernels take)."""
        X, table, *rest = inputs
        check_columns(node, X, table.shape)
        dtype, xp = node.outputs[0].dtype, array_module(table)  # NumPy, or CuPy on a GPU
        table = xp.asarray(table, dtype=dtype)
        factor = _as_table(xp.asarray(rest[0], dtype=dtype)) if rest else None
        if factor is not None and table.shape[1] == 1 and factor.shape[1] > 1:
            table, factor = factor, table  # (V, 1) * (V, D): the product commutes
        return X, table, factor

    def perform(self, node, inputs):
        X, table, factor = self.arrays(node, inputs)
        out = _reference().csr_gather_mul_sum(X.indptr, X.indices, X.data, table, factor)
        return (out,)

    def grad(self, inputs, outputs, output_grads):
        X, table, *rest = inputs
        (gz,) = output_grads
        if gz is None:
            return [None] * len(inputs)
        factor = rest[0] if rest else None
        grads = [None, scatter_grad(X, gz, table, factor)]
        if factor is not None:
            grads.append(scatter_grad(X, gz, factor, table))
        return grads


class FusedCSRScatterGrad(Op):
    """Row-sparse gradient of ``T`` in ``X @ (T * F)``: one row per distinct column of ``X``.

    Inputs ``(X, gz, shape_of(T))`` or ``(X, gz, shape_of(T), F)`` (``scatter_grad``);
    ``dtype`` is ``T``'s. With
    ``T`` as wide as ``gz``: ``g[c] = sum x_k * gz[r_k] * F[c_k]`` (``F`` of width 1 or D);
    with ``T`` of width 1 (a per-word weight) and ``F`` as wide as ``gz``: ``g[c] = sum x_k
    * <gz[r_k], F[c_k]>``. The value is a coalesced ``RowSparse`` (sorted unique indices).
    """

    __props__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name

    def __str__(self):  # the dtype shows in the output type
        return type(self).__name__

    def make_node(self, X, gz, shape, factor=None):
        from minigrad.ops.shape import check_shape_input, static_shape

        X, gz = as_variable(X), as_variable(gz)
        shape = check_shape_input(as_variable(shape), self, "T")
        if not isinstance(X.type, CSRType):
            raise TypeError(f"FusedCSRScatterGrad needs a CSR input, got {X.type}")
        if gz.ndim != 2 or shape.type.shape[0] not in (1, 2):
            raise TypeError(f"need a (batch, D) gradient and the shape of a table, got "
                            f"{gz.type}, {shape.type}")
        inputs = [X, gz, shape] + ([as_variable(factor)] if factor is not None else [])
        return Apply(self, inputs, [RowSparseType(self.dtype, static_shape(shape))])

    @staticmethod
    def arrays(node, inputs):
        """``(X, gz, table_shape, factor, out_width)`` checked and cast for the kernels."""
        from minigrad.ops.shape import shape_tuple

        X, gz, shape, *rest = inputs
        shape = shape_tuple(shape)
        check_columns(node, X, shape)
        dtype = node.outputs[0].dtype
        out_width = 1 if len(shape) == 1 else shape[1]
        xp = array_module(gz)
        gz = xp.asarray(gz, dtype=dtype)
        factor = _as_table(xp.asarray(rest[0], dtype=dtype)) if rest else None
        return X, gz, shape, factor, out_width

    @staticmethod
    def value(shape, unique, rows):
        # the kernels return sorted unique int64 columns of a validated (or vouched-for)
        # batch, in range: no second scan of them
        return RowSparse.trusted(unique, rows.reshape((unique.shape[0],) + shape[1:]), shape,
                                 coalesced=True)

    def perform(self, node, inputs):
        X, gz, shape, factor, out_width = self.arrays(node, inputs)
        unique, rows = _reference().csr_scatter_grad_rows(
            X.indptr, X.indices, X.data, gz, shape[0], factor, out_width)
        return (self.value(shape, unique, rows),)


class SlotTakeGrad(Op):
    """``TakeGrad`` whose value is coalesced: rows sharing an index are summed (sorted).

    Same inputs as ``TakeGrad`` (``shape_of(table)``, a 1-D ``idx``, ``rows``).
    Coalescing here rather than in the optimizer's ``PrepareRows`` changes no value; it
    lets later rewrites and the optimizer see one row per index.
    """

    __props__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name

    def __str__(self):  # the dtype shows in the output type
        return type(self).__name__

    def make_node(self, shape, idx, rows):
        from minigrad.ops.shape import check_shape_input, static_shape

        shape = check_shape_input(as_variable(shape), self, "table")
        idx, rows = as_variable(idx), as_variable(rows)
        if idx.ndim != 1 or np.dtype(idx.dtype).kind not in INT_KINDS:
            raise TypeError(f"SlotTakeGrad needs a 1-D integer index, got {idx.type}")
        return Apply(self, [shape, idx, rows], [RowSparseType(self.dtype, static_shape(shape))])

    @staticmethod
    def arrays(node, inputs):
        from minigrad.ops.shape import shape_tuple

        shape, idx, rows = inputs
        shape = shape_tuple(shape)
        xp = array_module(rows)
        values = xp.asarray(rows, dtype=node.outputs[0].dtype).reshape((-1,) + shape[1:])
        if values.shape[0] != idx.shape[0]:
            raise ValueError(f"{values.shape[0]} gradient rows for {idx.shape[0]} indices")
        return shape, idx, values

    def perform(self, node, inputs):
        shape, idx, values = self.arrays(node, inputs)
        unique, summed = _reference().slot_coalesce_rows(idx, values, shape[0])
        return (RowSparse(unique, summed, shape, coalesced=True),)


class FusedElemwise(Op):
    """A connected chain of element-wise nodes computed as one loop (one output).

    ``inner_inputs`` are fresh leaves standing for the node's inputs, ``inner_outputs`` the
    one-element list of the chain's result over them: the inner graph ``debugprint`` shows.
    Scalar constants stay inside the inner graph; every other outside value is an input.
    ``perform`` (the NumPy reference) runs the inner nodes' own ``perform`` one by one;
    the Numba backend compiles the inner graph into one loop (``backends/numba_fused.py``).
    Equal inner graphs give equal Ops (``signature``), so ``merge`` and kernel caches
    treat them as one.
    """

    __props__ = ("signature",)

    def __init__(self, inner_inputs, inner_outputs):
        self.inner_inputs, self.inner_outputs = list(inner_inputs), list(inner_outputs)
        self.inner_nodes = toposort(self.inner_outputs)
        self.signature = inner_signature(self.inner_inputs, self.inner_outputs)

    def __str__(self):
        return f"FusedElemwise{{{formula(self.inner_inputs, self.inner_outputs[0])}}}"

    def make_node(self, *inputs):
        inputs = [as_variable(x) for x in inputs]
        if len(inputs) != len(self.inner_inputs):
            raise TypeError(f"{self} takes {len(self.inner_inputs)} inputs, got {len(inputs)}")
        for outer, inner in zip(inputs, self.inner_inputs):
            if outer.dtype != inner.dtype or outer.ndim != inner.ndim:
                raise TypeError(f"{self}: input {outer.type} where {inner.type} was fused")
        return Apply(self, inputs, [o.type for o in self.inner_outputs])

    def perform(self, node, inputs):
        """Each inner node's own ``perform`` in turn: a failure (values that do not
        broadcast) is reported by the inner node where it happens, with its formula."""
        values = dict(zip(self.inner_inputs, inputs))
        for inner in self.inner_nodes:
            args = [values[v] if v in values else v.data for v in inner.inputs]
            for var, value in zip(inner.outputs, inner.op.perform(inner, args)):
                values[var] = value
        return tuple(np.asarray(values[o]) for o in self.inner_outputs)


def inner_signature(inner_inputs, inner_outputs):
    """A hashable text naming the inner graph up to renaming of its variables."""
    names = {v: f"a{i}:{v.type}" for i, v in enumerate(inner_inputs)}
    parts = []
    for k, node in enumerate(toposort(inner_outputs)):
        args = []
        for v in node.inputs:
            if v in names:
                args.append(names[v])
            else:  # a scalar constant, kept inside
                args.append(f"{np.asarray(v.data).dtype}({np.asarray(v.data).item()!r})")
        parts.append(f"t{k}={node.op}({','.join(args)})->{node.outputs[0].type}")
        names[node.outputs[0]] = f"t{k}"
    return ";".join(parts) + f";out={names[inner_outputs[0]]}"


def formula(inner_inputs, out):
    """``exp(a0 * a1) - a2``: the inner graph as one readable expression; a value used twice
    is named once (``t0 + t0 where t0 = exp(a0)``), as the loop computes it once."""
    from minigrad.ops.elemwise import Binary, Unary

    names = {v: f"a{i}" for i, v in enumerate(inner_inputs)}
    infix = {"add": "+", "sub": "-", "mul": "*", "true_div": "/", "pow": "**", "lt": "<",
             "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "neq": "!="}
    uses = {}
    for node in toposort([out]):
        for v in node.inputs:
            uses[v] = uses.get(v, 0) + 1
    shared = []

    def show(var, top=False):
        if var in names:
            return names[var]
        if var.owner is None:
            return repr(np.asarray(var.data).item())
        op, args = var.owner.op, [show(v) for v in var.owner.inputs]
        infix_op = isinstance(op, Binary) and op.name in infix
        if infix_op:
            bare = f"{args[0]} {infix[op.name]} {args[1]}"
        elif isinstance(op, (Unary, Binary)):
            bare = f"{op.name}({', '.join(args)})"
        else:
            bare = f"{type(op).__name__.lower()}({', '.join(args)})"
        if uses.get(var, 0) > 1 and not top:
            names[var] = f"t{len(shared)}"
            shared.append(f"{names[var]} = {bare}")
            return names[var]
        return f"({bare})" if infix_op and not top else bare

    text = show(out, top=True)
    return text + (f" where {', '.join(shared)}" if shared else "")


def scatter_grad(X, gz, table, factor=None):
    """``FusedCSRScatterGrad`` for ``table`` (its shape and dtype)."""
    from minigrad.ops.shape import shape_of

    table = as_variable(table)
    return FusedCSRScatterGrad(table.dtype)(X, gz, shape_of(table), factor)


#: which input is the table whose row count ``X``'s columns must match (error messages)
_TABLE_POSITION = {FusedCSRGatherSum: 1, FusedCSRScatterGrad: 2}

__all__ = ["FusedCSRGatherSum", "FusedCSRScatterGrad", "FusedElemwise", "SlotTakeGrad",
           "check_columns", "formula", "inner_signature"]
