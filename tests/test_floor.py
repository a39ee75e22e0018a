"""The hand-written floor steps (``benchmarks/floor.py``) have exactly the semantics of the
minigrad steps they are compared with: same parameters after several steps, to float32
summation-order tolerance (float64 steps agree to 1e-10)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the floor steps are Numba functions")

import minigrad as mg  # noqa: E402
from benchmarks import floor  # noqa: E402


def _documents(seed, batch, vocab, length, dtype):
    docs = mg.data.synthetic_documents(batch, vocab, 5, seed=seed, length=(length // 2, length),
                                       dtype=dtype)
    return docs[0], docs[1].astype(dtype), docs[2]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding_floor_equals_the_minigrad_lazy_adam_step(dtype):
    model = floor.classifier(500, 16, 5, seed=0, dtype=dtype)
    tokens, mask, labels = mg.lmatrix("t"), mg.matrix("m", dtype), mg.lvector("y")
    cost = model.cost(tokens, mask, labels)
    opt = mg.optim.Adam(model.params, lr=0.01, sparse="lazy")
    step = mg.function([tokens, mask, labels], cost, updates=opt.updates(cost))
    E0 = model.E.get_value()
    fl = floor.EmbeddingFloor(*[p.get_value() for p in model.params], lr=0.01)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    for k in range(5):
        batch = _documents(k, 8, 500, 20, dtype)
        np.testing.assert_allclose(fl.step(*batch), step(*batch), **tol)
    for p, q in zip(model.params, fl.params):
        np.testing.assert_allclose(q, p.get_value(), **tol)
    assert np.abs(fl.E - E0).max() > 1e-3  # the steps did move the touched rows
    assert (fl.slot == -1).all()


def test_embedding_floor_with_prefetch_is_bitwise_the_plain_floor():
    """``EmbeddingFloor(prefetch=True)`` only asks for rows ahead: the same arithmetic in
    the same order, so the same bits (padding positions and the batch's last 16 tokens,
    which have nothing ahead, included)."""
    model = floor.classifier(500, 16, 5, seed=0, dtype="float32")
    init = [p.get_value() for p in model.params]
    plain, ahead = (floor.EmbeddingFloor(*init, lr=0.01, prefetch=f) for f in (False, True))
    for k in range(4):
        batch = _documents(k, 8, 500, 20, "float32")
        assert plain.step(*batch) == ahead.step(*batch)
    for p, q in zip(plain.params + plain.state, ahead.params + ahead.state):
        assert np.array_equal(p, q)
    assert np.abs(ahead.E - init[0]).max() > 1e-3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fm_floor_equals_the_minigrad_sgd_step(dtype):
    ratings = mg.data.synthetic_ratings(200, 300, n_ratings=2000, seed=0, k=4, n_extra=2)
    X, y = ratings.X.tocsr().astype(dtype), ratings.y.astype(dtype)
    model = mg.models.FactorizationMachine(X.shape[1], 8, seed=0, dtype=dtype, init_std=0.1)
    Xs, ys = mg.csr_matrix("X", dtype), mg.vector("y", dtype)
    cost = model.cost(Xs, ys)
    step = mg.function([Xs, ys], cost, updates=mg.optim.SGD(model.params, lr=0.5).updates(cost))
    V0 = model.V.get_value()
    fl = floor.FMFloor(*[p.get_value() for p in model.params], lr=0.5)
    tol = dict(rtol=2e-4, atol=2e-6) if dtype == "float32" else dict(rtol=1e-10, atol=1e-13)
    for k in range(6):
        rows = slice(64 * k, 64 * (k + 1))
        np.testing.assert_allclose(fl.step(X[rows], y[rows]), step(X[rows], y[rows]), **tol)
    for p, q in zip(model.params, fl.params):
        np.testing.assert_allclose(q, p.get_value(), **tol)
    assert np.abs(fl.V - V0).max() > 1e-3 and np.abs(fl.w).max() > 1e-3  # it did train
    assert (fl.slot == -1).all()


def test_floor_steps_refuse_bad_indices():
    fl = floor.EmbeddingFloor(np.ones((10, 2)), np.ones((10, 2)), np.ones((2, 3)), np.zeros(3))
    with pytest.raises(IndexError):
        fl.step(np.array([[1, 10]]), np.ones((1, 2)), np.array([0]))
    fm = floor.FMFloor(np.zeros(1), np.zeros((4, 1)), np.ones((4, 2)), lr=0.1)
    import scipy.sparse as sp

    with pytest.raises(ValueError, match="columns"):
        fm.step(sp.csr_matrix(np.ones((2, 5))), np.ones(2))
