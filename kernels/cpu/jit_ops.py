"""Numba helpers called by the *generated* whole-phase functions of the jit linker
(``minigrad/linker_jit.py``; the source emitters are in ``minigrad/backends/numba_jit.py``).

Every helper here is an ``@njit`` function on raw arrays, meant to be called from other
compiled code only: they do not validate what the emitted code has already checked, and
where a check belongs to them (a label out of range, a token id out of range) they raise
a constant-message exception. The Python side of the linker catches any exception of a
compiled segment and re-runs that segment's nodes through their Python thunks, so the
user sees the exact error the reference backend gives; the compiled code only has to
stop *before* reading out of bounds.

Each helper repeats the arithmetic order of the NumPy reference where that is cheap
(sums in index order, one rounding to the output dtype), so most results are bitwise
equal to ``backend="numpy"``; ``np.exp``/``np.log`` of Numba and of NumPy may differ in
the last unit.
"""
import numpy as np
from numba.core import cgutils, types
from numba.core.imputils import impl_ret_borrowed
from numba.cpython.unsafe.tuple import tuple_setitem
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from kernels.cpu.deferred_cache import njit
from kernels.cpu.fused import _distinct_in_order, _scatter_grad_rows, _scatter_sums_rows
from kernels.cpu.fused import _reset as _reset_slots
from kernels.cpu.nd_elementwise import broadcast_copy, elementwise
from kernels.cpu.optim import _PREFETCH_DISTANCE as _DRIVER_PREFETCH_ROWS
from kernels.cpu.rows import _not_finite
from kernels.cpu.update_driver import PREFETCH_MIN_BYTES as _DRIVER_PREFETCH_BYTES
from kernels.cpu.update_driver import _restore as _driver_restore
from kernels.cpu.update_driver import dense_adam as _dense_adam
from kernels.cpu.update_driver import lazy_adam as _lazy_adam
from kernels.cpu.update_driver import momentum_plain as _momentum_plain
from kernels.cpu.update_driver import rows_lag as _driver_rows_lag

_OPTS = dict(cache=True, nogil=True, error_model="numpy")


@njit(**_OPTS)
def sigmoid(x):
    """``1 / (1 + exp(-x))`` computed as the reference does (exp of a non-positive
    number only), in ``x``'s dtype; arrays of any rank (elementwise) and scalars."""
    e = np.exp(-np.abs(x))
    one = e - e + 1  # 1 in e's dtype (a float literal would promote float32 to float64)
    return np.where(x >= 0, one / (one + e), e / (one + e))


@njit(**_OPTS)
def sigmoid_scalar(x):
    e = np.exp(-np.abs(x))
    one = e - e + 1
    if x >= 0:
        return one / (one + e)
    return e / (one + e)


@njit(**_OPTS)
def index_in_range(idx, n_rows):
    """``True`` when every entry of ``idx`` (any rank) is in ``[0, n_rows)``."""
    flat = idx.ravel()
    for i in range(flat.shape[0]):
        if flat[i] < 0 or flat[i] >= n_rows:
            return False
    return True


@njit(**_OPTS)
def csr_scale_rows(indptr, data, grad):
    """``out[k] = data[k] * grad[row of k]`` for a ``(batch, D)`` ``grad``."""
    out = np.empty((data.shape[0], grad.shape[1]), dtype=grad.dtype)
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            w = data[k]
            for j in range(grad.shape[1]):
                out[k, j] = w * grad[r, j]
    return out


@njit(**_OPTS)
def csr_scale_rows_1d(indptr, data, grad):
    """``out[k] = data[k] * grad[row of k]`` for a ``(batch,)`` ``grad``."""
    out = np.empty(data.shape[0], dtype=grad.dtype)
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            out[k] = data[k] * grad[r]
    return out


