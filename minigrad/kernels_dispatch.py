"""Pick the array kernels behind the Ops' ``perform`` methods and ``RowSparse``.

``RowSparse.coalesce``, dense scatter-adds and the sparse products use ``kernels.cpu``
(Numba) when it imports and ``MINIGRAD_BACKEND`` is not ``numpy``; otherwise the NumPy
definitions in ``kernels.reference``. A ``backend="numpy"`` function runs its calls under
``reference_only()``, so the reference backend is NumPy end to end whatever is installed.
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import numpy as np

_REFERENCE_ONLY = contextvars.ContextVar("minigrad_reference_kernels", default=False)


@contextlib.contextmanager
def reference_only():
    """Within this block (this thread/context), use ``kernels.reference``."""
    token = _REFERENCE_ONLY.set(True)
    try:
        yield
    finally:
        _REFERENCE_ONLY.reset(token)


def _load():
    if os.environ.get("MINIGRAD_BACKEND", "").lower() != "numpy":
        try:
            import kernels.cpu as impl

            return impl
        except ImportError:
            pass
    return _reference()


def _impl():
    global _IMPL
    if _REFERENCE_ONLY.get():
        return _reference()
    if _IMPL is None:
        _IMPL = _load()
    return _IMPL


def _reference():
    try:
        import kernels.reference as impl

        return impl
    except ImportError:  # a source tree without the kernels package: plain NumPy below
        return False


_IMPL = None


def coalesce_rows(indices, values):
    """Sorted unique indices and the summed rows of each."""
    if len(indices) == 0:
        return np.zeros(0, dtype=np.int64), values.reshape((0,) + values.shape[1:])
    if _impl():
        return _impl().coalesce_rows(indices, values)
    unique, inverse = np.unique(indices, return_inverse=True)
    summed = np.zeros((len(unique),) + values.shape[1:], dtype=values.dtype)
    np.add.at(summed, inverse, values)
    return unique.astype(np.int64), summed


def scatter_add_rows(out, indices, values):
    """``out[indices[i]] += values[i]`` in place, duplicates summed."""
    if not len(indices):
        return
    if _impl():
        _impl().scatter_add_rows(out, indices, values)
    else:
        np.add.at(out, indices, values)


def csr_scale_rows(indptr, data, grad):
    """``out[k] = data[k] * grad[row of stored entry k]`` (the gathered rows' gradient)."""
    impl = _impl()
    data = data.astype(grad.dtype, copy=False)
    if impl:
        return impl.csr_scale_rows(indptr, data, grad)
    row_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return data.reshape((-1,) + (1,) * (grad.ndim - 1)) * grad[row_of]


def csr_row_dots(indptr, data, grad, rows):
    """``out[k] = data[k] * <grad[row of entry k], rows[k]>`` (the scales' gradient)."""
    impl = _impl()
    data = data.astype(grad.dtype, copy=False)
    if impl:
        return impl.csr_row_dots(indptr, data, grad, rows)
    n = len(data)
    row_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return data * np.einsum("kd,kd->k", grad[row_of].reshape(n, -1), rows.reshape(n, -1))


def csr_gathered_dot(indptr, data, rows):
    """``out[i] = sum_{k in row i} data[k] * rows[k]`` (rows already gathered)."""
    n = len(indptr) - 1
    impl = _impl()
    width = rows.size // max(rows.shape[0], 1)
    if impl and impl.__name__ == "kernels.cpu" and width > 1 and len(data):
        # the CSR x dense kernel with the identity as column map: one pass, no temporaries
        dense = rows.astype(np.result_type(data, rows), copy=False)
        return impl.csr_dense_dot(indptr, np.arange(len(data), dtype=np.int64), data, dense)
    counts = np.diff(indptr)
    out = np.zeros((n,) + rows.shape[1:], dtype=np.result_type(data, rows))
    nonempty = counts > 0
    if nonempty.any():
        # CSR rows are contiguous slices, so a segmented sum (reduceat) does the job
        weighted = data.reshape((-1,) + (1,) * (rows.ndim - 1)) * rows
        out[nonempty] = np.add.reduceat(weighted, indptr[:-1][nonempty], axis=0)
    return out
