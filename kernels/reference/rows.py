"""NumPy reference for the row kernels: the definition the fast versions are tested against.

These favour clarity over speed (``np.add.at`` is the slow, obviously-correct scatter).
Arguments are validated by ``kernels._validate`` exactly as in ``kernels.cpu`` and
``kernels.gpu``, so all three raise the same errors; in particular NumPy's own negative
index wrap-around is refused here too.
"""

import numpy as np

from kernels import _validate as V

__all__ = [
    "gather_rows",
    "scatter_add_rows",
    "coalesce_rows",
    "bag_sum",
    "csr_dense_dot",
    "csr_t_dense_dot_rows",
    "segment_sum",
    "csr_scale_rows",
    "csr_row_dots",
    "csr_gathered_dot",
    "rows_finite",
]


def _csr_row_ids(indptr):
    """Row number of every stored entry of a CSR matrix (the COO row array)."""
    n_rows = indptr.shape[0] - 1
    return np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(indptr))


def _scale_rows(weights, rows):
    """``weights[k] * rows[k]`` for rows of any rank."""
    return weights.reshape((-1,) + (1,) * (rows.ndim - 1)) * rows


def gather_rows(table, indices):
    """Return ``table[indices]`` as a new array of shape ``(len(indices),) + table.shape[1:]``."""
    table, indices = V.gather_args(np.asarray(table), np.asarray(indices))
    return np.take(table, indices, axis=0)


def scatter_add_rows(out, indices, values):
    """In place ``out[indices[i]] += values[i]``; duplicate indices are summed."""
    out, indices, values = V.scatter_add_args(out, np.asarray(indices), np.asarray(values))
    np.add.at(out, indices, values)


def coalesce_rows(indices, values):
    """Sum the rows of ``values`` that share an index.

    Returns ``(unique_indices, summed)``: ``unique_indices`` is sorted int64 and
    ``summed[k]`` is the sum of ``values[i]`` over ``indices[i] == unique_indices[k]``.
    """
    indices, values = V.coalesce_args(np.asarray(indices), np.asarray(values))
    unique, inverse = np.unique(indices, return_inverse=True)
    summed = np.zeros((unique.shape[0],) + values.shape[1:], dtype=values.dtype)
    np.add.at(summed, inverse.reshape(-1), values)
    return unique.astype(np.int64), summed


def bag_sum(table, tokens, mask):
    """``out[b] = sum_l mask[b, l] * table[tokens[b, l]]`` for a padded (B, L) token matrix."""
    table, tokens, mask = V.bag_sum_args(np.asarray(table), np.asarray(tokens), np.asarray(mask))
    return np.einsum("bl,bl...->b...", mask, table[tokens]).astype(table.dtype, copy=False)


def csr_dense_dot(indptr, indices, data, dense):
    """``X @ dense`` for the CSR matrix ``X = (data, indices, indptr)``; shape (n_rows, ...)."""
    indptr, indices, data, dense, n_rows = V.csr_dense_dot_args(
        np.asarray(indptr), np.asarray(indices), np.asarray(data), np.asarray(dense)
    )
    out = np.zeros((n_rows,) + dense.shape[1:], dtype=dense.dtype)
    np.add.at(out, _csr_row_ids(indptr), _scale_rows(data, dense[indices]))
    return out


def csr_t_dense_dot_rows(indptr, indices, data, grad):
    """Row-sparse ``X.T @ grad``: only the rows (columns of X) that appear in ``indices``.

    This is the gradient of ``X @ W`` with respect to ``W``. Returns ``(rows, values)`` with
    ``rows = unique(indices)`` (stored zeros included) and ``values[k] = (X.T @ grad)[rows[k]]``.
    """
    indptr, indices, data, grad, _ = V.csr_t_dense_dot_rows_args(
        np.asarray(indptr), np.asarray(indices), np.asarray(data), np.asarray(grad)
    )
    contributions = _scale_rows(data, grad[_csr_row_ids(indptr)])
    return coalesce_rows(indices, contributions)


def csr_scale_rows(indptr, data, grad):
    """``out[k] = data[k] * grad[row of stored entry k]``, shape ``(nnz,) + grad.shape[1:]``.

    The per-entry rows of ``X.T @ grad`` before they are summed: the gradient of the rows
    that ``X @ W`` gathered from ``W`` (``mg.sparse.dot``), row-sparse with duplicates.
    """
    indptr, data, grad = V.csr_scale_rows_args(np.asarray(indptr), np.asarray(data),
                                               np.asarray(grad))
    return _scale_rows(data, grad[_csr_row_ids(indptr)])


def csr_row_dots(indptr, data, grad, rows):
    """``out[k] = data[k] * <grad[row of entry k], rows[k]>``, shape ``(nnz,)``.

    The gradient of a CSR product ``sum_k data[k] * s[k] * rows[k]`` with respect to the
    per-entry scales ``s`` (``mg.sparse.dot(X, W, scale=s)``).
    """
    indptr, data, grad, rows = V.csr_row_dots_args(np.asarray(indptr), np.asarray(data),
                                                   np.asarray(grad), np.asarray(rows))
    n, width = data.shape[0], V.row_width(grad)
    expanded = grad[_csr_row_ids(indptr)].reshape(n, width)
    return data * np.einsum("kd,kd->k", expanded, rows.reshape(n, width))


def csr_gathered_dot(indptr, data, rows):
    """``out[i] = sum over k in row i of data[k] * rows[k]``, shape ``(n_rows,) + rows.shape[1:]``.

    ``X @ W`` once the rows ``W[X.indices]`` have been gathered (one per stored entry): the
    forward pass of ``mg.sparse.dot``. The result has ``rows``' dtype.
    """
    indptr, data, rows, n_rows = V.csr_gathered_dot_args(np.asarray(indptr), np.asarray(data),
                                                         np.asarray(rows))
    out = np.zeros((n_rows,) + rows.shape[1:], dtype=rows.dtype)
    np.add.at(out, _csr_row_ids(indptr), _scale_rows(data, rows))
    return out


def segment_sum(values, segment_ids, n_segments):
    """``out[s] = sum of values[i] with segment_ids[i] == s``; ids need not be sorted."""
    values, segment_ids, n_segments = V.segment_sum_args(
        np.asarray(values), np.asarray(segment_ids), n_segments
    )
    out = np.zeros((n_segments,) + values.shape[1:], dtype=values.dtype)
    np.add.at(out, segment_ids, values)
    return out


def rows_finite(table, indices):
    """Whether every value in the rows ``table[indices]`` is finite (no NaN, no inf)."""
    table, indices = V.gather_args(np.asarray(table), np.asarray(indices))
    return bool(np.isfinite(np.take(table, indices, axis=0)).all())