@njit(**_OPTS)
def coalesce_stable(indices, values):
    """Rows sharing an index summed in their order of appearance (as the reference's
    ``slot_coalesce_rows`` adds them): ``(sorted unique int64, summed rows)``."""
    n = indices.shape[0]
    order = np.argsort(indices, kind="mergesort")
    n_unique = 0
    for i in range(n):
        if i == 0 or indices[order[i]] != indices[order[i - 1]]:
            n_unique += 1
    unique = np.empty(n_unique, dtype=np.int64)
    out = np.zeros((n_unique, values.shape[1]), dtype=values.dtype)
    u = -1
    for i in range(n):
        k = order[i]
        if i == 0 or indices[k] != indices[order[i - 1]]:
            u += 1
            unique[u] = indices[k]
        for d in range(values.shape[1]):
            out[u, d] += values[k, d]
    return unique, out


@njit(**_OPTS)
def log_softmax_rows(x):
    """``x - logsumexp(x, axis=-1, keepdims=True)`` of a matrix, as ``ops/nn.py`` does
    (the row maximum, NaN-propagating, replaced by 0 when not finite)."""
    n, k = x.shape
    out = np.empty((n, k), dtype=x.dtype)
    zero = np.zeros(1, dtype=x.dtype)[0]
    for r in range(n):
        m = x[r, 0]
        for j in range(1, k):
            if np.isnan(m):
                break
            if np.isnan(x[r, j]) or x[r, j] > m:
                m = x[r, j]
        if not np.isfinite(m):
            m = zero
        s = zero
        for j in range(k):
            s += np.exp(x[r, j] - m)
        lse = np.log(s) + m
        for j in range(k):
            out[r, j] = x[r, j] - lse
    return out


@njit(**_OPTS)
def labels_ok(labels, n_rows, n_classes):
    """``0``: fine; ``1``: wrong count; ``2``: a label out of range (checked before use)."""
    if labels.shape[0] != n_rows:
        return 1
    for i in range(labels.shape[0]):
        if labels[i] < 0 or labels[i] >= n_classes:
            return 2
    return 0


@njit(**_OPTS)
def pick_columns(x, labels):
    out = np.empty(x.shape[0], dtype=x.dtype)
    for r in range(x.shape[0]):
        out[r] = x[r, labels[r]]
    return out


@njit(**_OPTS)
def pick_columns_grad(n_rows, n_cols, labels, gz, dtype_like):
    """Zeros of ``(n_rows, n_cols)`` with ``gz[r]`` at ``(r, labels[r])`` (last one wins,
    as NumPy's fancy assignment; labels are unique per row anyway)."""
    out = np.zeros((n_rows, n_cols), dtype=dtype_like.dtype)
    for r in range(n_rows):
        out[r, labels[r]] = gz[r]
    return out


@njit(**_OPTS)
def bag_of_words(tokens, mask, n_rows, dtype_like):
    """``(data, indices, indptr)`` of the CSR bag of the real (mask != 0) tokens, in row
    order; ``indices`` and ``indptr`` int64. Raises on a real token out of range."""
    batch, length = tokens.shape
    nnz = 0
    for b in range(batch):
        for j in range(length):
            if mask[b, j] != 0:
                t = tokens[b, j]
                if t < 0 or t >= n_rows:
                    raise IndexError("token id out of range")
                nnz += 1
    data = np.empty(nnz, dtype=dtype_like.dtype)
    indices = np.empty(nnz, dtype=np.int64)
    indptr = np.zeros(batch + 1, dtype=np.int64)
    k = 0
    for b in range(batch):
        for j in range(length):
            if mask[b, j] != 0:
                data[k] = mask[b, j]
                indices[k] = tokens[b, j]
                k += 1
        indptr[b + 1] = k
    return data, indices, indptr


@njit(**_OPTS)
def sum_keep_1d(a):
    """``a.sum(keepdims=True)`` of a vector: a length-1 vector."""
    out = np.empty(1, dtype=a.dtype)
    out[0] = np.sum(a)
    return out


