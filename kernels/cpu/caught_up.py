"""Rows an exact-mode Adam read caught up the general way, kept for the step's update.

A read of lagging rows (``kernels.cpu.fresh.fresh_adam``) catches the rows up in a copy and
writes nothing (a call that fails later leaves the tables bitwise unchanged). The rows
whose catch-up has no closed form (a tiny ``v`` where ``m`` is not 0: ``_adam_catch_up``'s
truncated series or replay, ~35% of the lagging rows of the embedding benchmark) are the
expensive ones, and the update of the same step (``_adam_exact``) used to catch each of
them up a second time, from the same row and the same skipped steps. The read now keeps,
per such row, the state it started from (``pre``) and the caught-up state (``post``) on
the parameter's ``StepHistory`` (``history.caught_up``, in a buffer the history keeps:
``kept_buffer``); the update takes ``post`` instead of recomputing it where the row still
holds ``pre``, its ``last`` is the same and the catch-up's scalars (``key``) are the same.
The catch-up is a deterministic function of exactly those, so the result is bitwise the
recomputed one; anything else (a row written in between, a schedule that moved
``lr_max``, another history) is a miss and is recomputed.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.cpu.deferred_cache import njit

__all__ = ["CaughtUpRows", "buffers", "catch_up_key", "keep", "take", "take_row"]


def catch_up_key(t, ratio, tol, lr_max, base, n_levels, sblocks, b1, b2, eps, decoupled,
                 amsgrad):
    """Everything besides a row's own state and ``last`` that ``_adam_catch_up`` of rows
    caught up to step ``t`` reads (with a history: its per-step lr / wd are the history's,
    not the call's). ``sblocks`` by identity: a reallocated history is another history."""
    return (int(t), float(ratio), float(tol), float(lr_max), int(base), int(n_levels),
            id(sblocks), float(b1), float(b2), float(eps), bool(decoupled), bool(amsgrad))


class CaughtUpRows:
    """Rows ``rows`` (with their ``lasts``) before (``pre[j, k]``: p, m, v[, max]) and
    after (``post[j, k]``) their catch-up to the step of ``key``; ``order`` sorts ``rows``
    (``sorted_rows``, ``sorted_lasts``: in that order, for the update's binary search)."""

    __slots__ = ("key", "sorted_rows", "sorted_lasts", "order", "pre", "post")

    def __init__(self, key, rows, lasts, pre, post):
        self.order = np.argsort(rows, kind="stable")
        self.key, self.sorted_rows, self.sorted_lasts = key, rows[self.order], lasts[self.order]
        self.pre, self.post = pre, post


def buffers(history, n, tables, width, dtype):
    """``(pre, post)``, each ``(n, tables, width)``, for a read that keeps ``n`` rows of
    ``tables`` tables: views of one buffer the history keeps across steps (a fresh one
    each step page-faulted ~1 MB in on every read). Forgets what was kept before."""
    history.caught_up = None
    buf = getattr(history, "kept_buffer", None)
    if (buf is None or buf.shape[1] < n or buf.shape[2:] != (tables, width)
            or buf.dtype != dtype):
        cap = max(n, 2 * buf.shape[1]) if buf is not None and buf.dtype == dtype else n
        buf = history.kept_buffer = np.empty((2, cap, tables, width), dtype=dtype)
    return buf[0, :n], buf[1, :n]


def keep(history, key, rows, lasts, pre, post):
    """Keep rows ``rows`` (``lasts``; ``pre`` / ``post`` from ``buffers``) on ``history``
    for the step's update."""
    history.caught_up = CaughtUpRows(key, rows, lasts, pre, post)


_NONE = {}  # dtype -> the empty stand-ins passed when there is nothing to take


def take(history, key, dtype, width):
    """``(sorted_rows, sorted_lasts, order, pre, post)`` for the update whose catch-up has
    ``key``: the rows the read kept if they were caught up with the same scalars, else
    empty arrays (nothing matches). Taken once: the history forgets them."""
    kept = getattr(history, "caught_up", None) if history is not None else None
    if kept is not None:
        history.caught_up = None
        if kept.key == key and kept.pre.dtype == dtype and kept.pre.shape[2] == width:
            return kept.sorted_rows, kept.sorted_lasts, kept.order, kept.pre, kept.post
    empty = _NONE.get(dtype)
    if empty is None:
        rows = np.zeros(0, dtype=np.int64)
        rows3 = np.zeros((0, 3, 1), dtype=dtype)
        empty = _NONE[dtype] = (rows, rows, rows, rows3, rows3)
    return empty


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _same(a, b):
    """``a`` and ``b`` bitwise equal (NaNs aside: they never match, a miss)."""
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _row_same(X, r, S, s, k):
    same = True
    for d in range(X.shape[1]):
        same &= _same(float(X[r, d]), float(S[s, k, d]))
    return same


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def take_row(rows, lasts, order, pre, post, P, M, V, VM, r, L, amsgrad):
    """Row ``r`` (``last`` ``L``) set to its kept caught-up state if the read kept it and
    it still holds what the read started from; returns whether it did."""
    lo, hi = 0, rows.shape[0]
    while lo < hi:  # the first kept position of row r
        mid = (lo + hi) // 2
        if rows[mid] < r:
            lo = mid + 1
        else:
            hi = mid
    if lo == rows.shape[0] or rows[lo] != r or lasts[lo] != L:
        return False
    s = order[lo]
    if not (_row_same(P, r, pre, s, 0) and _row_same(M, r, pre, s, 1)
            and _row_same(V, r, pre, s, 2) and (not amsgrad or _row_same(VM, r, pre, s, 3))):
        return False
    for d in range(P.shape[1]):
        P[r, d], M[r, d], V[r, d] = post[s, 0, d], post[s, 1, d], post[s, 2, d]
        if amsgrad:
            VM[r, d] = post[s, 3, d]
    return True
