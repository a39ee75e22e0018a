"""Numba CPU row kernels; same names, signatures and errors as ``kernels.reference``.

Every public function validates its arguments with ``kernels._validate`` (Numba does no
bounds checking), flattens trailing dimensions so the compiled loops only see C-contiguous
2-D ``(rows, width)`` arrays, and widens indices to int64. The widening costs one copy of
the (small) index array but halves the number of JIT specialisations to compile and cache.

Parallelism (``prange``) is used only where iterations write disjoint output rows, so no
loop below has a race, and only where it measured faster on 2 cores (the row-parallel reads
of gather, bag_sum, csr_dense_dot and the run sums roughly double their speed; splitting a
scatter-add between threads made it slower).
"""

import threading

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels import _validate as V
from kernels.cpu.deferred_cache import njit

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

    The stable order comes from sorting ``key * n + position`` with ``np.sort`` (branch-free
    SIMD sort) rather than ``argsort(kind="stable")`` (timsort): 3-6x faster on a step's
    few thousand unsorted indices. Keys too large to pack fall back to the stable argsort.

    The last grouping is remembered with a copy of its keys: tables gathered by the same
    indices (an embedding and its per-word weights) coalesce with one sort, the second
    call paying only an O(n) comparison. ``unique`` is returned as a fresh array.
    """
    global _LAST_RUNS
    last_keys, last = _LAST_RUNS
    if last_keys is not None and last_keys.shape == keys.shape and np.array_equal(
        last_keys, keys
    ):
        order, starts, unique = last
        return order, starts, unique.copy()
    result = _group(keys)
    _LAST_RUNS = (keys.copy(), result)
    order, starts, unique = result
    return order, starts, unique.copy()


_LAST_RUNS = (None, None)


def _group(keys):
    """The grouping itself (see ``_sorted_runs``)."""
    n = keys.shape[0]
    top = int(keys.max()) if n else 0
    if n and int(keys.min()) >= 0 and top < (1 << 62) // max(n, 1):
        packed = keys * n + np.arange(n, dtype=np.int64)
        packed.sort()
        sorted_keys, order = np.divmod(packed, n)
    else:
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
    is_start = np.empty(sorted_keys.shape[0], dtype=np.bool_)
    is_start[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    unique = sorted_keys[starts].astype(np.int64)
    starts = np.append(starts, sorted_keys.shape[0]).astype(np.int64)
    return order.astype(np.int64, copy=False), starts, unique


# --- software prefetch ---------------------------------------------------------------------


def _prefetch_codegen(rw):
    """The ``llvm.prefetch`` of ``array[row, col]``'s cache line: ``rw=1`` asks for it in a
    state ready for writing, ``rw=0`` for reading (no exclusive ownership needed); locality 3
    keeps it in every cache level, cache type 1 is data. One codegen serves both intrinsics."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        arr = context.make_array(array_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(
            context, builder, array_type, arr, [args[1], args[2]], wraparound=False
        )
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn_type = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fn_type, "llvm.prefetch.p0i8")
        flags = [ir.Constant(i32, rw), ir.Constant(i32, 3), ir.Constant(i32, 1)]
        builder.call(fn, [builder.bitcast(ptr, i8p)] + flags)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _prefetch_for_write(typingctx, array, row, col):
    """Hint the CPU to pull ``array[row, col]``'s cache line in for writing (``llvm.prefetch``).

    A scatter-add into a table much larger than the caches stalls on every random row; asking
    for rows a few updates ahead overlaps those misses. Prefetches never fault, and the rows
    are validated indices anyway.
    """
    return types.void(array, row, col), _prefetch_codegen(1)


