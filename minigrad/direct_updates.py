"""Row updates of a compiled step called straight into their compiled row loop (issue 12).

A compiled step's destructive phase used to reach each optimizer's Numba row loop through
five Python layers (``GuardedPhase`` step, ``RowUpdate.run``, ``ParamState.run``/``_call``
building keyword dicts, ``adam_rows``/``momentum_rows``) and, inside the last one,
``check_rows_args``: a full validation of the tables, the indices (a sortedness pass over
every row id) and the gradient. A user calling ``kernels.cpu.adam_rows`` needs all of that
(Numba does no bounds checking: a bad index would write anywhere). A compiled step does not:
by the time its destructive phase runs,

* ``PrepareRows`` (the node producing the update's gradient) has coalesced the gradient
  (sorted unique int64 row ids) of a ``RowSparse`` value (every id in ``[0, rows)``,
  checked when it was built; values of shape ``(n, *row shape)``), cast it to the
  parameter's dtype, and compared the shape of every state table with the parameter's;
  its value carries the checked mark (``minigrad/prologue.py``: the one mechanism);
* ``call_checks.check_destinations`` has checked every table the node writes (parameter,
  states, ``last``): an ndarray of the variable's dtype, C-contiguous, writeable;
* the step counter node produced ``t >= 1``.

So for such a node :func:`direct_update` returns a callable doing only what the kernel
wrapper does *besides* checking: 2-D views, the guard's scratch, the per-step scalars, one
call of the Numba loop. The arithmetic is the same compiled loop the wrapper calls, so the
results are bitwise those of the checked path (``tests/test_direct_updates.py``).

Lazy-mode Adam (nothing to catch up) goes one step further: the plain row loop of
``kernels/cpu/direct_rows.py`` (the same rule, inlined alike: bitwise the same results),
about 2x faster than the general loop of ``kernels/cpu/optim.py``.

Where every row update of a step is covered by it, the whole destructive phase is one
compiled call instead (``minigrad/update_driver.py``); this per-node path is then that
call's catch-up path (an exact-mode table with rows that lag), and the path of steps the
one call does not cover (row-sparse exact mode, mixed dtypes, another rule beside).

Covered: ``adam_rows`` (not amsgrad), ``momentum_rows`` and ``sgd_rows`` on the CPU kernels,
lazy and exact mode, guarded or not, parameters of rank >= 1. Anything else (another rule,
a gradient not from ``PrepareRows``, a scalar parameter, a kernel module other than
``kernels.cpu``, or a row loop whose parameters are not the ones this file was written for)
keeps the checked path: the fast path switches itself off rather than guess.
"""
from __future__ import annotations

import inspect

import numpy as np

#: parameters of the Numba row loops this file calls; a loop whose signature changed
#: (another helper edited kernels/cpu/optim.py) is not called directly
_SIGNATURES = {
    "_adam": ("P", "M", "V", "VM", "idx", "G", "has_grad", "t", "last", "exact", "lr", "b1",
              "b2", "eps", "wd", "decoupled", "amsgrad", "ratio", "tol", "lr_max", "dist",
              "has_h", "lr_h", "wd_h", "blocks", "offsets", "n_levels", "base", "replay",
              "has_s", "sblocks", "rho_pow", "logs", "guard",
              "SP", "SM", "SV", "SVM", "SL", "status", "history"),
    "_momentum": ("P", "B", "idx", "G", "has_grad", "t", "last", "exact", "lr", "mu", "damp",
                  "nesterov", "wd", "a", "dist", "has_h", "lr_h", "wd_h", "blocks",
                  "offsets", "n_levels", "base", "wd_any", "guard", "SP", "SB", "S2", "S3", "SL",
                  "status"),
}

_NO_LAST = np.zeros(1, dtype=np.int64)
_NO_SAVED_LAST = np.zeros(0, dtype=np.int64)
_NO_STATUS = np.zeros(2, dtype=np.int64)


