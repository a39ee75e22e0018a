"""``RowGuard``: the caller's scratch for a row kernel that checks what it writes (issue 15.12).

A guarded row update must leave every table bitwise unchanged when its result is not
finite. Copying the touched rows out before the kernel and scanning them after it costs a
gather and a scan per table per call (~12% of an embedding step). Instead the kernel does
it while the rows are in cache: as it reaches row ``idx[i]`` it copies the row's old values
(parameter, every state, ``last``) into row ``i`` of this guard's scratch buffers, and after
writing the row it checks the new values; on the first non-finite row it stops. It records
in :attr:`RowGuard.status` how many rows it wrote and where it stopped, itself, before it
returns: an exception (even ``KeyboardInterrupt``) arriving after the kernel and before the
caller looked at the result cannot make the record wrong. ``restore`` then writes the saved
rows back.

The guard is built once per compiled update node (and per parameter for eager steps), and
the per-call work is kept to a few comparisons: the buffers are allocated with spare rows
(the capacity doubles when a larger batch comes) and handed to the kernel whole, not
sliced per call, so a guarded call allocates nothing. They are rebuilt only when the
tables' row shape, dtype, array type or set of present states changes (``set_value`` with
another dtype, a CuPy table). Buffers larger than ``KEEP_BYTES`` (a dense gradient over a
huge table) are dropped after each call instead of being kept alive beside the table.
"""
from __future__ import annotations

import numpy as np

__all__ = ["RowGuard"]

#: scratch kept between calls up to this many bytes per guard (above it: per call)
KEEP_BYTES = 64 << 20

#: the fewest rows a scratch is allocated for (a batch of 1 would otherwise regrow often)
MIN_ROWS = 16

_NO_SAVED_LAST = np.zeros(0, dtype=np.int64)


def _xp(a):
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


class RowGuard:
    """Scratch buffers (capacity rows x width per table) and what one guarded call wrote.

    Protocol: the kernel calls ``buffers(tables, last, idx, pad)`` (2-D views of the tables
    it writes, ``None`` for an absent state) and gets one scratch buffer per table (an
    empty array for an absent one; ``pad`` more empty ones up to that count) plus one for
    ``last``; each holds at least ``len(idx)`` rows (row ``i`` saves table row ``idx[i]``).
    The kernel writes ``status = [rows written, first bad position or -1]``, itself
    (compiled kernels) or through ``finish``. The caller reads ``bad`` and calls
    ``restore()`` to undo the call (a no-op when it wrote nothing) or ``release()``.
    """

    __slots__ = ("status", "_cap", "_views", "_saved_last", "_keep", "_tables", "_last",
                 "_idx", "_dtype", "_row", "_type", "_no_last", "_pad", "_absent")

    def __init__(self):
        #: ``[rows of idx written (saved), position of the first non-finite row or -1]``
        self.status = np.array([0, -1], dtype=np.int64)
        self._cap = -1  # rows every buffer holds (-1: none allocated)
        self._tables = self._last = self._idx = None  # what the armed call writes
        self._forget_layout()
        self._views, self._saved_last = (), _NO_SAVED_LAST
        self._keep = True  # False: the buffers are over KEEP_BYTES, dropped after the call

    @property
    def written(self):
        """Rows ``idx[:written]`` of every table hold values saved in the scratch (0 once
        released or restored)."""
        return int(self.status[0]) if self._idx is not None else 0

    @property
    def bad(self):
        """Position in ``idx`` of the first non-finite row of the call, or -1."""
        return int(self.status[1]) if self._idx is not None else -1

    def buffers(self, tables, last, idx, pad=0):
        """Scratch for ``tables`` (2-D, ``None`` = absent) and ``last`` (or None): a list
        of ``max(len(tables), pad)`` buffers and the one for ``last``, each with at least
        ``len(idx)`` rows. Arms the guard: ``status`` says nothing was written yet."""
        n = idx.shape[0]
        p = tables[0]
        # the buffers fit while the batch is no larger and the tables look the same
        if (n > self._cap or p.dtype != self._dtype or p.shape[1:] != self._row
                or type(p) is not self._type or (last is None) is not self._no_last
                or pad != self._pad or [t is None for t in tables] != self._absent):
            self._grow(tables, last, n, pad)
        status = self.status
        status[0], status[1] = 0, -1  # first: the record never pairs this call with old counts
        self._tables, self._last, self._idx = tables, last, idx
        return self._views, self._saved_last

    def _grow(self, tables, last, n, pad):
        p = tables[0]
        same = (p.dtype == self._dtype and p.shape[1:] == self._row and type(p) is self._type
                and (last is None) is self._no_last and pad == self._pad
                and [t is None for t in tables] == self._absent)
        cap = max(n, MIN_ROWS, 2 * self._cap if same else 0)
        xp = _xp(p)
        row = tuple(p.shape[1:])
        nbytes = cap * p.dtype.itemsize * int(np.prod(row, dtype=np.int64)) * len(tables)
        if nbytes > KEEP_BYTES:
            cap = n  # not kept: no spare rows either
        empty = xp.zeros((0,) + row, dtype=p.dtype)
        views = [empty if t is None else xp.empty((cap,) + row, dtype=p.dtype) for t in tables]
        views += [empty] * (pad - len(views))
        self._views = views
        self._saved_last = (_NO_SAVED_LAST if last is None
                            else np.empty(cap, dtype=np.int64) if xp is np
                            else xp.empty(cap, dtype=np.int64))
        self._cap, self._keep = cap, nbytes <= KEEP_BYTES
        self._dtype, self._row, self._type = p.dtype, p.shape[1:], type(p)
        self._no_last, self._pad = last is None, pad
        self._absent = [t is None for t in tables]

    def finish(self, bad, written=None):
        """For kernels that do not write ``status`` themselves: the kernel stopped at row
        position ``bad`` (-1: every row finite) having modified ``written`` rows (default:
        all rows, or up to and including the bad one)."""
        n = int(self._idx.shape[0]) if self._idx is not None else 0
        bad = int(bad)
        if written is None:
            written = n if bad < 0 else bad + 1
        self.status[0], self.status[1] = int(written), bad
        return bad

    def bad_row(self):
        """The table row of the first non-finite result (valid until ``restore``)."""
        bad = self.bad
        return int(self._idx[bad]) if bad >= 0 and self._idx is not None else -1

    def restore(self):
        """Write the saved rows back (``last`` first, then the tables in reverse order)
        and forget the call."""
        written = self.written
        if written and self._idx is not None:
            rows = self._idx[:written]
            if self._last is not None:
                self._last[rows] = self._saved_last[:written]
            for table, buf in reversed(list(zip(self._tables, self._views))):
                if table is not None:
                    table[rows] = buf[:written]
        self.release()

    def release(self):
        """Drop the references to this call's tables (the scratch stays for reuse unless
        it is over ``KEEP_BYTES``)."""
        self._tables = self._last = self._idx = None  # restore() now has nothing to do
        if not self._keep:
            self._cap, self._views = -1, ()
            self._saved_last, self._keep = _NO_SAVED_LAST, True
            self._forget_layout()

    def _forget_layout(self):
        """What the buffers were made for (row shape, dtype, array type, ``last``, padding,
        absent tables): nothing yet."""
        self._dtype, self._row, self._type = None, None, None
        self._no_last, self._pad, self._absent = None, -1, None
