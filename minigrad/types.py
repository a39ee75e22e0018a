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

from kernels import _validate as V

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


def _check_kind(got: np.dtype, want: np.dtype, name: str):
    """Refuse data of the wrong kind: floats for an integer input, bools as indices..."""
    if got.kind == want.kind or (got.kind in INT_KINDS and want.kind in INT_KINDS):
        return
    if got.kind == "b" and want.kind in FLOAT_KINDS:
        return  # a 0/1 mask fed to a float input is exact
    if got.kind == "b":
        raise TypeError(
            f"{name}: expected integer data ({want.name}), got a bool array; a mask is not "
            "an index (use np.flatnonzero(mask) for the positions, or .astype(int))"
        )
    raise TypeError(f"{name}: expected {_kind_name(want)} data ({want.name}), got {got.name}")


def cast_checked(arr, want, name="input", allow_downcast=False):
    """``arr.astype(want)`` unless the cast would change a value (then ``ValueError``).

    Integers: every value must lie in ``want``'s range (checked on the original values, so
    the message shows the value the caller passed, never its wrapped image). Floats to a
    narrower float: no finite value may overflow to inf and no non-zero value may fall
    below the smallest normal number (1e-50 would silently become 0.0); rounding to the
    narrower precision is the accepted meaning of a float32 input. ``allow_downcast=True``
    accepts float overflow and underflow too.
    """
    want = np.dtype(want)
    got = arr.dtype
    if np.can_cast(got, want, "safe") or arr.size == 0:
        return arr.astype(want)
    if want.kind in INT_KINDS:
        info = np.iinfo(want)
        lo, hi = arr.min(), arr.max()
        if int(lo) < info.min or int(hi) > info.max:
            bad = lo if int(lo) < info.min else hi
            raise ValueError(
                f"{name}: value {int(bad)} does not fit the input's dtype {want.name} "
                f"(range [{info.min}, {info.max}]); declare the input with a wider dtype "
                "(mg.lvector, mg.lmatrix...) if such values are meant"
            )
        return arr.astype(want)
    if want.kind in FLOAT_KINDS and got.kind in FLOAT_KINDS and not allow_downcast:
        info = np.finfo(want)
        mag = np.abs(arr)
        finite = np.isfinite(arr)
        over = finite & (mag > info.max)
        under = (mag < info.tiny) & (arr != 0)
        bad = over | under
        if bad.any():
            value = float(arr[bad].flat[0])
            what = "overflows" if abs(value) > 1 else "underflows"
            raise ValueError(
                f"{name}: value {value!r} {what} the input's dtype {want.name}; the cast "
                f"from {got.name} would change it (pass allow_input_downcast=True to "
                "mg.function to accept lossy casts, or give the input dtype "
                f"{got.name})"
            )
    with np.errstate(over="ignore", under="ignore"):  # accepted above: no raw warning
        return arr.astype(want)


def check_csr_structure(m, name="input"):
    """Raise ``ValueError`` unless ``m``'s ``indptr``/``indices``/``data`` form a CSR matrix.

    SciPy does not check arrays handed to its constructor (``check_format`` is opt-in), so
    a malformed matrix reaches us: ``indptr`` of length ``n_rows + 1`` starting at 0,
    non-decreasing and ending at ``nnz``; column indices in ``[0, n_cols)``.
    """
    n_rows, n_cols = m.shape
    indptr, indices, data = np.asarray(m.indptr), np.asarray(m.indices), np.asarray(m.data)
    if indptr.ndim != 1 or indptr.shape[0] != n_rows + 1:
        raise ValueError(f"{name}: CSR indptr must have n_rows + 1 = {n_rows + 1} entries, "
                         f"got shape {indptr.shape}")
    if indptr.dtype.kind not in INT_KINDS or indices.dtype.kind not in INT_KINDS:
        raise ValueError(f"{name}: CSR indptr/indices must be integers")
    if indices.ndim != 1 or data.ndim != 1 or indices.shape != data.shape:
        raise ValueError(f"{name}: CSR indices and data must be 1-D of equal length, got "
                         f"{indices.shape} and {data.shape}")
    nnz = indices.shape[0]
    if int(indptr[0]) != 0 or int(indptr[-1]) != nnz:
        raise ValueError(f"{name}: CSR indptr must start at 0 and end at nnz={nnz}, got "
                         f"{int(indptr[0])} .. {int(indptr[-1])}")
    if n_rows > 1 and bool((indptr[1:] < indptr[:-1]).any()):
        row = int(np.flatnonzero(indptr[1:] < indptr[:-1])[0])
        raise ValueError(f"{name}: CSR indptr decreases at row {row} (malformed matrix)")
    V.check_index_range(name, indices, n_cols, message=lambda bad, n: (
        f"{name}: CSR column index {bad} is out of range [0, {n})"))


