"""Argument checks shared by the runners that train over several processes
(``mg.parallel.hogwild`` on one machine, ``mg.distributed.train`` on a Ray cluster).

Both take the same ``params`` / ``dataset`` / counts, and a user moving from one to the
other should get the same message for the same mistake, before any process starts.
"""
from __future__ import annotations

import numpy as np

from minigrad.variables import SharedVariable


def check_params(params, float_only=False):
    """``params`` as a list: a non-empty list of distinct shared variables (float32 or
    float64 ones when ``float_only``: a parameter server applies float optimizer rules)."""
    params = list(params)
    if not params or not all(isinstance(p, SharedVariable) for p in params):
        raise TypeError("params must be a non-empty list of mg.shared variables")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("params lists the same shared variable twice")
    if float_only:
        for p in params:
            if p.type.dtype not in ("float32", "float64"):
                raise TypeError(f"parameter {p.name or p!r} must be float32/float64, "
                                f"got {p.type.dtype}")
    return params


def check_dataset(dataset):
    """The dataset's columns as a tuple: one array or a tuple/list of arrays, all with
    the same (non-zero) number of rows."""
    columns = tuple(dataset) if isinstance(dataset, (tuple, list)) else (dataset,)
    if not columns:
        raise ValueError("dataset must hold at least one array")
    rows = {c.shape[0] for c in columns}
    if len(rows) != 1:
        raise ValueError(f"dataset arrays must have the same number of rows, got {sorted(rows)}")
    if rows.pop() == 0:
        raise ValueError("dataset has no rows")
    return columns


def positive_int(name, v):
    """``v`` if it is a positive int (not a bool), else ``ValueError`` naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v
