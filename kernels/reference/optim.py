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
CuPy arrays. Each rule's per-element update comes from ``kernels/rules/<rule>.py``, the
same function ``kernels.cpu`` compiles into its loops. ``guard=`` (a
``kernels.row_guard.RowGuard``) saves the old rows and refuses a non-finite result before
anything is written (the kernel then returns the bad row's position, else -1).
"""
import math

import numpy as np

from kernels import _validate as V
from kernels.row_kernels import register_row_kernels, row_kernel
from kernels.rules import adagrad as adagrad_rule
from kernels.rules import adam as adam_rule
from kernels.rules import momentum as momentum_rule
from kernels.rules import rmsprop as rmsprop_rule

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
    return type(a) is np.ndarray or (hasattr(a, "shape") and hasattr(a, "dtype")
                                     and hasattr(a, "flags"))


def _check_destination(name, a):
    """A table the kernel writes in place: an array, C-contiguous and writeable."""
    if not _is_array(a):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    flags = a.flags
    if not flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (it is updated in place)")
    if not getattr(flags, "writeable", True):
        raise ValueError(f"{name} is read-only; the kernel updates it in place")


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def trusted_rows_args(param, states, idx, grad, t, last, required):
    """``check_rows_args`` for a call from compiled code, whose row indices are already
    checked (a ``RowSparse`` gradient is range-checked and coalesced when it is built, a
    flush or a read passes rows it found in the tables): only the O(1) checks a compiled
    loop needs not to read or write out of bounds (table dtypes, shapes, contiguity, a
    required state present). The O(rows) passes (index range, order, ``last`` behind
    ``t``) cost ~25-100 us a call, as much as a small step itself. Returns None where
    something is off, so the caller runs the full check (and its error message)."""
    shape = param.shape
    dtype = param.dtype
    if (type(param) is not np.ndarray or dtype not in _FLOAT_DTYPES or len(shape) < 1
            or not param.flags.c_contiguous or not param.flags.writeable
            or type(idx) is not np.ndarray or idx.dtype != np.int64 or idx.ndim != 1):
        return None
    for s, req in zip(states, required):
        if s is None:
            if req:
                return None
        elif (type(s) is not np.ndarray or s.shape != shape or s.dtype != dtype
              or not s.flags.c_contiguous or not s.flags.writeable):
            return None
    n = idx.shape[0]
    width = 1
    for d in shape[1:]:
        width *= d
    if grad is not None:
        if (type(grad) is not np.ndarray or grad.dtype != dtype or grad.shape[:1] != (n,)
                or grad.shape[1:] != shape[1:] or not grad.flags.c_contiguous):
            return None
        grad = grad.reshape(n, width)
    if last is not None and (type(last) is not np.ndarray or last.dtype != np.int64
                             or last.shape != shape[:1] or not last.flags.c_contiguous
                             or not last.flags.writeable):
        return None
    t = int(t)
    if t < 1:
        return None
    rows = shape[0]
    flat = [None if s is None else s.reshape(rows, width) for s in states]
    return param.reshape(rows, width), flat, idx, grad, t


def check_rows_args(param, states, idx, grad, t, last, required=None, names=None,
                    trusted=False):
    """Validate one row-update call (cheap, vectorised); return 2-D views and int64 idx.

    ``trusted=True`` (a call from compiled code, see ``trusted_rows_args``) skips the
    O(rows) checks of the indices when the O(1) checks pass.

    Compiled kernels do no bounds checking, so every implementation calls this first, and
    every array the kernel dereferences is checked here: ``required[i]`` says whether state
    ``i`` is read (then ``None`` is refused: a compiled loop would write through a null
    table), ``names[i]`` names it in errors. Every destination is checked before anything is
    written, so a refused call changes nothing. Returns ``(param2d, states2d, idx, grad2d, t)``.
    """
    if trusted:
        got = trusted_rows_args(param, states, idx, grad, t, last,
                                required if required is not None else [False] * len(states))
        if got is not None:
            return got
    _check_destination("param", param)
    if param.dtype not in _FLOAT_DTYPES:
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
        # sorted first: then the ends are the extremes (no min/max passes on the fast path)
        ordered = n == 1 or bool((idx[1:] > idx[:-1]).all())
        V.check_index_range("idx", idx[::max(n - 1, 1)] if ordered else idx, shape[0],
                            message=lambda bad, rows: f"idx outside [0, {rows}): {bad}")
        if not ordered:
            raise ValueError("idx must be sorted and unique (coalesce the gradient first)")
    t = int(t)
    if t < 1:
        raise ValueError(f"step t must be >= 1, got {t}")
    width = math.prod(shape[1:])
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


def _drive(param, states, idx, grad, t, last, step, catch_up, required, names, history,
           guard=None, trusted=False):
    """Gather rows, catch up skipped steps, apply step ``t``, scatter back.

    With a ``guard`` (``kernels.row_guard.RowGuard``) the old rows are saved into its
    scratch and the new ones are checked before the scatter: a non-finite result writes
    nothing and returns the position of the first bad row (else -1)."""
    p2, s2, idx, grad, t = check_rows_args(param, states, idx, grad, t, last, required, names,
                                           trusted)
    if history is not None and last is not None:
        check_history(history, t - (grad is not None), last=None if trusted else last,
                      idx=idx)
    if idx.shape[0] == 0:
        if guard is not None:
            guard.buffers([p2, *s2], last, idx)
            return guard.finish(-1)
        return -1
    tables = [p2] + s2
    rows = [None if a is None else a[idx] for a in tables]
    if guard is not None:  # the guard's buffers hold at least n rows (spare ones unused)
        n = idx.shape[0]
        saved, saved_last = guard.buffers(tables, last, idx)
        for buf, r in zip(saved, rows):
            if r is not None:
                buf[:n] = r
        if last is not None:
            saved_last[:n] = last[idx]
    if last is not None:
        lag_from = last[idx]
        k = (t - 1 if grad is not None else t) - lag_from
        if bool((k > 0).any()):
            sel = (k > 0).nonzero()[0]
            sub = [None if r is None else r[sel] for r in rows]
            if guard is not None:  # a non-finite result is reported by the guard
                with np.errstate(all="ignore"):
                    catch_up(sub, lag_from[sel], k[sel])
            else:
                catch_up(sub, lag_from[sel], k[sel])
            for r, s in zip(rows, sub):
                if r is not None:
                    r[sel] = s
    if grad is not None:
        if guard is not None:  # a non-finite result is reported by the guard, not warned
            with np.errstate(all="ignore"):
                step(rows, grad, t)
        else:
            step(rows, grad, t)
    if guard is not None:
        bad = _first_bad_row(rows)
        if bad >= 0:
            return guard.finish(bad, written=0)
    for a, r in zip(tables, rows):
        if a is not None:
            a[idx] = r
    if last is not None:
        last[idx] = t
    return guard.finish(-1) if guard is not None else -1


def _first_bad_row(rows):
    """Position of the first row holding a NaN or inf in any of ``rows``, or -1."""
    xp = _xp(rows[0])
    ok = None
    for r in rows:
        if r is not None:
            fin = xp.isfinite(r).all(axis=1)
            ok = fin if ok is None else ok & fin
    bad = (~ok).nonzero()[0]
    return int(bad[0]) if bad.shape[0] else -1


def check_history(history, need, needs_blocks=False, last=None, idx=None):
    """A ``StepHistory`` must hold every step a catch-up up to ``need`` reads: up to
    ``need``, and (given ``last``/``idx``) back to the oldest step a row of ``idx`` lags
    from (a compacted history has forgotten the steps up to its ``base``)."""
    for name in ("lr", "wd", "offsets", "n", "base", "lr_max", "lrwd_max", "wd_max"):
        if not hasattr(history, name):
            raise TypeError(f"history must be a StepHistory, got {type(history).__name__}")
    if history.n < need:
        raise ValueError(f"history holds steps 1..{history.n}, the catch-up needs 1..{need}")
    if (history.base and last is not None and idx is not None and idx.shape[0]
            and int(last[idx].min()) < history.base):
        raise ValueError(f"history holds steps from {history.base + 1} on (compacted), but "
                         f"a row lags from step {int(last[idx].min())}")
    if needs_blocks and getattr(history, "blocks", None) is None:
        raise ValueError("history has no step maps (StepHistory(matrix=...)), which this "
                         "rule's catch-up needs")


class _Hyper:
    """lr and weight decay of a step: the scalars of step ``t``, or per skipped step from
    a ``StepHistory`` (``at(steps)`` gives per-row columns)."""

    def __init__(self, lr, wd, history):
        self.lr, self.wd, self.history = float(lr), float(wd), history

    def at(self, steps, xp=np):
        """``(lr, wd)`` for ``steps`` (an int array) as float64 columns, or the scalars."""
        if self.history is None:
            return self.lr, self.wd
        steps = _host(steps) - self.history.base  # storage index (compaction)
        return (xp.asarray(self.history.lr[steps])[:, None],
                xp.asarray(self.history.wd[steps])[:, None])

    @property
    def wd_any(self):
        return (self.history.wd_max > 0) if self.history is not None else self.wd != 0

    def lr_max(self):
        return max(self.lr, self.history.lr_max) if self.history is not None else self.lr

    def lrwd_max(self):
        if self.history is None:
            return self.lr * self.wd
        return max(self.lr * self.wd, self.history.lrwd_max)


def _host(a):
    return a.get() if hasattr(a, "__cuda_array_interface__") else np.asarray(a)


def _replay(step, rows, lag_from, k, hyper):
    """Apply the skipped zero-gradient steps one by one (no closed form): O(k) per row,
    each step vectorised over the rows still behind; each step uses its own lr/wd."""
    xp = _xp(rows[0])
    for j in range(1, int(k.max()) + 1):
        sel = (k >= j).nonzero()[0]
        sub = [None if r is None else r[sel] for r in rows]
        s = lag_from[sel] + j
        lr, wd = hyper.at(s, xp)
        step(sub, xp.zeros_like(sub[0]), s[:, None], lr, wd)
        for r, x in zip(rows, sub):
            if r is not None:
                r[sel] = x


#: a nonlinear replay (L2 weight decay) of more steps than this goes to the compiled loop
REPLAY_COMPILED_MIN_STEPS = 512


def _replay_compiled(rule, rows, lag_from, k, hyper, args, min_steps=None, **states):
    """Replay the skipped steps with the Numba kernel of the same rule, for long gaps.

    With L2 weight decay a zero-gradient step of Adagrad, RMSprop or Adam is a nonlinear
    map of the row's state (``g = wd * p`` feeds ``sqrt(v)``): no closed form, no product
    of step maps, nothing to vectorise across steps, so NumPy can only loop over the steps
    in Python (10**6 skipped steps of one row: 20-50 s). Gaps longer than
    ``REPLAY_COMPILED_MIN_STEPS`` are handed to ``kernels.cpu`` (a dependency of the
    package), which runs the same update per element in a compiled loop; shorter ones
    (and CuPy arrays, or an install without Numba) stay on the NumPy replay, which the
    tests compare with both the dense loop and the compiled one. Returns whether it ran.
    ``rule``: the rule's key in ``kernels.row_kernels`` (its Numba kernel does the replay).
    ``rows`` (copies of the lagging rows, ``None`` for an absent state) are updated in
    place; they all catch up to the same step ``lag_from + k``.
    """
    if min_steps is None:
        min_steps = REPLAY_COMPILED_MIN_STEPS
    if int(k.max()) <= min_steps or _xp(rows[0]) is not np:
        return False
    try:
        import kernels.cpu as cpu
    except ImportError:  # pragma: no cover - Numba missing
        return False
    n = rows[0].shape[0]
    target = int(lag_from[0]) + int(k[0])
    row_kernel(rule, cpu)(rows[0], *rows[1:], np.arange(n, dtype=np.int64), None, target,
                          np.ascontiguousarray(lag_from, dtype=np.int64).copy(), *args,
                          history=hyper.history, **states)
    return True


#: element-steps (rows x width x steps, up to the ~400 steps a drift needs) above which
#: the drift sum goes to the compiled loop
DRIFT_COMPILED_MIN_WORK = 1 << 16


def _drift_compiled(rows, lag_from, k, hyper, rule, amsgrad):
    """Adam's drift sum on the compiled loop when it is large (see ``_adam_drift``: the
    NumPy evaluation is vectorised over chunks of steps but still O(rows x width x steps
    to the bound), ~50 ms a batch of an embedding model, minutes an epoch); small ones,
    which the parity tests use, stay on NumPy."""
    n, width = rows[0].shape
    work = n * width * min(int(k.max()), 400)
    if work <= DRIFT_COMPILED_MIN_WORK and int(k.max()) <= REPLAY_COMPILED_MIN_STEPS:
        return False
    rest = [rows[0], rows[1], rows[2]]
    ran = _replay_compiled("adam", rest, lag_from, k, hyper,
                           (hyper.lr, *rule[:3], hyper.wd, rule[3], amsgrad),
                           max_exp_avg_sq=rows[3], min_steps=0)
    if ran:
        rows[:3] = rest
    return ran


def _linear_catch_up(rows, a, e, hyper, matrix):
    """Apply ``A_e ... A_a`` to ``(rows[0], rows[1])`` per row (``rows[1]`` may be None):
    from the history's block products, or ``matrix(lr, wd) ** k`` for constant hyper."""
    xp = _xp(rows[0])
    if hyper.history is None:
        prod = _matpow(matrix(hyper.lr, hyper.wd), xp.asarray(e - a + 1))
        m = [prod[:, 0, 0], prod[:, 0, 1], prod[:, 1, 0], prod[:, 1, 1]]
    else:
        from kernels.reference.history import range_product

        prod = xp.asarray(range_product(hyper.history, _host(a), _host(e)))
        m = [prod[:, 0], prod[:, 1], prod[:, 2], prod[:, 3]]
    p, b = rows[0], rows[1]
    if b is None:
        rows[0] = m[0][:, None] * p
        return
    rows[0] = m[0][:, None] * p + m[1][:, None] * b
    rows[1] = m[2][:, None] * p + m[3][:, None] * b


