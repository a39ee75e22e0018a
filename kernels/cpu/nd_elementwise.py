"""Binary ufuncs and ``broadcast_to`` on arrays of rank 3 and more, cheap to compile.

Numba lowers ``np.multiply(a, b)`` of two N-d arrays to one loop nest with a broadcasting
test per axis and operand; LLVM's optimiser then takes time exponential in the rank
(``np.multiply`` of two float64 arrays, cold, CPU: rank 2 0.5 s, rank 3 2 s, rank 4
12-17 s; at ``NUMBA_OPT=0`` rank 4 takes 0.6 s). ``out[...] = g`` (a broadcasting copy)
compiles Numba's formatted shape-mismatch message, ~3 s. The jit linker's helpers
(``kernels/cpu/jit_ops.py``) meet such arrays in any graph with rank-3/4 values (the op
table's ``expand_dims-many`` case spent 32 s of its 39 s first call in two multiplies).

Here the same results come from a loop over the output's rows (its last axis): each row
is one 1-D ufunc call (``ufunc(a_row, b_row, out_row)``; a length-1 row broadcasts) on
C-contiguous operands, at offsets computed from the row's index. The arithmetic per
element is the ufunc's own, so values are bitwise the N-d call's. A few more nanoseconds
per row at run time; rank-3+ values are rare in the models here, compile time is not.

``elementwise(ufunc, a, b)`` is called from compiled code only; it picks at typing time:
two arrays of the same rank >= 3 take the row loop, anything else (scalars, rank <= 2,
mixed ranks) the ufunc itself.
"""
import numpy as np
from numba import types
from numba.cpython.unsafe.tuple import tuple_setitem
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from kernels.cpu.deferred_cache import njit

_OPTS = dict(cache=True, nogil=True, error_model="numpy")

#: the least rank that takes the row loop (rank 2 compiles in ~0.5 s as it is)
MIN_RANK = 3


def elementwise(ufunc, a, b):
    """``ufunc(a, b)``; compiled code only (see the module docstring)."""
    raise NotImplementedError("compiled code only")


@njit(**_OPTS)
def _with_values(shape, values):
    """``shape`` (a tuple) with its entries replaced by ``values`` (same length)."""
    for d in range(len(shape)):
        shape = tuple_setitem(shape, d, values[d])
    return shape


@njit(**_OPTS)
def _shape_vector(shape, n):
    """``shape`` as an int64 vector of length ``n``, padded with leading 1s."""
    out = np.ones(n, dtype=np.int64)
    for d in range(len(shape)):
        out[n - len(shape) + d] = shape[d]
    return out


@njit(**_OPTS)
def _row_strides(shape, out_shape):
    """Element strides of a C-contiguous array of ``shape`` read as ``out_shape`` (0 along
    a broadcast axis), or raise when the shapes do not broadcast."""
    n = out_shape.shape[0]
    strides = np.zeros(n, dtype=np.int64)
    step = 1
    for d in range(n - 1, -1, -1):
        if shape[d] == out_shape[d] and shape[d] != 1:
            strides[d] = step
        elif shape[d] != 1:
            raise ValueError("operands could not be broadcast together")
        step *= shape[d]
    return strides


@njit(**_OPTS)
def _broadcast_shape(sa, sb):
    out = np.empty(sa.shape[0], dtype=np.int64)
    for d in range(sa.shape[0]):
        if sa[d] == sb[d] or sb[d] == 1:
            out[d] = sa[d]
        elif sa[d] == 1:
            out[d] = sb[d]
        else:
            raise ValueError("operands could not be broadcast together")
    return out


@njit(**_OPTS)
def _row_offsets(o, out_shape, strides_a, strides_b):
    """The element offsets in ``a`` and ``b`` of output row ``o`` (all axes but the last)."""
    oa = ob = 0
    for d in range(out_shape.shape[0] - 2, -1, -1):
        i = o % out_shape[d]
        o //= out_shape[d]
        oa += i * strides_a[d]
        ob += i * strides_b[d]
    return oa, ob


def _loop_types(ufunc, a, b):
    """NumPy's loop for arrays of ``a``'s and ``b``'s dtypes: the scalar types of its two
    inputs and of its output (``ufunc.resolve_dtypes``). The rows are cast to the loop's
    input types first: given an ``out``, Numba would choose a loop by the output's type
    (int32 + float32 into float64 added in float32)."""
    loop = ufunc.resolve_dtypes((as_dtype(a.dtype), as_dtype(b.dtype), None))
    return tuple(d.type for d in loop)


@overload(elementwise, jit_options=dict(nogil=True, error_model="numpy"))
def _elementwise(ufunc, a, b):
    fn = ufunc.typing_key
    if not (isinstance(a, types.Array) and isinstance(b, types.Array)
            and a.ndim == b.ndim and a.ndim >= MIN_RANK):
        return lambda ufunc, a, b: fn(a, b)
    in_a, in_b, result = _loop_types(fn, a, b)
    cast_a, cast_b = in_a != as_dtype(a.dtype).type, in_b != as_dtype(b.dtype).type
    n = a.ndim

    def rows(ufunc, a, b):
        sa, sb = _shape_vector(a.shape, n), _shape_vector(b.shape, n)
        so = _broadcast_shape(sa, sb)
        ta, tb = _row_strides(sa, so), _row_strides(sb, so)
        # (``cast_a``/``cast_b`` are constants: Numba prunes the branch not taken)
        if cast_a:
            ac = np.ascontiguousarray(a).ravel().astype(in_a)
        else:
            ac = np.ascontiguousarray(a).ravel()
        if cast_b:
            bc = np.ascontiguousarray(b).ravel().astype(in_b)
        else:
            bc = np.ascontiguousarray(b).ravel()
        last, la, lb = so[n - 1], sa[n - 1], sb[n - 1]
        outer = 1
        for d in range(n - 1):
            outer *= so[d]
        out = np.empty(outer * last, dtype=result)
        for o in range(outer):
            oa, ob = _row_offsets(o, so, ta, tb)
            fn(ac[oa:oa + la], bc[ob:ob + lb], out[o * last:(o + 1) * last])
        return out.reshape(_with_values(a.shape, so))

    return rows


@njit(**_OPTS)
def broadcast_copy(g, shape):
    """A fresh C-contiguous copy of array ``g`` broadcast to ``shape`` (a tuple of at least
    ``g.ndim`` entries), ``np.array(np.broadcast_to(g, shape))``, by rows as above."""
    n = len(shape)
    if g.ndim > n:
        raise ValueError("cannot broadcast to fewer dimensions")
    so, sg = _shape_vector(shape, n), _shape_vector(g.shape, n)
    tg = _row_strides(sg, so)
    gc = np.ascontiguousarray(g).ravel()
    last, lg = so[n - 1], sg[n - 1]
    outer = 1
    for d in range(n - 1):
        outer *= so[d]
    out = np.empty(outer * last, dtype=g.dtype)
    for o in range(outer):
        og = _row_offsets(o, so, tg, tg)[0]
        base = o * last
        if lg == last:
            for j in range(last):
                out[base + j] = gc[og + j]
        else:
            for j in range(last):
                out[base + j] = gc[og]
    return out.reshape(shape)
