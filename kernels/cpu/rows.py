"""Numba CPU row kernels; same names, signatures and errors as ``kernels.reference``.

Every public function validates its arguments with ``kernels._validate`` (Numba does no
bounds checking), flattens trailing dimensions so the compiled loops only see C-contiguous
2-D ``(rows, width)`` arrays, and widens indices to int64. The widening costs one copy of
the (small) index array but halves the number of JIT specialisations to compile and cache.

Parallelism (``prange``) is used only where iterations write disjoint output rows or
columns, so no loop below has a race.
"""

import numpy as np
from numba import njit, prange

from kernels import _validate as V

__all__ = [
    "gather_rows",
    "scatter_add_rows",
    "coalesce_rows",
    "bag_sum",
    "csr_dense_dot",
    "csr_t_dense_dot_rows",
    "segment_sum",
]

# Below this many scalars a parallel launch costs more than it saves.
_PARALLEL_MIN_WORK = 1 << 16
# scatter_add: columns per parallel block; each thread owns whole blocks, so no races.
_COL_BLOCK = 32


# --- array plumbing -----------------------------------------------------------------------


def _as_2d(a):
    """C-contiguous ``(rows, width)`` view (or copy) of ``a``."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], V.row_width(a))


def _as_i64(indices):
    """Indices as a contiguous int64 array (no copy when already so)."""
    return np.ascontiguousarray(indices, dtype=np.int64)


def _sorted_runs(keys):
    """Group equal keys: ``(order, starts, unique)``.

    ``keys[order]`` is sorted (stable, so each group keeps the input order and sums match
    ``np.add.at`` bit for bit in the serial case); group ``u`` is
    ``order[starts[u]:starts[u + 1]]`` and has key ``unique[u]``.
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    is_start = np.empty(sorted_keys.shape[0], dtype=np.bool_)
    is_start[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    unique = sorted_keys[starts].astype(np.int64)
    starts = np.append(starts, sorted_keys.shape[0]).astype(np.int64)
    return order.astype(np.int64, copy=False), starts, unique


# --- compiled loops -----------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _gather(table, indices, out):
    for i in range(indices.shape[0]):
        out[i, :] = table[indices[i], :]


@njit(cache=True, nogil=True)
def _scatter_add(out, indices, values):
    width = out.shape[1]
    for i in range(indices.shape[0]):
        dst = out[indices[i]]
        src = values[i]
        for j in range(width):
            dst[j] += src[j]


@njit(cache=True, nogil=True, parallel=True)
def _scatter_add_col_blocks(out, indices, values, block):
    """Each thread owns a block of columns for all updates: disjoint writes, no atomics."""
    width = out.shape[1]
    n_blocks = (width + block - 1) // block
    for b in prange(n_blocks):
        lo = b * block
        hi = min(lo + block, width)
        for i in range(indices.shape[0]):
            dst = out[indices[i]]
            src = values[i]
            for j in range(lo, hi):
                dst[j] += src[j]


@njit(cache=True, nogil=True, parallel=True)
def _sum_runs(values, order, starts, out):
    """``out[u] = sum(values[order[k]] for k in run u)``; runs are disjoint output rows."""
    width = values.shape[1]
    for u in prange(starts.shape[0] - 1):
        dst = out[u]
        for k in range(starts[u], starts[u + 1]):
            src = values[order[k]]
            for j in range(width):
                dst[j] += src[j]


@njit(cache=True, nogil=True, parallel=True)
def _weighted_sum_runs(src, src_rows, weights, order, starts, out):
    """``out[u] = sum(weights[p] * src[src_rows[p]] for p in run u)``."""
    width = src.shape[1]
    for u in prange(starts.shape[0] - 1):
        dst = out[u]
        for k in range(starts[u], starts[u + 1]):
            p = order[k]
            w = weights[p]
            row = src[src_rows[p]]
            for j in range(width):
                dst[j] += w * row[j]


@njit(cache=True, nogil=True, parallel=True)
def _bag_sum(table, tokens, mask, out):
    width = table.shape[1]
    for b in prange(tokens.shape[0]):
        dst = out[b]
        for t in range(tokens.shape[1]):
            m = mask[b, t]
            if m != 0:
                row = table[tokens[b, t]]
                for j in range(width):
                    dst[j] += m * row[j]


@njit(cache=True, nogil=True, parallel=True)
def _csr_dense_dot(indptr, indices, data, dense, out):
    width = dense.shape[1]
    for r in prange(indptr.shape[0] - 1):
        dst = out[r]
        for k in range(indptr[r], indptr[r + 1]):
            w = data[k]
            row = dense[indices[k]]
            for j in range(width):
                dst[j] += w * row[j]


# --- public API -----------------------------------------------------------------------------


def gather_rows(table, indices):
    """Return ``table[indices]`` as a new array of shape ``(len(indices),) + table.shape[1:]``."""
    table, indices = V.gather_args(np.asarray(table), np.asarray(indices))
    out = np.empty((indices.shape[0],) + table.shape[1:], dtype=table.dtype)
    _gather(_as_2d(table), _as_i64(indices), out.reshape(out.shape[0], V.row_width(out)))
    return out


def _scatter_add_2d(out2d, indices, values2d):
    """Pick the serial loop or the column-block parallel loop by problem size."""
    width = out2d.shape[1]
    if width >= 2 * _COL_BLOCK and indices.shape[0] * width >= _PARALLEL_MIN_WORK:
        _scatter_add_col_blocks(out2d, indices, values2d, _COL_BLOCK)
    else:
        _scatter_add(out2d, indices, values2d)


def scatter_add_rows(out, indices, values):
    """In place ``out[indices[i]] += values[i]``; duplicate indices are summed.

    ``values`` is cast to ``out.dtype``. A non-contiguous ``out`` is updated through a
    contiguous copy that is written back, so the result is always in ``out`` itself.
    """
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    out, indices, values = V.scatter_add_args(out, np.asarray(indices), np.asarray(values))
    if indices.shape[0] == 0:
        return
    work = out if out.flags.c_contiguous else np.ascontiguousarray(out)
    _scatter_add_2d(_as_2d(work), _as_i64(indices), _as_2d(values))
    if work is not out:
        out[...] = work


def coalesce_rows(indices, values):
    """Sum the rows of ``values`` that share an index: ``(unique_indices int64, summed)``."""
    indices, values = V.coalesce_args(np.asarray(indices), np.asarray(values))
    order, starts, unique = _sorted_runs(_as_i64(indices))
    summed = np.zeros((unique.shape[0],) + values.shape[1:], dtype=values.dtype)
    if unique.shape[0]:
        _sum_runs(_as_2d(values), order, starts, summed.reshape(unique.shape[0], -1))
    return unique, summed


def bag_sum(table, tokens, mask):
    """``out[b] = sum_l mask[b, l] * table[tokens[b, l]]``; masked-out tokens are skipped."""
    table, tokens, mask = V.bag_sum_args(np.asarray(table), np.asarray(tokens), np.asarray(mask))
    out = np.zeros((tokens.shape[0],) + table.shape[1:], dtype=table.dtype)
    if out.size:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        mask = np.ascontiguousarray(mask)
        _bag_sum(_as_2d(table), tokens, mask, out.reshape(out.shape[0], -1))
    return out


def csr_dense_dot(indptr, indices, data, dense):
    """``X @ dense`` for the CSR matrix ``X = (data, indices, indptr)``; shape (n_rows, ...)."""
    indptr, indices, data, dense, n_rows = V.csr_dense_dot_args(
        np.asarray(indptr), np.asarray(indices), np.asarray(data), np.asarray(dense)
    )
    out = np.zeros((n_rows,) + dense.shape[1:], dtype=dense.dtype)
    if out.size:
        _csr_dense_dot(
            _as_i64(indptr),
            _as_i64(indices),
            np.ascontiguousarray(data),
            _as_2d(dense),
            out.reshape(n_rows, -1),
        )
    return out


def csr_t_dense_dot_rows(indptr, indices, data, grad):
    """Row-sparse ``X.T @ grad``: ``(rows = unique(indices), values)``; see the reference."""
    indptr, indices, data, grad, n_rows = V.csr_t_dense_dot_rows_args(
        np.asarray(indptr), np.asarray(indices), np.asarray(data), np.asarray(grad)
    )
    indptr = _as_i64(indptr)
    row_ids = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(indptr))
    order, starts, unique = _sorted_runs(_as_i64(indices))
    values = np.zeros((unique.shape[0],) + grad.shape[1:], dtype=grad.dtype)
    if values.size:
        _weighted_sum_runs(
            _as_2d(grad),
            row_ids,
            np.ascontiguousarray(data),
            order,
            starts,
            values.reshape(unique.shape[0], -1),
        )
    return unique, values


def segment_sum(values, segment_ids, n_segments):
    """``out[s] = sum of values[i] with segment_ids[i] == s``; ids need not be sorted."""
    values, segment_ids, n_segments = V.segment_sum_args(
        np.asarray(values), np.asarray(segment_ids), n_segments
    )
    out = np.zeros((n_segments,) + values.shape[1:], dtype=values.dtype)
    if segment_ids.shape[0] and out.size:
        _scatter_add_2d(_as_2d(out), _as_i64(segment_ids), _as_2d(values))
    return out
