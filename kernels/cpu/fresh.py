"""Numba version of ``gather_lagging`` (definition and contract: kernels/reference/fresh.py).

One loop over the gathered indices copies each row into the output and, when its ``last``
is behind the step, the row of every state table into the catch-up scratch. Rows a few
indices ahead are prefetched in every table (and in ``last``), so the random reads of a
table much larger than the caches overlap instead of stalling one after another.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from kernels.cpu.rows import _prefetch_for_write

__all__ = ["gather_lagging"]

#: prefetch this many indices ahead when the param table is larger than this
_PREFETCH_MIN_BYTES = 8 << 20
_PREFETCH_DISTANCE = 8


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
    dist = _PREFETCH_DISTANCE if P.nbytes > _PREFETCH_MIN_BYTES else 0
    got = _gather_lagging(P, *states[:3], last, flat, int(t), dist, out, *subs, sub_last, pos)
    if got < 0:
        return -1 - got, None, None, None, None
    return -1, out, pos[:got], [s[:got] for s in subs[:len(tables)]], sub_last[:got]
