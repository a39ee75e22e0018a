"""Exact Adam's catch-up of rows with a tiny ``v`` (``kernels.cpu.optim._adam_series_shifted``).

Where ``z = eps / sqrt(v)`` is not small, the ``eps / sqrt(v)`` series of
``_adam_series`` does not converge and the catch-up used to replay every skipped step on
every element. The shifted series expands each step's ``1 / (a u_j + eps)`` around the
midpoint of ``u_j`` over the summed steps instead, which converges for every ``v >= 0``.
Checked in float64 against the dense recurrence (``adam_zero_grad``) and a long-double
replay; where the spread of ``u_j`` is too wide (early steps, long gaps) it must give up
without writing; and an exact-mode training step whose gradients are tiny (most rows
take this path) must equal the NumPy backend and the dense optimizer.
"""
from __future__ import annotations

import numpy as np
import pytest
from adam_zero_grad import dense_skipped_steps

cpu = pytest.importorskip("kernels.cpu", reason="the compiled catch-up needs Numba")
from kernels.cpu import optim as cpu_optim  # noqa: E402

B1, B2, EPS = 0.9, 0.999, 1e-8
CASES = [(False, False), (True, False), (False, True), (True, True)]


def _tiny_row(rng, D, amsgrad):
    """One row whose ``v`` is near ``eps**2`` (and 0 in two elements, one with ``m != 0``,
    one with ``m == 0``): the plain series is refused."""
    P = rng.normal(size=(1, D))
    M = rng.normal(size=(1, D)) * 1e-6
    Vv = rng.random((1, D)) * 1e-16
    Vv[0, 0] = 0.0
    Vv[0, 1], M[0, 1] = 0.0, 0.0
    VM = Vv * 1.5 if amsgrad else np.zeros((0, D))
    return P, M, Vv, VM


def _shifted(tables, lag, k, lr_h, wd_h, decoupled, amsgrad, eps=EPS):
    lr_max = float(lr_h.max())
    wd = float(wd_h[lag + k])
    _, ratio = cpu_optim.adam_drift_ratio(1.0, B1, B2, float((lr_h * wd_h).max())
                                          if decoupled else 0.0, decoupled)
    return cpu_optim._adam_series_shifted(
        *tables, 0, lag, k, float(lr_h[lag + k]), wd, B1, B2, eps, decoupled, amsgrad,
        ratio, 1e-18, lr_max, True, lr_h, wd_h)


@pytest.mark.parametrize("decoupled, amsgrad", CASES)
@pytest.mark.parametrize("schedule", [False, True], ids=["const", "cosine"])
@pytest.mark.parametrize("k", [1, 15, 300])
def test_shifted_series_equals_the_dense_loop(decoupled, amsgrad, schedule, k):
    rng = np.random.default_rng(k + 10 * decoupled + 100 * amsgrad)
    lag = 6000
    t = lag + k
    steps = np.arange(t + 2, dtype=np.float64)
    lr_h = 1e-3 * (0.5 * (1 + np.cos(np.pi * steps / (2.0 * t))) if schedule else 1.0 + 0 * steps)
    wd_h = np.full(t + 2, 0.05 if decoupled else 0.0)
    P, M, Vv, VM = _tiny_row(rng, 16, amsgrad)
    last = np.array([lag], dtype=np.int64)
    want = dense_skipped_steps(P, M, Vv, VM if amsgrad else None, last, t,
                               lambda s: lr_h[s], lambda s: wd_h[s], B1, B2, EPS, decoupled,
                               amsgrad)
    tables = [a.copy() for a in (P, M, Vv, VM)]
    j = _shifted(tables, lag, k, lr_h, wd_h, decoupled, amsgrad)
    assert 0 < j <= k
    # the remaining steps only decay m, v (and p by AdamW's q): what _adam_catch_up does
    p, m, v = tables[:3]
    p *= np.prod([1.0 - lr_h[s] * wd_h[s] for s in range(lag + j + 1, t + 1)]) if decoupled \
        else 1.0
    m *= B1 ** (k - j)
    v *= B2 ** (k - j)
    scale = np.abs(want[0])
    assert float(np.max(np.abs(p - want[0]) / scale)) < 1e-12
    np.testing.assert_allclose(m, want[1], rtol=1e-12, atol=0)
    np.testing.assert_allclose(v, want[2], rtol=1e-12, atol=0)


def _long_double_replay(P, M, Vv, lag, k, lr):
    ld = np.longdouble
    p, m, v = (a.astype(ld) for a in (P, M, Vv))
    for s in range(lag + 1, lag + k + 1):
        m, v = ld(B1) * m, ld(B2) * v
        bc1, bc2 = ld(1) - ld(B1) ** s, ld(1) - ld(B2) ** s
        p = p - ld(lr) / bc1 * m / (np.sqrt(v) / np.sqrt(bc2) + ld(EPS))
    return p


@pytest.mark.skipif(np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps,
                    reason="long double is float64 here")
