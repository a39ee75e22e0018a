"""Exact-mode bookkeeping around the step: reads from other functions catch up only the
rows they gather (no flush), a failed call changes no bit of the table or ``last``, flush
hooks hold optimizers weakly and cost nothing when nothing is pending, hogwild workers
flush before they finish, and the torch.optim options (amsgrad, lr_decay,
initial_accumulator_value, momentum/centered RMSprop, dampening) match torch."""
from __future__ import annotations

import gc
import types

import numpy as np
import pytest
from test_optim import rel_err

import minigrad as mg
from minigrad.optim.ops import FreshTake


def _train_and_eval(cls, kw, backend, V=50, D=3):
    rng = np.random.default_rng(0)
    E = mg.shared(rng.normal(size=(V, D)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    opt = cls([E], sparse="exact", **kw)
    train = mg.function([idx], cost, updates=opt.updates(cost), backend=backend)
    evaluate = mg.function([idx], E[idx], backend=backend)
    return E, opt, train, evaluate, rng


@pytest.mark.parametrize("cls,kw", [(mg.optim.Adam, dict(lr=0.05)),
                                    (mg.optim.Momentum, dict(lr=0.05, momentum=0.9,
                                                             weight_decay=0.01))])
def test_eval_function_reads_caught_up_rows_without_a_flush(cls, kw, backend):
    E, opt, train, evaluate, rng = _train_and_eval(cls, kw, backend)
    assert any(isinstance(n.op, FreshTake) for n in evaluate.nodes)
    assert E not in evaluate.flush_first  # no O(V) flush before an evaluation call
    for _ in range(30):
        train(rng.integers(0, 50, size=4))
    last_before = opt.last[0].value.copy()
    stored_before = E.value.copy()
    rows = np.array([3, 7, 7, 40])
    got = evaluate(rows)
    # the read wrote nothing: storage and last untouched ...
    np.testing.assert_array_equal(E.value, stored_before)
    np.testing.assert_array_equal(opt.last[0].value, last_before)
    # ... and returned what a full flush gives (the flush runs the Numba kernels, so the
    # NumPy backend's reference kernels agree to rounding only)
    if backend == "numba" and mg.config.backend == "numba":  # flush on the same kernels
        np.testing.assert_array_equal(got, E.get_value()[rows])
    else:
        np.testing.assert_allclose(got, E.get_value()[rows], rtol=1e-13)


def test_failed_exact_call_changes_no_bit(backend):
    """Issue 15.5: the forward catch-up of a call that fails afterwards (bad label) leaves
    table, state and ``last`` bitwise unchanged."""
    rng = np.random.default_rng(1)
    V, D, C = 20, 3, 4
    E = mg.shared(rng.normal(size=(V, D)), name="E")
    W = mg.shared(rng.normal(size=(D, C)), name="W")
    idx, y = mg.lvector("idx"), mg.lvector("y")
    cost = mg.nn.cross_entropy(E[idx] @ W, y)
    opt = mg.optim.Adam([E, W], lr=0.05, sparse="exact")
    step = mg.function([idx, y], cost, updates=opt.updates(cost), backend=backend)
    for _ in range(10):
        step(rng.integers(0, 5, size=3), rng.integers(0, C, size=3))
    snap = [E.value.copy(), opt.last[0].value.copy(),
            *[v.value.copy() for v in opt.state[0].values()]]
    with pytest.raises((IndexError, ValueError)):
        step(np.array([15, 16, 17]), np.array([0, 1, 99]))  # rows 15-17 lag; label 99 bad
    now = [E.value, opt.last[0].value, *[v.value for v in opt.state[0].values()]]
    for a, b in zip(snap, now):
        np.testing.assert_array_equal(a, b)


def test_dead_optimizers_release_their_tables_and_hooks():
    """Issue 15.21: 1,000 optimizers on one table, dropped, leave no hook and no table."""
    E = mg.shared(np.zeros((2000, 8)), name="E")
    import weakref

    refs = []
    for _ in range(1000):
        opt = mg.optim.Adam([E], lr=0.1, sparse="exact")
        opt.apply(E, mg.RowSparse([1], np.ones((1, 8)), (2000, 8)))
        refs.append(weakref.ref(opt.state[0]["exp_avg"]))
        del opt
    gc.collect()
    assert E._flush_hooks == []
    assert all(r() is None for r in refs)


def test_compiled_step_keeps_flushing_after_the_optimizer_object_is_dropped():
    P = mg.shared(np.ones((3, 2)), name="P")
    g = mg.RowSparseType("float64", (3, 2)).make_variable("g")
    step = mg.function([g], updates=mg.optim.SGD([P], lr=0.1, weight_decay=0.2)
                       .updates(grads=[g]))
    gc.collect()
    for _ in range(50):
        step(mg.RowSparse([0], [[0.0, 0.0]], (3, 2)))
    np.testing.assert_allclose(P.get_value()[1], 0.98 ** 50, rtol=1e-12)


def test_flush_hook_is_a_no_op_when_nothing_is_pending():
    E = mg.shared(np.ones((100, 4)), name="E")
    opt = mg.optim.Momentum([E], lr=0.1, momentum=0.9)
    opt.apply(E, mg.RowSparse([1], np.ones((1, 4)), (100, 4)))
    state = opt.param_states[0]
    assert state.pending
    E.get_value(borrow=True)
    assert not state.pending
    calls = []
    state.flush = lambda: calls.append(1)  # a second read must not even look at the rows
    E.get_value(borrow=True)
    assert calls == []


def _batches_of(worker_mod, cfg, data):
    return list(worker_mod._batches(0, cfg, data))


def test_hogwild_exact_mode_result_is_the_flushed_one():
    """One hogwild worker with an exact-mode optimizer equals a one-process run of the same
    batches: the worker flushes its pending rows before it finishes."""
    from minigrad.parallel import worker as worker_mod

    r = mg.data.synthetic_ratings(80, 120, n_ratings=1500, seed=0)
    data = (r.X, r.y)

    def model_and_step():
        model = mg.models.FactorizationMachine(r.X.shape[1], 3, seed=0)
        return model

    model = model_and_step()
    res = mg.parallel.hogwild(_make_momentum_step(model), model.params, data, 1, epochs=2,
                              batch_size=64, progress=False, start_method="fork", seed=3)
    assert res.losses
    ref = model_and_step()
    step = _make_momentum_step(ref)(ref.params)
    cfg = types.SimpleNamespace(seed=3, epochs=2, sampling="shard", n_workers=1,
                                batch_size=64)
    for batch in _batches_of(worker_mod, cfg, data):
        step(*batch)
    for a, b in zip(model.params, ref.params):
        assert rel_err(a.get_value(), b.get_value()) < 1e-12


class _make_momentum_step:
    def __init__(self, model):
        self.model = model

    def __call__(self, params):
        X, y = mg.csr_matrix("X"), mg.vector("y")
        cost = self.model.cost(X, y)
        opt = mg.optim.Momentum(params, lr=0.05, momentum=0.9, weight_decay=0.01)
        return mg.function([X, y], cost, updates=opt.updates(cost), backend="numpy")


# --- torch.optim options ---------------------------------------------------------------

OPTIONS = [
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05)),
    ("AdamW", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.02)),
    ("RMSprop", dict(lr=0.01, momentum=0.7, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, weight_decay=0.03)),
    ("Momentum", dict(lr=0.05, momentum=0.8, dampening=0.4)),
]


