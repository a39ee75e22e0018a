"""Argument checks shared by every kernel implementation.

Numba and CUDA kernels do no bounds checking: an index one past the end silently reads
garbage or, worse, writes into someone else's memory. So every public entry point runs
these cheap, vectorised checks *before* it calls a compiled loop. They only use the array
protocol (``shape``, ``dtype``, ``min``, ``max``, ``astype``, ``reshape``), so the same code
checks NumPy arrays on the CPU and CuPy arrays on the GPU.

Conventions: a wrong dtype raises ``TypeError``, a wrong shape or length raises
``ValueError``, an index outside its table raises ``IndexError`` naming the offending value
and the valid range.
"""

import math

import numpy as np

__all__ = [
    "FLOAT_DTYPES",
    "INDEX_DTYPES",
    "float_array",
    "index_array",
    "check_index_range",
    "check_rows",
    "check_same_length",
    "check_csr",
    "row_width",
    "gather_args",
    "scatter_add_args",
    "writeable_output",
    "distinct_input",
    "coalesce_args",
    "bag_sum_args",
    "csr_dense_dot_args",
    "csr_t_dense_dot_rows_args",
    "segment_sum_args",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def float_array(name, a, min_ndim=1):
    """Check that ``a`` holds float32/float64 values and has at least ``min_ndim`` axes."""
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {a.shape}")
    return a


def index_array(name, a, ndim=1):
    """Check an integer index array of rank ``ndim``; return it as int32 or int64.

    Other integer dtypes (int8, uint16, ...) are widened to int64 so that compiled
    kernels only ever see the two supported index types; bool and float are refused because
    they almost always mean a mask or a bug, not an index.
    """
    kind = np.dtype(a.dtype).kind
    if kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if np.dtype(a.dtype) not in INDEX_DTYPES:
        a = a.astype(np.int64)
    return a


def check_index_range(name, indices, upper=None, message=None):
    """Raise ``IndexError`` unless ``0 <= indices < upper`` (``upper=None``: no upper bound).

    This is *the* range check of minigrad: the kernels' entry points, the compiled call's
    prologue (``minigrad/prologue.py``), ``RowSparse``, the graph's gathers and the
    optimizers' eager ``apply`` all call it, so "checked once per call" can be counted
    (``tests/test_checks_once.py``). ``message(bad, upper)`` words the error for callers
    that name a graph input or a table (default: ``name`` and the valid range).

    The common, valid case costs one reduction and (on a GPU) one device sync: viewed as
    unsigned, negative indices wrap to huge values, so ``max(unsigned) < upper`` checks both
    ends at once. Only when that fails are min and max computed to name the bad value.
    """
    if indices.size == 0:
        return
    if upper is not None:
        kind = np.dtype(indices.dtype).kind
        if kind == "u":
            if int(indices.max()) < upper:
                return
        elif kind == "i":
            unsigned = indices.view(np.dtype(f"u{np.dtype(indices.dtype).itemsize}"))
            if int(unsigned.max()) < upper:
                return
    elif int(indices.min()) >= 0:
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo >= 0 and (upper is None or hi < upper):
        return  # (not an integer array: the comparisons above were not conclusive)
    bad = lo if lo < 0 else hi
    if message is not None:
        raise IndexError(message(bad, upper))
    valid = f"[0, {upper})" if upper is not None else "[0, inf)"
    raise IndexError(f"{name} contains index {bad}, outside the valid range {valid}")


def check_rows(name, values, n, row_shape):
    """Check that ``values`` has shape ``(n,) + row_shape`` (one row per index)."""
    expected = (n,) + tuple(row_shape)
    if tuple(values.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(values.shape)}")


def check_same_length(name_a, a, name_b, b):
    """Check that two arrays have the same leading length."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {a.shape[0]} and {b.shape[0]}"
        )


def check_csr(indptr, indices, data):
    """Check the three arrays of a CSR matrix; return ``(indptr, indices, n_rows)``.

    ``indptr`` must start at 0, never decrease and end at ``nnz``: otherwise a kernel that
    walks ``indices[indptr[r]:indptr[r + 1]]`` would read past the end. The column range of
    ``indices`` is left to the caller, which knows the number of columns.
    """
    indptr = index_array("indptr", indptr)
    indices = index_array("indices", indices)
    if data.ndim != 1:
        raise ValueError(f"data must be 1-D, got shape {data.shape}")
    check_same_length("indices", indices, "data", data)
    if indptr.shape[0] < 1:
        raise ValueError("indptr must have at least one entry (n_rows + 1)")
    nnz = indices.shape[0]
    first, last = int(indptr[0]), int(indptr[-1])
    if first != 0 or last != nnz:
        raise ValueError(f"indptr must start at 0 and end at nnz={nnz}, got {first} .. {last}")
    if indptr.shape[0] > 1 and bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("indptr must be non-decreasing")
    return indptr, indices, indptr.shape[0] - 1


def row_width(a):
    """Number of scalars in one row of ``a``: the product of its trailing dimensions."""
    return math.prod(a.shape[1:])


# --- one validator per kernel: every implementation calls the same one ------------------


def _same_float(name, a, dtype):
    """Cast ``a`` to the kernel's float dtype (no copy when it already matches)."""
    if np.dtype(a.dtype).kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got {a.dtype}")
    return a if a.dtype == dtype else a.astype(dtype)


def gather_args(table, indices):
    """Validate ``gather_rows``: a float table and in-range 1-D indices."""
    float_array("table", table)
    indices = index_array("indices", indices)
    check_index_range("indices", indices, table.shape[0])
    return table, indices


def writeable_output(name, out):
    """Refuse a read-only output array with ``ValueError`` (before a compiled loop would
    fail with a typing error or, through a raw pointer, write into read-only memory)."""
    if not getattr(getattr(out, "flags", None), "writeable", True):
        raise ValueError(f"{name} is read-only; pass a writeable array")


def _may_overlap(a, b):
    """Whether ``a`` and ``b`` may share memory (bounds check: cheap, never a false no)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return bool(cupy.may_share_memory(a, b))
    return isinstance(b, np.ndarray) and bool(np.may_share_memory(a, b))


def distinct_input(name, a, out):
    """``a``, copied when it may alias ``out``: an in-place kernel reading rows it has
    already written would depend on the loop order and differ between backends."""
    return a.copy() if _may_overlap(out, a) else a


def scatter_add_args(out, indices, values):
    """Validate ``scatter_add_rows``; ``values`` is cast to ``out.dtype`` like ``np.add.at``.

    ``values`` overlapping ``out`` is read as it was before the call (it is copied), so
    every backend gives ``out + scatter(values_before)``."""
    float_array("out", out)
    writeable_output("out", out)
    indices = index_array("indices", indices)
    values = distinct_input("values", values, out)
    values = _same_float("values", values, out.dtype)
    check_rows("values", values, indices.shape[0], out.shape[1:])
    check_index_range("indices", indices, out.shape[0])
    return out, indices, values


def coalesce_args(indices, values):
    """Validate ``coalesce_rows``: one value row per index, indices non-negative."""
    indices = index_array("indices", indices)
    float_array("values", values)
    check_same_length("indices", indices, "values", values)
    check_index_range("indices", indices)
    return indices, values


def bag_sum_args(table, tokens, mask):
    """Validate ``bag_sum``: (B, L) tokens in range and a (B, L) mask cast to the table dtype.

    Padding tokens are checked too (pad with a valid row such as 0, masked out): a kernel may
    still read them, so an out-of-range pad is a latent out-of-bounds read.
    """
    float_array("table", table)
    tokens = index_array("tokens", tokens, ndim=2)
    if tuple(mask.shape) != tuple(tokens.shape):
        raise ValueError(f"mask must have the shape of tokens {tokens.shape}, got {mask.shape}")
    mask = _same_float("mask", mask, table.dtype)
    check_index_range("tokens", tokens, table.shape[0])
    return table, tokens, mask


def csr_dense_dot_args(indptr, indices, data, dense):
    """Validate ``csr_dense_dot``; ``data`` is cast to ``dense.dtype``."""
    float_array("dense", dense)
    indptr, indices, n_rows = check_csr(indptr, indices, data)
    data = _same_float("data", data, dense.dtype)
    check_index_range("indices", indices, dense.shape[0])
    return indptr, indices, data, dense, n_rows


def csr_t_dense_dot_rows_args(indptr, indices, data, grad):
    """Validate ``csr_t_dense_dot_rows``: ``grad`` has one row per CSR row."""
    float_array("grad", grad)
    indptr, indices, n_rows = check_csr(indptr, indices, data)
    data = _same_float("data", data, grad.dtype)
    if grad.shape[0] != n_rows:
        raise ValueError(f"grad must have n_rows={n_rows} rows, got shape {tuple(grad.shape)}")
    check_index_range("indices", indices)
    return indptr, indices, data, grad, n_rows


def csr_structure(indptr, data):
    """The CSR invariants every CSR kernel relies on: ``data`` 1-D, ``indptr`` an index
    array starting at 0, ending at nnz and non-decreasing. Returns ``indptr`` as checked."""
    indptr = index_array("indptr", indptr)
    if data.ndim != 1:
        raise ValueError(f"data must be 1-D, got shape {data.shape}")
    if indptr.shape[0] < 1:
        raise ValueError("indptr must have at least one entry (n_rows + 1)")
    first, last = int(indptr[0]), int(indptr[-1])
    if first != 0 or last != data.shape[0]:
        raise ValueError(
            f"indptr must start at 0 and end at nnz={data.shape[0]}, got {first} .. {last}"
        )
    if indptr.shape[0] > 1 and bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("indptr must be non-decreasing")
    return indptr


def csr_scale_rows_args(indptr, data, grad):
    """Validate ``csr_scale_rows``: ``grad`` has one row per CSR row."""
    float_array("grad", grad)
    indptr = csr_structure(indptr, data)
    n_rows = indptr.shape[0] - 1
    if grad.shape[0] != n_rows:
        raise ValueError(f"grad must have n_rows={n_rows} rows, got shape {tuple(grad.shape)}")
    return indptr, _same_float("data", data, grad.dtype), grad


def csr_row_dots_args(indptr, data, grad, rows):
    """Validate ``csr_row_dots``: ``grad`` per CSR row, ``rows`` per stored entry."""
    indptr, data, grad = csr_scale_rows_args(indptr, data, grad)
    float_array("rows", rows)
    if rows.shape[0] != data.shape[0] or row_width(rows) != row_width(grad):
        raise ValueError(
            f"rows must have shape ({data.shape[0]}, ...) with the width of grad "
            f"{tuple(grad.shape[1:])}, got {tuple(rows.shape)}"
        )
    return indptr, data, grad, rows


def csr_gathered_dot_args(indptr, data, rows):
    """Validate ``csr_gathered_dot``: one (already gathered) row per stored entry; ``data``
    is cast to ``rows.dtype``. Returns ``(indptr, data, rows, n_rows)``."""
    float_array("rows", rows)
    indptr = csr_structure(indptr, data)
    check_same_length("data", data, "rows", rows)
    return indptr, _same_float("data", data, rows.dtype), rows, indptr.shape[0] - 1


def segment_sum_args(values, segment_ids, n_segments):
    """Validate ``segment_sum``: every id in ``[0, n_segments)``."""
    float_array("values", values)
    segment_ids = index_array("segment_ids", segment_ids)
    n_segments = int(n_segments)
    if n_segments < 0:
        raise ValueError(f"n_segments must be >= 0, got {n_segments}")
    check_same_length("segment_ids", segment_ids, "values", values)
    check_index_range("segment_ids", segment_ids, n_segments)
    return values, segment_ids, n_segments
