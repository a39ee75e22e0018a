"""Fused optimizer row updates: the NumPy definitions (``kernels.cpu``/``kernels.gpu`` match).

Every kernel updates, in place and in one call, the rows ``idx`` of a parameter table and
of its state tables. The signature is the same for every rule::

    <rule>_rows(param, *states, idx, grad, t, last, *hyper)

* ``param``: C-contiguous float32/float64 table ``(V, ...)``; ``states``: tables of the same
  shape and dtype (``None`` where an option does not use one, e.g. RMSprop's ``grad_avg``);
* ``idx``: sorted, unique int row indices ``(n,)`` (a coalesced gradient);
* ``grad``: the gradient rows ``(n, ...)``, or ``None`` to only *catch up* the rows to step
  ``t`` (what ``Optimizer.flush`` does);
* ``t``: the 1-based step being applied;
* ``last``: int64 ``(V,)`` step at which each row was last brought up to date, or ``None``
  for ``"lazy"`` mode (no catch-up: only the touched rows' state moves).

In ``"exact"`` mode a row whose ``last`` is ``L`` first receives the ``k = t - 1 - L``
zero-gradient steps it skipped (closed forms where they exist, see ``docs/optimizers.md``),
then step ``t``; afterwards ``last[idx] = t``. The code here is vectorised over the touched
rows and written against the array namespace of ``param`` so ``kernels.gpu`` can run it on
CuPy arrays.
"""
import numpy as np

# the kernels (same names in kernels.cpu and kernels.gpu); the helpers below them
# (check_rows_args, adam_drift_tol, ...) are imported by name where they are shared
__all__ = ["adagrad_rows", "adam_rows", "momentum_rows", "rmsprop_rows", "sgd_rows"]

# A skipped Adam step's drift is dropped once a bound on the sum of all later ones falls
# below this fraction of |param|: far below float64 resolution (2**-53 ~ 1.1e-16).
ADAM_DRIFT_TOL = 1e-18
# float32 tables hold 24 bits: 2**-40 is still 65,000x below their resolution, and the
# geometric tail (ratio ~0.9 per step) reaches it in ~40% fewer terms than 1e-18.
ADAM_DRIFT_TOL_FLOAT32 = 2.0**-40


def adam_drift_tol(dtype):
    """Truncation tolerance of the exact Adam catch-up for a table of ``dtype``."""
    return ADAM_DRIFT_TOL_FLOAT32 if np.dtype(dtype) == np.float32 else ADAM_DRIFT_TOL


def _xp(a):
    module = type(a).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        return cupy
    return np


def _is_array(a):
    return hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "flags")


def _check_destination(name, a):
    """A table the kernel writes in place: an array, C-contiguous and writeable."""
    if not _is_array(a):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (it is updated in place)")
    if not getattr(a.flags, "writeable", True):
        raise ValueError(f"{name} is read-only; the kernel updates it in place")


def check_rows_args(param, states, idx, grad, t, last, required=None, names=None):
    """Validate one row-update call (cheap, vectorised); return 2-D views and int64 idx.

    Compiled kernels do no bounds checking, so every implementation calls this first, and
    every array the kernel dereferences is checked here: ``required[i]`` says whether state
    ``i`` is read (then ``None`` is refused: a compiled loop would write through a null
    table), ``names[i]`` names it in errors. Every destination is checked before anything is
    written, so a refused call changes nothing. Returns ``(param2d, states2d, idx, grad2d, t)``.
    """
    _check_destination("param", param)
    if np.dtype(param.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"param must be float32 or float64, got {param.dtype}")
    if param.ndim < 1:
        raise ValueError("param must have at least one axis")
    shape = tuple(param.shape)
    names = list(names) if names is not None else [f"state {i}" for i in range(len(states))]
    required = list(required) if required is not None else [False] * len(states)
    for i, s in enumerate(states):
        if s is None:
            if required[i]:
                raise ValueError(f"state {names[i]} is required by these hyperparameters, "
                                 f"got None")
            continue
        _check_destination(names[i], s)
        if tuple(s.shape) != shape or s.dtype != param.dtype:
            raise ValueError(
                f"state {names[i]} must be C-contiguous {param.dtype} of shape {shape}, "
                f"got {s.dtype} {tuple(s.shape)}"
            )
    xp = _xp(param)
    if not hasattr(idx, "dtype"):
        idx = xp.asarray(idx)
    idx = xp.asarray(idx)
    if idx.ndim != 1 or np.dtype(idx.dtype).kind not in "iu":
        raise TypeError(f"idx must be a 1-D integer array, got {idx.dtype} {tuple(idx.shape)}")
    idx = idx.astype(np.int64, copy=False)
    n = idx.shape[0]
    if n:
        if int(idx.min()) < 0 or int(idx.max()) >= shape[0]:
            raise IndexError(f"idx outside [0, {shape[0]})")
        if n > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError("idx must be sorted and unique (coalesce the gradient first)")
    t = int(t)
    if t < 1:
        raise ValueError(f"step t must be >= 1, got {t}")
    width = int(np.prod(shape[1:], dtype=np.int64))
    if grad is not None:
        if not _is_array(grad):
            raise TypeError(f"grad must be an array or None, got {type(grad).__name__}")
        if tuple(grad.shape) != (n,) + shape[1:]:
            raise ValueError(f"grad must have shape {(n,) + shape[1:]}, got {tuple(grad.shape)}")
        if np.dtype(grad.dtype).kind not in "fiu":
            raise TypeError(f"grad must hold numbers, got {grad.dtype}")
        grad = xp.ascontiguousarray(grad, dtype=param.dtype).reshape(n, width)
    if last is not None:
        _check_destination("last", last)
        if tuple(last.shape) != (shape[0],) or last.dtype != np.int64:
            raise ValueError(f"last must be int64 of shape ({shape[0]},)")
        if n and int(last[idx].max()) > t - (grad is not None):
            raise ValueError(f"rows were already updated past step {t}")
    flat = [None if s is None else s.reshape(shape[0], width) for s in states]
    return param.reshape(shape[0], width), flat, idx, grad, t


