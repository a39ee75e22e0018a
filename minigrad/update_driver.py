"""A compiled step's destructive phase in one driver call (issue 12).

The destructive phase of a training step is one optimizer row update per parameter. Run
node by node (``call_checks.GuardedPhase``, or the generated phase of
``direct_updates``), each update costs a Python call, its bookkeeping and a Numba
dispatch: ~20 us each for a lazy update, ~100 us for the dense-semantics (exact-mode)
update of a small head or bias, most of it recording the step in the history that a
table updated on every row never reads. :class:`UpdateDriver` hands all of them to one
call, ``kernels.cpu.update_driver.step_rows`` (each entry's compiled loop in turn),
guarded or not.

**Covered** (every destructive node of the function must be, else nothing changes):
an optimizer ``RowUpdate`` whose gradient comes from ``PrepareRows`` (so the call already
checked its indices, values and the tables' shapes; ``check_destinations`` checked every
table written), on the CPU kernels, all parameters of one float dtype, at most
``SIZES[-1]`` of them, with the rule

* Adam / AdamW (not AMSGrad), lazy mode, or exact mode with a dense gradient
  (``AllRows``: every row each step, as a head ``W`` or a bias ``c`` gets);
* SGD / momentum / Nesterov, in the same two modes.

An exact-mode update with a *sparse* gradient has rows to catch up at nearly every step
and keeps the per-node path (``direct_updates``), the one that catches up. A dense one
has none as long as only dense steps touch the table; the driver call checks that
(``last[r] >= t - 1`` for every row) before it writes anything, and when a row lags (a
row-sparse exact step of another function on the same table, a checkpoint loaded) this
call runs the per-node path instead, which catches the row up. So the two paths do not
overlap: this one is the common case of every step, the per-node one the catch-up.

**Exact-mode bookkeeping.** After a dense-semantics step every row is up to date at step
``t``: as after a flush, no earlier step can be needed, so the history restarts at ``t``
(``StepHistory.restart_at``, O(1) when nothing was recorded since its last restart)
instead of recording the step, and nothing is left pending.

**Failures.** Guarded (the default), the driver call saves every row it overwrites
(``last`` included) into the entry's ``RowGuard`` scratch and checks the new values as it
writes them; on a non-finite value it restores, itself, every row written in the call and
returns the entry; :meth:`UpdateDriver.guarded` raises ``FloatingPointError`` naming the
parameter and the row. The step counters (dense updates) are written by the caller after
this phase, so a failed call changes nothing. The results are bitwise those of the
per-node path (``tests/test_update_driver.py``).
"""
from __future__ import annotations

import functools

import numpy as np

from minigrad.direct_updates import vouched


def _dense_gradient(node):
    """Whether the gradient of row update ``node`` touches every row (``AllRows``)."""
    from minigrad.optim.ops import AllRows

    grad = node.inputs[-3].owner.inputs[0]
    return grad.owner is not None and isinstance(grad.owner.op, AllRows)


def _entry_kind(node, kernels):
    """``(kind, constants)`` of a covered row update, or None."""
    import kernels.cpu.optim as loops
    from kernels.cpu import update_driver as drv
    from kernels.row_kernels import row_kernel
    from minigrad.optim.ops import RowUpdate

    if not isinstance(node.op, RowUpdate) or not vouched(node):
        return None
    state = node.op.state
    if node.op.exact and not _dense_gradient(node):
        return None  # rows to catch up at nearly every step: the per-node path
    kernel = row_kernel(state.rule, kernels)
    hyper = dict(state.kernel_hyper)
    if kernel is loops.adam_rows:
        # (the tables in this order: they are passed to the loop by position)
        if hyper.get("amsgrad") or tuple(state.states) != ("exp_avg", "exp_avg_sq"):
            return None
        return drv.ADAM, (float(hyper["beta1"]), float(hyper["beta2"]), float(hyper["eps"]),
                          float(bool(hyper["decoupled"])))
    if kernel in (loops.momentum_rows, loops.sgd_rows):
        if kernel is loops.sgd_rows:
            hyper = {"momentum": 0.0, "dampening": 0.0, "nesterov": False}
        mu = float(hyper["momentum"])
        if tuple(state.states) != (("buf",) if mu else ()):
            return None
        return drv.MOMENTUM, (mu, float(hyper["dampening"]), float(bool(hyper["nesterov"])),
                              0.0)
    return None


