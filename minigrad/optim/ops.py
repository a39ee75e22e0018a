"""The two graph Ops behind every row-sparse optimizer update.

``PrepareRows`` (an ordinary node) coalesces the gradient and checks it against the
parameter and state tables; ``RowUpdate`` (a destructive node: ``destroy_map`` covers the
parameter, its state and the last-step array) calls one fused kernel that rewrites only the
touched rows. Because every check runs in ``PrepareRows`` and the compiler runs destructive
nodes after all others, a bad gradient or a NaN (``nan_guard``) stops the step before any
table is written.
"""
from __future__ import annotations

import os

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.types import RowSparse, RowSparseType


def kernel_module(backend="numba"):
    """``kernels.cpu`` unless the NumPy backend is asked for (or Numba is missing)."""
    if backend != "numpy" and os.environ.get("MINIGRAD_BACKEND", "").lower() != "numpy":
        try:
            import kernels.cpu as cpu

            return cpu
        except ImportError:
            pass
    import kernels.reference as reference

    return reference


class PrepareRows(Op):
    """Coalesce a row-sparse gradient, cast it to the parameter dtype, check the shapes."""

    __props__ = ()

    def make_node(self, grad, param, *tables):
        if grad.ndim != param.ndim:
            raise TypeError(f"gradient of rank {grad.ndim} for a parameter of rank {param.ndim}")
        return Apply(self, [grad, param, *tables], [RowSparseType(param.dtype, grad.type.shape)])

    def perform(self, node, inputs):
        grad, param, *tables = inputs
        if tuple(grad.shape) != tuple(param.shape):
            raise ValueError(
                f"row-sparse gradient of shape {grad.shape} for {node.inputs[1]} of shape "
                f"{param.shape}"
            )
        for var, table in zip(node.inputs[2:], tables):
            if table.shape[0] != param.shape[0] or (
                table.ndim > 1 and tuple(table.shape) != tuple(param.shape)
            ):
                raise ValueError(
                    f"optimizer state {var} has shape {table.shape}, parameter "
                    f"{node.inputs[1]} has shape {param.shape} (set_value changed its shape?)"
                )
        c = grad.coalesce()
        values = np.ascontiguousarray(c.values, dtype=param.dtype)
        return (RowSparse(c.indices, values, c.shape, coalesced=True),)


class RowUpdate(Op):
    """In-place fused update of the touched rows: ``kernel(param, *states, idx, g, t, last,
    *hyper)`` from ``kernels``. Inputs: param, present states, [last], grad, t_new."""

    __props__ = ("kernel", "layout", "present", "exact", "hyper")

    def __init__(self, kernel, layout, present, exact, hyper):
        self.kernel, self.layout, self.present = kernel, tuple(layout), tuple(present)
        self.exact, self.hyper = bool(exact), tuple(hyper)
        n = 1 + len(self.present) + self.exact
        self.destroy_map = {i: i for i in range(n)}

    def make_node(self, param, *rest):
        tables = [param, *rest[:-2]]
        return Apply(self, [*tables, *rest[-2:]], [v.type for v in tables])

    def run(self, module, inputs):
        tables, (grad, t) = inputs[:-2], inputs[-2:]
        param, states = tables[0], dict(zip(self.present, tables[1:]))
        last = tables[-1] if self.exact else None
        fn = getattr(module, self.kernel)
        fn(param, *[states.get(name) for name in self.layout], grad.indices, grad.values,
           int(t), last, *self.hyper)
        return tuple(tables)

    def perform(self, node, inputs):
        return self.run(kernel_module("numpy"), inputs)


def _register_numba():
    try:
        from minigrad.backends.numba import impl
    except ImportError:  # pragma: no cover - numba missing: NumPy perform is used
        return

    @impl.register
    def _row_update(op: RowUpdate, node):
        module = kernel_module()
        return lambda inputs: op.run(module, inputs)


_register_numba()


def _register_cupy():
    try:
        from minigrad.backends.cupy import impl
    except ImportError:  # pragma: no cover
        return

    @impl.register
    def _row_update(op: RowUpdate, node):
        import kernels.gpu as gpu  # raises ImportError without CuPy/CUDA

        return lambda inputs: op.run(gpu, inputs)


_register_cupy()
