"""Long exact catch-ups on the NumPy reference kernels (issue 15 item 22).

A row untouched for 10**6 steps with L2 weight decay used to be replayed by a Python loop
over the steps (Adam 49 s, RMSprop 21 s). The nonlinear replays now go to the compiled loop
of the same rule past ``REPLAY_COMPILED_MIN_STEPS``, and Adam's drift sum (no L2 decay) is
evaluated in chunks of steps. Checked here: the long catch-up gives the compiled kernel's
result; short ones equal the dense loop; the NumPy and compiled replays agree on a gap
long enough for both; the chunked drift equals a step-by-step loop.
"""
from __future__ import annotations

import numpy as np
import pytest
from adam_zero_grad import dense_skipped_steps
from test_optim import oracle_step, rel_err

import kernels.reference.optim as ref

cpu = pytest.importorskip("kernels.cpu", reason="the compiled replay needs Numba")

# (kernel, n states, kernel hyper after `last`, oracle name, oracle hyper)
L2_RULES = [
    ("adam_rows", 2, (1e-3, 0.9, 0.999, 1e-8, 0.01, False), "Adam",
     dict(lr=1e-3, weight_decay=0.01)),
    ("rmsprop_rows", 3, (1e-3, 0.9, 1e-8, 0.0, False, 0.01), "RMSprop",
     dict(lr=1e-3, rho=0.9, weight_decay=0.01)),
    ("adagrad_rows", 1, (1e-2, 1e-10, 0.01), "Adagrad", dict(lr=1e-2, eps=1e-10,
                                                            weight_decay=0.01)),
]


def _tables(n_states, kernel, V=3, D=4, seed=0):
    rng = np.random.default_rng(seed)
    P = rng.normal(size=(V, D))
    S = [np.abs(rng.normal(size=(V, D))) * 1e-2 for _ in range(n_states)]
    if kernel == "rmsprop_rows":
        S = [S[0], None, None]  # square_avg only (not centered, no momentum)
    return P, S


@pytest.mark.parametrize("kernel, n_states, hyper, name, hp", L2_RULES,
                         ids=[r[0] for r in L2_RULES])
def test_million_step_l2_catch_up_matches_the_compiled_kernel(kernel, n_states, hyper,
                                                              name, hp):
    P, S = _tables(n_states, kernel)
    P2, S2 = P.copy(), [None if s is None else s.copy() for s in S]
    t = 10**6
    idx = np.array([1])
    g = np.full((1, 4), 0.3)
    getattr(ref, kernel)(P, *S, idx, g, t, np.zeros(3, np.int64), *hyper)
    getattr(cpu, kernel)(P2, *S2, idx, g, t, np.zeros(3, np.int64), *hyper)
    np.testing.assert_array_equal(P, P2)
    for a, b in zip(S, S2):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert np.isfinite(P).all()


@pytest.mark.parametrize("kernel, n_states, hyper, name, hp", L2_RULES,
                         ids=[r[0] for r in L2_RULES])
def test_short_l2_catch_up_equals_the_dense_loop(kernel, n_states, hyper, name, hp):
    P, S = _tables(n_states, kernel)
    S = [None if s is None else np.zeros_like(s) for s in S]  # the oracle starts at zero
    p, st = P.copy(), {}
    last = np.zeros(3, np.int64)
    grads = {1: np.full((3, 4), 0.5), 60: np.full((3, 4), -0.2)}
    for t in range(1, 61):
        dense = grads.get(t, np.zeros((3, 4)))
        p = oracle_step(name, p, dense, st, t, hp)
        if t in grads:  # the kernel only sees the steps with a gradient: a 58-step gap
            getattr(ref, kernel)(P, *S, np.arange(3), grads[t], t, last, *hyper)
    assert rel_err(P, p) < 1e-12


@pytest.mark.parametrize("kernel, n_states, hyper, name, hp", L2_RULES,
                         ids=[r[0] for r in L2_RULES])
def test_numpy_and_compiled_replays_agree(monkeypatch, kernel, n_states, hyper, name, hp):
    P, S = _tables(n_states, kernel)
    P2, S2 = P.copy(), [None if s is None else s.copy() for s in S]
    idx, g = np.array([0, 2]), np.full((2, 4), 0.1)
    last = np.array([0, 0, 7], np.int64)
    monkeypatch.setattr(ref, "REPLAY_COMPILED_MIN_STEPS", 10**9)  # NumPy loop
    getattr(ref, kernel)(P, *S, idx, g, 400, last.copy(), *hyper)
    monkeypatch.setattr(ref, "REPLAY_COMPILED_MIN_STEPS", 1)  # compiled loop
    getattr(ref, kernel)(P2, *S2, idx, g, 400, last.copy(), *hyper)
    assert rel_err(P2, P) < 1e-13
    for a, b in zip(S, S2):
        if a is not None:
            assert rel_err(b, a) < 1e-13


@pytest.mark.parametrize("decoupled, amsgrad", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunked_adam_drift_equals_a_step_by_step_loop(monkeypatch, decoupled, amsgrad,
                                                       dtype):
    """The drift of skipped steps, vectorised over chunks of steps, against the plain
    per-step recurrence of dense Adam with a zero gradient (float64 on the host)."""
    monkeypatch.setattr(ref, "REPLAY_COMPILED_MIN_STEPS", 10**9)  # stay on NumPy
    monkeypatch.setattr(ref, "DRIFT_COMPILED_MIN_WORK", 10**18)
    rng = np.random.default_rng(3)
    V, D, lr, b1, b2, eps, wd = 40, 8, 1e-2, 0.9, 0.999, 1e-8, 0.05 if decoupled else 0.0
    P = rng.normal(size=(V, D)).astype(dtype)
    M = (rng.normal(size=(V, D)) * 0.1).astype(dtype)
    Vv = (rng.random((V, D)) * 0.01 + 1e-12).astype(dtype)
    VM = (Vv * 2).astype(dtype) if amsgrad else None
    last = rng.integers(0, 300, V).astype(np.int64)
    last[0] = 0  # one row from the very start
    t = 2500
    p, m, v = dense_skipped_steps(P, M, Vv, VM, last, t, lambda s: lr, lambda s: wd, b1, b2,
                                  eps, decoupled, amsgrad)
    ref.adam_rows(P, M, Vv, np.arange(V), None, t, last, lr, b1, b2, eps, wd, decoupled,
                  amsgrad, VM)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    assert rel_err(P, p) < tol
    for got, want in ((M, m), (Vv, v)):  # decayed by b**k: compare in the table's dtype
        np.testing.assert_allclose(got, want.astype(dtype), rtol=tol, atol=0)
    assert (last == t).all()
