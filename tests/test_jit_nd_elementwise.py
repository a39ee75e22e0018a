"""The jit linker's binary helpers and ``broadcast_to`` on rank-3/4 arrays
(``kernels/cpu/nd_elementwise.py``: a loop over output rows instead of Numba's N-d ufunc
loop nest, which took 12-17 s of LLVM time to compile at rank 4) give NumPy's values,
bitwise, with its broadcasting, dtypes and errors. Each signature is one cold compile
(~0.5 s), so the cases share a few signatures."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the jit helpers are Numba functions")
from kernels.cpu import jit_ops  # noqa: E402

RNG = np.random.default_rng(0)


def _f64(*shape):
    return RNG.normal(size=shape)


#: (a, b) pairs of one signature, float64 rank 3 C-contiguous: every broadcasting pattern
#: of an axis (equal, 1 on either side, both 1), the last axis included, and a zero size
PAIRS_3D = [
    (_f64(2, 3, 4), _f64(2, 3, 4)),
    (_f64(2, 1, 4), _f64(1, 3, 4)),
    (_f64(2, 3, 1), _f64(2, 3, 5)),
    (_f64(1, 1, 1), _f64(2, 3, 4)),
    (_f64(2, 3, 4), _f64(2, 1, 1)),
    (_f64(2, 0, 4), _f64(2, 1, 4)),
]


@pytest.mark.parametrize("name", ["multiply", "true_divide", "less"])
def test_binary_helpers_equal_numpy_on_rank3_broadcasting(name):
    helper, ufunc = getattr(jit_ops, name), getattr(np, name)
    for a, b in PAIRS_3D:
        got, want = helper(a, b), ufunc(a, b)
        assert got.dtype == want.dtype and got.shape == want.shape, (a.shape, b.shape)
        np.testing.assert_array_equal(got, want)
        assert got.flags.c_contiguous


def test_rank4_strided_operands_and_mixed_dtypes():
    a = _f64(3, 4, 2, 5).transpose(2, 0, 3, 1)  # (2, 3, 5, 4), not contiguous
    b = _f64(2, 1, 5, 1)
    np.testing.assert_array_equal(jit_ops.multiply(a, b), a * b)
    i = RNG.integers(-5, 5, size=(2, 3, 1, 4)).astype(np.int32)
    f = _f64(1, 3, 5, 4).astype(np.float32)
    got, want = jit_ops.add(i, f), np.add(i, f)
    assert got.dtype == want.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_shapes_that_do_not_broadcast_raise():
    with pytest.raises(ValueError):
        jit_ops.multiply(_f64(2, 3, 4), _f64(2, 2, 4))
    with pytest.raises(ValueError):
        jit_ops.multiply(_f64(2, 3, 4), _f64(2, 3, 3))


def test_broadcast_to_copies_numpy_broadcast_to():
    for g, shape in [(_f64(1, 3, 1, 2), (4, 3, 5, 2)), (_f64(3, 1, 2, 1), (3, 2, 2, 4)),
                     (_f64(2, 3, 4, 5), (2, 3, 4, 5))]:
        got = jit_ops.broadcast_to(g, shape)
        np.testing.assert_array_equal(got, np.broadcast_to(g, shape))
        assert got.flags.c_contiguous and not np.shares_memory(got, g)
    with pytest.raises(ValueError):
        jit_ops.broadcast_to(_f64(1, 3, 2, 2), (4, 3, 5, 2))


def test_scalars_and_low_ranks_keep_the_ufunc():
    """Below rank 3 (and with a scalar) the helper is the ufunc itself."""
    a, b = _f64(3, 4), _f64(1, 4)
    np.testing.assert_array_equal(jit_ops.multiply(a, b), a * b)
    x = _f64(2, 3, 4)
    np.testing.assert_array_equal(jit_ops.multiply(x, 2.5), x * 2.5)


def test_transpose_is_numpys_view_and_errors():
    """``jit_ops.transpose`` checks the axes itself and permutes shape and strides (a
    view, as ``np.transpose``), on contiguous and strided arrays, negative axes too."""
    x = _f64(2, 3, 4)
    for a in (x, x[:, ::2, 1:]):
        for axes in [(1, 2, 0), (2, 0, 1), (0, 1, 2), (-1, 0, -2)]:
            got, want = jit_ops.transpose(a, axes), np.transpose(a, axes)
            assert got.shape == want.shape and got.strides == want.strides, axes
            assert np.shares_memory(got, a)
            np.testing.assert_array_equal(got, want)
    for bad in [(0, 0, 1), (0, 1, 3), (0, 1, -4)]:
        with pytest.raises(ValueError):
            jit_ops.transpose(x, bad)
