"""The guarded destructive phase built once per function (``call_checks.GuardedPhase``) and
the reused ``RowGuard`` scratch (issue 15 item 12).

The scratch lives across calls: it must grow with the batch, be rebuilt when the tables'
layout changes (dtype, width, present states), be dropped when too large, and its record of
what a call wrote must stay right whatever stops the phase (a NaN, another exception, an
interrupt right after a kernel returned). In every case a failed call leaves every table,
state, ``last`` and step counter bitwise as it was.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
from test_optim_row_guard import _raw

import kernels.row_guard as row_guard
import minigrad as mg
from kernels.row_guard import RowGuard

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _assert_same(before, after):
    assert [n for n, _ in after] == [n for n, _ in before]
    for (label, a), (_, b) in zip(before, after):
        np.testing.assert_array_equal(b, a, err_msg=label)  # bitwise, NaN-aware


def _two_tables(backend, sparse="exact", rows=200, opt_cls="Adam", **kw):
    rng = np.random.default_rng(3)
    A, B = (mg.shared(rng.normal(size=(rows, 4)), name=n) for n in "AB")
    i, x = mg.ivector("i"), mg.matrix("x")
    cost = (A[i] * x[:, :4]).sum() + (B[i] * x[:, 4:]).sum()  # x: (n, 8)
    cls = getattr(mg.optim, opt_cls)
    opt = cls([A, B], 0.01, sparse=sparse, **kw) if opt_cls != "SGD" else cls([A, B], 0.01)
    f = mg.function([i, x], cost, updates=opt.updates(cost), backend=backend)
    return (A, B), opt, f


def _guards(f):
    """The row updates' ``RowGuard``s: the one-call driver's (``update_driver.py``), or
    the per-node phase's."""
    if f.update_driver is not None:
        return [entry.guard for entry in f.update_driver.entries]
    return [step.guard for step in f._guarded_phase._steps if hasattr(step, "guard")]


@pytest.mark.parametrize("sparse", ["lazy", "exact"])
def test_scratch_grows_with_the_batch_and_a_bad_row_after_growth_undoes_all(backend, sparse):
    (A, B), opt, f = _two_tables(backend, sparse)
    rng = np.random.default_rng(0)
    caps = []
    for n in (3, 40, 5, 150):  # grows past the first capacity twice, shrinks in between
        f(np.sort(rng.choice(200, n, replace=False)).astype(np.int32), np.ones((n, 8)))
        caps.append([g._cap for g in _guards(f)])
    assert caps[1][0] >= 40 and caps[2] == caps[1] and caps[3][0] >= 150
    views = [id(v) for g in _guards(f) for v in g._views]
    small = np.arange(0, 20, 2, dtype=np.int32)
    f(small, np.ones((10, 8)))  # a smaller batch reuses the buffers
    assert [id(v) for g in _guards(f) for v in g._views] == views
    before = _raw(opt)
    idx = np.arange(0, 200, 1, dtype=np.int32)  # larger than every batch so far: regrows
    x = np.ones((200, 8))
    x[170, 6] = np.inf  # only the last rows of the 2nd table's update are bad
    with pytest.raises(FloatingPointError, match=r"update of B \(row 170\)"):
        f(idx, x)
    _assert_same(before, _raw(opt))
    f(idx, np.ones((200, 8)))  # retried cleanly through the regrown scratch
    assert np.isfinite(A.get_value()).all() and np.isfinite(B.get_value()).all()


def test_bad_row_in_a_small_batch_after_a_large_one_restores_only_what_it_wrote(backend):
    (A, B), opt, f = _two_tables(backend, "lazy", opt_cls="Momentum", momentum=0.9)
    f(np.arange(100, dtype=np.int32), np.ones((100, 8)))  # large batch: big scratch, stale rows
    before = _raw(opt)
    x = np.ones((3, 8))
    x[1, 4] = np.nan
    with pytest.raises(FloatingPointError, match=r"update of B \(row 7\)"):
        f(np.array([2, 7, 9], np.int32), x)
    _assert_same(before, _raw(opt))  # rows 0..99 saved earlier are not written back


