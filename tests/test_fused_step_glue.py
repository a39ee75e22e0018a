"""The per-call Python path of the fused step (``minigrad/fused_step.py``), on a graph that
is not the FM's: ``X @ V**2`` and ``square(X) @ V`` (two products of powers (2, 1) sharing
one gather of ``V``: the two-product kernels ``fused._gather_sums2`` / ``_scatter_sums2``),
weights ``a`` on the first, a logistic loss, float32.

The ``StepHyper`` nodes that share one tuple of slots share one cached ``[lr, wd]`` value;
two optimizers in one step (``a``'s and ``V``'s) are two groups, each read at every call (a
float, a schedule, a float again). The fused scatter's slot map is kept between calls and
made anew when the table's row count changes. Each case is compared with the NumPy
reference backend, unfused, over several steps; one compile for the module.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("numba", reason="the fused step is Numba code")

import minigrad as mg  # noqa: E402

JIT = mg.Mode(backend="numba", linker="jit")
REF = mg.Mode(backend="numpy", exclude=("fuse",))
N_FEATURES, K = 30, 4
DTYPE = "float32"
TOL = dict(rtol=3e-5, atol=3e-6)


def _two_products(mode):
    rng = np.random.default_rng(1)
    V = mg.shared((0.3 * rng.standard_normal((N_FEATURES, K))).astype(DTYPE), name="V")
    a = mg.shared(rng.uniform(0.5, 1.5, K).astype(DTYPE), name="a")
    X, y = mg.csr_matrix("X", DTYPE), mg.vector("y", DTYPE)
    xv2 = mg.sparse.dot(X, V ** 2)
    x2v = mg.sparse.dot(mg.sparse.square(X), V)
    s = (xv2 * a).sum(axis=1) - 0.3 * (x2v ** 2).sum(axis=1)
    cost = (mg.softplus(s) - y * s).mean()
    opts = (mg.optim.SGD([a], 0.05), mg.optim.SGD([V], 0.02))
    fn = mg.function([X, y], cost, updates=opts[0].updates(cost) + opts[1].updates(cost),
                     mode=mode)
    return fn, (a, V), opts


def _batch(rng, n_features):
    X = sp.random(8, n_features, density=0.25, format="csr", random_state=rng,
                  data_rvs=lambda m: rng.normal(size=m)).astype(DTYPE)
    return X, (rng.random(8) > 0.5).astype(DTYPE)


def _state(params, opts):
    out = [np.array(p.get_value()) for p in params]
    for opt in opts:
        out += [np.array(ps.step.get_value()) for ps in opt.param_states]
        out.append(np.array(opt.t.get_value()))
    return out


def _step_both(jit, ref, batch):
    got, want = jit[0](*batch), ref[0](*batch)
    np.testing.assert_allclose(float(got), float(want), **TOL)
    for p, q in zip(_state(*jit[1:]), _state(*ref[1:])):
        np.testing.assert_allclose(p, q, **TOL)
        assert p.dtype == q.dtype


@pytest.fixture(scope="module")
def pair():
    if mg.config.backend != "numba":
        pytest.skip("MINIGRAD_BACKEND is not numba: the jit linker is not used")
    jit, ref = _two_products(JIT), _two_products(REF)
    fused = jit[0]._fused_step
    assert fused is not None, "two SGD optimizers: still one compiled call"
    assert {"FusedCSRGatherSums", "FusedCSRScatterSums"} <= {
        type(n.op).__name__ for n in jit[0].nodes}
    assert "F._gather_sums2(" in fused.source and "F._scatter_sums2_any_order(" in fused.source
    return jit, ref


def test_two_products_and_two_optimizers_each_read_every_call(pair):
    jit, ref = pair
    rng = np.random.default_rng(6)
    sched = mg.optim.schedules.StepLR(0.1, step_size=2, gamma=0.5)
    lrs = [(0.05, 0.02), (0.05, 0.03), (sched, 0.03), (sched, 0.01), (0.07, 0.01), (0.07, sched)]
    for lr_a, lr_V in lrs:
        for _, _, (opt_a, opt_V) in (jit, ref):
            opt_a.lr, opt_V.lr = lr_a, lr_V
        _step_both(jit, ref, _batch(rng, N_FEATURES))
    fused = jit[0]._fused_step
    assert fused.fallbacks == [] and fused.dispatcher.overloads
    groups = [v for k, v in fused._run.__globals__.items() if k.startswith("H")]
    assert len(groups) == 2, "one cached hyper value per optimizer"


def test_slot_map_follows_a_table_that_grows(pair):
    jit, ref = pair
    rng = np.random.default_rng(7)
    for n_features in (N_FEATURES, N_FEATURES + 9, N_FEATURES + 9, N_FEATURES - 4):
        for _, (_, V), _ in (jit, ref):
            old = V.get_value()
            keep = min(n_features, old.shape[0])
            new = np.full((n_features, K), 0.1, dtype=DTYPE)
            new[:keep] = old[:keep]
            V.set_value(new)
        for _ in range(2):
            _step_both(jit, ref, _batch(rng, n_features))
        maps = [v.map for k, v in jit[0]._fused_step._run.__globals__.items()
                if k.startswith("S") and hasattr(v, "map")]
        assert maps and all(m.shape == (n_features,) and (m == -1).all() for m in maps)
    assert jit[0]._fused_step.fallbacks == []
