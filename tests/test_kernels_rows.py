"""Parity tests for the row kernels: reference, cpu (Numba) and gpu (CuPy) against NumPy.

Each kernel has one property test run on every implementation and compared with an
independent plain-NumPy / SciPy oracle (never with another implementation under test).
Index arrays come from hypothesis: duplicates, empty, unsorted, the max valid index,
int32 and int64; values are float32 or float64; tables have rank 2 or 3.
"""

import importlib
from functools import lru_cache

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

IMPLS = ["reference", "cpu", pytest.param("gpu", marks=pytest.mark.gpu)]
FLOATS = [np.float32, np.float64]
INTS = [np.int32, np.int64]
TRAILING = [(3,), (1,), (2, 3)]  # rank-2 tables (width 3 and 1) and a rank-3 table

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Impl:
    """An implementation module plus host<->device conversion for its arrays."""

    def __init__(self, name):
        self.name = name
        self.mod = importlib.import_module(f"kernels.{name}")
        if name == "gpu":
            import cupy

            self.dev, self.host = cupy.asarray, cupy.asnumpy
        else:
            self.dev, self.host = (lambda a: a), np.asarray


@lru_cache(maxsize=None)
def _load(name):
    return Impl(name)


@pytest.fixture(scope="module", params=IMPLS)
def impl(request):
    """The implementation under test; gpu is skipped with the import error as reason."""
    try:
        return _load(request.param)
    except ImportError as exc:
        pytest.skip(f"kernels.{request.param} unavailable: {exc}")


def _tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}


def _random(seed, shape, dtype):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@st.composite
def row_cases(draw, min_rows=1):
    """(table, indices): a float table of rank 2 or 3 and in-range 1-D indices."""
    dtype = draw(st.sampled_from(FLOATS))
    itype = draw(st.sampled_from(INTS))
    n_rows = draw(st.integers(min_rows, 12))
    trailing = draw(st.sampled_from(TRAILING))
    n = draw(st.integers(0, 25))
    high = max(n_rows - 1, 0)
    indices = draw(hnp.arrays(itype, n, elements=st.integers(0, high)))
    table = _random(draw(st.integers(0, 2**16)), (n_rows,) + trailing, dtype)
    return table, indices


@st.composite
def csr_cases(draw):
    """(X as scipy CSR with unsorted, duplicated and explicit-zero entries, dense, grad)."""
    dtype = draw(st.sampled_from(FLOATS))
    itype = draw(st.sampled_from(INTS))
    n_rows = draw(st.integers(0, 8))
    n_cols = draw(st.integers(1, 10))
    trailing = draw(st.sampled_from(TRAILING))
    counts = draw(st.lists(st.integers(0, 5), min_size=n_rows, max_size=n_rows))
    nnz = sum(counts)
    indices = draw(hnp.arrays(itype, nnz, elements=st.integers(0, n_cols - 1)))
    seed = draw(st.integers(0, 2**16))
    data = _random(seed, nnz, dtype)
    if nnz:
        data[draw(st.integers(0, nnz - 1))] = 0.0  # an explicitly stored zero
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(itype)
    dense = _random(seed + 1, (n_cols,) + trailing, dtype)
    grad = _random(seed + 2, (n_rows,) + trailing, dtype)
    return indptr, indices, data, dense, grad, n_cols


def _width(a):
    return int(np.prod(a.shape[1:]))


def _csr_dense(indptr, indices, data, n_cols):
    """Dense matrix of a CSR triple via SciPy (sums duplicate entries)."""
    n_rows = len(indptr) - 1
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols)).toarray()


# --- parity tests ---------------------------------------------------------------------------


@SETTINGS
@given(case=row_cases())
def test_gather_rows(impl, case):
    table, indices = case
    got = impl.host(impl.mod.gather_rows(impl.dev(table), impl.dev(indices)))
    assert got.dtype == table.dtype
    np.testing.assert_array_equal(got, table[indices.astype(np.int64)])


