"""Numba versions of the fused optimizer row updates (definitions: kernels/reference/optim.py).

One compiled loop per rule walks the touched rows once: catch-up of the skipped steps (exact
mode), then the step, on the parameter row and its state rows together while they are in
cache. Arguments are checked by the reference's ``check_rows_args`` first (Numba does no
bounds checking); absent state tables are passed as empty arrays and never read. Arithmetic
is float64 whatever the table dtype. Every loop is compiled with ``error_model="numpy"``:
division by zero gives inf/nan as in NumPy instead of a Python exception, and without that
per-element check LLVM vectorises the loops (Adam's sqrt and division: 5x faster).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.cpu.caught_up import catch_up_key, take, take_row
from kernels.cpu.deferred_cache import njit
from kernels.cpu.rows import _not_finite, _prefetch_ahead, _prefetch_for_write, _row_not_finite
from kernels.reference.optim import (
    adam_drift_ratio,
    adam_drift_tol,
    check_history,
    check_rows_args,
    momentum_matrix,
    rmsprop_matrix,
)
from kernels.row_kernels import register_row_kernels
from kernels.rules import adagrad as adagrad_rule
from kernels.rules import adam as adam_rule
from kernels.rules import momentum as momentum_rule
from kernels.rules import rmsprop as rmsprop_rule

__all__ = ["sgd_rows", "momentum_rows", "adagrad_rows", "rmsprop_rows", "adam_rows"]

_NO_LAST = np.zeros(1, dtype=np.int64)


def _prepare(param, states, idx, grad, t, last, required, names, guard=None, trusted=False):
    """Checked 2-D views and stand-ins for what a kernel does not use; with a ``guard``
    (a ``RowGuard``), the scratch buffers the kernel saves the old rows into and the
    ``status`` array it reports into, else empty stand-ins (the kernel then neither saves
    nor checks)."""
    p2, s2, idx, grad, t = check_rows_args(param, states, idx, grad, t, last, required, names,
                                           trusted)
    empty = np.zeros((0, p2.shape[1]), dtype=p2.dtype)
    exact = last is not None
    if guard is not None:
        saved, saved_last = guard.buffers([p2, *s2], last, idx, 4)
        checks = (True, *saved, saved_last, guard.status)
    else:
        checks = (False, empty, empty, empty, empty, _NO_SAVED_LAST, _NO_STATUS)
    s2 = [empty if s is None else s for s in s2]
    has_grad = grad is not None
    grad = empty if grad is None else grad
    return p2, s2, idx, grad, has_grad, t, (last if exact else _NO_LAST), exact, checks


_NO_SAVED_LAST = np.zeros(0, dtype=np.int64)
_NO_STATUS = np.zeros(2, dtype=np.int64)  # never written: the kernel writes it when guarded


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _stop(guard, status, written, bad):
    """A guarded kernel's return: it records, itself, how many rows it wrote (saved) and
    where it stopped (``RowGuard.status``) before Python sees the result."""
    if guard:
        status[0] = written
        status[1] = bad
    return bad


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _save_row(X, S, r, i):
    if S.shape[0] > i and X.shape[0] > r:  # (a scratch given for an absent table: no read)
        for d in range(X.shape[1]):
            S[i, d] = X[r, d]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _save_rows(i, r, last, exact, P, A, B, C, SP, SA, SB, SC, SL):
    """Copy row ``r`` of each table (and ``last[r]``) into row ``i`` of its scratch (empty
    scratch: an absent table, nothing saved)."""
    _save_row(P, SP, r, i)
    _save_row(A, SA, r, i)
    _save_row(B, SB, r, i)
    _save_row(C, SC, r, i)
    if exact and SL.shape[0] > i:
        SL[i] = last[r]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _advance_last(i, r, last, exact, t, SL):
    """Exact mode, a row with nothing to catch up: save ``last[r]`` into the guard's
    scratch (when it has one), then mark the row as updated at step ``t``."""
    if exact:
        if SL.shape[0] > i:
            SL[i] = last[r]
        last[r] = t


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rows_bad(r, P, A, B, C):
    return (_row_not_finite(P, r) or _row_not_finite(A, r) or _row_not_finite(B, r)
            or _row_not_finite(C, r))


_NO_BLOCKS = np.zeros((1, 4))
_NO_STEPS = np.zeros(1)
_NO_OFFSETS = np.zeros(2, dtype=np.int64)
_NO_SBLOCKS = np.zeros((1, 7))
_NO_RHO_POW = np.ones((1, 6))


def _untrusted(trusted, last, idx):
    """``(last, idx)`` for ``check_history``'s check of the rows against a compacted
    history's base, or ``(None, None)`` for a trusted call (compiled code: the rows' last
    steps are the table's own, never below the base it compacted to)."""
    return (None, None) if trusted else (last, idx)


class _Steps:
    """The per-step arrays a kernel reads for the catch-up (stand-ins without a history)."""

    def __init__(self, history, lr, wd, need, exact, needs_blocks=False, last=None,
                 idx=None):
        self.has = history is not None and exact
        if self.has:  # last, idx: an untrusted call's rows, checked against the base
            check_history(history, need, needs_blocks, last, idx)
        h = history if self.has else None
        self.lr = h.lr if h is not None else _NO_STEPS
        self.wd = h.wd if h is not None else _NO_STEPS
        self.blocks = h.blocks if h is not None and h.blocks is not None else _NO_BLOCKS
        self.offsets = h.offsets if h is not None else _NO_OFFSETS
        self.n_levels = h.n_levels if h is not None else 1
        self.base = h.base if h is not None else 0  # storage index = step - base
        self.lr_max = max(float(lr), h.lr_max) if h is not None else float(lr)
        self.lrwd_max = (max(float(lr) * float(wd), h.lrwd_max) if h is not None
                         else float(lr) * float(wd))
        self.wd_any = (h.wd_max > 0) if h is not None else float(wd) != 0.0

    def args(self):
        return (self.has, self.lr, self.wd, self.blocks, self.offsets, self.n_levels,
                self.base)


@njit(cache=True, nogil=True, error_model="numpy")
def _range_product(blocks, offsets, n_levels, a, e):
    """``A_e ... A_a`` from the history's aligned block products (O(log(e - a)))."""
    r11, r12, r21, r22 = 1.0, 0.0, 0.0, 1.0
    s = a
    top = np.int64(n_levels - 1)
    while s <= e:
        lv = _block_level(s, e, top)  # the largest aligned block starting at s inside [s, e]
        b = offsets[lv] + (s >> lv)
        m11, m12, m21, m22 = blocks[b, 0], blocks[b, 1], blocks[b, 2], blocks[b, 3]
        r11, r12, r21, r22 = (m11 * r11 + m12 * r21, m11 * r12 + m12 * r22,
                              m21 * r11 + m22 * r21, m21 * r12 + m22 * r22)
        s += np.int64(1) << lv
    return r11, r12, r21, r22


@njit(cache=True, nogil=True, error_model="numpy")
def _skipped_map(has, blocks, offsets, n_levels, a, e, c11, c12, c21, c22):
    """The linear map of the skipped steps ``a..e``: from the history, or the constant
    step map ``c`` raised to the power ``e - a + 1``."""
    if e < a:
        return 1.0, 0.0, 0.0, 1.0
    if has:
        return _range_product(blocks, offsets, n_levels, a, e)
    return _matpow2(c11, c12, c21, c22, e - a + 1)


#: prefetch rows this far ahead, for tables larger than the caches (2.3x on 3M x 64 Adam),
#: from a core's L2 up: the exact-mode embedding step at V=30K (six 7.7 MB tables, under
#: the 8 MiB this was) took 7% less with 1 MiB (same process, alternating blocks), as the
#: lazy one's driver found (kernels/cpu/update_driver.py)
_PREFETCH_MIN_BYTES = 1 << 20
_PREFETCH_DISTANCE = 8


def _prefetch_distance(param2d, min_bytes=_PREFETCH_MIN_BYTES):
    """How many rows ahead a row loop asks for (0: none) in ``param2d``: tables over
    ``min_bytes`` are mostly not in cache when the loop reaches a row."""
    return _PREFETCH_DISTANCE if param2d.nbytes > min_bytes else 0


@njit(cache=True, nogil=True, error_model="numpy")
def _lag(last, r, t, has_grad):
    return (t - 1 if has_grad else t) - last[r]