def _drive(param, states, idx, grad, t, last, step, catch_up, required, names):
    """Gather rows, catch up skipped steps, apply step ``t``, scatter back."""
    p2, s2, idx, grad, t = check_rows_args(param, states, idx, grad, t, last, required, names)
    if idx.shape[0] == 0:
        return
    tables = [p2] + s2
    rows = [None if a is None else a[idx] for a in tables]
    if last is not None:
        lag_from = last[idx]
        k = (t - 1 if grad is not None else t) - lag_from
        if bool((k > 0).any()):
            sel = (k > 0).nonzero()[0]
            sub = [None if r is None else r[sel] for r in rows]
            catch_up(sub, lag_from[sel], k[sel])
            for r, s in zip(rows, sub):
                if r is not None:
                    r[sel] = s
    if grad is not None:
        step(rows, grad, t)
    for a, r in zip(tables, rows):
        if a is not None:
            a[idx] = r
    if last is not None:
        last[idx] = t


def _replay(step, rows, lag_from, k):
    """Apply the skipped zero-gradient steps one by one (no closed form): O(k) per row."""
    xp = _xp(rows[0])
    for j in range(1, int(k.max()) + 1):
        sel = (k >= j).nonzero()[0]
        sub = [None if r is None else r[sel] for r in rows]
        step(sub, xp.zeros_like(sub[0]), (lag_from[sel] + j)[:, None])
        for r, s in zip(rows, sub):
            if r is not None:
                r[sel] = s


# --- SGD / momentum ----------------------------------------------------------------------


def _momentum_step(rows, g, s, lr, mu, damp, nesterov, wd):
    """torch.optim.SGD at step ``s`` (scalar or per-row column): buffer = g at step 1."""
    xp = _xp(rows[0])
    p = rows[0]
    if wd:
        g = g + wd * p
    if mu:
        buf = xp.where(xp.asarray(s) == 1, g, mu * rows[1] + (1 - damp) * g)
        rows[1] = buf
        g = g + mu * buf if nesterov else buf
    rows[0] = p - lr * g


def _matpow(a, k):
    """``a ** k[i]`` for a 2x2 matrix ``a`` and each entry of ``k``: ``(n, 2, 2)``."""
    xp = _xp(k)
    out = xp.broadcast_to(xp.eye(2), (k.shape[0], 2, 2)).copy()
    base = xp.asarray(a, dtype=np.float64)
    k = k.copy()
    while bool((k > 0).any()):
        odd = (k & 1).astype(bool)
        out[odd] = out[odd] @ base
        base = base @ base
        k >>= 1
    return out


def momentum_matrix(lr, mu, damp, nesterov, wd):
    """The 2x2 map of one zero-gradient step on ``(param, buffer)`` (after step 1)."""
    c = 1.0 - damp
    if nesterov:
        return [[1.0 - lr * wd - lr * mu * c * wd, -lr * mu * mu], [c * wd, mu]]
    return [[1.0 - lr * c * wd, -lr * mu], [c * wd, mu]]


