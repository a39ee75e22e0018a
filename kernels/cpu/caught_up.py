"""Rows an exact-mode Adam read caught up the general way, kept for the step's update.

A read of lagging rows (``kernels.cpu.fresh.fresh_adam``) catches the rows up in a copy and
writes nothing (a call that fails later leaves the tables bitwise unchanged). The rows
whose catch-up has no closed form (a tiny ``v`` where ``m`` is not 0: ``_adam_catch_up``'s
truncated series or replay, ~35% of the lagging rows of the embedding benchmark) are the
expensive ones, and the update of the same step (``_adam_exact``) used to catch each of
them up a second time, from the same row and the same skipped steps. The read now keeps,
per such row, the state it started from (``pre``) and the caught-up state (``post``) on the
parameter's ``StepHistory`` (``history.caught_up``); the update takes ``post`` instead of
recomputing it where the row still holds ``pre``, its ``last`` is the same and the
catch-up's scalars (``key``) are the same. The catch-up is a deterministic function of
exactly those, so the result is bitwise the recomputed one; anything else (a row written
in between, a schedule that moved ``lr_max``, another history) is a miss and is recomputed.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.cpu.deferred_cache import njit

__all__ = ["CaughtUpRows", "catch_up_key", "keep", "take", "take_row"]


def catch_up_key(t, ratio, tol, lr_max, base, n_levels, sblocks, b1, b2, eps, decoupled,
                 amsgrad):
    """Everything besides a row's own state and ``last`` that ``_adam_catch_up`` of rows
    caught up to step ``t`` reads (with a history: its per-step lr / wd are the history's,
    not the call's). ``sblocks`` by identity: a reallocated history is another history."""
    return (int(t), float(ratio), float(tol), float(lr_max), int(base), int(n_levels),
            id(sblocks), float(b1), float(b2), float(eps), bool(decoupled), bool(amsgrad))


class CaughtUpRows:
    """Rows ``rows`` (sorted; with their ``lasts``) before (``pre[k]``: p, m, v, max) and
    after (``post[k]``) their catch-up to the step of ``key``."""

    __slots__ = ("key", "rows", "lasts", "pre", "post")

    def __init__(self, key, rows, lasts, pre, post):
        self.key, self.rows, self.lasts, self.pre, self.post = key, rows, lasts, pre, post


def keep(history, key, rows, lasts, pre, post):
    """Keep rows ``rows`` (``lasts``; ``pre`` / ``post``: ``(4, n, width)``) on
    ``history`` for the next update (replacing what an earlier read kept)."""
    order = np.argsort(rows, kind="stable")
    history.caught_up = CaughtUpRows(key, rows[order], lasts[order], pre[:, order],
                                     post[:, order])


_NONE = {}  # dtype -> the empty stand-ins passed when there is nothing to take


def take(history, key, dtype, width):
    """``(rows, lasts, pre, post)`` for the update whose catch-up has ``key``: the rows the
    read kept if they were caught up with the same scalars, else empty arrays (nothing
    matches). Taken once: the history forgets them."""
    kept = getattr(history, "caught_up", None) if history is not None else None
    if kept is not None:
        history.caught_up = None
        if kept.key == key and kept.pre.dtype == dtype and kept.pre.shape[2] == width:
            return kept.rows, kept.lasts, kept.pre, kept.post
    empty = _NONE.get(dtype)
    if empty is None:
        rows = np.zeros(0, dtype=np.int64)
        rows4 = np.zeros((4, 0, 1), dtype=dtype)
        empty = _NONE[dtype] = (rows, rows, rows4, rows4)
    return empty


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _same(a, b):
    """``a`` and ``b`` bitwise equal (NaNs aside: they never match, a miss)."""
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _row_same(X, r, S, s):
    same = True
    for d in range(X.shape[1]):
        same &= _same(float(X[r, d]), float(S[s, d]))
    return same


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def take_row(rows, lasts, pre, post, P, M, V, VM, r, L, amsgrad):
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
    if not (_row_same(P, r, pre[0], lo) and _row_same(M, r, pre[1], lo)
            and _row_same(V, r, pre[2], lo) and (not amsgrad or _row_same(VM, r, pre[3], lo))):
        return False
    for d in range(P.shape[1]):
        P[r, d], M[r, d], V[r, d] = post[0, lo, d], post[1, lo, d], post[2, lo, d]
        if amsgrad:
            VM[r, d] = post[3, lo, d]
    return True