@njit(**_OPTS)
def csr_gathered_dot(indptr, data, rows):
    """``out[i] = sum over k in row i of data[k] * rows[k]`` for ``(nnz, D)`` rows."""
    n = indptr.shape[0] - 1
    out = np.zeros((n, rows.shape[1]), dtype=rows.dtype)
    for r in range(n):
        for k in range(indptr[r], indptr[r + 1]):
            w = data[k]
            for j in range(rows.shape[1]):
                out[r, j] += w * rows[k, j]
    return out


@njit(**_OPTS)
def csr_gathered_dot_1d(indptr, data, rows):
    """``out[i] = sum over k in row i of data[k] * rows[k]`` for ``(nnz,)`` rows."""
    n = indptr.shape[0] - 1
    out = np.zeros(n, dtype=rows.dtype)
    for r in range(n):
        for k in range(indptr[r], indptr[r + 1]):
            out[r] += data[k] * rows[k]
    return out


# --- one cached helper per NumPy function the generated segments use ----------------------
# Numba compiles the implementation of ``np.sum(a, axis)``, ``np.zeros(shape, dtype)``, a
# ufunc on arrays, ... afresh inside every function that uses it, and does not cache that
# work across processes. Called through these helpers (each cached on disk per signature),
# a new segment only types and links calls: its compile is several times shorter. ``like``
# is a zero-length array giving a dtype (Numba cannot take a dtype object as an argument).


@njit(**_OPTS)
def add(a, b):
    return elementwise(np.add, a, b)


@njit(**_OPTS)
def subtract(a, b):
    return elementwise(np.subtract, a, b)


@njit(**_OPTS)
def multiply(a, b):
    return elementwise(np.multiply, a, b)


@njit(**_OPTS)
def true_divide(a, b):
    return elementwise(np.true_divide, a, b)


@njit(**_OPTS)
def power(a, b):
    return elementwise(np.power, a, b)


@njit(**_OPTS)
def maximum(a, b):
    return elementwise(np.maximum, a, b)


@njit(**_OPTS)
def minimum(a, b):
    return elementwise(np.minimum, a, b)


@njit(**_OPTS)
def less(a, b):
    return elementwise(np.less, a, b)


@njit(**_OPTS)
def less_equal(a, b):
    return elementwise(np.less_equal, a, b)


@njit(**_OPTS)
def greater(a, b):
    return elementwise(np.greater, a, b)


@njit(**_OPTS)
def greater_equal(a, b):
    return elementwise(np.greater_equal, a, b)


@njit(**_OPTS)
def equal(a, b):
    return elementwise(np.equal, a, b)


@njit(**_OPTS)
def not_equal(a, b):
    return elementwise(np.not_equal, a, b)


@njit(**_OPTS)
def negative(a):
    return np.negative(a)


@njit(**_OPTS)
def absolute(a):
    return np.abs(a)


@njit(**_OPTS)
def sign(a):
    return np.sign(a)


@njit(**_OPTS)
def exp(a):
    return np.exp(a)


@njit(**_OPTS)
def log(a):
    return np.log(a)


@njit(**_OPTS)
def log1p(a):
    return np.log1p(a)


@njit(**_OPTS)
def sqrt(a):
    return np.sqrt(a)


@njit(**_OPTS)
def square(a):
    return np.square(a)


@njit(**_OPTS)
def tanh(a):
    return np.tanh(a)


@njit(**_OPTS)
def logaddexp(a, b):
    return elementwise(np.logaddexp, a, b)


@njit(**_OPTS)
def astype(a, like):
    return a.astype(like.dtype)


@njit(**_OPTS)
def sum_all(a):
    return np.sum(a)


@njit(**_OPTS)
def sum_axis(a, axis):
    """``a.sum(axis)`` of an array of rank >= 2 (Numba: a run-time axis is fine)."""
    return np.sum(a, axis=axis)


@njit(**_OPTS)
def sum_keep(a, axis):
    """``a.sum(axis, keepdims=True)`` of an array of rank >= 2."""
    return np.expand_dims(np.sum(a, axis=axis), axis)