def _momentum_catch_up(rows, lag_from, k, lr, mu, damp, nesterov, wd):
    xp = _xp(rows[0])
    if not mu:
        if wd:
            rows[0] = rows[0] * (1.0 - lr * wd) ** k[:, None].astype(np.float64)
        return
    first = (lag_from == 0).nonzero()[0]
    if first.shape[0]:  # the dense optimizer's step 1 sets buffer = g (torch)
        sub = [rows[0][first], rows[1][first]]
        _momentum_step(sub, xp.zeros_like(sub[0]), 1, lr, mu, damp, nesterov, wd)
        rows[0][first], rows[1][first] = sub
        k = k.copy()
        k[first] -= 1
    a = _matpow(momentum_matrix(lr, mu, damp, nesterov, wd), k)
    p, b = rows
    rows[0] = a[:, 0, 0, None] * p + a[:, 0, 1, None] * b
    rows[1] = a[:, 1, 0, None] * p + a[:, 1, 1, None] * b


def momentum_rows(param, buf, idx, grad, t, last, lr, momentum, dampening, nesterov,
                  weight_decay):
    """SGD with momentum (torch semantics) on rows ``idx``; exact catch-up is closed form."""
    hyper = (lr, momentum, dampening, nesterov, weight_decay)
    _drive(param, [buf] if momentum else [], idx, grad, t, last,
           lambda r, g, s: _momentum_step(r, g, s, *hyper),
           lambda r, lf, k: _momentum_catch_up(r, lf, k, *hyper), [True], ["buf"])


def sgd_rows(param, idx, grad, t, last, lr, weight_decay):
    """Plain SGD: momentum_rows without a buffer (skipped steps decay by (1-lr*wd)**k)."""
    momentum_rows(param, None, idx, grad, t, last, lr, 0.0, 0.0, False, weight_decay)


# --- Adagrad -------------------------------------------------------------------------------


def _adagrad_step(rows, g, s, lr, eps, wd):
    xp = _xp(rows[0])
    p, acc = rows
    if wd:
        g = g + wd * p
    acc = acc + g * g
    rows[0], rows[1] = p - lr * (g / (xp.sqrt(acc) + eps)), acc


def adagrad_rows(param, acc, idx, grad, t, last, lr, eps, weight_decay):
    """Adagrad (torch, lr_decay=0). A zero gradient changes nothing unless weight_decay."""
    hyper = (lr, eps, weight_decay)

    def step(r, g, s):
        _adagrad_step(r, g, s, *hyper)

    def catch_up(r, lf, k):
        if weight_decay:
            _replay(step, r, lf, k)

    _drive(param, [acc], idx, grad, t, last, step, catch_up, [True], ["acc"])


# --- RMSprop -------------------------------------------------------------------------------


def _rmsprop_step(rows, g, s, lr, alpha, eps, momentum, centered, wd):
    xp = _xp(rows[0])
    p, sq, ga, buf = rows
    if wd:
        g = g + wd * p
    sq = alpha * sq + (1 - alpha) * (g * g)
    if centered:
        ga = alpha * ga + (1 - alpha) * g
        avg = xp.sqrt(sq - ga * ga) + eps
    else:
        avg = xp.sqrt(sq) + eps
    if momentum:
        buf = momentum * buf + g / avg
        p = p - lr * buf
    else:
        p = p - lr * (g / avg)
    rows[:] = [p, sq, ga, buf]


def _rmsprop_catch_up(rows, k, lr, alpha, momentum):
    """No weight decay: accumulators decay by alpha**k, the buffer drifts geometrically."""
    kf = k[:, None].astype(np.float64)
    decay = alpha ** kf
    rows[1] = rows[1] * decay
    if rows[2] is not None:
        rows[2] = rows[2] * decay
    if momentum:
        mk = momentum ** kf
        rows[0] = rows[0] - lr * rows[3] * (momentum * (1.0 - mk) / (1.0 - momentum))
        rows[3] = rows[3] * mk


def rmsprop_rows(param, square_avg, grad_avg, buf, idx, grad, t, last, lr, alpha, eps,
                 momentum, centered, weight_decay):
    """RMSprop (torch; ``alpha`` is the API's ``rho``); ``grad_avg``/``buf`` may be None."""
    hyper = (lr, alpha, eps, momentum, centered, weight_decay)

    def step(r, g, s):
        _rmsprop_step(r, g, s, *hyper)

    def catch_up(r, lf, k):
        if weight_decay:
            _replay(step, r, lf, k)
        else:
            _rmsprop_catch_up(r, k, lr, alpha, momentum)

    _drive(param, [square_avg, grad_avg, buf], idx, grad, t, last, step, catch_up,
           [True, bool(centered), bool(momentum)], ["square_avg", "grad_avg", "buf"])


