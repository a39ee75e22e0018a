"""CuPy row kernels; same names, signatures and errors as ``kernels.reference``.

Arguments are cupy arrays (NumPy arrays are copied to the device) and results are cupy
arrays. Arguments are validated by ``kernels._validate`` before any launch: CUDA kernels do
no bounds checking. Each kernel is a CuPy ``ElementwiseKernel`` over the flat output (or
update) elements, so CuPy specialises it per dtype (``T`` values, ``I``/``J`` indices).

Scatters use ``atomicAdd`` (float32 and float64 both exist on sm_60+): one thread per
scalar, consecutive threads hit consecutive columns of a row, so the atomics coalesce and
contention only occurs for duplicate indices. Reductions whose output rows are known
(``bag_sum``, ``csr_dense_dot``) loop instead and are deterministic.
"""

from functools import lru_cache

import numpy as np

from kernels import _validate as V
from kernels.gpu._cupy import require_cupy

cp = require_cupy()

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
]

_gather = cp.ElementwiseKernel(
    "raw T table, raw I idx, int64 width",
    "T out",
    "out = table[idx[i / width] * width + i % width];",
    "minigrad_gather_rows",
)

# The scatter-add is the hot path, so it gets a hand-written 2-D launch: threadIdx.x walks
# the columns of a row (coalesced atomics), threadIdx.y/blockIdx.x the updates. Unlike the
# flat element-wise form, no thread divides a 64-bit index by the width.
_SCATTER_SOURCE = r"""
template <typename T, typename I>
__global__ void scatter_add_rows(const T* __restrict__ values, const I* __restrict__ idx,
                                 T* __restrict__ out, long long n, long long width) {
    const long long stride = (long long)gridDim.x * blockDim.y;
    for (long long k = (long long)blockIdx.x * blockDim.y + threadIdx.y; k < n; k += stride) {
        T* dst = out + (long long)idx[k] * width;
        const T* src = values + k * width;
        for (long long j = threadIdx.x; j < width; j += blockDim.x) atomicAdd(dst + j, src[j]);
    }
}
"""
_CTYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long",
}
_SCATTER_BLOCK = (32, 8)  # 32 columns x 8 updates per block
_MAX_GRID = 1 << 16


@lru_cache(maxsize=None)
def _scatter_function(value_dtype, index_dtype):
    """The compiled ``scatter_add_rows<T, I>`` (compiled once per dtype pair, then cached)."""
    name = f"scatter_add_rows<{_CTYPES[value_dtype]}, {_CTYPES[index_dtype]}>"
    module = cp.RawModule(code=_SCATTER_SOURCE, options=("--std=c++14",), name_expressions=[name])
    return module.get_function(name)


_weighted_scatter_add = cp.ElementwiseKernel(
    "raw T src, raw I src_rows, raw T weights, raw J dst_rows, int64 width",
    "raw T out",
    """
    const ptrdiff_t k = i / width, j = i % width;
    atomicAdd(&out[dst_rows[k] * width + j], weights[k] * src[src_rows[k] * width + j]);
    """,
    "minigrad_weighted_scatter_add_rows",
)

_bag_sum = cp.ElementwiseKernel(
    "raw T table, raw I tokens, raw T mask, int64 width, int64 length",
    "T out",
    """
    const ptrdiff_t b = i / width, j = i % width;
    T acc = 0;
    for (ptrdiff_t t = b * length; t < (b + 1) * length; ++t) {
        const T m = mask[t];
        if (m != (T)0) acc += m * table[tokens[t] * width + j];
    }
    out = acc;
    """,
    "minigrad_bag_sum",
)

_csr_dense_dot = cp.ElementwiseKernel(
    "raw I indptr, raw J indices, raw T data, raw T dense, int64 width",
    "T out",
    """
    const ptrdiff_t r = i / width, j = i % width;
    T acc = 0;
    for (ptrdiff_t k = indptr[r]; k < indptr[r + 1]; ++k) {
        acc += data[k] * dense[indices[k] * width + j];
    }
    out = acc;
    """,
    "minigrad_csr_dense_dot",
)


def _flat(a):
    """Contiguous 1-D view (or copy) of ``a`` for raw-pointer indexing in a kernel."""
    return cp.ascontiguousarray(a).ravel()


def gather_rows(table, indices):
    """Return ``table[indices]`` as a new array of shape ``(len(indices),) + table.shape[1:]``."""
    table, indices = V.gather_args(cp.asarray(table), cp.asarray(indices))
    out = cp.empty((indices.shape[0],) + table.shape[1:], dtype=table.dtype)
    _gather(_flat(table), _flat(indices), V.row_width(table), out.reshape(-1))
    return out