# --- SGD / momentum ------------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy")
def _matpow2(a11, a12, a21, a22, k):
    r11, r12, r21, r22 = 1.0, 0.0, 0.0, 1.0
    while k > 0:
        if k & 1:
            r11, r12, r21, r22 = (r11 * a11 + r12 * a21, r11 * a12 + r12 * a22,
                                  r21 * a11 + r22 * a21, r21 * a12 + r22 * a22)
        a11, a12, a21, a22 = (a11 * a11 + a12 * a21, a11 * a12 + a12 * a22,
                              a21 * a11 + a22 * a21, a21 * a12 + a22 * a22)
        k >>= 1
    return r11, r12, r21, r22


#: the rule, written once in kernels/rules/momentum.py, inlined into the row loop
_momentum_elem = njit(cache=True, nogil=True, error_model="numpy", inline="always")(
    momentum_rule.update)


@njit(cache=True, nogil=True, error_model="numpy")
def _momentum(P, B, idx, G, has_grad, t, last, exact, lr, mu, damp, nesterov, wd, a, dist,
              has_h, lr_h, wd_h, blocks, offsets, n_levels, base, wd_any,
              guard, SP, SB, S2, S3, SL, status):
    width = P.shape[1]
    n = idx.shape[0]
    # the last skipped-steps map: rows that skipped the same steps (touched together, or
    # never touched) reuse it instead of multiplying it out of the history again
    c_start, c_end, c11, c12, c21, c22 = np.int64(-1), np.int64(-1), 1.0, 0.0, 0.0, 1.0
    for i in range(n):
        _prefetch_ahead(idx, i, dist, P, B, B)
        r = idx[i]
        if guard:  # the old rows, copied while they are in cache
            _save_rows(i, r, last, exact, P, B, B, B, SP, SB, S2, S3, SL)
        if exact:
            k = _lag(last, r, t, has_grad)
            start, end = last[r] + 1, last[r] + k
            if k > 0 and mu == 0.0:
                if wd_any:
                    if start != c_start or end != c_end:
                        c11, c12, c21, c22 = _skipped_map(has_h, blocks, offsets, n_levels,
                                                          start - base, end - base,
                                                          a[0], a[1], a[2], a[3])
                        c_start, c_end = start, end
                    for d in range(width):
                        P[r, d] = P[r, d] * c11
            elif k > 0:
                if last[r] == 0:  # the dense optimizer's step 1 sets buffer = g (torch)
                    lr1 = lr_h[1 - base] if has_h else lr  # (base is 0 while a row has last 0)
                    wd1 = wd_h[1 - base] if has_h else wd
                    for d in range(width):
                        P[r, d], B[r, d] = _momentum_elem(float(P[r, d]), 0.0, 0.0, True,
                                                          lr1, mu, damp, nesterov, wd1)
                    start += 1
                if start != c_start or end != c_end:
                    c11, c12, c21, c22 = _skipped_map(has_h, blocks, offsets, n_levels,
                                                      start - base, end - base,
                                                      a[0], a[1], a[2], a[3])
                    c_start, c_end = start, end
                for d in range(width):
                    p, b = float(P[r, d]), float(B[r, d])
                    P[r, d] = c11 * p + c12 * b
                    B[r, d] = c21 * p + c22 * b
            last[r] = t
        # with a gradient the step's own flag covers every value stored in the row (the
        # check runs in the update loop); a catch-up alone is scanned
        bad = False
        if has_grad and mu == 0.0:  # no branch inside the element loops: they vectorise
            for d in range(width):
                P[r, d] = _momentum_elem(float(P[r, d]), 0.0, float(G[i, d]), t == 1, lr,
                                         0.0, damp, nesterov, wd)[0]
                bad |= _not_finite(P[r, d])
        elif has_grad:
            for d in range(width):
                P[r, d], B[r, d] = _momentum_elem(float(P[r, d]), float(B[r, d]),
                                                  float(G[i, d]), t == 1, lr, mu, damp,
                                                  nesterov, wd)
                bad |= _not_finite(P[r, d]) | _not_finite(B[r, d])
        else:
            bad = guard and _rows_bad(r, P, B, S2, S3)
        if guard and bad:
            return _stop(guard, status, i + 1, i)
    return _stop(guard, status, n, -1)


def momentum_rows(param, buf, idx, grad, t, last, lr, momentum, dampening, nesterov,
                  weight_decay, history=None, guard=None, trusted=False):
    states = [buf] if momentum else [None]
    p2, (b2,), idx, g, has_grad, t, last_, exact, checks = _prepare(
        param, states, idx, grad, t, last, [bool(momentum)], ["buf"], guard, trusted)
    steps = _Steps(history, lr, weight_decay, t - has_grad, exact, True,
                   *_untrusted(trusted, last_, idx))
    a = np.array(momentum_matrix(lr, momentum, dampening, nesterov, weight_decay), dtype=float)
    return _momentum(
        p2, b2, idx, g, has_grad, t, last_, exact, float(lr), float(momentum),
        float(dampening), bool(nesterov), float(weight_decay), a, _prefetch_distance(p2),
        *steps.args(), steps.wd_any, *checks)


def sgd_rows(param, idx, grad, t, last, lr, weight_decay, history=None, guard=None,
             trusted=False):
    return momentum_rows(param, None, idx, grad, t, last, lr, 0.0, 0.0, False, weight_decay,
                         history, guard, trusted)


# --- Adagrad -------------------------------------------------------------------------------


_adagrad_elem = njit(cache=True, nogil=True, error_model="numpy", inline="always")(
    adagrad_rule.update)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _adagrad_row(P, A, G, i, r, clr, eps, wd):
    """One step of row ``r`` (gradient row ``i``); whether a value it stored is not finite
    (a caller that ignores the flag gets the loop without it: dead code is removed)."""
    bad = False
    for d in range(P.shape[1]):
        P[r, d], A[r, d] = _adagrad_elem(float(P[r, d]), float(A[r, d]), float(G[i, d]), clr,
                                         eps, wd)
        bad |= _not_finite(P[r, d]) | _not_finite(A[r, d])
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _adagrad(P, A, idx, G, has_grad, t, last, exact, lr, eps, wd, lr_decay, dist,
             has_h, lr_h, wd_h, blocks, offsets, n_levels, base, wd_any,
             guard, SP, SA, S2, S3, SL, status):
    width = P.shape[1]
    n = idx.shape[0]
    clr_t = lr / (1.0 + (t - 1) * lr_decay)  # this step's decayed lr
    for i in range(n):
        _prefetch_ahead(idx, i, dist, P, A, A)
        r = idx[i]
        if guard:  # the old rows, copied while they are in cache
            _save_rows(i, r, last, exact, P, A, A, A, SP, SA, S2, S3, SL)
        if exact:
            k = _lag(last, r, t, has_grad)
            if k > 0 and wd_any:  # replay: a zero gradient still decays the row
                # step-major: each step over the whole row (in L1) vectorises; element-major
                # would chain every element's sqrt/division latencies (10x slower)
                for s in range(last[r] + 1, last[r] + k + 1):
                    lr_s = lr_h[s - base] if has_h else lr
                    wd_s = wd_h[s - base] if has_h else wd
                    clr = lr_s / (1.0 + (s - 1) * lr_decay)
                    for d in range(width):
                        P[r, d], A[r, d] = _adagrad_elem(float(P[r, d]), float(A[r, d]), 0.0,
                                                         clr, eps, wd_s)
            last[r] = t
        # with a gradient the step's own flag covers every value stored in the row (the
        # check runs in the update loop); a catch-up alone is scanned
        if has_grad:
            bad = _adagrad_row(P, A, G, i, r, clr_t, eps, wd)
        else:
            bad = guard and _rows_bad(r, P, A, S2, S3)
        if guard and bad:
            return _stop(guard, status, i + 1, i)
    return _stop(guard, status, n, -1)


def adagrad_rows(param, acc, idx, grad, t, last, lr, eps, weight_decay, lr_decay=0.0,
                 history=None, guard=None, trusted=False):
    p2, (a2,), idx, g, has_grad, t, last_, exact, checks = _prepare(
        param, [acc], idx, grad, t, last, [True], ["acc"], guard, trusted)
    steps = _Steps(history, lr, weight_decay, t - has_grad, exact, False,
                   *_untrusted(trusted, last_, idx))
    return _adagrad(
        p2, a2, idx, g, has_grad, t, last_, exact, float(lr), float(eps), float(weight_decay),
        float(lr_decay), _prefetch_distance(p2), *steps.args(), steps.wd_any, *checks)


# --- RMSprop -------------------------------------------------------------------------------