def _dispatch_error(err):
    """Whether ``err`` is Numba refusing the arguments (typing), raised before any write."""
    from numba.core.errors import TypingError

    return isinstance(err, (TypingError, TypeError))


class _Entry:
    """One row update: where its inputs are, what it is, its guard's scratch."""

    __slots__ = ("var", "state", "exact", "tables", "grad", "t", "hyper", "guard",
                 "n_states")

    def __init__(self, node, ins):
        from kernels.row_guard import RowGuard

        self.var, self.state, self.exact = node.inputs[0], node.op.state, node.op.exact
        self.tables, (self.grad, self.t, self.hyper) = ins[:-3], ins[-3:]
        self.n_states = len(self.tables) - 1 - self.exact
        self.guard = RowGuard()


def build(nodes, program, kernels, live_in, constants=None):
    """The driver of a destructive phase (``nodes`` and their ``(thunk, ins, outs)``
    entries), or None when some node is not covered (see the module note)."""
    try:
        import kernels.cpu as cpu
        from kernels.cpu import update_driver as drv
    except ImportError:  # pragma: no cover - Numba missing
        return None
    if kernels is not cpu or not nodes or len(nodes) > drv.SIZES[-1]:
        return None
    dtypes = {node.inputs[0].type.dtype for node in nodes}
    if len(dtypes) != 1 or np.dtype(next(iter(dtypes))).kind != "f":
        return None
    kinds = []
    for node in nodes:
        kind = _entry_kind(node, kernels)
        if kind is None:
            return None
        kinds.append(kind)
    entries = [_Entry(node, ins) for node, (_, ins, _) in zip(nodes, program)]
    return UpdateDriver(entries, kinds, np.dtype(dtypes.pop()), live_in, constants)


