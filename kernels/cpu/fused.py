"""Numba versions of the fused sparse-path kernels (see ``kernels.reference.fused``).

The backward kernels de-duplicate through a **slot map**: a V-long int32 array, all -1
between calls, in which ``slot[c]`` is the output row of column ``c`` while a call runs.
One pass collects the distinct columns, a sort of the *distinct* columns only (a few
hundred to a few thousand, not nnz) fixes their order, the accumulation writes each
entry straight into its row, and the touched slots are reset: O(nnz + u log u), never
O(V). The caller owns the scratch (one per table and thread); without one a fresh map is
allocated, which costs O(V) and is only meant for direct, one-off calls.
"""

import numpy as np

from kernels import _validate as V
from kernels.cpu.deferred_cache import njit
from kernels.cpu.rows import _csr_prefetch_distance, _prefetch_entry
from kernels.reference.fused import (
    _table,
    check_scatter_shapes,
    fused_csr_args,
)

__all__ = ["csr_gather_mul_sum", "csr_scatter_grad_rows", "slot_coalesce_rows", "new_slot_map",
           "csr_gather_mul_sum_trusted", "csr_scatter_grad_rows_trusted"]


def new_slot_map(n_table_rows):
    """A fresh slot map for a table of ``n_table_rows`` rows (all -1)."""
    return np.full(int(n_table_rows), -1, dtype=np.int32)


def _check_slot(slot, n_table_rows):
    if slot is None:
        return new_slot_map(n_table_rows)
    if slot.dtype != np.int32 or slot.ndim != 1 or slot.shape[0] < n_table_rows:
        raise ValueError(f"slot must be an int32 vector of at least {n_table_rows} entries")
    return slot


@njit(cache=True, nogil=True, error_model="numpy")
def _gather_mul_sum(indptr, indices, data, table, factor, use_factor, out):
    """``out[r] += data * table[c] * factor[c]`` over CSR entries ``(r, c)``; the rows of
    an entry a few ahead are asked for (``rows.CSR_PREFETCH_MIN_BYTES``)."""
    width = table.shape[1]
    fw = factor.shape[1]
    dist = _csr_prefetch_distance(table)
    end = indptr[indptr.shape[0] - 1]
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            _prefetch_entry(indices, k, end, dist, table, factor, use_factor)
            c = indices[k]
            x = data[k]
            if not use_factor:
                for d in range(width):
                    out[r, d] += x * table[c, d]
            elif fw == 1:
                x = x * factor[c, 0]
                for d in range(width):
                    out[r, d] += x * table[c, d]
            else:
                for d in range(width):
                    out[r, d] += x * table[c, d] * factor[c, d]


@njit(cache=True, nogil=True, error_model="numpy")
def _distinct_sorted(indices, slot):
    """Distinct values of ``indices`` sorted, and ``slot[c]`` set to each one's rank."""
    uniq = np.empty(indices.shape[0], dtype=np.int64)
    n = 0
    for k in range(indices.shape[0]):
        c = indices[k]
        if slot[c] < 0:
            slot[c] = 0
            uniq[n] = c
            n += 1
    uniq = np.sort(uniq[:n])
    for i in range(n):
        slot[uniq[i]] = i
    return uniq


@njit(cache=True, nogil=True, error_model="numpy")
def _distinct_in_order(indices, slot):
    """Distinct values of ``indices`` in order of first appearance, ``slot[c]`` set to
    each one's position: ``_distinct_sorted`` without the sort, for a caller that does
    not need sorted rows (a step's own row updates: ``minigrad/fused_step.py``)."""
    uniq = np.empty(indices.shape[0], dtype=np.int64)
    n = 0
    for k in range(indices.shape[0]):
        c = indices[k]
        if slot[c] < 0:
            slot[c] = n
            uniq[n] = c
            n += 1
    return uniq[:n]


