"""``mg.optim.Adamax``: an optimizer added as one file (``minigrad/optim/adamax.py``) whose
row kernel comes from the generic driver (``kernels.rule_drivers.register_rule``).

Checked: dense steps against ``torch.optim.Adamax`` (skipped without torch) and against a
NumPy loop of torch's formula; exact row-sparse mode equal to the dense optimizer under a
schedule with weight decay and rows untouched for hundreds of steps; lazy mode different
(so the exact check can fail); hyperparameters by name; the same kernel on every backend.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg
from kernels import row_kernels
from minigrad.optim import schedules as S

B1, B2, EPS = 0.9, 0.99, 1e-8


def _oracle(p, m, u, g, t, lr, wd):
    """torch.optim.Adamax's step, written out."""
    g = g + wd * p
    m = B1 * m + (1 - B1) * g
    u = np.maximum(B2 * u, np.abs(g) + EPS)
    return p - lr / (1 - B1 ** t) * m / u, m, u


def _touched(t, n):
    """Row 0 every step, row 1 every 5th, row 2 at steps 1-2 and the last; 3.. never."""
    return np.array([0] + ([1] if t % 5 == 0 else []) + ([2] if t <= 2 or t == n else []))


def _run(mode, n=400, V=5, D=3, wd=0.01, backend=None):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(V, D))
    P = mg.shared(p0.copy(), name="P")
    sched = S.CosineAnnealingLR(0.01, T_max=150)
    opt = mg.optim.Adamax([P], lr=sched, betas=(B1, B2), eps=EPS, weight_decay=wd,
                          sparse=mode)
    g = mg.RowSparseType("float64", (V, D)).make_variable("g")
    step = mg.function([g], updates=opt.updates(grads=[g]), backend=backend)
    p, m, u = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, n + 1):
        idx = _touched(t, n)
        vals = rng.normal(size=(len(idx), D))
        lr = opt.current_lr()
        step(mg.RowSparse(idx, vals, (V, D)))
        dense = np.zeros_like(p0)
        dense[idx] = vals
        p, m, u = _oracle(p, m, u, dense, t, lr, wd)
    return P.get_value(), p


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_exact_equals_dense_under_a_schedule(backend):
    got, want = _run("exact", backend=backend)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_lazy_differs_from_dense():
    got, want = _run("lazy", n=60)
    assert np.abs(got - want).max() > 1e-6


def test_dense_steps_match_torch_adamax():
    torch = pytest.importorskip("torch", reason="the comparison with torch.optim.Adamax")
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(4, 3))
    E = mg.shared(p0.copy(), name="E")
    x = mg.matrix("x")
    cost = ((E * x) ** 2).sum()
    opt = mg.optim.Adamax([E], lr=0.02, betas=(B1, B2), eps=EPS, weight_decay=0.05)
    step = mg.function([x], cost, updates=opt.updates(cost))
    tp = torch.nn.Parameter(torch.tensor(p0.copy()))
    topt = torch.optim.Adamax([tp], lr=0.02, betas=(B1, B2), eps=EPS, weight_decay=0.05)
    for _ in range(25):
        xs = rng.normal(size=(4, 3))
        step(xs)
        topt.zero_grad()
        ((tp * torch.tensor(xs)) ** 2).sum().backward()
        topt.step()
    np.testing.assert_allclose(E.get_value(), tp.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_the_kernel_is_registered_on_every_backend_and_takes_hyper_by_name(backend):
    """The NumPy driver serves numpy and cupy; numba gets the compiled loop built from the
    same ``update`` (``kernels.rule_drivers.CompiledRule``, its fallback that driver)."""
    fn = row_kernels._TABLE[("adamax", "numpy")]
    assert row_kernels._TABLE[("adamax", "cupy")] is fn
    assert row_kernels._TABLE[("adamax", "numba")].fallback is fn
    if backend == "numba":
        pytest.importorskip("numba", reason="the compiled loop needs Numba")
        fn = row_kernels._TABLE[("adamax", "numba")]
    P, m, u = np.ones((3, 2)), np.zeros((3, 2)), np.zeros((3, 2))
    idx, g = np.array([1]), np.ones((1, 2))
    with pytest.raises(TypeError, match=r"unknown hyperparameters \['beta3'\]"):
        fn(P, m, u, idx, g, 1, None, lr=0.1, weight_decay=0.0, beta1=B1, beta2=B2, eps=EPS,
           beta3=0.5)
    with pytest.raises(TypeError, match=r"missing \['eps'\]"):
        fn(P, m, u, idx, g, 1, None, lr=0.1, weight_decay=0.0, beta1=B1, beta2=B2)
    fn(P, m, u, idx, g, 1, None, lr=0.1, weight_decay=0.0, beta1=B1, beta2=B2, eps=EPS)
    want = _oracle(np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), 1, 0.1, 0.0)
    np.testing.assert_allclose(P[1], want[0], rtol=1e-15)
    np.testing.assert_array_equal(P[[0, 2]], 1.0)


def test_apply_whose_update_overflows_leaves_everything_unchanged():
    """A finite gradient whose update is not (``wd * p`` overflows): the generic driver's
    guard refuses it, and the table, its state and the step stay bitwise as they were
    (lazy mode: nothing else, no catch-up or flush, touches the huge row)."""
    E = mg.shared(np.ones((4, 2)), name="E")
    opt = mg.optim.Adamax([E], lr=0.1, weight_decay=1e300, sparse="lazy")
    opt.apply(E, mg.RowSparse(np.array([0]), np.ones((1, 2)), (4, 2)))
    E.value[2] = 1e300
    before = [E.get_value().copy()] + [v.get_value().copy() for v in opt.state[0].values()]
    step = int(opt.param_states[0].step.value)
    with pytest.raises(FloatingPointError, match="row 2 is not finite"):
        opt.apply(E, mg.RowSparse(np.array([1, 2]), np.ones((2, 2)), (4, 2)))
    after = [E.get_value()] + [v.get_value() for v in opt.state[0].values()]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    assert int(opt.param_states[0].step.value) == step


def test_save_load_resumes_exactly(tmp_path):
    """mg.save / mg.load of an exact-mode Adamax mid-run (rows lagging, a schedule): the
    resumed run equals the uninterrupted one bitwise."""
    def setup(seed):
        E = mg.shared(np.random.default_rng(seed).normal(size=(8, 2)), name="E")
        opt = mg.optim.Adamax([E], lr=S.ExponentialLR(0.05, gamma=0.97), weight_decay=0.01)
        g = mg.RowSparseType("float64", (8, 2)).make_variable("g")
        return E, opt, mg.function([g], updates=opt.updates(grads=[g]))

    def train(step, rng, n):
        for _ in range(n):
            step(mg.RowSparse(rng.integers(0, 4, 2), rng.normal(size=(2, 2)), (8, 2)))

    E, opt, step = setup(0)
    train(step, np.random.default_rng(1), 12)
    mg.save(tmp_path / "ckpt.npz", [E], opt)
    train(step, np.random.default_rng(2), 9)
    E2, opt2, step2 = setup(5)
    mg.load(tmp_path / "ckpt.npz", [E2], opt2)
    train(step2, np.random.default_rng(2), 9)
    np.testing.assert_array_equal(E2.get_value(), E.get_value())
    for a, b in zip(opt2.state[0].values(), opt.state[0].values()):
        np.testing.assert_array_equal(a.get_value(), b.get_value())