_rmsprop_elem = njit(cache=True, nogil=True, error_model="numpy", inline="always")(
    rmsprop_rule.update)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rmsprop_row_of(P, S, GA, B, G, i, r, lr, alpha, eps, mom, centered, wd):
    """One step of row ``r``; whether a value it stored is not finite. Called with
    constant ``centered`` / ``mom == 0``, so each variant's loop has no branch inside."""
    bad = False
    for d in range(P.shape[1]):
        ga = float(GA[r, d]) if centered else 0.0
        b = float(B[r, d]) if mom != 0.0 else 0.0
        p, sq, ga, b = _rmsprop_elem(float(P[r, d]), float(S[r, d]), ga, b, float(G[i, d]),
                                     lr, alpha, eps, mom, centered, wd)
        P[r, d], S[r, d] = p, sq
        bad |= _not_finite(P[r, d]) | _not_finite(S[r, d])
        if centered:
            GA[r, d] = ga
            bad |= _not_finite(GA[r, d])
        if mom != 0.0:
            B[r, d] = b
            bad |= _not_finite(B[r, d])
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _rmsprop_row(P, S, GA, B, G, i, r, lr, alpha, eps, mom, centered, wd):
    """``_rmsprop_row_of`` for the four variants, each with its options as constants
    (branches inside the element loop keep LLVM from vectorising it: 2-4x slower). Not
    ``inline="always"``: Numba's inliner would copy the four variants' IR into
    ``_rmsprop`` again (twice), cold-compile time for a call once a row."""
    if centered:
        if mom != 0.0:
            return _rmsprop_row_of(P, S, GA, B, G, i, r, lr, alpha, eps, mom, True, wd)
        return _rmsprop_row_of(P, S, GA, B, G, i, r, lr, alpha, eps, 0.0, True, wd)
    if mom != 0.0:
        return _rmsprop_row_of(P, S, GA, B, G, i, r, lr, alpha, eps, mom, False, wd)
    return _rmsprop_row_of(P, S, GA, B, G, i, r, lr, alpha, eps, 0.0, False, wd)


@njit(cache=True, nogil=True, error_model="numpy")
def _rmsprop(P, S, GA, B, idx, G, has_grad, t, last, exact, lr, alpha, eps, mom, centered,
             wd, a, dist, has_h, lr_h, wd_h, blocks, offsets, n_levels, base, wd_any,
             guard, SP, SS, SGA, SB, SL, status):
    width = P.shape[1]
    n = idx.shape[0]
    has_buf = mom != 0.0
    for i in range(n):
        _prefetch_ahead(idx, i, dist, P, S, B)
        r = idx[i]
        if guard:  # the old rows, copied while they are in cache
            _save_rows(i, r, last, exact, P, S, GA, B, SP, SS, SGA, SB, SL)
        if exact:
            k = _lag(last, r, t, has_grad)
            if k > 0 and not wd_any:  # closed form: decays and a linear drift
                decay = alpha ** float(k)
                m11, m12, m21, m22 = 1.0, 0.0, 0.0, 1.0
                if has_buf:
                    m11, m12, m21, m22 = _skipped_map(has_h, blocks, offsets, n_levels,
                                                      last[r] + 1 - base, last[r] + k - base,
                                                      a[0], a[1], a[2], a[3])
                for d in range(width):
                    S[r, d] = S[r, d] * decay
                    if centered:
                        GA[r, d] = GA[r, d] * decay
                    if has_buf:
                        p, b = float(P[r, d]), float(B[r, d])
                        P[r, d] = m11 * p + m12 * b
                        B[r, d] = m21 * p + m22 * b
            elif k > 0:  # weight decay: replay the zero-gradient steps (step-major)
                for s in range(last[r] + 1, last[r] + k + 1):
                    lr_s = lr_h[s - base] if has_h else lr
                    wd_s = wd_h[s - base] if has_h else wd
                    for d in range(width):
                        ga = float(GA[r, d]) if centered else 0.0
                        b = float(B[r, d]) if has_buf else 0.0
                        p, sq, ga, b = _rmsprop_elem(float(P[r, d]), float(S[r, d]), ga, b,
                                                     0.0, lr_s, alpha, eps, mom, centered,
                                                     wd_s)
                        P[r, d], S[r, d] = p, sq
                        if centered:
                            GA[r, d] = ga
                        if has_buf:
                            B[r, d] = b
            last[r] = t
        # with a gradient the step's own flag covers every value stored in the row (the
        # check runs in the update loop); a catch-up alone is scanned
        if has_grad:
            bad = _rmsprop_row(P, S, GA, B, G, i, r, lr, alpha, eps, mom, centered, wd)
        else:
            bad = guard and _rows_bad(r, P, S, GA, B)
        if guard and bad:
            return _stop(guard, status, i + 1, i)
    return _stop(guard, status, n, -1)


def rmsprop_rows(param, square_avg, grad_avg, buf, idx, grad, t, last, lr, alpha, eps,
                 momentum, centered, weight_decay, history=None, guard=None, trusted=False):
    states = [square_avg, grad_avg, buf]
    p2, (s2, ga2, b2), idx, g, has_grad, t, last_, exact, checks = _prepare(
        param, states, idx, grad, t, last, [True, bool(centered), bool(momentum)],
        ["square_avg", "grad_avg", "buf"], guard, trusted)
    steps = _Steps(history, lr, weight_decay, t - has_grad, exact, bool(momentum),
                   *_untrusted(trusted, last_, idx))
    a = np.array(rmsprop_matrix(lr, momentum), dtype=float)
    return _rmsprop(
        p2, s2, ga2, b2, idx, g, has_grad, t, last_, exact, float(lr), float(alpha),
        float(eps), float(momentum), bool(centered), float(weight_decay), a,
        _prefetch_distance(p2), *steps.args(), steps.wd_any, *checks)


# --- Adam / AdamW --------------------------------------------------------------------------


_adam_elem = njit(cache=True, nogil=True, error_model="numpy", inline="always")(
    adam_rule.update)
_adam_rule_scalars = njit(cache=True, nogil=True, error_model="numpy", inline="always")(
    adam_rule.scalars)


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_scalars(lr, b1, b2, s, lazy):
    return _adam_rule_scalars(lr, b1, b2, float(s), lazy)


#: terms of the drift's series in ``eps / (a u)`` and the largest ratio it is used for:
#: the truncation error is below ``SERIES_MAX_RATIO ** SERIES_TERMS`` (1e-18) of the drift
SERIES_TERMS = 6  # written out as s0..s5 in _adam_series
SERIES_MAX_RATIO = 1e-3


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_series(P, M, V, VM, r, lag_from, k, lr, wd, b1, b2, eps, decoupled, amsgrad,
                 ratio, tol, lr_max, has_h, lr_h, wd_h, base=0):
    """Closed-form catch-up of Adam's zero-gradient steps without L2 decay: O(steps) scalar
    work per row and O(1) per element, instead of a sqrt and a division per element and step.

    Skipped step ``j`` (global step ``s = lag_from + j``) moves an element by
    ``T_j = c_s b1^j m / (a u_j + eps)``, with ``c_s = lr_s / (1 - b1^s)``, ``a = sqrt(v)``
    and ``u_j = b2^(j/2) / sqrt(1 - b2^s)`` (AMSGrad: ``a = sqrt(vmax)``, ``u_j = 1 /
    sqrt(1 - b2^s)``: a zero gradient never raises the max). Expanding ``1 / (a u + eps)``
    in ``z = eps / (a u)`` gives ``T_j = (m / a) sum_n (-eps / a)^n c_s b1^j u_j^-(n+1)``: the
    sums ``S_n`` over the steps are the same for every element of the row (AdamW's decay
    enters as ``S_n <- q_s S_n + ...``, ``p <- Q p - drift``). The steps stop where the
    bound on the rest of the drift (as in the replay) falls below ``tol * |p|`` for every
    element. Returns the number of steps done (m, v decayed accordingly), or -1 without
    writing anything when some element's ``z`` exceeds ``SERIES_MAX_RATIO`` (a tiny ``v``):
    the caller then replays the steps.
    """
    width = P.shape[1]
    w2 = 0.0  # max (|m| / (a |p|))**2: the bound's per-row factor, squared (no sqrt here)
    v_min = np.inf
    for d in range(width):
        m = float(M[r, d])
        if amsgrad and float(VM[r, d]) < float(V[r, d]):
            return -1  # a max below v (a loaded state?): the replay applies the max itself
        if m != 0.0:
            den = float(VM[r, d]) if amsgrad else float(V[r, d])
            p = float(P[r, d])
            v_min = min(v_min, den)
            w2 = max(w2, m * m / (den * (p * p)))
    if v_min == 0.0:
        return -1
    w, a_min = np.sqrt(w2), np.sqrt(v_min)
    # the six sums S_n (SERIES_TERMS) as scalars: they stay in registers
    s0 = s1 = s2 = s3 = s4 = s5 = 0.0
    Q = 1.0
    pw1, pw2 = b1 ** float(lag_from), b2 ** float(lag_from)
    bj, f2 = 1.0, 1.0  # b1^j, b2^j
    ihj, ih_step = 1.0, (1.0 if amsgrad else 1.0 / np.sqrt(b2))  # 1 / b2^(j/2)
    bound = w * lr_max * ratio
    j = 0
    while j < k and w != 0.0:
        j += 1
        s = lag_from + j
        lr_s = lr_h[s - base] if has_h else lr
        q = 1.0 - lr_s * (wd_h[s - base] if has_h else wd) if decoupled else 1.0
        pw1, pw2 = pw1 * b1, pw2 * b2
        bj, f2, ihj = bj * b1, f2 * b2, ihj * ih_step
        iu = np.sqrt(1.0 - pw2) * ihj
        if eps * iu > SERIES_MAX_RATIO * a_min:
            return -1
        c = lr_s / (1.0 - pw1) * bj
        Q *= q
        x1 = c * iu
        x2 = x1 * iu
        x3 = x2 * iu
        x4 = x3 * iu
        x5 = x4 * iu
        s0, s1, s2 = q * s0 + x1, q * s1 + x2, q * s2 + x3
        s3, s4, s5 = q * s3 + x4, q * s4 + x5, q * s5 + x5 * iu
        # the rest of the drift is at most |m_j| / a_j * lr_max / (1 - b1^(s+1)) * ratio
        if not (bound * bj * ihj > tol * (1.0 - pw1 * b1)):
            break
    if j == 0:  # no drift (m == 0 everywhere): the caller decays the row
        return 0
    for d in range(width):
        m = float(M[r, d])
        p = Q * float(P[r, d])
        if m != 0.0:
            ia = 1.0 / np.sqrt(float(VM[r, d]) if amsgrad else float(V[r, d]))
            z = eps * ia
            p -= m * ia * (s0 - z * (s1 - z * (s2 - z * (s3 - z * (s4 - z * s5)))))
        P[r, d] = p
        M[r, d] = m * bj
        V[r, d] = float(V[r, d]) * f2
    return j