@njit(**_OPTS)
def expand_dims(a, axis):
    return np.expand_dims(a, axis)


@njit(**_OPTS)
def contiguous(a):
    return np.ascontiguousarray(a)


@njit(**_OPTS)
def flat(a):
    """``a`` as a contiguous vector (a view when it already is contiguous)."""
    return np.ascontiguousarray(a).reshape(a.size)


@njit(**_OPTS)
def rows_of(a, width):
    """``a`` as a contiguous ``(-1, width)`` matrix."""
    c = np.ascontiguousarray(a)
    if width == 0 or c.size % width:
        raise ValueError("cannot reshape to rows of this width")
    return c.reshape((c.size // width, width))


@njit(**_OPTS)
def reshape(a, shape):
    return np.ascontiguousarray(a).reshape(shape)


@njit(**_OPTS)
def transpose(a, axes):
    """``np.transpose(a, axes)`` (a view), ``axes`` a permutation of ``range(a.ndim)``
    (negative axes count from the end). Checked here with constant messages, then the
    view made by ``_permuted_view``: Numba's ``np.transpose`` validates through a set and
    fancy indexing, ~3 s of compile on a cold process for a call once a step."""
    n = a.ndim
    for i in range(n):
        x = axes[i] + n if axes[i] < 0 else axes[i]
        if x < 0 or x >= n:
            raise ValueError("axis is out of bounds for array of given dimension")
        for j in range(i):
            if (axes[j] + n if axes[j] < 0 else axes[j]) == x:
                raise ValueError("repeated axis in transpose")
        axes = tuple_setitem(axes, i, x)
    return _permuted_view(a, axes)


@intrinsic
def _permuted_view(typingctx, a, axes):
    """The view of ``a`` with shape and strides permuted by ``axes`` (checked by the
    caller: a permutation of ``range(a.ndim)``); the type ``array.transpose`` gives."""
    if not (isinstance(a, types.Array) and isinstance(axes, types.UniTuple)
            and isinstance(axes.dtype, types.Integer) and axes.count == a.ndim):
        return None
    result = a if a.ndim <= 1 else a.copy(layout="A")

    def codegen(context, builder, sig, args):
        ary = make_array(sig.args[0])(context, builder, args[0])
        n = sig.args[0].ndim
        perm = cgutils.unpack_tuple(builder, args[1], n)
        # shape and strides in stack arrays, read back at the run-time axes
        shape_mem = cgutils.alloca_once_value(builder, ary.shape)
        strides_mem = cgutils.alloca_once_value(builder, ary.strides)
        zero = context.get_constant(types.intp, 0)

        def pick(mem, k):
            return builder.load(builder.gep(mem, [zero, perm[k]]))

        out = make_array(sig.return_type)(context, builder)
        populate_array(out, data=ary.data,
                       shape=cgutils.pack_array(builder, [pick(shape_mem, k) for k in range(n)]),
                       strides=cgutils.pack_array(builder,
                                                  [pick(strides_mem, k) for k in range(n)]),
                       itemsize=ary.itemsize, meminfo=ary.meminfo, parent=ary.parent)
        return impl_ret_borrowed(context, builder, sig.return_type, out._getvalue())

    return result(a, axes), codegen


@njit(**_OPTS)
def broadcast_to(g, shape):
    """A fresh contiguous copy of ``g`` broadcast to ``shape`` (``np.array(broadcast_to)``),
    by rows (``nd_elementwise``: ``out[...] = g`` compiled a formatted error message)."""
    return broadcast_copy(g, shape)


@njit(**_OPTS)
def full(shape, value, like):
    out = np.empty(shape, dtype=like.dtype)
    out[...] = value
    return out


@njit(**_OPTS)
def zeros(shape, like):
    return np.zeros(shape, dtype=like.dtype)


@njit(**_OPTS)
def empty(shape, like):
    return np.empty(shape, dtype=like.dtype)


@njit(**_OPTS)
def slot_map(n):
    return np.full(n, -1, dtype=np.int32)


@njit(**_OPTS)
def arange(n):
    return np.arange(n).astype(np.int64)


@njit(**_OPTS)
def dot(a, b):
    return np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))


