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


# --- Adam / AdamW (kernels.cpu.fresh.fresh_adam) ------------------------------------------

#: the read's step: rows last updated at step 0 or 100 lag by 10^4+ steps
T_ADAM = 10_400
ADAM_CASES = [(False, False), (True, False), (False, True), (True, True)]  # decoupled, amsgrad
ADAM_IDS = ["adam", "adamw", "adam-amsgrad", "adamw-amsgrad"]


@pytest.fixture(scope="module")
def adam_histories():
    """A StepHistory per case, filled lazily: a warm-up then cosine restarts (0.8 s each)."""
    from kernels.reference.optim import adam_matrix
    from kernels.rules.adam import series_blocks

    made = {}

    def get(decoupled, amsgrad):
        if (decoupled, amsgrad) not in made:
            h = StepHistory(adam_matrix if decoupled else None,
                            series=series_blocks(0.9, 0.999, decoupled, amsgrad))
            h.restart(0)
            wd = 0.01 if decoupled else 0.0
            for s in range(1, T_ADAM + 1):
                warm = min(1.0, s / 300)
                h.record(s, 1e-3 * warm * (0.55 + 0.45 * np.cos(np.pi * (s % 700) / 700)), wd)
            made[(decoupled, amsgrad)] = h
        return made[(decoupled, amsgrad)]

    return get


def _adam_tables(rng, dtype, amsgrad):
    P = rng.normal(size=(V, D))
    M = rng.normal(size=(V, D)) * 0.1
    Vv = rng.random((V, D)) * 0.01 + 1e-6
    VM = Vv * (1.0 + rng.random((V, D)))  # AMSGrad's max, at least v (as a dense run has it)
    M[2], Vv[2], VM[2] = 0.0, 0.0, 0.0  # a row never touched: nothing but AdamW's decay
    M[5, 3], Vv[5, 3], VM[5, 3] = 1e-12, 1e-22, 1e-22  # sqrt(v) near eps: general catch-up
    last = rng.integers(0, T_ADAM + 1, V).astype(np.int64)
    last[:4] = 0  # never touched
    last[4] = last[8] = 100  # (rows 4, 8: a gap of 10,300 steps)
    last[6:8] = T_ADAM  # up to date
    last[5] = T_ADAM - 7
    tables = [P, M, Vv] + ([VM] if amsgrad else [])
    return [a.astype(dtype) for a in tables], last


def _adam_hyper(decoupled, amsgrad):
    return dict(beta1=0.9, beta2=0.999, eps=1e-8, decoupled=decoupled, amsgrad=amsgrad)


def _general_adam(tables, last, flat, t, h, hyper):
    """The read without the fused kernel: ``gather_lagging``, then Adam's row kernel on the
    lagging rows' copies (what ``FreshTake`` falls back to)."""
    bad, out, pos, sub, sub_last = cpu.gather_lagging(tables, last, flat, t)
    lr, wd = h.at(t)
    cpu.adam_rows(sub[0], sub[1], sub[2], np.arange(pos.shape[0], dtype=np.int64), None, t,
                  sub_last, lr, hyper["beta1"], hyper["beta2"], hyper["eps"], wd,
                  hyper["decoupled"], hyper["amsgrad"],
                  sub[3] if hyper["amsgrad"] else None, history=h, trusted=True)
    out[pos] = sub[0]
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("decoupled, amsgrad", ADAM_CASES, ids=ADAM_IDS)
def test_fused_adam_read_equals_the_general_read(adam_histories, decoupled, amsgrad, dtype):
    """Bitwise the general read (same closed form, same fallback), for gaps up to 10,400
    steps under a schedule, never-touched and up-to-date rows, a row the series does not
    fit, and repeated indices; the tables and ``last`` are left as they were."""
    rng = np.random.default_rng(11)
    tables, last = _adam_tables(rng, dtype, amsgrad)
    before = [a.copy() for a in tables] + [last.copy()]
    flat = np.concatenate([np.arange(V), rng.integers(0, V, 9), [5, 5]]).astype(np.int64)
    h, hyper = adam_histories(decoupled, amsgrad), _adam_hyper(decoupled, amsgrad)
    bad, got = cpu_fresh.fresh_adam(tables, last, flat, T_ADAM, h, hyper)
    assert bad == -1 and got is not None
    want = _general_adam([a.copy() for a in tables], last.copy(), flat, T_ADAM, h, hyper)
    np.testing.assert_array_equal(got, want)
    for a, b in zip(tables + [last], before):
        np.testing.assert_array_equal(a, b)  # a read writes nothing
    lagging = last[flat] < T_ADAM
    moved = (got != tables[0][flat]).any(axis=1)
    assert moved[lagging & (flat != 2)].all() and not moved[~lagging].any()
    np.testing.assert_array_equal(got[flat == 5], np.repeat(got[flat == 5][:1], 3, axis=0))


