"""The dense reference both exact-Adam catch-up test files compare with (they each wrote
it out before): dense Adam's recurrence with a zero gradient, step by step, in float64."""
from __future__ import annotations

import numpy as np


def dense_skipped_steps(p, m, v, vm, last, t, lr_of, wd_of, b1, b2, eps, decoupled,
                        amsgrad):
    """Every row's own skipped steps ``last+1 .. t`` with a zero gradient, vectorised over
    rows; ``lr_of(s)``/``wd_of(s)`` give step ``s``'s values. Returns ``(p, m, v)``
    (``vm``, AMSGrad's max, does not move: a zero gradient never raises it)."""
    p, m, v = (np.asarray(a, dtype=np.float64).copy() for a in (p, m, v))
    vm = None if vm is None else np.asarray(vm, dtype=np.float64)
    for s in range(1, t + 1):
        on = (s > last)[:, None]
        lr, wd = lr_of(s), wd_of(s)
        if decoupled:
            p = np.where(on, p * (1.0 - lr * wd), p)
        m, v = np.where(on, m * b1, m), np.where(on, v * b2, v)
        den = vm if amsgrad else v
        step = lr / (1 - b1**s) * (m / (np.sqrt(den) / np.sqrt(1 - b2**s) + eps))
        p = np.where(on, p - step, p)
    return p, m, v
