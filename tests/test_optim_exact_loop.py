"""The plain exact-mode Adam loop (``kernels.cpu.optim._adam_exact``) against the general
loop (``_adam_general``) on the same arguments.

``_adam`` sends an exact-mode gradient step with the history's block sums (no AMSGrad, no
L2 decay) to the plain loop, which fuses each row's closed-form catch-up with the step in
one pass and falls back to the general catch-up for a row the series does not fit. Both
loops must give the same rows (float64: to 1e-12; float32: to the table's rounding, since
the plain loop keeps the caught-up row in registers instead of storing it first), the
same ``last``, and, guarded, the same stop, status and saved rows. The exact-vs-dense
tests (test_optim*.py, test_schedules.py) cover the result against the dense optimizer.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from kernels.reference.history import StepHistory
from kernels.reference.optim import adam_matrix
from kernels.rules.adam import series_blocks

pytest.importorskip("kernels.cpu", reason="the compiled row loops need Numba")
from kernels.cpu import optim as cpu_optim  # noqa: E402
from kernels.cpu.caught_up import take  # noqa: E402
from kernels.row_guard import RowGuard  # noqa: E402

B1, B2, EPS = 0.9, 0.999, 1e-8
_ADAM_PARAMS = tuple(inspect.signature(cpu_optim._adam).parameters)


def _by_name(loop):
    names = tuple(inspect.signature(loop.py_func).parameters)

    def call(*args):
        """``loop`` called with ``_adam``'s arguments (the ones it takes, by name)."""
        by_name = dict(zip(_ADAM_PARAMS, args))
        # no rows kept by a read (kernels/cpu/caught_up.py): the loop catches every row up
        by_name.update(zip(("k_rows", "k_lasts", "k_order", "k_pre", "k_post"),
                           take(None, None, args[0].dtype, args[0].shape[1])))
        return loop(*[by_name[name] for name in names])

    return call


_plain = _by_name(cpu_optim._adam_exact)
_plain_catch_up = _by_name(cpu_optim._adam_exact_catch_up)

T = 3200  # the call's step
V, D = 40, 8


def _history(decoupled, wd):
    h = StepHistory(adam_matrix if decoupled else None,
                    series=series_blocks(B1, B2, decoupled, False))
    h.restart(0)
    for s in range(1, T + 1):  # a cosine schedule with restarts every 500 steps
        h.record(s, 1e-3 * (0.55 + 0.45 * np.cos(np.pi * (s % 500) / 500)), wd)
    return h


def _tables(rng, dtype):
    P = rng.normal(size=(V, D))
    M = rng.normal(size=(V, D)) * 0.1
    Vv = rng.random((V, D)) * 0.01 + 1e-6
    M[2], Vv[2] = 0.0, 0.0  # a row never touched: nothing but its step
    Vv[5, 3], M[5, 3] = 1e-22, 1e-12  # sqrt(v) near eps: the series does not fit
    last = np.full(V, T - 1, dtype=np.int64)
    lags = [0, 1, 2, 7, 7, 7, 50, 600, 3000, T - 1]  # (row 5: k = 7, the tiny v)
    for i in range(V):
        last[i] = T - 1 - lags[i % len(lags)]
    return [a.astype(dtype) for a in (P, M, Vv)] + [last]


def _run(loop, tables, idx, G, h, decoupled, wd, guard=None):
    P, M, Vv, last = tables
    args = cpu_optim.adam_loop_args(P, M, Vv, idx, G, T, last, float(h.lr[T]), B1, B2, EPS,
                                    wd, decoupled, history=h, guard=guard, trusted=True)
    return loop(*args)


@pytest.fixture(scope="module")
def histories():
    return {(dec, wd): _history(dec, wd) for dec, wd in
            [(False, 0.0), (True, 0.0), (True, 0.01)]}


def _assert_same_tables(got, want, dtype):
    """P, M, V to 1e-12 (float64; float32: 2e-6) of the general loop's, ``last`` equal."""
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-300)
    np.testing.assert_array_equal(got[3], want[3])