def test_fused_adam_read_reports_the_first_bad_index_and_skips_l2(adam_histories):
    rng = np.random.default_rng(12)
    tables, last = _adam_tables(rng, np.float64, False)
    h, hyper = adam_histories(False, False), _adam_hyper(False, False)
    for flat, where in (([1, V, 2], 1), ([-1, 0], 0)):
        bad, out = cpu_fresh.fresh_adam(tables, last, np.array(flat, dtype=np.int64), T_ADAM,
                                        h, hyper)
        assert (bad, out) == (where, None)
    # L2 decay (weight_decay on Adam) has no closed form: the general path reads it
    l2 = StepHistory(None, series=h.series)
    l2.restart(0)
    for s in range(1, 11):
        l2.record(s, 1e-3, 0.01)
    assert cpu_fresh.fresh_adam(tables, np.minimum(last, 3), np.arange(3), 10, l2,
                                hyper) == (-1, None)


@pytest.mark.parametrize("name, hp", [
    ("Adam", dict(betas=(0.9, 0.99))),
    ("AdamW", dict(weight_decay=0.1, betas=(0.85, 0.995), amsgrad=True)),
], ids=["adam", "adamw-amsgrad"])
def test_evaluation_read_of_an_adam_table_equals_dense(monkeypatch, name, hp):
    """An evaluation function reading an exact-mode Adam table between training steps goes
    through the fused read and sees the dense optimizer's rows (1e-12), under a schedule
    with restarts: rows trained every step, rows trained early then left for the rest of
    the run, rows never trained; the read leaves the table as it was."""
    from test_optim import oracle_step

    calls = []
    real = row_kernels.fresh_read("adam", cpu)
    monkeypatch.setitem(row_kernels._FRESH, ("adam", "numba"),
                        lambda *args: calls.append(1) or real(*args))
    rng = np.random.default_rng(13)
    n_rows, width, n = 12, 3, 400
    p = rng.normal(size=(n_rows, width))
    E = mg.shared(p.copy(), name="E")
    idx, target = mg.lvector("idx"), mg.matrix("target")
    cost = ((E[idx] - target) ** 2).sum()
    sched = mg.optim.schedules.CosineAnnealingWarmRestarts(0.05, T_0=60, eta_min=1e-4)
    opt = getattr(mg.optim, name)([E], lr=sched, sparse="exact", **hp)
    train = mg.function([idx, target], cost, updates=opt.updates(cost), backend="numba")
    evaluate = mg.function([idx], E[idx], backend="numba")
    state = {}
    everything = np.arange(n_rows)
    for t in range(1, n + 1):
        rows = np.array([0, 1 + t % 3] + ([4 + t % 2] if t < 20 else []))  # 6..11: never
        y = rng.normal(size=(rows.shape[0], width))
        g = np.zeros((n_rows, width))
        np.add.at(g, rows, 2.0 * (p[rows] - y))  # the dense gradient at the dense rows
        lr = opt.current_lr()
        train(rows, y)
        p = oracle_step(name, p, g, state, t, {**hp, "lr": lr})
        if t in (150, n):
            stored = [a.copy() for a in opt.param_states[0].arrays(True)]
            calls.clear()
            got = evaluate(np.concatenate([everything, [4, 4, 11]]))
            assert calls  # (the fused read served it)
            np.testing.assert_allclose(got[:n_rows], p, rtol=1e-12, atol=1e-14)
            np.testing.assert_array_equal(got[n_rows:], got[[4, 4, 11]])
            for a, b in zip(opt.param_states[0].arrays(True), stored):
                np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(E.get_value(), p, rtol=1e-12, atol=1e-14)