@njit(cache=True, nogil=True, error_model="numpy")
def _reset(uniq, slot):
    for i in range(uniq.shape[0]):
        slot[uniq[i]] = -1


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_grad(indptr, indices, data, grad, factor, use_factor, out_width, slot):
    uniq = _distinct_sorted(indices, slot)
    values = _scatter_grad_rows(indptr, indices, data, grad, factor, use_factor, out_width,
                                slot, uniq.shape[0])
    _reset(uniq, slot)
    return uniq, values


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_grad_rows(indptr, indices, data, grad, factor, use_factor, out_width, slot,
                       n_rows):
    """The rows of ``_scatter_grad``, each entry into row ``slot[column]`` (set); the
    factor's row of an entry a few ahead is asked for (``rows.CSR_PREFETCH_MIN_BYTES``)."""
    width = grad.shape[1]
    fw = factor.shape[1]
    values = np.zeros((n_rows, out_width), dtype=grad.dtype)
    dist = _csr_prefetch_distance(factor) if use_factor else 0
    end = indptr[indptr.shape[0] - 1]
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            _prefetch_entry(indices, k, end, dist, factor, factor, False)
            c = indices[k]
            s = slot[c]
            x = data[k]
            if not use_factor:
                for d in range(width):
                    values[s, d] += x * grad[r, d]
            elif out_width == 1 and width != 1:
                acc = 0.0
                for d in range(width):
                    acc += grad[r, d] * factor[c, d]
                values[s, 0] += x * acc
            elif fw == 1:
                x = x * factor[c, 0]
                for d in range(width):
                    values[s, d] += x * grad[r, d]
            else:
                for d in range(width):
                    values[s, d] += x * grad[r, d] * factor[c, d]
    return values


@njit(cache=True, nogil=True, error_model="numpy")
def _slot_coalesce(indices, values, slot):
    uniq = _distinct_sorted(indices, slot)
    out = np.zeros((uniq.shape[0], values.shape[1]), dtype=values.dtype)
    for k in range(indices.shape[0]):
        s = slot[indices[k]]
        for d in range(values.shape[1]):
            out[s, d] += values[k, d]
    _reset(uniq, slot)
    return uniq, out


def _factor_or_dummy(factor, dtype):
    if factor is None:
        return np.zeros((1, 1), dtype=dtype), False
    return np.asarray(factor, dtype=dtype), True  # no copy: tables may be huge or strided


def csr_gather_mul_sum(indptr, indices, data, table, factor=None):
    """``out[r] = sum over stored (r, c) of data * table[c] * factor[c]``; see the reference."""
    table = _table("table", table)
    indptr, indices, factor = fused_csr_args(indptr, indices, data, table, factor)
    if factor is not None and factor.shape[1] not in (1, table.shape[1]):
        raise ValueError(f"factor width {factor.shape[1]} must be 1 or {table.shape[1]}")
    out = np.zeros((indptr.shape[0] - 1, table.shape[1]), dtype=table.dtype)
    f, use = _factor_or_dummy(factor, table.dtype)
    _gather_mul_sum(indptr, indices, np.ascontiguousarray(data, dtype=table.dtype),
                    table, f, use, out)  # any layout: a copy of a big table costs O(V)
    return out


def csr_scatter_grad_rows(indptr, indices, data, grad, n_table_rows, factor=None,
                          out_width=None, slot=None):
    """Row-sparse gradient through ``X @ (T * F)`` via a slot map; see the reference."""
    grad = _table("grad", grad)
    out_width = grad.shape[1] if out_width is None else int(out_width)
    indptr, indices, factor = fused_csr_args(indptr, indices, data, grad, factor, n_table_rows)
    V.check_same_length("indptr[1:]", indptr[1:], "grad", grad)
    check_scatter_shapes(grad, factor, out_width)
    slot = _check_slot(slot, int(n_table_rows))
    f, use = _factor_or_dummy(factor, grad.dtype)
    return _scatter_grad(indptr, indices, np.ascontiguousarray(data, dtype=grad.dtype),
                         np.ascontiguousarray(grad), f, use, out_width, slot)


