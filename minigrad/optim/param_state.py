"""``ParamState``: one parameter's optimizer state and the one place its kernel is called.

It holds the parameter's state tables, its step counter and, in exact mode, its per-row
last-step array and ``StepHistory``. The compiled ``RowUpdate``/``FreshTake`` nodes,
``opt.apply`` and ``flush`` all call the rule's fused kernel through ``run``/``catch_up``
here, with the hyperparameters by name, so the rule is written once and called one way.

Lifetime: the optimizer and every compiled update node hold their ``ParamState``; the
flush hooks on the shared variables hold it only *weakly* (issue 15.21). Dropping the
optimizer and its compiled functions frees the state tables, and the hooks go with it. A
hook costs one attribute check when nothing is pending (``pending`` is set by an exact
step and cleared by a flush).
"""
from __future__ import annotations

import weakref

import numpy as np

from kernels.reference.history import COMPACT_MIN, StepHistory
from kernels.row_kernels import row_kernel
from minigrad.variables import shared

#: live exact-mode states by the id of their parameter: how ``fresh_reads`` finds the
#: catch-up of a table read by a function that does not update it (an evaluation step)
_EXACT = {}


def module_for(array):
    """The kernel module for ``array``: ``kernels.gpu`` for CuPy arrays, else the CPU one."""
    if type(array).__module__.split(".")[0] == "cupy":
        import kernels.gpu as gpu

        return gpu
    from minigrad.optim.ops import kernel_module

    return kernel_module()


class _FlushHook:
    """A flush hook holding its ``ParamState`` weakly."""

    __slots__ = ("ref",)

    def __init__(self, state):
        self.ref = weakref.ref(state)

    def __call__(self):
        state = self.ref()
        if state is not None and state.pending:
            state.flush()


def _drop_hooks(variables, hook):
    for var in variables:
        if hook in var._flush_hooks:
            var._flush_hooks.remove(hook)


def _forget(key, ref):
    if _EXACT.get(key) is ref:
        del _EXACT[key]


