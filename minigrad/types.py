"""Types say what a variable holds; they decide representation.

A graph never touches data, so each variable carries a *type* that is checked when the
graph is built (``make_node``) and again when real values are fed (``filter``):

* ``TensorType(dtype, shape)``: a dense ``numpy.ndarray``; ``shape`` holds ``None`` for
  lengths known only at run time (a static ``1`` marks an axis that broadcasts).
* ``CSRType(dtype)``: a ``scipy.sparse`` CSR matrix (the input of ``mg.sparse.dot``).
* ``RowSparseType(dtype, shape)``: the gradient of a table reached only through row
  gathers. Its run-time value is a :class:`RowSparse`: row indices plus the rows, never a
  dense ``V x D`` buffer. Because this is a *type*, every later step (accumulation,
  optimizers, backends) chooses its representation by dispatch on the type, not by a flag.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

FLOAT_KINDS = "f"
INT_KINDS = "iu"


def _kind_name(dtype: np.dtype) -> str:
    return {"f": "float", "i": "integer", "u": "integer", "b": "bool"}.get(dtype.kind, dtype.kind)


def array_module(x):
    """``numpy`` for host arrays, ``cupy`` for device arrays (without importing CuPy)."""
    if hasattr(x, "__cuda_array_interface__"):
        import cupy

        return cupy
    return np


class Type:
    """Base class: a type builds variables and validates run-time values."""

    variable_class = None  # set by minigrad.variables

    def make_variable(self, name=None):
        return self.variable_class(self, name=name)

    def filter(self, value, name="input"):
        """Return ``value`` converted to this type, or raise a clear error."""
        raise NotImplementedError

    def __eq__(self, other):
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self):
        return hash((type(self), self._key()))

    def _key(self):
        return ()


class TensorType(Type):
    """Dense array of a given dtype and rank; lengths may be ``None`` (unknown)."""

    def __init__(self, dtype, shape=()):
        self.dtype = np.dtype(dtype).name
        self.shape = tuple(None if s is None else int(s) for s in shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def broadcastable(self) -> tuple:
        return tuple(s == 1 for s in self.shape)

    def _key(self):
        return (self.dtype, self.shape)

    def filter(self, value, name="input"):
        if sp.issparse(value):
            raise TypeError(
                f"{name}: expected a dense array of rank {self.ndim}, got a sparse matrix"
            )
        arr = np.asarray(value)
        if arr.ndim != self.ndim:
            raise TypeError(
                f"{name}: expected rank {self.ndim} (shape like {self._shape_str()}), "
                f"got rank {arr.ndim} with shape {arr.shape}"
            )
        want = np.dtype(self.dtype)
        if arr.dtype.kind != want.kind and not (
            arr.dtype.kind in INT_KINDS and want.kind in INT_KINDS
        ):
            if not (arr.dtype.kind == "b" and want.kind in INT_KINDS + FLOAT_KINDS):
                raise TypeError(
                    f"{name}: expected {_kind_name(want)} data ({self.dtype}), "
                    f"got {arr.dtype.name}"
                )
        for axis, (want_len, got_len) in enumerate(zip(self.shape, arr.shape)):
            if want_len is not None and want_len != got_len:
                raise ValueError(
                    f"{name}: axis {axis} must have length {want_len}, got shape {arr.shape}"
                )
        if arr.dtype != want:
            arr = arr.astype(want)
        return arr

    def _shape_str(self):
        return "(" + ", ".join("?" if s is None else str(s) for s in self.shape) + (
            ",)" if self.ndim == 1 else ")"
        )

    def __str__(self):
        return f"Tensor[{self.dtype}, {self._shape_str()}]"

    __repr__ = __str__


class CSRType(Type):
    """A 2-D scipy CSR matrix (``csr_array`` or ``csr_matrix``)."""

    ndim = 2

    def __init__(self, dtype, n_cols=None):
        self.dtype = np.dtype(dtype).name
        self.n_cols = n_cols
        self.shape = (None, n_cols)

    def _key(self):
        return (self.dtype, self.n_cols)

    def filter(self, value, name="input"):
        if not sp.issparse(value):
            raise TypeError(
                f"{name}: expected a scipy.sparse CSR matrix, got {type(value).__name__}"
            )
        if value.format != "csr":
            raise TypeError(
                f"{name}: expected CSR format, got {value.format.upper()} "
                "(convert with .tocsr())"
            )
        if value.dtype.kind != "f" and value.dtype.kind not in INT_KINDS + "b":
            raise TypeError(f"{name}: expected numeric data, got {value.dtype}")
        if self.n_cols is not None and value.shape[1] != self.n_cols:
            raise ValueError(f"{name}: expected {self.n_cols} columns, got {value.shape[1]}")
        if value.dtype != np.dtype(self.dtype):
            value = value.astype(self.dtype)
        return value

    def __str__(self):
        return f"CSR[{self.dtype}]"

    __repr__ = __str__


class RowSparseType(Type):
    """Row-sparse gradient of a table of static shape ``shape`` (first axis = rows)."""

    def __init__(self, dtype, shape):
        self.dtype = np.dtype(dtype).name
        self.shape = tuple(shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _key(self):
        return (self.dtype, self.shape)

    def dense_type(self) -> TensorType:
        return TensorType(self.dtype, self.shape)

    def filter(self, value, name="input"):
        if not isinstance(value, RowSparse):
            raise TypeError(f"{name}: expected a mg.RowSparse, got {type(value).__name__}")
        return value

    def __str__(self):
        shape = ", ".join("?" if s is None else str(s) for s in self.shape)
        return f"RowSparse[{self.dtype}, ({shape})]"

    __repr__ = __str__


class RowSparse:
    """Run-time value of a row-sparse gradient: ``dense[indices[i]] += values[i]``.

    ``indices`` is int64 ``(n,)``, ``values`` is ``(n, *shape[1:])`` and ``shape`` is the
    dense shape. Duplicate indices are allowed (they add up); :meth:`coalesce` sorts and
    merges them. Nothing here ever allocates the dense shape except :meth:`to_dense`.
    """

    __slots__ = ("indices", "values", "shape", "_coalesced")
    __array_priority__ = 100  # make ``ndarray + RowSparse`` call our __radd__

    def __init__(self, indices, values, shape, coalesced=False):
        xp = array_module(values)  # NumPy, or CuPy inside the cupy backend
        self.shape = tuple(int(s) for s in shape)
        self.indices = xp.asarray(indices, dtype=np.int64).reshape(-1)
        self.values = xp.asarray(values)
        if self.values.shape != (len(self.indices),) + self.shape[1:]:
            raise ValueError(
                f"RowSparse: values must have shape {(len(self.indices),) + self.shape[1:]}, "
                f"got {self.values.shape}"
            )
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= self.shape[0]):
            bad = self.indices[(self.indices < 0) | (self.indices >= self.shape[0])][0]
            raise IndexError(f"RowSparse: row index {bad} out of range [0, {self.shape[0]})")
        self._coalesced = bool(coalesced)

    @classmethod
    def trusted(cls, indices, values, shape, coalesced=False):
        """A RowSparse from parts the caller has validated: int64 1-D ``indices`` in range,
        ``values`` of shape ``(n, *shape[1:])``. For compiled code after its prologue (the
        checks of ``__init__`` would repeat work already done); users call the constructor.
        """
        rs = cls.__new__(cls)
        rs.indices, rs.values, rs.shape = indices, values, tuple(shape)
        rs._coalesced = bool(coalesced)
        return rs

    dtype = property(lambda self: self.values.dtype)
    ndim = property(lambda self: len(self.shape))

    @property
    def nnz_rows(self) -> int:
        """Number of distinct rows stored."""
        if self._coalesced:
            return len(self.indices)
        return len(np.unique(self.indices))

    def coalesce(self) -> RowSparse:
        """Sorted unique indices with the rows of duplicates summed."""
        if self._coalesced:
            return self
        from minigrad.kernels_dispatch import coalesce_rows

        idx, vals = coalesce_rows(self.indices, self.values)
        return RowSparse(idx, vals, self.shape, coalesced=True)

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=self.values.dtype)
        np.add.at(out, self.indices, self.values)
        return out

    def to_scipy(self):
        """A ``scipy.sparse.csr_array`` with one stored row per unique index (2-D only)."""
        if len(self.shape) != 2:
            raise ValueError(f"to_scipy needs a 2-D table, this one has shape {self.shape}")
        c = self.coalesce()
        n, width = len(c.indices), self.shape[1]
        counts = np.zeros(self.shape[0] + 1, dtype=np.int64)
        counts[c.indices + 1] = width
        indptr = np.cumsum(counts)
        cols = np.tile(np.arange(width, dtype=np.int64), n)
        return sp.csr_array((c.values.reshape(-1), cols, indptr), shape=self.shape)

    def copy(self) -> RowSparse:
        return RowSparse(self.indices.copy(), self.values.copy(), self.shape, self._coalesced)

    def __add__(self, other):
        if isinstance(other, RowSparse):
            if other.shape != self.shape:
                raise ValueError(f"RowSparse shapes differ: {self.shape} vs {other.shape}")
            return RowSparse(
                np.concatenate([self.indices, other.indices]),
                np.concatenate([self.values, other.values.astype(self.values.dtype)]),
                self.shape,
            )
        if isinstance(other, np.ndarray) or np.isscalar(other):
            dtype = np.result_type(other, self.values)
            out = np.array(np.broadcast_to(other, self.shape), dtype=dtype)
            np.add.at(out, self.indices, self.values)
            return out
        return NotImplemented

    __radd__ = __add__

    def __repr__(self):
        return (
            f"RowSparse(shape={self.shape}, rows={len(self.indices)}, dtype={self.values.dtype})"
        )
