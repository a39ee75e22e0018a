"""Early writes, declared: the tables an exact-mode catch-up rewrites before the step is safe.

An exact-mode optimizer keeps a row's stored value behind while the row is not touched and
catches it up when it is next read (``minigrad/optim/ops.py``). A gather reads through
``FreshTake``, which catches up a *copy* of the gathered rows and writes nothing; a dense
read goes through ``CatchUpAll``, which brings every row of the table, its state and its
``last`` array up to date *in place*, in the safe phase. Logically nothing changed (the
parameter "is" its caught-up value), but the bits did, and a call that fails later (a NaN
caught by ``nan_guard``, an error in another node, a non-finite update undone by the update
guard) must leave every table bitwise as it was.

So the compiler treats such nodes as declared early writers: before one runs, the tables it
is about to rewrite are copied into the call's undo log (O(table), like the catch-up
itself, and only when rows are pending), and a call that does not complete writes them
back. A successful call drops the log. Ops that write nothing (``FreshTake``) need nothing.
"""
from __future__ import annotations


def _catch_up_all():
    from minigrad.optim.ops import CatchUpAll

    return CatchUpAll


def writes_early(node):
    """Whether ``node`` writes its input tables in the safe phase (``CatchUpAll``)."""
    return isinstance(node.op, _catch_up_all())


def logged(node, thunk, log):
    """``thunk`` preceded by saving the tables it will rewrite into ``log`` (a list)."""
    if not isinstance(node.op, _catch_up_all()):
        return thunk

    def save_tables(inputs):
        tables, t = inputs[:-1], int(inputs[-1])
        last = tables[-1]
        if t >= 1 and int(last.min()) < t:  # rows are pending: the node will write
            for table in tables:
                log.append((table, None, table.copy()))
        return thunk(inputs)

    return save_tables


def roll_back(log):
    """Write the saved rows back, newest first; empties ``log``."""
    while log:
        table, rows, saved = log.pop()
        if rows is None:
            table[...] = saved
        else:
            table[rows] = saved
