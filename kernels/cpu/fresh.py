"""Numba version of ``gather_lagging`` (definition and contract: kernels/reference/fresh.py).

One loop over the gathered indices copies each row into the output and, when its ``last``
is behind the step, the row of every state table into the catch-up scratch. Rows a few
indices ahead are prefetched in every table (and in ``last``), so the random reads of a
table much larger than the caches overlap instead of stalling one after another.
"""
from __future__ import annotations

import numpy as np

from kernels.cpu.caught_up import buffers, catch_up_key, keep
from kernels.cpu.deferred_cache import njit
from kernels.cpu.optim import (
    _NO_BLOCKS,
    SERIES_MAX_RATIO,
    _adam_catch_up,
    _momentum_elem,
    _prefetch_distance,
    _series_fits,
    _series_sums,
    _skipped_map,
    series_logs,
)
from kernels.cpu.rows import _prefetch_for_read, _prefetch_for_write
from kernels.reference.optim import adam_drift_ratio, adam_drift_tol
from kernels.row_kernels import register_fresh_reads

__all__ = ["gather_lagging", "fresh_adam", "fresh_linear"]


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


# --- fused reads: Adam / AdamW (closed-form catch-up of the parameter row) ----------------


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _read_scalars(sblocks, offsets, n_levels, rho_pow, L, t, base, eps, log_b2, iu_t, amsgrad):
    """``kernels.cpu.optim._lag_scalars`` for a read (``k = t - L``): ``(Q, s0..s5,
    v_floor)``, bitwise the same values, without the decays of m and v (a read does not
    write them) and with ``iu_t = sqrt(1 - b2**t)``, the call's, computed once."""
    Q, s0, s1, s2, s3, s4, s5 = _series_sums(sblocks, offsets, n_levels, rho_pow,
                                             L + 1 - base, t - base)
    iu = iu_t
    if not amsgrad:
        iu *= np.exp(-0.5 * float(t - L) * log_b2)
    a_floor = eps * iu / (SERIES_MAX_RATIO * (1.0 - 1e-9))
    return Q, s0, s1, s2, s3, s4, s5, a_floor * a_floor


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _closed_form_rows(P, M, V, VM, flat, lasts, cs, t, dist, eps, out, fallback, amsgrad):
    """The rows pass of ``fresh_adam``: ``out[i]`` from row ``flat[i]``'s ``p, m, v``
    (AMSGrad: the max) and its scalars ``cs[i]`` by the closed form, the tables asked for
    ``dist`` rows ahead. Returns how many rows the series does not fit; their positions are
    put in ``fallback`` (``_fresh_adam_fallback`` catches them up the general way).

    ``amsgrad`` is a constant in each of the two kernels that inline this (one loop per
    variant: the plain read ran 1.3x slower in a kernel that also held AMSGrad's loop).
    A row never stepped (``lasts[i] == 0``) whose m is all zero has no drift, and the
    series fits it whatever v holds (plain Adam): it is ``Q p`` without reading v, and v
    is not prefetched for rows with ``last == 0``, which is a hint only (the row's m is
    checked). A V row is 2 of the 7 cache lines a lagging row costs."""
    n, width = flat.shape[0], P.shape[1]
    line = max(1, 64 // P.itemsize)
    n_fallback = 0
    for i in range(n):
        if dist > 0 and i + dist < n:
            a, L_ahead = flat[i + dist], lasts[i + dist]
            for j in range(0, width, line):
                _prefetch_for_read(P, a, j)
                if L_ahead < t:
                    _prefetch_for_read(M, a, j)
                    if amsgrad:
                        _prefetch_for_read(V, a, j)
                        _prefetch_for_read(VM, a, j)
                    elif L_ahead > 0:
                        _prefetch_for_read(V, a, j)
        r, L = flat[i], lasts[i]
        if L >= t:
            _copy_row(P, r, out, i)
            continue
        Q, s0, s1, s2 = cs[i, 0], cs[i, 1], cs[i, 2], cs[i, 3]
        s3, s4, s5, v_floor = cs[i, 4], cs[i, 5], cs[i, 6], cs[i, 7]
        if not amsgrad and L == 0:
            any_m = False
            for d in range(width):
                any_m |= float(M[r, d]) != 0.0
            if not any_m:  # (the closed form below with every drift 0: bitwise the same)
                for d in range(width):
                    out[i, d] = Q * float(P[r, d])
                continue
        if _series_fits(M, V, VM, r, v_floor, amsgrad):
            for d in range(width):
                m = float(M[r, d])
                ia = 1.0 / np.sqrt(float(VM[r, d]) if amsgrad else float(V[r, d]))
                z = eps * ia
                drift = m * ia * (s0 - z * (s1 - z * (s2 - z * (s3 - z * (s4 - z * s5)))))
                out[i, d] = Q * float(P[r, d]) - (drift if m != 0.0 else 0.0)
        else:  # rare (a tiny v where m is not 0)
            fallback[n_fallback] = i
            n_fallback += 1
    return n_fallback


@njit(cache=True, nogil=True, error_model="numpy")
def _closed_form_rows_adam(P, M, V, VM, flat, lasts, cs, t, dist, eps, out, fallback):
    return _closed_form_rows(P, M, V, VM, flat, lasts, cs, t, dist, eps, out, fallback, False)


@njit(cache=True, nogil=True, error_model="numpy")
def _closed_form_rows_amsgrad(P, M, V, VM, flat, lasts, cs, t, dist, eps, out, fallback):
    return _closed_form_rows(P, M, V, VM, flat, lasts, cs, t, dist, eps, out, fallback, True)


@njit(cache=True, nogil=True, error_model="numpy")
def _fresh_adam_scalars(P, last, flat, t, dist, amsgrad, eps, base, sblocks, offsets,
                        n_levels, rho_pow, logs, lasts, cs):
    """The first two passes of the fused Adam read: the rows' ``last`` (a gather whose
    misses overlap, into ``lasts``), then the per-row scalars (``cs``: compute only, shared
    by rows last updated at the same step). Returns -1, or ``-2 - i`` for a bad index at
    position ``i`` (nothing written)."""
    n, n_rows = flat.shape[0], P.shape[0]
    last2 = last.reshape(last.shape[0], 1)
    for i in range(n):
        if flat[i] < 0 or flat[i] >= n_rows:
            return -2 - i
    for i in range(n):
        if dist > 0 and i + 2 * dist < n:
            _prefetch_for_read(last2, flat[i + 2 * dist], 0)
        lasts[i] = last[flat[i]]
    iu_t = np.sqrt(-np.expm1(float(t) * logs[0]))
    c_last = np.int64(-1)
    Q = s0 = s1 = s2 = s3 = s4 = s5 = v_floor = 0.0
    for i in range(n):
        L = lasts[i]
        if L < t and L != c_last:
            Q, s0, s1, s2, s3, s4, s5, v_floor = _read_scalars(
                sblocks, offsets, n_levels, rho_pow, L, t, base, eps, logs[0], iu_t, amsgrad)
            c_last = L
        cs[i, 0], cs[i, 1], cs[i, 2], cs[i, 3] = Q, s0, s1, s2
        cs[i, 4], cs[i, 5], cs[i, 6], cs[i, 7] = s3, s4, s5, v_floor
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def _fresh_adam_fallback(P, M, V, VM, flat, lasts, fallback, t, amsgrad, lr, wd, b1, b2, eps,
                         decoupled, ratio, tol, lr_max, lr_h, wd_h, blocks, offsets, n_levels,
                         base, sblocks, rho_pow, logs, scratch, pre, post, out):
    """``out[i]`` for the positions ``fallback`` the series does not fit: each row copied
    into the one-row ``scratch`` and caught up there by the general catch-up
    (``_adam_catch_up``), as the general read would (so the read is bitwise the general
    read's). Rare per row (a tiny v where m is not 0) but costly: row ``j``'s tables
    before and after go to ``pre[j]`` / ``post[j]``, kept for the step's update
    (kernels/cpu/caught_up.py)."""
    SP, SM, SV, SVM = scratch[0:1], scratch[1:2], scratch[2:3], scratch[3:4]
    for j in range(fallback.shape[0]):
        i = fallback[j]
        r, L = flat[i], lasts[i]
        _copy_row(P, r, SP, 0)
        _copy_row(M, r, SM, 0)
        _copy_row(V, r, SV, 0)
        if amsgrad:
            _copy_row(VM, r, SVM, 0)
        for k in range(pre.shape[1]):
            _copy_row(scratch, k, pre[j], k)
        _adam_catch_up(SP, SM, SV, SVM, 0, L, t - L, lr, wd, b1, b2, eps, decoupled,
                       amsgrad, ratio, tol, lr_max, True, lr_h, wd_h, blocks, offsets,
                       n_levels, False, True, sblocks, rho_pow, logs, base)
        for k in range(post.shape[1]):
            _copy_row(scratch, k, post[j], k)
        _copy_row(SP, 0, out, i)


def fresh_adam(tables, last, flat, t, history, hyper):
    """``(bad, out)``: rows ``flat`` of an Adam / AdamW table (``tables``: 2-D param, m, v,
    then AMSGrad's max) caught up to step ``t``, as ``fresh_linear``. ``(-1, None)`` (the
    general path) where the history has no block sums for these hyperparameters, or with
    L2 decay (``weight_decay`` on Adam: its catch-up is a replay, not a closed form).

    ``out[i] = P[flat[i]]`` caught up without writing the tables: a read needs only the
    caught-up parameter row, whose closed form (``_adam_exact_catch_up`` with every skipped
    step summed, ``Q p - drift(m, v)``) is computed from the row's ``p, m, v`` (AMSGrad:
    the max) straight into ``out``; nothing is copied out, and m, v are not decayed
    (nobody reads them). Three passes (``_fresh_adam_scalars``, then the rows: one compiled
    loop per variant, ``_closed_form_rows_adam`` / ``_amsgrad``), then the rows the series
    does not fit (``_fresh_adam_fallback``). One pass doing all three stalled on each
    row's misses behind the scalars' arithmetic: 1.6x slower; asking for every row's
    lines in the first or second pass was 1.3-1.4x slower too. Separate kernels, not one,
    so a call compiles only the variant it runs."""
    b1, b2 = float(hyper["beta1"]), float(hyper["beta2"])
    decoupled, amsgrad = bool(hyper["decoupled"]), bool(hyper.get("amsgrad", False))
    series = getattr(history, "series", None)
    if (series is None or getattr(history, "sblocks", None) is None or history.n < t
            or series.key != (b1, b2, decoupled, amsgrad)
            or series.rho_pow.shape[0] < history.n_levels
            or len(tables) != 3 + amsgrad or (history.wd_max > 0 and not decoupled)):
        return -1, None
    P, M, V = tables[0], tables[1], tables[2]
    VM = tables[3] if amsgrad else P[:0]
    key = (b1, b2, amsgrad, P.dtype)
    constants = _ADAM_READ_CONSTANTS.get(key)
    if constants is None:
        tol = adam_drift_tol(P.dtype)
        constants = _ADAM_READ_CONSTANTS[key] = (tol, series_logs(b1, b2, amsgrad, tol))
    tol, logs = constants
    n, t, eps, dist = flat.shape[0], int(t), float(hyper["eps"]), _prefetch_distance(P)
    lasts, cs = np.empty(n, dtype=np.int64), np.empty((n, 8))
    got = _fresh_adam_scalars(P, last, flat, t, dist, amsgrad, eps, history.base,
                              history.sblocks, history.offsets, history.n_levels,
                              series.rho_pow, logs, lasts, cs)
    if got < -1:
        return -2 - got, None
    out, fallback = np.empty((n, P.shape[1]), dtype=P.dtype), np.empty(n, dtype=np.int64)
    rows = _closed_form_rows_amsgrad if amsgrad else _closed_form_rows_adam
    n_fallback = rows(P, M, V, VM, flat, lasts, cs, t, dist, eps, out, fallback)
    if n_fallback:
        lr, wd = history.at(t)
        _, ratio = adam_drift_ratio(1.0, b1, b2, max(lr * wd, history.lrwd_max)
                                    if decoupled else 0.0, decoupled)
        blocks = history.blocks if history.blocks is not None else _NO_BLOCKS
        lr_max = max(lr, history.lr_max)
        fallback = fallback[:n_fallback]
        pre, post = buffers(history, n_fallback, 3 + amsgrad, P.shape[1], P.dtype)
        _fresh_adam_fallback(P, M, V, VM, flat, lasts, fallback, t, amsgrad, lr, wd, b1, b2,
                             eps, decoupled, float(ratio), tol, lr_max, history.lr, history.wd,
                             blocks, history.offsets, history.n_levels, history.base,
                             history.sblocks, series.rho_pow, logs,
                             np.empty((4, P.shape[1]), dtype=P.dtype), pre, post, out)
        keep(history, catch_up_key(t, ratio, tol, lr_max, history.base, history.n_levels,
                                   history.sblocks, b1, b2, eps, decoupled, amsgrad),
             flat[fallback], lasts[fallback], pre, post)
    return -1, out


#: (b1, b2, amsgrad, dtype) -> (drift tolerance, ``series_logs``) of ``fresh_adam``: a
#: read's constants, computed once (an evaluation call is a few tens of microseconds)
_ADAM_READ_CONSTANTS = {}


register_fresh_reads("numba", {"sgd": fresh_linear, "momentum": fresh_linear,
                               "adam": fresh_adam})
