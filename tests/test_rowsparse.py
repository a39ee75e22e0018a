"""``mg.RowSparse`` values, the row-sparse gradient *type*, and proof that no V x D buffer
is allocated for a row-sparse gradient."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from minigrad.ops.elemwise import Elemwise


def dense_of(indices, values, shape):
    out = np.zeros(shape)
    np.add.at(out, np.asarray(indices).reshape(-1), values)
    return out


# ------------------------------------------------------------------------- the value class


@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
def test_duplicates_coalesce_to_dense_scipy(idx_dtype, rng):
    idx = np.array([3, 1, 3, 0, 3], dtype=idx_dtype)
    vals = rng.standard_normal((5, 4))
    rs = mg.RowSparse(idx, vals, (6, 4))
    assert rs.indices.dtype == np.int64 and rs.indices.shape == (5,)
    assert rs.nnz_rows == 3
    expect = dense_of(idx, vals, (6, 4))
    np.testing.assert_allclose(rs.to_dense(), expect)
    c = rs.coalesce()
    np.testing.assert_array_equal(c.indices, [0, 1, 3])
    np.testing.assert_allclose(c.values, expect[[0, 1, 3]])
    assert c.nnz_rows == 3 and c.coalesce() is c
    s = rs.to_scipy()
    assert isinstance(s, sp.csr_array) and s.shape == (6, 4)
    np.testing.assert_array_equal(np.diff(s.indptr), [4, 4, 0, 4, 0, 0])  # one row per index
    np.testing.assert_allclose(s.toarray(), expect)


def test_empty_index_array():
    rs = mg.RowSparse(np.zeros(0, dtype=np.int64), np.zeros((0, 3)), (5, 3))
    assert rs.nnz_rows == 0
    np.testing.assert_array_equal(rs.to_dense(), np.zeros((5, 3)))
    c = rs.coalesce()
    assert c.indices.shape == (0,) and c.values.shape == (0, 3)
    assert rs.to_scipy().nnz == 0 and rs.to_scipy().shape == (5, 3)
    np.testing.assert_array_equal((rs + rs).to_dense(), np.zeros((5, 3)))
    np.testing.assert_array_equal(np.ones((5, 3)) + rs, np.ones((5, 3)))


@pytest.mark.parametrize("idx_shape", [(2, 3), (2, 1, 2)])
def test_multidim_index_arrays_are_flattened(idx_shape, rng):
    idx = rng.integers(0, 4, size=idx_shape)
    vals = rng.standard_normal((idx.size, 2))
    rs = mg.RowSparse(idx, vals, (4, 2))
    assert rs.indices.shape == (idx.size,)
    np.testing.assert_allclose(rs.to_dense(), dense_of(idx, vals, (4, 2)))


def test_rank3_table(rng):
    idx = np.array([2, 0, 2])
    vals = rng.standard_normal((3, 2, 5))
    rs = mg.RowSparse(idx, vals, (4, 2, 5))
    expect = dense_of(idx, vals, (4, 2, 5))
    np.testing.assert_allclose(rs.to_dense(), expect)
    c = rs.coalesce()
    np.testing.assert_array_equal(c.indices, [0, 2])
    np.testing.assert_allclose(c.values, expect[[0, 2]])
    np.testing.assert_allclose((rs + rs).to_dense(), 2 * expect)
    with pytest.raises(ValueError, match="2-D"):
        rs.to_scipy()


def test_addition(rng):
    a = mg.RowSparse([0, 2], rng.standard_normal((2, 3)), (4, 3))
    b = mg.RowSparse([2, 3, 2], rng.standard_normal((3, 3)), (4, 3))
    s = a + b
    assert isinstance(s, mg.RowSparse) and len(s.indices) == 5  # concatenated
    np.testing.assert_allclose(s.to_dense(), a.to_dense() + b.to_dense())
    d = rng.standard_normal((4, 3))
    for r in (d + a, a + d):
        assert isinstance(r, np.ndarray)
        np.testing.assert_allclose(r, d + a.to_dense())
    d_before = d.copy()
    _ = d + a
    np.testing.assert_array_equal(d, d_before)  # the dense operand is not modified
    with pytest.raises(ValueError, match="shape"):
        a + mg.RowSparse([0], np.ones((1, 3)), (5, 3))


def test_validation():
    with pytest.raises(ValueError, match="values must have shape"):
        mg.RowSparse([0, 1], np.ones((3, 2)), (4, 2))
    with pytest.raises(IndexError, match="out of range"):
        mg.RowSparse([0, 4], np.ones((2, 2)), (4, 2))
    with pytest.raises(IndexError, match="-1"):
        mg.RowSparse([-1], np.ones((1, 2)), (4, 2))


# ------------------------------------------------------------------------ gradient types


@pytest.fixture
def table(rng):
    return mg.shared(rng.standard_normal((10, 3)), name="E")


def test_gathered_only_is_row_sparse(table, backend):
    idx = mg.lvector("idx")
    g = mg.grad((table[idx] ** 2).sum(), table)
    assert isinstance(g.type, mg.RowSparseType)
    value = mg.function([idx], g, backend=backend)(np.array([1, 4, 1]))
    assert isinstance(value, mg.RowSparse) and value.shape == (10, 3)
    E = table.get_value()
    np.testing.assert_allclose(value.to_dense(), dense_of([1, 4, 1], 2 * E[[1, 4, 1]], (10, 3)))


def test_gathered_twice_concatenates(table, backend):
    i, j = mg.lvector("i"), mg.ivector("j")
    g = mg.grad(table[i].sum() + (table[j] * 3.0).sum(), table)
    assert isinstance(g.type, mg.RowSparseType)
    value = mg.function([i, j], g, backend=backend)(np.array([1, 2]), np.array([2, 5], np.int32))
    assert isinstance(value, mg.RowSparse) and len(value.indices) == 4
    np.testing.assert_allclose(value.to_dense(),
                               dense_of([1, 2, 2, 5], [[1] * 3, [1] * 3, [3] * 3, [3] * 3],
                                        (10, 3)))


def test_also_used_densely_is_dense(table, backend):
    idx = mg.lvector("idx")
    cost = table[idx].sum() + (table ** 2).sum()
    g = mg.grad(cost, table)
    assert isinstance(g.type, mg.TensorType)
    value = mg.function([idx], g, backend=backend)(np.array([0, 0]))
    assert isinstance(value, np.ndarray)
    expect = 2 * table.get_value()
    expect[0] += 2
    np.testing.assert_allclose(value, expect)


def test_sparse_dot_is_row_sparse(table, backend):
    X = mg.csr_matrix("X")
    g = mg.grad(mg.sparse.dot(X, table).sum(), table)
    assert isinstance(g.type, mg.RowSparseType)
    Xv = sp.csr_matrix(np.array([[0, 2.0, 0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0, 3]]))
    value = mg.function([X], g, backend=backend)(Xv)
    assert isinstance(value, mg.RowSparse)
    assert set(value.coalesce().indices) == {1, 9}
    np.testing.assert_allclose(value.to_dense(), np.asarray(Xv.T @ np.ones((2, 3))))


def test_sparse_dot_and_gather_mix_stays_row_sparse(table, backend):
    X, idx = mg.csr_matrix("X"), mg.lvector("idx")
    g = mg.grad((mg.sparse.dot(X, table) ** 2).sum() + table[idx].sum(), table)
    assert isinstance(g.type, mg.RowSparseType)


def _elemwise_reads_table(fn, table):
    return [str(node.op) for node in fn.nodes
            if isinstance(node.op, Elemwise) and table in node.inputs]


def test_square_of_table_then_gather(table, backend):
    idx = mg.lvector("idx")
    cost = (table ** 2)[idx].sum() + mg.exp(table)[idx].mean()
    g = mg.grad(cost, table)
    assert isinstance(g.type, mg.RowSparseType)
    f = mg.function([idx], [cost, g], backend=backend)
    # no element-wise op ever sees the whole table: only gathered rows are squared
    assert _elemwise_reads_table(f, table) == []
    assert "<- row-sparse" in mg.debugprint(f, print_=False)
    c, value = f(np.array([3, 3, 7]))
    E = table.get_value()
    np.testing.assert_allclose(c, (E[[3, 3, 7]] ** 2).sum() + np.exp(E[[3, 3, 7]]).mean())
    expect = dense_of([3, 3, 7], 2 * E[[3, 3, 7]] + np.exp(E[[3, 3, 7]]) / 9, (10, 3))
    np.testing.assert_allclose(value.to_dense(), expect)


def test_fm_pairwise_term_never_squares_whole_table(table, backend):
    X = mg.csr_matrix("X")
    cost = 0.5 * ((mg.sparse.dot(X, table) ** 2) - mg.sparse.dot(mg.sparse.square(X),
                                                                  table ** 2)).sum()
    g = mg.grad(cost, table)
    assert isinstance(g.type, mg.RowSparseType)
    f = mg.function([X], [cost, g], backend=backend)
    assert _elemwise_reads_table(f, table) == []


# --------------------------------------------------- no V x D buffer: a 10^8-row table

N_ROWS = 10 ** 8
DENSE_BYTES = N_ROWS * 4 * 4


def _peak_bytes(fn, *args):
    tracemalloc.start()
    try:
        result = fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


@pytest.mark.parametrize("kind", ["gather", "square-then-gather", "sparse-dot"])
def test_huge_table_gradient_allocates_only_touched_rows(kind, backend):
    """A zero-stride 10^8 x 4 float32 table: a dense gradient would need 1.6 GB."""
    T = mg.matrix("T", dtype="float32")
    big = np.broadcast_to(np.float32(1.5), (N_ROWS, 4))
    if kind == "sparse-dot":
        X = mg.csr_matrix("X", dtype="float32")
        cost = (mg.sparse.dot(X, T) ** 2).sum()
        Xv = sp.csr_array((np.ones(3, np.float32), np.array([0, N_ROWS - 1, 7]),
                           np.array([0, 2, 3])), shape=(2, N_ROWS))
        inputs, args = [X, T], [Xv, big]
        warm = [sp.csr_array(np.ones((2, 20), np.float32)), big[:20]]
        expect_cost, expect_rows = 4 * 9 + 4 * 2.25, {0, 7, N_ROWS - 1}
    else:
        idx = mg.lvector("idx")
        cost = ((T ** 2)[idx] if kind == "square-then-gather" else T[idx] ** 2).sum()
        inputs, args = [T, idx], [big, np.array([5, N_ROWS - 1, 5])]
        warm = [big[:20], np.array([5, 19, 5])]
        expect_cost, expect_rows = 3 * 4 * 2.25, {5, N_ROWS - 1}
    g = mg.grad(cost, T)
    assert isinstance(g.type, mg.RowSparseType)
    fn = mg.function(inputs, [cost, g], backend=backend)
    fn(*warm)  # compile kernels outside the measurement
    fn(*args)  # and the large-table paths (a cold JIT cache would compile them here)
    peak, (c, value) = _peak_bytes(fn, *args)
    assert peak < 10 ** 6 < DENSE_BYTES, f"peak {peak} bytes"
    assert isinstance(value, mg.RowSparse) and value.shape == (N_ROWS, 4)
    np.testing.assert_allclose(c, expect_cost)
    assert set(value.coalesce().indices) == expect_rows


def test_broadcast_shared_row_times_table_then_gather(table):
    b = mg.shared(np.full((1, 3), 2.0), name="b")
    idx = mg.lvector("idx")
    gE, gb = mg.grad((table * b)[idx].sum(), [table, b])
    gE_v, gb_v = mg.function([idx], [gE, gb], backend="numpy")(np.array([4, 5]))
    gb_v = gb_v.to_dense() if isinstance(gb_v, mg.RowSparse) else gb_v
    assert gb_v.shape == (1, 3)


def test_column_broadcast_table_times_table_then_gather():
    """``(E * M)[idx]`` with ``M`` of shape (V, 1): M's gradient is row-sparse of shape
    (V, 1), its rows summed over the broadcast columns."""
    rng = np.random.default_rng(0)
    E = mg.shared(rng.standard_normal((6, 3)), name="E")
    M = mg.shared(rng.standard_normal((6, 1)), name="M")
    idx = mg.lvector("idx")
    cost = ((E * M)[idx] ** 2).sum()
    g_m = mg.grad(cost, M)
    assert isinstance(g_m.type, mg.RowSparseType)
    i = np.array([1, 4, 1])
    got = mg.function([idx], g_m)(i)
    assert got.shape == (6, 1)
    e, m = E.get_value(), M.get_value()
    expected = np.zeros((6, 1))
    for r in i:
        expected[r, 0] += np.sum(2 * (e[r] * m[r]) * e[r])
    np.testing.assert_allclose(got.to_dense(), expected, rtol=1e-12)
