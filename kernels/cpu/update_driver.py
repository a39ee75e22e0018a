"""The destructive phase of a compiled step as one driver call (issue 12).

A training step's destructive phase applies one row update per parameter (the embedding
step: lazy Adam on ``E`` and ``M``, dense-semantics Adam on the head ``W`` and the bias
``c``). Called one by one through the optimizer's Python layers, each costs a Python call,
its bookkeeping and a Numba dispatch (~20 us of Python each, ~100 us for an exact-mode
dense update with its history); :func:`step_rows` applies them all in one call, with their
``last`` counters: a short Python loop calling each entry's compiled loop directly.

Entries are passed as tuples of same-typed tables, padded to a fixed length (``SIZES``);
padding entries have no rows and the kind :data:`PAD` (no loop runs for them). Each loop
(:func:`dense_adam`, ``direct_rows.lazy_adam``, :func:`momentum_plain`; :func:`_restore`
after a non-finite row) is compiled alone, once per dtype, the first time a step needs it.

* ``kinds[e]``: :data:`ADAM` (lazy: ``torch.optim.SparseAdam``'s formula; exact:
  ``torch.optim.Adam``'s) or :data:`MOMENTUM` (SGD with momentum / Nesterov, plain SGD
  with ``mu = 0``; ``torch.optim.SGD``);
* ``ints[e] = (t, exact, prefetch distance)``; ``fl[e] = (lr, wd, b1|mu, b2|damp,
  eps|nesterov, decoupled)``;
* exact-mode entries only where **no row lags** (``last[r] >= t - 1``: nothing to catch
  up): this is checked for every exact entry before anything is written, and the call
  returns ``-2 - e`` (nothing written) when entry ``e`` has a lagging row, so the caller
  runs the catch-up path instead;
* ``guard``: each row's old values (and ``last``) go to row ``i`` of the entry's scratch
  as the row is read, the new ones are checked as they are written; on the first
  non-finite row of entry ``e`` the call restores that entry's written rows and every row
  of the entries before it (in reverse order), bitwise, and returns ``e``;
  ``status[e] = (rows written, bad position or -1)`` (one array per entry: the entry's
  ``RowGuard.status``) says where it stopped.

The arithmetic is the rules' element functions (``kernels/rules``) inlined with the
arguments ``kernels.cpu.optim``'s loops pass, so the results are bitwise those of the
checked path (``tests/test_update_driver.py``). No argument is checked here: the caller
(a compiled step, ``minigrad/update_driver.py``) has checked the call.
"""

from kernels.cpu.deferred_cache import njit
from kernels.cpu.direct_rows import adam_plain, lazy_adam
from kernels.cpu.rows import _not_finite, _prefetch_ahead, _row_not_finite
from kernels.rules import momentum as momentum_rule

ADAM, MOMENTUM = 0, 1
#: the kind of a padding entry (no rows, no loop)
PAD = -1

#: tables above this size have their rows asked for ahead (``kernels.cpu.optim``'s
#: distance): a step's rows of a table larger than a core's L2 (1 MiB, as the row
#: kernels' own) are mostly not in cache when the update reaches them (the
#: embedding step at V=30K, six 7.7 MB tables: the step took ~0.5 ms less with it, same
#: run, loaded box)
PREFETCH_MIN_BYTES = 1 << 20

#: the tuple lengths the driver is compiled for (a step with more entries is not driven):
#: one length, so one compile per dtype (~7 s cold); 8 entries cost ~6 us more per call
#: to dispatch than 4 would
SIZES = (8,)

_momentum_elem = njit(cache=True, nogil=True, error_model="numpy", inline="always")(
    momentum_rule.update)


@njit(cache=True, nogil=True, error_model="numpy")
def rows_lag(last, idx, t):
    """Whether a row ``idx`` of an exact-mode update at step ``t`` has a step to catch up
    (``last[r] < t - 1``): then the update writes nothing and the per-node path, which
    catches rows up, runs instead."""
    for i in range(idx.shape[0]):
        if last[idx[i]] < t - 1:
            return True
    return False


