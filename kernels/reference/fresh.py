"""``gather_lagging``: one gather of an exact-mode table that also picks out the rows whose
optimizer state lags behind the table's step (``kernels.cpu`` has the compiled version).

An evaluation function reads an exact-mode table through ``FreshTake``: every gathered
row must look caught up, but only the lagging ones need the rule's catch-up. Gathering the
rows, testing ``last`` and copying the lagging rows' state out for the catch-up kernel are
one pass here, so a read costs one gather plus the catch-up of what lags (issue 13 item 6).
Written against the array namespace of ``param`` (NumPy or CuPy).
"""
from __future__ import annotations

import numpy as np

__all__ = ["gather_lagging"]


def _xp(a):
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def gather_lagging(tables, last, flat, t):
    """Gather rows ``flat`` of ``tables`` (2-D ``(V, width)`` views: param, then its state
    tables) for a read at step ``t``.

    Returns ``(bad, out, pos, sub, sub_last)``: ``bad`` is the position in ``flat`` of the
    first index outside ``[0, V)`` (then nothing else is computed: ``None``s) or -1;
    ``out = param[flat]``; ``pos`` the positions in ``flat`` whose row has ``last < t``;
    ``sub`` a contiguous copy of those rows of every table and ``sub_last`` their ``last``
    (what the catch-up kernel brings up to ``t`` in the copy: the tables stay untouched).
    """
    xp = _xp(tables[0])
    n_rows = tables[0].shape[0]
    outside = ((flat < 0) | (flat >= n_rows)).nonzero()[0]
    if outside.shape[0]:
        return int(outside[0]), None, None, None, None
    out = tables[0][flat]
    pos = (last[flat] < t).nonzero()[0]
    rows = flat[pos]
    sub = [xp.ascontiguousarray(a[rows]) for a in tables]
    return -1, out, pos, sub, xp.ascontiguousarray(last[rows])
