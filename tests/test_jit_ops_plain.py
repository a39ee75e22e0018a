"""The rank-specialised plain-loop helpers of ``kernels/cpu/jit_ops.py`` (small to compile,
used by the jit segments instead of NumPy's generic forms in Numba) give bitwise the
result of an in-order loop (what Numba's ``np.sum(axis)`` computes), NumPy's values for
transposes and broadcasts, on C and non-contiguous inputs, and refuse bad shapes."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the helpers are Numba functions")

from kernels.cpu import jit_ops as J  # noqa: E402


def _in_order_sum(a, axis):
    out = np.zeros(a.shape[1 - axis], dtype=a.dtype)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            k = j if axis == 0 else i
            out[k] = out[k] + a[i, j]
    return out


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sums_are_the_in_order_sums(layout, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 33)).astype(dtype)
    a = np.asfortranarray(a) if layout == "F" else a
    for axis in (0, 1):
        want = _in_order_sum(a, axis)
        assert J.sum_axis_2d(a, axis).tobytes() == want.tobytes()
        keep = J.sum_keep_2d(a, axis)
        assert keep.shape == np.sum(a, axis=axis, keepdims=True).shape
        assert keep.ravel().tobytes() == want.tobytes()


def test_transpose_expand_and_broadcast_equal_numpy():
    a = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(J.transpose_2d(a), a.T)
    v = np.arange(4.0)
    for axis in (0, 1):
        np.testing.assert_array_equal(J.expand_dims_1d(v, axis), np.expand_dims(v, axis))
        np.testing.assert_array_equal(J.expand_dims_1d(a[:, 1], axis),
                                      np.expand_dims(a[:, 1], axis))
    np.testing.assert_array_equal(J.broadcast_1d(np.array([2.5]), 3), np.full(3, 2.5))
    np.testing.assert_array_equal(J.broadcast_1d(v, 4), v)
    for g in (np.ones((1, 4)), np.arange(3.0).reshape(3, 1), a, np.ones((1, 1))):
        np.testing.assert_array_equal(J.broadcast_2d(g, 3, 4), np.broadcast_to(g, (3, 4)))
    for g in (v, np.array([7.0])):
        np.testing.assert_array_equal(J.broadcast_row(g, 3, 4), np.broadcast_to(g, (3, 4)))


def test_bad_broadcasts_raise():
    with pytest.raises(ValueError):
        J.broadcast_1d(np.ones(2), 3)
    with pytest.raises(ValueError):
        J.broadcast_2d(np.ones((2, 4)), 3, 4)
    with pytest.raises(ValueError):
        J.broadcast_row(np.ones(3), 2, 4)


#: (dtype, layout) pairs: each is a compile, so each layout once
_FINITE_CASES = [("float32", "C"), ("float64", "F"), ("float32", "strided"), ("float64", "vector")]


@pytest.mark.parametrize("dtype,layout", _FINITE_CASES)
def test_all_finite_is_numpys_isfinite_all(dtype, layout):
    """``nan_guard=True``'s check (an OR of flags over the whole array, no early exit):
    every position of a NaN or an inf is found, in C, Fortran and strided arrays; values
    at the dtype's maximum are finite."""
    big = np.finfo(dtype).max
    base = np.full((5, 13), big, dtype=dtype)
    base[::2] = -big
    view = {"C": lambda a: a, "F": np.asfortranarray, "strided": lambda a: a[:, ::3],
            "vector": lambda a: a[2]}[layout]
    assert J.all_finite(view(base.copy()))
    for bad in (np.nan, np.inf, -np.inf):
        for pos in [(0, 0), (2, 6), (4, 12), (2, 9)]:
            a = base.copy()
            a[pos] = bad
            v = view(a)
            assert J.all_finite(v) == bool(np.isfinite(v).all()), (bad, pos)