@njit(cache=True, nogil=True, error_model="numpy")
def dense_adam(P, M, V, L, idx, G, t, lr, b1, b2, eps, wd, decoupled, dist, guard, SP, SM,
               SV, SL, status):
    """Exact-mode Adam (``torch.optim.Adam``) on rows ``idx``, none of which lags: the
    step, and ``last[r] = t``; guarded, ``last`` is saved too (``adam_plain``)."""
    return adam_plain(P, M, V, L, idx, G, t, lr, b1, b2, eps, wd, decoupled, False, dist,
                      guard, SP, SM, SV, SL, status)


@njit(cache=True, nogil=True, error_model="numpy")
def momentum_plain(P, B, L, idx, G, t, exact, lr, mu, damp, nesterov, wd, dist, guard, SP, SB,
                   SL, status):
    """SGD / momentum (``torch.optim.SGD``) on rows ``idx`` (exact mode: none lags, and
    ``last[r] = t``); ``mu == 0``: plain SGD, ``B`` is not read (it may be ``P`` itself or
    a stand-in without rows).

    The guarded and the plain loop are written apart: with the saves and the finiteness
    test inside one element loop, LLVM vectorised neither, and the plain momentum loop
    took ~10x longer (2,400 rows x 64 float32: 1.8 ms against 0.18 ms). Guarded, each row's
    old values are saved as it is read and the row is tested once written (in cache)."""
    width = P.shape[1]
    first = t == 1
    n = idx.shape[0]
    none = P[:0]  # (no rows: a table the prefetch skips)
    if guard:
        for i in range(n):
            _prefetch_ahead(idx, i, dist, P, B, none)
            r = idx[i]
            if exact:
                SL[i] = L[r]
                L[r] = t
            bad = False
            if mu == 0.0:  # (one table: the test inside the loop vectorises)
                for d in range(width):
                    p0 = P[r, d]
                    SP[i, d] = p0
                    P[r, d] = _momentum_elem(float(p0), 0.0, float(G[i, d]), first, lr, 0.0,
                                             damp, nesterov, wd)[0]
                    bad |= _not_finite(P[r, d])
            else:
                for d in range(width):
                    p0, b0 = P[r, d], B[r, d]
                    SP[i, d], SB[i, d] = p0, b0
                    P[r, d], B[r, d] = _momentum_elem(float(p0), float(b0), float(G[i, d]),
                                                      first, lr, mu, damp, nesterov, wd)
                bad = _row_not_finite(P, r) or _row_not_finite(B, r)
            if bad:
                status[0], status[1] = i + 1, i
                return i
        status[0], status[1] = n, -1
        return -1
    for i in range(n):
        _prefetch_ahead(idx, i, dist, P, B, none)
        r = idx[i]
        if exact:
            L[r] = t
        if mu == 0.0:
            for d in range(width):
                P[r, d] = _momentum_elem(float(P[r, d]), 0.0, float(G[i, d]), first, lr, 0.0,
                                         damp, nesterov, wd)[0]
        else:
            for d in range(width):
                P[r, d], B[r, d] = _momentum_elem(float(P[r, d]), float(B[r, d]),
                                                  float(G[i, d]), first, lr, mu, damp,
                                                  nesterov, wd)
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def _restore(P, A, B, L, idx, SP, SA, SB, SL, written, exact):
    """Rows ``idx[:written]`` of the tables (and ``last``) back from the scratch (an empty
    scratch: a table the entry does not have)."""
    width = P.shape[1]
    for i in range(written):
        r = idx[i]
        if exact:
            L[r] = SL[i]
        for d in range(width):
            P[r, d] = SP[i, d]
        if SA.shape[0] > i:
            for d in range(width):
                A[r, d] = SA[i, d]
        if SB.shape[0] > i:
            for d in range(width):
                B[r, d] = SB[i, d]


