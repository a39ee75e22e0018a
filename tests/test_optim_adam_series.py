"""Exact Adam's closed-form catch-up (``kernels.cpu.optim._adam_series``).

A row that skipped ``k`` steps drifts by a sum over those steps; the compiled kernel now
sums it per row (a series in ``eps / sqrt(v)``, O(1) per element) instead of replaying
every step on every element. Checked against the plain dense recurrence in float64: with
constant lr and under a schedule, Adam, AdamW and AMSGrad, gaps of 1..10^5 steps, rows
from the very start, elements with a tiny ``v`` (where the series does not apply and the
kernel replays), and against the replay itself on the same rows.
"""
from __future__ import annotations

import numpy as np
import pytest
from adam_zero_grad import dense_skipped_steps

from kernels.reference.history import StepHistory
from kernels.rules import adam as adam_rule

cpu = pytest.importorskip("kernels.cpu", reason="the compiled catch-up needs Numba")
from kernels.cpu import optim as cpu_optim  # noqa: E402

B1, B2, EPS = 0.9, 0.999, 1e-8


def _rel_err(got, want):
    return float(np.max(np.abs(got - want) / (np.abs(want) + 1e-300)))


def _dense(p, m, v, vm, last, t, lr_of, wd_of, decoupled, amsgrad):
    return dense_skipped_steps(p, m, v, vm, last, t, lr_of, wd_of, B1, B2, EPS, decoupled,
                               amsgrad)


def _rows(rng, V, D, tiny_v=False):
    P = rng.normal(size=(V, D))
    M = rng.normal(size=(V, D)) * 0.1
    Vv = rng.random((V, D)) * 0.01 + 1e-6
    if tiny_v:  # sqrt(v) near eps: the series would not converge, the kernel replays
        Vv[::3, 1] = 1e-22
        M[::3, 1] = 1e-12
    if V > 2:
        M[2] = 0.0  # a row never touched: no drift at all, only decays
    return P, M, Vv


CASES = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize("decoupled, amsgrad", CASES)
@pytest.mark.parametrize("schedule", [False, True], ids=["const", "cosine"])
@pytest.mark.parametrize("tiny_v", [False, True], ids=["", "tiny_v"])
@pytest.mark.parametrize("series", [False, True], ids=["walk", "blocks"])
def test_catch_up_equals_the_dense_loop(decoupled, amsgrad, schedule, tiny_v, series):
    """``blocks``: the history holds the series' block sums (what an optimizer's exact
    mode gives it), so the kernel reads O(log gap) blocks instead of walking the steps."""
    rng = np.random.default_rng(7)
    V, D, t = 24, 8, 3000
    lr0, wd0 = 2e-2, (0.05 if decoupled else 0.0)
    lr_of = (lambda s: lr0 * 0.5 * (1 + np.cos(np.pi * s / 4000))) if schedule \
        else (lambda s: lr0)
    wd_of = lambda s: wd0  # noqa: E731
    P, M, Vv = _rows(rng, V, D, tiny_v)
    VM = Vv * 1.5 if amsgrad else None
    last = rng.integers(0, t - 1, V).astype(np.int64)
    last[:3] = [0, t - 2, 0]  # from the very start, a one-step gap
    last[5] = t - 30
    want = _dense(P, M, Vv, VM, last, t, lr_of, wd_of, decoupled, amsgrad)
    history = None
    if schedule or series:
        blocks = adam_rule.series_blocks(B1, B2, decoupled, amsgrad) if series else None
        history = StepHistory(adam_rule.matrix, series=blocks)
        for s in range(1, t + 1):
            history.record(s, lr_of(s), wd_of(s))
    cpu.adam_rows(P, M, Vv, np.arange(V), None, t, last, lr_of(t), B1, B2, EPS, wd0,
                  decoupled, amsgrad, VM, history=history)
    assert _rel_err(P, want[0]) < 1e-12
    np.testing.assert_allclose(M, want[1], rtol=1e-12, atol=0)
    np.testing.assert_allclose(Vv, want[2], rtol=1e-12, atol=0)
    assert (last == t).all()


