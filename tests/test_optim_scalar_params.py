"""Scalar (0-d) parameters go through the same fused kernel as every other parameter (a
table of one row of one element) instead of a symbolic update: the compiled step and
``opt.apply`` equal the dense formula of every rule, float64 and float32, next to a
matrix parameter in the same optimizer, and torch's optimizers when torch is installed."""
from __future__ import annotations

import numpy as np
import pytest
from test_optim import CONFIGS, IDS, make_opt, oracle_step, rel_err

import minigrad as mg


def _node_names(fn):
    return [type(n.op).__name__ for n in fn.nodes]


@pytest.mark.parametrize("name,hp", CONFIGS, ids=IDS)
def test_compiled_scalar_step_matches_formula(name, hp, backend):
    rng = np.random.default_rng(0)
    s = mg.shared(np.float64(0.7), name="s")
    P = mg.shared(rng.normal(size=(4, 2)), name="P")
    gs, gp = mg.scalar("gs"), mg.matrix("gp")
    opt = make_opt(name, [s, P], **hp)
    step = mg.function([gs, gp], updates=opt.updates(grads=[gs, gp]), backend=backend)
    assert "RowUpdate" in _node_names(step) and _node_names(step).count("RowUpdate") == 2
    want_s, want_p, st_s, st_p = np.float64(0.7), P.get_value().copy(), {}, {}
    for t in range(1, 26):
        g1, g2 = rng.normal(), rng.normal(size=(4, 2))
        step(g1, g2)
        want_s = oracle_step(name, want_s, g1, st_s, t, hp)
        want_p = oracle_step(name, want_p, g2, st_p, t, hp)
    got = s.get_value()
    assert np.ndim(got) == 0 and np.asarray(got).dtype == np.float64
    assert rel_err(np.asarray(got), np.asarray(want_s)) < 1e-12
    assert rel_err(P.get_value(), want_p) < 1e-12


@pytest.mark.parametrize("name,hp", CONFIGS[::3], ids=IDS[::3])
def test_scalar_float32_and_a_cost(name, hp):
    s = mg.shared(np.float32(1.5), name="s")
    x = mg.vector("x", dtype="float32")
    cost = ((x * s - 1.0) ** 2).sum()
    opt = make_opt(name, [s], **hp)
    step = mg.function([x], cost, updates=opt.updates(cost))
    xs = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    want, st = np.float64(1.5), {}
    for t in range(1, 11):
        grad = float(np.sum(2 * (xs * np.float32(want) - 1.0) * xs))
        step(xs)
        want = oracle_step(name, want, grad, st, t, hp)
        want = np.float64(np.float32(want))  # the table holds float32
    got = s.get_value()
    assert np.asarray(got).dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-5)


@pytest.mark.parametrize("name,hp", CONFIGS, ids=IDS)
def test_apply_on_a_scalar_matches_formula(name, hp):
    rng = np.random.default_rng(1)
    s = mg.shared(np.float64(-0.3), name="s")
    opt = make_opt(name, [s], **hp)
    want, st = np.float64(-0.3), {}
    for t in range(1, 21):
        g = np.float64(rng.normal())
        opt.apply(s, g)
        want = oracle_step(name, want, g, st, t, hp)
    assert rel_err(np.asarray(s.get_value()), np.asarray(want)) < 1e-12
    assert int(opt.steps[0].value) == 20


def test_apply_scalar_refusals_change_nothing():
    s = mg.shared(np.float64(2.0), name="s")
    opt = mg.optim.Adam([s], lr=0.1)
    opt.apply(s, np.float64(0.5))
    before = (float(s.get_value()), int(opt.steps[0].value),
              [np.array(v.value) for v in opt.state[0].values()])
    with pytest.raises(ValueError, match="shape"):
        opt.apply(s, np.ones(1))
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.apply(s, np.float64(np.nan))
    assert float(s.get_value()) == before[0] and int(opt.steps[0].value) == before[1]
    for v, b in zip(opt.state[0].values(), before[2]):
        np.testing.assert_array_equal(v.value, b)


TORCH_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True), "Momentum",
     dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.05, weight_decay=0.01), "Adam", dict(lr=0.05, weight_decay=0.01)),
    ("AdamW", dict(lr=0.05, weight_decay=0.1, amsgrad=True), "AdamW",
     dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True), "RMSprop",
     dict(lr=0.01, rho=0.9, centered=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01), "Adagrad", dict(lr=0.1, lr_decay=0.01)),
]


@pytest.mark.parametrize("torch_name,torch_kw,name,hp", TORCH_CASES,
                         ids=[c[2] for c in TORCH_CASES])
def test_scalar_matches_torch(torch_name, torch_kw, name, hp):
    torch = pytest.importorskip("torch", reason="torch not installed: no torch comparison")
    s = mg.shared(np.float64(0.4), name="s")
    gs = mg.scalar("gs")
    opt = make_opt(name, [s], **hp)
    step = mg.function([gs], updates=opt.updates(grads=[gs]))
    w = torch.nn.Parameter(torch.tensor(0.4, dtype=torch.float64))
    topt = getattr(torch.optim, torch_name)([w], **torch_kw)
    rng = np.random.default_rng(2)
    for _ in range(30):
        g = float(rng.normal())
        step(g)
        w.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
    np.testing.assert_allclose(s.get_value(), w.item(), rtol=1e-12, atol=1e-15)
