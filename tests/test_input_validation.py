"""The input boundary of a compiled call (issue 15, items 7, 9, 10, 13, 14, 15).

Each bad input raises a clear error naming the input (and the original value), before
anything runs; each accepted one gives the result of its exact, canonical form.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg


def _table():
    return mg.shared(np.arange(12.0).reshape(6, 2), name="E")


# --------------------------------------------------------------- item 7: integer inputs


@pytest.mark.parametrize("value", [2**32 + 1, -(2**63), 2**40 - 1, 2**31])
def test_int64_value_not_fitting_int32_is_refused_with_its_original_value(backend, value):
    E, i = _table(), mg.ivector("i")
    g = mg.function([i], E[i], backend=backend)
    with pytest.raises(ValueError, match=rf"'i'.*value {value} does not fit.*int32"):
        g(np.array([0, value], dtype=np.int64))


def test_uint64_beyond_int64_is_refused(backend):
    E, i = _table(), mg.lvector("i")
    g = mg.function([i], E[i], backend=backend)
    with pytest.raises(ValueError, match=f"value {2**64 - 1} does not fit"):
        g(np.array([2**64 - 1], dtype=np.uint64))


def test_int64_values_that_fit_int32_are_accepted(backend):
    E, i = _table(), mg.ivector("i")
    g = mg.function([i], E[i], backend=backend)
    np.testing.assert_array_equal(g(np.array([5, 1], dtype=np.int64)), [[10, 11], [2, 3]])
    np.testing.assert_array_equal(g([5]), [[10, 11]])  # a Python list of ints


def test_bool_array_is_not_an_index(backend):
    E, i = _table(), mg.ivector("i")
    g = mg.function([i], E[i], backend=backend)
    with pytest.raises(TypeError, match="'i'.*bool array.*not an index"):
        g(np.array([True, False]))


def test_bool_mask_into_float_input_is_exact(backend):
    x = mg.vector("x")
    np.testing.assert_array_equal(
        mg.function([x], x * 2.0, backend=backend)(np.array([True, False])), [2.0, 0.0])


# ----------------------------------------------------- item 14: allow_input_downcast


@pytest.mark.parametrize("value, what", [(1e-50, "underflows"), (1e300, "overflows"),
                                          (-1e39, "overflows")])
def test_lossy_float_downcast_is_refused_naming_input_and_value(backend, value, what):
    x = mg.vector("x", dtype="float32")
    f = mg.function([x], x * 1.0, backend=backend)
    pattern = rf"'x'.*{re.escape(repr(value))}.*{what}.*allow_input_downcast"
    with pytest.raises(ValueError, match=pattern):
        f(np.array([1.0, value]))


def test_allow_input_downcast_accepts_lossy_casts(backend):
    x = mg.vector("x", dtype="float32")
    f = mg.function([x], x * 1.0, backend=backend, allow_input_downcast=True)
    out = f(np.array([1e-50, 1e300]))
    assert out.dtype == np.float32
    assert out[0] == 0.0 and np.isinf(out[1])


def test_safe_and_rounding_casts_are_accepted(backend):
    x = mg.vector("x", dtype="float32")
    f = mg.function([x], x * 1.0, backend=backend)
    np.testing.assert_array_equal(f(np.array([0.1, 0.0, -2.5])),
                                  np.array([0.1, 0.0, -2.5], np.float32))
    np.testing.assert_array_equal(f(np.array([0.1], np.float16)), np.float16(0.1))
    y = mg.vector("y")  # float64 input: float32 data is a safe cast
    assert mg.function([y], y * 1.0, backend=backend)(np.ones(2, np.float32)).dtype == np.float64


def test_int_array_into_float_input_is_still_refused(backend):
    x = mg.vector("x")
    with pytest.raises(TypeError, match="'x'.*expected float data"):
        mg.function([x], x * 1.0, backend=backend)(np.array([1, 2]))


def test_shared_set_value_refuses_lossy_downcast():
    W = mg.shared(np.zeros(2, np.float32), name="W")
    with pytest.raises(ValueError, match="W.*overflows"):
        W.set_value(np.array([1e300, 0.0]))
    np.testing.assert_array_equal(W.get_value(), [0.0, 0.0])


# ---------------------------------------------------------- items 9, 10: CSR inputs


def _csr_fn(backend):
    X = mg.csr_matrix("X")
    W = mg.shared(np.arange(8.0).reshape(4, 2), name="W")
    fm = mg.models.FactorizationMachine(4, 2, seed=3)
    return mg.function([X], [mg.sparse.dot(X, W), mg.sparse.sum_rows(mg.sparse.square(X)),
                             fm.predict(X)], backend=backend)


def test_csr_with_duplicates_means_its_summed_form(backend):
    f = _csr_fn(backend)
    dup = sp.csr_array((np.array([1.0, 2.0, 3.0]), np.array([1, 1, 2]), np.array([0, 2, 3])),
                       shape=(2, 4))
    canonical = sp.csr_array(dup.toarray())
    before = dup.data.copy()
    for got, want in zip(f(dup), f(canonical)):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_array_equal(dup.data, before)  # the caller's matrix is not modified


def test_csr_with_unsorted_columns_is_canonicalised(backend):
    f = _csr_fn(backend)
    m = sp.csr_matrix((np.array([2.0, 1.0]), np.array([3, 0]), np.array([0, 2])), shape=(1, 4))
    m.has_canonical_format = True  # a lie: the flag is not trusted
    for got, want in zip(f(m), f(sp.csr_matrix(m.toarray()))):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_decreasing_indptr_is_refused_on_every_backend(backend):
    bad = sp.csr_matrix((np.ones(3), np.array([0, 1, 2]), np.array([0, 3, 1, 3])), shape=(3, 4))
    with pytest.raises(ValueError, match="'X'.*indptr decreases at row 1"):
        _csr_fn(backend)(bad)


def test_indptr_not_ending_at_nnz_is_refused(backend):
    bad = sp.csr_matrix((np.ones(3), np.array([0, 1, 2]), np.array([0, 1, 3])), shape=(2, 4))
    bad.indptr[-1] = 2
    with pytest.raises(ValueError, match="'X'.*end at nnz=3"):
        _csr_fn(backend)(bad)


def test_csr_column_out_of_range_is_an_index_error(backend):
    bad = sp.csr_matrix((np.ones(3), np.array([0, 1, 7]), np.array([0, 2, 3])), shape=(2, 4))
    with pytest.raises(IndexError, match="'X'.*column index 7"):
        _csr_fn(backend)(bad)


# ------------------------------------------------------------ item 13: empty batches


@pytest.mark.parametrize("sparse", ["exact", "lazy"])
def test_empty_batch_with_mean_cost_changes_nothing_and_warns_nothing(backend, sparse):
    A = mg.shared(np.ones((10, 2)), name="A")
    i = mg.ivector("i")
    cost = A[i].mean()
    opt = mg.optim.Adam([A], 0.1, sparse=sparse)
    f = mg.function([i], cost, updates=opt.updates(cost), backend=backend)
    f(np.array([1, 2], np.int32))
    before = (A.get_value(), opt.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw NumPy warning escapes
        with pytest.raises(ValueError, match="'i'.*empty batch"):
            f(np.array([], np.int32))
    np.testing.assert_array_equal(A.get_value(), before[0])
    assert opt.state_dict()["t"] == before[1]["t"] == 1
    for k, v in before[1]["state"].items():
        np.testing.assert_array_equal(opt.state_dict()["state"][k], v)


# ------------------------------------------------------------- item 15: outputs


def test_dict_outputs_come_back_as_a_dict(backend):
    x = mg.vector("x")
    f = mg.function([x], {"s": x.sum(), "d": x * 2.0}, backend=backend)
    out = f(np.array([1.0, 2.0]))
    assert isinstance(out, dict) and list(out) == ["s", "d"]
    assert out["s"] == 3.0
    np.testing.assert_array_equal(out["d"], [2.0, 4.0])


def test_tuple_and_list_outputs_keep_their_type(backend):
    x = mg.vector("x")
    out = mg.function([x], (x.sum(), x * 2.0), backend=backend)(np.ones(2))
    assert isinstance(out, tuple) and len(out) == 2
    assert isinstance(mg.function([x], [x.sum()], backend=backend)(np.ones(2)), list)


@pytest.mark.parametrize("bad", ["dict in a list", "string", "array"])
def test_non_variable_outputs_are_refused(bad):
    x = mg.vector("x")
    outputs = {"dict in a list": [{"s": x.sum()}], "string": "x", "array": [np.ones(2)]}[bad]
    with pytest.raises(TypeError, match="not a symbolic variable"):
        mg.function([x], outputs)


def test_rowsparse_refuses_implicit_densification_and_scales():
    r = mg.RowSparse([1, 3], np.ones((2, 2)), (4, 2))
    with pytest.raises(TypeError, match=r"to_dense\(\)"):
        np.asarray(r)
    np.testing.assert_array_equal((r * 2.5).to_dense(), 2.5 * r.to_dense())
    np.testing.assert_array_equal((3 * r).to_dense(), 3 * r.to_dense())
    np.testing.assert_array_equal((r / 2).to_dense(), r.to_dense() / 2)
    np.testing.assert_array_equal((-r).to_dense(), -r.to_dense())
    assert (r * np.float32(2)).values.dtype == np.float64
    with pytest.raises(TypeError):
        r * np.ones((4, 2))  # element-wise products with arrays are not defined here