#: the most terms of the shifted series (``_adam_series_shifted``): it converges as
#: ``rho**n`` with ``rho`` the relative spread of ``u_j`` over the summed steps
SHIFTED_TERMS = 16
#: gaps up to this many steps are replayed instead (``benchmarks.optim --catch-up``: 5000
#: rows with a tiny v, mean gap 10, the shifted series took 1.2x the replay's time; 60:
#: 0.6x)
SHIFTED_MIN_GAP = 16
#: where the midpoint of the shifted series is taken: over the steps until ``b1**j`` falls
#: below this (the drift's weight decays as ``b1**j``)
SHIFTED_SPAN = 1e-3


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_series_shifted(P, M, V, VM, r, lag_from, k, lr, wd, b1, b2, eps, decoupled, amsgrad,
                         ratio, tol, lr_max, has_h, lr_h, wd_h, base=0):
    """Closed-form catch-up of Adam's zero-gradient steps where ``_adam_series`` does not
    apply (a tiny ``v``: ``z = eps / (a u)`` not small), in O(steps) scalar work per row
    and O(terms) per element, instead of the replay's sqrt and division per element and
    step.

    Step ``j`` moves an element by ``T_j = c_j m / (a u_j + eps)`` (``_adam_series``'
    notation). Writing ``a u_j + eps = D (1 + (a / D) d_j)`` with ``D = a y + eps`` and
    ``d_j = u_j - y`` for a constant ``y``, ``T_j = (c_j m / D) sum_n (-(a / D) d_j)**n``;
    since ``a / D <= 1 / y`` the ratio is at most ``|d_j| / y`` for *every* ``a >= 0``
    (``v = 0`` included: ``D = eps``). ``u_j`` falls with ``j``, and ``y`` is the midpoint
    of its range over the first steps (those that carry the drift, :data:`SHIFTED_SPAN`),
    so the series converges fast where the weights ``c_j`` are large. The sums ``R_n =
    sum_j Q_(j+1..) c_j d_j**n`` are the row's scalars; each element then costs a sqrt, a
    division and a Horner pass. The steps summed, ``J``, end where the bound on the rest
    of the drift (``_adam_series_blocked``'s, and ``lr_max |m| b1**(j+1) / ((1 - b1)**2
    eps)``, which holds whatever ``v`` is) falls below ``tol * |p|``; the truncation error
    of the ``n`` terms used, ``max |m| / (D |p|) sum_j Q c_j (|d_j| / y)**n / (1 - |d_j| /
    y)``, is summed over the same steps and must be below ``tol`` too. Returns ``J`` (m, v
    decayed by ``J`` steps), or -1 without writing anything where it is not (early steps,
    whose bias correction spreads ``u_j`` widely, with long gaps).
    """
    width = P.shape[1]
    if not eps > 0.0:
        return -1  # (the expansion divides by a y + eps)
    D = VM if amsgrad else V
    w2 = 0.0  # max m**2 / (d p**2): the bound through a
    e2 = 0.0  # max m**2 / p**2: the bound through eps
    for d in range(width):
        m = float(M[r, d])
        if amsgrad and float(VM[r, d]) < float(V[r, d]):
            return -1  # a max below v (a loaded state?): the replay applies the max itself
        if m != 0.0:
            p = float(P[r, d])
            x = m * m / (p * p)
            e2 = max(e2, x)
            w2 = max(w2, x / float(D[r, d]))
    if e2 == 0.0:
        return 0  # no drift (m == 0 everywhere): the caller decays the row
    w, we = np.sqrt(w2), np.sqrt(e2) / eps
    J = k
    log_b1 = np.log(b1)
    x1 = (np.log(tol * (1.0 - b1)) - np.log(w * lr_max * ratio)) / (np.log(b1) - (
        0.0 if amsgrad else 0.5 * np.log(b2)))
    x2 = (np.log(tol * (1.0 - b1) * (1.0 - b1)) - np.log(we * lr_max * b1)) / log_b1
    for x in (x1, x2):
        if x == x and x < J:  # NaN / inf (a zero |p|): every step is summed
            J = max(np.int64(1), np.int64(np.ceil(x)))
    # u_j falls with j. The midpoint y is taken over the first steps only (to where
    # b1**j falls below SHIFTED_SPAN), which carry the drift; the later ones' wider
    # spread is paid for by their small weights, in the error bound summed below
    half = 0.0 if amsgrad else 0.5
    log_b2 = np.log(b2)
    span = J
    if 0.0 < b1 < 1.0:
        span = min(J, max(np.int64(1), np.int64(np.ceil(np.log(SHIFTED_SPAN) / log_b1))))
    u_1 = b2 ** half / np.sqrt(-np.expm1(float(lag_from + 1) * log_b2))
    u_s = b2 ** (half * float(span)) / np.sqrt(-np.expm1(float(lag_from + span) * log_b2))
    y = 0.5 * (u_1 + u_s)
    rho = (u_1 - u_s) / (u_1 + u_s)
    # the terms: the fewest for which the first steps' truncation error is below tol |p|
    # (R_0 <= lr_max sum_j b1**j / (1 - b1**(L + j))), two more for the later steps
    scale = min(w / y, we)
    err = scale * lr_max * b1 / ((1.0 - b1) * -np.expm1(float(lag_from + 1) * log_b1)) / (
        1.0 - rho)
    n_terms = 0
    while n_terms < SHIFTED_TERMS and not err <= tol:
        n_terms += 1
        err *= rho
    n_terms = min(n_terms + 2, SHIFTED_TERMS)
    R = np.zeros(SHIFTED_TERMS)
    Q = 1.0
    bound = 0.0  # sum_j Q_(j+1..) c_j |d_j|**n / (1 - |d_j| / y): the truncation error
    pw1, pw2 = b1 ** float(lag_from), b2 ** float(lag_from)
    bj, hj = 1.0, 1.0  # b1^j, b2^(j/2) (AMSGrad: 1)
    h_step = 1.0 if amsgrad else np.sqrt(b2)
    for j in range(1, J + 1):
        s = lag_from + j
        lr_s = lr_h[s - base] if has_h else lr
        q = 1.0 - lr_s * (wd_h[s - base] if has_h else wd) if decoupled else 1.0
        pw1, pw2 = pw1 * b1, pw2 * b2
        bj, hj = bj * b1, hj * h_step
        c = lr_s / (1.0 - pw1) * bj
        delta = hj / np.sqrt(1.0 - pw2) - y
        Q *= q
        dp = c
        for n in range(n_terms):
            R[n] = q * R[n] + dp
            dp *= delta
        bound = q * bound + abs(dp) / (1.0 - abs(delta) / y)
    # |m| / (D |p|) <= scale and (a / D) |d_j| <= |d_j| / y < 1 (u_1 < 2 y): the error of
    # every element is below tol |p|, else nothing is written
    if not scale * bound / y ** float(n_terms) <= tol:
        return -1
    f1, f2 = b1 ** float(J), b2 ** float(J)
    # every term in the loop (those past n_terms are 0): a fixed trip count, no branch, so
    # the element loop vectorises; m == 0 gives no drift (den >= eps > 0: all finite)
    for d in range(width):
        m = float(M[r, d])
        a = np.sqrt(float(D[r, d]))
        den = a * y + eps
        g = a / den
        acc = 0.0
        for n in range(SHIFTED_TERMS - 1, -1, -1):
            acc = R[n] - g * acc
        P[r, d] = Q * float(P[r, d]) - m / den * acc
        M[r, d] = m * f1
        V[r, d] = float(V[r, d]) * f2
    return J


