"""Checks once (issue 12 item 5, issue 13): one mechanism says "this index is already
checked" (``minigrad/prologue.py``), and one function checks index ranges
(``kernels._validate.check_index_range``).

* every public entry point (``opt.apply``, a compiled ``E[idx]`` read or training step,
  ``mg.sparse.dot`` on a CSR input, the kernels of ``kernels.cpu`` called directly) refuses
  an index out of range, a negative one or one of a wrong dtype with an error naming it,
  and leaves every table (and exact mode's ``last``) bitwise unchanged;
* a compiled call range-checks each index input once, in its prologue: the gather, its
  gradient, the coalesce and the optimizer's kernel do not scan it again (counted through
  the one checker, monkeypatched; never timed);
* a ``RowSparse`` a user builds does not carry the mark, one compiled code builds does.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from kernels import _validate as V

HAS_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="kernels.cpu needs Numba")
F32 = np.float32
V_ROWS, D = 10, 4

#: (label, bad index array, error type, words in the message)
BAD = [
    ("too-large", np.array([1, V_ROWS], dtype=np.int64), IndexError, str(V_ROWS)),
    ("negative", np.array([-1, 2], dtype=np.int64), IndexError, "-1"),
    ("float", np.array([1.0, 2.0]), TypeError, "int"),
]
BAD_IDS = [b[0] for b in BAD]


@pytest.fixture
def count_checks(monkeypatch):
    """The names and sizes of every range check from now on (the one checker, wrapped)."""
    calls = []
    real = V.check_index_range

    def counting(name, indices, upper=None, message=None):
        calls.append((name, int(indices.size)))
        return real(name, indices, upper, message)

    monkeypatch.setattr(V, "check_index_range", counting)
    return calls


def _tables(opt):
    arrays = [p.value for p in opt.params]
    arrays += [v.value for s in opt.state for v in s.values()]
    arrays += [last.value for last in opt.last if last is not None]
    return [a.copy() for a in arrays] + [np.array([int(s.value) for s in opt.steps])]


def _assert_unchanged(before, opt):
    after = _tables(opt)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


OPTIMIZERS = [
    ("adam-lazy", lambda p: mg.optim.Adam(p, lr=0.1, sparse="lazy")),
    ("adam-exact", lambda p: mg.optim.Adam(p, lr=0.1, sparse="exact")),
    ("momentum-exact", lambda p: mg.optim.Momentum(p, lr=0.1, momentum=0.9, sparse="exact")),
]


def _embedding(make_opt, dtype=F32):
    E = mg.shared(np.random.default_rng(0).normal(size=(V_ROWS, D)).astype(dtype), name="E")
    return E, make_opt([E])


# --- every public entry point refuses bad indices and changes nothing ----------------------


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("name,make_opt", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_apply_refuses_bad_rows_and_changes_nothing(name, make_opt, bad):
    _, idx, err, words = bad
    E, opt = _embedding(make_opt, np.float64)  # (test_optim_apply's dtype: its kernels)
    for t in range(2):  # some history: lagging rows, a step counter past 0
        opt.apply(E, mg.RowSparse([t, 3], np.ones((2, D)), (V_ROWS, D)))
    rs = mg.RowSparse([0, 1], np.ones((2, D)), (V_ROWS, D))
    rs.indices = idx  # corrupted after construction (the constructor refuses it)
    before = _tables(opt)
    with pytest.raises(err, match=words) as info:
        opt.apply(E, rs)
    assert "'E'" in str(info.value)
    _assert_unchanged(before, opt)


def _step(backend, make_opt, linker=None):
    E, opt = _embedding(make_opt)
    idx, y = mg.ivector("idx"), mg.vector("y", dtype="float32")
    cost = mg.mean((mg.sum(E[idx], axis=1) - y) ** 2)
    mode = mg.Mode(backend=backend, linker=linker) if linker else mg.Mode(backend=backend)
    return E, opt, mg.function([idx, y], cost, updates=opt.updates(cost), mode=mode)


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("name,make_opt", OPTIMIZERS[:2], ids=[o[0] for o in OPTIMIZERS[:2]])
def test_compiled_step_refuses_bad_index_and_changes_nothing(backend, name, make_opt, bad):
    _, idx, err, words = bad
    E, opt, step = _step(backend, make_opt)
    y = np.ones(2, F32)
    step(np.array([1, 4], dtype=np.int32), y)
    before = _tables(opt)
    with pytest.raises(err, match=words) as info:
        step(idx, y)
    assert "idx" in str(info.value)
    _assert_unchanged(before, opt)


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_compiled_read_refuses_bad_index(backend, bad):
    _, idx, err, words = bad
    E = mg.shared(np.arange(V_ROWS * D, dtype=F32).reshape(V_ROWS, D), name="E")
    i = mg.ivector("i")
    f = mg.function([i], E[i], mode=mg.Mode(backend=backend))
    with pytest.raises(err, match=words) as info:
        f(idx)
    assert "'i'" in str(info.value) or str(info.value).startswith("i:")


@pytest.mark.parametrize("column", [V_ROWS, -1], ids=["too-large", "negative"])
def test_sparse_dot_step_refuses_bad_column_and_changes_nothing(backend, column):
    W = mg.shared(np.random.default_rng(2).normal(size=(V_ROWS, 3)), name="W")
    X = mg.csr_matrix("X", n_cols=V_ROWS)  # (float64: the FM tests' kernels)
    cost = mg.sum(mg.sparse.dot(X, W) ** 2)
    opt = mg.optim.SGD([W], lr=0.1)
    step = mg.function([X], cost, updates=opt.updates(cost), mode=mg.Mode(backend=backend))
    good = sp.csr_array((np.ones(3), np.array([0, 4, 9]), np.array([0, 2, 3])),
                        shape=(2, V_ROWS))
    step(good)
    before = _tables(opt)
    bad = sp.csr_array((np.ones(3), np.array([0, 4, 9]), np.array([0, 2, 3])),
                       shape=(2, V_ROWS))
    bad.indices[1] = column  # scipy does not look at it again
    with pytest.raises(IndexError, match=f"X.*{column}"):
        step(bad)
    _assert_unchanged(before, opt)


def _kernel_calls(cpu, idx):
    """``(label, call)`` of kernels.cpu entry points taking row indices into a table."""
    rng = np.random.default_rng(3)
    table = rng.normal(size=(V_ROWS, D)).astype(F32)
    m, v, buf = (np.zeros_like(table) for _ in range(3))
    last = np.zeros(V_ROWS, dtype=np.int64)
    g = np.ones((len(idx), D), F32)
    state = [table, m, v, buf, last]
    indptr = np.array([0, len(idx)], dtype=np.int64)
    data = np.ones(len(idx), F32)
    return state, [
        ("gather_rows", lambda: cpu.gather_rows(table, idx)),
        ("scatter_add_rows", lambda: cpu.scatter_add_rows(table, idx, g)),
        ("adam_rows", lambda: cpu.adam_rows(table, m, v, idx, g, 1, None, 0.1, 0.9, 0.999,
                                            1e-8, 0.0, False)),
        ("momentum_rows", lambda: cpu.momentum_rows(table, buf, idx, g, 1, last, 0.1, 0.9,
                                                    0.0, False, 0.0)),
        ("csr_gather_mul_sum", lambda: cpu.csr_gather_mul_sum(indptr, idx, data, table)),
        ("csr_scatter_grad_rows", lambda: cpu.csr_scatter_grad_rows(
            indptr, idx, data, np.ones((1, D), F32), V_ROWS)),
    ]


@needs_numba
@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_direct_kernel_calls_refuse_bad_indices_and_change_nothing(bad):
    import kernels.cpu as cpu

    _, idx, err, words = bad
    state, calls = _kernel_calls(cpu, idx)
    before = [a.copy() for a in state]
    for label, call in calls:
        with pytest.raises(err, match=words):
            call()
        for a, b in zip(before, state):
            assert np.array_equal(a, b), label


# --- a compiled call checks each index once ----------------------------------------------


def _jit_two_tables():
    from test_fused_step import JIT, _two_tables  # (its graph: compiled there already)

    rng = np.random.default_rng(7)
    return _two_tables(JIT)[0], (rng.integers(0, 20, 7), rng.normal(size=7))


def _generated_embedding(kw):
    from test_update_driver import _batches, _step

    return lambda: (_step("Adam", kw)[0], _batches(1)[0])


#: compiled steps whose graphs other test files compile too (no new Numba signatures)
STEPS = [("jit-lazy", _jit_two_tables),
         ("generated-lazy", _generated_embedding(dict(sparse="lazy"))),
         ("generated-exact", _generated_embedding(dict(sparse="exact")))]


@needs_numba
@pytest.mark.parametrize("make", [s[1] for s in STEPS], ids=[s[0] for s in STEPS])
def test_compiled_step_checks_each_index_once(count_checks, make):
    step, batch = make()
    step(*batch)  # compiles; warm paths from here
    count_checks.clear()
    step(*batch)
    assert count_checks == [("input 0", batch[0].size)]


@needs_numba
def test_direct_kernel_call_checks(count_checks):
    import kernels.cpu as cpu

    _, calls = _kernel_calls(cpu, np.array([2, 5], dtype=np.int64))
    for label, call in calls:
        count_checks.clear()
        call()
        assert count_checks, f"{label} called from user code did not check its indices"


def test_csr_input_is_checked_once_at_the_boundary(backend, count_checks, monkeypatch):
    import minigrad.types as types

    boundary = []
    real = types._csr_status

    def counting(m):
        boundary.append(m.indices.shape[0])
        return real(m)

    monkeypatch.setattr(types, "_csr_status", counting)
    W = mg.shared(np.ones((V_ROWS, 3)), name="W")
    X = mg.csr_matrix("X", n_cols=V_ROWS)  # (float64: the FM tests' kernels)
    cost = mg.sum(mg.sparse.dot(X, W) ** 2)
    step = mg.function([X], cost, updates=mg.optim.SGD([W], lr=0.1).updates(cost),
                       mode=mg.Mode(backend=backend))
    batch = sp.csr_array((np.ones(3), np.array([0, 4, 9]), np.array([0, 2, 3])),
                         shape=(2, V_ROWS))
    step(batch)
    count_checks.clear()
    boundary.clear()
    step(batch)
    assert boundary == [3]  # structure and column range, once (CSRType.filter)
    if backend == "numba":  # the fused kernels trust it: no scan of the columns again
        assert count_checks == []


# --- the mark on values -----------------------------------------------------------------------


def test_only_compiled_code_marks_a_row_sparse():
    rs = mg.RowSparse([1, 3], np.ones((2, D)), (V_ROWS, D), coalesced=True)
    assert not rs.checked and rs.coalesced
    assert not rs.copy().checked and not (rs + rs).checked
    trusted = mg.RowSparse.trusted(np.array([1, 3]), np.ones((2, D)), (V_ROWS, D))
    assert trusted.checked and not trusted.coalesced


def test_one_range_check_names_the_bad_value():
    with pytest.raises(IndexError, match="idx contains index 5, outside the valid range"):
        V.check_index_range("idx", np.array([0, 5], dtype=np.int32), 5)
    with pytest.raises(IndexError, match="custom -3 of 5"):
        V.check_index_range("idx", np.array([-3, 1]), 5,
                            message=lambda bad, n: f"custom {bad} of {n}")
    with pytest.raises(IndexError, match="index 7"):
        V.check_index_range("idx", np.array([7], dtype=np.uint8), 5)
    V.check_index_range("idx", np.array([0, 4], dtype=np.uint16), 5)
    V.check_index_range("idx", np.array([3]), None)