def _loop_matches(module, name):
    fn = getattr(module, name, None)
    # a Numba dispatcher's Python function, or a plain function (``_adam`` picks its loop)
    py = getattr(fn, "py_func", fn if inspect.isfunction(fn) else None)
    if py is None:
        return False
    try:
        return tuple(inspect.signature(py).parameters) == _SIGNATURES[name]
    except (TypeError, ValueError):
        return False


def vouched(node):
    """Whether the gradient of row update ``node`` comes from ``PrepareRows`` (so its
    indices, values and the tables' shapes were checked this call)."""
    from minigrad.optim.ops import PrepareRows

    grad = node.inputs[-3]
    return grad.owner is not None and isinstance(grad.owner.op, PrepareRows)


def direct_update(node, kernels):
    """``call(inputs, guard) -> tables`` for row update ``node`` (inputs as
    ``RowUpdate.run`` takes them), or None when the node keeps the checked path."""
    from minigrad.optim.ops import RowUpdate

    if not isinstance(node.op, RowUpdate) or not vouched(node):
        return None
    try:
        import kernels.cpu as cpu
        import kernels.cpu.optim as loops
    except ImportError:  # pragma: no cover - Numba missing
        return None
    state = node.op.state
    if kernels is not cpu or node.inputs[0].ndim < 1:
        return None
    from kernels.row_kernels import row_kernel  # (a swapped table entry: checked path)

    kernel = row_kernel(state.rule, kernels)
    hyper = dict(state.kernel_hyper)
    if kernel is loops.adam_rows and not hyper.get("amsgrad") and _loop_matches(loops, "_adam") \
            and set(state.states) == {"exp_avg", "exp_avg_sq"}:
        return _AdamRows(node.op, loops, hyper)
    if kernel in (loops.momentum_rows, loops.sgd_rows) and _loop_matches(loops, "_momentum"):
        if kernel is loops.sgd_rows:
            hyper = {"momentum": 0.0, "dampening": 0.0, "nesterov": False}
        if set(state.states) != ({"buf"} if hyper["momentum"] else set()):
            return None
        return _MomentumRows(node.op, loops, hyper)
    return None


def direct_entries(nodes, entries, kernels):
    """The destructive phase's ``(thunk, ins, outs, label)`` entries with the thunk of each
    covered row update replaced by its direct call (unguarded: ``nan_guard=False``)."""
    out = []
    for node, (thunk, ins, outs, label) in zip(nodes, entries):
        call = direct_update(node, kernels)
        out.append((thunk if call is None else call, ins, outs, label))
    return out


def _memo(cache, key, make):
    """``cache[key]``, made by ``make()`` on a miss. At most 65 entries: under a schedule
    every step brings a new lr, so the cache is emptied rather than left to grow."""
    value = cache.get(key)
    if value is None:
        if len(cache) > 64:
            cache.clear()
        value = cache[key] = make()
    return value


class _Direct:
    """What every direct row update shares: the tables as 2-D views, stand-ins for absent
    arrays, and the exact-mode bookkeeping of ``ParamState.run``."""

    def __init__(self, op, loops):
        self.op, self.state, self.exact, self.loops = op, op.state, op.exact, loops
        self._empty, self._steps = {}, {}

    def empty(self, p2):
        key = (p2.dtype, p2.shape[1])
        e = self._empty.get(key)
        if e is None:
            e = self._empty[key] = np.zeros((0, p2.shape[1]), dtype=p2.dtype)
        return e

    def __call__(self, inputs, guard=None):
        tables, (grad, t, hyper) = inputs[:-3], inputs[-3:]
        t, lr, wd = int(t), float(hyper[0]), float(hyper[1])
        p = tables[0]
        rows = p.shape[0]
        width = p.size // rows if rows else int(np.prod(p.shape[1:], dtype=np.int64))
        p2 = p if p.ndim == 2 else p.reshape(rows, width)
        idx, values = grad.indices, grad.values
        g = values if values.ndim == 2 else values.reshape(idx.shape[0], width)
        exact = self.exact
        last = tables[-1] if exact else None
        states = [s if s.ndim == 2 else s.reshape(rows, width)
                  for s in tables[1:len(tables) - exact]]
        state = self.state
        if exact:  # as ParamState.run: the step's lr / wd first (a retried step rewrites it)
            state.record_step(t, lr, wd)
            steps = self.loops._Steps(state.history, lr, wd, t - 1, True, self.decoupled)
        else:  # no history: the stand-ins depend on lr and wd only
            steps = _memo(self._steps, (lr, wd), lambda: self.loops._Steps(
                None, lr, wd, t - 1, False, self.decoupled))
        if guard is not None:
            saved, saved_last = guard.buffers([p2, *states, *([None] * self.absent)], last,
                                              idx, 4)
            checks = (True, *saved, saved_last, guard.status)
        else:
            e = self.empty(p2)
            checks = (False, e, e, e, e, _NO_SAVED_LAST, _NO_STATUS)
        self.step(p2, states, idx, g, t, last if exact else _NO_LAST, lr, wd, steps, checks)
        if exact:
            state.pending = True
        return tuple(tables)


