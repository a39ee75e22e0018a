"""Matrix products. ``z = a @ b`` has VJPs ``ga = gz @ b.T`` and ``gb = a.T @ gz``;
the vector cases are the same formulas with the missing axis made explicit.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.types import TensorType
from minigrad.variables import as_variable


class MatMul(Op):
    """NumPy ``matmul`` for ``a`` of rank 1-3 and ``b`` of rank 1-2."""

    def make_node(self, a, b):
        from minigrad.ops.elemwise import result_dtype

        a, b = as_variable(a), as_variable(b)
        if not (1 <= a.ndim <= 3 and 1 <= b.ndim <= 2):
            raise TypeError(f"matmul supports ranks (1-3) @ (1-2), got {a.ndim} @ {b.ndim}")
        shape = a.type.shape[:-1] + b.type.shape[1:]
        k_a, k_b = a.type.shape[-1], b.type.shape[0]
        if k_a is not None and k_b is not None and k_a != k_b:
            raise ValueError(f"matmul: inner dimensions differ ({k_a} vs {k_b})")
        return Apply(self, [a, b], [TensorType(result_dtype([a, b]), shape)])

    def perform(self, node, inputs):
        a, b = inputs
        if a.shape[-1] != b.shape[0]:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} do not align "
                f"({node.inputs[0]} @ {node.inputs[1]})"
            )
        return (np.asarray(np.matmul(a, b), dtype=node.outputs[0].dtype),)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.shape import transpose

        (a, b), (gz,) = inputs, output_grads
        if a.ndim == 1 and b.ndim == 1:
            return [gz * b, gz * a]
        if a.ndim == 1:  # (k,) @ (k, m) -> (m,)
            return [matmul(b, gz), outer(a, gz)]
        if b.ndim == 1:  # (n, k) @ (k,) -> (n,), or batched (B, n, k) @ (k,) -> (B, n)
            if a.ndim == 3:
                from minigrad.ops.shape import reshape

                gb = matmul(transpose(FlattenBatch()(a)), reshape(gz, (-1,)))
                return [_outer_last(gz, b), gb]
            return [_outer_last(gz, b), matmul(transpose(a), gz)]
        if a.ndim == 3:  # batched (B, n, k) @ (k, m): flatten the batch for gb
            gb = matmul(transpose(FlattenBatch()(a)), FlattenBatch()(gz))
            return [matmul(gz, transpose(b)), gb]
        return [matmul(gz, transpose(b)), matmul(transpose(a), gz)]


class FlattenBatch(Op):
    """``x.reshape(-1, x.shape[-1])`` when the last length is only known at run time."""

    def make_node(self, x):
        return Apply(self, [x], [TensorType(x.dtype, (None, x.type.shape[-1]))])

    def perform(self, node, inputs):
        x = inputs[0]
        return (x.reshape(-1, x.shape[-1]),)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.shape import reshape_like

        return [reshape_like(output_grads[0], inputs[0])]


def _outer_last(g, b):
    """``g[..., None] * b``: the gradient of ``a @ b`` w.r.t. ``a`` when ``b`` is a vector."""
    from minigrad.ops.shape import expand_dims

    return expand_dims(g, g.ndim) * b


def matmul(a, b):
    return MatMul()(a, b)


def dot(a, b):
    """``a @ b`` for vectors and matrices (the NumPy ``dot`` of ranks 1 and 2)."""
    return matmul(a, b)


def outer(a, b):
    from minigrad.ops.shape import expand_dims

    a, b = as_variable(a), as_variable(b)
    return expand_dims(a, 1) * expand_dims(b, 0)