@SETTINGS
@given(case=row_cases())
def test_scatter_add_rows(impl, case):
    table, indices = case
    values = _random(len(indices), (len(indices),) + table.shape[1:], table.dtype)
    expected = table.copy()
    np.add.at(expected, indices, values)
    out = impl.dev(table.copy())
    assert impl.mod.scatter_add_rows(out, impl.dev(indices), impl.dev(values)) is None
    np.testing.assert_allclose(impl.host(out), expected, **_tol(table.dtype))


@SETTINGS
@given(case=row_cases())
def test_coalesce_rows(impl, case):
    table, indices = case
    values = _random(len(indices), (len(indices),) + table.shape[1:], table.dtype)
    rows, summed = impl.mod.coalesce_rows(impl.dev(indices), impl.dev(values))
    rows, summed = impl.host(rows), impl.host(summed)
    expected_rows = np.unique(indices)
    dense = np.zeros((max(table.shape[0], 1),) + table.shape[1:], table.dtype)
    np.add.at(dense, indices, values)
    assert rows.dtype == np.int64 and summed.dtype == table.dtype
    assert summed.shape == (len(expected_rows),) + table.shape[1:]
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(summed, dense[expected_rows], **_tol(table.dtype))


@SETTINGS
@given(case=row_cases(), batch=st.integers(0, 5), length=st.integers(0, 6), data=st.data())
def test_bag_sum(impl, case, batch, length, data):
    table, _ = case
    itype = data.draw(st.sampled_from(INTS))
    tokens = data.draw(hnp.arrays(itype, (batch, length), elements=st.integers(0, len(table) - 1)))
    mask_kind = data.draw(st.sampled_from(["float", "bool", "int"]))
    mask_bits = data.draw(hnp.arrays(np.bool_, (batch, length)))
    mask = {
        "float": mask_bits * _random(1, (batch, length), table.dtype),
        "bool": mask_bits,
        "int": mask_bits.astype(np.int64),
    }[mask_kind]
    expected = np.zeros((batch,) + table.shape[1:], table.dtype)
    for b in range(batch):
        for pos in range(length):
            expected[b] += mask[b, pos] * table[tokens[b, pos]]
    got = impl.mod.bag_sum(impl.dev(table), impl.dev(tokens), impl.dev(mask))
    got = impl.host(got)
    assert got.shape == expected.shape and got.dtype == table.dtype
    np.testing.assert_allclose(got, expected, **_tol(table.dtype))


@SETTINGS
@given(case=csr_cases())
def test_csr_dense_dot(impl, case):
    indptr, indices, data, dense, _, n_cols = case
    matrix = _csr_dense(indptr, indices, data, n_cols)
    product = matrix @ dense.reshape(n_cols, _width(dense))
    expected = product.reshape((len(indptr) - 1,) + dense.shape[1:])
    args = [impl.dev(a) for a in (indptr, indices, data, dense)]
    got = impl.host(impl.mod.csr_dense_dot(*args))
    assert got.shape == expected.shape and got.dtype == dense.dtype
    np.testing.assert_allclose(got, expected, **_tol(dense.dtype))


@SETTINGS
@given(case=csr_cases())
def test_csr_scale_rows(impl, case):
    indptr, indices, data, _, grad, _ = case
    row_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    expected = np.array([data[k] * grad[row_of[k]] for k in range(len(data))],
                        dtype=grad.dtype).reshape((len(data),) + grad.shape[1:])
    got = impl.host(impl.mod.csr_scale_rows(*[impl.dev(a) for a in (indptr, data, grad)]))
    assert got.shape == expected.shape and got.dtype == grad.dtype
    np.testing.assert_allclose(got, expected, **_tol(grad.dtype))