# --- SGD / momentum ----------------------------------------------------------------------


def _momentum_step(rows, g, s, lr, wd, mu, damp, nesterov):
    """torch.optim.SGD at step ``s`` (a scalar: the step, or 1 for a row's first step):
    the rule of ``kernels/rules/momentum.py`` on the gathered rows."""
    first = int(np.asarray(s).reshape(-1)[0]) == 1
    buf = rows[1] if mu else None
    rows[0], buf = momentum_rule.update(rows[0], buf, g, first, lr, mu, damp, nesterov, wd)
    if mu:
        rows[1] = buf


def _matpow(a, k):
    """``a ** k[i]`` for a 2x2 matrix ``a`` and each entry of ``k``: ``(n, 2, 2)``."""
    xp = _xp(k)
    out = xp.broadcast_to(xp.eye(2), (k.shape[0], 2, 2)).copy()
    base = xp.asarray(np.asarray(a, dtype=np.float64).reshape(2, 2))
    k = k.copy()
    while bool((k > 0).any()):
        odd = (k & 1).astype(bool)
        out[odd] = out[odd] @ base
        base = base @ base
        k >>= 1
    return out


momentum_matrix = momentum_rule.matrix


def _momentum_catch_up(rows, lag_from, k, hyper, mu, damp, nesterov):
    xp = _xp(rows[0])
    if not mu:
        if hyper.wd_any:
            sub = [rows[0], None]
            _linear_catch_up(sub, lag_from + 1, lag_from + k, hyper,
                             lambda lr, wd: momentum_matrix(lr, 0.0, 0.0, False, wd))
            rows[0] = sub[0]
        return
    first = (lag_from == 0).nonzero()[0]
    start = lag_from + 1
    if first.shape[0]:  # the dense optimizer's step 1 sets buffer = g (torch)
        sub = [rows[0][first], rows[1][first]]
        lr, wd = hyper.at(xp.ones(first.shape[0], dtype=np.int64), xp)
        _momentum_step(sub, xp.zeros_like(sub[0]), 1, lr, wd, mu, damp, nesterov)
        rows[0][first], rows[1][first] = sub
        start = start.copy()
        start[first] += 1
    _linear_catch_up(rows, start, lag_from + k, hyper,
                     lambda lr, wd: momentum_matrix(lr, mu, damp, nesterov, wd))


