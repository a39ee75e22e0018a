"""What a compiled call does besides the arithmetic (issue 12 "checks once", issue 15 item 13).

* every index input is range-checked once per call, in the prologue; compiled code calls no
  index check of its own (kernels called directly still validate: tests/test_kernel_safety);
* a CSR batch is validated once, at the input boundary (``CSRType.filter``);
* an exact-mode table's pending rows are caught up with the kernels of the function that
  left them pending (a ``backend="numpy"`` step is flushed by the reference kernels);
* an empty batch in a function without updates gives NumPy's answer (a mean over nothing
  is NaN) and no raw NumPy warning.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg

pytest.importorskip("numba", reason="the compiled (numba) backend is what skips re-checks")


class _Counter:
    def __init__(self, fn=None, skip=None):
        self.fn, self.n, self.skip = fn, 0, skip

    def __call__(self, *args, **kwargs):
        if self.skip is None or not self.skip(*args):
            self.n += 1
        return self.fn(*args, **kwargs) if self.fn is not None else None


def _from_prologue(name, *args):
    """The prologue's own checks (``input k``: the one check per call, counted apart)."""
    return name.startswith("input ")


def _forbid_index_checks(monkeypatch):
    """Count every index-range check compiled code could call (they must not run)."""
    import kernels._validate
    import minigrad.backends.numba as numba_backend
    import minigrad.ops.indexing as indexing

    counters = {}
    for module, name in ((kernels._validate, "check_index_range"),
                         (indexing, "check_index_range"),
                         (numba_backend, "check_index_range"),
                         (kernels._validate, "check_csr")):
        skip = _from_prologue if name == "check_index_range" and module is kernels._validate \
            else None
        counters[f"{module.__name__}.{name}"] = c = _Counter(getattr(module, name), skip)
        monkeypatch.setattr(module, name, c)
    return counters


def _count_prologue(monkeypatch):
    from minigrad.prologue import Prologue

    counter = _Counter(Prologue.__call__)
    monkeypatch.setattr(Prologue, "__call__", lambda self, values: counter(self, values))
    return counter


def _fm_step(mode=None, nan_guard=None):
    fm = mg.models.FactorizationMachine(40, 4, seed=0)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = fm.cost(X, y)
    return mg.function([X, y], cost, updates=mg.optim.SGD(fm.params, 0.1).updates(cost),
                       mode=mode or mg.Mode(backend="numba"), nan_guard=nan_guard)


def _fm_batch(seed):
    rng = np.random.default_rng(seed)
    X = sp.random(16, 40, density=0.15, format="csr", random_state=rng)
    return X, rng.integers(0, 2, 16).astype(float)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_the_fm_step_checks_its_batch_once(monkeypatch, fuse):
    # nan_guard=False: the default update guard scans the rows it wrote (call_checks), a
    # check of the written values rather than of the batch, counted apart
    f = _fm_step(mg.Mode(backend="numba", exclude=() if fuse else ("fuse",)), nan_guard=False)
    f(*_fm_batch(0))  # compile the kernels before counting
    import minigrad.types

    csr_checks = _Counter(minigrad.types._csr_status)  # one compiled pass per CSR input
    monkeypatch.setattr(minigrad.types, "_csr_status", csr_checks)
    numpy_checks = _Counter(minigrad.types.check_csr_structure)  # only to name a problem
    monkeypatch.setattr(minigrad.types, "check_csr_structure", numpy_checks)
    counters = _forbid_index_checks(monkeypatch)
    prologue = _count_prologue(monkeypatch)
    for k in range(3):
        f(*_fm_batch(k))
    assert {name: c.n for name, c in counters.items()} == dict.fromkeys(counters, 0)
    assert csr_checks.n == 3 and numpy_checks.n == 0  # once per call, at the boundary
    assert prologue.n <= 3


def test_a_gather_step_range_checks_its_index_once_per_call(monkeypatch):
    E = mg.shared(np.random.default_rng(0).standard_normal((50, 4)), name="E")
    W = mg.shared(np.zeros((4, 3)), name="W")
    idx, labels = mg.lmatrix("idx"), mg.lvector("labels")
    cost = mg.nn.cross_entropy(E[idx].sum(axis=1) @ W, labels)
    opt = mg.optim.Adam([E, W], 0.01)
    f = mg.function([idx, labels], cost, updates=opt.updates(cost), backend="numba",
                    nan_guard=False)  # (the update guard's own row scan is counted apart)
    rng = np.random.default_rng(1)
    f(rng.integers(0, 50, (8, 5)), rng.integers(0, 3, 8))
    counters = _forbid_index_checks(monkeypatch)
    prologue = _count_prologue(monkeypatch)
    for _ in range(3):
        f(rng.integers(0, 50, (8, 5)), rng.integers(0, 3, 8))
    assert prologue.n == 3
    assert {name: c.n for name, c in counters.items()} == dict.fromkeys(counters, 0)
    with pytest.raises(IndexError, match="idx"):  # and the one check still catches
        f(np.full((8, 5), 50), rng.integers(0, 3, 8))