def _csr_status(m):
    """``kernels.cpu.csr_status`` of ``m`` (one compiled pass), or ``None`` without Numba."""
    global _CSR_STATUS
    if _CSR_STATUS is None:
        try:
            from kernels.cpu.rows import csr_status
        except ImportError:
            csr_status = False
        _CSR_STATUS = csr_status
    if _CSR_STATUS is False or m.indptr.shape[0] != m.shape[0] + 1:
        return None
    if m.indices.shape != m.data.shape or m.data.ndim != 1:
        return None
    return _CSR_STATUS(m.indptr, m.indices, m.shape[1])


_CSR_STATUS = None


def _is_canonical(m):
    """Sorted columns and no duplicates in every row, computed (never SciPy's cached flag,
    which a caller may have set wrongly)."""
    indptr, indices = m.indptr, m.indices
    if indices.shape[0] < 2:
        return True
    step = np.diff(indices.astype(np.int64))
    row_start = np.zeros(indices.shape[0], dtype=bool)
    row_start[indptr[1:-1][indptr[1:-1] < indices.shape[0]]] = True
    return bool(((step > 0) | row_start[1:]).all())


class Type:
    """Base class: a type builds variables and validates run-time values."""

    variable_class = None  # set by minigrad.variables

    def make_variable(self, name=None):
        return self.variable_class(self, name=name)

    def filter(self, value, name="input", allow_downcast=False):
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

    def filter(self, value, name="input", allow_downcast=False):
        """``value`` as an array of this type, or a clear error naming ``name``.

        Casting follows Theano's ``allow_input_downcast``: a cast that keeps every value is
        done silently (int32 -> int64, float32 -> float64, int64 indices that fit int32,
        float64 data whose values float32 can hold up to rounding); a lossy one is refused
        with the offending value unless ``allow_downcast`` (float precision only: integer
        values that do not fit are always refused, since a wrapped index reads the wrong
        row). Bool arrays are never taken as integers: they are masks, not indices.
        """
        if sp.issparse(value):
            raise TypeError(
                f"{name}: expected a dense array of rank {self.ndim}, got a sparse matrix"
            )
        if isinstance(value, RowSparse):
            raise TypeError(f"{name}: expected a dense array, got a mg.RowSparse "
                            "(densify it with .to_dense())")
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name}: cannot be read as an array ({err})") from None
        if arr.ndim != self.ndim:
            raise TypeError(
                f"{name}: expected rank {self.ndim} (shape like {self._shape_str()}), "
                f"got rank {arr.ndim} with shape {arr.shape}"
            )
        want = np.dtype(self.dtype)
        _check_kind(arr.dtype, want, name)
        for axis, (want_len, got_len) in enumerate(zip(self.shape, arr.shape)):
            if want_len is not None and want_len != got_len:
                raise ValueError(
                    f"{name}: axis {axis} must have length {want_len}, got shape {arr.shape}"
                )
        if arr.dtype != want:
            arr = cast_checked(arr, want, name, allow_downcast)
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

    def filter(self, value, name="input", allow_downcast=False):
        """A valid, canonical CSR matrix of this dtype, or a clear error naming ``name``.

        The structure is checked here, once, for every backend (a decreasing ``indptr``
        or an out-of-range column would make the NumPy path return garbage and a compiled
        kernel read out of bounds). Duplicate entries are summed and columns sorted
        (SciPy's canonical form, on a copy) so that every op, linear or not
        (``mg.sparse.square``), sees the matrix the caller means: ``X`` and
        ``X.sum_duplicates()`` give the same results.
        """
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
        if value.ndim != 2:
            raise TypeError(f"{name}: expected a 2-D CSR matrix, got shape {value.shape}")
        if self.n_cols is not None and value.shape[1] != self.n_cols:
            raise ValueError(f"{name}: expected {self.n_cols} columns, got {value.shape[1]}")
        status = _csr_status(value)
        if status is None or status < 0:
            check_csr_structure(value, name)  # the NumPy checks: they name the problem
            if status is not None:
                raise ValueError(f"{name}: malformed CSR matrix")  # (never reached)
        canonical = _is_canonical(value) if status is None else status == 0
        if not canonical:
            value = value.copy()
            value.sum_duplicates()  # also sorts the column indices of each row
        if value.dtype != np.dtype(self.dtype):
            data = cast_checked(value.data, self.dtype, f"{name} (stored values)",
                                allow_downcast)
            value = type(value)((data, value.indices, value.indptr), shape=value.shape)
            value.has_canonical_format = True
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

    def filter(self, value, name="input", allow_downcast=False):
        if not isinstance(value, RowSparse):
            raise TypeError(f"{name}: expected a mg.RowSparse, got {type(value).__name__}")
        return value

    def __str__(self):
        shape = ", ".join("?" if s is None else str(s) for s in self.shape)
        return f"RowSparse[{self.dtype}, ({shape})]"

    __repr__ = __str__