@intrinsic
def _prefetch_for_read(typingctx, array, row, col):
    """Ask for ``array[row, col]``'s cache line, to be read: a read writes nothing, so it
    needs no line in exclusive state (``_prefetch_for_write``)."""
    return types.void(array, row, col), _prefetch_codegen(0)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefetch_row(X, r):
    """Ask for every cache line of row ``r`` of ``X``, to be read (``r`` of any integer
    type: the intrinsic wants both indices int64)."""
    r = np.int64(r)
    for j in range(0, X.shape[1], max(1, 64 // X.itemsize)):
        _prefetch_for_read(X, r, j)


#: a CSR gather or scatter over a table (and factor) above this size asks for the rows of
#: the entry this many entries ahead: a table larger than a core's L2 has a batch's rows
#: mostly out of cache (the masked-embedding step at V = 3*10^4, 7.7 MB tables: the gather
#: took 0.65x the time with it, and 0.68x at V = 3*10^6; the E and M gradients' scatter
#: 0.72x at 3*10^6, where the gather's rows no longer stay in cache until the scatter reads
#: them; ``benchmarks.floor --vocab``)
CSR_PREFETCH_MIN_BYTES = 1 << 20
CSR_PREFETCH_ENTRIES = 16


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _csr_prefetch_distance(table):
    """How many CSR entries ahead a loop over ``table``'s rows asks for them (0: none)."""
    return CSR_PREFETCH_ENTRIES if table.size * table.itemsize > CSR_PREFETCH_MIN_BYTES else 0


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefetch_entry(indices, k, end, dist, X, Y, use_y):
    """Ask for row ``indices[k + dist]`` of ``X`` (and of ``Y`` with ``use_y``) when that
    entry exists: the CSR loops' prefetch."""
    if dist > 0 and k + dist < end:
        a = indices[k + dist]
        _prefetch_row(X, a)
        if use_y:
            _prefetch_row(Y, a)


# --- per-row helpers the optimizer loops share (kernels.cpu.optim, direct_rows, the
# update driver): inlined, so one definition costs nothing at run time -------------


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _not_finite(x):
    """``x - x`` is 0 exactly for a finite ``x`` and NaN otherwise (no branch: vectorises)."""
    return (x - x) != 0.0


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefetch_ahead(idx, i, dist, X, Y, Z):
    """Ask for row ``idx[i + dist]`` of the tables (``Y``/``Z`` may be empty stand-ins)."""
    if dist > 0 and i + dist < idx.shape[0]:
        a = idx[i + dist]
        for j in range(0, X.shape[1], max(1, 64 // X.itemsize)):
            _prefetch_for_write(X, a, j)
            if Y.shape[0] > a:
                _prefetch_for_write(Y, a, j)
            if Z.shape[0] > a:
                _prefetch_for_write(Z, a, j)


@njit(cache=True, nogil=True, error_model="numpy")
def _row_not_finite(X, r):
    """Whether row ``r`` holds a NaN or inf: ``x - x`` is 0 exactly for finite ``x`` and
    NaN otherwise. The flags are OR-ed (an integer reduction, so the scan vectorises
    without fast-math). Empty stand-ins: False."""
    if X.shape[0] <= r:
        return False
    bad = False
    for d in range(X.shape[1]):
        bad |= _not_finite(X[r, d])
    return bad


# Prefetch only when ``out`` is bigger than this (smaller tables stay in cache, where the
# extra instructions cost ~20%), and this many updates ahead (measured best of 4..32).
_PREFETCH_MIN_BYTES = 8 << 20
_PREFETCH_DISTANCE = 16


# --- compiled loops -----------------------------------------------------------------------


# Row-parallel kernels come in two parts: a serial ``*_range(lo, hi, ...)`` over output rows
# and a ``prange`` driver over chunks that calls it. Small calls (most training steps) run
# the range directly: a parallel launch costs ~75 us on the fork-safe workqueue layer, more
# than the whole job. ``_rows(...)`` below picks by the amount of work.


@njit(cache=True, nogil=True, error_model="numpy")
def _gather_range(lo, hi, table, indices, out, distance):
    width = table.shape[1]
    line = max(1, 64 // table.itemsize)
    for i in range(lo, hi):
        if distance > 0 and i + distance < hi:
            for j in range(0, width, line):
                _prefetch_for_write(table, indices[i + distance], j)
        src = table[indices[i]]
        dst = out[i]
        for j in range(width):
            dst[j] = src[j]


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _gather_chunks(n_chunks, n, table, indices, out, distance):
    for c in prange(n_chunks):
        _gather_range(c * n // n_chunks, (c + 1) * n // n_chunks, table, indices, out, distance)


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_add(out, indices, values, distance):
    """``out[indices[i]] += values[i]``, prefetching row ``indices[i + distance]`` (0: off).

    Serial on purpose: on the 2-core target, splitting the columns (or the rows) of ``out``
    between threads measured 1x to 6x *slower* than this loop. The contiguous inner loop over
    the width vectorises; prefetching the rows ahead makes large tables ~1.8x faster.
    """
    n, width = indices.shape[0], out.shape[1]
    line = max(1, 64 // out.itemsize)  # scalars per 64-byte cache line
    for i in range(n):
        if distance > 0 and i + distance < n:
            ahead = indices[i + distance]
            for j in range(0, width, line):
                _prefetch_for_write(out, ahead, j)
        dst = out[indices[i]]
        src = values[i]
        for j in range(width):
            dst[j] += src[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _sum_runs_range(lo, hi, values, order, starts, out):
    """``out[u] = sum(values[order[k]] for k in run u)``; runs are disjoint output rows."""
    width = values.shape[1]
    for u in range(lo, hi):
        dst = out[u]
        for k in range(starts[u], starts[u + 1]):
            src = values[order[k]]
            for j in range(width):
                dst[j] += src[j]


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _sum_runs_chunks(n_chunks, n, values, order, starts, out):
    for c in prange(n_chunks):
        _sum_runs_range(c * n // n_chunks, (c + 1) * n // n_chunks, values, order, starts, out)


@njit(cache=True, nogil=True, error_model="numpy")
def _weighted_sum_runs_range(lo, hi, src, src_rows, weights, order, starts, out):
    """``out[u] = sum(weights[p] * src[src_rows[p]] for p in run u)``."""
    width = src.shape[1]
    for u in range(lo, hi):
        dst = out[u]
        for k in range(starts[u], starts[u + 1]):
            p = order[k]
            w = weights[p]
            row = src[src_rows[p]]
            for j in range(width):
                dst[j] += w * row[j]


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _weighted_sum_runs_chunks(n_chunks, n, src, src_rows, weights, order, starts, out):
    for c in prange(n_chunks):
        _weighted_sum_runs_range(c * n // n_chunks, (c + 1) * n // n_chunks, src, src_rows,
                                 weights, order, starts, out)


@njit(cache=True, nogil=True, error_model="numpy")
def _bag_sum_range(lo, hi, table, tokens, mask, out):
    width = table.shape[1]
    for b in range(lo, hi):
        dst = out[b]
        for t in range(tokens.shape[1]):
            m = mask[b, t]
            if m != 0:
                row = table[tokens[b, t]]
                for j in range(width):
                    dst[j] += m * row[j]


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _bag_sum_chunks(n_chunks, n, table, tokens, mask, out):
    for c in prange(n_chunks):
        _bag_sum_range(c * n // n_chunks, (c + 1) * n // n_chunks, table, tokens, mask, out)


@njit(cache=True, nogil=True, error_model="numpy")
def _csr_dense_dot_range(lo, hi, indptr, indices, data, dense, out):
    width = dense.shape[1]
    for r in range(lo, hi):
        dst = out[r]
        for k in range(indptr[r], indptr[r + 1]):
            w = data[k]
            row = dense[indices[k]]
            for j in range(width):
                dst[j] += w * row[j]


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _csr_dense_dot_chunks(n_chunks, n, indptr, indices, data, dense, out):
    for c in prange(n_chunks):
        _csr_dense_dot_range(c * n // n_chunks, (c + 1) * n // n_chunks, indptr, indices, data,
                             dense, out)


@njit(cache=True, nogil=True, error_model="numpy")
def _csr_scale_rows(indptr, data, grad, out):
    width = grad.shape[1]
    for r in range(indptr.shape[0] - 1):
        src = grad[r]
        for k in range(indptr[r], indptr[r + 1]):
            w = data[k]
            dst = out[k]
            for j in range(width):
                dst[j] = w * src[j]


# reassociation lets LLVM vectorise the dot products (a float reduction)
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _csr_row_dots(indptr, data, grad, rows, out):
    width = grad.shape[1]
    for r in range(indptr.shape[0] - 1):
        g = grad[r]
        for k in range(indptr[r], indptr[r + 1]):
            row = rows[k]
            acc = 0.0
            for j in range(width):
                acc += g[j] * row[j]
            out[k] = data[k] * acc


@njit(cache=True, nogil=True, error_model="numpy")
def _rows_finite(table, indices):
    # branch-free inner loop (it vectorises); a failed check is rare, so no early exit
    ok = True
    for i in range(indices.shape[0]):
        row = table[indices[i]]
        for j in range(row.shape[0]):
            ok &= np.isfinite(row[j])
    return ok


#: below this many scalars touched, a kernel runs serially (see the note above)
PARALLEL_MIN_WORK = 1 << 20


#: Numba's ``workqueue`` threading layer is not re-entrant: two Python threads launching
#: parallel kernels at once abort the process ("Concurrent access"). Parallel launches take
#: this lock; serial kernels (``nogil``) still run concurrently.
PARALLEL_LAUNCH_LOCK = threading.Lock()


def _rows(kernel_range, kernel_chunks, n, work, *args):
    """Run a row kernel over ``n`` output rows, in parallel only when ``work`` pays for it."""
    if work < PARALLEL_MIN_WORK or n < 2:  # the common case: no thread query (it locks)
        kernel_range(0, n, *args)
        return
    threads = numba.get_num_threads()
    if threads < 2:
        kernel_range(0, n, *args)
    else:
        with PARALLEL_LAUNCH_LOCK:
            kernel_chunks(min(n, 4 * threads), n, *args)


def _scatter_add_2d(out2d, indices, values2d):
    """Run the scatter loop, with prefetching only for tables that overflow the caches."""
    big = out2d.nbytes > _PREFETCH_MIN_BYTES
    _scatter_add(out2d, indices, values2d, _PREFETCH_DISTANCE if big else 0)


# --- public API -----------------------------------------------------------------------------


def gather_rows(table, indices):
    """Return ``table[indices]`` as a new array of shape ``(len(indices),) + table.shape[1:]``."""
    table, indices = V.gather_args(np.asarray(table), np.asarray(indices))
    out = np.empty((indices.shape[0],) + table.shape[1:], dtype=table.dtype)
    out2d = out.reshape(out.shape[0], V.row_width(out))
    table2d = _as_2d(table)
    distance = _PREFETCH_DISTANCE if table2d.nbytes > _PREFETCH_MIN_BYTES else 0
    _rows(_gather_range, _gather_chunks, out.shape[0], out.size, table2d, _as_i64(indices),
          out2d, distance)
    return out


def gather_rows_unchecked(table, indices):
    """``gather_rows`` without argument checks, for callers that validated them already.

    Compiled minigrad code calls it after its prologue range-checked ``indices``; a C-
    contiguous float ``table`` and int64 1-D ``indices`` in range are the caller's promise
    (Numba does not bounds-check). Users call :func:`gather_rows`.
    """
    out = np.empty((indices.shape[0],) + table.shape[1:], dtype=table.dtype)
    out2d = out.reshape(out.shape[0], V.row_width(out))
    table2d = table.reshape(table.shape[0], out2d.shape[1])
    distance = _PREFETCH_DISTANCE if table2d.nbytes > _PREFETCH_MIN_BYTES else 0
    _rows(_gather_range, _gather_chunks, out.shape[0], out.size, table2d, indices, out2d,
          distance)
    return out


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
        _rows(_sum_runs_range, _sum_runs_chunks, unique.shape[0], values.size, _as_2d(values),
              order, starts, summed.reshape(unique.shape[0], -1))
    return unique, summed


@njit(cache=True, nogil=True)
def _csr_status(indptr, indices, n_cols):
    nnz = indices.shape[0]
    n_rows = indptr.shape[0] - 1
    if n_rows < 0 or indptr[0] != 0 or indptr[n_rows] != nnz:
        return -1
    canonical = True
    for r in range(n_rows):
        start, stop = indptr[r], indptr[r + 1]
        if stop < start or stop > nnz:  # checked before any read of the row
            return -1
        prev = -1
        for k in range(start, stop):
            c = indices[k]
            if c < 0 or c >= n_cols:
                return -1
            if c <= prev:
                canonical = False
            prev = c
    return 0 if canonical else 1


def csr_status(indptr, indices, n_cols):
    """One pass over a CSR matrix's structure: ``0`` valid and canonical (columns strictly
    increasing in every row), ``1`` valid but not canonical, ``-1`` malformed (``indptr``
    not from 0 to nnz or decreasing, or a column outside ``[0, n_cols)``). The input
    boundary (``CSRType.filter``) calls it once per call instead of five NumPy passes, and
    asks the NumPy checks for the message when it says ``-1``."""
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    if (indptr.ndim != 1 or indices.ndim != 1 or indptr.dtype.kind not in "iu"
            or indices.dtype.kind not in "iu"):
        return -1
    return int(_csr_status(indptr, indices, int(n_cols)))


def coalesce_rows_trusted(indices, values):
    """``coalesce_rows`` without the index scan, for compiled code whose prologue checked
    ``indices`` (int64, 1-D, in range of the table) already; ``values`` a float array with
    one row per index (checked: O(1))."""
    if values.shape[0] != indices.shape[0] or values.dtype.kind != "f":
        raise ValueError(f"{values.shape[0]} {values.dtype} value rows for "
                         f"{indices.shape[0]} indices")
    order, starts, unique = _sorted_runs(_as_i64(indices))
    summed = np.zeros((unique.shape[0],) + values.shape[1:], dtype=values.dtype)
    if unique.shape[0]:
        _rows(_sum_runs_range, _sum_runs_chunks, unique.shape[0], values.size,
              _as_2d(np.ascontiguousarray(values)), order, starts,
              summed.reshape(unique.shape[0], -1))
    return unique, summed


def bag_sum(table, tokens, mask):
    """``out[b] = sum_l mask[b, l] * table[tokens[b, l]]``; masked-out tokens are skipped."""
    table, tokens, mask = V.bag_sum_args(np.asarray(table), np.asarray(tokens), np.asarray(mask))
    out = np.zeros((tokens.shape[0],) + table.shape[1:], dtype=table.dtype)
    if out.size:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        mask = np.ascontiguousarray(mask)
        _rows(_bag_sum_range, _bag_sum_chunks, out.shape[0], tokens.size * V.row_width(table),
              _as_2d(table), tokens, mask, out.reshape(out.shape[0], -1))
    return out


def csr_dense_dot(indptr, indices, data, dense):
    """``X @ dense`` for the CSR matrix ``X = (data, indices, indptr)``; shape (n_rows, ...)."""
    indptr, indices, data, dense, n_rows = V.csr_dense_dot_args(
        np.asarray(indptr), np.asarray(indices), np.asarray(data), np.asarray(dense)
    )
    out = np.zeros((n_rows,) + dense.shape[1:], dtype=dense.dtype)
    if out.size:
        _rows(_csr_dense_dot_range, _csr_dense_dot_chunks, n_rows,
              data.shape[0] * V.row_width(dense), _as_i64(indptr), _as_i64(indices),
              np.ascontiguousarray(data), _as_2d(dense), out.reshape(n_rows, -1))
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
        _rows(_weighted_sum_runs_range, _weighted_sum_runs_chunks, unique.shape[0],
              grad.size, _as_2d(grad), row_ids, np.ascontiguousarray(data), order, starts,
              values.reshape(unique.shape[0], -1))
    return unique, values


def csr_scale_rows(indptr, data, grad):
    """``out[k] = data[k] * grad[row of entry k]``; see the reference."""
    indptr, data, grad = V.csr_scale_rows_args(np.asarray(indptr), np.asarray(data),
                                               np.asarray(grad))
    out = np.empty((data.shape[0],) + grad.shape[1:], dtype=grad.dtype)
    if out.size:
        _csr_scale_rows(_as_i64(indptr), np.ascontiguousarray(data), _as_2d(grad),
                        out.reshape(data.shape[0], -1))
    return out


def csr_row_dots(indptr, data, grad, rows):
    """``out[k] = data[k] * <grad[row of entry k], rows[k]>``; see the reference."""
    indptr, data, grad, rows = V.csr_row_dots_args(np.asarray(indptr), np.asarray(data),
                                                   np.asarray(grad), np.asarray(rows))
    out = np.empty(data.shape[0], dtype=grad.dtype)
    if out.size:
        _csr_row_dots(_as_i64(indptr), np.ascontiguousarray(data), _as_2d(grad),
                      _as_2d(rows.astype(grad.dtype, copy=False)), out)
    return out


def csr_gathered_dot(indptr, data, rows):
    """``out[i] = sum over k in row i of data[k] * rows[k]``; see the reference.

    The CSR x dense loop with the identity as column map: one pass, no temporaries.
    """
    indptr, data, rows, n_rows = V.csr_gathered_dot_args(np.asarray(indptr), np.asarray(data),
                                                         np.asarray(rows))
    out = np.zeros((n_rows,) + rows.shape[1:], dtype=rows.dtype)
    if out.size and data.shape[0]:
        identity = np.arange(data.shape[0], dtype=np.int64)
        _rows(_csr_dense_dot_range, _csr_dense_dot_chunks, n_rows,
              data.shape[0] * V.row_width(rows), _as_i64(indptr), identity,
              np.ascontiguousarray(data), _as_2d(rows), out.reshape(n_rows, -1))
    return out


def segment_sum(values, segment_ids, n_segments):
    """``out[s] = sum of values[i] with segment_ids[i] == s``; ids need not be sorted."""
    values, segment_ids, n_segments = V.segment_sum_args(
        np.asarray(values), np.asarray(segment_ids), n_segments
    )
    out = np.zeros((n_segments,) + values.shape[1:], dtype=values.dtype)
    if segment_ids.shape[0] and out.size:
        _scatter_add_2d(_as_2d(out), _as_i64(segment_ids), _as_2d(values))
    return out


def rows_finite(table, indices):
    """Whether every value in the rows ``table[indices]`` is finite (no NaN, no inf).

    The check behind ``mg.function``'s NaN policy: it runs on the rows an update has just
    written (in cache), stops at the first non-finite value and allocates nothing.
    """
    table, indices = V.gather_args(np.asarray(table), np.asarray(indices))
    if indices.shape[0] == 0 or table.size == 0:
        return True
    return bool(_rows_finite(_as_2d(table), _as_i64(indices)))
