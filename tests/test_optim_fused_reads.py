"""The fused exact-mode read of SGD / momentum tables (``kernels.cpu.fresh.fresh_linear``)
against the general read (``gather_lagging``, then the rule's row kernel on the copies).

An evaluation function that gathers rows of an exact-mode table gets them caught up to the
table's step (``FreshTake``); for the linear rules the Numba backend does the gather and
the catch-up in one pass. Checked: the same rows (float64 bitwise; float32 to rounding:
the fused read keeps torch's first step in registers), tables and ``last`` untouched, bad
indices reported by position, and that ``FreshTake`` takes it.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg
from kernels import row_kernels
from kernels.reference.history import StepHistory
from kernels.reference.optim import momentum_matrix

pytest.importorskip("kernels.cpu", reason="the fused read is a Numba kernel")
import kernels.cpu as cpu  # noqa: E402
from kernels.cpu import fresh as cpu_fresh  # noqa: E402

T, V, D = 700, 30, 5
CASES = {
    "sgd_wd": dict(momentum=0.0, dampening=0.0, nesterov=False, wd=0.01),
    "sgd": dict(momentum=0.0, dampening=0.0, nesterov=False, wd=0.0),
    "momentum": dict(momentum=0.9, dampening=0.0, nesterov=False, wd=0.0),
    "nesterov_wd": dict(momentum=0.9, dampening=0.0, nesterov=True, wd=0.02),
    "dampening_wd": dict(momentum=0.8, dampening=0.3, nesterov=False, wd=0.01),
}


def _history(case):
    hyper = CASES[case]
    h = StepHistory(lambda lr, wd: momentum_matrix(lr, hyper["momentum"], hyper["dampening"],
                                                   hyper["nesterov"], wd))
    h.restart(0)
    for s in range(1, T + 1):  # a decaying schedule
        h.record(s, 0.05 * 0.997 ** s, hyper["wd"])
    return h


def _tables(rng, dtype, mu):
    P = rng.normal(size=(V, D)).astype(dtype)
    tables = [P] + ([rng.normal(size=(V, D)).astype(dtype)] if mu else [])
    last = rng.integers(0, T + 1, V).astype(np.int64)
    last[:4] = 0  # never touched: torch's first step sets the buffer
    last[4:7] = T  # up to date
    return tables, last


def _general(tables, last, flat, t, h, hyper):
    bad, out, pos, sub, sub_last = cpu.gather_lagging(tables, last, flat, t)
    local = np.arange(pos.shape[0], dtype=np.int64)
    lr, wd = h.at(t)
    cpu.momentum_rows(sub[0], sub[1] if len(sub) > 1 else None, local, None, t, sub_last, lr,
                      hyper["momentum"], hyper["dampening"], hyper["nesterov"], wd, history=h,
                      trusted=True)
    out[pos] = sub[0]
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_read_equals_the_general_read(case, dtype):
    hyper = CASES[case]
    rng = np.random.default_rng(7)
    tables, last = _tables(rng, dtype, hyper["momentum"])
    before = [a.copy() for a in tables] + [last.copy()]
    flat = np.concatenate([np.arange(V), rng.integers(0, V, 9)]).astype(np.int64)  # repeats
    h = _history(case)
    bad, got = cpu_fresh.fresh_linear(tables, last, flat, T, h, hyper)
    assert bad == -1 and got is not None
    want = _general([a.copy() for a in tables], last.copy(), flat, T, h, hyper)
    if dtype == np.float64:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(got[:4], tables[0][:4]) or hyper["wd"] == 0.0  # rows moved
    for a, b in zip(tables + [last], before):
        np.testing.assert_array_equal(a, b)  # a read writes nothing


def test_fused_read_reports_the_first_bad_index():
    rng = np.random.default_rng(8)
    tables, last = _tables(rng, np.float64, 0.9)
    h = _history("momentum")
    for flat, where in (([1, V, 2], 1), ([-1, 0], 0)):
        bad, out = cpu_fresh.fresh_linear(tables, last, np.array(flat, dtype=np.int64), T, h,
                                          CASES["momentum"])
        assert (bad, out) == (where, None)


def test_fresh_take_uses_the_fused_read(monkeypatch):
    """An evaluation function's read of an exact-mode momentum table goes through the
    registered fused read, and gives what the dense optimizer's table holds."""
    calls = []
    real = row_kernels.fresh_read("momentum", cpu)

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setitem(row_kernels._FRESH, ("momentum", "numba"), counting)
    rng = np.random.default_rng(9)
    E = mg.shared(rng.normal(size=(20, 3)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    opt = mg.optim.Momentum([E], lr=0.05, momentum=0.9, weight_decay=0.01, sparse="exact")
    train = mg.function([idx], cost, updates=opt.updates(cost), backend="numba")
    evaluate = mg.function([idx], E[idx], backend="numba")
    for t in range(6):
        train(np.array([t % 3, 5]))
    rows = np.arange(20)
    calls.clear()
    got = evaluate(rows)
    assert calls
    np.testing.assert_allclose(got, E.get_value()[rows], rtol=1e-13, atol=1e-15)
