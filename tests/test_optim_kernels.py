"""The fused row kernels, called directly, in every implementation (reference, cpu, gpu):
exact mode vs the dense oracle of test_optim; lazy mode vs the same oracle applied to the
touched rows only; argument validation before any write."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from test_optim import oracle_step, rel_err

IMPLS = ["reference", "cpu", pytest.param("gpu", marks=pytest.mark.gpu)]

# (kernel, state names, oracle name, oracle hyper, kernel hyper after `last`)
RULES = [
    ("sgd_rows", [], "SGD", dict(lr=0.1, weight_decay=0.1), (0.1, 0.1)),
    ("momentum_rows", ["buf"], "Momentum", dict(lr=0.1, momentum=0.9, nesterov=True),
     (0.1, 0.9, 0.0, True, 0.0)),
    ("adagrad_rows", ["sum"], "Adagrad", dict(lr=0.1, eps=1e-10, weight_decay=0.1),
     (0.1, 1e-10, 0.1)),
    ("rmsprop_rows", ["sq", "ga", "buf"], "RMSprop",
     dict(lr=0.01, rho=0.9, momentum=0.5, centered=True), (0.01, 0.9, 1e-8, 0.5, True, 0.0)),
    ("adam_rows", ["m", "v"], "Adam", dict(lr=0.01), (0.01, 0.9, 0.999, 1e-8, 0.0, False)),
    ("adam_rows", ["m", "v"], "AdamW", dict(lr=0.01, weight_decay=0.1),
     (0.01, 0.9, 0.999, 1e-8, 0.1, True)),
]


class Impl:
    def __init__(self, name):
        if name == "gpu":
            try:
                self.mod = importlib.import_module("kernels.gpu")
            except ImportError as err:
                pytest.skip(f"kernels.gpu unavailable: {err}")
            import cupy

            self.dev, self.host = cupy.asarray, cupy.asnumpy
        else:
            self.mod = importlib.import_module(f"kernels.{name}")
            self.dev = self.host = np.asarray


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rule", RULES, ids=[r[2] for r in RULES])
def test_exact_kernel_vs_dense_oracle(impl, rule):
    impl = Impl(impl)
    kernel, states, name, hp, hyper = rule
    V, D, rng = 9, 4, np.random.default_rng(0)
    p0 = rng.normal(size=(V, D))
    P, S = impl.dev(p0.copy()), [impl.dev(np.zeros((V, D))) for _ in states]
    last = impl.dev(np.zeros(V, dtype=np.int64))
    p, st = p0.copy(), {}
    for t in range(1, 301):
        idx = np.unique(rng.integers(0, 3 if t < 150 else V, size=rng.integers(0, 4)))
        g = rng.normal(size=(len(idx), D))
        getattr(impl.mod, kernel)(P, *S, impl.dev(idx), impl.dev(g), t, last, *hyper)
        dense = np.zeros((V, D))
        dense[idx] = g
        p = oracle_step(name, p, dense, st, t, hp)
    getattr(impl.mod, kernel)(P, *S, impl.dev(np.arange(V)), None, 300, last, *hyper)  # flush
    assert rel_err(impl.host(P), p) < 1e-9
    assert (impl.host(last) == 300).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_lazy_kernel_moves_touched_rows_only(impl):
    impl = Impl(impl)
    V, D, rng = 8, 3, np.random.default_rng(1)
    p0 = rng.normal(size=(V, D))
    P, B = impl.dev(p0.copy()), impl.dev(np.zeros((V, D)))
    hp = dict(lr=0.1, momentum=0.9)
    rows = {r: (p0[r].copy(), {}) for r in range(V)}
    for t in range(1, 50):
        idx = np.unique(rng.integers(0, V, size=3))
        g = rng.normal(size=(len(idx), D))
        impl.mod.momentum_rows(P, B, impl.dev(idx), impl.dev(g), t, None, 0.1, 0.9, 0.0,
                               False, 0.0)
        for r, gr in zip(idx, g):  # each row's own stream, steps counted globally
            pr, st = rows[r]
            rows[r] = (oracle_step("Momentum", pr, gr, st, t, hp), st)
    expected = np.stack([rows[r][0] for r in range(V)])
    assert rel_err(impl.host(P), expected) < 1e-12


@pytest.mark.parametrize("impl", IMPLS)
def test_validation_before_any_write(impl):
    impl = Impl(impl)
    P, m, v = (impl.dev(np.ones((5, 2))) for _ in range(3))
    last = impl.dev(np.zeros(5, dtype=np.int64))
    g = impl.dev(np.ones((2, 2)))
    hyper = (0.1, 0.9, 0.999, 1e-8, 0.0, False)
    k = impl.mod.adam_rows
    with pytest.raises(IndexError):
        k(P, m, v, impl.dev(np.array([1, 5])), g, 1, last, *hyper)
    with pytest.raises(ValueError, match="sorted and unique"):
        k(P, m, v, impl.dev(np.array([3, 1])), g, 1, last, *hyper)
    with pytest.raises(ValueError, match="grad must have shape"):
        k(P, m, v, impl.dev(np.array([1])), g, 1, last, *hyper)
    with pytest.raises(ValueError, match="state"):
        k(P, impl.dev(np.ones((4, 2))), v, impl.dev(np.array([1, 2])), g, 1, last, *hyper)
    with pytest.raises(ValueError, match="already updated"):
        k(P, m, v, impl.dev(np.array([1, 2])), g, 1, impl.dev(np.full(5, 3)), *hyper)
    for a in (P, m, v):
        assert (impl.host(a) == 1).all()
    assert (impl.host(last) == 0).all()
