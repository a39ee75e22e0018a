"""Atomic, guarded calls (issue 15, items 2, 4, 8, 12): destinations checked before the
first write, a non-finite update never reaches a parameter (the step is undone, bitwise),
and concurrent calls from threads neither abort nor lose steps."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import minigrad as mg

OPTIMIZERS = [
    ("SGD", {}),
    ("Adam", {"sparse": "exact"}),
    ("Adam", {"sparse": "lazy"}),
    ("Momentum", {"sparse": "exact"}),
    ("RMSprop", {"sparse": "exact"}),
    ("Adagrad", {}),
]


def _snapshot(params, opt):
    return [p.get_value() for p in params], opt.state_dict()


def _assert_same(before, params, opt):
    values, state = before
    for p, v in zip(params, values):
        np.testing.assert_array_equal(p.get_value(), v)  # NaN-aware, bitwise for floats
    now = opt.state_dict()
    assert now["t"] == state["t"]
    for k, v in state["state"].items():
        np.testing.assert_array_equal(now["state"][k], v)


def _two_table_step(name, kw, backend, nan_guard=None, on_nan="raise"):
    A = mg.shared(np.ones((6, 2)), name="A")
    B = mg.shared(np.ones((6, 2)), name="B")
    i, x = mg.ivector("i"), mg.vector("x")
    cost = (A[i].sum(axis=1) * x).sum() + (B[i].sum(axis=1) * x * 1e300).sum()
    opt = getattr(mg.optim, name)([A, B], 0.1, **kw)
    f = mg.function([i, x], cost, updates=opt.updates(cost), backend=backend,
                    nan_guard=nan_guard, on_nan=on_nan)
    return A, B, opt, f


# ------------------------------------------------------------ item 12: NaN in an input


@pytest.mark.parametrize("name, kw", OPTIMIZERS)
def test_nan_input_raises_by_default_and_changes_nothing(backend, name, kw):
    A, B, opt, f = _two_table_step(name, kw, backend)
    f(np.array([0, 1], np.int32), np.array([1.0, 2.0]) * 1e-300)
    before = _snapshot([A, B], opt)
    with pytest.raises(FloatingPointError, match="update of A"):
        f(np.array([1, 2], np.int32), np.array([np.nan, 1.0]))
    _assert_same(before, [A, B], opt)
    f(np.array([1, 2], np.int32), np.array([1.0, 1.0]) * 1e-300)  # and training goes on
    assert opt.state_dict()["t"] == 2


def test_nan_guard_false_opts_out(backend):
    A, B, opt, f = _two_table_step("SGD", {}, backend, nan_guard=False)
    f(np.array([1], np.int32), np.array([np.nan]))
    assert np.isnan(A.get_value()[1]).all() and np.isfinite(A.get_value()[0]).all()


def test_on_nan_skip_warns_and_skips(backend):
    A, B, opt, f = _two_table_step("Adam", {"sparse": "exact"}, backend, on_nan="skip")
    before = _snapshot([A, B], opt)
    with pytest.warns(RuntimeWarning, match="step skipped"):
        assert f(np.array([1], np.int32), np.array([np.inf])) is None
    _assert_same(before, [A, B], opt)


# ------------------------------------------------- item 8: overflow inside the update


@pytest.mark.parametrize("nan_guard", [None, True])
def test_overflow_to_inf_in_a_row_update_is_caught(backend, nan_guard):
    E = mg.shared(np.ones((4, 2)), name="E")
    i = mg.ivector("i")
    c = (E[i] * mg.constant(np.full(2, 1e300))).sum()
    f = mg.function([i], c, updates=mg.optim.SGD([E], 1e10).updates(c), backend=backend,
                    nan_guard=nan_guard)
    with pytest.raises(FloatingPointError, match="update of E"):
        f(np.array([1, 1, 3], np.int32))
    np.testing.assert_array_equal(E.get_value(), np.ones((4, 2)))


@pytest.mark.parametrize("name, kw", OPTIMIZERS)
def test_overflow_in_the_second_table_undoes_the_first(backend, name, kw):
    """B's update overflows after A's was written: A and every state row come back."""
    A, B, opt, f = _two_table_step(name, kw, backend)
    f(np.array([0, 3], np.int32), np.array([1.0, 2.0]) * 1e-300)
    before = _snapshot([A, B], opt)
    with pytest.raises(FloatingPointError, match="update of B"):
        f(np.array([1, 3], np.int32), np.array([1e10, 1.0]))  # only B's gradient overflows
    _assert_same(before, [A, B], opt)


def test_dense_parameter_update_is_guarded_too(backend):
    w = mg.shared(np.ones(3), name="w")
    x = mg.vector("x")
    c = (w * x).sum()
    f = mg.function([x], c, updates=mg.optim.SGD([w], 1.0).updates(c), backend=backend)
    with pytest.raises(FloatingPointError):
        f(np.array([np.nan, 0.0, 0.0]))
    np.testing.assert_array_equal(w.get_value(), np.ones(3))


def test_a_nan_output_alone_is_returned_by_default(backend):
    x = mg.vector("x")
    assert np.isnan(mg.function([x], x.sum(), backend=backend)(np.array([np.nan])))
    with pytest.raises(FloatingPointError):
        mg.function([x], x.sum(), backend=backend, nan_guard=True)(np.array([np.nan]))


# ------------------------------------------ item 4: destinations checked before writing


def _layouts():
    base = np.zeros((10, 2))
    ro = base.copy()
    ro.flags.writeable = False
    return {"fortran": np.asfortranarray(base), "strided": np.zeros((10, 4))[:, ::2],
            "read-only": ro}


@pytest.mark.parametrize("layout", ["fortran", "strided", "read-only"])
@pytest.mark.parametrize("sparse", ["exact", "lazy"])
def test_any_layout_given_to_set_value_trains_every_table(backend, layout, sparse):
    A = mg.shared(np.zeros((10, 2)), name="A")
    B = mg.shared(np.zeros((10, 2)), name="B")
    B.set_value(_layouts()[layout], borrow=True)
    i = mg.ivector("i")
    c = (A[i] + B[i]).sum()
    o = mg.optim.Adam([A, B], 0.1, sparse=sparse)
    f = mg.function([i], c, updates=o.updates(c), backend=backend)
    for _ in range(2):
        f(np.array([1, 2], np.int32))
    np.testing.assert_allclose(A.get_value(), B.get_value())
    assert A.get_value()[1, 0] < 0


def test_shared_of_a_fortran_array_is_c_ordered():
    assert mg.shared(np.asfortranarray(np.zeros((3, 2)))).get_value(borrow=True).flags.c_contiguous


@pytest.mark.parametrize("layout", ["fortran", "strided", "read-only"])
def test_a_table_swapped_behind_set_value_is_refused_before_any_write(backend, layout):
    A = mg.shared(np.zeros((10, 2)), name="A")
    B = mg.shared(np.zeros((10, 2)), name="B")
    i = mg.ivector("i")
    c = (A[i] + B[i]).sum()
    o = mg.optim.Adam([A, B], 0.1, sparse="exact")
    f = mg.function([i], c, updates=o.updates(c), backend=backend)
    f(np.array([1, 2], np.int32))
    bad = _layouts()[layout]
    if layout != "read-only":
        bad[...] = B.get_value()
    B._value = bad  # behind the invariant's back
    before = A.get_value()  # (no state_dict here: its flush would write B)
    with pytest.raises(ValueError, match="B .*cannot be updated in place"):
        f(np.array([1, 2], np.int32))
    np.testing.assert_array_equal(A.get_value(), before)
    assert int(o.t.value) == 1
    if layout == "read-only":
        bad.flags.writeable = True  # set_value flushes the old value first
    B.set_value(np.array(bad))  # a fresh array: training resumes, not stuck
    f(np.array([1, 2], np.int32))
    assert o.state_dict()["t"] == 2


# ------------------------------------------------------------- item 2: several threads


@pytest.mark.parametrize("sparse", ["exact", "lazy"])
def test_calls_from_four_threads_lose_no_step(backend, sparse):
    W = mg.shared(np.zeros((50, 4)), name="W")
    i = mg.lvector("i")
    c = W[i].sum()
    opt = mg.optim.Adam([W], 0.01, sparse=sparse)
    f = mg.function([i], c, updates=opt.updates(c), backend=backend)
    errors = []

    def work():
        try:
            for _ in range(100):
                f(np.array([1, 2, 3]))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert opt.state_dict()["t"] == 400
    # the same 400 steps taken serially give the same table
    W2 = mg.shared(np.zeros((50, 4)), name="W")
    c2 = W2[i].sum()
    opt2 = mg.optim.Adam([W2], 0.01, sparse=sparse)
    f2 = mg.function([i], c2, updates=opt2.updates(c2), backend=backend)
    for _ in range(400):
        f2(np.array([1, 2, 3]))
    np.testing.assert_array_equal(W.get_value(), W2.get_value())


def test_destinations_are_checked_again_only_when_a_value_is_replaced(monkeypatch):
    """``check_destinations`` skips a table that is the very array it passed last call
    (a weak reference to it is kept); any replacement is a new object and is checked."""
    from minigrad import call_checks

    A = mg.shared(np.zeros((10, 2)), name="A")
    B = mg.shared(np.zeros((10, 2)), name="B")
    i = mg.ivector("i")
    c = (A[i] + B[i]).sum()
    f = mg.function([i], c, updates=mg.optim.SGD([A, B], 0.1).updates(c))
    f(np.array([1, 2], np.int32))
    checked = []
    real = call_checks._np_dtype
    monkeypatch.setattr(call_checks, "_np_dtype", lambda name: checked.append(name) or real(name))
    f(np.array([1, 2], np.int32))
    assert checked == []  # the same arrays: not checked again
    A.set_value(np.ones((10, 2)))
    f(np.array([1, 2], np.int32))
    assert checked == ["float64"]  # A's new array only
    ro = B.get_value()
    ro.flags.writeable = False
    B._value = ro  # behind set_value's back: a new object, refused
    with pytest.raises(ValueError, match="B is read-only"):
        f(np.array([1, 2], np.int32))
