"""Early writes, declared: the rows an exact-mode catch-up rewrites before the step is safe.

An exact-mode optimizer keeps a row's stored value behind while the row is not touched and
catches it up when it is next read (``CatchUpRows`` before a gather, ``CatchUpAll`` before
a dense read; ``minigrad/optim/ops.py``). The forward pass needs the caught-up values, so
these nodes run in the *safe* phase and write the parameter, its state and its ``last``
array there. Logically nothing changed (the parameter "is" its caught-up value), but the
bits did, and a call that fails later (a NaN caught by ``nan_guard``, an error in another
node) must leave every table bitwise as it was.

So the compiler treats them as declared early writers: before such a node runs, the rows
it is about to rewrite are copied into the call's undo log (the unique gathered rows; all
rows for ``CatchUpAll``, which is O(table) work anyway), and a call that does not complete
its safe phase writes them back. A successful call drops the log.
"""
from __future__ import annotations

import numpy as np


def _catch_up_classes():
    from minigrad.optim.ops import CatchUpAll, CatchUpRows

    return CatchUpRows, CatchUpAll


def writes_early(node):
    """Whether ``node`` writes its input tables in the safe phase (a catch-up node)."""
    return isinstance(node.op, _catch_up_classes())


def logged(node, thunk, log):
    """``thunk`` preceded by saving the rows it will rewrite into ``log`` (a list)."""
    CatchUpRows, CatchUpAll = _catch_up_classes()
    if isinstance(node.op, CatchUpAll):
        def save_all(inputs):
            tables, t_new = inputs[:-1], int(inputs[-1])
            last = tables[-1]
            if t_new > 1 and int(last.min()) < t_new - 1:  # something will be written
                for table in tables:
                    log.append((table, None, table.copy()))
            return thunk(inputs)

        return save_all
    if isinstance(node.op, CatchUpRows):
        def save_rows(inputs):
            tables, t_new, idx = inputs[:-2], int(inputs[-2]), inputs[-1]
            if t_new > 1:
                from minigrad.types import array_module

                xp = array_module(tables[0])
                rows = xp.unique(xp.asarray(idx).reshape(-1))
                n = tables[0].shape[0]
                if rows.shape[0] and (int(rows[0]) >= 0 and int(rows[-1]) < n):
                    rows = rows.astype(np.int64, copy=False)
                    for table in tables:
                        log.append((table, rows, table[rows]))
            return thunk(inputs)

        return save_rows
    return thunk


def roll_back(log):
    """Write the saved rows back, newest first; empties ``log``."""
    while log:
        table, rows, saved = log.pop()
        if rows is None:
            table[...] = saved
        else:
            table[rows] = saved
