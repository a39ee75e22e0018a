"""mg.models.TripletEmbedding: gradient (finite differences, PyTorch), row-sparse type, exact
momentum equal to dense momentum, learning single-process and under mg.parallel.hogwild,
triplet sampling, and bad input.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import minigrad as mg
from minigrad.models import TripletEmbedding, triplets_from_classes


def id_inputs():
    return mg.lvector("anchor"), mg.lvector("positive"), mg.lvector("negative")


def spread_model(n_items=12, dim=3, seed=0, margin=0.5):
    """A model whose distances are O(1), so some hinges are active and some are not."""
    model = TripletEmbedding(n_items, dim, margin=margin, seed=seed, dtype="float64",
                             init_std=1.0)
    return model


TRIPLETS = (np.array([0, 1, 2, 3, 4, 0, 7]), np.array([5, 6, 7, 8, 9, 5, 1]),
            np.array([10, 11, 0, 1, 2, 3, 0]))


def numpy_loss(E, a, p, n, margin):
    d_ap = ((E[a] - E[p]) ** 2).sum(1)
    d_an = ((E[a] - E[n]) ** 2).sum(1)
    return np.maximum(0.0, d_ap - d_an + margin).mean()


def test_cost_matches_the_formula():
    model = spread_model()
    syms = id_inputs()
    f = mg.function(list(syms), model.cost(*syms))
    E = model.E.get_value()
    assert float(f(*TRIPLETS)) == pytest.approx(numpy_loss(E, *TRIPLETS, 0.5), rel=1e-12)
    # some hinges active, some not: the test exercises both sides of the max
    d = ((E[TRIPLETS[0]] - E[TRIPLETS[1]]) ** 2).sum(1) - ((E[TRIPLETS[0]] - E[TRIPLETS[2]])
                                                             ** 2).sum(1) + 0.5
    assert (d > 0).any() and (d < 0).any()


def test_gradient_matches_finite_differences_and_is_row_sparse():
    model = spread_model()
    syms = id_inputs()
    cost = model.cost(*syms)
    g = mg.grad(cost, model.E)
    assert isinstance(g.type, mg.RowSparseType)
    grad = mg.function(list(syms), g, backend="numpy")(*TRIPLETS)
    assert isinstance(grad, mg.RowSparse)
    assert set(grad.indices.tolist()) <= set(np.concatenate(TRIPLETS).tolist())
    dense = grad.to_dense()
    E = model.E.get_value()
    assert not dense[[i for i in range(12) if i not in np.concatenate(TRIPLETS)]].any()
    rng, eps = np.random.default_rng(1), 1e-6
    for _ in range(4):
        d = rng.standard_normal(E.shape)
        numeric = (numpy_loss(E + eps * d, *TRIPLETS, 0.5)
                   - numpy_loss(E - eps * d, *TRIPLETS, 0.5)) / (2 * eps)
        assert float(np.sum(dense * d)) == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_gradient_matches_torch():
    torch = pytest.importorskip("torch", reason="PyTorch reference is optional")
    model = spread_model(seed=3)
    syms = id_inputs()
    cost = model.cost(*syms)
    value, g = mg.function(list(syms), [cost, mg.grad(cost, model.E)])(*TRIPLETS)
    E = torch.tensor(model.E.get_value(), requires_grad=True)
    a, p, n = (torch.from_numpy(t) for t in TRIPLETS)
    d_ap, d_an = ((E[a] - E[p]) ** 2).sum(1), ((E[a] - E[n]) ** 2).sum(1)
    loss = torch.relu(d_ap - d_an + 0.5).mean()
    loss.backward()
    assert float(value) == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(g.to_dense(), E.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_exact_momentum_equals_dense_momentum():
    """Momentum(sparse="exact") on the row-sparse gradient gives the parameters of
    Momentum fed the densified gradient (every row moving every step)."""
    labels = np.arange(40) % 5
    trip = triplets_from_classes(labels, 12 * 16, seed=2)
    results = []
    for densify in (False, True):
        model = TripletEmbedding(40, 4, seed=1, dtype="float64", init_std=0.5)
        syms = id_inputs()
        cost = model.cost(*syms)
        if densify:
            grads = [mg.ops.rowsparse_to_dense(mg.grad(cost, model.E))]
            opt = mg.optim.Momentum(model.params, lr=0.1, momentum=0.9)
            updates = opt.updates(grads=grads)
        else:
            opt = mg.optim.Momentum(model.params, lr=0.1, momentum=0.9, sparse="exact")
            updates = opt.updates(cost)
        step = mg.function(list(syms), cost, updates=updates)
        for start in range(0, 12 * 16, 16):
            step(*(t[start:start + 16] for t in trip))
        results.append(model.E.get_value())  # reading flushes the exact catch-up
    np.testing.assert_allclose(results[0], results[1], rtol=1e-10, atol=1e-12)


def violations_of(model, trip):
    syms = id_inputs()
    return float(mg.function(list(syms), model.violations(*syms))(*trip))


def make_momentum_step(model, params, lr=0.5, backend=None):
    """Module-level (picklable): one compiled exact-momentum step on ``params``."""
    syms = id_inputs()
    cost = model.cost(*syms)
    opt = mg.optim.Momentum(params, lr=lr, momentum=0.9, sparse="exact")
    return mg.function(list(syms), cost, updates=opt.updates(cost), backend=backend)


@pytest.fixture(scope="module")
def clustered():
    labels = np.random.default_rng(0).integers(0, 10, 400)
    return labels, triplets_from_classes(labels, 4000, seed=1)


def test_learns_with_exact_momentum_single_process(clustered):
    _, trip = clustered
    model = TripletEmbedding(400, 8, seed=0)
    before = violations_of(model, trip)
    step = make_momentum_step(model, model.params)
    for epoch in range(3):
        for batch in mg.data.batches(*trip, batch_size=64, seed=epoch):
            step(*batch)
    assert before > 0.4
    assert violations_of(model, trip) < 0.1


@pytest.mark.parametrize("n_workers", [1, 2])
def test_learns_under_hogwild_with_exact_momentum(clustered, n_workers):
    """Each worker owns its momentum state (exact catch-up of its skipped steps); the
    table lives in shared memory and comes back trained, updated in place (no dense
    copy-back)."""
    _, trip = clustered
    model = TripletEmbedding(400, 8, seed=0)
    before = violations_of(model, trip)
    step = functools.partial(make_momentum_step, model, backend="numpy")
    res = mg.parallel.hogwild(step, model.params, trip, n_workers, epochs=3, batch_size=64,
                              seed=0, progress=False, start_method="fork")
    assert len(res.losses) == n_workers and sum(res.samples) == 3 * trip[0].size
    assert res.dense_writeback == []
    assert np.mean(res.losses[0][:5]) > np.mean(res.losses[0][-5:])
    assert violations_of(model, trip) < min(0.15, before / 3)


def test_triplets_from_classes_respects_classes():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])  # class 2 has one item: never an anchor
    a, p, n = triplets_from_classes(labels, 5000, seed=4)
    assert a.dtype == p.dtype == n.dtype == np.int64
    assert (labels[a] == labels[p]).all() and (a != p).all()
    assert (labels[a] != labels[n]).all() and not (labels[a] == 2).any()
    assert set(n.tolist()) == set(range(10))  # every item can be a negative
    again = triplets_from_classes(labels, 5000, seed=4)
    for x, y in zip((a, p, n), again):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("labels,match", [(np.zeros(5, int), "two classes"),
                                          (np.arange(5), "at least two items"),
                                          (np.zeros(1, int), "at least two items")])
def test_triplets_from_classes_rejects_unusable_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        triplets_from_classes(labels, 10)


@pytest.mark.parametrize("kwargs,match", [(dict(margin=0.0), "margin"),
                                          (dict(n_items=1), "n_items")])
def test_bad_construction(kwargs, match):
    args = {"n_items": 10, "dim": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        TripletEmbedding(**args)


def test_out_of_range_id_raises_and_changes_nothing():
    model = TripletEmbedding(20, 3, seed=0, dtype="float64")
    opt = mg.optim.Momentum(model.params, lr=0.1, sparse="exact")
    syms = id_inputs()
    cost = model.cost(*syms)
    step = mg.function(list(syms), cost, updates=opt.updates(cost))
    step(np.array([0, 1]), np.array([2, 3]), np.array([4, 5]))
    before = model.E.get_value()
    state = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()
             if isinstance(v, np.ndarray)}
    with pytest.raises(IndexError):
        step(np.array([0, 1]), np.array([2, 20]), np.array([4, 5]))
    np.testing.assert_array_equal(model.E.get_value(), before)
    for k, v in opt.state_dict().items():
        if k in state:
            np.testing.assert_array_equal(v, state[k])


def test_pickles_and_honours_dtype():
    import pickle

    model = TripletEmbedding(10, 2, dtype="float32")
    assert model.E.dtype == "float32"
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.E.get_value(), model.E.get_value())
    assert clone.margin == model.margin
