"""Numba version of ``gather_lagging`` (definition and contract: kernels/reference/fresh.py).

One loop over the gathered indices copies each row into the output and, when its ``last``
is behind the step, the row of every state table into the catch-up scratch. Rows a few
indices ahead are prefetched in every table (and in ``last``), so the random reads of a
table much larger than the caches overlap instead of stalling one after another.
"""
from __future__ import annotations

import numpy as np

from kernels.cpu.deferred_cache import njit
from kernels.cpu.optim import _momentum_elem, _prefetch_distance, _skipped_map
from kernels.cpu.rows import _prefetch_for_write
from kernels.row_kernels import register_fresh_reads

__all__ = ["gather_lagging", "fresh_linear"]

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _copy_row(X, r, Y, i):
    for d in range(X.shape[1]):
        Y[i, d] = X[r, d]


@njit(cache=True, nogil=True, error_model="numpy")
def _gather_lagging(P, A, B, C, last, flat, t, dist, out, SP, SA, SB, SC, SL, pos):
    """Returns the number of lagging rows, or ``-1 - i`` for a bad index at position i."""
    n, n_rows = flat.shape[0], P.shape[0]
    for i in range(n):
        if flat[i] < 0 or flat[i] >= n_rows:
            return -1 - i
    last2 = last.reshape(last.shape[0], 1)
    line = max(1, 64 // P.itemsize)
    n_lag = 0
    for i in range(n):
        if dist > 0 and i + dist < n:
            a = flat[i + dist]
            _prefetch_for_write(last2, a, 0)
            for j in range(0, P.shape[1], line):
                _prefetch_for_write(P, a, j)
                if A.shape[0] > a:
                    _prefetch_for_write(A, a, j)
                if B.shape[0] > a:
                    _prefetch_for_write(B, a, j)
                if C.shape[0] > a:
                    _prefetch_for_write(C, a, j)
        r = flat[i]
        _copy_row(P, r, out, i)
        if last[r] < t:
            _copy_row(P, r, SP, n_lag)
            if A.shape[0] > r:
                _copy_row(A, r, SA, n_lag)
            if B.shape[0] > r:
                _copy_row(B, r, SB, n_lag)
            if C.shape[0] > r:
                _copy_row(C, r, SC, n_lag)
            SL[n_lag] = last[r]
            pos[n_lag] = i
            n_lag += 1
    return n_lag


def gather_lagging(tables, last, flat, t):
    """See ``kernels.reference.fresh.gather_lagging`` (same arguments and results)."""
    P = tables[0]
    n, width, n_tables = flat.shape[0], P.shape[1], len(tables)
    empty = np.zeros((0, width), dtype=P.dtype)
    states = list(tables[1:]) + [empty] * (4 - n_tables)
    rows = np.empty((n_tables + 1, n, width), dtype=P.dtype)  # out, then one per table
    subs = [rows[k + 1] if k < n_tables else empty for k in range(4)]
    index = np.empty((2, n), dtype=np.int64)  # sub_last, pos
    out, sub_last, pos = rows[0], index[0], index[1]
    dist = _prefetch_distance(P)
    got = _gather_lagging(P, *states[:3], last, flat, int(t), dist, out, *subs, sub_last, pos)
    if got < 0:
        return -1 - got, None, None, None, None
    return -1, out, pos[:got], [s[:got] for s in subs[:len(tables)]], sub_last[:got]


# --- fused reads: gather and catch up in one pass (linear rules) ---------------------------



@njit(cache=True, nogil=True, error_model="numpy")
def _fresh_linear(P, B, last, flat, t, dist, mu, damp, nesterov, lr_h, wd_h, blocks, offsets,
                  n_levels, base, out):
    """``out[i] = P[flat[i]]`` caught up to step ``t`` without writing the tables: SGD /
    momentum's zero-gradient steps are the linear maps of the history's blocks, applied
    to ``(p, buffer)`` in registers (the same arithmetic as ``_momentum``'s catch-up,
    including torch's first step that sets the buffer). Rows that skipped the same steps
    share the map. Returns -1, or ``-2 - i`` for a bad index at position ``i``."""
    n, n_rows, width = flat.shape[0], P.shape[0], P.shape[1]
    for i in range(n):
        if flat[i] < 0 or flat[i] >= n_rows:
            return -2 - i
    last2 = last.reshape(last.shape[0], 1)
    line = max(1, 64 // P.itemsize)
    c_start, c_end, c11, c12, c21, c22 = np.int64(-1), np.int64(-1), 1.0, 0.0, 0.0, 1.0
    for i in range(n):
        if dist > 0 and i + dist < n:
            a = flat[i + dist]
            _prefetch_for_write(last2, a, 0)
            for j in range(0, width, line):
                _prefetch_for_write(P, a, j)
                if B.shape[0] > a:
                    _prefetch_for_write(B, a, j)
        r = flat[i]
        L = last[r]
        if L >= t:
            _copy_row(P, r, out, i)
            continue
        start, end = L + 1, t
        if mu == 0.0:
            if start != c_start or end != c_end:
                c11, c12, c21, c22 = _skipped_map(True, blocks, offsets, n_levels,
                                                  start - base, end - base, 1.0, 0.0, 0.0, 1.0)
                c_start, c_end = start, end
            for d in range(width):
                out[i, d] = float(P[r, d]) * c11
            continue
        first = L == 0  # the dense optimizer's step 1 sets buffer = g (torch)
        if first:
            start += 1
        if start != c_start or end != c_end:
            c11, c12, c21, c22 = _skipped_map(True, blocks, offsets, n_levels, start - base,
                                              end - base, 1.0, 0.0, 0.0, 1.0)
            c_start, c_end = start, end
        if first:
            lr1, wd1 = lr_h[1 - base], wd_h[1 - base]  # (base is 0 while a row has last 0)
            for d in range(width):
                p, b = _momentum_elem(float(P[r, d]), 0.0, 0.0, True, lr1, mu, damp, nesterov,
                                      wd1)
                out[i, d] = c11 * p + c12 * b
        else:
            for d in range(width):
                out[i, d] = c11 * float(P[r, d]) + c12 * float(B[r, d])
    return -1


def fresh_linear(tables, last, flat, t, history, hyper):
    """``(bad, out)``: rows ``flat`` of an SGD / momentum table (``tables``: 2-D param, then
    buffer if any) caught up to step ``t`` (``out``, a new array), or ``(bad, None)`` with
    ``bad`` the position of the first index outside the table; ``(-1, None)`` where this
    read does not apply (the caller then takes the general path: ``gather_lagging`` and
    the rule's row kernel)."""
    mu = float(hyper.get("momentum", 0.0))
    P = tables[0]
    if (history is None or getattr(history, "blocks", None) is None or history.n < t
            or (mu != 0.0 and len(tables) != 2)):
        return -1, None
    B = tables[1] if mu != 0.0 else P[:0]
    out = np.empty((flat.shape[0], P.shape[1]), dtype=P.dtype)
    dist = _prefetch_distance(P)
    got = _fresh_linear(P, B, last, flat, int(t), dist, mu, float(hyper.get("dampening", 0.0)),
                        bool(hyper.get("nesterov", False)), history.lr, history.wd,
                        history.blocks, history.offsets, history.n_levels, history.base, out)
    if got < -1:
        return -2 - got, None
    return -1, out


register_fresh_reads("numba", {"sgd": fresh_linear, "momentum": fresh_linear})
