"""Exact mode: a training step's forward pass reads caught-up rows.

A row untouched for k steps still moves under momentum/RMSprop/Adam. The fused update
catches it up when it is next in a gradient, but the forward ``E[idx]`` of that step reads
the row first; the ``fresh_reads`` rewrite makes that read go through ``FreshTake`` so
whole training runs (losses and parameters) equal the dense optimizer's.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg

CASES = [
    (mg.optim.Momentum, dict(lr=0.02, momentum=0.9)),
    (mg.optim.Momentum, dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (mg.optim.RMSprop, dict(lr=0.01)),
    (mg.optim.Adam, dict(lr=0.05)),
    (mg.optim.AdamW, dict(lr=0.05, weight_decay=0.1)),
]


def _train(opt_cls, kw, mode, backend, steps=200):
    rng = np.random.default_rng(0)
    E = mg.shared(rng.standard_normal((40, 3)), name="E")
    w = mg.shared(rng.standard_normal(3), name="w")
    idx, y = mg.lvector("idx"), mg.vector("y")
    cost = (((E[idx] @ w) - y) ** 2).mean()
    if mode == "dense":
        g_e, g_w = mg.grad(cost, [E, w])
        updates = opt_cls([E, w], **kw).updates(grads=[g_e.to_dense(), g_w])
    else:
        updates = opt_cls([E, w], sparse=mode, **kw).updates(cost)
    step = mg.function([idx, y], cost, updates=updates, backend=backend)
    r = np.random.default_rng(1)
    losses = []
    for t in range(steps):
        # early steps hit a few rows only, so most rows wait a long time before their turn
        i = r.choice(8, 3) if t < steps // 2 else r.integers(0, 40, 3)
        losses.append(float(step(i, r.standard_normal(3))))
    return np.array(losses), E.get_value()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("opt_cls,kw", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_exact_training_equals_dense(opt_cls, kw, backend):
    dense_losses, dense_e = _train(opt_cls, kw, "dense", backend)
    exact_losses, exact_e = _train(opt_cls, kw, "exact", backend)
    np.testing.assert_allclose(exact_losses, dense_losses, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(exact_e, dense_e, rtol=1e-9, atol=1e-12)


def test_lazy_training_differs_from_dense():
    """The check above can fail: lazy mode (stale rows by design) gives other losses."""
    dense_losses, _ = _train(mg.optim.Momentum, dict(lr=0.02, momentum=0.9), "dense", "numpy")
    lazy_losses, _ = _train(mg.optim.Momentum, dict(lr=0.02, momentum=0.9), "lazy", "numpy")
    assert np.abs(lazy_losses - dense_losses).max() > 1e-6


def test_catch_up_read_rejects_bad_index_before_any_change():
    E = mg.shared(np.ones((5, 2)), name="E")
    idx = mg.lvector("idx")
    cost = E[idx].sum()
    opt = mg.optim.Momentum([E], lr=0.1, sparse="exact")
    step = mg.function([idx], cost, updates=opt.updates(cost))
    step(np.array([0, 1]))
    before = E.get_value()
    with pytest.raises(IndexError, match="idx"):
        step(np.array([2, 7]))
    np.testing.assert_array_equal(E.get_value(), before)


def test_dense_read_and_direct_output_see_caught_up_rows():
    """A dense read (``P ** 2``) or returning ``P`` itself also sees the dense values."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal((6, 3))
    idx = mg.lvector("idx")
    values = {}
    for mode in ("exact", "dense"):
        P = mg.shared(start, name="P")
        opt = mg.optim.Momentum([P], lr=0.05, momentum=0.9, sparse="exact")
        g = mg.grad(mg.tanh(P[idx]).sum(), P)
        step = mg.function([idx], [], updates=opt.updates(grads=[g if mode == "exact"
                                                                 else g.to_dense()]))
        read = mg.function([], [(P ** 2).sum(), P])
        r = np.random.default_rng(1)
        seen = []
        for _ in range(20):
            step(r.choice(6, 2))
            total, table = read()
            seen.append((float(total), table.copy()))
        values[mode] = seen
    for (t_exact, p_exact), (t_dense, p_dense) in zip(values["exact"], values["dense"]):
        assert t_exact == pytest.approx(t_dense, rel=1e-12)
        np.testing.assert_allclose(p_exact, p_dense, rtol=1e-12, atol=1e-14)
