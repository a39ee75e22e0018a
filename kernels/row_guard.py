"""``RowGuard``: the caller's scratch for a row kernel that checks what it writes (issue 15.12).

A guarded row update must leave every table bitwise unchanged when its result is not
finite. Copying the touched rows out before the kernel and scanning them after it costs a
gather and a scan per table per call (~12% of an embedding step). Instead the kernel does
it while the rows are in cache: as it reaches row ``idx[i]`` it copies the row's old values
(parameter, every state, ``last``) into row ``i`` of this guard's scratch buffers, and after
writing the row it checks the new values; on the first non-finite row it stops and returns
its position. ``restore`` then writes the saved rows back.

The buffers belong to the caller (one guard per compiled update node) and are reused across
calls, growing to the largest batch seen, so a guarded call allocates nothing. Buffers
larger than ``KEEP_BYTES`` (a dense gradient over a huge table) are dropped after each call
instead of being kept alive beside the table.
"""
from __future__ import annotations

import numpy as np

__all__ = ["RowGuard"]

#: scratch kept between calls up to this many bytes per guard (above it: per call)
KEEP_BYTES = 64 << 20


def _empty_like_row(table2d):
    xp = _xp(table2d)
    return xp.zeros((0,) + tuple(table2d.shape[1:]), dtype=table2d.dtype)


def _xp(a):
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


class RowGuard:
    """Scratch buffers (rows x width per table) and what one guarded call wrote.

    Protocol: the kernel calls ``buffers(tables, last, idx)`` (2-D views of the tables it
    writes, ``None`` for an absent state) and gets one scratch view per table (an empty
    array for an absent one) plus one for ``last``; after its loop it calls
    ``finish(bad)`` with the position of the first non-finite row, or -1. The caller reads
    ``bad`` and calls ``restore()`` to undo the call (a no-op when it wrote nothing).
    """

    def __init__(self):
        self._store = {}  # slot -> (array with capacity rows)
        self._tables = ()
        self._last = None
        self._idx = None
        self._saved, self._saved_last = (), None
        self.written = 0  # rows idx[:written] of every table hold saved values
        self.bad = -1

    def _scratch(self, slot, like, n):
        buf = self._store.get(slot)
        shape = tuple(like.shape[1:])
        if (buf is None or buf.shape[0] < n or tuple(buf.shape[1:]) != shape
                or buf.dtype != like.dtype or type(buf) is not type(like)):
            cap = max(n, 2 * buf.shape[0] if buf is not None else 0, 16)
            buf = _xp(like).empty((cap,) + shape, dtype=like.dtype)
            if buf.nbytes <= KEEP_BYTES:
                self._store[slot] = buf
            else:
                self._store.pop(slot, None)
        return buf[:n]

    def buffers(self, tables, last, idx):
        """Scratch views for ``tables`` (2-D, ``None`` = absent) and ``last`` (or None)."""
        n = int(idx.shape[0])
        self._tables, self._last, self._idx = tuple(tables), last, idx
        self.written, self.bad = 0, -1
        views = [None if t is None else self._scratch(k, t, n) for k, t in enumerate(tables)]
        self._saved = tuple(views)
        views = [_empty_like_row(tables[0]) if v is None else v for v in views]
        if last is not None:
            self._saved_last = self._scratch("last", last.reshape(-1, 1), n).reshape(n)
        else:
            self._saved_last = None
        saved_last = (self._saved_last if self._saved_last is not None
                      else np.zeros(0, dtype=np.int64))
        return views, saved_last

    def finish(self, bad, written=None):
        """The kernel stopped at row position ``bad`` (-1: every row finite). ``written``
        rows were modified (default: all rows, or up to and including the bad one)."""
        n = int(self._idx.shape[0]) if self._idx is not None else 0
        self.bad = int(bad)
        if written is None:
            written = n if self.bad < 0 else self.bad + 1
        self.written = int(written)
        return self.bad

    def bad_row(self):
        """The table row of the first non-finite result (valid until ``restore``)."""
        return int(self._idx[self.bad]) if self.bad >= 0 else -1

    def restore(self):
        """Write the saved rows back (``last`` first, then the tables in reverse order)
        and forget the call."""
        if self.written and self._idx is not None:
            rows = self._idx[: self.written]
            if self._last is not None:
                self._last[rows] = self._saved_last[: self.written]
            for table, buf in reversed(list(zip(self._tables, self._saved))):
                if table is not None:
                    table[rows] = buf[: self.written]
        self.release()

    def release(self):
        """Drop the references to this call's tables (the scratch stays for reuse)."""
        self._tables, self._last, self._idx = (), None, None
        self._saved, self._saved_last = (), None
        self.written, self.bad = 0, -1