def momentum_rows(param, buf, idx, grad, t, last, lr, momentum, dampening, nesterov,
                  weight_decay, history=None, guard=None, trusted=False):
    """SGD with momentum (torch semantics) on rows ``idx``; exact catch-up is closed form
    (a product of the 2x2 step maps: a matrix power, or block products of the history)."""
    hyper = _Hyper(lr, weight_decay, history)
    rule = (momentum, dampening, nesterov)
    return _drive(param, [buf] if momentum else [None], idx, grad, t, last,
                  lambda r, g, s: _momentum_step(r, g, s, hyper.lr, hyper.wd, *rule),
                  lambda r, lf, k: _momentum_catch_up(r, lf, k, hyper, *rule),
                  [bool(momentum)], ["buf"], history, guard, trusted)


def sgd_rows(param, idx, grad, t, last, lr, weight_decay, history=None, guard=None,
             trusted=False):
    """Plain SGD: momentum_rows without a buffer (skipped steps decay by prod(1 - lr*wd))."""
    return momentum_rows(param, None, idx, grad, t, last, lr, 0.0, 0.0, False, weight_decay,
                         history, guard, trusted)


# --- Adagrad -------------------------------------------------------------------------------


def _adagrad_step(rows, g, s, lr, wd, eps, lr_decay):
    xp = _xp(rows[0])
    clr = adagrad_rule.step_lr(lr, xp.asarray(s, dtype=np.float64), lr_decay)
    rows[0], rows[1] = adagrad_rule.update(rows[0], rows[1], g, clr, eps, wd)