def step_rows(kinds, P, A, B, L, idx, G, ints, fl, guard, SP, SA, SB, SL, status):
    """Every entry's row update in order (see the module note). Returns -1 (done), ``e``
    (entry ``e`` not finite: everything restored) or ``-2 - e`` (exact entry ``e`` has a
    lagging row: nothing written).

    A Python loop over compiled loops, not one compiled call: compiled, this driver
    linked every loop (``dense_adam``, ``lazy_adam``, ``momentum_plain``) into itself, and
    LLVM optimised them all again inside it at its first compile (float32, cold: 7.1 s CPU,
    of which 3.5 s the driver's own; 10.5 s at load 2.5), even for a step that calls one
    of them. Here each loop compiles alone, once per dtype, when a step first needs it.
    Each call dispatches a handful of arrays instead of fifteen tuples of eight: the
    per-step cost is about the same (``python -m benchmarks.floor --only embedding``, the
    ``minigrad`` row)."""
    n = len(kinds)
    real = [e for e in range(n) if kinds[e] != PAD]
    for e in real:  # exact entries: nothing may lag, checked before any write
        if ints[e, 1] != 0 and rows_lag(L[e], idx[e], ints[e, 0]):
            return -2 - e
    for e in real:
        try:
            bad = _entry(e, kinds, P, A, B, L, idx, G, ints, fl, guard, SP, SA, SB, SL, status)
        except Exception as err:
            done = real[:real.index(e)]
            if not done:
                raise  # nothing written: the caller may take its per-node path
            if guard:  # their rows back, as for a non-finite value
                _restore_entries(done, P, A, B, L, idx, ints, SP, SA, SB, SL, status)
            raise RuntimeError(f"step_rows: entry {e} failed after entries {done} were "
                               f"written{' (restored)' if guard else ''}") from err
        if guard and bad >= 0:  # this entry's written rows, then those before
            _restore_entries(real[:real.index(e) + 1], P, A, B, L, idx, ints, SP, SA, SB,
                             SL, status)
            return e
    return -1


def _restore_entries(entries, P, A, B, L, idx, ints, SP, SA, SB, SL, status):
    """The written rows of ``entries`` back from their scratch, last entry first."""
    for f in reversed(entries):
        _restore(P[f], A[f], B[f], L[f], idx[f], SP[f], SA[f], SB[f], SL[f], status[f][0],
                 ints[f, 1] != 0)


def _entry(e, kinds, P, A, B, L, idx, G, ints, fl, guard, SP, SA, SB, SL, status):
    """Entry ``e``'s row update (its loop's return value).

    No argument is checked here: their types are fixed where they are made and checked
    once there (``call_checks.check_destinations`` for the tables, ``PrepareRows`` for the
    gradient, ``RowGuard`` for the scratch), so a loop never refuses its arguments after
    an earlier entry wrote; re-checking every array cost ~6 us a call (4 entries), a
    third of the driver's time. Should one fail anyway, :func:`step_rows` raises a
    ``RuntimeError``, never a typing error the caller would answer by running the
    per-node path over rows already written."""
    kind = kinds[e]
    t, exact, dist = int(ints[e, 0]), ints[e, 1] != 0, int(ints[e, 2])
    lr, wd, h2, h3, h4, h5 = fl[e].tolist()
    if kind == ADAM:
        if exact:
            bad = dense_adam(P[e], A[e], B[e], L[e], idx[e], G[e], t, lr, h2, h3, h4, wd,
                             h5 != 0.0, dist, guard, SP[e], SA[e], SB[e], SL[e], status[e])
        else:
            bad = lazy_adam(P[e], A[e], B[e], idx[e], G[e], t, lr, h2, h3, h4, wd,
                            h5 != 0.0, dist, guard, SP[e], SA[e], SB[e], status[e])
    else:
        bad = momentum_plain(P[e], A[e], L[e], idx[e], G[e], t, exact, lr, h2, h3,
                             h4 != 0.0, wd, dist, guard, SP[e], SA[e], SL[e], status[e])
    return bad


__all__ = ["ADAM", "MOMENTUM", "PAD", "SIZES", "dense_adam", "momentum_plain", "rows_lag",
           "step_rows"]