def test_shifted_series_matches_a_long_double_replay():
    """Against a long-double replay: the shifted series is as close as the float64 replay
    it replaces (which rounds at each of its k steps)."""
    rng = np.random.default_rng(3)
    lag, k, lr = 800, 120, 1e-3
    lr_h, wd_h = np.full(lag + k + 2, lr), np.zeros(lag + k + 2)
    errs = {"shifted": 0.0, "replay": 0.0}
    for _ in range(10):
        P, M, Vv, VM = _tiny_row(rng, 8, False)
        want = _long_double_replay(P, M, Vv, lag, k, lr)
        shifted = [a.copy() for a in (P, M, Vv, VM)]
        assert _shifted(shifted, lag, k, lr_h, wd_h, False, False) > 0
        replay = [a.copy() for a in (P, M, Vv, VM)]
        cpu_optim._adam_replay(*replay, 0, lag, k, lr, 0.0, B1, B2, EPS, False, False, 10.0,
                               1e-30, lr, True, lr_h, wd_h, False)
        for name, got in (("shifted", shifted[0]), ("replay", replay[0])):
            err = np.max(np.abs(got - want) / np.abs(want))
            errs[name] = max(errs[name], float(err))
    assert errs["shifted"] < 1e-13 and errs["replay"] < 1e-13


@pytest.mark.parametrize("lag, k, eps", [(3, 2000, EPS), (6000, 10, 0.0)],
                         ids=["wide_spread", "no_eps"])
def test_shifted_series_gives_up_without_writing(lag, k, eps):
    """Early steps with a long gap (u_j spans a factor > 3: the series would need too many
    terms) and ``eps = 0`` (it divides by ``a y + eps``): -1, the row bitwise as it was
    (the caller then replays)."""
    rng = np.random.default_rng(0)
    tables = list(_tiny_row(rng, 8, False))
    before = [a.copy() for a in tables]
    lr_h, wd_h = np.full(lag + k + 2, 1e-3), np.zeros(lag + k + 2)
    assert _shifted(tables, lag, k, lr_h, wd_h, False, False, eps=eps) == -1
    for a, b in zip(tables, before):
        assert a.tobytes() == b.tobytes()


def test_a_row_without_drift_is_left_to_the_caller():
    """m == 0 everywhere: no drift, 0 steps summed (the caller decays the row)."""
    rng = np.random.default_rng(1)
    P, M, Vv, VM = _tiny_row(rng, 8, False)
    M[:] = 0.0
    tables = [a.copy() for a in (P, M, Vv, VM)]
    lr_h, wd_h = np.full(6100, 1e-3), np.zeros(6100)
    assert _shifted(tables, 6000, 50, lr_h, wd_h, False, False) == 0
    assert tables[0].tobytes() == P.tobytes()


T0 = 5000


def _tiny_gradient_run(mode, steps=40):
    """Exact-mode Adam on an embedding table whose gradient rows are ~1e-9 (``(E[idx] *
    c).sum()`` with a fixed ``c``: v ~ 1e-21, so every lagging row has z = eps / sqrt(v)
    far above the plain series' limit), float64, from step ``T0`` on (a loaded state: the
    bias corrections then move ``u_j`` little, as in a long run, and the shifted series
    applies). Returns the final ``E``, the batches and the initial ``E``, ``c``."""
    import minigrad as mg

    rng = np.random.default_rng(2)
    E0, c = rng.normal(size=(60, 6)), rng.normal(size=(6,)) * 1e-9
    E = mg.shared(E0.copy(), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] * mg.shared(c, name="c")).sum()
    opt = mg.optim.Adam([E], lr=1e-2, sparse="exact")
    fn = mg.function([idx], cost, updates=opt.updates(cost), mode=mode)
    state = opt.state_dict()
    state["t"], state["steps"] = T0, [T0]
    opt.load_state_dict(state)
    # (a row's gap is ~15 steps on average: many exceed SHIFTED_MIN_GAP)
    batches = [rng.choice(60, size=4, replace=False) for _ in range(steps)]
    for b in batches:
        fn(b)
    return E.get_value(), batches, (E0, c)


def _dense_adam(E, c, batches, lr=1e-2):
    """torch.optim.Adam's formula on the whole table (zero rows where not gathered)."""
    p, m, v = E.copy(), np.zeros_like(E), np.zeros_like(E)
    for t, b in enumerate(batches, start=T0 + 1):
        g = np.zeros_like(p)
        g[b] += c
        m[...] = B1 * m + (1 - B1) * g
        v[...] = B2 * v + (1 - B2) * g * g
        p -= lr / (1 - B1**t) * m / (np.sqrt(v) / np.sqrt(1 - B2**t) + EPS)
    return p


def test_exact_step_with_tiny_gradients_equals_numpy_backend_and_dense_adam():
    import minigrad as mg

    numba, batches, init = _tiny_gradient_run(mg.Mode(backend="numba"))
    numpy_, _, _ = _tiny_gradient_run(mg.Mode(backend="numpy"))
    dense = _dense_adam(*init, batches)
    assert not np.array_equal(numba, init[0])
    np.testing.assert_allclose(numba, numpy_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(numba, dense, rtol=1e-12, atol=0)