@njit(**_OPTS)
def take_rows(table, idx):
    """``table[idx]`` for a vector ``idx`` (rows of a table of any rank)."""
    return table[idx]


@njit(**_OPTS)
def as_int64(a):
    return a.astype(np.int64)


@njit(**_OPTS)
def shape_vector(shape):
    """A shape tuple as the int64 vector ``ops.shape.Shape`` gives."""
    out = np.empty(len(shape), dtype=np.int64)
    for i in range(len(shape)):
        out[i] = shape[i]
    return out


# --- rank-specialised forms of the above, as plain loops ---------------------------------
# NumPy's generic implementations in Numba (``np.transpose``, ``np.sum(a, axis)``,
# broadcasting assignment) carry run-time axis checks with formatted messages (unicode
# code), iterators for any rank and layout: a large body that LLVM optimises and codegens
# again inside every segment linking it. Where the emitter knows the rank, these loops do
# the same arithmetic in the same order (``np.sum(axis)`` in Numba adds each element into a
# zeroed result, every output in increasing index order) with a small body.


@njit(**_OPTS)
def sum_axis_2d(a, axis):
    """``a.sum(axis)`` of a float matrix, ``axis`` 0 or 1 (bitwise Numba's ``np.sum``)."""
    n, m = a.shape
    if axis == 0:
        out = np.zeros(m, dtype=a.dtype)
        for i in range(n):
            for j in range(m):
                out[j] += a[i, j]
        return out
    out = np.zeros(n, dtype=a.dtype)
    for i in range(n):
        s = out[i]
        for j in range(m):
            s += a[i, j]
        out[i] = s
    return out


@njit(**_OPTS)
def sum_keep_2d(a, axis):
    """``a.sum(axis, keepdims=True)`` of a float matrix, ``axis`` 0 or 1."""
    s = sum_axis_2d(a, axis)
    if axis == 0:
        return s.reshape((1, a.shape[1]))
    return s.reshape((a.shape[0], 1))


@njit(**_OPTS)
def transpose_2d(a):
    """``a.T`` (a view, as ``np.transpose`` gives)."""
    return a.T


@njit(**_OPTS)
def broadcast_1d(g, n):
    """A fresh vector of length ``n`` from a vector ``g`` of length 1 or ``n``."""
    out = np.empty(n, dtype=g.dtype)
    if g.shape[0] == n:
        for i in range(n):
            out[i] = g[i]
    elif g.shape[0] == 1:
        for i in range(n):
            out[i] = g[0]
    else:
        raise ValueError("cannot broadcast")
    return out


@njit(**_OPTS)
def broadcast_2d(g, n, m):
    """A fresh ``(n, m)`` matrix from a matrix ``g`` whose axes are 1 or ``n``/``m``."""
    gn, gm = g.shape
    if (gn != n and gn != 1) or (gm != m and gm != 1):
        raise ValueError("cannot broadcast")
    out = np.empty((n, m), dtype=g.dtype)
    for i in range(n):
        r = i if gn == n else 0
        for j in range(m):
            out[i, j] = g[r, j if gm == m else 0]
    return out


@njit(**_OPTS)
def broadcast_row(g, n, m):
    """A fresh ``(n, m)`` matrix from a vector ``g`` of length 1 or ``m`` (its rows)."""
    gm = g.shape[0]
    if gm != m and gm != 1:
        raise ValueError("cannot broadcast")
    out = np.empty((n, m), dtype=g.dtype)
    for i in range(n):
        for j in range(m):
            out[i, j] = g[j if gm == m else 0]
    return out


@njit(**_OPTS)
def expand_dims_1d(a, axis):
    """``np.expand_dims`` of a vector, ``axis`` 0 or 1 (a view when ``a`` is contiguous)."""
    c = np.ascontiguousarray(a)
    if axis == 0:
        return c.reshape((1, c.shape[0]))
    return c.reshape((c.shape[0], 1))


