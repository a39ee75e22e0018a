"""NumPy reference for the *multi-product* fused sparse kernels: several CSR products that
share one row gather of a table, computed in one pass over the stored entries.

A factorization machine reads its table ``V`` twice per batch, ``X @ V`` and
``square(X) @ V**2``: both gather the same rows ``V[c_k]`` of the same stored columns.
Unfused, the rows are gathered once (``nnz x D``), squared (another ``nnz x D``) and
summed twice; fusing each product on its own reads ``V`` at random twice. Here each stored
entry ``k`` (row ``r_k``, column ``c_k``) reads ``V[c_k]`` once and feeds every product:

* forward, :func:`csr_gather_sums`: ``out_i[r] = sum_k x_i[k] * T[c_k] ** p_i`` for CSR
  batches ``X_i`` of one sparsity pattern (values ``x_i``; ``square(X)`` has ``X``'s) and
  powers ``p_i`` in ``{1, 2}``;
* backward, :func:`csr_scatter_sums`: the row-sparse gradient of ``T`` through any linear
  combination of such products, one row per distinct column (sorted, unique),
  ``g[c] = sum_i coef_i * sum_{k: c_k = c} x_i[k] * G_i[r_k] * T[c] ** m_i``
  (``m_i`` in ``{0, 1, 2}``; ``d/dT`` of ``X_i @ T**2`` is the term ``coef 2, m 1``).
  ``G_i`` of width 1 is broadcast over ``T``'s width, as the unfused graph broadcasts it.

The fast versions are in ``kernels/cpu/fused.py``; they share :func:`check_products`, so
all raise alike.
"""

import numpy as np

from kernels import _validate as V
from kernels.reference.fused import _row_ids, _row_sums, _sum_by_index, _table

__all__ = ["csr_gather_sums", "csr_scatter_sums", "check_products"]


def check_products(indptr, indices, datas, table, powers, allowed, n_table_rows=None):
    """Check one CSR pattern, its per-product values and the table; return the checked
    ``(indptr, indices, datas, powers)`` (``datas`` a list of 1-D arrays, ``powers`` ints)."""
    n_rows = table.shape[0] if n_table_rows is None else int(n_table_rows)
    datas = [np.asarray(d) for d in datas]
    if not datas:
        raise ValueError("need at least one product")
    if len(powers) != len(datas):
        raise ValueError(f"{len(datas)} products but {len(powers)} powers")
    powers = [int(p) for p in powers]
    if any(p not in allowed for p in powers):
        raise ValueError(f"powers must be in {sorted(allowed)}, got {powers}")
    indptr, indices, _ = V.check_csr(indptr, indices, datas[0])
    for i, data in enumerate(datas):
        V.float_array(f"data {i}", data)
        if data.ndim != 1 or data.shape[0] != indices.shape[0]:
            raise ValueError(f"data {i} has shape {data.shape}; the pattern stores "
                             f"{indices.shape[0]} entries")
    V.check_index_range("indices", indices, n_rows)
    return indptr, indices, datas, powers


def csr_gather_sums(indptr, indices, datas, table, powers):
    """``[out_i]``, ``out_i[r] = sum over stored (r, c) of datas[i] * table[c] ** powers[i]``
    (``table``'s dtype, shape ``(n_rows, width)``)."""
    table = _table("table", table)
    indptr, indices, datas, powers = check_products(indptr, indices, datas, table, powers,
                                                    (1, 2))
    rows = table[indices]
    outs = []
    for data, p in zip(datas, powers):
        scaled = (rows if p == 1 else rows * rows) * np.asarray(data, dtype=table.dtype)[:, None]
        outs.append(_row_sums(indptr, scaled.astype(table.dtype, copy=False)))
    return outs


def check_grads(grads, n_rows, width, powers):
    """Each ``G_i`` is ``(n_rows, width)`` or ``(n_rows, 1)`` (broadcast over ``width``);
    the per-entry rows must come out as wide as the table, as the unfused ``TakeGrad``
    requires (a term reading the table is; width-1 gradients alone are not)."""
    if len(grads) != len(powers):
        raise ValueError(f"{len(powers)} products but {len(grads)} gradients")
    for i, g in enumerate(grads):
        if g.ndim != 2 or g.shape[0] != n_rows or g.shape[1] not in (1, width):
            raise ValueError(f"gradient {i} has shape {g.shape}; need ({n_rows}, {width}) "
                             f"or ({n_rows}, 1)")
    if width != 1 and all(m == 0 and g.shape[1] == 1 for g, m in zip(grads, powers)):
        raise ValueError(f"gradient rows of width 1 for a table of width {width}")


def csr_scatter_sums(indptr, indices, datas, grads, table, coefs, powers):
    """``(sorted unique int64 columns, rows)``: the gradient of ``table`` through the linear
    combination ``sum_i coefs[i] * X_i @ (...)`` whose per-entry rows are
    ``x_i[k] * G_i[r_k] * table[c_k] ** powers[i]`` (module docstring)."""
    table = _table("table", table)
    indptr, indices, datas, powers = check_products(indptr, indices, datas, table, powers,
                                                    (0, 1, 2))
    if len(coefs) != len(datas):
        raise ValueError(f"{len(datas)} products but {len(coefs)} coefficients")
    dtype = table.dtype
    grads = [np.asarray(g, dtype=dtype) for g in grads]
    check_grads(grads, indptr.shape[0] - 1, table.shape[1], powers)
    row_of = _row_ids(indptr)
    rows = table[indices]
    total = np.zeros((indices.shape[0], table.shape[1]), dtype=dtype)
    for data, g, coef, m in zip(datas, grads, coefs, powers):
        term = dtype.type(coef) * np.asarray(data, dtype=dtype)[:, None] * g[row_of]
        if m >= 1:
            term = term * rows
        if m == 2:
            term = term * rows
        total += term.astype(dtype, copy=False)
    return _sum_by_index(indices.astype(np.int64, copy=False), total)