@pytest.mark.parametrize("decoupled, wd", [(False, 0.0), (True, 0.0), (True, 0.01)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_plain_exact_loop_equals_the_general_loop(histories, decoupled, wd, dtype):
    rng = np.random.default_rng(3)
    base = _tables(rng, dtype)
    idx = np.arange(0, V, dtype=np.int64)
    G = rng.normal(size=(V, D)).astype(dtype)
    got, want = [a.copy() for a in base], [a.copy() for a in base]
    h = histories[(decoupled, wd)]
    assert _run(_plain, got, idx, G, h, decoupled, wd) == -1
    assert _run(cpu_optim._adam_general, want, idx, G, h, decoupled, wd) == -1
    _assert_same_tables(got, want, dtype)
    assert (got[3][idx] == T).all()


@pytest.mark.parametrize("decoupled, wd", [(False, 0.0), (True, 0.01)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_plain_catch_up_equals_the_general_loop(histories, decoupled, wd, dtype):
    """Without a gradient (a flush, a read's lagging rows): rows brought up to step T."""
    rng = np.random.default_rng(6)
    base = _tables(rng, dtype)
    base[3] = np.maximum(base[3] - 1, 0)  # one lag more: the catch-up goes up to T itself
    idx = np.arange(0, V, dtype=np.int64)
    got, want = [a.copy() for a in base], [a.copy() for a in base]
    h = histories[(decoupled, wd)]
    assert _run(_plain_catch_up, got, idx, None, h, decoupled, wd) == -1
    assert _run(cpu_optim._adam_general, want, idx, None, h, decoupled, wd) == -1
    _assert_same_tables(got, want, dtype)
    assert not np.array_equal(got[0], base[0])  # (the catch-up moved rows)


def test_adam_rows_takes_the_plain_loop(histories):
    """``adam_rows`` (and so ``minigrad/direct_updates.py``, which calls ``_adam``) runs the
    plain loop for this case: bitwise its result."""
    rng = np.random.default_rng(4)
    base = _tables(rng, np.float32)
    idx = np.arange(1, V, 2, dtype=np.int64)
    G = rng.normal(size=(idx.shape[0], D)).astype(np.float32)
    h = histories[(False, 0.0)]
    via_rows, plain = [a.copy() for a in base], [a.copy() for a in base]
    P, M, Vv, last = via_rows
    cpu_optim.adam_rows(P, M, Vv, idx, G, T, last, float(h.lr[T]), B1, B2, EPS, 0.0, False,
                        history=h)
    _run(_plain, plain, idx, G, h, False, 0.0)
    for a, b in zip(via_rows, plain):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad_row", [0, 5, 17])
def test_guarded_plain_loop_stops_and_saves_like_the_general_loop(histories, bad_row):
    """A NaN gradient in row ``bad_row`` (a row of each kind: caught up by the series, by
    the fallback, not lagging): the same stop, status and saved rows, and restoring the
    scratch gives the tables back bitwise."""
    rng = np.random.default_rng(5)
    base = _tables(rng, np.float32)
    idx = np.arange(0, V, dtype=np.int64)
    G = rng.normal(size=(V, D)).astype(np.float32)
    G[bad_row, 1] = np.nan
    h = histories[(True, 0.01)]
    results = []
    for loop in (_plain, cpu_optim._adam_general):
        tables, guard = [a.copy() for a in base], RowGuard()
        stop = _run(loop, tables, idx, G, h, True, 0.01, guard)
        written = int(guard.status[0])
        views, saved_last = guard._views, guard._saved_last
        saved = [s[:written].copy() for s in views[:3]] + [saved_last[:written].copy()]
        results.append((stop, guard.status.copy(), saved))
        guard.restore()
        for a, b in zip(tables, base):
            np.testing.assert_array_equal(a, b)
    (stop_a, status_a, saved_a), (stop_b, status_b, saved_b) = results
    assert stop_a == stop_b == bad_row
    np.testing.assert_array_equal(status_a, status_b)
    for a, b in zip(saved_a, saved_b):
        np.testing.assert_array_equal(a, b)


# --- AMSGrad and L2 decay in the plain loops ------------------------------------------------

#: (decoupled, wd, amsgrad): AMSGrad's closed form (Adam, AdamW), L2 decay's replay (Adam,
#: with and without AMSGrad)
EXTRA = [(False, 0.0, True), (True, 0.01, True), (False, 0.01, False), (False, 0.01, True)]
EXTRA_IDS = ["adam-amsgrad", "adamw-amsgrad", "adam-l2", "adam-l2-amsgrad"]


@pytest.fixture(scope="module")
def extra_histories():
    out = {}
    for decoupled, wd, amsgrad in EXTRA:
        h = StepHistory(adam_matrix if decoupled else None,
                        series=series_blocks(B1, B2, decoupled, amsgrad))
        h.restart(0)
        for s in range(1, T + 1):
            h.record(s, 1e-3 * (0.55 + 0.45 * np.cos(np.pi * (s % 500) / 500)), wd)
        out[(decoupled, wd, amsgrad)] = h
    return out


def _extra_tables(rng, dtype, amsgrad):
    P, M, Vv, last = _tables(rng, np.float64)
    tables = [P, M, Vv]
    if amsgrad:  # the max: at least v, as a dense run keeps it (row 5's stays tiny)
        tables.append(Vv * (1.0 + rng.random(Vv.shape)))
    return [a.astype(dtype) for a in tables] + [last]


def _run_extra(loop, tables, idx, G, h, case, guard=None):
    decoupled, wd, amsgrad = case
    P, M, Vv, *rest = tables
    VM = rest[0] if amsgrad else None
    last = rest[-1]
    args = cpu_optim.adam_loop_args(P, M, Vv, idx, G, T, last, float(h.lr[T]), B1, B2, EPS,
                                    wd, decoupled, amsgrad, VM, history=h, guard=guard,
                                    trusted=True)
    return loop(*args)


def _same_extra(got, want, dtype):
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    for g, w in zip(got[:-1], want[:-1]):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-300)
    np.testing.assert_array_equal(got[-1], want[-1])


@pytest.mark.parametrize("with_grad", [True, False], ids=["step", "catch-up"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", EXTRA, ids=EXTRA_IDS)
def test_plain_loops_with_amsgrad_and_l2_equal_the_general_loop(extra_histories, case, dtype,
                                                                 with_grad):
    """``_adam`` sends AMSGrad and L2 decay to the plain loops now: bitwise what
    ``adam_rows`` gives, and the general loop's rows to 1e-12 (float64)."""
    rng = np.random.default_rng(8)
    base = _extra_tables(rng, dtype, case[2])
    if not with_grad:
        base[-1] = np.maximum(base[-1] - 1, 0)  # the catch-up goes up to T itself
    idx = np.arange(0, V, dtype=np.int64)
    G = rng.normal(size=(V, D)).astype(dtype) if with_grad else None
    h = extra_histories[case]
    plain = _plain if with_grad else _plain_catch_up
    got, want, via = ([a.copy() for a in base] for _ in range(3))
    assert _run_extra(plain, got, idx, G, h, case) == -1
    assert _run_extra(cpu_optim._adam_general, want, idx, G, h, case) == -1
    _run_extra(cpu_optim._adam, via, idx, G, h, case)
    _same_extra(got, want, dtype)
    for a, b in zip(via, got):
        np.testing.assert_array_equal(a, b)  # (the dispatch took the plain loop)
    assert not np.array_equal(got[0], base[0])


@pytest.mark.parametrize("bad_row", [0, 5, 17])
@pytest.mark.parametrize("case", [EXTRA[1], EXTRA[3]], ids=[EXTRA_IDS[1], EXTRA_IDS[3]])
def test_guarded_plain_loop_with_amsgrad_and_l2_stops_like_the_general_loop(
        extra_histories, case, bad_row):
    """A NaN gradient in ``bad_row``: the same stop and saved rows (the max too) as the
    general loop, and restoring gives the tables back bitwise."""
    rng = np.random.default_rng(9)
    base = _extra_tables(rng, np.float64, case[2])
    idx = np.arange(0, V, dtype=np.int64)
    G = rng.normal(size=(V, D))
    G[bad_row, 1] = np.nan
    h = extra_histories[case]
    results = []
    for loop in (_plain, cpu_optim._adam_general):
        tables, guard = [a.copy() for a in base], RowGuard()
        stop = _run_extra(loop, tables, idx, G, h, case, guard)
        written = int(guard.status[0])
        saved = [s[:written].copy() for s in guard._views[:len(base) - 1]]
        results.append((stop, guard.status.copy(), saved, guard._saved_last[:written].copy()))
        guard.restore()
        for a, b in zip(tables, base):
            np.testing.assert_array_equal(a, b)
    (stop_a, status_a, saved_a, last_a), (stop_b, status_b, saved_b, last_b) = results
    assert stop_a == stop_b == bad_row
    np.testing.assert_array_equal(status_a, status_b)
    np.testing.assert_array_equal(last_a, last_b)
    for a, b in zip(saved_a, saved_b):
        np.testing.assert_array_equal(a, b)
