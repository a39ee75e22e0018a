"""Arrays packed into one ``multiprocessing.shared_memory`` segment (an *arena*).

One segment per arena (all parameters in one, the whole data set in another) keeps the
number of named segments in ``/dev/shm`` small and cleanup a single ``unlink``. The parent
creates an arena from arrays; workers attach to it by a picklable :class:`ArenaSpec` and
get NumPy views over the same pages, so nothing big is ever pickled, with ``fork`` or
``spawn``. SciPy CSR matrices travel as their ``data``/``indices``/``indptr`` arrays.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np
import scipy.sparse as sp

_ALIGN = 64  # cache-line aligned views: rows of different arrays never share a line


@dataclass(frozen=True)
class ArraySpec:
    offset: int
    shape: tuple
    dtype: str


@dataclass(frozen=True)
class ArenaSpec:
    """Everything a worker needs to map an arena: the segment name and array layouts."""

    name: str
    size: int
    arrays: tuple  # of ArraySpec


class Arena:
    """A shared-memory segment and the NumPy views over it (owner: the creating process)."""

    def __init__(self, shm, spec, owner):
        self.shm, self.spec, self.owner = shm, spec, owner
        self.views = [_view(shm.buf, a) for a in spec.arrays]

    @classmethod
    def create(cls, arrays):
        """Copy ``arrays`` into a new segment; the caller must :meth:`destroy` it."""
        arrays = [np.ascontiguousarray(a) for a in arrays]
        layout, offset = [], 0
        for a in arrays:
            layout.append(ArraySpec(offset, tuple(a.shape), a.dtype.str))
            offset += -(-a.nbytes // _ALIGN) * _ALIGN
        shm = shared_memory.SharedMemory(create=True, size=max(offset, 1))
        try:
            arena = cls(shm, ArenaSpec(shm.name, shm.size, tuple(layout)), owner=True)
            for view, a in zip(arena.views, arrays):
                view[...] = a
        except BaseException:
            shm.close()
            shm.unlink()
            raise
        return arena

    @classmethod
    def attach(cls, spec):
        """Map an existing arena (in a worker)."""
        return cls(_open(spec.name), spec, owner=False)

    def close(self):
        """Drop the views and unmap; the owner also unlinks the name from ``/dev/shm``."""
        self.views = []
        try:
            self.shm.close()
        except BufferError:
            _detach(self.shm)
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass

    destroy = close


def _detach(shm):
    """Views are still alive (e.g. held by a traceback): give up our handles so the mapping
    is unmapped when the last view dies, instead of ``SharedMemory.__del__`` failing."""
    shm._buf = shm._mmap = None
    if getattr(shm, "_fd", -1) >= 0:
        os.close(shm._fd)
        shm._fd = -1


def _view(buf, a):
    dtype = np.dtype(a.dtype)
    count = int(np.prod(a.shape, dtype=np.int64))
    return np.frombuffer(buf, dtype=dtype, count=count, offset=a.offset).reshape(a.shape)


def _open(name):
    # Python >= 3.13 can attach without registering with the resource tracker; before
    # that the registration goes to the parent's tracker (shared by fork and spawn
    # children), whose set of names already holds this one, so it is harmless.
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    return shared_memory.SharedMemory(name=name)


# ---------------------------------------------------------------------------------------
# Data sets: a tuple of row-aligned arrays, dense or CSR, flattened to plain arrays


@dataclass(frozen=True)
class ColumnSpec:
    kind: str  # "dense" | "csr_matrix" | "csr_array"
    n_parts: int
    shape: tuple


def flatten_columns(columns):
    """Split ``columns`` into plain arrays plus the specs to rebuild them."""
    arrays, specs = [], []
    for c in columns:
        if sp.issparse(c):
            c = c.tocsr()
            kind = "csr_array" if isinstance(c, sp.sparray) else "csr_matrix"
            arrays.extend([c.data, c.indices, c.indptr])
            specs.append(ColumnSpec(kind, 3, tuple(c.shape)))
        else:
            a = np.asarray(c)
            arrays.append(a)
            specs.append(ColumnSpec("dense", 1, tuple(a.shape)))
    return arrays, tuple(specs)


def rebuild_columns(views, specs):
    """Inverse of :func:`flatten_columns` over (shared-memory) views, without copying."""
    out, i = [], 0
    for s in specs:
        parts = views[i: i + s.n_parts]
        i += s.n_parts
        if s.kind == "dense":
            out.append(parts[0])
        else:
            cls = sp.csr_array if s.kind == "csr_array" else sp.csr_matrix
            out.append(cls(tuple(parts), shape=s.shape, copy=False))
    return tuple(out)