def csr_gather_mul_sum_trusted(indptr, indices, data, table, factor=None):
    """``csr_gather_mul_sum`` without the O(nnz) scans, for compiled minigrad code.

    The caller promises what the input boundary established once per call: a valid CSR
    structure (``CSRType.filter``: ``indptr`` from 0 to nnz, non-decreasing; columns in
    ``[0, n_cols)``) with ``n_cols == table.shape[0]`` (the fused Op's ``check_columns``).
    The O(1) facts a wrong caller could still get wrong (ranks, widths, factor rows, dtypes)
    are checked here, so a bug stays an exception, never an out-of-bounds read.
    """
    table = _table("table", table)
    if factor is not None:
        factor = _table("factor", factor)
        if factor.shape[0] != table.shape[0] or factor.shape[1] not in (1, table.shape[1]):
            raise ValueError(f"factor of shape {factor.shape} does not fit the table "
                             f"{table.shape}")
    if indices.shape[0] != data.shape[0] or int(indptr[-1]) > indices.shape[0]:
        raise ValueError("indptr, indices and data do not form a CSR matrix")
    out = np.zeros((indptr.shape[0] - 1, table.shape[1]), dtype=table.dtype)
    f, use = _factor_or_dummy(factor, table.dtype)
    _gather_mul_sum(indptr, indices, np.ascontiguousarray(data, dtype=table.dtype),
                    table, f, use, out)
    return out


def csr_scatter_grad_rows_trusted(indptr, indices, data, grad, n_table_rows, factor,
                                  out_width, slot):
    """``csr_scatter_grad_rows`` without the O(nnz) scans (see
    :func:`csr_gather_mul_sum_trusted` for the caller's promise); ``slot`` is required."""
    grad = _table("grad", grad)
    if factor is not None:
        factor = _table("factor", factor)
        if factor.shape[0] != int(n_table_rows):
            raise ValueError(f"factor has {factor.shape[0]} rows, the table {n_table_rows}")
    if grad.shape[0] != indptr.shape[0] - 1:
        raise ValueError(f"grad has {grad.shape[0]} rows for {indptr.shape[0] - 1} CSR rows")
    if indices.shape[0] != data.shape[0] or int(indptr[-1]) > indices.shape[0]:
        raise ValueError("indptr, indices and data do not form a CSR matrix")
    check_scatter_shapes(grad, factor, out_width)
    slot = _check_slot(slot, int(n_table_rows))
    f, use = _factor_or_dummy(factor, grad.dtype)
    return _scatter_grad(indptr, indices, np.ascontiguousarray(data, dtype=grad.dtype),
                         np.ascontiguousarray(grad), f, use, out_width, slot)


def slot_coalesce_rows(indices, values, n_table_rows, slot=None):
    """Sum rows sharing an index through a slot map: ``(sorted unique int64, summed)``."""
    indices = V.index_array("indices", np.asarray(indices))
    values = np.asarray(values)
    V.float_array("values", values)
    V.check_same_length("indices", indices, "values", values)
    V.check_index_range("indices", indices, int(n_table_rows))
    slot = _check_slot(slot, int(n_table_rows))
    flat = np.ascontiguousarray(values).reshape(values.shape[0], V.row_width(values))
    uniq, out = _slot_coalesce(indices, flat, slot)
    return uniq, out.reshape((uniq.shape[0],) + values.shape[1:])


# --- several CSR products sharing one gather (see kernels.reference.fused_products) ----------