class _AdamRows(_Direct):
    absent = 1  # max_exp_avg_sq

    def __init__(self, op, loops, hyper):
        super().__init__(op, loops)
        self.b1, self.b2 = float(hyper["beta1"]), float(hyper["beta2"])
        self.eps, self.decoupled = float(hyper["eps"]), bool(hyper["decoupled"])
        self._ratio = {}
        from kernels.cpu import direct_rows

        self.lazy = direct_rows  # its lazy_adam, looked up per call

    def ratio(self, lrwd):
        return _memo(self._ratio, lrwd, lambda: self.loops.adam_drift_ratio(
            1.0, self.b1, self.b2, lrwd, self.decoupled)[1])

    def step(self, p2, states, idx, g, t, last, lr, wd, steps, checks):
        m2, v2 = states
        loops = self.loops
        if not self.exact:  # nothing to catch up: the plain loop (kernels/cpu/direct_rows)
            guard, SP, SM, SV, _, _, status = checks
            self.lazy.lazy_adam(p2, m2, v2, idx, g, t, lr, self.b1, self.b2, self.eps, wd,
                      self.decoupled, loops._prefetch_distance(p2), guard, SP, SM, SV, status)
            return
        ratio = self.ratio(steps.lrwd_max if self.decoupled else 0.0)
        loops._adam(p2, m2, v2, self.empty(p2), idx, g, True, t, last, self.exact, lr,
                    self.b1, self.b2, self.eps, wd, self.decoupled, False, ratio,
                    loops.adam_drift_tol(p2.dtype), steps.lr_max, loops._prefetch_distance(p2),
                    *steps.args(), steps.wd_any and not self.decoupled,
                    *loops.series_args(self.state.history, steps, self.b1, self.b2,
                                       self.decoupled, False, p2.dtype), *checks,
                    history=self.state.history)


class _MomentumRows(_Direct):
    decoupled = True  # as momentum_rows: its _Steps reads the history's step maps

    def __init__(self, op, loops, hyper):
        super().__init__(op, loops)
        self.mu, self.damp = float(hyper["momentum"]), float(hyper["dampening"])
        self.nesterov = bool(hyper["nesterov"])
        self.absent = 0 if self.mu else 1
        self._matrix = {}

    def matrix(self, lr, wd):
        return _memo(self._matrix, (lr, wd), lambda: self._make_matrix(lr, wd))

    def _make_matrix(self, lr, wd):
        from kernels.reference.optim import momentum_matrix

        return np.array(momentum_matrix(lr, self.mu, self.damp, self.nesterov, wd), dtype=float)

    def step(self, p2, states, idx, g, t, last, lr, wd, steps, checks):
        b2 = states[0] if states else self.empty(p2)
        self.loops._momentum(p2, b2, idx, g, True, t, last, self.exact, lr, self.mu,
                             self.damp, self.nesterov, wd, self.matrix(lr, wd),
                             self.loops._prefetch_distance(p2), *steps.args(), steps.wd_any,
                             *checks)


__all__ = ["direct_entries", "direct_update", "vouched"]