@intrinsic
def _bit_count(typingctx, x, leading):
    """``llvm.ctlz`` (``leading`` True: leading zero bits) or ``llvm.cttz`` (trailing) of
    the int64 ``x``; 64 for 0. One instruction (``lzcnt`` / ``tzcnt``)."""
    if not isinstance(leading, types.BooleanLiteral):
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        name = "llvm.ctlz.i64" if leading.literal_value else "llvm.cttz.i64"
        fn = builder.module.declare_intrinsic(name, fnty=ir.FunctionType(
            i64, [i64, ir.IntType(1)]))
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])

    return types.int64(types.int64, leading), codegen


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _block_level(s, e, top):
    """The level of the largest aligned block that starts at ``s`` and ends by ``e``: the
    trailing zero bits of ``s`` (its alignment), capped by ``floor(log2(e - s + 1))`` (its
    length) and the top level, without a loop or a branch (a walk over the levels costs
    mispredicted branches at every block of a row's random gap)."""
    return min(_bit_count(s, False), 63 - _bit_count(e - s + 1, True), top)


@njit(cache=True, nogil=True, error_model="numpy")
def _series_sums(sblocks, offsets, n_levels, rho_pow, a, e):
    """``(Q, S_0..S_5)`` of the skipped steps ``a..e`` from the history's aligned blocks
    (``kernels.rules.adam.SeriesBlocks``): O(log(e - a)) blocks, combined left to right."""
    q = 1.0
    s0 = s1 = s2 = s3 = s4 = s5 = 0.0
    r0 = r1 = r2 = r3 = r4 = r5 = 1.0  # rho_n ** (steps combined so far)
    s = a
    top = np.int64(n_levels - 1)
    while s <= e:
        lv = _block_level(s, e, top)
        b = offsets[lv] + (s >> lv)
        qb = sblocks[b, 0]
        s0, s1, s2 = qb * s0 + r0 * sblocks[b, 1], qb * s1 + r1 * sblocks[b, 2], \
            qb * s2 + r2 * sblocks[b, 3]
        s3, s4, s5 = qb * s3 + r3 * sblocks[b, 4], qb * s4 + r4 * sblocks[b, 5], \
            qb * s5 + r5 * sblocks[b, 6]
        q *= qb
        r0, r1, r2 = r0 * rho_pow[lv, 0], r1 * rho_pow[lv, 1], r2 * rho_pow[lv, 2]
        r3, r4, r5 = r3 * rho_pow[lv, 3], r4 * rho_pow[lv, 4], r5 * rho_pow[lv, 5]
        s += np.int64(1) << lv
    return q, s0, s1, s2, s3, s4, s5


@njit(cache=True, nogil=True, error_model="numpy")
def _row_scale(P, M, D, r):
    """``(max (m / (sqrt(d) p))**2, min d)`` over the elements of row ``r`` with ``m != 0``
    (``D``: v, or AMSGrad's max). (A branch-free version with selects, and ``fastmath``
    ones, measured 1.1-2x slower: the float max/min reductions do not vectorise anyway.)"""
    w2 = 0.0
    d_min = np.inf
    for d in range(P.shape[1]):
        m = float(M[r, d])
        if m != 0.0:
            den = float(D[r, d])
            p = float(P[r, d])
            d_min = min(d_min, den)
            w2 = max(w2, m * m / (den * (p * p)))
    return w2, d_min