def _scatter_add_flat(out_flat, indices, values, width):
    """``out[indices[i]] += values[i]`` on a flat contiguous ``out``."""
    n = indices.shape[0]
    if n == 0 or width == 0:
        return
    values, indices = _flat(values), _flat(indices)
    kernel = _scatter_function(np.dtype(values.dtype), np.dtype(indices.dtype))
    grid = min(-(-n // _SCATTER_BLOCK[1]), _MAX_GRID)
    args = (values, indices, out_flat, np.int64(n), np.int64(width))
    kernel((grid,), _SCATTER_BLOCK, args)


def scatter_add_rows(out, indices, values):
    """In place ``out[indices[i]] += values[i]`` with atomics; duplicates are summed.

    ``values`` is cast to ``out.dtype``; a non-contiguous ``out`` is updated through a
    contiguous copy that is written back.
    """
    if not isinstance(out, cp.ndarray):
        raise TypeError(f"out must be a cupy.ndarray, got {type(out).__name__}")
    out, indices, values = V.scatter_add_args(out, cp.asarray(indices), cp.asarray(values))
    work = out if out.flags.c_contiguous else cp.ascontiguousarray(out)
    _scatter_add_flat(work.reshape(-1), indices, values, V.row_width(out))
    if work is not out:
        out[...] = work


def coalesce_rows(indices, values):
    """Sum the rows of ``values`` that share an index: ``(unique_indices int64, summed)``."""
    indices, values = V.coalesce_args(cp.asarray(indices), cp.asarray(values))
    unique, inverse = cp.unique(indices, return_inverse=True)
    summed = cp.zeros((unique.shape[0],) + values.shape[1:], dtype=values.dtype)
    _scatter_add_flat(summed.reshape(-1), inverse.ravel(), values, V.row_width(values))
    return unique.astype(cp.int64), summed


def bag_sum(table, tokens, mask):
    """``out[b] = sum_l mask[b, l] * table[tokens[b, l]]``; masked-out tokens are skipped."""
    table, tokens, mask = V.bag_sum_args(cp.asarray(table), cp.asarray(tokens), cp.asarray(mask))
    out = cp.empty((tokens.shape[0],) + table.shape[1:], dtype=table.dtype)
    _bag_sum(
        _flat(table),
        _flat(tokens),
        _flat(mask),
        V.row_width(table),
        tokens.shape[1],
        out.reshape(-1),
    )
    return out


def csr_dense_dot(indptr, indices, data, dense):
    """``X @ dense`` for the CSR matrix ``X = (data, indices, indptr)``; shape (n_rows, ...)."""
    indptr, indices, data, dense, n_rows = V.csr_dense_dot_args(
        cp.asarray(indptr), cp.asarray(indices), cp.asarray(data), cp.asarray(dense)
    )
    out = cp.empty((n_rows,) + dense.shape[1:], dtype=dense.dtype)
    _csr_dense_dot(
        _flat(indptr),
        _flat(indices),
        _flat(data),
        _flat(dense),
        V.row_width(dense),
        out.reshape(-1),
    )
    return out


def csr_gathered_dot(indptr, data, rows):
    """``out[i] = sum over k in row i of data[k] * rows[k]``; see the reference.

    The CSR x dense kernel with the identity as column map (deterministic, no atomics).
    """
    indptr, data, rows, n_rows = V.csr_gathered_dot_args(cp.asarray(indptr), cp.asarray(data),
                                                         cp.asarray(rows))
    out = cp.empty((n_rows,) + rows.shape[1:], dtype=rows.dtype)
    identity = cp.arange(data.shape[0], dtype=cp.int64)
    _csr_dense_dot(_flat(indptr), identity, _flat(data), _flat(rows), V.row_width(rows),
                   out.reshape(-1))
    return out


def csr_scale_rows(indptr, data, grad):
    """``out[k] = data[k] * grad[row of entry k]``; see the reference."""
    indptr, data, grad = V.csr_scale_rows_args(cp.asarray(indptr), cp.asarray(data),
                                               cp.asarray(grad))
    nnz = data.shape[0]
    row_ids = cp.searchsorted(indptr, cp.arange(nnz, dtype=indptr.dtype), side="right") - 1
    return data.reshape((-1,) + (1,) * (grad.ndim - 1)) * grad[row_ids]


def csr_row_dots(indptr, data, grad, rows):
    """``out[k] = data[k] * <grad[row of entry k], rows[k]>``; see the reference."""
    indptr, data, grad, rows = V.csr_row_dots_args(cp.asarray(indptr), cp.asarray(data),
                                                   cp.asarray(grad), cp.asarray(rows))
    nnz, width = data.shape[0], V.row_width(grad)
    row_ids = cp.searchsorted(indptr, cp.arange(nnz, dtype=indptr.dtype), side="right") - 1
    return data * (grad[row_ids].reshape(nnz, width) * rows.reshape(nnz, width)).sum(axis=1)


def csr_t_dense_dot_rows(indptr, indices, data, grad):
    """Row-sparse ``X.T @ grad``: ``(rows = unique(indices), values)``; see the reference."""
    indptr, indices, data, grad, _ = V.csr_t_dense_dot_rows_args(
        cp.asarray(indptr), cp.asarray(indices), cp.asarray(data), cp.asarray(grad)
    )
    nnz, width = indices.shape[0], V.row_width(grad)
    row_ids = cp.searchsorted(indptr, cp.arange(nnz, dtype=indptr.dtype), side="right") - 1
    unique, inverse = cp.unique(indices, return_inverse=True)
    values = cp.zeros((unique.shape[0],) + grad.shape[1:], dtype=grad.dtype)
    if nnz * width:
        _weighted_scatter_add(
            _flat(grad),
            row_ids,
            _flat(data),
            inverse.ravel(),
            width,
            values.reshape(-1),
            size=nnz * width,
        )
    return unique.astype(cp.int64), values


def segment_sum(values, segment_ids, n_segments):
    """``out[s] = sum of values[i] with segment_ids[i] == s``; ids need not be sorted."""
    values, segment_ids, n_segments = V.segment_sum_args(
        cp.asarray(values), cp.asarray(segment_ids), n_segments
    )
    out = cp.zeros((n_segments,) + values.shape[1:], dtype=values.dtype)
    _scatter_add_flat(out.reshape(-1), segment_ids, values, V.row_width(values))
    return out