@njit(**_OPTS)
def put_row(dst, i, src):
    """``dst[i, :] = src`` (the values of product ``i`` of a fused CSR pass)."""
    for k in range(src.shape[0]):
        dst[i, k] = src[k]


@njit(**_OPTS)
def put_grad(dst, i, g):
    """``dst[i] = g`` for a ``(n, D)`` or ``(n, 1)`` ``g`` (broadcast over ``D``)."""
    n, width = dst.shape[1], dst.shape[2]
    if g.shape[1] == width:
        for r in range(n):
            for d in range(width):
                dst[i, r, d] = g[r, d]
    else:
        for r in range(n):
            for d in range(width):
                dst[i, r, d] = g[r, 0]


@njit(**_OPTS)
def values_vector(values, like):
    """A tuple of numbers as a vector of ``like``'s dtype."""
    out = np.empty(len(values), dtype=like.dtype)
    for i in range(len(values)):
        out[i] = values[i]
    return out


@njit(**_OPTS)
def same_pattern(indptr_a, indices_a, indptr_b, indices_b):
    """Whether two CSR batches store the same positions (the same arrays, or equal ones)."""
    if indptr_a.shape[0] != indptr_b.shape[0] or indices_a.shape[0] != indices_b.shape[0]:
        return False
    if indptr_a.ctypes.data == indptr_b.ctypes.data and (
            indices_a.ctypes.data == indices_b.ctypes.data):
        return True
    for r in range(indptr_a.shape[0]):
        if indptr_a[r] != indptr_b[r]:
            return False
    for k in range(indices_a.shape[0]):
        if indices_a[k] != indices_b[k]:
            return False
    return True


# --- the row updates of a training step inside its compiled call (minigrad/fused_step.py) --
# Wrappers of the update driver's loops (kernels/cpu/update_driver.py), so that a generated
# step calls them through addresses like every helper here: the same loops with the same
# arguments as ``step_rows`` gives them, hence bitwise its results.


@njit(**_OPTS)
def rows_of_vector(a):
    """A C-contiguous vector as a table of one-element rows (a view)."""
    return a.reshape((a.shape[0], 1))


@njit(**_OPTS)
def guard_rows(table, n, guard):
    """Scratch for the old values of ``n`` rows of ``table`` (no rows when unguarded)."""
    return np.empty((n if guard else 0, table.shape[1]), dtype=table.dtype)


@njit(**_OPTS)
def update_status():
    """``(rows written, bad position)`` of one row update (``update_driver.step_rows``)."""
    status = np.zeros(2, dtype=np.int64)
    status[1] = -1
    return status


@njit(**_OPTS)
def _update_prefetch(table):
    return _DRIVER_PREFETCH_ROWS if table.size * table.itemsize > _DRIVER_PREFETCH_BYTES else 0


@njit(**_OPTS)
def step_momentum_rows(P, B, idx, G, t, hyper, mu, damp, nesterov, guard, SP, SB, status):
    """SGD / momentum on rows ``idx`` (lazy mode; ``mu == 0``: ``B`` is not read)."""
    return _momentum_plain(P, B, idx, idx, G, t, False, hyper[0], mu, damp, nesterov,
                           hyper[1], _update_prefetch(P), guard, SP, SB, idx, status)


@njit(**_OPTS)
def step_adam_rows(P, M, V, idx, G, t, hyper, b1, b2, eps, decoupled, guard, SP, SM, SV,
                   status):
    """Lazy Adam (``torch.optim.SparseAdam``'s formula) on rows ``idx``."""
    return _lazy_adam(P, M, V, idx, G, t, hyper[0], b1, b2, eps, hyper[1], decoupled,
                      _update_prefetch(P), guard, SP, SM, SV, status)


