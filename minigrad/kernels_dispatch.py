"""Which array kernels a computation uses, decided in one visible place.

* ``Op.perform`` is the NumPy reference, so the helpers below use ``kernels.reference``
  unless a caller passes another kernel module (``kernels=``). There is no global switch,
  environment read or context variable: a ``backend="numpy"`` function runs NumPy end to
  end because it only ever calls ``perform``.
* A backend's implementation table (``minigrad/backends/numba.py``, ``cupy.py``) calls its
  own kernels (``kernels.cpu``, ``kernels.gpu``) directly.
* Code outside a compiled function that wants "the fast kernels of the configured backend"
  (an optimizer's flush, ``opt.apply``) asks :func:`kernels_for`, whose default is
  ``mg.config.backend`` (itself read once from ``MINIGRAD_BACKEND`` in ``config.py``).
"""
from __future__ import annotations

import importlib

import numpy as np

_MODULES = {"numpy": "kernels.reference", "numba": "kernels.cpu", "cupy": "kernels.gpu"}


def kernels_for(backend=None):
    """The kernel module of ``backend`` (``None``: ``mg.config.backend``)."""
    if backend is None:
        from minigrad.config import config

        backend = config.backend
    if backend not in _MODULES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(_MODULES)}")
    return importlib.import_module(_MODULES[backend])


def reference():
    """``kernels.reference``: the NumPy definition of every kernel."""
    import kernels.reference as ref

    return ref


def coalesce_rows(indices, values, kernels=None):
    """Sorted unique indices and the summed rows of each."""
    if len(indices) == 0:
        return np.zeros(0, dtype=np.int64), values.reshape((0,) + values.shape[1:])
    return (kernels or reference()).coalesce_rows(indices, values)


def scatter_add_rows(out, indices, values, kernels=None):
    """``out[indices[i]] += values[i]`` in place, duplicates summed."""
    if len(indices):
        (kernels or reference()).scatter_add_rows(out, indices, values)


def csr_scale_rows(indptr, data, grad, kernels=None):
    """``out[k] = data[k] * grad[row of stored entry k]`` (the gathered rows' gradient)."""
    data = data.astype(grad.dtype, copy=False)
    return (kernels or reference()).csr_scale_rows(indptr, data, grad)


def csr_row_dots(indptr, data, grad, rows, kernels=None):
    """``out[k] = data[k] * <grad[row of entry k], rows[k]>`` (the scales' gradient)."""
    data = data.astype(grad.dtype, copy=False)
    return (kernels or reference()).csr_row_dots(indptr, data, grad, rows)


def csr_gathered_dot(indptr, data, rows, kernels=None):
    """``out[i] = sum_{k in row i} data[k] * rows[k]`` (rows already gathered), in the
    result dtype of ``data`` and ``rows``."""
    dtype = np.result_type(data, rows)
    rows = rows.astype(dtype, copy=False)
    return (kernels or reference()).csr_gathered_dot(indptr, data, rows)