def adagrad_rows(param, acc, idx, grad, t, last, lr, eps, weight_decay, lr_decay=0.0,
                 history=None, guard=None, trusted=False):
    """Adagrad (torch). A zero gradient changes nothing unless weight decay is on."""
    hyper = _Hyper(lr, weight_decay, history)

    def step(r, g, s, lr=hyper.lr, wd=hyper.wd):
        _adagrad_step(r, g, s, lr, wd, eps, lr_decay)

    def catch_up(r, lf, k):
        if hyper.wd_any and not _replay_compiled(
                "adagrad", r, lf, k, hyper, (hyper.lr, eps, hyper.wd, lr_decay)):
            _replay(step, r, lf, k, hyper)

    return _drive(param, [acc], idx, grad, t, last, step, catch_up, [True], ["acc"], history,
                  guard, trusted)


# --- RMSprop -------------------------------------------------------------------------------


def _rmsprop_step(rows, g, s, lr, wd, alpha, eps, momentum, centered):
    rows[:] = rmsprop_rule.update(*rows, g, lr, alpha, eps, momentum, centered, wd)


rmsprop_matrix = rmsprop_rule.matrix


def _rmsprop_catch_up(rows, lag_from, k, hyper, alpha, momentum):
    """No weight decay: accumulators decay by alpha**k, the buffer drifts geometrically."""
    decay = alpha ** k[:, None].astype(np.float64)
    rows[1] = rows[1] * decay
    if rows[2] is not None:
        rows[2] = rows[2] * decay
    if momentum:
        sub = [rows[0], rows[3]]
        _linear_catch_up(sub, lag_from + 1, lag_from + k, hyper,
                         lambda lr, wd: rmsprop_matrix(lr, momentum))
        rows[0], rows[3] = sub