@njit(**_OPTS)
def restore_rows(P, A, B, idx, SP, SA, SB, status):
    """The rows one guarded update wrote (``status[0]`` of them) back from its scratch (an
    empty scratch: a table the update does not have)."""
    _driver_restore(P, A, B, idx, idx, SP, SA, SB, idx, status[0], False)


@njit(**_OPTS)
def guard_last(n, guard):
    """Scratch for the old ``last`` of ``n`` rows (no rows when unguarded)."""
    return np.empty(n if guard else 0, dtype=np.int64)


@njit(**_OPTS)
def all_finite(a):
    """Whether every value of float array ``a`` is finite (``nan_guard=True``'s check).

    The flags of the whole array are OR-ed with no early exit (``rows._not_finite``, an
    integer reduction): that loop vectorises, where ``a.flat`` with an early return ran
    value by value (1,281 x 64 float32, the embedding step's gradient: 45 us against 4
    us). A non-contiguous ``a`` is copied first (the check runs before any write)."""
    f = flat(a)
    bad = False
    for i in range(f.shape[0]):
        bad |= _not_finite(f[i])
    return not bad


@njit(**_OPTS)
def table_lags(last, t):
    """``CatchUpAll``'s test: whether a row of an exact-mode table at step ``t`` lags."""
    if t < 1:
        return False
    for r in range(last.shape[0]):
        if last[r] < t:
            return True
    return False


@njit(**_OPTS)
def rows_lag(last, idx, t):
    """Whether a row ``idx`` of an exact-mode update at step ``t`` has a step to catch
    up (``update_driver.rows_lag``, ``step_rows``' check)."""
    return _driver_rows_lag(last, idx, t)


@njit(**_OPTS)
def step_exact_adam_rows(P, M, V, L, idx, G, t, hyper, b1, b2, eps, decoupled, guard, SP, SM,
                         SV, SL, status):
    """Exact-mode Adam (``torch.optim.Adam``'s formula) on rows ``idx``, none of which
    lags (:func:`rows_lag`), and ``last[r] = t``."""
    return _dense_adam(P, M, V, L, idx, G, t, hyper[0], b1, b2, eps, hyper[1], decoupled,
                       _update_prefetch(P), guard, SP, SM, SV, SL, status)


@njit(**_OPTS)
def step_exact_momentum_rows(P, B, L, idx, G, t, hyper, mu, damp, nesterov, guard, SP, SB, SL,
                             status):
    """Exact-mode SGD / momentum on rows ``idx``, none of which lags, and ``last[r] = t``."""
    return _momentum_plain(P, B, L, idx, G, t, True, hyper[0], mu, damp, nesterov, hyper[1],
                           _update_prefetch(P), guard, SP, SB, SL, status)


@njit(**_OPTS)
def restore_exact_rows(P, A, B, L, idx, SP, SA, SB, SL, status):
    """:func:`restore_rows` of an exact-mode update: ``last`` too."""
    _driver_restore(P, A, B, L, idx, SP, SA, SB, SL, status[0], True)


@njit(**_OPTS)
def scatter_grad_any_order(indptr, indices, data, grad, factor, use_factor, out_width, slot):
    """``fused._scatter_grad`` with its rows in order of first appearance, not sorted:
    for a gradient only a step's own row update reads (the sort of the distinct columns
    was ~a tenth of the FM step)."""
    uniq = _distinct_in_order(indices, slot)
    values = _scatter_grad_rows(indptr, indices, data, grad, factor, use_factor, out_width,
                                slot, uniq.shape[0])
    _reset_slots(uniq, slot)
    return uniq, values


@njit(**_OPTS)
def scatter_sums_any_order(indptr, indices, datas, grads, coefs, powers, table, slot):
    """``fused._scatter_sums`` with its rows in order of first appearance (as above)."""
    uniq = _distinct_in_order(indices, slot)
    values = _scatter_sums_rows(indptr, indices, datas, grads, coefs, powers, table, slot,
                                uniq.shape[0])
    _reset_slots(uniq, slot)
    return uniq, values
