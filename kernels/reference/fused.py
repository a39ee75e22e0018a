"""NumPy reference for the fused sparse-path kernels: the definition the Numba and CuPy
versions are tested against.

The sparse path of a bag-of-words or factorization-machine step is three passes over the
stored entries ``k`` of a CSR batch ``X`` (row ``r_k``, column ``c_k``, value ``x_k``):

* forward, **gather-scale-sum**: ``out[r] = sum_k x_k * T[c_k] * F[c_k]`` (``F`` an optional
  factor table of width 1 or ``T``'s width; ``F = T`` gives ``X @ T**2``), without ever
  materialising the ``nnz x D`` gathered rows;
* backward, **scatter into unique rows**: the row-sparse gradient of ``T`` with one row per
  distinct column, ``g[c] = sum_{k: c_k = c} x_k * G[r_k] * F[c_k]`` (or, when the gradient
  is one number per row, ``x_k * <G[r_k], F[c_k]>``), indices sorted and unique: a coalesced
  ``RowSparse`` that the optimizer need not sort again;
* **slot coalesce**: the same de-duplication for rows that were materialised anyway.

Validation is shared with the fast versions (:func:`fused_csr_args`), so all raise alike.
"""

import numpy as np

from kernels import _validate as V

__all__ = ["csr_gather_mul_sum", "csr_scatter_grad_rows", "slot_coalesce_rows", "new_slot_map"]


def new_slot_map(n_table_rows):
    """A fresh slot map for a table of ``n_table_rows`` rows (all -1): the scratch the fast
    backward kernels de-duplicate through (the reference needs none but accepts it)."""
    return np.full(int(n_table_rows), -1, dtype=np.int32)


def _table(name, a):
    a = V.float_array(name, np.asarray(a))
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, width), got shape {a.shape}")
    return a


def fused_csr_args(indptr, indices, data, table, factor, n_table_rows=None):
    """Check a CSR batch against a table (and a factor table); return the checked arrays.

    ``n_table_rows`` (backward kernels) replaces ``table.shape[0]`` when ``table`` is the
    incoming gradient rather than the table itself.
    """
    indptr, indices, _ = V.check_csr(indptr, indices, data)
    V.float_array("data", data)
    n_rows = int(n_table_rows) if n_table_rows is not None else table.shape[0]
    V.check_index_range("indices", indices, n_rows)
    if factor is not None:
        factor = _table("factor", factor)
        if factor.shape[0] != n_rows:
            raise ValueError(
                f"factor has {factor.shape[0]} rows, the table has {n_rows}; they must match"
            )
    return indptr, indices, factor


def _row_sums(indptr, rows):
    """``out[r] = sum of rows[indptr[r]:indptr[r + 1]]`` (CSR order: contiguous segments)."""
    out = np.zeros((indptr.shape[0] - 1,) + rows.shape[1:], dtype=rows.dtype)
    filled = np.diff(indptr) > 0
    if rows.shape[0]:
        out[filled] = np.add.reduceat(rows, indptr[:-1][filled], axis=0)
    return out


def _sum_by_index(indices, values):
    """``(sorted unique indices, summed rows)``: a stable sort, then one sum per run."""
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if ordered.size else \
        np.zeros(0, dtype=np.int64)
    summed = (np.add.reduceat(values[order], starts, axis=0) if ordered.size
              else np.zeros((0,) + values.shape[1:], dtype=values.dtype))
    return ordered[starts].astype(np.int64), summed.astype(values.dtype, copy=False)


def _row_ids(indptr):
    return np.repeat(np.arange(indptr.shape[0] - 1, dtype=np.int64), np.diff(indptr))


def csr_gather_mul_sum(indptr, indices, data, table, factor=None):
    """``out[r] = sum over stored (r, c) of data * table[c] * factor[c]`` (table's dtype).

    ``factor``: ``None`` (plain ``X @ table``), or a table of the same row count and width
    1 (one weight per row, broadcast) or ``table``'s width (element-wise weights).
    """
    table = _table("table", table)
    indptr, indices, factor = fused_csr_args(indptr, indices, data, table, factor)
    if factor is not None and factor.shape[1] not in (1, table.shape[1]):
        raise ValueError(f"factor width {factor.shape[1]} must be 1 or {table.shape[1]}")
    rows = table[indices]
    if factor is not None:
        rows = rows * factor[indices]
    rows = (rows * np.asarray(data, dtype=table.dtype)[:, None]).astype(table.dtype, copy=False)
    return _row_sums(indptr, rows)


def scatter_rows_values(indptr, indices, data, grad, factor, out_width):
    """The per-entry gradient rows ``x_k * G[r_k] * F[c_k]`` (or their dot), ``(nnz, w)``."""
    dtype = grad.dtype
    g = grad[_row_ids(indptr)]
    x = np.asarray(data, dtype=dtype)[:, None]
    if out_width == grad.shape[1]:
        if factor is not None:
            g = g * factor[indices].astype(dtype, copy=False)
        return (x * g).astype(dtype, copy=False)
    # one value per row: x_k * <G[r_k], F[c_k]>
    dots = np.einsum("kd,kd->k", g, factor[indices].astype(dtype, copy=False))
    return (x[:, 0] * dots).astype(dtype, copy=False)[:, None]


def check_scatter_shapes(grad, factor, out_width):
    """The three shapes a scatter-grad call accepts (see :func:`csr_scatter_grad_rows`)."""
    width = grad.shape[1]
    if out_width == width:
        if factor is not None and factor.shape[1] not in (1, width):
            raise ValueError(f"factor width {factor.shape[1]} must be 1 or {width}")
        return
    if out_width == 1 and factor is not None and factor.shape[1] == width:
        return
    raise ValueError(
        f"cannot produce gradient rows of width {out_width} from grad of width {width} and "
        f"factor of width {None if factor is None else factor.shape[1]}"
    )


def csr_scatter_grad_rows(indptr, indices, data, grad, n_table_rows, factor=None,
                          out_width=None, slot=None):
    """Row-sparse gradient of ``T`` through ``X @ (T * F)``: ``(unique_cols, rows)``.

    ``grad`` is the gradient of the product, ``(n_rows, D)``. With ``out_width == D``
    (default) ``rows[c] = sum x_k * grad[r_k] * F[c_k]``; with ``out_width == 1`` and ``F``
    of width ``D`` (the gradient of a one-weight-per-row table) ``rows[c] = sum x_k *
    <grad[r_k], F[c_k]>``. ``unique_cols`` is sorted, unique, int64. ``slot`` (the fast
    versions' V-long scratch) is accepted and ignored here.
    """
    grad = _table("grad", grad)
    out_width = grad.shape[1] if out_width is None else int(out_width)
    indptr, indices, factor = fused_csr_args(indptr, indices, data, grad, factor, n_table_rows)
    V.check_same_length("indptr[1:]", indptr[1:], "grad", grad)
    check_scatter_shapes(grad, factor, out_width)
    values = scatter_rows_values(indptr, indices, data, grad, factor, out_width)
    return _sum_by_index(indices, values)


def slot_coalesce_rows(indices, values, n_table_rows, slot=None):
    """Sum the rows of ``values`` sharing an index: ``(sorted unique int64, summed)``.

    Same result as ``coalesce_rows``; the fast versions de-duplicate through a V-long slot
    map (``slot``, ignored here) instead of sorting all ``n`` indices.
    """
    indices = V.index_array("indices", np.asarray(indices))
    values = np.asarray(values)
    V.float_array("values", values)
    V.check_same_length("indices", indices, "values", values)
    V.check_index_range("indices", indices, int(n_table_rows))
    return _sum_by_index(indices, values)
