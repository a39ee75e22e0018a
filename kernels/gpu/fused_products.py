"""CuPy versions of the multi-product fused kernels (see ``kernels.reference.fused_products``):
the same formulas, on the device, without a device-to-host copy.

Forward: each product is one launch of the gather-scale-sum kernel of ``kernels.gpu.fused``
(``X_i @ T**2`` as ``T * F`` with ``F = T``). Backward: the per-entry rows of every term are
summed on the device and scattered into one row per distinct column (``cupy.unique`` and
``scatter_add``, as ``kernels.gpu.fused.csr_scatter_grad_rows`` does). Runs only where a
device is present; ``tests/test_fused_products.py`` compares it with the reference there.
"""

from kernels import _validate as V
from kernels.gpu import fused as _fused
from kernels.gpu import require_cupy

__all__ = ["csr_gather_sums", "csr_scatter_sums"]


def csr_gather_sums(indptr, indices, datas, table, powers):
    """``[X_i @ table ** p_i]`` (``p_i`` 1 or 2), each a device array."""
    if len(powers) != len(datas) or any(int(p) not in (1, 2) for p in powers):
        raise ValueError(f"need one power in [1, 2] per product, got {powers}")
    return [_fused.csr_gather_mul_sum(indptr, indices, data, table,
                                      table if int(p) == 2 else None)
            for data, p in zip(datas, powers)]


def csr_scatter_sums(indptr, indices, datas, grads, table, coefs, powers):
    """``(sorted unique int64 columns, rows)`` of ``sum_i coef_i x_i G_i[r] T[c] ** m_i``."""
    import cupyx

    cp = require_cupy()
    table = V.float_array("table", cp.asarray(table))
    if not (len(datas) == len(grads) == len(coefs) == len(powers)) or any(
            int(m) not in (0, 1, 2) for m in powers):
        raise ValueError("need one batch, gradient, coefficient and power in [0, 1, 2] "
                         "per product")
    indptr, indices, _ = V.check_csr(cp.asarray(indptr), cp.asarray(indices),
                                     cp.asarray(datas[0]))
    V.check_index_range("indices", indices, table.shape[0])
    n_rows, width, dtype = indptr.shape[0] - 1, table.shape[1], table.dtype
    from kernels.reference.fused_products import check_grads

    grads = [cp.asarray(g, dtype=dtype) for g in grads]
    check_grads(grads, n_rows, width, [int(m) for m in powers])
    row_ids = cp.searchsorted(indptr.astype(cp.int64), cp.arange(indices.shape[0]),
                              side="right") - 1
    rows_of_table = table[indices]
    total = cp.zeros((indices.shape[0], width), dtype=dtype)
    for data, g, coef, m in zip(datas, grads, coefs, powers):
        term = dtype.type(coef) * cp.asarray(data, dtype=dtype)[:, None] * g[row_ids]
        for _ in range(int(m)):
            term = term * rows_of_table
        total += term.astype(dtype, copy=False)
    unique, inverse = cp.unique(indices, return_inverse=True)
    out = cp.zeros((unique.shape[0], width), dtype=dtype)
    cupyx.scatter_add(out, inverse.reshape(-1), total)
    return unique.astype(cp.int64), out
