"""mg.optim: dense rules vs hand-written formulas and torch.optim; exact row-sparse mode vs
the dense formulas fed the densified gradient; lazy Adam vs torch.optim.SparseAdam.

The oracle below is an independent, step-by-step NumPy transcription of torch's update
rules; nothing is compared with the code under test itself.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg

# --- oracle: torch.optim's algorithms, one dense step at a time ---------------------------


def oracle_step(name, p, g, st, t, hp):
    """One dense step of optimizer ``name`` at 1-based step ``t``; mutates ``st``."""
    lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
    if name == "SGD":
        return p - lr * (g + wd * p)
    if name == "Momentum":
        mu, damp, nest = hp.get("momentum", 0.9), hp.get("dampening", 0.0), hp.get("nesterov")
        g = g + wd * p
        st["buf"] = g.copy() if t == 1 else mu * st.get("buf", 0.0) + (1 - damp) * g
        d = g + mu * st["buf"] if nest else st["buf"]
        return p - lr * d
    if name == "Adagrad":
        g = g + wd * p
        st["sum"] = st.get("sum", hp.get("initial_accumulator_value", 0.0)) + g * g
        clr = lr / (1 + (t - 1) * hp.get("lr_decay", 0.0))
        return p - clr * g / (np.sqrt(st["sum"]) + hp.get("eps", 1e-10))
    if name == "RMSprop":
        a, eps, mom = hp.get("rho", 0.9), hp.get("eps", 1e-8), hp.get("momentum", 0.0)
        g = g + wd * p
        st["sq"] = a * st.get("sq", 0.0) + (1 - a) * g * g
        if hp.get("centered"):
            st["ga"] = a * st.get("ga", 0.0) + (1 - a) * g
            avg = np.sqrt(st["sq"] - st["ga"] ** 2) + eps
        else:
            avg = np.sqrt(st["sq"]) + eps
        if mom:
            st["buf"] = mom * st.get("buf", 0.0) + g / avg
            return p - lr * st["buf"]
        return p - lr * g / avg
    if name in ("Adam", "AdamW"):
        b1, b2 = hp.get("betas", (0.9, 0.999))
        eps = hp.get("eps", 1e-8)
        if name == "AdamW":
            p = p * (1 - lr * hp.get("weight_decay", 1e-2))
        else:
            g = g + wd * p
        st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
        st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g * g
        if hp.get("amsgrad"):
            st["vmax"] = np.maximum(st.get("vmax", 0.0), st["v"])
        vhat = st["vmax" if hp.get("amsgrad") else "v"] / (1 - b2 ** t)
        mhat = st["m"] / (1 - b1 ** t)
        return p - lr * mhat / (np.sqrt(vhat) + eps)
    raise ValueError(name)


def sparse_adam_oracle(p, idx, vals, st, t, lr, b1, b2, eps):
    """torch.optim.SparseAdam on the coalesced rows (no weight decay)."""
    m, v = st.setdefault("m", np.zeros_like(p)), st.setdefault("v", np.zeros_like(p))
    m[idx] = b1 * m[idx] + (1 - b1) * vals
    v[idx] = b2 * v[idx] + (1 - b2) * vals * vals
    step = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    p = p.copy()
    p[idx] -= step * m[idx] / (np.sqrt(v[idx]) + eps)
    return p


CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, weight_decay=0.1)),
    ("Momentum", dict(lr=0.05, momentum=0.9)),
    ("Momentum", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Momentum", dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.02)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, weight_decay=0.05)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.8, centered=True)),
    ("RMSprop", dict(lr=0.01, rho=0.95, weight_decay=0.05, momentum=0.5)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, weight_decay=0.1, betas=(0.85, 0.995))),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05)),
    ("AdamW", dict(lr=0.02, amsgrad=True, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.02, initial_accumulator_value=0.1,
                     weight_decay=0.05)),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in hp.items())}" for n, hp in CONFIGS]


def make_opt(name, params, **kw):
    return getattr(mg.optim, name)(params, **kw)


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# --- dense ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name,hp", CONFIGS, ids=IDS)
def test_dense_matches_formula(name, hp, backend):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(7, 3))
    P = mg.shared(p0, name="P")
    g = mg.matrix("g")
    step = mg.function([g], updates=make_opt(name, [P], **hp).updates(grads=[g]),
                       backend=backend)
    p, st = p0.copy(), {}
    for t in range(1, 31):
        grad = rng.normal(size=p0.shape)
        step(grad)
        p = oracle_step(name, p, grad, st, t, hp)
    assert rel_err(P.get_value(), p) < 1e-12


def _torch_opt(torch, name, params, hp):
    hp = dict(hp)
    if name == "Momentum":
        hp.setdefault("momentum", 0.9)
        return torch.optim.SGD(params, **hp)
    if name == "RMSprop":
        hp["alpha"] = hp.pop("rho", 0.9)
        hp.setdefault("eps", 1e-8)
    return getattr(torch.optim, name)(params, **hp)


@pytest.mark.parametrize("name,hp", CONFIGS, ids=IDS)
def test_dense_matches_torch(name, hp):
    torch = pytest.importorskip("torch", reason="torch is an optional reference")
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(6, 4))
    P = mg.shared(p0, name="P")
    g = mg.matrix("g")
    step = mg.function([g], updates=make_opt(name, [P], **hp).updates(grads=[g]))
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = _torch_opt(torch, name, [tp], hp)
    for _ in range(25):
        grad = rng.normal(size=p0.shape)
        step(grad)
        tp.grad = torch.tensor(grad)
        topt.step()
    assert rel_err(P.get_value(), tp.detach().numpy()) < 1e-10


def test_dense_through_cost_and_float32():
    rng = np.random.default_rng(2)
    W = mg.shared(rng.normal(size=(5, 3)).astype("float32"), name="W")
    x = mg.matrix("x", dtype="float32")
    cost = ((x @ W) ** 2).mean()
    opt = mg.optim.Adam([W], lr=0.01)
    f = mg.function([x], cost, updates=opt.updates(cost))
    before = f(rng.normal(size=(8, 5)).astype("float32"))
    for _ in range(50):
        after = f(rng.normal(size=(8, 5)).astype("float32"))
    assert W.get_value().dtype == np.float32 and opt.state[0]["exp_avg"].value.dtype == np.float32
    assert np.isfinite(after) and int(opt.t.get_value()) == 51 and before > 0


# --- exact row-sparse mode vs dense -------------------------------------------------------


def sparse_stream(rng, V, D, steps):
    """Row-sparse gradients: long stretches without some rows, duplicates, empty steps."""
    for s in range(steps):
        phase = (s // 150) % 3
        hi = V // 4 if phase == 0 else (V if phase == 1 else V // 2)
        n = 0 if s % 17 == 5 else int(rng.integers(1, 6))
        idx = rng.integers(0, hi, size=n)
        if n > 1 and s % 3 == 0:
            idx[-1] = idx[0]  # duplicate rows add up
        yield mg.RowSparse(idx, rng.normal(size=(n, D)), (V, D))


@pytest.mark.parametrize("name,hp", CONFIGS, ids=IDS)
def test_exact_sparse_matches_dense(name, hp, backend):
    V, D = 40, 3
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=(V, D))
    P = mg.shared(p0, name="P")
    g = mg.RowSparseType("float64", (V, D)).make_variable("g")
    opt = make_opt(name, [P], sparse="exact", **hp)
    step = mg.function([g], updates=opt.updates(grads=[g]), backend=backend)
    steps = 1000 if backend == "numba" else 400  # the NumPy reference is slower per step
    p, st = p0.copy(), {}
    for t, rs in enumerate(sparse_stream(rng, V, D, steps), start=1):
        step(rs)
        p = oracle_step(name, p, rs.to_dense(), st, t, hp)
        if t in (333, steps):  # get_value flushes: never stale rows
            assert rel_err(P.get_value(), p) < 1e-9, t
    assert rel_err(P.value, p) < 1e-9  # storage itself is up to date after the flush
    if opt.last[0] is not None:
        assert (opt.last[0].get_value() == steps).all()


def test_adam_exact_long_gap_drift():
    """A row touched once, then skipped 3000 steps: the truncated drift sum is exact."""
    V, D = 4, 5
    rng = np.random.default_rng(4)
    p0 = rng.normal(size=(V, D))
    P = mg.shared(p0, name="P")
    g = mg.RowSparseType("float64", (V, D)).make_variable("g")
    hp = dict(lr=0.01, betas=(0.9, 0.999))
    step = mg.function([g], updates=mg.optim.Adam([P], sparse="exact", **hp).updates(grads=[g]))
    p, st = p0.copy(), {}
    for t in range(1, 3002):
        idx = [0, 1] if t in (1, 2) else ([2] if t == 3001 else [])
        rs = mg.RowSparse(idx, rng.normal(size=(len(idx), D)) * 10, (V, D))
        step(rs)
        p = oracle_step("Adam", p, rs.to_dense(), st, t, hp)
    assert rel_err(P.get_value(), p) < 1e-12


def test_weight_decay_catch_up_closed_form():
    """SGD with weight decay: a row untouched for k steps shrinks by (1 - lr*wd)**k."""
    P = mg.shared(np.ones((3, 2)), name="P")
    g = mg.RowSparseType("float64", (3, 2)).make_variable("g")
    step = mg.function([g], updates=mg.optim.SGD([P], lr=0.1, weight_decay=0.2)
                       .updates(grads=[g]))
    for _ in range(500):
        step(mg.RowSparse([0], [[0.0, 0.0]], (3, 2)))
    assert P.value[1, 0] == 1.0  # stale in storage until read...
    np.testing.assert_allclose(P.get_value()[1], 0.98 ** 500, rtol=1e-12)  # ...exact on read


def test_lazy_modes_move_only_touched_rows():
    for cls in (mg.optim.Momentum, mg.optim.RMSprop, mg.optim.Adam, mg.optim.AdamW):
        P = mg.shared(np.ones((5, 2)), name="P")
        g = mg.RowSparseType("float64", (5, 2)).make_variable("g")
        opt = cls([P], lr=0.1, sparse="lazy")
        step = mg.function([g], updates=opt.updates(grads=[g]))
        step(mg.RowSparse([1, 3], np.ones((2, 2)), (5, 2)))
        before = P.get_value()
        step(mg.RowSparse([1], np.ones((1, 2)), (5, 2)))
        after = P.get_value()
        assert (after[3] == before[3]).all() and (after[[0, 2, 4]] == 1).all()
        assert opt.last[0] is None  # no last-step counters in lazy mode


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lazy_adam_matches_sparse_adam_formula(dtype, backend):
    """SparseAdam's formula on a stream with empty steps (torch refuses those)."""
    V, D = 30, 4
    rng = np.random.default_rng(5)
    p0 = rng.normal(size=(V, D)).astype(dtype)
    P = mg.shared(p0, name="P")
    g = mg.RowSparseType(dtype, (V, D)).make_variable("g")
    step = mg.function([g], updates=mg.optim.Adam([P], lr=0.01, betas=(0.9, 0.99))
                       .updates(grads=[g]), backend=backend)
    p, st = p0.astype(np.float64), {}
    for t, rs in enumerate(sparse_stream(rng, V, D, 300), start=1):
        step(mg.RowSparse(rs.indices, rs.values.astype(dtype), rs.shape))
        c = mg.RowSparse(rs.indices, rs.values.astype(dtype).astype(np.float64), rs.shape)
        c = c.coalesce()
        p = sparse_adam_oracle(p, c.indices, c.values, st, t, 0.01, 0.9, 0.99, 1e-8)
    assert rel_err(P.get_value(), p) < (1e-12 if dtype == "float64" else 1e-4)