def _torch(torch, name, params, hp):
    hp = dict(hp)
    if name == "Momentum":
        return torch.optim.SGD(params, **hp)
    if name == "RMSprop":
        hp["alpha"] = hp.pop("rho", 0.9)
        hp.setdefault("eps", 1e-8)
    return getattr(torch.optim, name)(params, **hp)


@pytest.mark.parametrize("name,hp", OPTIONS, ids=[f"{n}-{h}" for n, h in OPTIONS])
def test_options_dense_and_exact_match_torch(name, hp):
    """Dense steps through apply, and exact row-sparse steps (torch fed the densified
    gradient: zero rows still step), both against torch.optim."""
    torch = pytest.importorskip("torch", reason="torch is an optional reference")
    rng = np.random.default_rng(6)
    V, D = 8, 3
    p0 = rng.normal(size=(V, D))
    dense = mg.shared(p0.copy(), name="dense")
    rows = mg.shared(p0.copy(), name="rows")
    o_dense = getattr(mg.optim, name)([dense], **hp)
    o_rows = getattr(mg.optim, name)([rows], sparse="exact", **hp)
    w = torch.nn.Parameter(torch.tensor(p0))
    topt = _torch(torch, name, [w], hp)
    for t in range(120):
        idx = rng.integers(0, 3 if t < 60 else V, size=2)
        rs = mg.RowSparse(idx, rng.normal(size=(2, D)), (V, D))
        o_dense.apply(dense, rs.to_dense())
        o_rows.apply(rows, rs)
        w.grad = torch.tensor(rs.to_dense())
        topt.step()
    want = w.detach().numpy()
    assert rel_err(dense.get_value(), want) < 1e-10
    assert rel_err(rows.get_value(), want) < 1e-10


def test_lazy_amsgrad_moves_touched_rows_only():
    P = mg.shared(np.ones((5, 2)), name="P")
    opt = mg.optim.Adam([P], lr=0.1, amsgrad=True, sparse="lazy")
    opt.apply(P, mg.RowSparse([1, 3], np.ones((2, 2)), (5, 2)))
    opt.apply(P, mg.RowSparse([1], -np.ones((1, 2)), (5, 2)))
    after = P.get_value()
    assert (after[[0, 2, 4]] == 1).all() and (after[1] != 1).all()
    assert "max_exp_avg_sq" in opt.state[0]