def _one_row_pair(decoupled, amsgrad, k, seed):
    """The same row caught up by the series and by the replay (the fallback)."""
    rng = np.random.default_rng(seed)
    P, M, Vv = _rows(rng, 1, 16)
    VM = Vv * 1.2 if amsgrad else np.zeros((0, 16))
    tables = [a.copy() for a in (P, M, Vv, VM)]
    empty = np.zeros(1)
    lr, wd = 1e-3, (0.01 if decoupled else 0.0)
    _, ratio = cpu_optim.adam_drift_ratio(1.0, B1, B2, lr * wd if decoupled else 0.0,
                                          decoupled)
    args = (0, 40, k, lr, wd, B1, B2, EPS, decoupled, amsgrad, ratio, 1e-18, lr, False,
            empty, empty)
    j_series = cpu_optim._adam_series(*tables, *args)
    j_replay = cpu_optim._adam_replay(P, M, Vv, VM, *args, False)
    q = 1.0 - lr * wd if decoupled else 1.0
    for (p, m, v), j in ((tables[:3], j_series), ((P, M, Vv), j_replay)):
        rest = k - j  # the remaining steps only decay (what _adam_catch_up does next)
        p *= q**rest
        m *= B1**rest
        v *= B2**rest
    return j_series, j_replay, tables, (P, M, Vv)


@pytest.mark.parametrize("decoupled, amsgrad", CASES)
@pytest.mark.parametrize("k", [1, 7, 300, 10**5])
def test_series_equals_the_replay(decoupled, amsgrad, k):
    j_series, j_replay, series, replay = _one_row_pair(decoupled, amsgrad, k, seed=k)
    assert 0 < j_series <= k and 0 < j_replay <= k
    # both stop where the bound on the rest of the drift is below 1e-18 of |p| (the
    # series tests it at every step with the row's first |p|, the replay at every 8th)
    for a, b in zip(series[:3], replay):
        assert _rel_err(a, b) < 1e-13


def test_series_steps_are_bounded_for_a_long_gap():
    """10^5 skipped steps: the drift is summed over a few hundred steps only (the rest
    only decays m and v), so the cost per row does not grow with the gap."""
    j_series, _, _, _ = _one_row_pair(False, False, 10**5, seed=0)
    assert j_series < 1000


def test_tiny_v_falls_back_to_the_replay():
    rng = np.random.default_rng(0)
    P, M, Vv = _rows(rng, 1, 4)
    Vv[0, 0], M[0, 0] = 1e-22, 1e-12  # sqrt(v) = 1e-11 < eps: z = eps / sqrt(v) > 1
    before = [a.copy() for a in (P, M, Vv)]
    empty = np.zeros(1)
    j = cpu_optim._adam_series(P, M, Vv, np.zeros((0, 4)), 0, 5, 100, 1e-3, 0.0, B1, B2,
                               EPS, False, False, 10.0, 1e-18, 1e-3, False, empty, empty)
    assert j == -1
    for a, b in zip((P, M, Vv), before):  # nothing written before giving up
        np.testing.assert_array_equal(a, b)


def test_amsgrad_max_below_v_falls_back_to_the_replay():
    """The series assumes vmax >= v (what every AMSGrad step leaves); a state where it is
    not is replayed, which applies the running max at every step."""
    rng = np.random.default_rng(1)
    P, M, Vv = _rows(rng, 1, 4)
    VM = Vv * 0.5
    empty = np.zeros(1)
    j = cpu_optim._adam_series(P, M, Vv, VM, 0, 5, 100, 1e-3, 0.0, B1, B2, EPS, False, True,
                               10.0, 1e-18, 1e-3, False, empty, empty)
    assert j == -1
    last = np.array([5], dtype=np.int64)
    want = _dense(P, M, Vv, np.maximum(VM, Vv * B2), last, 60, lambda s: 1e-3,
                  lambda s: 0.0, False, True)
    cpu.adam_rows(P, M, Vv, np.arange(1), None, 60, last, 1e-3, B1, B2, EPS, 0.0, False,
                  True, VM)
    assert _rel_err(P, want[0]) < 1e-12