def _row_message(bad, n):
    return f"RowSparse: row index {bad} out of range [0, {n})"


class RowSparse:
    """Run-time value of a row-sparse gradient: ``dense[indices[i]] += values[i]``.

    ``indices`` is int64 ``(n,)``, ``values`` is ``(n, *shape[1:])`` and ``shape`` is the
    dense shape. Duplicate indices are allowed (they add up); :meth:`coalesce` sorts and
    merges them. Nothing here ever allocates the dense shape except :meth:`to_dense`.
    """

    __slots__ = ("indices", "values", "shape", "_coalesced", "_checked")
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
        V.check_index_range("RowSparse", self.indices, self.shape[0] if self.shape else 0,
                            message=_row_message)
        self._coalesced = bool(coalesced)
        self._checked = False

    @classmethod
    def trusted(cls, indices, values, shape, coalesced=False):
        """A RowSparse from parts the caller has validated: int64 1-D ``indices`` in range,
        ``values`` of shape ``(n, *shape[1:])``. For compiled code after its prologue (the
        checks of ``__init__`` would repeat work already done); users call the constructor.
        The value carries the mark (:attr:`checked`, see ``minigrad/prologue.py``).
        """
        rs = cls.__new__(cls)
        rs.indices, rs.values, rs.shape = indices, values, tuple(shape)
        rs._coalesced = bool(coalesced)
        rs._checked = True
        return rs

    @property
    def checked(self) -> bool:
        """Whether compiled code vouches for the indices (made by :meth:`trusted`): with
        :attr:`coalesced`, the one case a kernel may skip its index scan."""
        return self._checked

    coalesced = property(lambda self: self._coalesced)

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

    def __mul__(self, other):
        """``RowSparse * scalar`` scales the stored rows (still row-sparse)."""
        if isinstance(other, bool) or not isinstance(other, (int, float, np.number)):
            return NotImplemented
        values = (self.values * other).astype(self.values.dtype, copy=False)
        return RowSparse(self.indices, values, self.shape, self._coalesced)

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1

    def __truediv__(self, other):
        if np.ndim(other) != 0:
            return NotImplemented
        return self * (1.0 / other)

    def __array__(self, dtype=None, copy=None):
        # Without this NumPy wraps the object in a 0-d object array, silently.
        raise TypeError(
            f"a mg.RowSparse (shape {self.shape}) is not a dense array; call .to_dense() "
            "for an ndarray or .to_scipy() for a scipy.sparse matrix"
        )

    def __repr__(self):
        return (
            f"RowSparse(shape={self.shape}, rows={len(self.indices)}, dtype={self.values.dtype})"
        )