def series_logs(b1, b2, amsgrad, tol):
    """The per-call constants of ``_adam_series_blocked``: ``(log b2, log r, log(tol (1 -
    b1)))`` with ``r = b1 / sqrt(b2)`` (AMSGrad ``b1``), the drift bound's ratio a step."""
    log_r = np.log(b1) - (0.0 if amsgrad else 0.5 * np.log(b2))
    return (float(np.log(b2)), float(log_r), float(np.log(tol * (1.0 - b1))))


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_series_blocked(P, M, V, VM, r, lag_from, k, eps, b1, b2, amsgrad, ratio,
                         lr_max, sblocks, offsets, n_levels, rho_pow, logs, base=0):
    """``_adam_series`` with the sums read from the history's blocks: O(log J) per row.

    ``J``, the number of skipped steps whose drift is summed, is not found by walking the
    steps: the bound on the rest of the drift after step ``j`` is ``bound * r**j`` (``r =
    b1 / sqrt(b2)``, AMSGrad ``b1``) over ``1 - b1**(L + j + 1) >= 1 - b1``, so ``J =
    ceil(log(tol (1 - b1) / bound) / log r)`` (``logs``, from ``series_logs``) is at least
    the step where the walk stops (summing more steps is exact too). The series needs
    ``z = eps / (a u_j)`` below ``SERIES_MAX_RATIO`` at every summed step; ``u_j`` only
    falls with ``j``, so it is tested at ``J`` alone. Returns J, or -1 (nothing written)
    where that test or the row's values rule the series out: the caller then walks.
    """
    width = P.shape[1]
    D = VM if amsgrad else V
    if amsgrad:
        for d in range(width):
            if float(VM[r, d]) < float(V[r, d]):
                return -1  # a max below v (a loaded state?): the replay applies the max
    w2, v_min = _row_scale(P, M, D, r)
    if v_min == 0.0:
        return -1
    w, a_min = np.sqrt(w2), np.sqrt(v_min)
    if w == 0.0:
        return 0
    log_b2, log_r, log_target = logs
    x = (log_target - np.log(w * lr_max * ratio)) / log_r
    J = k
    if x == x and x < k:  # NaN / inf (a zero |p|): every step is summed
        J = max(np.int64(1), np.int64(np.ceil(x)))
    iu = np.sqrt(-np.expm1(float(lag_from + J) * log_b2))
    if not amsgrad:
        iu *= np.exp(-0.5 * float(J) * log_b2)
    if not (eps * iu <= SERIES_MAX_RATIO * a_min * (1.0 - 1e-9)):  # margin: exp's rounding
        return -1
    Q, s0, s1, s2, s3, s4, s5 = _series_sums(sblocks, offsets, n_levels, rho_pow,
                                             lag_from + 1 - base, lag_from + J - base)
    f1, f2 = b1 ** float(J), b2 ** float(J)
    for d in range(width):
        m = float(M[r, d])
        # m == 0: the term is 0 (den may be 0 there: the floor keeps ia finite; every
        # element with m != 0 has den >= v_min, far above the floor)
        ia = 1.0 / np.sqrt(max(float(D[r, d]), 1e-300))
        z = eps * ia
        P[r, d] = Q * float(P[r, d]) - m * ia * (
            s0 - z * (s1 - z * (s2 - z * (s3 - z * (s4 - z * s5)))))
        M[r, d] = m * f1
        V[r, d] = float(V[r, d]) * f2
    return J


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_replay(P, M, V, VM, r, lag_from, k, lr, wd, b1, b2, eps, decoupled, amsgrad,
                 ratio, tol, lr_max, has_h, lr_h, wd_h, replay, base=0):
    """Skipped steps of one row replayed step-major (the per-step scalars computed once);
    returns the number of steps done.

    Each skipped step is applied to the whole row (a branch-free loop that vectorises),
    with that step's own lr and weight decay. Without L2 decay (``replay`` False) the row
    stops once, for every element, the bound on the rest of its drift is below ``tol *
    |p|``. Stepping an element further than its own bound needs is still exact.
    """
    width = P.shape[1]
    prow, mrow, vrow = P[r], M[r], V[r]
    pw1, pw2 = b1 ** float(lag_from), b2 ** float(lag_from)  # b**s, updated by products
    j = 0
    while j < k:
        j += 1
        s = lag_from + j
        lr_s = lr_h[s - base] if has_h else lr
        wd_s = wd_h[s - base] if has_h else wd
        q = 1.0 - lr_s * wd_s if decoupled else 1.0
        l2 = 0.0 if decoupled else wd_s
        pw1, pw2 = pw1 * b1, pw2 * b2
        sqrt_bc2 = np.sqrt(1.0 - pw2)
        step_size = lr_s / (1.0 - pw1)  # dense Adam's scalars at step lag_from + j
        # the stopping test (a second sqrt and division per element) runs every 8th step
        # only: the steps taken past an element's own bound are exact dense steps anyway
        if replay or (j & 7) != 0:
            for d in range(width):
                vm = float(VM[r, d]) if amsgrad else 0.0
                p, m, v, vm = _adam_elem(float(prow[d]), float(mrow[d]), float(vrow[d]), vm,
                                         0.0, b1, b2, eps, l2, q, step_size, sqrt_bc2, False,
                                         amsgrad)
                prow[d], mrow[d], vrow[d] = p, m, v
                if amsgrad:  # with L2 decay a zero-gradient step can raise v above the max
                    VM[r, d] = vm
            continue
        limit = lr_max / (1.0 - pw1 * b1) * ratio
        pending = 0
        for d in range(width):
            vm = float(VM[r, d]) if amsgrad else 0.0
            p, m, v, vm = _adam_elem(float(prow[d]), float(mrow[d]), float(vrow[d]), vm, 0.0,
                                     b1, b2, eps, l2, q, step_size, sqrt_bc2, False, amsgrad)
            prow[d], mrow[d], vrow[d] = p, m, v
            if amsgrad:  # with L2 decay a zero-gradient step can raise v above the max
                VM[r, d] = vm
            denom = vm if amsgrad else v
            size = 0.0 if m == 0.0 else abs(m) / np.sqrt(denom)
            pending += size * limit > tol * abs(p)
        if pending == 0:
            break
    return j


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_catch_up(P, M, V, VM, r, lag_from, k, lr, wd, b1, b2, eps, decoupled, amsgrad,
                   ratio, tol, lr_max, has_h, lr_h, wd_h, blocks, offsets, n_levels, replay,
                   has_s, sblocks, rho_pow, logs, base=0):
    """The ``k`` skipped steps of row ``r``: the drift in closed form where it applies
    (``_adam_series_blocked`` from the history's block sums when it has them, else
    ``_adam_series`` walking the steps), else, a tiny ``v``, the shifted series
    (``_adam_series_shifted``), else replayed (``_adam_replay``, always with L2 decay: a
    zero gradient then still moves the row non-linearly). Once the drift is
    done, the remaining steps only decay m, v (and p by the steps' ``1 - lr*wd``), in
    closed form."""
    j = -1
    if not replay and has_s:
        j = _adam_series_blocked(P, M, V, VM, r, lag_from, k, eps, b1, b2, amsgrad, ratio,
                                 lr_max, sblocks, offsets, n_levels, rho_pow, logs, base)
    if not replay and j < 0:
        j = _adam_series(P, M, V, VM, r, lag_from, k, lr, wd, b1, b2, eps, decoupled,
                         amsgrad, ratio, tol, lr_max, has_h, lr_h, wd_h, base)
    if not replay and j < 0 and k > SHIFTED_MIN_GAP:  # (after the plain series: cheaper
        j = _adam_series_shifted(P, M, V, VM, r, lag_from, k, lr, wd, b1, b2, eps, decoupled,
                                 amsgrad, ratio, tol, lr_max, has_h, lr_h, wd_h, base)
    if j < 0:
        j = _adam_replay(P, M, V, VM, r, lag_from, k, lr, wd, b1, b2, eps, decoupled,
                         amsgrad, ratio, tol, lr_max, has_h, lr_h, wd_h, replay, base)
    rest = k - j
    if rest > 0:
        f1, f2 = b1 ** float(rest), b2 ** float(rest)
        fq = 1.0
        if decoupled:
            fq = _skipped_map(has_h, blocks, offsets, n_levels, lag_from + j + 1 - base,
                              lag_from + k - base, 1.0 - lr * wd, 0.0, 0.0, 1.0)[0]
        for d in range(P.shape[1]):
            M[r, d] = M[r, d] * f1
            V[r, d] = V[r, d] * f2
            P[r, d] = P[r, d] * fq


