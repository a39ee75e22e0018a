"""``gather_lagging`` (the one-pass gather behind ``FreshTake``): the Numba version equals
the NumPy definition, on every table count, with repeated, lagging and up-to-date rows,
bad indices reported by position, and nothing written to the tables."""
from __future__ import annotations

import numpy as np
import pytest

from kernels.reference.fresh import gather_lagging as reference

cpu = pytest.importorskip("kernels.cpu.fresh", reason="Numba not installed")


def _tables(n_tables, dtype, rng, V=50, width=3):
    return [np.ascontiguousarray(rng.standard_normal((V, width)).astype(dtype))
            for _ in range(n_tables)]


@pytest.mark.parametrize("n_tables", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_equals_reference(n_tables, dtype):
    rng = np.random.default_rng(n_tables)
    tables = _tables(n_tables, dtype, rng)
    last = rng.integers(0, 10, size=50).astype(np.int64)
    flat = np.array([3, 7, 3, 49, 0, 12, 7, 30], dtype=np.int64)  # repeats included
    before = [a.copy() for a in tables], last.copy()
    want = reference(tables, last, flat, 6)
    got = cpu.gather_lagging(tables, last, flat, 6)
    assert got[0] == want[0] == -1
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    assert len(got[3]) == len(want[3]) == n_tables
    for g, w in zip(got[3], want[3]):
        assert g.flags.c_contiguous
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got[4], want[4])
    np.testing.assert_array_equal(want[2], (last[flat] < 6).nonzero()[0])  # not vacuous
    assert 0 < want[2].shape[0] < flat.shape[0]
    for a, b in zip(tables, before[0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(last, before[1])


@pytest.mark.parametrize("impl", [reference, cpu.gather_lagging], ids=["numpy", "numba"])
@pytest.mark.parametrize("flat,bad", [([1, 50, -1], 1), ([-3, 2], 0), ([4, 2, 60], 2)])
def test_bad_index_reported_by_position(impl, flat, bad):
    tables = _tables(2, np.float64, np.random.default_rng(0))
    got = impl(tables, np.zeros(50, dtype=np.int64), np.array(flat, dtype=np.int64), 3)
    assert got[0] == bad and got[1] is None


@pytest.mark.parametrize("impl", [reference, cpu.gather_lagging], ids=["numpy", "numba"])
def test_empty_and_nothing_lagging(impl):
    tables = _tables(3, np.float32, np.random.default_rng(0))
    last = np.full(50, 5, dtype=np.int64)
    bad, out, pos, sub, sub_last = impl(tables, last, np.zeros(0, dtype=np.int64), 5)
    assert bad == -1 and out.shape == (0, 3) and pos.shape == (0,)
    bad, out, pos, sub, sub_last = impl(tables, last, np.array([2, 9]), 5)
    np.testing.assert_array_equal(out, tables[0][[2, 9]])
    assert pos.shape == (0,) and all(s.shape == (0, 3) for s in sub)


def test_large_table_prefetch_path():
    """Above the prefetch threshold (8 MiB) the loop asks for rows ahead: same result."""
    rng = np.random.default_rng(3)
    V = 40_000
    tables = [rng.standard_normal((V, 64)).astype(np.float32) for _ in range(3)]
    last = rng.integers(0, 4, size=V).astype(np.int64)
    flat = rng.integers(0, V, size=500).astype(np.int64)
    want, got = reference(tables, last, flat, 2), cpu.gather_lagging(tables, last, flat, 2)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    for g, w in zip(got[3], want[3]):
        np.testing.assert_array_equal(g, w)
