"""The two graph Ops behind every row-sparse optimizer update.

``PrepareRows`` (an ordinary node) coalesces the gradient and checks it against the
parameter and state tables; ``RowUpdate`` (a destructive node: ``destroy_map`` covers the
parameter, its state and the last-step array) calls one fused kernel that rewrites only the
touched rows. Because every check runs in ``PrepareRows`` and the compiler runs destructive
nodes after all others, a bad gradient or a NaN (``nan_guard``) stops the step before any
table is written.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.types import RowSparse, RowSparseType


def kernel_module(backend=None):
    """The host kernels of ``backend`` (default ``mg.config.backend``, the one place that
    reads ``MINIGRAD_BACKEND``): ``kernels.reference`` for "numpy", else ``kernels.cpu``
    (``kernels.reference`` when Numba is missing)."""
    from minigrad.config import config

    if (backend or config.backend) != "numpy":
        try:
            import kernels.cpu as cpu

            return cpu
        except ImportError:
            pass
    import kernels.reference as reference

    return reference


class AllRows(Op):
    """A dense gradient as a row-sparse one that touches every row (no copy of the rows)."""

    def make_node(self, g):
        return Apply(self, [g], [RowSparseType(g.dtype, g.type.shape)])

    def perform(self, node, inputs):
        from minigrad.types import array_module

        (g,) = inputs
        xp = array_module(g)
        rows = xp.arange(g.shape[0], dtype=np.int64)
        return (RowSparse(rows, xp.ascontiguousarray(g), g.shape, coalesced=True),)


class PrepareRows(Op):
    """Coalesce a row-sparse gradient, cast it to the parameter dtype, check the shapes."""

    __props__ = ()

    def make_node(self, grad, param, *tables):
        if grad.ndim != param.ndim:
            raise TypeError(f"gradient of rank {grad.ndim} for a parameter of rank {param.ndim}")
        return Apply(self, [grad, param, *tables], [RowSparseType(param.dtype, grad.type.shape)])

    def perform(self, node, inputs):
        grad, param, *tables = inputs
        self.check_shapes(node, grad, param, tables)
        c = grad.coalesce()
        values = np.ascontiguousarray(c.values, dtype=param.dtype)
        return (RowSparse(c.indices, values, c.shape, coalesced=True),)

    @staticmethod
    def check_shapes(node, grad, param, tables):
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

    from minigrad.backends.cupy import device_generic

    device_generic(AllRows)

    @impl.register
    def _prepare_rows(op: PrepareRows, node):
        import kernels.gpu as gpu

        def thunk(inputs):
            grad, param, *tables = inputs
            op.check_shapes(node, grad, param, tables)
            if grad._coalesced:
                idx, vals = grad.indices, grad.values
            else:
                idx, vals = gpu.coalesce_rows(grad.indices, grad.values)
            vals = vals.astype(param.dtype, copy=False)
            return (RowSparse(idx, vals, grad.shape, coalesced=True),)

        return thunk


_register_cupy()


class CatchUpRows(Op):
    """Bring the rows a forward gather is about to read up to date (exact mode).

    In exact mode a row's stored value lags while it is not touched; the optimizer applies
    the skipped steps when the row next appears in a gradient. But the *forward* pass of
    that step reads the row first. This node runs the rule's catch-up (the fused kernel
    with no gradient) on the unique rows of ``idx`` up to step ``t_new - 1`` and returns the
    parameter, so ``Take(CatchUpRows(...), idx)`` reads exactly what the dense optimizer
    would hold. Catching up changes the representation, not the logical state (the
    parameter "is" its caught-up value), so running it before a later error is harmless
    and it runs in graph order rather than in the destructive phase.
    """

    __props__ = ("kernel", "layout", "present", "hyper")

    def __init__(self, kernel, layout, present, hyper):
        self.kernel, self.layout = kernel, tuple(layout)
        self.present, self.hyper = tuple(present), tuple(hyper)

    def make_node(self, param, *rest):
        return Apply(self, [param, *rest], [param.type])

    def run(self, module, node, inputs):
        from minigrad.types import array_module

        tables, (t_new, idx) = inputs[:-2], inputs[-2:]
        param = tables[0]
        xp = array_module(param)
        rows = xp.unique(xp.asarray(idx).reshape(-1))
        if rows.shape[0] and (int(rows[0]) < 0 or int(rows[-1]) >= param.shape[0]):
            bad = int(rows[0]) if int(rows[0]) < 0 else int(rows[-1])
            raise IndexError(
                f"index {node.inputs[-1].name or 'index'!r}: value {bad} is out of range for "
                f"{node.inputs[0].name or 'the table'} with {param.shape[0]} rows "
                f"(valid: 0..{param.shape[0] - 1})"
            )
        if int(t_new) > 1:  # before the first step there is nothing to catch up
            self.catch_up(module, tables, rows.astype(np.int64), int(t_new) - 1)
        return (param,)

    def catch_up(self, module, tables, rows, t):
        """Apply the pending steps up to ``t`` to ``rows`` (the fused kernel, no gradient)."""
        param, states, last = tables[0], dict(zip(self.present, tables[1:-1])), tables[-1]
        getattr(module, self.kernel)(
            param, *[states.get(name) for name in self.layout], rows, None, t, last,
            *self.hyper,
        )

    def perform(self, node, inputs):
        return self.run(kernel_module("numpy"), node, inputs)


class CatchUpAll(CatchUpRows):
    """``CatchUpRows`` for every row: what a *dense* read of the parameter needs (an
    elementwise op over the whole table reads all rows, so all must be up to date)."""

    def run(self, module, node, inputs):
        from minigrad.types import array_module

        tables, t_new = inputs[:-1], int(inputs[-1])
        param, last = tables[0], tables[-1]
        # nothing pending (e.g. a table updated densely every step): skip the kernel call
        if t_new > 1 and int(last.min()) < t_new - 1:
            rows = array_module(param).arange(param.shape[0], dtype=np.int64)
            self.catch_up(module, tables, rows, t_new - 1)
        return (param,)


def _reads_densely(node, position):
    """Whether ``node`` reads the values of its input ``position`` (not just its shape)."""
    from minigrad.ops.indexing import Take

    if isinstance(node.op, (Take, RowUpdate, CatchUpRows, PrepareRows)):
        return False
    return position not in getattr(node.op, "shape_only_inputs", ())


def fresh_reads(outputs):
    """Rewrite: reads of a parameter updated by an exact-mode ``RowUpdate`` see caught-up
    values. A row gather reads through ``CatchUpRows`` (only the gathered rows); any other
    op that reads the values (e.g. ``P ** 2`` of a dense cost) reads through ``CatchUpAll``.
    """
    from minigrad.graph import toposort
    from minigrad.ops.indexing import Take
    from minigrad.rewrite import apply_local

    exact = {}
    for node in toposort(outputs):
        if isinstance(node.op, RowUpdate) and node.op.exact:
            n_tables = 1 + len(node.op.present) + 1
            exact[node.inputs[0]] = (node.op, node.inputs[:n_tables], node.inputs[-1])
    if not exact:
        return outputs
    caught_up_all = {}

    def fresh_table(param):
        if param not in caught_up_all:
            op, tables, t_new = exact[param]
            caught_up_all[param] = CatchUpAll(op.kernel, op.layout, op.present, op.hyper)(
                *tables, t_new)
        return caught_up_all[param]

    def local(node):
        if isinstance(node.op, Take) and node.inputs[0] in exact:
            op, tables, t_new = exact[node.inputs[0]]
            catch_up = CatchUpRows(op.kernel, op.layout, op.present, op.hyper)
            fresh = catch_up(*tables, t_new, node.inputs[1])
            return [Take()(fresh, node.inputs[1])]
        dense = [k for k, v in enumerate(node.inputs) if v in exact and _reads_densely(node, k)]
        if not dense:
            return None
        inputs = list(node.inputs)
        for k in dense:
            inputs[k] = fresh_table(inputs[k])
        return node.op.make_node(*inputs).outputs

    return apply_local(outputs, local)


def _register_rewrite():
    from minigrad.rewrite import register

    register("default", "fresh_reads")(fresh_reads)


_register_rewrite()


def _register_backends():
    try:
        from minigrad.backends.numba import impl as numba_impl

        @numba_impl.register(CatchUpAll)
        @numba_impl.register(CatchUpRows)
        def _catch_up_numba(op, node):
            module = kernel_module()
            return lambda inputs: op.run(module, node, inputs)
    except ImportError:  # pragma: no cover
        pass
    try:
        from minigrad.backends.cupy import impl as cupy_impl

        @cupy_impl.register(CatchUpAll)
        @cupy_impl.register(CatchUpRows)
        def _catch_up_cupy(op, node):
            import kernels.gpu as gpu

            return lambda inputs: op.run(gpu, node, inputs)
    except ImportError:  # pragma: no cover
        pass


_register_backends()