@pytest.mark.parametrize("decoupled, amsgrad", CASES)
@pytest.mark.parametrize("k", [1, 5, 300, 10**4])
def test_block_sums_equal_the_walk(decoupled, amsgrad, k):
    """``_adam_series_blocked`` (the sums from the history's blocks, O(log k)) against
    ``_adam_series`` (walking the steps) on the same row under a cosine schedule: it sums
    at least as many steps, and the caught-up row agrees to float64 rounding."""
    rng = np.random.default_rng(k)
    lag, t = 37, 37 + k
    lr_of = lambda s: 1e-2 * 0.5 * (1 + np.cos(np.pi * s / (2.0 * t)))  # noqa: E731
    wd = 0.02 if decoupled else 0.0
    series = adam_rule.series_blocks(B1, B2, decoupled, amsgrad)
    history = StepHistory(adam_rule.matrix, series=series)
    for s in range(1, t + 1):
        history.record(s, lr_of(s), wd)
    P, M, Vv = _rows(rng, 1, 16)
    VM = Vv * 1.2 if amsgrad else np.zeros((0, 16))
    walk = [a.copy() for a in (P, M, Vv, VM)]
    lr_max, tol = history.lr_max, 1e-18
    _, ratio = cpu_optim.adam_drift_ratio(1.0, B1, B2, history.lrwd_max if decoupled else 0.0,
                                          decoupled)
    j_blocks = cpu_optim._adam_series_blocked(
        P, M, Vv, VM, 0, lag, k, EPS, B1, B2, amsgrad, ratio, lr_max, history.sblocks,
        history.offsets, history.n_levels, series.rho_pow,
        cpu_optim.series_logs(B1, B2, amsgrad, tol))
    j_walk = cpu_optim._adam_series(*walk, 0, lag, k, lr_of(t), wd, B1, B2, EPS, decoupled,
                                    amsgrad, ratio, tol, lr_max, True, history.lr, history.wd)
    assert 0 < j_walk <= j_blocks <= k
    assert j_blocks <= max(j_walk + 64, 2 * j_walk)  # J is a tight bound, not the gap
    # the walk stopped earlier: its remaining steps only decay m, v (and p by q)
    rest = j_blocks - j_walk
    q = np.prod([1.0 - lr_of(s) * wd for s in range(lag + j_walk + 1, lag + j_blocks + 1)])
    assert _rel_err(P, walk[0] * q) < 1e-13
    np.testing.assert_allclose(M, walk[1] * B1**rest, rtol=1e-13)
    np.testing.assert_allclose(Vv, walk[2] * B2**rest, rtol=1e-13)


def test_block_sums_refuse_a_tiny_v():
    """z = eps / sqrt(v) too large at the last summed step: -1, nothing written."""
    rng = np.random.default_rng(0)
    series = adam_rule.series_blocks(B1, B2, False, False)
    history = StepHistory(adam_rule.matrix, series=series)
    for s in range(1, 200):
        history.record(s, 1e-3, 0.0)
    P, M, Vv = _rows(rng, 1, 4)
    Vv[0, 0], M[0, 0] = 1e-22, 1e-12
    before = [a.copy() for a in (P, M, Vv)]
    j = cpu_optim._adam_series_blocked(P, M, Vv, np.zeros((0, 4)), 0, 5, 150, EPS, B1, B2,
                                       False, 10.0, 1e-3, history.sblocks, history.offsets,
                                       history.n_levels, series.rho_pow,
                                       cpu_optim.series_logs(B1, B2, False, 1e-18))
    assert j == -1
    for a, b in zip((P, M, Vv), before):
        np.testing.assert_array_equal(a, b)