@pytest.mark.parametrize("impl", ["reference", "cpu"])
def test_one_guard_rebuilds_for_another_dtype_width_or_set_of_states(impl):
    import importlib

    K = importlib.import_module(f"kernels.{impl}")
    guard = RowGuard()
    calls = [  # (dtype, width, with a momentum buffer)
        (np.float64, 3, True), (np.float32, 3, True), (np.float32, 5, True),
        (np.float32, 5, False), (np.float64, 1, False), (np.float64, 3, True),
    ]
    rng = np.random.default_rng(2)
    for dtype, width, with_buf in calls:
        P = rng.normal(size=(30, width)).astype(dtype)
        buf = rng.normal(size=(30, width)).astype(dtype) if with_buf else None
        idx = np.array([1, 4, 8, 20, 29])
        g = rng.normal(size=(5, width)).astype(dtype)
        g[3, -1] = np.inf  # row 20
        before = [P.copy()] + ([buf.copy()] if with_buf else [])
        bad = K.momentum_rows(P, buf, idx, g, 3, None, 0.1, 0.9 if with_buf else 0.0, 0.0,
                              False, 0.0, guard=guard)
        assert bad == 3 and guard.bad_row() == 20
        guard.restore()
        for a, b in zip(before, [P] + ([buf] if with_buf else [])):
            np.testing.assert_array_equal(b, a)
        assert guard._dtype == np.dtype(dtype) and guard._row == (width,)


def test_the_kernel_records_what_it_wrote_in_the_guard_status():
    import kernels.cpu as K

    P, M, V = (np.ones((20, 2)) for _ in range(3))
    guard = RowGuard()
    g = np.ones((4, 2))
    g[2, 0] = np.nan
    assert K.adam_rows(P, M, V, np.array([1, 3, 5, 7]), g, 1, None, 0.1, 0.9, 0.999, 1e-8,
                       0.0, False, guard=guard) == 2
    assert guard.status.tolist() == [3, 2]  # rows idx[:3] written (and saved), stopped at 2
    guard.restore()
    assert (guard.written, guard.bad) == (0, -1) and (P == 1).all() and (M == 1).all()
    g[2, 0] = 1.0
    K.adam_rows(P, M, V, np.array([1, 3, 5, 7]), g, 1, None, 0.1, 0.9, 0.999, 1e-8, 0.0,
                False, guard=guard)
    assert guard.status.tolist() == [4, -1]
    guard.release()
    assert (guard.written, guard.bad, guard.bad_row()) == (0, -1, -1)
    guard.restore()  # after release: nothing to undo, nothing changes
    assert not (P == 1).all()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_exception_right_after_a_kernel_returned_still_undoes_the_whole_phase(
        backend, error, monkeypatch):
    """An interrupt that lands after the second table's kernel wrote its rows but before
    Python looked at the result: the guard's status (written by the kernel) says what to
    put back, so both tables and their states come back bitwise."""
    (A, B), opt, f = _two_tables(backend, "exact")
    rows = np.array([1, 5, 9], np.int32)
    f(rows, np.ones((3, 8)))
    f(rows[:2], np.ones((2, 8)))  # row 9 lags: the exact catch-up runs in the next call
    before = _raw(opt)
    second = opt.param_states[1]
    # the step's kernel call (checked, or straight into the compiled loop: direct_updates)
    step = next(s for s in f._guarded_phase._steps if s.op.state is second)
    real_call = step.call

    def call_then_interrupt(inputs, guard):
        real_call(inputs, guard)
        raise error("interrupted right after the kernel")

    monkeypatch.setattr(step, "call", call_then_interrupt)
    with pytest.raises(error):
        f(rows, np.ones((3, 8)))
    _assert_same(before, _raw(opt))
    monkeypatch.undo()
    f(rows, np.ones((3, 8)))  # and the function still works
    assert int(second.step.value) == 3


def test_an_interrupt_between_the_compiled_loop_and_its_python_caller_is_undone(monkeypatch):
    """The compiled loop itself records rows written in ``guard.status``: even an
    exception raised the moment it returns (before its Python wrapper reads the result)
    leaves the guard able to put the rows back."""
    import kernels.cpu.direct_rows as direct_rows
    import kernels.cpu.optim as cpu_optim
    import minigrad.update_driver as update_driver

    monkeypatch.setattr(update_driver, "build", lambda *a: None)  # the per-node phase
    (A, B), opt, f = _two_tables("numba", "lazy")
    f(np.arange(6, dtype=np.int32), np.ones((6, 8)))
    before = _raw(opt)
    calls = []

    def then_interrupt(real):
        def loop_then_interrupt(*args):
            bad = real(*args)
            calls.append(bad)
            if len(calls) == 2:  # the second table's loop has written its rows
                raise KeyboardInterrupt
            return bad

        return loop_then_interrupt

    # the general loop, and the plain lazy one compiled steps call (direct_updates.py)
    monkeypatch.setattr(cpu_optim, "_adam", then_interrupt(cpu_optim._adam))
    monkeypatch.setattr(direct_rows, "lazy_adam", then_interrupt(direct_rows.lazy_adam))
    with pytest.raises(KeyboardInterrupt):
        f(np.arange(6, dtype=np.int32), np.ones((6, 8)))
    assert calls == [-1, -1]
    _assert_same(before, _raw(opt))


