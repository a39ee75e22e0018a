"""The exact-mode step history stays bounded on a long run (issue 13): a flush restarts it
at the current step, and a full window drops the steps no lagging row needs (storage
indexed by ``step - base``). The run still equals the dense optimizer, and a saved state
resumes exactly. ``COMPACT_MIN`` is lowered so a few thousand steps exercise it."""
import numpy as np
import pytest

import minigrad as mg
from kernels.reference import history as history_module
from kernels.reference.history import StepHistory
from minigrad.optim import param_state

V, D = 5, 2
LR0, MU, WD, T_MAX = 0.05, 0.9, 0.01, 700


def _lr(s):  # CosineAnnealingLR(LR0, T_max=T_MAX) at step s (1-based: the lr of step s)
    return LR0 * 0.5 * (1 + np.cos(np.pi * ((s - 1) % (2 * T_MAX)) / T_MAX))


def _dense(E0, batches):
    """torch.optim.SGD(momentum=MU, weight_decay=WD) fed the densified gradient of
    ``(E[idx] ** 2).sum()``: every row steps at every step."""
    p, b = E0.copy(), np.zeros_like(E0)
    for s, idx in enumerate(batches, start=1):
        g = np.zeros_like(p)
        np.add.at(g, idx, 2 * p[idx])
        g = g + WD * p
        b = g if s == 1 else MU * b + g
        p = p - _lr(s) * b
    return p


@pytest.fixture
def small_window(monkeypatch):
    monkeypatch.setattr(history_module, "COMPACT_MIN", 64)
    monkeypatch.setattr(param_state, "COMPACT_MIN", 64)


def _batches(n, rng):
    # rows 0, 1 every step; row 2 every 40 steps; rows 3, 4 in the first steps, then
    # every 500 (they lag up to 500 steps)
    out = []
    for s in range(1, n + 1):
        idx = [0, 1] + ([2] if s % 40 == 0 else []) + ([3, 4] if s <= 3 or s % 500 == 0
                                                      else [])
        out.append(np.array(idx, dtype=np.int64))
    return out


def test_long_run_keeps_the_history_bounded_and_equals_dense(small_window, backend):
    rng = np.random.default_rng(0)
    E0 = rng.standard_normal((V, D))
    E = mg.shared(E0.copy(), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    lr = mg.optim.schedules.CosineAnnealingLR(LR0, T_max=T_MAX)
    opt = mg.optim.Momentum([E], lr=lr, momentum=MU, weight_decay=WD, sparse="exact")
    step = mg.function([idx], cost, updates=opt.updates(cost), backend=backend)
    batches = _batches(3000, rng)
    h = None
    caps = []
    for s, b in enumerate(batches, start=1):
        step(b)
        h = opt.param_states[0].history
        caps.append(h.cap)
        if s == 1500:  # a flush mid-run: nothing lags afterwards, the history restarts
            mid = E.get_value()
            np.testing.assert_allclose(mid, _dense(E0, batches[:1500]), rtol=1e-12,
                                       atol=1e-14)
            assert h.base == 1500 and h.n == 1500 and h.cap == 64
    # without compaction the window would hold all 3000 steps (cap 4096); with it, it
    # stays within about twice the longest lag (500 steps)
    assert max(caps) <= 1024
    assert h.base > 2000
    np.testing.assert_allclose(E.get_value(), _dense(E0, batches), rtol=1e-12, atol=1e-14)


def test_compaction_only_drops_what_no_row_needs(small_window):
    h = StepHistory(lambda lr, wd: (1.0 - lr * wd, 0.0, 0.0, 1.0))
    for s in range(1, 64):
        h.record(s, 0.1 + s, 0.01)
    h.record(64, 0.5, 0.01)  # storage grows to 128 (64 is the first size)
    assert h.cap == 128 and not h.compact(60)  # a row still lags from step 60
    assert h.compact(64) and h.base == 64
    assert h.at(64) == (0.5, 0.01)
    with pytest.raises(ValueError, match="out of order"):
        h.record(64, 0.1, 0.0)


def test_a_compacted_history_refuses_a_row_it_forgot():
    cpu = pytest.importorskip("kernels.cpu", reason="Numba not installed")
    import kernels.reference as reference

    h = StepHistory(lambda lr, wd: (1.0 - lr * wd, 0.0, 0.0, 1.0))
    for s in range(1, 11):
        h.record(s, 0.1, 0.01)
    h.restart(10)
    h.record(11, 0.1, 0.01)
    P = np.ones((3, 2))
    last = np.array([10, 4, 10], dtype=np.int64)  # row 1 lags from a forgotten step
    for module in (cpu, reference):
        with pytest.raises(ValueError, match="compacted"):
            module.sgd_rows(P, np.array([1]), np.ones((1, 2)), 12, last, 0.1, 0.01,
                            history=h)
    np.testing.assert_array_equal(P, 1.0)