def rmsprop_rows(param, square_avg, grad_avg, buf, idx, grad, t, last, lr, alpha, eps,
                 momentum, centered, weight_decay, history=None, guard=None, trusted=False):
    """RMSprop (torch; ``alpha`` is the API's ``rho``); ``grad_avg``/``buf`` may be None."""
    hyper = _Hyper(lr, weight_decay, history)
    rule = (alpha, eps, momentum, centered)

    def step(r, g, s, lr=hyper.lr, wd=hyper.wd):
        _rmsprop_step(r, g, s, lr, wd, *rule)

    def catch_up(r, lf, k):
        if hyper.wd_any:
            if not _replay_compiled("rmsprop", r, lf, k, hyper,
                                    (hyper.lr, alpha, eps, momentum, centered, hyper.wd)):
                _replay(step, r, lf, k, hyper)
        else:
            _rmsprop_catch_up(r, lf, k, hyper, alpha, momentum)

    return _drive(param, [square_avg, grad_avg, buf], idx, grad, t, last, step, catch_up,
                  [True, bool(centered), bool(momentum)], ["square_avg", "grad_avg", "buf"],
                  history, guard, trusted)


# --- Adam / AdamW --------------------------------------------------------------------------


def _adam_step(rows, g, s, lr, wd, b1, b2, eps, decoupled, lazy, amsgrad=False):
    """torch.optim.Adam/AdamW at step ``s``; ``lazy``: torch.optim.SparseAdam's formula.
    The rule of ``kernels/rules/adam.py`` on the gathered rows (``s``, ``lr``, ``wd`` may
    be per-row columns)."""
    xp = _xp(rows[0])
    step_size, sqrt_bc2 = adam_rule.scalars(lr, b1, b2, xp.asarray(s, dtype=np.float64), lazy)
    q = 1.0 - lr * wd if decoupled else 1.0
    l2 = 0.0 if decoupled else wd
    rows[:] = adam_rule.update(*rows, g, b1, b2, eps, l2, q, step_size, sqrt_bc2, lazy,
                               amsgrad)