@pytest.mark.parametrize("sparse", ["lazy", "dense"])
def test_an_interrupt_right_after_the_one_call_driver_returned_is_undone(sparse, monkeypatch):
    """The one-call destructive phase (``update_driver.py``) wrote every row and returned;
    an exception landing before Python finished the phase puts every row back (``last``
    of a dense exact table included), from the guards the compiled code filled."""
    if sparse == "lazy":
        (A, B), opt, f = _two_tables("numba", "lazy")
        args = (np.arange(6, dtype=np.int32), np.ones((6, 8)))
    else:  # dense gradients: exact mode, every row each step
        rng = np.random.default_rng(4)
        A, B = (mg.shared(rng.normal(size=(5, 3)), name=n) for n in "AB")
        x = mg.matrix("x")
        cost = (A * x).sum() + (B * x * x).sum()
        opt = mg.optim.Adam([A, B], 0.01)
        f = mg.function([x], cost, updates=opt.updates(cost), backend="numba")
        args = (np.ones((5, 3)),)
    assert f.update_driver is not None
    f(*args)
    before = _raw(opt)
    real = f.update_driver._step_rows

    def then_interrupt(*a):
        assert real(*a) == -1  # every row written
        raise KeyboardInterrupt

    monkeypatch.setattr(f.update_driver, "_step_rows", then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        f(*args)
    _assert_same(before, _raw(opt))
    monkeypatch.undo()
    f(*args)  # and the function still works
    assert int(opt.param_states[1].step.value) == 2


def test_scratch_over_keep_bytes_is_dropped_after_each_call(backend, monkeypatch):
    monkeypatch.setattr(row_guard, "KEEP_BYTES", 64)  # every scratch counts as too large
    (A, B), opt, f = _two_tables(backend, "lazy")
    f(np.arange(10, dtype=np.int32), np.ones((10, 8)))
    assert all(g._cap == -1 and not g._views for g in _guards(f))
    before = _raw(opt)
    x = np.ones((10, 8))
    x[6, 5] = np.nan
    with pytest.raises(FloatingPointError, match=r"update of B \(row 6\)"):
        f(np.arange(10, dtype=np.int32), x)
    _assert_same(before, _raw(opt))
    assert all(g._cap == -1 for g in _guards(f))


def test_two_functions_on_one_update_graph_keep_their_own_guards(backend):
    """The guard belongs to the compiled function, not to the shared RowUpdate op: a
    guarded and an unguarded function built from the same updates do not interfere."""
    rng = np.random.default_rng(5)
    E = mg.shared(rng.normal(size=(12, 2)), name="E")
    i, x = mg.ivector("i"), mg.matrix("x")
    cost = (E[i] * x).sum()
    updates = mg.optim.SGD([E], 0.1).updates(cost)
    guarded = mg.function([i, x], cost, updates=updates, backend=backend)
    unguarded = mg.function([i, x], cost, updates=updates, backend=backend, nan_guard=False)
    bad = np.array([[1.0, np.nan]])
    before = E.get_value()
    with pytest.raises(FloatingPointError):
        guarded(np.array([3], np.int32), bad)
    np.testing.assert_array_equal(E.get_value(), before)
    unguarded(np.array([3], np.int32), bad)  # the documented opt-out writes it
    assert np.isnan(E.get_value()[3, 1])


def test_guarded_calls_from_several_threads_lose_no_step_and_never_write_a_nan(backend):
    (A, B), opt, f = _two_tables(backend, "exact", rows=64)
    good, failed = [], []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for k in range(25):
            idx = np.sort(rng.choice(64, 8, replace=False)).astype(np.int32)
            x = np.ones((8, 8))
            if k % 3 == 2:
                x[rng.integers(8), rng.integers(8)] = np.nan
            try:
                f(idx, x)
                good.append(1)
            except FloatingPointError:
                failed.append(1)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(failed) == 4 * 8 and len(good) == 4 * 17
    assert all(int(ps.step.value) == len(good) for ps in opt.param_states)
    assert np.isfinite(A.get_value()).all() and np.isfinite(B.get_value()).all()
