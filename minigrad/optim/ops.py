"""The two graph Ops behind every row-sparse optimizer update.

``PrepareRows`` (an ordinary node) coalesces the gradient and checks it against the
parameter and state tables; ``RowUpdate`` (a destructive node: ``destroy_map`` covers the
parameter, its state and the last-step array) calls one fused kernel that rewrites only the
touched rows. Because every check runs in ``PrepareRows`` and the compiler runs destructive
nodes after all others, a bad gradient or a NaN (``nan_guard``) stops the step before any
table is written.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.row_kernels import fresh_read
from minigrad.graph import Apply, Op
from minigrad.types import RowSparse, RowSparseType, TensorType


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
        if g.ndim == 0:  # a scalar parameter: one row holding its value (see ParamState)
            values = xp.ascontiguousarray(xp.reshape(g, (1,)))
            return (RowSparse.trusted(xp.zeros(1, dtype=np.int64), values, (),
                                      coalesced=True),)
        rows = xp.arange(g.shape[0], dtype=np.int64)  # in range by construction: marked
        return (RowSparse.trusted(rows, xp.ascontiguousarray(g), g.shape, coalesced=True),)


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
        # the parts of a RowSparse value (its indices checked when it was built), coalesced:
        # nothing new to check, so the value carries the mark (minigrad/prologue.py)
        return (RowSparse.trusted(c.indices, values, c.shape, coalesced=True),)

    @staticmethod
    def check_shapes(node, grad, param, tables):
        if tuple(grad.shape) != tuple(param.shape):
            raise ValueError(
                f"row-sparse gradient of shape {grad.shape} for {node.inputs[1]} of shape "
                f"{param.shape}"
            )
        for var, table in zip(node.inputs[2:], tables):
            if _n_rows(table) != _n_rows(param) or (
                table.ndim > 1 and tuple(table.shape) != tuple(param.shape)
            ):
                raise ValueError(
                    f"optimizer state {var} has shape {table.shape}, parameter "
                    f"{node.inputs[1]} has shape {param.shape} (set_value changed its shape?)"
                )


def _n_rows(a):
    """Rows of a table as the kernels see it: a scalar parameter (and its 0-d state) is
    one row."""
    return a.shape[0] if a.ndim else 1


class RowUpdate(Op):
    """In-place fused update of the touched rows through ``ParamState.run`` (the rule's
    kernel, hyperparameters by name). Inputs: param, present states, [last], grad, t_new,
    hyper (``[lr, weight_decay]`` of this step, from ``StepHyper``)."""

    __props__ = ("state", "exact")

    #: its kernel saves and checks the rows it writes when given a ``RowGuard``
    #: (``call_checks.GuardedPhase`` does: one guard per node of a guarded function)
    checks_own_writes = True

    def __init__(self, state, exact):
        self.state, self.exact = state, bool(exact)
        n = 1 + len(state.states) + self.exact
        self.destroy_map = {i: i for i in range(n)}

    def make_node(self, param, *rest):
        tables = [param, *rest[:-3]]
        return Apply(self, [*tables, *rest[-3:]], [v.type for v in tables])

    def run(self, module, inputs, guard=None):
        """The step on the touched rows, with the kernels of ``module``. With a
        ``RowGuard`` the kernel saves the rows it overwrites into it and checks the new
        ones; ``guard.status`` then says how many rows it wrote and where it stopped."""
        tables, (grad, t, hyper) = inputs[:-3], inputs[-3:]
        hyper = np.asarray(_host(hyper), dtype=np.float64)
        # PrepareRows made grad: coalesced, range-checked indices, so it carries the mark
        # and the kernel skips its scan (any other value is checked: minigrad/prologue.py)
        self.state.run(module, list(tables), grad.indices, grad.values, int(t),
                       float(hyper[0]), float(hyper[1]), self.exact, guard,
                       trusted=grad.checked and grad.coalesced)
        return tuple(tables)

    def perform(self, node, inputs):
        return self.run(kernel_module("numpy"), inputs)


def _host(a):
    return a.get() if hasattr(a, "__cuda_array_interface__") else a


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
            # as on the host: the parts of a RowSparse value, coalesced (see perform)
            return (RowSparse.trusted(idx, vals, grad.shape, coalesced=True),)

        return thunk


_register_cupy()


def _check_rows(node, rows, n_rows):
    if rows.shape[0] and (int(rows[0]) < 0 or int(rows[-1]) >= n_rows):
        bad = int(rows[0]) if int(rows[0]) < 0 else int(rows[-1])
        raise IndexError(
            f"index {node.inputs[-1].name or 'index'!r}: value {bad} is out of range for "
            f"{node.inputs[0].name or 'the table'} with {n_rows} rows "
            f"(valid: 0..{n_rows - 1})"
        )


class FreshTake(Op):
    """``table[idx]`` as the dense optimizer would hold it: the gathered rows of an
    exact-mode table, caught up to the table's current step.

    In exact mode a row's stored value lags while it is not touched; the optimizer applies
    the skipped steps when the row next appears in a gradient (or at a flush). A gather
    that reads it first (the forward pass of a training step, or an evaluation function)
    goes through this node: the lagging gathered rows are copied out and caught up in the
    copy by the rule's kernel, so the read costs O(rows gathered) and writes nothing
    (a call that fails later leaves table and ``last`` bitwise unchanged, issue 15.5).
    Inputs: param, present states, last, step (the table's step counter), idx.
    """

    __props__ = ("state",)

    def __init__(self, state):
        self.state = state

    def make_node(self, *inputs):
        param, idx = inputs[0], inputs[-1]
        shape = idx.type.shape + param.type.shape[1:]
        return Apply(self, list(inputs), [TensorType(param.dtype, shape)])

    def run(self, module, node, inputs):
        from minigrad.types import array_module

        tables, (t, idx) = list(inputs[:-2]), inputs[-2:]
        param, last, t = tables[0], tables[-1], int(t)
        xp = array_module(param)
        idx = xp.asarray(idx)
        flat = xp.ascontiguousarray(idx.reshape(-1), dtype=np.int64)
        shape = tuple(idx.shape) + tuple(param.shape[1:])
        width = math.prod(param.shape[1:])
        views = [a.reshape(a.shape[0], width) for a in tables[:-1]]
        fused = fresh_read(self.state.rule, module) if t >= 1 else None
        if fused is not None:  # gather and catch up in one pass (kernels.cpu.fresh)
            bad, out = fused(views, last, flat, t, self.state.history, self.state.kernel_hyper)
            if bad >= 0:
                _check_rows(node, xp.asarray([int(flat[bad])]), param.shape[0])
            if out is not None:
                return (out.reshape(shape),)
        # one pass: the gathered rows, and a copy of the lagging ones' state for the catch-up
        bad, out, pos, sub, sub_last = module.gather_lagging(views, last, flat, t)
        if bad >= 0:
            _check_rows(node, xp.asarray([int(flat[bad])]), param.shape[0])
        if pos.shape[0] and t >= 1:
            # each lagging read gets its own copy (a repeated index is caught up twice,
            # identically: cheaper than de-duplicating every read)
            local = xp.arange(pos.shape[0], dtype=np.int64)
            self.state.catch_up(module, [*sub, sub_last], local, t, trusted=True)
            if pos.shape[0] == flat.shape[0]:
                # every read lags (the common case on a large table): the caught-up copy is
                # the result as it stands; the row scatter costs ~11 us for 256 rows
                out = sub[0]
            else:
                out[pos] = sub[0]
        return (out.reshape(shape),)

    def perform(self, node, inputs):
        return self.run(kernel_module("numpy"), node, inputs)


class CatchUpAll(Op):
    """Every row of an exact-mode table caught up (in place) to the table's step: what a
    *dense* read of it needs (an elementwise op over the whole table reads all rows).
    Catching up changes the representation, not the logical state (the parameter "is" its
    caught-up value), so it runs in graph order. Inputs: param, states, last, step."""

    __props__ = ("state",)

    def __init__(self, state):
        self.state = state

    def make_node(self, param, *rest):
        return Apply(self, [param, *rest], [param.type])

    def run(self, module, node, inputs):
        from minigrad.types import array_module

        tables, t = list(inputs[:-1]), int(inputs[-1])
        param, last = tables[0], tables[-1]
        # nothing pending (e.g. a table updated densely every step): skip the kernel call
        if t >= 1 and int(last.min()) < t:
            rows = array_module(param).arange(_n_rows(param), dtype=np.int64)
            self.state.catch_up(module, tables, rows, t, trusted=True)
        return (param,)

    def perform(self, node, inputs):
        return self.run(kernel_module("numpy"), node, inputs)


def _reads_values(op):
    """Whether ``op`` reads the values of an exact-mode table it takes: not a ``Shape``
    (it reads the shape only), nor a gather or the optimizer's own nodes (they catch up
    what they read)."""
    from minigrad.ops.indexing import Take

    if getattr(op, "reads_shape_only", False):
        return False
    return not isinstance(op, (Take, RowUpdate, FreshTake, CatchUpAll, PrepareRows))


def needs_flush(var, nodes):
    """Whether a function made of ``nodes`` must flush ``var`` before each call: some node
    reads its values other than through ``FreshTake``/``CatchUpAll`` (which catch up what
    they read), ``Shape`` or the optimizer's own nodes."""
    for node in nodes:
        if isinstance(node.op, (RowUpdate, FreshTake, CatchUpAll, PrepareRows)):
            continue
        if getattr(node.op, "reads_shape_only", False):  # Shape(var): not a data read
            continue
        if any(v is var for v in node.inputs):
            return True
    return False