def adam_drift_ratio(lr, b1, b2, wd, decoupled):
    """``(q, r/(1-r))``: ``q = 1 - lr*wd`` the smallest decoupled decay of a skipped step
    and ``r/(1-r)`` bounding the tail of the skipped-step drift (inf: no truncation)."""
    q = 1.0 - lr * wd if decoupled else 1.0
    r = b1 / np.sqrt(b2) / q if q > 0 else np.inf
    return (q, r / (1.0 - r)) if r < 1 else (q, np.inf)


adam_matrix = adam_rule.matrix


#: elements per chunk array of the vectorised drift sum (steps x rows x width, float64)
_DRIFT_CHUNK_ELEMENTS = 1 << 21


def _adam_drift(rows, lag_from, k, hyper, b1, b2, eps, decoupled, amsgrad, tol):
    """Exact zero-gradient steps: m, v decay, the parameter drifts by a non-geometric sum.

    Without L2 decay a skipped step's drift does not depend on the parameter: step ``j``
    (global step ``s = lag_from + j``) moves it by ``lr_s / (1 - b1**s) * m0 b1**j /
    (sqrt(v0 b2**j) / sqrt(1 - b2**s) + eps)`` (``v0`` stays for AMSGrad's max), and
    AdamW's decoupled decay multiplies it by ``q_s = 1 - lr_s*wd_s`` first. So the sum is
    evaluated in chunks of steps at once (``steps x rows x width`` arrays, no Python loop
    per step): ``p <- Q p - sum_j Q_(j+1..) term_j`` per chunk. After each chunk an element
    whose bound on the rest of its drift, ``lr_max / (1 - b1**(s + 1)) * |m_j| /
    sqrt(v_j) * r/(1-r)`` (``r = b1 / sqrt(b2) / q_min``), is ``<= tol * |p|`` stops; its
    remaining steps only decay m, v (closed form, as every element's) and, for AdamW, p
    by the product of the steps' ``1 - lr*wd``. Stepping an element further than its own
    bound needs is still exact. Chunks start at 16 steps and double, so a typical catch-up
    (a few hundred steps to the bound) takes a handful of NumPy passes.
    """
    xp = _xp(rows[0])
    p, m0, v0, vmax = rows
    dtype = p.dtype
    lr_max = hyper.lr_max()
    _, ratio = adam_drift_ratio(1.0, b1, b2, hyper.lrwd_max() if decoupled else 0.0,
                                decoupled)
    n, width = p.shape
    p = p.astype(np.float64)
    m0f, v0f = m0.astype(np.float64), v0.astype(np.float64)
    den0 = vmax.astype(np.float64) if amsgrad else None  # a zero gradient never raises it
    stop = xp.zeros((n, width), dtype=np.int64)  # global j at which an element stopped
    done, chunk = 0, 16
    while True:
        live = ((k > done) & (stop == 0).any(axis=1)).nonzero()[0]
        if live.shape[0] == 0:
            break
        c = int(min(chunk, int(k[live].max()) - done,
                    max(1, _DRIFT_CHUNK_ELEMENTS // (live.shape[0] * width))))
        j = done + xp.arange(1, c + 1, dtype=np.int64)  # (c,) global step offsets
        kl, lf = k[live], lag_from[live]
        valid = j[:, None] <= kl[None, :]  # (c, n_live)
        s_int = xp.minimum(lf[None, :] + j[:, None], (lf + kl)[None, :])
        s = s_int.astype(np.float64)
        if hyper.history is None:
            lr = xp.full(s.shape, hyper.lr)
            wd = xp.full(s.shape, hyper.wd)
        else:
            h = _host(s_int) - hyper.history.base
            lr, wd = xp.asarray(hyper.history.lr[h]), xp.asarray(hyper.history.wd[h])
        jf = j.astype(np.float64)[:, None, None]
        m_j = m0f[live][None] * b1 ** jf  # (c, n_live, width)
        den = den0[live][None] if amsgrad else v0f[live][None] * b2 ** jf
        step_size = (lr / (1.0 - b1 ** s))[:, :, None]
        sb2 = xp.sqrt(1.0 - b2 ** s)[:, :, None]
        term = step_size * (m_j / (xp.sqrt(den) / sb2 + eps))
        act = valid[:, :, None] & (stop[live] == 0)[None]
        term = xp.where(act, term, 0.0)
        q = xp.where(valid, 1.0 - lr * wd, 1.0) if decoupled else None
        pl = p[live]
        if decoupled:
            # suffix products Q_(i+1..c) within the chunk: later steps' decay of term i
            suffix = xp.cumprod(q[::-1], axis=0)[::-1]
            after = xp.concatenate([suffix[1:], xp.ones_like(suffix[:1])], axis=0)
            # stopped elements get their remaining decay in closed form at the end
            decay = xp.where(stop[live] == 0, suffix[0][:, None], 1.0)
            pl = decay * pl - (after[:, :, None] * term).sum(axis=0)
        else:
            pl = pl - term.sum(axis=0)
        p[live] = pl
        # the bound on what an element's later steps can still add, at the chunk's end
        last_j = xp.minimum(kl, done + c)  # per live row
        s_end = (lf + last_j).astype(np.float64)[:, None]
        jl = last_j.astype(np.float64)[:, None]
        m_end = xp.abs(m0f[live]) * b1 ** jl
        den_end = den0[live] if amsgrad else v0f[live] * b2 ** jl
        with np.errstate(divide="ignore", invalid="ignore"):
            size = xp.where(m_end == 0, 0.0, m_end / xp.sqrt(den_end))
        bound = (lr_max / (1.0 - b1 ** (s_end + 1.0))) * size * ratio
        st = stop[live]
        newly = (st == 0) & (bound <= tol * xp.abs(pl)) & (kl[:, None] > last_j[:, None])
        stop[live] = xp.where(newly, last_j[:, None], st)
        done += c
        chunk *= 2
    kcol = k[:, None].astype(np.float64)
    m_out = (m0f * b1 ** kcol).astype(dtype)
    v_out = (v0f * b2 ** kcol).astype(dtype)
    rest = xp.where(stop > 0, k[:, None] - stop, 0)
    if decoupled and bool((rest > 0).any()):
        for d in range(width):  # per element: each stopped at its own step
            sel = (rest[:, d] > 0).nonzero()[0]
            if sel.shape[0] == 0:
                continue
            a = lag_from[sel] + stop[sel, d] + 1
            col = [p[sel, d:d + 1], None]
            _linear_catch_up(col, a, lag_from[sel] + k[sel], hyper, adam_matrix)
            p[sel, d] = col[0][:, 0]
    rows[:] = [p.astype(dtype), m_out, v_out, vmax]


def adam_rows(param, m, v, idx, grad, t, last, lr, beta1, beta2, eps, weight_decay,
              decoupled, amsgrad=False, max_exp_avg_sq=None, history=None, guard=None,
              trusted=False):
    """Adam (``decoupled=False``: L2 weight decay) or AdamW on rows ``idx``.

    ``last=None`` is lazy mode with ``torch.optim.SparseAdam``'s update; exact mode uses
    dense Adam's update and catches skipped steps up (truncated drift sum without L2 decay,
    step-by-step replay with L2 decay, where a zero gradient still moves every row).
    ``amsgrad`` keeps ``max_exp_avg_sq`` (torch's ``amsgrad=True``).
    """
    hyper = _Hyper(lr, weight_decay, history)
    rule = (beta1, beta2, eps, decoupled)

    def step(r, g, s, lr=hyper.lr, wd=hyper.wd):
        _adam_step(r, g, s, lr, wd, *rule, lazy=last is None, amsgrad=amsgrad)

    def catch_up(r, lf, k):
        if hyper.wd_any and not decoupled:
            rest = [r[0], r[1], r[2]]
            if not _replay_compiled("adam", rest, lf, k, hyper,
                                    (hyper.lr, *rule[:3], hyper.wd, False, amsgrad),
                                    max_exp_avg_sq=r[3]):
                _replay(step, r, lf, k, hyper)
            else:
                r[:3] = rest
        elif not _drift_compiled(r, lf, k, hyper, rule, amsgrad):
            _adam_drift(r, lf, k, hyper, *rule, amsgrad, tol=adam_drift_tol(r[0].dtype))

    return _drive(param, [m, v, max_exp_avg_sq], idx, grad, t, last, step, catch_up,
                  [True, True, bool(amsgrad)], ["m", "v", "max_exp_avg_sq"], history, guard,
                  trusted)


register_row_kernels('numpy', {"sgd": sgd_rows, "momentum": momentum_rows,
                               "adagrad": adagrad_rows, "rmsprop": rmsprop_rows,
                               "adam": adam_rows})