class ParamState:
    """Tables, step counter, last-step array and history of one parameter."""

    def __init__(self, label, param, states, step, rule, layout, kernel_hyper, matrix,
                 series=None):
        self.label, self.param, self.states, self.step = label, param, states, step
        self.rule, self.layout = rule, tuple(layout)
        self.kernel_hyper = dict(kernel_hyper)
        self.matrix, self.series = matrix, series
        self.last = None
        self.history = None
        self.pending = False
        self._guard = None  # RowGuard of eager apply() calls, made on first use
        self._hook = _FlushHook(self)
        self._watch([param, *states.values()])

    def __repr__(self):
        return f"ParamState({self.label})"

    def _watch(self, variables):
        for var in variables:
            var.add_flush_hook(self._hook)
        weakref.finalize(self, _drop_hooks, list(variables), self._hook)

    # --- exact mode ---------------------------------------------------------------------
    def ensure_exact(self):
        """Create the last-step array and the step history (exact mode), once."""
        if self.last is not None:
            return
        step = int(self.step.value)
        rows = self.param.value.shape[0] if self.param.value.ndim else 1
        self.last = shared(np.full(rows, step, dtype=np.int64), name=f"{self.label}.last_step")
        self.history = StepHistory(self.matrix, series=self.series)
        self.history.restart(step)
        self._watch([self.last])
        key, ref = id(self.param), weakref.ref(self)
        _EXACT[key] = ref
        weakref.finalize(self, _forget, key, ref)

    def eager_guard(self):
        """The scratch of this parameter's checked eager steps (``opt.apply``), reused."""
        if self._guard is None:
            from kernels.row_guard import RowGuard

            self._guard = RowGuard()
        return self._guard

    def table_vars(self, exact):
        """The shared variables a kernel call updates: param, states, [last]."""
        return [self.param, *self.states.values()] + ([self.last] if exact else [])

    def arrays(self, exact):
        return [v.value for v in self.table_vars(exact)]

    # --- kernel calls -----------------------------------------------------------------
    def _call(self, module, tables, idx, grad, t, lr, wd, exact, guard=None, trusted=False):
        if tables[0].ndim == 0:
            # a scalar parameter is a table of one row of one element for the kernels:
            # reshaped views, so the kernel's in-place writes land in the 0-d arrays
            tables = [a.reshape(1) for a in tables]
            grad = None if grad is None else grad.reshape(1)
        param, *rest = tables
        last = rest.pop() if exact else None
        states = dict(zip(self.states, rest))
        by_name = {k: v for k, v in states.items() if k not in self.layout}
        if guard is not None:
            by_name["guard"] = guard
        return row_kernel(self.rule, module)(
            param, *[states.get(name) for name in self.layout], idx, grad, t, last,
            lr=lr, weight_decay=wd, history=self.history if exact else None,
            trusted=trusted, **by_name, **self.kernel_hyper)

    def run(self, module, tables, idx, grad, t, lr, wd, exact, guard=None, trusted=False):
        """Step ``t`` on rows ``idx`` of ``tables`` (the arrays of ``table_vars``): exact
        mode records the step's lr / weight decay first (a retried step overwrites it).
        With a ``RowGuard`` the kernel saves the rows it writes and checks them: returns
        the position of the first non-finite row, or -1 (``guard.restore()`` undoes).
        ``trusted``: ``idx`` comes from a ``RowSparse`` that carries the checked mark and
        is coalesced (``minigrad/prologue.py``), so the kernel skips its O(rows) scan."""
        if exact:
            self.record_step(t, lr, wd)
        bad = self._call(module, tables, idx, grad, t, lr, wd, exact, guard, trusted)
        if exact:
            self.pending = True
        return bad if guard is not None else -1

    def record_step(self, t, lr, wd):
        """Exact mode: record step ``t``'s lr / weight decay in the history, compacting a
        full window first (``StepHistory.compact``: one O(V) min over ``last``)."""
        h = self.history
        if t - h.base >= h.cap and h.cap >= COMPACT_MIN:
            h.compact(int(self.last.value.min()))
        h.record(t, lr, wd)

    def catch_up(self, module, tables, rows, t, trusted=False):
        """Bring ``rows`` of ``tables`` (param, states, last) up to step ``t`` (no step);
        ``trusted``: ``rows`` are sorted, unique and in range because this code made
        them (``arange``, ``nonzero`` of ``last``): the kernel-call form of the checked
        mark (``minigrad/prologue.py``)."""
        if t < 1 or rows.shape[0] == 0:
            return
        h = self.history
        lr, wd = h.at(t)
        self._call(module, tables, rows, None, t, lr, wd, True, trusted=trusted)

    def flush(self):
        """Catch every row up to the current step (what ``get_value`` needs)."""
        if self.last is None:
            self.pending = False
            return
        t = int(self.step.value)
        last = self.last.value
        idx = (last < t).nonzero()[0]
        if idx.shape[0]:
            # the kernels of the function that pended the rows (compile.py sets it)
            module = getattr(self, "flush_module", None) or module_for(self.param.value)
            self.catch_up(module, self.arrays(True), idx, t, trusted=True)
        # every row is up to date at t: no step before it is needed any more
        self.history.restart(t)
        self.pending = False

    def stepped_every_row(self, step, lr, wd):
        """After a compiled step that updated every row at ``step`` with ``lr`` / ``wd``
        (a dense gradient in exact mode: ``minigrad/update_driver.py``,
        ``minigrad/fused_step.py``): no row lags, so the history restarts there (O(1))."""
        self.history.restart_at(int(step), float(lr), float(wd))
        self.pending = False

    def restart(self, step):
        """After a load: every row is up to date at ``step``; no skipped step remains."""
        self.step._value = np.asarray(step, dtype=np.int64)
        if self.last is not None:
            self.last.value[...] = step
            self.history.restart(step)
        self.pending = False


def exact_state_of(var):
    """The live exact-mode ``ParamState`` of parameter ``var``, or None."""
    ref = _EXACT.get(id(var))
    state = ref() if ref is not None else None
    return state if state is not None and state.param is var else None
