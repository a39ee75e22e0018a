"""Reading rows from a shard's optimizer as the dense optimizer would hold them."""
from __future__ import annotations

import numpy as np


def read_rows(opt, param, ids):
    """``param``'s rows ``ids`` as the dense optimizer would hold them now.

    In ``sparse="exact"`` mode an untouched row lags; a single-process step catches up the
    rows its forward pass gathers (``CatchUpRows``) and only those. A shard must do the
    same for the rows a worker pulls: catching up every row at each pull (a flush) would
    apply the skipped steps in many pieces instead of one closed form, which is the same
    value mathematically but not bit for bit. Same kernel call as ``CatchUpRows``.
    """
    i = next(k for k, p in enumerate(opt.params) if p is param)
    last = opt.last[i] if getattr(opt, "last", None) is not None else None
    table = param.value
    if last is not None and ids.shape[0]:
        steps = getattr(opt, "steps", None)
        t = int((steps[i] if steps is not None else opt.t).value)
        rows = np.unique(ids)
        rows = rows[last.value[rows] < t]
        if rows.shape[0] and t > 0:
            from minigrad.optim.base import _module_for

            states = {k: v.value for k, v in opt.state[i].items()}
            kernel = getattr(_module_for(table), opt.kernel)
            kernel(table, *[states.get(k) for k in opt.layout], rows.astype(np.int64), None,
                   t, last.value, *opt.hyper())
    return table[ids]