def _adam(P, M, V, VM, idx, G, has_grad, t, last, exact, lr, b1, b2, eps, wd, decoupled,
          amsgrad, ratio, tol, lr_max, dist, has_h, lr_h, wd_h, blocks, offsets, n_levels,
          base, replay, has_s, sblocks, rho_pow, logs, guard, SP, SM, SV, SVM, SL, status,
          history=None):
    """Every Adam row update: an exact-mode gradient step whose catch-up has the history's
    block sums, or is the replay of L2 decay, runs the plain loop ``_adam_exact`` (AMSGrad
    too; without a gradient, unguarded: ``_adam_exact_catch_up``), the rest the general
    loop ``_adam_general``. (One entry point, so ``minigrad/direct_updates.py``
    and ``adam_rows`` get the same loop; each loop a separate function, because LLVM
    optimises the element loops of one large function less well: ~1.6x, see
    kernels/cpu/direct_rows.py.) A Python function, not a compiled one: a compiled entry
    point compiled all three loops at its first call and re-optimised them together in its
    own module (Numba links its callees' code into the caller's); here each loop compiles
    at its first use, on its own, and costs the same per call (one dispatcher call).
    ``history``: the parameter's, whose rows a read of this step caught up the general way
    ``_adam_exact`` takes instead of catching them up again (kernels/cpu/caught_up.py)."""
    n = idx.shape[0]
    plain = exact and (has_s or replay)
    if plain and not has_grad and not guard:
        return _adam_exact_catch_up(P, M, V, VM, idx, t, last, lr, b1, b2, eps, wd,
                                    decoupled, amsgrad, replay, ratio, tol, lr_max, dist, has_h,
                                    lr_h, wd_h, blocks, offsets, n_levels, base, sblocks,
                                    rho_pow, logs)
    if plain and has_grad and (not guard or (
            SP.shape[0] >= n and SM.shape[0] >= n and SV.shape[0] >= n and SL.shape[0] >= n
            and (SVM.shape[0] >= n or not amsgrad))):
        kept = take(history, None if replay else catch_up_key(
            t - 1, ratio, tol, lr_max, base, n_levels, sblocks, b1, b2, eps, decoupled,
            amsgrad), P.dtype, P.shape[1])
        return _adam_exact(P, M, V, VM, idx, G, t, last, lr, b1, b2, eps, wd, decoupled,
                           amsgrad, replay, ratio, tol, lr_max, dist, has_h, lr_h, wd_h,
                           blocks, offsets, n_levels, base, sblocks, rho_pow, logs, guard, SP,
                           SM, SV, SVM, SL, status, *kept)
    return _adam_general(P, M, V, VM, idx, G, has_grad, t, last, exact, lr, b1, b2, eps, wd,
                         decoupled, amsgrad, ratio, tol, lr_max, dist, has_h, lr_h, wd_h,
                         blocks, offsets, n_levels, base, replay, has_s, sblocks, rho_pow,
                         logs, guard, SP, SM, SV, SVM, SL, status)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _step_pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2, catch, amsgrad,
               cs, save, check, SP, SM, SV, SVM):
    """One pass over row ``r``: with ``catch`` the closed-form catch-up of its skipped
    steps from the per-row scalars ``cs = (Q, s0..s5, f1, f2)`` (the sums ``s_n``, ``f1 =
    b1**k``, ``f2 = b2**k``: ``_adam_series_blocked``'s formula with every skipped step
    summed; AMSGrad: the drift divides by the max, which a zero gradient never raises),
    then dense Adam's step with gradient row ``i``, each element kept in registers between
    the two; with ``save`` the old values go to row ``i`` of the scratch, with ``check`` it returns
    whether a stored value is not finite. Called with literal flags (``_pass``): no branch
    in the loop (the ``m != 0`` test is a select), so it vectorises."""
    Q, s0, s1, s2, s3, s4, s5, f1, f2 = cs
    bad = False
    for d in range(P.shape[1]):
        p0, m0, v0 = P[r, d], M[r, d], V[r, d]
        if save:
            SP[i, d], SM[i, d], SV[i, d] = p0, m0, v0
            if amsgrad:
                SVM[i, d] = VM[r, d]
        p, m, v = float(p0), float(m0), float(v0)
        vm = float(VM[r, d]) if amsgrad else 0.0
        if catch:
            ia = 1.0 / np.sqrt(vm if amsgrad else v)
            z = eps * ia
            drift = m * ia * (s0 - z * (s1 - z * (s2 - z * (s3 - z * (s4 - z * s5)))))
            p = Q * p - (drift if m != 0.0 else 0.0)  # (v may be 0 where m is: no drift)
            m, v = m * f1, v * f2
        P[r, d], M[r, d], V[r, d], vm = _adam_elem(p, m, v, vm, float(G[i, d]), b1, b2, eps,
                                                   l2, q, step_size, sqrt_bc2, False, amsgrad)
        if amsgrad:
            VM[r, d] = vm
        if check:
            bad |= _not_finite(P[r, d]) | _not_finite(M[r, d]) | _not_finite(V[r, d])
            if amsgrad:
                bad |= _not_finite(VM[r, d])
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2, catch, amsgrad,
          guard, cs, SP, SM, SV, SVM):
    """``_step_pass`` with each combination of ``catch``, ``amsgrad`` and ``guard`` (save
    and check) passed as literals, so every variant's element loop has no flag inside. A
    function of its own (not ``inline="always"``), called once a row from one call site:
    Numba's inliner copies a callee's IR at every call site, and the 16 copies of
    ``_step_pass`` that inlining this function twice made were 2/3 of ``_adam_exact``'s
    cold compile (the call costs nothing next to a row's pass; LLVM may inline it anyway).
    ``_step_pass`` itself stays inlined here: compiled on its own, the flags typed as
    literals, its float32 results differed from the inlined loop's in the last bit."""
    if amsgrad:
        if catch and guard:
            return _step_pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2,
                              True, True, cs, True, True, SP, SM, SV, SVM)
        if catch:
            return _step_pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2,
                              True, True, cs, False, False, SP, SM, SV, SVM)
        if guard:
            return _step_pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2,
                              False, True, cs, True, True, SP, SM, SV, SVM)
        return _step_pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2,
                          False, True, cs, False, False, SP, SM, SV, SVM)
    if catch and guard:
        return _step_pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2, True,
                          False, cs, True, True, SP, SM, SV, SVM)
    if catch:
        return _step_pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2, True,
                          False, cs, False, False, SP, SM, SV, SVM)
    if guard:
        return _step_pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2,
                          False, False, cs, True, True, SP, SM, SV, SVM)
    return _step_pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2, False,
                      False, cs, False, False, SP, SM, SV, SVM)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _series_fits(M, V, VM, r, v_floor, amsgrad):
    """Whether every element of row ``r`` with ``m != 0`` has ``v >= v_floor`` (AMSGrad:
    the max, which must also be at least ``v`` everywhere, as a dense run keeps it: a
    loaded state that breaks this takes the replay) (the series' ``z = eps / (a u) <=
    SERIES_MAX_RATIO`` at every summed step, squared: no sqrt). An AND of comparisons (an
    integer reduction: it vectorises)."""
    fits = True
    if amsgrad:
        for d in range(M.shape[1]):
            vm = float(VM[r, d])
            fits &= ((float(M[r, d]) == 0.0) | (vm >= v_floor)) & (vm >= float(V[r, d]))
        return fits
    for d in range(M.shape[1]):
        fits &= (float(M[r, d]) == 0.0) | (float(V[r, d]) >= v_floor)
    return fits


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefetch_last(idx, i, dist, last):
    """Ask for ``last[idx[i + dist]]`` too (the exact loops read it first in every row: a
    cache miss a row in a large table)."""
    if dist > 0 and i + dist < idx.shape[0]:
        _prefetch_for_write(last.reshape(last.shape[0], 1), idx[i + dist], 0)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _lag_scalars(sblocks, offsets, n_levels, rho_pow, L, k, base, b1, b2, eps, log_b2,
                 amsgrad):
    """The per-row scalars of the closed-form catch-up of steps ``L+1 .. L+k``, all summed:
    ``(Q, s0..s5, b1**k, b2**k, v_floor)``; ``v_floor``: the least ``v`` (where ``m != 0``;
    AMSGrad: the max) for which the series applies at every summed step (``eps / (a u) <=
    SERIES_MAX_RATIO``, ``u`` taken at the last step, where it is smallest), squared so no
    sqrt is needed."""
    Q, s0, s1, s2, s3, s4, s5 = _series_sums(sblocks, offsets, n_levels, rho_pow,
                                             L + 1 - base, L + k - base)
    iu = np.sqrt(-np.expm1(float(L + k) * log_b2))
    if not amsgrad:  # (AMSGrad's denominator does not decay: u_j = 1 / sqrt(1 - b2^s))
        iu *= np.exp(-0.5 * float(k) * log_b2)
    a_floor = eps * iu / (SERIES_MAX_RATIO * (1.0 - 1e-9))
    return Q, s0, s1, s2, s3, s4, s5, b1 ** float(k), b2 ** float(k), a_floor * a_floor


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_exact_catch_up(P, M, V, VM, idx, t, last, lr, b1, b2, eps, wd, decoupled, amsgrad,
                         replay, ratio, tol, lr_max, dist, has_h, lr_h, wd_h, blocks, offsets,
                         n_levels, base, sblocks, rho_pow, logs):
    """``_adam_exact`` without a gradient (a flush, the read of lagging rows): each row's
    catch-up to step ``t`` in one vectorisable pass, the general one where the series
    does not fit (and always with L2 decay, ``replay``)."""
    c_last = np.int64(-1)
    Q = s0 = s1 = s2 = s3 = s4 = s5 = f1 = f2 = v_floor = 0.0
    for i in range(idx.shape[0]):
        _prefetch_ahead(idx, i, dist, P, M, V)
        _prefetch_last(idx, i, dist, last)
        r = idx[i]
        L = last[r]
        k = t - L
        last[r] = t
        if k <= 0:
            continue
        if not replay and L != c_last:
            Q, s0, s1, s2, s3, s4, s5, f1, f2, v_floor = _lag_scalars(
                sblocks, offsets, n_levels, rho_pow, L, k, base, b1, b2, eps, logs[0],
                amsgrad)
            c_last = L
        if not replay and _series_fits(M, V, VM, r, v_floor, amsgrad):
            for d in range(P.shape[1]):
                p, m, v = float(P[r, d]), float(M[r, d]), float(V[r, d])
                ia = 1.0 / np.sqrt(float(VM[r, d]) if amsgrad else v)
                z = eps * ia
                drift = m * ia * (s0 - z * (s1 - z * (s2 - z * (s3 - z * (s4 - z * s5)))))
                P[r, d] = Q * p - (drift if m != 0.0 else 0.0)
                M[r, d], V[r, d] = m * f1, v * f2
        else:
            _adam_catch_up(P, M, V, VM, r, L, k, lr, wd, b1, b2, eps, decoupled, amsgrad,
                           ratio, tol, lr_max, has_h, lr_h, wd_h, blocks, offsets, n_levels,
                           replay, not replay, sblocks, rho_pow, logs, base)
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_exact(P, M, V, VM, idx, G, t, last, lr, b1, b2, eps, wd, decoupled, amsgrad, replay,
                ratio, tol, lr_max, dist, has_h, lr_h, wd_h, blocks, offsets, n_levels, base,
                sblocks, rho_pow, logs, guard, SP, SM, SV, SVM, SL, status, k_rows, k_lasts,
                k_order, k_pre, k_post):
    """Exact-mode Adam with a gradient, in a plain row loop (AMSGrad too; with L2 decay,
    ``replay``, the catch-up is the step-by-step replay).

    A row last updated at step ``L`` skipped ``k = t - 1 - L`` steps. Without L2 decay its
    catch-up is the closed form of ``_adam_series_blocked`` with all ``k`` steps summed
    (summing past the step where the drift becomes negligible is exact too): the sums
    depend only on ``L`` (``t`` is the call's), so they are computed once per distinct
    ``L`` from the history's block sums in O(log k), and rows touched together (same
    ``L``) share them. What is left per element is one vectorisable pass: catch-up and
    step together (``_step_pass``), with no scan for the drift bound (``_row_scale``'s
    division and max chain). The series needs ``v >= v_floor`` where ``m != 0``: a row
    that fails that test (a tiny ``v``, or a gap so long that the summed ``u_k`` is large)
    takes the general catch-up (``_adam_catch_up``: bound-truncated series, else the
    replay) and then the step. With L2 decay a zero gradient still moves the row
    non-linearly: every lagging row is replayed (``_adam_replay``), then stepped in one
    pass. Guarded: the one-pass save-and-check of ``_adam_general`` (scratch row ``i``,
    and ``last[r]`` into ``SL[i]``)."""
    n = idx.shape[0]
    step_size, sqrt_bc2 = _adam_scalars(lr, b1, b2, t, False)
    q = 1.0 - lr * wd if decoupled else 1.0
    l2 = 0.0 if decoupled else wd
    log_b2 = logs[0]
    c_last = np.int64(-1)  # the L the scalars below were computed for
    Q = s0 = s1 = s2 = s3 = s4 = s5 = f1 = f2 = v_floor = 0.0
    for i in range(n):
        _prefetch_ahead(idx, i, dist, P, M, V)
        _prefetch_last(idx, i, dist, last)
        r = idx[i]
        L = last[r]
        k = t - 1 - L
        if guard:
            SL[i] = L
        last[r] = t
        fits = False
        if k > 0 and not replay:
            if L != c_last:
                Q, s0, s1, s2, s3, s4, s5, f1, f2, v_floor = _lag_scalars(
                    sblocks, offsets, n_levels, rho_pow, L, k, base, b1, b2, eps, log_b2,
                    amsgrad)
                c_last = L
            fits = _series_fits(M, V, VM, r, v_floor, amsgrad)
        caught_up = k > 0 and not fits
        if caught_up:
            if guard:
                _save_rows(i, r, last, False, P, M, V, VM, SP, SM, SV, SVM, SL)
            if not (k_rows.shape[0] and take_row(k_rows, k_lasts, k_order, k_pre, k_post, P,
                                                 M, V, VM, r, L, amsgrad)):
                _adam_catch_up(P, M, V, VM, r, L, k, lr, wd, b1, b2, eps, decoupled,
                               amsgrad, ratio, tol, lr_max, has_h, lr_h, wd_h, blocks,
                               offsets, n_levels, replay, not replay, sblocks, rho_pow, logs,
                               base)
        # one call site, so ``_pass`` compiles once (a row caught up above was saved before
        # its catch-up: its pass neither saves nor checks, the scan below checks it; rare
        # without L2, so its cost is moot)
        in_pass = guard and not caught_up
        bad = _pass(P, M, V, VM, G, i, r, b1, b2, eps, l2, q, step_size, sqrt_bc2, fits,
                    amsgrad, in_pass, (Q, s0, s1, s2, s3, s4, s5, f1, f2), SP, SM, SV, SVM)
        if guard and caught_up:
            bad = _rows_bad(r, P, M, V, VM)
        if guard and bad:
            return _stop(guard, status, i + 1, i)
    return _stop(guard, status, n, -1)


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_general(P, M, V, VM, idx, G, has_grad, t, last, exact, lr, b1, b2, eps, wd,
                  decoupled, amsgrad, ratio, tol, lr_max, dist, has_h, lr_h, wd_h, blocks,
                  offsets, n_levels, base, replay, has_s, sblocks, rho_pow, logs, guard, SP,
                  SM, SV, SVM, SL, status):
    width = P.shape[1]
    step_size, sqrt_bc2 = _adam_scalars(lr, b1, b2, t, not exact)
    q = 1.0 - lr * wd if decoupled else 1.0
    l2 = 0.0 if decoupled else wd
    # the common guarded case (a plain gradient step, nothing to catch up) saves the old
    # values and checks the new ones inside the update loop itself: one pass over the
    # row while it is in registers, instead of a copy, the update and a scan
    one_pass = guard and has_grad and not amsgrad and SP.shape[0] >= idx.shape[0] \
        and SM.shape[0] >= idx.shape[0] and SV.shape[0] >= idx.shape[0]
    for i in range(idx.shape[0]):
        _prefetch_ahead(idx, i, dist, P, M, V)
        r = idx[i]
        k = _lag(last, r, t, has_grad) if exact else 0
        if one_pass and k <= 0:
            _advance_last(i, r, last, exact, t, SL)
            bad = False
            for d in range(width):
                p0, m0, v0 = P[r, d], M[r, d], V[r, d]
                SP[i, d], SM[i, d], SV[i, d] = p0, m0, v0
                P[r, d], M[r, d], V[r, d], _ = _adam_elem(
                    float(p0), float(m0), float(v0), 0.0, float(G[i, d]), b1, b2, eps, l2,
                    q, step_size, sqrt_bc2, not exact, False)
                bad |= _not_finite(P[r, d]) | _not_finite(M[r, d]) | _not_finite(V[r, d])
            if bad:
                return _stop(guard, status, i + 1, i)
            continue
        if guard:
            _save_rows(i, r, last, exact, P, M, V, VM, SP, SM, SV, SVM, SL)
        if exact:
            if k > 0:
                _adam_catch_up(P, M, V, VM, r, last[r], k, lr, wd, b1, b2, eps, decoupled,
                               amsgrad, ratio, tol, lr_max, has_h, lr_h, wd_h, blocks,
                               offsets, n_levels, replay, has_s, sblocks, rho_pow, logs,
                               base)
            last[r] = t
        if has_grad:
            for d in range(width):
                vm = float(VM[r, d]) if amsgrad else 0.0
                P[r, d], M[r, d], V[r, d], vm = _adam_elem(
                    float(P[r, d]), float(M[r, d]), float(V[r, d]), vm, float(G[i, d]), b1,
                    b2, eps, l2, q, step_size, sqrt_bc2, not exact, amsgrad)
                if amsgrad:
                    VM[r, d] = vm
        if guard and _rows_bad(r, P, M, V, VM):
            return _stop(guard, status, i + 1, i)
    return _stop(guard, status, idx.shape[0], -1)


