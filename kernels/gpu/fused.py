"""CuPy versions of the fused sparse-path kernels (see ``kernels.reference.fused``).

The forward pass is one ``RawKernel`` (one thread per output element walks its CSR row:
no gathered rows, no atomics). The backward de-duplicates with ``cupy.unique`` and
accumulates with ``cupyx.scatter_add`` (atomics), which on a GPU is the natural
equivalent of the CPU slot map; ``slot`` is accepted for the common signature and ignored.
Untested on this project's CI machines (no CUDA there): the parity test in
``tests/test_fused.py`` runs these when a device is present.
"""

import numpy as np

from kernels import _validate as V
from kernels.gpu._cupy import require_cupy
from kernels.reference.fused import check_scatter_shapes

__all__ = ["csr_gather_mul_sum", "csr_scatter_grad_rows", "slot_coalesce_rows", "new_slot_map"]

_SOURCE = r"""
extern "C" __global__ void gather_mul_sum(
        const long long* indptr, const long long* indices, const T* data, const T* table,
        const T* factor, const int fw, const long long n_rows, const long long width,
        T* out) {
    long long i = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (i >= n_rows * width) return;
    long long r = i / width, d = i % width;
    T acc = 0;
    for (long long k = indptr[r]; k < indptr[r + 1]; ++k) {
        long long c = indices[k];
        T f = fw == 0 ? (T)1 : (fw == 1 ? factor[c] : factor[c * width + d]);
        acc += data[k] * table[c * width + d] * f;
    }
    out[i] = acc;
}
"""
_KERNELS = {}


def _kernel(cp, dtype):
    name = "float" if dtype == np.float32 else "double"
    if name not in _KERNELS:
        _KERNELS[name] = cp.RawKernel(f"typedef {name} T;\n" + _SOURCE, "gather_mul_sum")
    return _KERNELS[name]


def new_slot_map(n_table_rows):
    """Accepted for the common signature; the GPU kernels need no slot map."""
    return None


def _checked(indptr, indices, data, n_rows, factor):
    cp = require_cupy()
    indptr, indices, _ = V.check_csr(cp.asarray(indptr), cp.asarray(indices), cp.asarray(data))
    V.check_index_range("indices", indices, n_rows)
    if factor is not None:
        factor = cp.asarray(factor)
        if factor.ndim != 2 or factor.shape[0] != n_rows:
            raise ValueError(f"factor must have shape ({n_rows}, w), got {factor.shape}")
    return cp, indptr.astype(cp.int64), indices.astype(cp.int64), factor


def csr_gather_mul_sum(indptr, indices, data, table, factor=None):
    """``out[r] = sum over stored (r, c) of data * table[c] * factor[c]``."""
    table = V.float_array("table", require_cupy().asarray(table))
    cp, indptr, indices, factor = _checked(indptr, indices, data, table.shape[0], factor)
    width = table.shape[1]
    if factor is not None and factor.shape[1] not in (1, width):
        raise ValueError(f"factor width {factor.shape[1]} must be 1 or {width}")
    n_rows = indptr.shape[0] - 1
    out = cp.zeros((n_rows, width), dtype=table.dtype)
    if out.size:
        fw = 0 if factor is None else (1 if factor.shape[1] == 1 and width > 1 else 2)
        f = (cp.zeros(1, table.dtype) if factor is None
             else cp.ascontiguousarray(factor, dtype=table.dtype))
        threads = 256
        blocks = (out.size + threads - 1) // threads
        _kernel(cp, table.dtype)(
            (blocks,), (threads,),
            (indptr, indices, cp.ascontiguousarray(data, dtype=table.dtype),
             cp.ascontiguousarray(table), f, np.int32(fw), np.int64(n_rows), np.int64(width),
             out))
    return out


def csr_scatter_grad_rows(indptr, indices, data, grad, n_table_rows, factor=None,
                          out_width=None, slot=None):
    """Row-sparse gradient through ``X @ (T * F)``: ``(sorted unique cols, rows)``."""
    import cupyx

    grad = V.float_array("grad", require_cupy().asarray(grad))
    out_width = grad.shape[1] if out_width is None else int(out_width)
    cp, indptr, indices, factor = _checked(indptr, indices, data, int(n_table_rows), factor)
    check_scatter_shapes(grad, factor, out_width)
    # the row of each stored entry, without a device-to-host copy of the row lengths
    row_ids = cp.searchsorted(indptr, cp.arange(indices.shape[0]), side="right") - 1
    x = cp.asarray(data, dtype=grad.dtype)[:, None]
    g = grad[row_ids]
    if out_width == grad.shape[1]:
        rows = x * (g if factor is None else g * factor[indices].astype(grad.dtype))
    else:
        rows = x * (g * factor[indices].astype(grad.dtype)).sum(axis=1, keepdims=True)
    unique, inverse = cp.unique(indices, return_inverse=True)
    out = cp.zeros((unique.shape[0], out_width), dtype=grad.dtype)
    cupyx.scatter_add(out, inverse.reshape(-1), rows)
    return unique.astype(cp.int64), out


def slot_coalesce_rows(indices, values, n_table_rows, slot=None):
    """Sum rows sharing an index: ``(sorted unique int64, summed)``."""
    import cupyx

    cp = require_cupy()
    indices = V.index_array("indices", cp.asarray(indices))
    values = V.float_array("values", cp.asarray(values))
    V.check_same_length("indices", indices, "values", values)
    V.check_index_range("indices", indices, int(n_table_rows))
    unique, inverse = cp.unique(indices, return_inverse=True)
    out = cp.zeros((unique.shape[0],) + values.shape[1:], dtype=values.dtype)
    cupyx.scatter_add(out, inverse.reshape(-1), values)
    return unique.astype(cp.int64), out