def test_a_bad_batch_is_still_refused_before_anything_changes():
    f = _fm_step()
    X, y = _fm_batch(0)
    f(X, y)
    before = [p.get_value() for p in f.fgraph.leaves() if isinstance(p, mg.SharedVariable)]
    bad = sp.csr_matrix((X.data, X.indices.copy(), X.indptr), shape=X.shape)
    bad.indices[0] = 40  # a column past the table
    with pytest.raises(IndexError, match="out of range"):
        f(bad, y)
    after = [p.get_value() for p in f.fgraph.leaves() if isinstance(p, mg.SharedVariable)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


# --- exact mode: the flush uses the kernels of the function that pended the rows ------


def test_rows_pended_by_a_numpy_function_are_flushed_by_the_reference_kernels(monkeypatch):
    import kernels.cpu  # noqa: F401  (registers the Numba row kernels replaced below)

    E = mg.shared(np.random.default_rng(0).standard_normal((12, 3)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    opt = mg.optim.Adam([E], 0.1, sparse="exact")
    f = mg.function([idx], cost, updates=opt.updates(cost), backend="numpy")
    f(np.array([1, 2]))
    f(np.array([3]))  # rows 1, 2 now lag one step

    def no_numba(*args, **kwargs):
        raise AssertionError("a numpy-backend function's rows were flushed by Numba")

    from kernels import row_kernels  # the optimizers' kernels are found in this table

    monkeypatch.setitem(row_kernels._TABLE, ("adam", "numba"), no_numba)
    E.get_value()  # flushes the pending rows


# --- empty batches in functions without updates ---------------------------------------


def test_a_mean_over_an_empty_batch_is_nan_without_raw_warnings(backend):
    x = mg.matrix("x")
    W = mg.shared(np.ones((3, 2)), name="W")
    cost = ((x @ W) ** 2).mean()
    f = mg.function([x], [cost, mg.grad(cost, W)], backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any raw NumPy warning fails the test
        value, grad = f(np.zeros((0, 3)))
        assert np.isnan(value) and grad.shape == (3, 2)
        assert np.isfinite(f(np.ones((2, 3)))[0])  # warnings are back for other calls
    with pytest.warns(RuntimeWarning):
        np.mean(np.zeros(0))  # the filter did not leak out of the call
    with pytest.raises(FloatingPointError):
        mg.function([x], cost, backend=backend, nan_guard=True)(np.zeros((0, 3)))


def test_a_step_on_an_empty_batch_is_still_refused():
    x = mg.matrix("x")
    W = mg.shared(np.ones((3, 2)), name="W")
    cost = ((x @ W) ** 2).mean()
    f = mg.function([x], cost, updates=mg.optim.SGD([W], 0.1).updates(cost))
    with pytest.raises(ValueError, match="empty batch"):
        f(np.zeros((0, 3)))
    np.testing.assert_array_equal(W.get_value(), np.ones((3, 2)))


@pytest.mark.parametrize("case", ["decreasing indptr", "indptr past nnz", "column too big",
                                  "negative column", "duplicates", "unsorted", "fine"])
def test_the_compiled_csr_check_agrees_with_the_numpy_checks(case):
    """``kernels.cpu.csr_status`` (the boundary's one pass) against the NumPy checks."""
    from kernels.cpu.rows import csr_status
    from minigrad.types import _is_canonical, check_csr_structure

    indptr, indices = np.array([0, 2, 3, 5]), np.array([0, 3, 1, 2, 4])
    if case == "decreasing indptr":
        indptr = np.array([0, 4, 3, 5])
    elif case == "indptr past nnz":
        indptr = np.array([0, 7, 2, 5])
    elif case == "column too big":
        indices = np.array([0, 3, 1, 2, 5])
    elif case == "negative column":
        indices = np.array([0, 3, -1, 2, 4])
    elif case == "duplicates":
        indices = np.array([3, 3, 1, 2, 4])
    elif case == "unsorted":
        indices = np.array([3, 0, 1, 2, 4])
    m = sp.csr_matrix((np.ones(5), indices, indptr), shape=(3, 5))
    status = csr_status(m.indptr, m.indices, 5)
    try:
        check_csr_structure(m)
    except (ValueError, IndexError):
        assert status == -1
    else:
        assert status == (0 if _is_canonical(m) else 1)
    if status == -1:
        X = mg.csr_matrix("X")
        with pytest.raises((ValueError, IndexError), match="CSR"):  # named by the boundary
            mg.function([X], mg.sparse.sum_rows(X))(m)