def test_lazy_adam_matches_sparse_adam_every_step():
    torch = pytest.importorskip("torch", reason="torch is an optional reference")
    V, D = 25, 3
    rng = np.random.default_rng(6)
    p0 = rng.normal(size=(V, D))
    P = mg.shared(p0, name="P")
    g = mg.RowSparseType("float64", (V, D)).make_variable("g")
    step = mg.function([g], updates=mg.optim.Adam([P], lr=0.02).updates(grads=[g]))
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = torch.optim.SparseAdam([tp], lr=0.02)
    for _ in range(400):
        idx = rng.integers(0, V, size=4)
        vals = rng.normal(size=(4, D))
        step(mg.RowSparse(idx, vals, (V, D)))
        tp.grad = torch.sparse_coo_tensor(torch.tensor(idx)[None], torch.tensor(vals), (V, D))
        topt.step()
    assert rel_err(P.get_value(), tp.detach().numpy()) < 1e-6


def test_cost_with_gather_gives_row_sparse_update():
    rng = np.random.default_rng(7)
    E = mg.shared(rng.normal(size=(100, 4)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    opt = mg.optim.Adam([E], lr=0.1)
    step = mg.function([idx], cost, updates=opt.updates(cost))
    before = E.get_value()
    step(np.array([3, 3, 7]))
    changed = np.flatnonzero((E.get_value() != before).any(axis=1))
    assert changed.tolist() == [3, 7]


def test_mixing_dense_and_lazy_sparse_for_one_param_is_refused():
    P = mg.shared(np.zeros((4, 2)), name="P")
    opt = mg.optim.Momentum([P], lr=0.1, sparse="lazy")
    opt.updates(grads=[mg.matrix("g")])
    with pytest.raises(ValueError, match="already gets a dense gradient"):
        opt.updates(grads=[mg.RowSparseType("float64", (4, 2)).make_variable("g")])


@pytest.mark.parametrize("opt_cls", [mg.optim.Momentum, mg.optim.Adam, mg.optim.RMSprop])
def test_dense_and_exact_sparse_steps_mix_on_one_table(opt_cls):
    """A table's dense gradient runs the exact row rule on every row, so dense and
    row-sparse steps of one exact-mode optimizer give the all-dense optimizer's values."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal((6, 3))
    idx = mg.lvector("idx")
    results = []
    for mixed in (True, False):
        P = mg.shared(start, name="P")
        opt = opt_cls([P], lr=0.05, sparse="exact")
        cost_dense = (P ** 2).sum() * 0.5
        cost_rows = (P[idx] ** 3).sum()
        g_rows = mg.grad(cost_rows, P)
        dense_step = mg.function([], [], updates=opt.updates(cost_dense))
        rows_step = mg.function([idx], [], updates=opt.updates(
            grads=[g_rows if mixed else g_rows.to_dense()]))
        r = np.random.default_rng(1)
        for t in range(30):
            dense_step() if t % 3 == 0 else rows_step(r.choice(6, 2))
        results.append(P.get_value())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-10, atol=1e-12)


def test_bad_arguments():
    P = mg.shared(np.zeros((4, 2)), name="P")
    with pytest.raises(ValueError, match="sparse must be"):
        mg.optim.Adam([P], sparse="fast")
    with pytest.raises(ValueError, match="Nesterov"):
        mg.optim.Momentum([P], nesterov=True, dampening=0.1)
    with pytest.raises(TypeError, match="exactly one"):
        mg.optim.SGD([P]).updates()
    with pytest.raises(ValueError, match="listed twice"):
        mg.optim.SGD([P, P])


# --- nan_guard -----------------------------------------------------------------------------


@pytest.mark.parametrize("sparse_grad", [True, False])
def test_nan_gradient_skips_step(sparse_grad, backend):
    V, D = 6, 2
    P = mg.shared(np.ones((V, D)), name="P")
    opt = mg.optim.Adam([P], lr=0.1, sparse="exact")
    if sparse_grad:
        g = mg.RowSparseType("float64", (V, D)).make_variable("g")

        def make(vals):
            return mg.RowSparse([1, 4], vals, (V, D))
    else:
        g = mg.matrix("g")

        def make(vals):
            out = np.zeros((V, D))
            out[[1, 4]] = vals
            return out
    ups = opt.updates(grads=[g])
    skip = mg.function([g], updates=ups, nan_guard=True, on_nan="skip", backend=backend)
    raise_ = mg.function([g], updates=ups, nan_guard=True, backend=backend)
    skip(make(np.ones((2, D))))
    snap = [v.get_value() for v in [P, opt.t, *opt.state[0].values()]]
    bad = np.ones((2, D))
    bad[1, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="skipped"):
        skip(make(bad))
    with pytest.raises(FloatingPointError):
        raise_(make(np.where(np.isnan(bad), np.inf, bad)))
    for before, var in zip(snap, [P, opt.t, *opt.state[0].values()]):
        np.testing.assert_array_equal(before, var.get_value())


# --- transforms ----------------------------------------------------------------------------


def _noise_step(shape, eta, gamma, seed, sparse_rows=None):
    P = mg.shared(np.zeros(shape), name="P")
    if sparse_rows is None:
        g = mg.matrix("g")
    else:
        g = mg.RowSparseType("float64", shape).make_variable("g")
    opt = mg.optim.SGD([P], lr=1.0, transforms=[mg.optim.GradientNoise(eta, gamma, seed)])
    f = mg.function([g], updates=opt.updates(grads=[g]))

    def step():
        before = P.get_value()
        if sparse_rows is None:
            f(np.zeros(shape))
        else:
            f(mg.RowSparse(sparse_rows, np.zeros((len(sparse_rows), shape[1])), shape))
        return before - P.get_value()  # = the noisy gradient (lr = 1)

    return step


def test_gradient_noise_statistics_and_seed():
    eta, gamma = 0.5, 0.55
    step = _noise_step((400, 50), eta, gamma, seed=3)
    for t in range(4):
        noise = step()
        var = eta / (1 + t) ** gamma
        assert abs(noise.mean()) < 4 * np.sqrt(var / noise.size)
        assert abs(noise.var() / var - 1) < 0.03  # 20,000 samples: sd of the ratio ~1%
    again, other = _noise_step((400, 50), eta, gamma, 3), _noise_step((400, 50), eta, gamma, 4)
    a, b = again(), other()
    step0 = _noise_step((400, 50), eta, gamma, seed=3)()
    np.testing.assert_array_equal(a, step0)
    assert not np.allclose(a, b)


def test_gradient_noise_row_sparse_only_touched_rows():
    step = _noise_step((50, 8), 1.0, 0.55, 0, sparse_rows=[4, 9, 9])
    noise = step()
    assert set(np.flatnonzero(np.abs(noise).sum(axis=1))) == {4, 9}


def test_clip_grad_norm_matches_densified_norm():
    rng = np.random.default_rng(8)
    V, D = 20, 3
    E = mg.shared(np.zeros((V, D)), name="E")
    W = mg.shared(np.zeros((4, 2)), name="W")
    ge = mg.RowSparseType("float64", (V, D)).make_variable("ge")
    gw = mg.matrix("gw")
    for max_norm in (0.5, 1e3):
        E.set_value(np.zeros((V, D)))
        W.set_value(np.zeros((4, 2)))
        opt = mg.optim.SGD([E, W], lr=1.0, transforms=[mg.optim.clip_grad_norm(max_norm=max_norm)])
        f = mg.function([ge, gw], updates=opt.updates(grads=[ge, gw]))
        rs = mg.RowSparse([2, 5, 2, 19], rng.normal(size=(4, D)), (V, D))
        dw = rng.normal(size=(4, 2))
        f(rs, dw)
        dense = rs.to_dense()
        norm = np.sqrt((dense ** 2).sum() + (dw ** 2).sum())
        coef = min(1.0, max_norm / (norm + 1e-6))
        np.testing.assert_allclose(-E.get_value(), dense * coef, rtol=1e-12)
        np.testing.assert_allclose(-W.get_value(), dw * coef, rtol=1e-12)
    clipped = mg.optim.clip_grad_norm([ge, gw], 0.5)
    out = mg.function([ge, gw], clipped)(rs, dw)
    np.testing.assert_allclose(out[0].to_dense(), rs.to_dense() * 0.5 / (norm + 1e-6))


def test_transforms_apply_in_order():
    """clip then noise != noise then clip: the order given is the order applied."""
    shape = (30, 4)

    def run(transforms):
        P = mg.shared(np.zeros(shape), name="P")
        g = mg.matrix("g")
        opt = mg.optim.SGD([P], lr=1.0, transforms=transforms)
        mg.function([g], updates=opt.updates(grads=[g]))(np.full(shape, 10.0))
        return -P.get_value()

    noise, clip = mg.optim.GradientNoise(1.0, seed=1), mg.optim.clip_grad_norm(max_norm=1.0)
    a = run([clip, noise])
    b = run([noise, clip])
    assert abs(np.linalg.norm(b) - 1.0) < 1e-5 and np.linalg.norm(a) > 5