# --- Adam / AdamW --------------------------------------------------------------------------


def _adam_step(rows, g, s, lr, b1, b2, eps, wd, decoupled, lazy):
    """torch.optim.Adam/AdamW at step ``s``; ``lazy``: torch.optim.SparseAdam's formula."""
    xp = _xp(rows[0])
    p, m, v = rows
    if decoupled:
        p = p * (1.0 - lr * wd)
    elif wd:
        g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g)
    s = xp.asarray(s, dtype=np.float64)
    bc1, bc2 = 1.0 - b1 ** s, 1.0 - b2 ** s
    if lazy:
        p = p - (lr * xp.sqrt(bc2) / bc1) * (m / (xp.sqrt(v) + eps))
    else:
        p = p - (lr / bc1) * (m / (xp.sqrt(v) / xp.sqrt(bc2) + eps))
    rows[:] = [p, m, v]


def adam_drift_ratio(lr, b1, b2, wd, decoupled):
    """``r/(1-r)`` bounding the tail of the skipped-step drift (inf: no truncation)."""
    q = 1.0 - lr * wd if decoupled else 1.0
    r = b1 / np.sqrt(b2) / q if q > 0 else np.inf
    return (q, r / (1.0 - r)) if r < 1 else (q, np.inf)


def _adam_drift(rows, lag_from, k, lr, b1, b2, eps, wd, decoupled, tol=ADAM_DRIFT_TOL):
    """Exact zero-gradient steps: m, v decay, the parameter drifts by a non-geometric sum.

    Term ``j`` of the drift is bounded by ``|term_j| * r**(i-j) / sqrt(1 - b2**s_j)`` for
    every later ``i`` (``r = b1 / sqrt(b2) / q``), so an element stops as soon as
    ``|term_j| * r/(1-r) / sqrt(1 - b2**s_j) <= tol * |p|``; its remaining steps then
    only decay m, v (and, for AdamW, p) in closed form.
    """
    xp = _xp(rows[0])
    p, m, v = rows
    q, ratio = adam_drift_ratio(lr, b1, b2, wd, decoupled)
    n, width = p.shape
    stop = xp.zeros((n, width), dtype=np.int64)  # j at which an element was truncated
    kcol = k[:, None]
    for j in range(1, int(k.max()) + 1):
        act = (kcol >= j) & (stop == 0)
        if not bool(act.any()):
            break
        s = (lag_from + j)[:, None].astype(np.float64)
        if decoupled:
            p = xp.where(act, p * q, p)
        m = xp.where(act, b1 * m, m)
        v = xp.where(act, b2 * v, v)
        sb2 = xp.sqrt(1.0 - b2 ** s)
        term = (lr / (1.0 - b1 ** s)) * (m / (xp.sqrt(v) / sb2 + eps))
        p = xp.where(act, p - term, p)
        done = act & (xp.abs(term) * (ratio / sb2) <= tol * xp.abs(p)) & (kcol > j)
        stop = xp.where(done, j, stop)
    rest = xp.where(stop > 0, kcol - stop, 0).astype(np.float64)
    rows[:] = [p * q ** rest, m * b1 ** rest, v * b2 ** rest]


def adam_rows(param, m, v, idx, grad, t, last, lr, beta1, beta2, eps, weight_decay,
              decoupled):
    """Adam (``decoupled=False``: L2 weight decay) or AdamW on rows ``idx``.

    ``last=None`` is lazy mode with ``torch.optim.SparseAdam``'s update; exact mode uses
    dense Adam's update and catches skipped steps up (truncated drift sum without L2 decay,
    step-by-step replay with L2 decay, where a zero gradient still moves every row).
    """
    hyper = (lr, beta1, beta2, eps, weight_decay, decoupled)
    replay = bool(weight_decay) and not decoupled

    def step(r, g, s):
        _adam_step(r, g, s, *hyper, lazy=last is None)

    def catch_up(r, lf, k):
        if replay:
            _replay(step, r, lf, k)
        else:
            _adam_drift(r, lf, k, *hyper, tol=adam_drift_tol(r[0].dtype))

    _drive(param, [m, v], idx, grad, t, last, step, catch_up, [True, True], ["m", "v"])
