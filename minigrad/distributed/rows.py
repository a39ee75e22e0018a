"""Reading rows from a shard's optimizer as the dense optimizer would hold them."""
from __future__ import annotations

import numpy as np


def read_rows(opt, param, ids):
    """``param``'s rows ``ids`` as the dense optimizer would hold them now.

    In ``sparse="exact"`` mode an untouched row lags; a single-process step catches up the
    rows its forward pass gathers and only those. A shard must do the same for the rows a
    worker pulls: catching up every row at each pull (a flush) would apply the skipped
    steps in many pieces instead of one closed form, which is the same value
    mathematically but not bit for bit. Uses the parameter's ``ParamState.catch_up``.
    """
    from minigrad.optim.param_state import exact_state_of, module_for

    state = exact_state_of(param)
    if state is not None and state.last is not None and ids.shape[0]:
        t = int(state.step.value)
        rows = np.unique(ids)
        rows = rows[state.last.value[rows] < t]
        if rows.shape[0]:
            state.catch_up(module_for(param.value), state.arrays(True),
                           rows.astype(np.int64), t)
    return param.value[ids]
