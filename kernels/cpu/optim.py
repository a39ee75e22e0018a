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
from numba import njit

from kernels.cpu.rows import _prefetch_for_write
from kernels.reference.optim import (
    adam_drift_ratio,
    adam_drift_tol,
    check_rows_args,
    momentum_matrix,
)

__all__ = ["sgd_rows", "momentum_rows", "adagrad_rows", "rmsprop_rows", "adam_rows"]

_NO_LAST = np.zeros(1, dtype=np.int64)


def _prepare(param, states, idx, grad, t, last, required, names):
    p2, s2, idx, grad, t = check_rows_args(param, states, idx, grad, t, last, required, names)
    empty = np.zeros((0, p2.shape[1]), dtype=p2.dtype)
    s2 = [empty if s is None else s for s in s2]
    has_grad = grad is not None
    grad = empty if grad is None else grad
    exact = last is not None
    return p2, s2, idx, grad, has_grad, t, (last if exact else _NO_LAST), exact


#: prefetch rows this far ahead, for tables larger than the caches (2.3x on 3M x 64 Adam)
_PREFETCH_MIN_BYTES = 8 << 20
_PREFETCH_DISTANCE = 8


def _prefetch_distance(param2d):
    return _PREFETCH_DISTANCE if param2d.nbytes > _PREFETCH_MIN_BYTES else 0


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefetch_ahead(idx, i, dist, X, Y, Z):
    """Ask for row ``idx[i + dist]`` of the tables (``Y``/``Z`` may be empty stand-ins)."""
    if dist > 0 and i + dist < idx.shape[0]:
        a = idx[i + dist]
        for j in range(0, X.shape[1], max(1, 64 // X.itemsize)):
            _prefetch_for_write(X, a, j)
            if Y.shape[0] > a:
                _prefetch_for_write(Y, a, j)
            if Z.shape[0] > a:
                _prefetch_for_write(Z, a, j)


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


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _momentum_elem(p, b, g, first, lr, mu, damp, nesterov, wd):
    if wd != 0.0:
        g = g + wd * p
    if mu != 0.0:
        b = g if first else mu * b + (1.0 - damp) * g
        g = g + mu * b if nesterov else b
    return p - lr * g, b


@njit(cache=True, nogil=True, error_model="numpy")
def _momentum(P, B, idx, G, has_grad, t, last, exact, lr, mu, damp, nesterov, wd, a, dist):
    width = P.shape[1]
    for i in range(idx.shape[0]):
        _prefetch_ahead(idx, i, dist, P, B, B)
        r = idx[i]
        if exact:
            k = _lag(last, r, t, has_grad)
            if k > 0 and mu == 0.0:
                f = (1.0 - lr * wd) ** float(k)
                for d in range(width):
                    P[r, d] = P[r, d] * f
            elif k > 0:
                if last[r] == 0:  # the dense optimizer's step 1 sets buffer = g (torch)
                    for d in range(width):
                        P[r, d], B[r, d] = _momentum_elem(float(P[r, d]), 0.0, 0.0, True,
                                                          lr, mu, damp, nesterov, wd)
                    k -= 1
                m11, m12, m21, m22 = _matpow2(a[0], a[1], a[2], a[3], k)
                for d in range(width):
                    p, b = float(P[r, d]), float(B[r, d])
                    P[r, d] = m11 * p + m12 * b
                    B[r, d] = m21 * p + m22 * b
            last[r] = t
        if has_grad:
            for d in range(width):
                b = float(B[r, d]) if mu != 0.0 else 0.0
                p, b = _momentum_elem(float(P[r, d]), b, float(G[i, d]), t == 1,
                                      lr, mu, damp, nesterov, wd)
                P[r, d] = p
                if mu != 0.0:
                    B[r, d] = b


def momentum_rows(param, buf, idx, grad, t, last, lr, momentum, dampening, nesterov,
                  weight_decay):
    states = [buf] if momentum else [None]
    p2, (b2,), idx, g, has_grad, t, last, exact = _prepare(param, states, idx, grad, t, last,
                                                           [bool(momentum)], ["buf"])
    a = np.array(momentum_matrix(lr, momentum, dampening, nesterov, weight_decay)).ravel()
    _momentum(p2, b2, idx, g, has_grad, t, last, exact, float(lr), float(momentum),
              float(dampening), bool(nesterov), float(weight_decay), a, _prefetch_distance(p2))


def sgd_rows(param, idx, grad, t, last, lr, weight_decay):
    momentum_rows(param, None, idx, grad, t, last, lr, 0.0, 0.0, False, weight_decay)


# --- Adagrad -------------------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _adagrad_elem(p, acc, g, lr, eps, wd):
    if wd != 0.0:
        g = g + wd * p
    acc = acc + g * g
    return p - lr * (g / (np.sqrt(acc) + eps)), acc


@njit(cache=True, nogil=True, error_model="numpy")
def _adagrad(P, A, idx, G, has_grad, t, last, exact, lr, eps, wd, dist):
    width = P.shape[1]
    for i in range(idx.shape[0]):
        _prefetch_ahead(idx, i, dist, P, A, A)
        r = idx[i]
        if exact:
            k = _lag(last, r, t, has_grad)
            if k > 0 and wd != 0.0:  # replay: a zero gradient still decays the row
                for d in range(width):
                    p, acc = float(P[r, d]), float(A[r, d])
                    for _ in range(k):
                        p, acc = _adagrad_elem(p, acc, 0.0, lr, eps, wd)
                    P[r, d], A[r, d] = p, acc
            last[r] = t
        if has_grad:
            for d in range(width):
                P[r, d], A[r, d] = _adagrad_elem(float(P[r, d]), float(A[r, d]),
                                                 float(G[i, d]), lr, eps, wd)


def adagrad_rows(param, acc, idx, grad, t, last, lr, eps, weight_decay):
    p2, (a2,), idx, g, has_grad, t, last, exact = _prepare(param, [acc], idx, grad, t, last,
                                                           [True], ["acc"])
    _adagrad(p2, a2, idx, g, has_grad, t, last, exact, float(lr), float(eps),
             float(weight_decay), _prefetch_distance(p2))


# --- RMSprop -------------------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rmsprop_elem(p, sq, ga, b, g, lr, alpha, eps, mom, centered, wd):
    if wd != 0.0:
        g = g + wd * p
    sq = alpha * sq + (1.0 - alpha) * (g * g)
    if centered:
        ga = alpha * ga + (1.0 - alpha) * g
        avg = np.sqrt(sq - ga * ga) + eps
    else:
        avg = np.sqrt(sq) + eps
    if mom != 0.0:
        b = mom * b + g / avg
        p = p - lr * b
    else:
        p = p - lr * (g / avg)
    return p, sq, ga, b


@njit(cache=True, nogil=True, error_model="numpy")
def _rmsprop(P, S, GA, B, idx, G, has_grad, t, last, exact, lr, alpha, eps, mom, centered,
             wd, dist):
    width = P.shape[1]
    has_buf = mom != 0.0
    for i in range(idx.shape[0]):
        _prefetch_ahead(idx, i, dist, P, S, B)
        r = idx[i]
        if exact:
            k = _lag(last, r, t, has_grad)
            if k > 0 and wd == 0.0:  # closed form: decays and a geometric drift
                decay = alpha ** float(k)
                mk = mom ** float(k)
                drift = mom * (1.0 - mk) / (1.0 - mom) if has_buf else 0.0
                for d in range(width):
                    S[r, d] = S[r, d] * decay
                    if centered:
                        GA[r, d] = GA[r, d] * decay
                    if has_buf:
                        b = float(B[r, d])
                        P[r, d] = P[r, d] - lr * b * drift
                        B[r, d] = b * mk
            elif k > 0:  # weight decay: replay the zero-gradient steps
                for d in range(width):
                    p, sq = float(P[r, d]), float(S[r, d])
                    ga = float(GA[r, d]) if centered else 0.0
                    b = float(B[r, d]) if has_buf else 0.0
                    for _ in range(k):
                        p, sq, ga, b = _rmsprop_elem(p, sq, ga, b, 0.0, lr, alpha, eps, mom,
                                                     centered, wd)
                    P[r, d], S[r, d] = p, sq
                    if centered:
                        GA[r, d] = ga
                    if has_buf:
                        B[r, d] = b
            last[r] = t
        if has_grad:
            for d in range(width):
                ga = float(GA[r, d]) if centered else 0.0
                b = float(B[r, d]) if has_buf else 0.0
                p, sq, ga, b = _rmsprop_elem(float(P[r, d]), float(S[r, d]), ga, b,
                                             float(G[i, d]), lr, alpha, eps, mom, centered, wd)
                P[r, d], S[r, d] = p, sq
                if centered:
                    GA[r, d] = ga
                if has_buf:
                    B[r, d] = b


def rmsprop_rows(param, square_avg, grad_avg, buf, idx, grad, t, last, lr, alpha, eps,
                 momentum, centered, weight_decay):
    states = [square_avg, grad_avg, buf]
    p2, (s2, ga2, b2), idx, g, has_grad, t, last, exact = _prepare(
        param, states, idx, grad, t, last, [True, bool(centered), bool(momentum)],
        ["square_avg", "grad_avg", "buf"])
    _rmsprop(p2, s2, ga2, b2, idx, g, has_grad, t, last, exact, float(lr), float(alpha),
             float(eps), float(momentum), bool(centered), float(weight_decay),
             _prefetch_distance(p2))


# --- Adam / AdamW --------------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _adam_elem(p, m, v, g, b1, b2, eps, l2, q, step_size, sqrt_bc2, lazy):
    p = p * q
    g = g + l2 * p
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * (g * g)
    if lazy:
        p = p - step_size * (m / (np.sqrt(v) + eps))
    else:
        p = p - step_size * (m / (np.sqrt(v) / sqrt_bc2 + eps))
    return p, m, v


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_scalars(lr, b1, b2, s, lazy):
    bc1, bc2 = 1.0 - b1 ** float(s), 1.0 - b2 ** float(s)
    if lazy:
        return lr * np.sqrt(bc2) / bc1, np.sqrt(bc2)
    return lr / bc1, np.sqrt(bc2)


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_catch_up(P, M, V, r, lag_from, k, lr, b1, b2, eps, l2, q, ratio, tol):
    """Skipped steps of one row, step-major so the per-step scalars are computed once.

    Each skipped step is applied to the whole row (a branch-free loop that vectorises).
    Without L2 decay the row stops once, for every element, the bound on the rest of its
    drift is below ``tol * |p|``; the remaining steps then only decay m, v (and p by q),
    in closed form. Stepping an element further than its own bound needs is still exact.
    """
    width = P.shape[1]
    prow, mrow, vrow = P[r], M[r], V[r]
    truncate = l2 == 0.0
    pw1, pw2 = b1 ** float(lag_from), b2 ** float(lag_from)  # b**s, updated by products
    j = 0
    while j < k:
        j += 1
        pw1, pw2 = pw1 * b1, pw2 * b2
        sqrt_bc2 = np.sqrt(1.0 - pw2)
        step_size = lr / (1.0 - pw1)  # dense Adam's scalars at step lag_from + j
        limit = ratio / sqrt_bc2
        pending = 0
        for d in range(width):
            p, m, v = _adam_elem(float(prow[d]), float(mrow[d]), float(vrow[d]), 0.0, b1, b2,
                                 eps, l2, q, step_size, sqrt_bc2, False)
            prow[d], mrow[d], vrow[d] = p, m, v
            term = step_size * (m / (np.sqrt(v) / sqrt_bc2 + eps))
            pending += abs(term) * limit > tol * abs(p)
        if truncate and pending == 0:
            break
    rest = k - j
    if rest > 0:
        f1, f2, fq = b1 ** float(rest), b2 ** float(rest), q ** float(rest)
        for d in range(width):
            mrow[d] = mrow[d] * f1
            vrow[d] = vrow[d] * f2
            prow[d] = prow[d] * fq


@njit(cache=True, nogil=True, error_model="numpy")
def _adam(P, M, V, idx, G, has_grad, t, last, exact, lr, b1, b2, eps, l2, q, ratio, tol,
          dist):
    width = P.shape[1]
    step_size, sqrt_bc2 = _adam_scalars(lr, b1, b2, t, not exact)
    for i in range(idx.shape[0]):
        _prefetch_ahead(idx, i, dist, P, M, V)
        r = idx[i]
        if exact:
            k = _lag(last, r, t, has_grad)
            if k > 0:
                _adam_catch_up(P, M, V, r, last[r], k, lr, b1, b2, eps, l2, q, ratio, tol)
            last[r] = t
        if has_grad:
            for d in range(width):
                P[r, d], M[r, d], V[r, d] = _adam_elem(
                    float(P[r, d]), float(M[r, d]), float(V[r, d]), float(G[i, d]), b1, b2,
                    eps, l2, q, step_size, sqrt_bc2, not exact)


def adam_rows(param, m, v, idx, grad, t, last, lr, beta1, beta2, eps, weight_decay,
              decoupled):
    p2, (m2, v2), idx, g, has_grad, t, last, exact = _prepare(param, [m, v], idx, grad, t,
                                                               last, [True, True], ["m", "v"])
    q, ratio = adam_drift_ratio(lr, beta1, beta2, weight_decay, decoupled)
    l2 = 0.0 if decoupled else float(weight_decay)
    _adam(p2, m2, v2, idx, g, has_grad, t, last, exact, float(lr), float(beta1),
          float(beta2), float(eps), l2, float(q), float(ratio), adam_drift_tol(p2.dtype),
          _prefetch_distance(p2))