def fresh_reads(outputs):
    """Rewrite: reads of an exact-mode table see caught-up values. A row gather reads
    through ``FreshTake`` (only the gathered rows are caught up, in a copy), in a training
    step as in a function that only evaluates; in a function that updates the table, any
    other op that reads its values (e.g. ``P ** 2`` of a dense cost) reads through
    ``CatchUpAll``. (Dense reads in other functions are served by a flush before the call.)
    """
    from minigrad.graph import toposort
    from minigrad.ops.indexing import Take
    from minigrad.optim.param_state import exact_state_of
    from minigrad.rewrite import apply_local
    from minigrad.variables import SharedVariable

    updated = {}
    gathered = {}
    for node in toposort(outputs):
        if isinstance(node.op, RowUpdate) and node.op.exact:
            updated[node.inputs[0]] = node.op.state
        elif isinstance(node.op, Take) and isinstance(node.inputs[0], SharedVariable):
            state = exact_state_of(node.inputs[0])
            if state is not None:
                gathered[node.inputs[0]] = state
    gathered.update(updated)
    if not gathered:
        return outputs
    caught_up_all = {}

    def tables(state):
        return state.table_vars(True) + [state.step]

    def fresh_table(param):
        if param not in caught_up_all:
            caught_up_all[param] = CatchUpAll(updated[param])(*tables(updated[param]))
        return caught_up_all[param]

    def local(node):
        if isinstance(node.op, Take) and node.inputs[0] in gathered:
            state = gathered[node.inputs[0]]
            return [FreshTake(state)(*tables(state), node.inputs[1])]
        dense = [k for k, v in enumerate(node.inputs) if v in updated and _reads_values(node.op)]
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
        @numba_impl.register(FreshTake)
        def _catch_up_numba(op, node):
            module = kernel_module()
            return lambda inputs: op.run(module, node, inputs)
    except ImportError:  # pragma: no cover
        pass
    try:
        from minigrad.backends.cupy import impl as cupy_impl

        @cupy_impl.register(CatchUpAll)
        @cupy_impl.register(FreshTake)
        def _catch_up_cupy(op, node):
            import kernels.gpu as gpu

            return lambda inputs: op.run(gpu, node, inputs)
    except ImportError:  # pragma: no cover
        pass


_register_backends()