@SETTINGS
@given(case=csr_cases())
def test_csr_row_dots(impl, case):
    indptr, indices, data, _, grad, _ = case
    row_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    rows = _random(1, (len(data),) + grad.shape[1:], grad.dtype)
    expected = np.array([data[k] * np.sum(grad[row_of[k]] * rows[k]) for k in range(len(data))],
                        dtype=grad.dtype)
    got = impl.host(impl.mod.csr_row_dots(*[impl.dev(a) for a in (indptr, data, grad, rows)]))
    assert got.shape == (len(data),) and got.dtype == grad.dtype
    np.testing.assert_allclose(got, expected, **_tol(grad.dtype))


@SETTINGS
@given(case=csr_cases())
def test_csr_t_dense_dot_rows(impl, case):
    indptr, indices, data, _, grad, n_cols = case
    matrix = _csr_dense(indptr, indices, data, n_cols)
    full = (matrix.T @ grad.reshape(len(grad), _width(grad))).reshape((n_cols,) + grad.shape[1:])
    expected_rows = np.unique(indices)
    args = [impl.dev(a) for a in (indptr, indices, data, grad)]
    rows, values = impl.mod.csr_t_dense_dot_rows(*args)
    rows, values = impl.host(rows), impl.host(values)
    assert rows.dtype == np.int64 and values.dtype == grad.dtype
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(values, full[expected_rows], **_tol(grad.dtype))


@SETTINGS
@given(case=row_cases(), extra=st.integers(0, 3))
def test_segment_sum(impl, case, extra):
    table, indices = case
    n_segments = len(table) + extra
    values = _random(len(indices), (len(indices),) + table.shape[1:], table.dtype)
    expected = np.zeros((n_segments,) + table.shape[1:], table.dtype)
    np.add.at(expected, indices, values)
    got = impl.host(impl.mod.segment_sum(impl.dev(values), impl.dev(indices), n_segments))
    assert got.dtype == table.dtype
    np.testing.assert_allclose(got, expected, **_tol(table.dtype))


# --- edge cases and errors ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_coalesce_empty(impl, dtype):
    rows, summed = impl.mod.coalesce_rows(
        impl.dev(np.zeros(0, np.int32)), impl.dev(np.zeros((0, 2, 3), dtype))
    )
    rows, summed = impl.host(rows), impl.host(summed)
    assert rows.shape == (0,) and rows.dtype == np.int64
    assert summed.shape == (0, 2, 3) and summed.dtype == dtype


def test_scatter_add_large_width(impl):
    """Wide rows take the column-block parallel path on cpu; check it against np.add.at."""
    rng = np.random.default_rng(0)
    out = rng.standard_normal((50, 100)).astype(np.float32)
    indices = rng.integers(0, 50, 2000)
    values = rng.standard_normal((2000, 100)).astype(np.float32)
    expected = out.copy()
    np.add.at(expected, indices, values)
    dev_out = impl.dev(out)
    impl.mod.scatter_add_rows(dev_out, impl.dev(indices), impl.dev(values))
    np.testing.assert_allclose(impl.host(dev_out), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [-1, 10, 2**40])
def test_scatter_add_bad_index_leaves_out_unchanged(impl, bad):
    out = np.arange(30, dtype=np.float64).reshape(10, 3)
    indices = np.array([0, 9, bad, 3], dtype=np.int64)
    dev_out = impl.dev(out.copy())
    with pytest.raises(IndexError, match=rf"{bad}.*\[0, 10\)"):
        impl.mod.scatter_add_rows(dev_out, impl.dev(indices), impl.dev(np.ones((4, 3))))
    np.testing.assert_array_equal(impl.host(dev_out), out)


@pytest.mark.parametrize("bad", [-3, 5])
def test_bad_indices_raise_index_error(impl, bad):
    m, dev = impl.mod, impl.dev
    table = dev(np.ones((5, 2), np.float32))
    idx = dev(np.array([0, bad, 1], np.int32))
    msg = rf"{bad}.*\[0, 5\)"
    with pytest.raises(IndexError, match=msg):
        m.gather_rows(table, idx)
    with pytest.raises(IndexError, match=msg):
        m.segment_sum(dev(np.ones((3, 2), np.float32)), idx, 5)
    with pytest.raises(IndexError, match=msg):
        m.bag_sum(table, idx.reshape(1, 3), dev(np.zeros((1, 3), np.float32)))
    indptr = dev(np.array([0, 3], np.int32))
    with pytest.raises(IndexError, match=msg):
        m.csr_dense_dot(indptr, idx, dev(np.ones(3, np.float32)), table)


