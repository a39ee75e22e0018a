"""The per-call Python path of the fused step (``minigrad/fused_step.py``).

The ``StepHyper`` nodes that share one tuple of slots share one cached ``[lr, wd]`` value;
two optimizers in one step are two groups, each read at every call (a float, a schedule,
a float again). The fused scatters' slot maps are kept between calls and made anew when a
table's row count changes. Each case is compared with the NumPy reference backend over
several steps; one graph (an FM whose ``w``/``b`` and ``V`` have separate SGD optimizers),
one compile for the module.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("numba", reason="the fused step is Numba code")

import minigrad as mg  # noqa: E402

JIT = mg.Mode(backend="numba", linker="jit")
REF = mg.Mode(backend="numpy")
N_FEATURES, K = 30, 4


def _two_optimizers(mode, n_features=N_FEATURES):
    model = mg.models.FactorizationMachine(n_features, K, seed=5)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = model.cost(X, y)
    b, w, V = model.params
    linear, pair = mg.optim.SGD([b, w], 0.05), mg.optim.SGD([V], 0.02)
    fn = mg.function([X, y], cost, updates=linear.updates(cost) + pair.updates(cost),
                     mode=mode)
    return fn, model, (linear, pair)


def _batch(rng, n_features):
    X = sp.random(8, n_features, density=0.25, format="csr", random_state=rng,
                  data_rvs=lambda m: rng.normal(size=m))
    return X, (rng.random(8) > 0.5).astype(np.float64)


def _state(model, opts):
    out = [np.array(p.get_value()) for p in model.params]
    for opt in opts:
        out += [np.array(ps.step.get_value()) for ps in opt.param_states]
        out.append(np.array(opt.t.get_value()))
    return out


def _assert_same(jit, ref):
    for a, b in zip(_state(*jit[1:]), _state(*ref[1:])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def pair():
    jit, ref = _two_optimizers(JIT), _two_optimizers(REF)
    assert jit[0]._fused_step is not None, "two SGD optimizers: still one compiled call"
    return jit, ref


def test_two_optimizers_each_read_every_call(pair):
    jit, ref = pair
    rng = np.random.default_rng(6)
    sched = mg.optim.schedules.StepLR(0.1, step_size=2, gamma=0.5)
    lrs = [(0.05, 0.02), (0.05, 0.03), (sched, 0.03), (sched, 0.01), (0.07, 0.01), (0.07, sched)]
    for lr_linear, lr_pair in lrs:
        for _, _, (linear, pair_opt) in (jit, ref):
            linear.lr, pair_opt.lr = lr_linear, lr_pair
        batch = _batch(rng, N_FEATURES)
        got, want = jit[0](*batch), ref[0](*batch)
        assert float(got) == pytest.approx(float(want), rel=1e-12, abs=1e-14)
        _assert_same(jit, ref)
    fused = jit[0]._fused_step
    assert fused.fallbacks == [] and fused.dispatcher.overloads
    groups = [v for k, v in fused._run.__globals__.items() if k.startswith("H")]
    assert len(groups) == 2, "one cached hyper value per optimizer"


def test_slot_maps_follow_a_table_that_grows(pair):
    jit, ref = pair
    rng = np.random.default_rng(7)
    for n_features in (N_FEATURES, N_FEATURES + 9, N_FEATURES + 9, N_FEATURES - 4):
        for _, model, _ in (jit, ref):
            _, w, V = model.params
            old_w, old_V = w.get_value(), V.get_value()
            keep = min(n_features, old_w.shape[0])
            new_w = np.zeros((n_features, 1))
            new_V = np.full((n_features, K), 0.01)
            new_w[:keep], new_V[:keep] = old_w[:keep], old_V[:keep]
            w.set_value(new_w)
            V.set_value(new_V)
        for _ in range(2):
            batch = _batch(rng, n_features)
            got, want = jit[0](*batch), ref[0](*batch)
            assert float(got) == pytest.approx(float(want), rel=1e-12, abs=1e-14)
        _assert_same(jit, ref)
        maps = [v.map for k, v in jit[0]._fused_step._run.__globals__.items()
                if k.startswith("S") and hasattr(v, "map")]
        assert maps and all(m.shape == (n_features,) and (m == -1).all() for m in maps)
    assert jit[0]._fused_step.fallbacks == []
