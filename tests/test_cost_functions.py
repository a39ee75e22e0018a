"""Composite cost functions checked against finite differences and (when installed)
against ``torch.autograd``: softmax cross-entropy, log-sum-exp, the factorization-machine
pairwise term via ``mg.sparse``, and a masked embedding bag + linear + cross-entropy."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg

B, L, V, D, C = 4, 5, 9, 3, 3


def _data():
    r = np.random.default_rng(11)
    X = sp.random(B, V, density=0.35, random_state=5, format="csr")
    X.data = r.standard_normal(X.nnz)
    tok = r.integers(0, V, size=(B, L))
    tok[0, :3] = 2  # repeated token: duplicate rows in the row-sparse gradient
    mask = (r.random((B, L)) < 0.7).astype(np.float64)
    return {
        "x": r.standard_normal((B, D)), "y": np.array([0, 2, 1, 2], dtype=np.int32),
        "yreal": r.standard_normal(B), "X": X, "tok": tok, "mask": mask,
        "cw": np.array([0.5, 1.0, 2.0]),
        "W": r.standard_normal((D, C)), "b": r.standard_normal(C), "w": r.standard_normal(V),
        "V": r.standard_normal((V, D)) * 0.5, "E": r.standard_normal((V, D)),
        "M": 1.0 + 0.1 * r.standard_normal((V, D)), "c": r.standard_normal(C),
        "b0": np.array(0.3),
    }


DATA = _data()


def softmax_ce(s, t=None):
    logits = s["x"] @ s["W"] + s["b"]
    if t is None:
        return mg.nn.cross_entropy(logits, s["y"])
    return t.nn.functional.cross_entropy(logits, t.as_tensor(DATA["y"]).long())


def log_sum_exp(s, t=None):
    z = s["x"] @ s["W"]
    if t is None:
        return mg.logsumexp(z, axis=1).mean() + mg.logsumexp(z, axis=0).sum()
    return t.logsumexp(z, dim=1).mean() + t.logsumexp(z, dim=0).sum()


def fm(s, t=None):
    if t is None:
        X = s["X"]
        pair = 0.5 * (mg.sparse.dot(X, s["V"]) ** 2
                      - mg.sparse.dot(mg.sparse.square(X), s["V"] ** 2)).sum(axis=1)
        pred = s["b0"] + mg.sparse.dot(X, s["w"]) + pair
        return ((pred - s["yreal"]) ** 2).mean()
    X = t.as_tensor(DATA["X"].toarray())
    pair = 0.5 * ((X @ s["V"]) ** 2 - (X ** 2) @ (s["V"] ** 2)).sum(dim=1)
    pred = s["b0"] + X @ s["w"] + pair
    return ((pred - t.as_tensor(DATA["yreal"])) ** 2).mean()


def masked_bag(s, t=None):
    if t is None:
        mask = s["mask"][:, :, None]
        r = (mask * s["E"][s["tok"]] * s["M"][s["tok"]]).sum(axis=1)
        return mg.nn.cross_entropy(r @ s["W"] + s["c"], s["y"], weights=DATA["cw"])
    tok = t.as_tensor(DATA["tok"])
    r = (t.as_tensor(DATA["mask"])[:, :, None] * s["E"][tok] * s["M"][tok]).sum(dim=1)
    y = t.as_tensor(DATA["y"]).long()
    logp = t.log_softmax(r @ s["W"] + s["c"], dim=1)
    return -(t.as_tensor(DATA["cw"])[y] * logp[t.arange(B), y]).mean()  # plain mean (API)


# name: (builder, differentiable params, symbolic non-param inputs, row-sparse params)
COSTS = {
    "softmax_ce": (softmax_ce, ["x", "W", "b"], {"y": mg.ivector}, []),
    "logsumexp": (log_sum_exp, ["x", "W"], {}, []),
    "fm": (fm, ["V", "w", "b0"], {"X": mg.csr_matrix, "yreal": mg.vector}, ["V", "w"]),
    "masked_bag": (masked_bag, ["E", "M", "W", "c"],
                   {"tok": mg.lmatrix, "mask": mg.matrix, "y": mg.ivector}, ["E", "M"]),
}


def _compile(name, backend):
    build, params, others, sparse_params = COSTS[name]
    syms = {k: mg.tensor(k, "float64", (None,) * DATA[k].ndim) for k in params}
    syms.update({k: ctor(k) for k, ctor in others.items()})
    cost = build(syms)
    grads = mg.grad(cost, [syms[p] for p in params])
    for p, g in zip(params, grads):
        want = mg.RowSparseType if p in sparse_params else mg.TensorType
        assert isinstance(g.type, want), (p, g.type)
    order = params + list(others)
    inputs = [syms[k] for k in order]
    f = mg.function(inputs, cost, backend=backend)
    fg = mg.function(inputs, grads, backend=backend)
    return params, order, f, fg


def _dense(g):
    return g.to_dense() if isinstance(g, mg.RowSparse) else np.asarray(g)


@pytest.mark.parametrize("name", list(COSTS))
def test_cost_against_finite_differences(name, backend):
    params, order, f, fg = _compile(name, backend)
    values = {k: DATA[k] for k in order}
    grads = [_dense(g) for g in fg(*[values[k] for k in order])]
    eps = 1e-6
    for p, g in zip(params, grads):
        assert g.shape == DATA[p].shape
        for i in np.ndindex(DATA[p].shape):
            bumped = dict(values)
            bumped[p] = DATA[p].astype(np.float64).copy()
            bumped[p][i] += eps
            plus = float(f(*[bumped[k] for k in order]))
            bumped[p][i] -= 2 * eps
            minus = float(f(*[bumped[k] for k in order]))
            np.testing.assert_allclose(g[i], (plus - minus) / (2 * eps), atol=1e-6, rtol=1e-5,
                                       err_msg=f"{name}: d cost / d {p}{i}")


@pytest.mark.parametrize("name", list(COSTS))
def test_cost_against_torch(name, backend):
    torch = pytest.importorskip("torch", reason="torch not installed (optional extra 'compare')")
    build, *_ = COSTS[name]
    params, order, f, fg = _compile(name, backend)
    values = {k: DATA[k] for k in order}
    ours_cost = float(f(*[values[k] for k in order]))
    ours = [_dense(g) for g in fg(*[values[k] for k in order])]
    tparams = {p: torch.tensor(np.asarray(DATA[p], np.float64), requires_grad=True)
               for p in params}
    tcost = build({**{k: torch.as_tensor(np.asarray(DATA[k])) for k in DATA
                      if not sp.issparse(DATA[k])}, **tparams}, torch)
    tcost.backward()
    np.testing.assert_allclose(ours_cost, tcost.item(), rtol=1e-10)
    for p, g in zip(params, ours):
        np.testing.assert_allclose(g, tparams[p].grad.numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=f"{name}: grad {p}")


def test_float32_costs_stay_float32(backend, float32):
    """The FM and masked-bag costs built with float32 parameters stay float32."""
    s = {k: mg.shared(np.asarray(DATA[k], np.float32), name=k) for k in ["V", "w", "b0", "E", "M",
                                                                         "W", "c"]}
    X, yreal = mg.csr_matrix("X"), mg.vector("yreal")
    tok, mask, y = mg.lmatrix("tok"), mg.matrix("mask"), mg.ivector("y")
    for cost in [fm({**s, "X": X, "yreal": yreal}),
                 masked_bag({**s, "tok": tok, "mask": mask, "y": y})]:
        assert cost.dtype == "float32"
        params = [p for p in s.values() if p in mg.graph.ancestors([cost])]
        for g in mg.grad(cost, params):
            assert g.dtype == "float32"