def test_negative_indices_rejected(impl):
    m, dev = impl.mod, impl.dev
    idx = dev(np.array([2, -1], np.int64))
    with pytest.raises(IndexError, match="-1"):
        m.coalesce_rows(idx, dev(np.ones((2, 3))))
    indptr = dev(np.array([0, 2], np.int64))
    with pytest.raises(IndexError, match="-1"):
        m.csr_t_dense_dot_rows(indptr, idx, dev(np.ones(2)), dev(np.ones((1, 3))))


def test_shape_mismatches_raise_value_error(impl):
    m, dev = impl.mod, impl.dev
    table = dev(np.zeros((4, 3)))
    idx = dev(np.array([0, 1], np.int64))
    with pytest.raises(ValueError):
        m.scatter_add_rows(table, idx, dev(np.ones((3, 3))))
    with pytest.raises(ValueError):
        m.scatter_add_rows(table, idx, dev(np.ones((2, 4))))
    with pytest.raises(ValueError):
        m.coalesce_rows(idx, dev(np.ones((3, 3))))
    with pytest.raises(ValueError):
        m.segment_sum(dev(np.ones((3, 3))), idx, 4)
    with pytest.raises(ValueError):
        m.bag_sum(table, dev(np.zeros((2, 3), np.int64)), dev(np.ones((2, 2))))
    with pytest.raises(ValueError):
        m.csr_dense_dot(dev(np.array([0, 3])), idx, dev(np.ones(2)), table)  # indptr[-1] != nnz
    with pytest.raises(ValueError):
        m.csr_t_dense_dot_rows(dev(np.array([0, 2])), idx, dev(np.ones(2)), table)  # grad rows
    with pytest.raises(TypeError):
        m.gather_rows(table, dev(np.array([0.0, 1.0])))


def test_gpu_import_fails_only_with_import_error():
    """Without CuPy/CUDA, ``import kernels.gpu`` must raise ImportError and nothing else."""
    try:
        importlib.import_module("kernels.gpu")
    except ImportError as exc:
        assert "minigrad[gpu]" in str(exc)


def test_scatter_add_into_non_contiguous_view(impl):
    """A strided ``out`` (a column slice) must still be updated in place."""
    base = impl.dev(np.zeros((6, 8), np.float32))
    view = base[:, ::2]
    indices = np.array([5, 0, 5], np.int32)
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    impl.mod.scatter_add_rows(view, impl.dev(indices), impl.dev(values))
    expected = np.zeros((6, 8), np.float32)
    np.add.at(expected[:, ::2], indices, values)
    np.testing.assert_array_equal(impl.host(base), expected)


def test_csr_row_dots_rejects_mismatched_rows(impl):
    m, dev = impl.mod, impl.dev
    with pytest.raises(ValueError, match="rows must have shape"):
        m.csr_row_dots(dev(np.array([0, 2])), dev(np.ones(2)), dev(np.ones((1, 3))),
                       dev(np.ones((3, 3))))


def test_csr_scale_rows_rejects_bad_csr(impl):
    m, dev = impl.mod, impl.dev
    with pytest.raises(ValueError, match="grad must have n_rows=1"):
        m.csr_scale_rows(dev(np.array([0, 2])), dev(np.ones(2)), dev(np.ones((2, 3))))
    with pytest.raises(ValueError, match="end at nnz=2"):
        m.csr_scale_rows(dev(np.array([0, 3])), dev(np.ones(2)), dev(np.ones((1, 3))))
