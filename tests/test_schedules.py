"""Learning-rate schedules: values against torch.optim.lr_scheduler; exact row-sparse mode
under every schedule equals the dense optimizer (the oracle of test_optim, fed each step's
lr); rows untouched for 10^4+ steps; weight decay; a shared lr changed mid-run; lazy mode
uses the current lr; state_dict / mg.save carry the position; invalid values refused."""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import pytest
from test_optim import oracle_step, rel_err

import minigrad as mg

S = mg.optim.schedules

#: the NumPy reference kernels (MINIGRAD_BACKEND=numpy) cost ~10x more per call: the same
#: checks run on shorter streams there (the long gaps are exercised by the Numba run)
REFERENCE = os.environ.get("MINIGRAD_BACKEND", "").lower() == "numpy"


def schedules(n):
    """One of each schedule, sized for a run of ``n`` steps."""
    lr = 0.05
    return {
        "Constant": S.Constant(lr),
        "StepLR": S.StepLR(lr, step_size=max(1, n // 7), gamma=0.5),
        "MultiStepLR": S.MultiStepLR(lr, [3, n // 3, 2 * n // 3], gamma=0.3),
        "ExponentialLR": S.ExponentialLR(lr, gamma=1.0 - 3.0 / n),
        "CosineAnnealingLR": S.CosineAnnealingLR(lr, T_max=2 * n // 5, eta_min=1e-4),
        "CosineAnnealingWarmRestarts": S.CosineAnnealingWarmRestarts(lr, T_0=n // 20,
                                                                     T_mult=2, eta_min=1e-4),
        "PolynomialLR": S.PolynomialLR(lr, total_iters=4 * n // 5, power=2.0),
        "OneCycleLR": S.OneCycleLR(lr, total_steps=n + 5),
        "LinearWarmup": S.LinearWarmup(S.CosineAnnealingLR(lr, T_max=n), n // 10),
        "InverseSqrt": S.InverseSqrt(lr, warmup_steps=n // 25),
        "LambdaLR": S.LambdaLR(lr, lambda step: 1.0 / (1.0 + 0.002 * step)),
    }


NAMES = list(schedules(100))

# (optimizer, hyperparameters without lr): every rule with a non-trivial catch-up. With L2
# weight decay a zero-gradient RMSprop/Adam step moves p by about lr * sign(p) once
# sqrt(v) >> eps: the dense trajectory oscillates around 0 and amplifies rounding (two
# correct orderings of the same formula drift apart by 1e-8), so those rules use an eps
# that keeps the comparison well-conditioned and 1e-12 meaningful.
RULES = [
    ("SGD", dict(weight_decay=0.1)),
    ("Momentum", dict(momentum=0.9)),
    ("Momentum", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Momentum", dict(momentum=0.5, dampening=0.3, weight_decay=0.02)),
    ("RMSprop", dict(momentum=0.8, centered=True)),
    ("RMSprop", dict(rho=0.95, weight_decay=0.05, momentum=0.5, eps=1e-2)),
    ("Adam", dict(betas=(0.9, 0.99))),
    ("Adam", dict(betas=(0.8, 0.99), weight_decay=0.05, eps=1e-2)),
    ("AdamW", dict(weight_decay=0.1, betas=(0.85, 0.995))),
]
RULE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in hp.items())}" for n, hp in RULES]


def touched(t, n, V):
    """Rows touched at step t: 0 always; 1 every 7th step; 2 at steps 1-3 and the last
    (a gap of n - 4 steps); rows 3.. never (caught up by the flush at the end)."""
    rows = [0] + ([1] if t % 7 == 0 else []) + ([2] if t <= 3 or t == n else [])
    return np.array(rows)


def run_exact_vs_dense(name, hp, lr, n, V=5, D=2, seed=0):
    rng = np.random.default_rng(seed)
    p0 = rng.normal(size=(V, D))
    P = mg.shared(p0.copy(), name="P")
    opt = getattr(mg.optim, name)([P], lr=lr, sparse="exact", **hp)
    p, st = p0.copy(), {}
    for t in range(1, n + 1):
        idx = touched(t, n, V)
        rs = mg.RowSparse(idx, rng.normal(size=(len(idx), D)), (V, D))
        used = opt.current_lr()
        opt.apply(P, rs)
        p = oracle_step(name, p, rs.to_dense(), st, t, {**hp, "lr": used})
    return P.get_value(), p


@pytest.mark.parametrize("sched", NAMES)
@pytest.mark.parametrize("name,hp", RULES, ids=RULE_IDS)
def test_exact_equals_dense_under_every_schedule(name, hp, sched):
    n = 150 if REFERENCE else 500
    got, want = run_exact_vs_dense(name, hp, schedules(n)[sched], n)
    assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("name,hp", RULES, ids=RULE_IDS)
def test_exact_long_gap_under_cosine_with_restarts(name, hp):
    """Row 2 sits untouched for 10,200 steps, row 3 for all 10,204, while the lr warms up,
    restarts and decays."""
    n = 1_204 if REFERENCE else 10_204
    sched = S.LinearWarmup(S.CosineAnnealingWarmRestarts(0.05, T_0=700, T_mult=2,
                                                         eta_min=1e-5), 300)
    got, want = run_exact_vs_dense(name, hp, sched, n, V=4, seed=1)
    assert rel_err(got, want) < 1e-12


#: AMSGrad, closed form (AdamW's decay) and replay (L2 decay): the plain exact loop's
#: AMSGrad cases, on shorter runs than RULES (every schedule still passes its phases)
AMSGRAD_RULES = [
    ("AdamW", dict(weight_decay=0.1, betas=(0.85, 0.995), amsgrad=True)),
    ("Adam", dict(betas=(0.8, 0.99), weight_decay=0.05, eps=1e-2, amsgrad=True)),
]


@pytest.mark.parametrize("sched", NAMES)
@pytest.mark.parametrize("name,hp", AMSGRAD_RULES, ids=["AdamW-amsgrad", "Adam-L2-amsgrad"])
def test_amsgrad_exact_equals_dense_under_every_schedule(name, hp, sched):
    n = 120 if REFERENCE else 240
    got, want = run_exact_vs_dense(name, hp, schedules(n)[sched], n)
    assert rel_err(got, want) < 1e-12


def test_amsgrad_exact_long_gap_under_cosine_with_restarts():
    """AMSGrad's max does not decay: row 2's drift over its 10,200 skipped steps divides
    by the max, not by the decayed v."""
    n = 1_204 if REFERENCE else 10_204
    sched = S.LinearWarmup(S.CosineAnnealingWarmRestarts(0.05, T_0=700, T_mult=2,
                                                         eta_min=1e-5), 300)
    name, hp = AMSGRAD_RULES[0]
    got, want = run_exact_vs_dense(name, hp, sched, n, V=4, seed=1)
    assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("name,hp", RULES, ids=RULE_IDS)
def test_shared_lr_changed_mid_run_compiled(name, hp, backend):
    """A shared lr set between calls takes effect at the next step, for every row: the
    skipped steps of a row caught up later get the lr each of them had."""
    V, D, n = 6, 2, 250
    rng = np.random.default_rng(2)
    p0 = rng.normal(size=(V, D))
    P = mg.shared(p0.copy(), name="P")
    lr = mg.shared(np.float64(0.05), name="lr")
    opt = getattr(mg.optim, name)([P], lr=lr, sparse="exact", **hp)
    g = mg.RowSparseType("float64", (V, D)).make_variable("g")
    step = mg.function([g], updates=opt.updates(grads=[g]), backend=backend)
    p, st = p0.copy(), {}
    for t in range(1, n + 1):
        if t % 50 == 0:
            lr.set_value(np.float64(0.05 * (1 + math.sin(t))))
        idx = touched(t, n, V)
        rs = mg.RowSparse(idx, rng.normal(size=(len(idx), D)), (V, D))
        step(rs)
        p = oracle_step(name, p, rs.to_dense(), st, t, {**hp, "lr": float(lr.get_value())})
        if t == 222:
            assert rel_err(P.get_value(), p) < 1e-12  # a read mid-run flushes exactly
    assert rel_err(P.get_value(), p) < 1e-12


def test_weight_decay_schedule_exact():
    n, V, D = (600 if REFERENCE else 3000), 4, 2
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=(V, D))
    P = mg.shared(p0.copy(), name="P")
    wd = S.CosineAnnealingLR(0.1, T_max=n)
    lr = S.ExponentialLR(0.05, 0.9995)
    opt = mg.optim.Momentum([P], lr=lr, momentum=0.9, weight_decay=wd)
    p, st = p0.copy(), {}
    for t in range(1, n + 1):
        idx = touched(t, n, V)
        rs = mg.RowSparse(idx, rng.normal(size=(len(idx), D)), (V, D))
        opt.apply(P, rs)
        p = oracle_step("Momentum", p, rs.to_dense(), st, t,
                        dict(lr=lr(t), momentum=0.9, weight_decay=wd(t)))
    assert rel_err(P.get_value(), p) < 1e-12


def test_lazy_mode_uses_the_current_lr_on_touched_rows():
    V, D = 4, 2
    P = mg.shared(np.zeros((V, D)), name="P")
    sched = S.StepLR(0.1, step_size=2, gamma=0.5)
    opt = mg.optim.Momentum([P], lr=sched, momentum=0.9, sparse="lazy")
    lrs = []
    for _ in range(6):
        lrs.append(opt.current_lr())
        opt.apply(P, mg.RowSparse([1], np.ones((1, D)), (V, D)))
    assert lrs == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    buf, p = 0.0, 0.0
    for t, lr in enumerate(lrs, start=1):
        buf = 1.0 if t == 1 else 0.9 * buf + 1.0
        p -= lr * buf
    np.testing.assert_allclose(P.get_value()[1], p, rtol=1e-14)
    assert (P.get_value()[[0, 2, 3]] == 0).all()  # untouched rows never move in lazy mode


def test_assigning_lr_takes_effect_at_the_next_step_for_every_row():
    """The reproducer of issue 13: ``opt.lr = 0`` between calls, no recompilation."""
    E = mg.shared(np.zeros((3, 1)), name="E")
    i = mg.lvector("i")
    c = (E[i] - 1.0).sum()
    opt = mg.optim.Momentum([E], lr=1.0, momentum=0.9)
    step = mg.function([i], c, updates=opt.updates(c))
    step([0])
    opt.lr = 0.0
    step([1])
    np.testing.assert_array_equal(E.get_value().ravel(), [-1.0, 0.0, 0.0])  # dense: same
    opt.lr = S.Constant(0.5)
    step([2])
    # dense momentum: buffers [1,0,0] -> [0.9,1,0] (lr 0: no move) -> [0.81,0.9,1], lr 0.5
    np.testing.assert_allclose(E.get_value().ravel(), [-1.0 - 0.5 * 0.81, -0.5 * 0.9, -0.5],
                               rtol=1e-14)


def test_weight_decay_change_that_would_change_the_rule_raises():
    E = mg.shared(np.zeros((3, 2)), name="E")
    opt = mg.optim.SGD([E], lr=0.1)
    g = mg.RowSparseType("float64", (3, 2)).make_variable("g")
    mg.function([g], updates=opt.updates(grads=[g]))
    with pytest.raises(ValueError, match="shared scalar"):
        opt.weight_decay = 0.1
    assert opt.weight_decay == 0.0
    shared_wd = mg.shared(np.float64(0.0), name="wd")
    opt2 = mg.optim.SGD([mg.shared(np.ones((3, 2)), name="F")], lr=0.1, weight_decay=shared_wd)
    opt2.weight_decay = 0.2  # both may move untouched rows: allowed
    assert opt2.current_weight_decay() == 0.2


def test_current_lr_and_state_dict_resume_continue_the_schedule():
    rng = np.random.default_rng(4)
    V, D = 5, 2
    sched = S.CosineAnnealingLR(0.1, T_max=50)
    grads = [mg.RowSparse(rng.integers(0, V, size=2), rng.normal(size=(2, D)), (V, D))
             for _ in range(40)]

    def fresh():
        P = mg.shared(np.ones((V, D)), name="P")
        return P, mg.optim.Adam([P], lr=sched, sparse="exact")

    P, opt = fresh()
    for g in grads:
        opt.apply(P, g)
    want = P.get_value()
    P, opt = fresh()
    for g in grads[:25]:
        opt.apply(P, g)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.npz")
        mg.save(path, [P], opt)
        P2, opt2 = fresh()
        assert opt2.current_lr() == sched(1)
        mg.load(path, [P2], opt2)
    assert opt2.current_lr() == sched(26)
    assert opt2.state_dict()["hyper"]["lr"]["schedule"] == "CosineAnnealingLR"
    for g in grads[25:]:
        opt2.apply(P2, g)
    assert rel_err(P2.get_value(), want) < 1e-13


BAD_SCHEDULES = [
    (lambda: S.StepLR(float("inf"), 10), ValueError, "lr"),
    (lambda: S.StepLR(0.1, 0), ValueError, "step_size"),
    (lambda: S.ExponentialLR(0.1, float("nan")), ValueError, "gamma"),
    (lambda: S.CosineAnnealingLR(-0.1, 10), ValueError, "lr"),
    (lambda: S.OneCycleLR(0.1, 10, pct_start=1.5), ValueError, "pct_start"),
    (lambda: S.OneCycleLR(0.1, 10, anneal_strategy="exp"), ValueError, "anneal"),
    (lambda: S.LambdaLR(0.1, 3), TypeError, "callable"),
    (lambda: S.LinearWarmup(0.1, 10, start_factor=2), ValueError, "start_factor"),
]


@pytest.mark.parametrize("make,err,words", BAD_SCHEDULES)
def test_invalid_schedule_arguments_refused(make, err, words):
    with pytest.raises(err, match=words):
        make()


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0, "0.1"])
def test_invalid_lr_refused_naming_it(bad):
    E = mg.shared(np.zeros((3, 2)), name="E")
    for cls in (mg.optim.SGD, mg.optim.Momentum, mg.optim.Adam, mg.optim.RMSprop,
                mg.optim.Adagrad):
        with pytest.raises((ValueError, TypeError), match="lr"):
            cls([E], lr=bad)
        with pytest.raises((ValueError, TypeError), match="weight_decay"):
            cls([E], lr=0.1, weight_decay=bad)


@pytest.mark.parametrize("kw,words", [(dict(betas=(0.9, float("inf"))), "betas"),
                                      (dict(eps=float("inf")), "eps"),
                                      (dict(eps=float("nan")), "eps")])
def test_invalid_adam_hyperparameters_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        mg.optim.Adam([mg.shared(np.zeros((3, 2)), name="E")], lr=0.1, **kw)


def test_bad_value_at_run_time_raises_before_any_write(backend):
    """A shared lr set to inf, or a LambdaLR returning nan, stops the step before any
    table moves (the value is read in the safe phase)."""
    V, D = 4, 2
    E = mg.shared(np.ones((V, D)), name="E")
    lr = mg.shared(np.float64(0.1), name="lr")
    opt = mg.optim.Adam([E], lr=lr, sparse="exact")
    g = mg.RowSparseType("float64", (V, D)).make_variable("g")
    step = mg.function([g], updates=opt.updates(grads=[g]), backend=backend)
    rs = mg.RowSparse([1], np.ones((1, D)), (V, D))
    step(rs)
    before = [E.get_value(), *[v.get_value() for v in opt.state[0].values()]]
    lr.set_value(np.float64(np.inf))
    with pytest.raises(ValueError, match="lr must be finite"):
        step(rs)
    after = [E.get_value(), *[v.get_value() for v in opt.state[0].values()]]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert int(opt.steps[0].get_value()) == 1
    opt.lr = S.LambdaLR(0.1, lambda s: float("nan"))
    with pytest.raises(ValueError, match="LambdaLR"):
        opt.apply(E, rs)


# --- against torch.optim.lr_scheduler ------------------------------------------------------


def _torch_scheduler(torch, name, opt, n):
    sch = torch.optim.lr_scheduler
    if name == "Constant":
        return sch.LambdaLR(opt, lambda e: 1.0)
    if name == "StepLR":
        return sch.StepLR(opt, step_size=max(1, n // 7), gamma=0.5)
    if name == "MultiStepLR":
        return sch.MultiStepLR(opt, [3, n // 3, 2 * n // 3], gamma=0.3)
    if name == "ExponentialLR":
        return sch.ExponentialLR(opt, gamma=1.0 - 3.0 / n)
    if name == "CosineAnnealingLR":
        return sch.CosineAnnealingLR(opt, T_max=2 * n // 5, eta_min=1e-4)
    if name == "CosineAnnealingWarmRestarts":
        return sch.CosineAnnealingWarmRestarts(opt, T_0=n // 20, T_mult=2, eta_min=1e-4)
    if name == "PolynomialLR":
        return sch.PolynomialLR(opt, total_iters=4 * n // 5, power=2.0)
    if name == "OneCycleLR":
        return sch.OneCycleLR(opt, max_lr=0.05, total_steps=n + 5, cycle_momentum=False)
    if name == "LinearWarmup":
        warm = sch.LinearLR(opt, start_factor=1e-12, end_factor=1.0, total_iters=n // 10)
        cos = sch.CosineAnnealingLR(opt, T_max=n)
        return sch.SequentialLR(opt, [warm, cos], milestones=[n // 10])
    if name == "LambdaLR":
        return sch.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.002 * step))
    return None  # InverseSqrt: no torch counterpart


@pytest.mark.parametrize("sched", NAMES)
def test_schedule_values_match_torch(sched):
    torch = pytest.importorskip("torch", reason="torch is an optional reference")
    n = 300
    ours = schedules(n)[sched]
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    topt = torch.optim.SGD([w], lr=0.05)
    tsch = _torch_scheduler(torch, sched, topt, n)
    if tsch is None:
        pytest.skip(f"{sched} has no torch.optim.lr_scheduler counterpart")
    for t in range(1, n + 1):
        want = topt.param_groups[0]["lr"]  # the lr of the t-th optimizer.step()
        got = ours(t)
        # LinearWarmup starts at exactly 0; torch's LinearLR needs start_factor > 0
        assert abs(got - want) <= 1e-12 * 0.05 + 1e-13, (t, got, want)
        w.grad = torch.zeros_like(w)
        topt.step()
        tsch.step()


def test_inverse_sqrt_formula():
    s = S.InverseSqrt(1.0, warmup_steps=4)
    assert [s(t) for t in (1, 2, 4, 16)] == [0.25, 0.5, 1.0, 0.5]
    assert S.InverseSqrt(1.0, 0)(4) == 0.5


@pytest.mark.parametrize("name,hp", [r for r in RULES if r[0] != "SGD"][:1] + [
    ("Adam", dict(betas=(0.9, 0.99))), ("AdamW", dict(weight_decay=0.1)),
    ("RMSprop", dict(momentum=0.5, centered=True))])
def test_dense_optimizer_with_scheduler_matches_torch(name, hp):
    torch = pytest.importorskip("torch", reason="torch is an optional reference")
    n, rng = 200, np.random.default_rng(5)
    p0 = rng.normal(size=(6, 3))
    P = mg.shared(p0.copy(), name="P")
    ours = mg.optim.__dict__[name]([P], lr=S.CosineAnnealingLR(0.05, T_max=n // 2), **hp)
    w = torch.nn.Parameter(torch.tensor(p0))
    thp = dict(hp)
    if name == "Momentum":
        topt = torch.optim.SGD([w], lr=0.05, **thp)
    elif name == "RMSprop":
        thp["alpha"] = thp.pop("rho", 0.9)
        topt = torch.optim.RMSprop([w], lr=0.05, eps=1e-8, **thp)
    else:
        topt = getattr(torch.optim, name)([w], lr=0.05, **thp)
    tsch = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=n // 2)
    for _ in range(n):
        g = rng.normal(size=p0.shape)
        ours.apply(P, g)
        w.grad = torch.tensor(g)
        topt.step()
        tsch.step()
    assert rel_err(P.get_value(), w.detach().numpy()) < 1e-10


def test_docs_worked_example_sgd_weight_decay_under_exponential_lr():
    """docs/optimizers.md: a row skipping steps 2 and 3 gets (1 - 0.025)(1 - 0.0125)."""
    P = mg.shared(np.ones((2, 1)), name="P")
    opt = mg.optim.SGD([P], lr=S.ExponentialLR(0.5, gamma=0.5), weight_decay=0.1)
    for t in range(1, 4):
        opt.apply(P, mg.RowSparse([0] if t == 1 else [1], np.zeros((1, 1)), (2, 1)))
    assert opt.current_lr() == 0.0625
    assert P.value[0, 0] == 0.95  # stored: step 1 only (1 - 0.5*0.1)
    np.testing.assert_allclose(P.get_value()[0, 0], 0.95 * 0.975 * 0.9875, rtol=1e-15)
