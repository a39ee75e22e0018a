"""Reverse-mode automatic differentiation: ``mg.grad(cost, wrt)``.

The chain rule, applied to a whole graph at once:

1. Find the nodes that lie on some path from a ``wrt`` variable to ``cost``; nothing
   else can contribute a gradient.
2. Seed ``d cost / d cost = 1``.
3. Visit those nodes in *reverse* topological order, so that when a node is visited the
   gradients of all its outputs are complete. Ask its Op for the vector-Jacobian product
   (``op.grad(inputs, outputs, output_grads)``): the gradient of ``cost`` with respect to
   each input, given the gradients with respect to the outputs.
4. A variable used several times (fan-out) receives one contribution per use; they are
   summed. How they are summed depends on their *types*: two row-sparse contributions
   concatenate and stay row-sparse, a row-sparse and a dense one make a dense sum.

The result is new graph, not numbers: gradients are symbolic variables that
``mg.function`` compiles like any other expression (and that can be differentiated
again where the Ops' gradients are themselves differentiable).
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import ancestors, toposort
from minigrad.types import RowSparseType, TensorType
from minigrad.variables import as_variable, constant


class DisconnectedInputError(ValueError):
    """``mg.grad`` was asked for the gradient w.r.t. a variable the cost ignores."""


# --------------------------------------------------------------------------------------
# Accumulation: one function per pair of gradient types


def _add_dense(a, b):
    from minigrad.ops import add

    return add(a, b)


def _add_row_sparse(a, b):
    from minigrad.ops import rowsparse_add

    return rowsparse_add(a, b)


ACCUMULATE = {
    (TensorType, TensorType): _add_dense,
    (RowSparseType, RowSparseType): _add_row_sparse,  # stays row-sparse: concatenation
    (TensorType, RowSparseType): _add_row_sparse,  # dense result (scatter-add)
    (RowSparseType, TensorType): _add_row_sparse,
}


def accumulate(contributions):
    """Sum a list of gradient contributions, dispatching on their types."""
    total = contributions[0]
    for g in contributions[1:]:
        total = ACCUMULATE[(type(total.type), type(g.type))](total, g)
    return total


# --------------------------------------------------------------------------------------


def _is_float(var):
    return np.dtype(var.type.dtype).kind == "f"


def _on_path(cost, wrt):
    """Variables that depend on some ``wrt`` and that ``cost`` depends on."""
    cost_side = set(ancestors([cost]))
    nodes = toposort([cost])
    reaches = set(v for v in wrt if v in cost_side)
    for node in nodes:  # forward: a node's outputs depend on wrt if any input does
        if any(i in reaches for i in node.inputs):
            reaches.update(node.outputs)
    return reaches, [n for n in nodes if any(o in reaches for o in n.outputs)]


def _densify(g):
    from minigrad.ops import rowsparse_to_dense

    return rowsparse_to_dense(g) if isinstance(g.type, RowSparseType) else g


def _match_dtype(g, var):
    """Gradients carry their variable's dtype (float32 parameters get float32 grads)."""
    from minigrad.ops import cast
    from minigrad.ops.rowsparse import values, with_values

    if g.type.dtype == var.type.dtype:
        return g
    if isinstance(g.type, RowSparseType):
        return with_values(g, cast(values(g), var.type.dtype))
    return cast(g, var.type.dtype)


def grad(cost, wrt, disconnected="raise", known_grads=None):
    """Symbolic gradient of the scalar ``cost`` with respect to ``wrt``.

    ``wrt`` is a variable or a list of them; the result has the same structure. A
    variable the cost does not depend on raises ``DisconnectedInputError``, or gets a
    zero gradient when ``disconnected="zero"``. A table reached only through row gathers
    (``table[idx]``, ``mg.sparse.dot``) gets a ``RowSparseType`` gradient.
    """
    if disconnected not in ("raise", "zero"):
        raise ValueError(f"disconnected must be 'raise' or 'zero', got {disconnected!r}")
    single = not isinstance(wrt, (list, tuple))
    wrt_list = [wrt] if single else list(wrt)
    cost = as_variable(cost)
    if not isinstance(cost.type, TensorType) or cost.ndim != 0:
        raise TypeError(f"cost must be a scalar, got {cost.type}")
    if not _is_float(cost):
        raise TypeError(f"cost must be a float scalar, got {cost.dtype}")
    for v in wrt_list:
        if not _is_float(v):
            raise TypeError(
                f"cannot differentiate with respect to {v} of dtype {v.type.dtype}: "
                "integer and boolean variables have no gradient"
            )

    reaches, nodes = _on_path(cost, wrt_list)
    contributions = {cost: [constant(np.ones((), dtype=cost.dtype))]}
    for var, g in (known_grads or {}).items():
        contributions.setdefault(var, []).append(as_variable(g))

    for node in reversed(nodes):
        output_grads = [
            accumulate(contributions[o]) if o in contributions else None for o in node.outputs
        ]
        if all(g is None for g in output_grads):
            continue
        if not node.op.row_sparse_grad_ok:
            output_grads = [None if g is None else _densify(g) for g in output_grads]
        input_grads = node.op.grad(node.inputs, node.outputs, output_grads)
        if len(input_grads) != len(node.inputs):
            raise RuntimeError(f"{node.op}.grad returned {len(input_grads)} gradients")
        for inp, g in zip(node.inputs, input_grads):
            if g is None or inp not in reaches or not _is_float(inp):
                continue
            contributions.setdefault(inp, []).append(_match_dtype(as_variable(g), inp))

    results = []
    for v in wrt_list:
        if v in contributions:
            results.append(accumulate(contributions[v]))
        elif disconnected == "zero":
            from minigrad.ops import broadcast_like

            results.append(broadcast_like(constant(np.zeros((), dtype=v.dtype)), v))
        else:
            raise DisconnectedInputError(
                f"cost does not depend on {v} (pass disconnected='zero' to get zeros)"
            )
    return results[0] if single else results