def adam_rows(param, m, v, idx, grad, t, last, lr, beta1, beta2, eps, weight_decay,
              decoupled, amsgrad=False, max_exp_avg_sq=None, history=None, guard=None,
              trusted=False):
    return _adam(*adam_loop_args(param, m, v, idx, grad, t, last, lr, beta1, beta2, eps,
                                 weight_decay, decoupled, amsgrad, max_exp_avg_sq, history,
                                 guard, trusted), history=history)


def adam_loop_args(param, m, v, idx, grad, t, last, lr, beta1, beta2, eps, weight_decay,
                   decoupled, amsgrad=False, max_exp_avg_sq=None, history=None, guard=None,
                   trusted=False):
    """The checked arguments of ``_adam`` (and ``_adam_general``) for an ``adam_rows`` call
    (tests run both loops on the same arguments)."""
    p2, (m2, v2, vm2), idx, g, has_grad, t, last_, exact, checks = _prepare(
        param, [m, v, max_exp_avg_sq], idx, grad, t, last, [True, True, bool(amsgrad)],
        ["m", "v", "max_exp_avg_sq"], guard, trusted)
    steps = _Steps(history, lr, weight_decay, t - has_grad, exact, bool(decoupled),
                   *_untrusted(trusted, last_, idx))
    _, ratio = adam_drift_ratio(1.0, beta1, beta2, steps.lrwd_max if decoupled else 0.0,
                                decoupled)
    replay = steps.wd_any and not decoupled
    return (
        p2, m2, v2, vm2, idx, g, has_grad, t, last_, exact, float(lr), float(beta1),
        float(beta2), float(eps), float(weight_decay), bool(decoupled), bool(amsgrad),
        float(ratio), adam_drift_tol(p2.dtype), steps.lr_max, _prefetch_distance(p2),
        *steps.args(), replay,
        *series_args(history, steps, beta1, beta2, decoupled, amsgrad, p2.dtype), *checks)


def series_args(history, steps, beta1, beta2, decoupled, amsgrad, dtype):
    """``(has_s, sblocks, rho_pow, logs)`` of ``_adam``: the history's Adam block sums when
    it keeps them for these hyperparameters (``kernels.rules.adam.SeriesBlocks``), else
    stand-ins (the series then walks the steps)."""
    series = getattr(history, "series", None) if steps.has else None
    has_s = (series is not None and getattr(history, "sblocks", None) is not None
             and series.key == (float(beta1), float(beta2), bool(decoupled), bool(amsgrad))
             and series.rho_pow.shape[0] >= steps.n_levels)
    sblocks, rho_pow = (history.sblocks, series.rho_pow) if has_s else (_NO_SBLOCKS,
                                                                         _NO_RHO_POW)
    logs = series_logs(float(beta1), float(beta2), bool(amsgrad), adam_drift_tol(dtype))
    return has_s, sblocks, rho_pow, logs


register_row_kernels('numba', {"sgd": sgd_rows, "momentum": momentum_rows,
                               "adagrad": adagrad_rows, "rmsprop": rmsprop_rows,
                               "adam": adam_rows})