class UpdateDriver:
    """Every row update of a step in one driver call (see the module note), built once
    per function. ``guarded(storage, label)`` and ``plain(*live_in values)`` replace the
    destructive phase; ``fallback_guarded`` / ``fallback_plain`` (the per-node paths) run
    when a dense exact table has a row to catch up."""

    def __init__(self, entries, kinds, dtype, live_in, constants):
        from kernels.cpu import update_driver as drv
        from kernels.cpu.optim import _prefetch_distance

        self.entries = entries
        size = next(s for s in drv.SIZES if s >= len(entries))
        self._step_rows = drv.step_rows
        self._prefetch_distance = functools.partial(_prefetch_distance,
                                                    min_bytes=drv.PREFETCH_MIN_BYTES)
        self._pos = {s: k for k, s in enumerate(live_in)}
        self._const = dict(constants or {})
        self._disabled = False
        self.fallback_guarded = self.fallback_plain = None
        empty = np.zeros((0, 1), dtype=dtype)
        no_rows, no_last = np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
        self._empty = {}
        # the padding: stand-ins without rows, copied per call and filled for the entries
        self._lists = [[empty] * size for _ in range(3)] + [[no_last] * size,
                                                             [no_rows] * size,
                                                             [empty] * size]
        self._scratch = [[empty] * size for _ in range(3)] + [[no_rows] * size]
        self.kinds = np.full(size, drv.PAD, dtype=np.int64)
        self.ints = np.zeros((size, 3), dtype=np.int64)
        self.fl = np.zeros((size, 6), dtype=np.float64)
        #: per entry, where the driver call records (rows written, bad position): the
        #: entry's ``RowGuard.status`` when guarded, unused stand-ins otherwise
        self._status = [np.zeros(2, dtype=np.int64) for _ in range(size)]
        for k, (kind, consts) in enumerate(kinds):
            self.kinds[k] = kind
            self.ints[k, 1] = entries[k].exact
            self.fl[k, 2:] = consts
        self._exact = [e for e in entries if e.exact]

    def _empty_like(self, p2):
        key = p2.shape[1]
        e = self._empty.get(key)
        if e is None:
            e = self._empty[key] = np.zeros((0, key), dtype=p2.dtype)
        return e

    def _run(self, value, guard):
        """One driver call on the entries' inputs (``value(slot)``); returns its code."""
        _prefetch_distance = self._prefetch_distance
        if self._disabled:
            return -2
        # fresh lists from the padding (stand-ins): nothing of this call's tables, gradients
        # or scratch is kept referenced after it (a replaced table is freed)
        P, A, B, L, I, G = (list(x) for x in self._lists)
        SP, SA, SB, SL = (list(x) for x in self._scratch)
        ints, fl = self.ints, self.fl
        for k, e in enumerate(self.entries):
            tables = [value(s) for s in e.tables]
            grad, hyper = value(e.grad), value(e.hyper)
            p = tables[0]
            if p.ndim == 2:
                p2, states = p, tables[1:1 + e.n_states]
            else:  # 2-D views: a scalar is one row of one element, a vector rows of one
                rows = p.shape[0] if p.ndim else 1
                width = p.size // rows if rows else 1
                p2 = p.reshape(rows, width)
                states = [s.reshape(rows, width) for s in tables[1:1 + e.n_states]]
            idx, g = grad.indices, grad.values
            if g.ndim != 2 or not g.flags.c_contiguous:
                g = np.ascontiguousarray(g.reshape(idx.shape[0], p2.shape[1]))
            stand_in = self._empty_like(p2)
            P[k], I[k], G[k] = p2, idx, g
            A[k] = states[0] if states else stand_in
            B[k] = states[1] if len(states) > 1 else stand_in
            if e.exact:
                L[k] = tables[-1]
            ints[k, 0] = int(value(e.t))
            ints[k, 2] = _prefetch_distance(p2)
            fl[k, 0], fl[k, 1] = hyper[0], hyper[1]
            if guard:
                (SP[k], SA[k], SB[k]), SL[k] = e.guard.buffers(
                    [p2, A[k] if states else None, B[k] if len(states) > 1 else None],
                    L[k] if e.exact else None, idx, 3)
        status = self._status
        if guard:
            for k, e in enumerate(self.entries):
                status[k] = e.guard.status  # armed by buffers(): nothing written yet
        try:
            code = self._step_rows(self.kinds, tuple(P), tuple(A), tuple(B), tuple(L),
                                   tuple(I), tuple(G), ints, fl, guard, tuple(SP), tuple(SA),
                                   tuple(SB), tuple(SL), tuple(status))
        except Exception as err:  # refused at dispatch (an array of another type or layout
            if not _dispatch_error(err):  # than its tuple's): nothing ran; per-node path
                raise
            self._disabled = True  # from now on (a compile is not retried every call)
            return -2
        return code

    def _stepped(self, value):
        """After a successful call: every row of a dense exact table is at step ``t``."""
        for e in self._exact:  # (see the module note)
            h = value(e.hyper)
            e.state.stepped_every_row(value(e.t), h[0], h[1])

    def guarded(self, storage, label):
        """The guarded destructive phase (``GuardedPhase``'s contract). The driver call
        undoes its own writes on a non-finite value; any exception that lands after it
        returned (an interrupt) is undone here from the guards, which the compiled code
        told how many rows it wrote (restoring rows it already put back writes the same
        bits again)."""
        entries = self.entries
        try:
            code = self._run(storage.__getitem__, True)
            if code >= 0:
                from minigrad.call_checks import _not_finite

                e = entries[code]
                row = int(storage[e.grad].indices[int(e.guard.status[1])])
                raise _not_finite(label, e.var, f" (row {row})")
        except BaseException:
            for e in reversed(entries):
                e.guard.restore()
            raise
        finally:
            for e in entries:
                e.guard.release()
        if code == -1:  # (the tables' rows and the histories now agree: all at step t)
            return self._stepped(storage.__getitem__)
        # a dense exact table has a row to catch up (nothing was written): per node
        return self.fallback_guarded(storage, label)

    def plain(self, *values):
        """The unguarded destructive phase (``nan_guard=False``), on its live-in values."""
        pos, const = self._pos, self._const

        def value(s):
            return values[pos[s]] if s in pos else const[s]

        if self._run(value, False) == -1:
            self._stepped(value)
        else:
            self.fallback_plain(*values)


__all__ = ["UpdateDriver", "build"]