@njit(cache=True, nogil=True, error_model="numpy")
def _gather_sums(indptr, indices, datas, powers, table, out):
    """``out[i, r] += datas[i, k] * table[c_k] ** powers[i]``: each table row read once."""
    width = table.shape[1]
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            c = indices[k]
            for i in range(datas.shape[0]):
                x = datas[i, k]
                if powers[i] == 1:
                    for d in range(width):
                        out[i, r, d] += x * table[c, d]
                else:
                    for d in range(width):
                        t = table[c, d]
                        out[i, r, d] += x * (t * t)


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_sums(indptr, indices, datas, grads, coefs, powers, table, slot):
    """Rows ``x_i[k] * coef_i * G_i[r_k] * T[c_k] ** m_i`` summed into one row per distinct
    column (sorted); ``grads`` is ``(K, n_rows, width)``."""
    uniq = _distinct_sorted(indices, slot)
    values = _scatter_sums_rows(indptr, indices, datas, grads, coefs, powers, table, slot,
                                uniq.shape[0])
    _reset(uniq, slot)
    return uniq, values


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_sums_rows(indptr, indices, datas, grads, coefs, powers, table, slot, n_rows):
    """The rows of ``_scatter_sums``, each entry into row ``slot[column]`` (set)."""
    width = table.shape[1]
    values = np.zeros((n_rows, width), dtype=table.dtype)
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            c = indices[k]
            s = slot[c]
            for i in range(datas.shape[0]):
                x = coefs[i] * datas[i, k]
                m = powers[i]
                if m == 0:
                    for d in range(width):
                        values[s, d] += x * grads[i, r, d]
                elif m == 1:
                    for d in range(width):
                        values[s, d] += x * grads[i, r, d] * table[c, d]
                else:
                    for d in range(width):
                        t = table[c, d]
                        values[s, d] += x * grads[i, r, d] * (t * t)
    return values


# Two products (the FM's ``X @ V`` and ``X**2 @ V**2``, or any pair sharing a gather): each
# product's values and gradient as its own array, no (K, ...) stacking copies, and the two
# terms in one pass over each table row. The arithmetic of each output element is the
# general loops' (the same products, added in the same order), so results are bitwise
# theirs; the generated jit code calls these when a fused node has two products.


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _times_power(a, t, power):
    """``a * t ** power`` for a power of 0, 1 or 2, in the general loops' order of
    operations (``a * t``, ``a * (t * t)``)."""
    if power == 1:
        return a * t
    if power == 2:
        return a * (t * t)
    return a


@njit(cache=True, nogil=True, error_model="numpy")
def _gather_sums2(indptr, indices, data0, data1, power0, power1, table, out0, out1):
    """``_gather_sums`` for two products: ``out_i[r] += data_i[k] * table[c_k] ** p_i``;
    the rows of an entry a few ahead are asked for (``rows.CSR_PREFETCH_MIN_BYTES``: the
    FM step's forward read of ``V``, 70,016 x 16 float64, waited on a miss per random row;
    ~17 us against 20-41 us, kernel alone, load 3)."""
    width = table.shape[1]
    dist = _csr_prefetch_distance(table)
    end = indptr[indptr.shape[0] - 1]
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            _prefetch_entry(indices, k, end, dist, table, table, False)
            c = indices[k]
            x0 = data0[k]
            x1 = data1[k]
            for d in range(width):
                t = table[c, d]
                out0[r, d] += _times_power(x0, t, power0)
                out1[r, d] += _times_power(x1, t, power1)


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_sums2_rows(indptr, indices, data0, data1, grad0, grad1, coef0, coef1, power0,
                        power1, table, slot, n_rows):
    """``_scatter_sums_rows`` for two products; a gradient may have width 1 (broadcast
    over the table's width, as ``stack_grads`` does)."""
    width = table.shape[1]
    values = np.zeros((n_rows, width), dtype=table.dtype)
    wide0 = grad0.shape[1] != 1
    wide1 = grad1.shape[1] != 1
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            c = indices[k]
            s = slot[c]
            x0 = coef0 * data0[k]
            x1 = coef1 * data1[k]
            for d in range(width):
                t = table[c, d]
                values[s, d] += _times_power(x0 * grad0[r, d if wide0 else 0], t, power0)
                values[s, d] += _times_power(x1 * grad1[r, d if wide1 else 0], t, power1)
    return values


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_sums2(indptr, indices, data0, data1, grad0, grad1, coef0, coef1, power0, power1,
                   table, slot):
    """``_scatter_sums`` for two products: rows sorted by column."""
    uniq = _distinct_sorted(indices, slot)
    values = _scatter_sums2_rows(indptr, indices, data0, data1, grad0, grad1, coef0, coef1,
                                 power0, power1, table, slot, uniq.shape[0])
    _reset(uniq, slot)
    return uniq, values


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_sums2_any_order(indptr, indices, data0, data1, grad0, grad1, coef0, coef1,
                             power0, power1, table, slot):
    """``_scatter_sums2`` with its rows in order of first appearance, not sorted: for a
    gradient only a step's own row updates read (``minigrad/fused_step.py``)."""
    uniq = _distinct_in_order(indices, slot)
    values = _scatter_sums2_rows(indptr, indices, data0, data1, grad0, grad1, coef0, coef1,
                                 power0, power1, table, slot, uniq.shape[0])
    _reset(uniq, slot)
    return uniq, values


def stack_data(datas, dtype):
    """The per-product values as one ``(K, nnz)`` array of ``dtype`` (what the loops take)."""
    out = np.empty((len(datas), datas[0].shape[0]), dtype=dtype)
    for i, data in enumerate(datas):
        out[i] = data
    return out


def stack_grads(grads, width, dtype):
    """``(K, n_rows, width)``; a gradient of width 1 is broadcast over the width."""
    out = np.empty((len(grads), grads[0].shape[0], width), dtype=dtype)
    for i, g in enumerate(grads):
        out[i] = g
    return out


def csr_gather_sums(indptr, indices, datas, table, powers, trusted=False):
    """``[X_i @ table ** p_i]`` in one pass; see ``kernels.reference.fused_products``.

    ``trusted``: compiled minigrad code vouches for the CSR structure and the column range
    (``CSRType.filter`` checked the batch at the input boundary): the O(nnz) scans are
    skipped; the O(1) shape facts are checked all the same.
    """
    table = _table("table", table)
    if trusted:
        products_shapes(indptr, indices, datas, powers, (1, 2))
    else:
        indptr, indices, datas, powers = _ref_products().check_products(
            indptr, indices, datas, table, powers, (1, 2))
    out = np.zeros((len(datas), indptr.shape[0] - 1, table.shape[1]), dtype=table.dtype)
    _gather_sums(indptr, indices, stack_data(datas, table.dtype),
                 np.asarray(powers, dtype=np.int64), table, out)
    return list(out)


def csr_scatter_sums(indptr, indices, datas, grads, table, coefs, powers, slot=None,
                     trusted=False):
    """Row-sparse gradient of ``table`` through several products sharing its gather,
    written straight into de-duplicated rows (slot map); see the reference."""
    ref = _ref_products()
    table = _table("table", table)
    if trusted:
        products_shapes(indptr, indices, datas, powers, (0, 1, 2))
    else:
        indptr, indices, datas, powers = ref.check_products(
            indptr, indices, datas, table, powers, (0, 1, 2))
    if len(coefs) != len(datas):
        raise ValueError(f"{len(datas)} products but {len(coefs)} coefficients")
    grads = [np.asarray(g) for g in grads]
    ref.check_grads(grads, indptr.shape[0] - 1, table.shape[1], powers)
    slot = _check_slot(slot, table.shape[0])
    return _scatter_sums(indptr, indices, stack_data(datas, table.dtype),
                         stack_grads(grads, table.shape[1], table.dtype),
                         np.asarray(coefs, dtype=table.dtype),
                         np.asarray(powers, dtype=np.int64), table, slot)


def products_shapes(indptr, indices, datas, powers, allowed):
    """The O(1) checks of a trusted call: counts, lengths and powers."""
    if not datas or len(powers) != len(datas) or any(int(p) not in allowed for p in powers):
        raise ValueError(f"need one power in {sorted(allowed)} per product")
    if int(indptr[-1]) > indices.shape[0] or any(d.shape != indices.shape for d in datas):
        raise ValueError("indptr, indices and data do not form a CSR pattern")


def _ref_products():
    import kernels.reference.fused_products as ref

    return ref
