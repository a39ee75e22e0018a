"""The fused step (``minigrad/fused_step.py``) with exact-mode entries and ``nan_guard=True``.

An exact-mode table updated on every row (a dense gradient: a head ``W``, a bias ``c``)
is read through ``CatchUpAll`` and updated by the driver's dense exact loop; in the fused
step both are part of the one compiled call, which checks before writing anything that
no row lags. The step must be bitwise the two-phase path's and equal the dense optimizer
(torch's, 1e-12 in float64); a lagging row hands the call to the two-phase path (which
catches it up); a non-finite value (nan_guard's check of outputs and gradients, or an
update) leaves tables, states, ``last``, the step history and the counters bitwise
unchanged. One tiny float64 model (a linear map and a bias, squared error), one compile
per (rule, nan_guard) case.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("numba", reason="the fused step is Numba code")

import minigrad as mg  # noqa: E402

JIT = mg.Mode(backend="numba", linker="jit")
RULES = {"Adam": dict(sparse="exact"), "Momentum": dict(momentum=0.9, sparse="exact")}
LR = 0.05


def _linear(mode, rule="Adam", nan_guard=None, on_nan="raise"):
    """``((x @ W + c - z) ** 2).mean()`` with ``rule`` in exact mode on ``W`` and ``c``."""
    rng = np.random.default_rng(5)
    W = mg.shared(rng.normal(size=(4, 3)), name="W")
    c = mg.shared(rng.normal(size=(3,)), name="c")
    x, z = mg.matrix("x"), mg.matrix("z")
    cost = (((x @ W + c) - z) ** 2).mean()
    opt = getattr(mg.optim, rule)([W, c], LR, **RULES[rule])
    fn = mg.function([x, z], cost, updates=opt.updates(cost), mode=mode, nan_guard=nan_guard,
                     on_nan=on_nan)
    return fn, opt


def _batches(n=4):
    rng = np.random.default_rng(1)
    return [(rng.normal(size=(6, 4)), rng.normal(size=(6, 3))) for _ in range(n)]


def _everything(opt, history=True):
    """Every table (parameter, states, ``last``), step counter and history length, read
    without flushing (``get_value`` would catch lagging rows up)."""
    out = [v._value.copy() for ps in opt.param_states for v in ps.table_vars(True)]
    out += [np.array(ps.step._value) for ps in opt.param_states]
    if history:
        out += [np.array([ps.history.n, ps.history.base]) for ps in opt.param_states]
    return out + [np.array(opt.t._value)]


def _assert_bitwise(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


@pytest.mark.parametrize("rule,nan_guard", [("Adam", None), ("Adam", True),
                                            ("Momentum", False)])
def test_exact_dense_step_is_one_call_bitwise_the_two_phase_path(rule, nan_guard):
    fn, opt = _linear(JIT, rule, nan_guard)
    two, two_opt = _linear(JIT.excluding("fused_step"), rule, nan_guard)
    assert fn._fused_step is not None and two._fused_step is None
    assert "J.table_lags(" in fn._fused_step.source
    for batch in _batches():
        assert float(fn(*batch)) == float(two(*batch))
    assert fn._fused_step.fallbacks == [] and fn._fused_step.dispatcher.overloads
    _assert_bitwise(_everything(opt), _everything(two_opt))
    for ps in opt.param_states:  # every row at the last step, the history restarted there
        assert (ps.last.value == 4).all() and not ps.pending
        assert ps.history.n == ps.history.base == 4


def test_exact_dense_steps_equal_torch_dense_optimizers():
    torch = pytest.importorskip("torch", reason="torch's dense Adam and SGD are the oracle")
    for rule in RULES:
        fn, opt = _linear(JIT, rule)
        W, c = (torch.tensor(np.array(p.get_value()), requires_grad=True) for p in opt.params)
        ref = (torch.optim.Adam([W, c], lr=LR) if rule == "Adam"
               else torch.optim.SGD([W, c], lr=LR, momentum=0.9))
        for x, z in _batches():
            loss = fn(x, z)
            ref.zero_grad()
            want = (((torch.from_numpy(x) @ W + c) - torch.from_numpy(z)) ** 2).mean()
            want.backward()
            ref.step()
            assert float(loss) == pytest.approx(want.item(), rel=1e-12)
        for p, t in zip(opt.params, (W, c)):
            np.testing.assert_allclose(p.get_value(), t.detach().numpy(), rtol=1e-12,
                                       atol=1e-14)


def test_a_lagging_row_hands_the_step_to_the_two_phase_path():
    """``W`` also stepped row-sparsely (exact mode) by another function: its rows lag at
    the next dense step, which the fused call gives back (nothing written) to the two-phase
    path; that catches them up. Bitwise the ``vm`` linker's, fused again once nothing lags;
    a failure while rows lag leaves everything as it was (the catch-up undone too)."""
    def build(mode):
        fn, opt = _linear(mode)
        W, c = opt.params
        i = mg.ivector("i")
        sparse_cost = (W[i] ** 2).sum() + (c ** 2).sum()
        return fn, opt, mg.function([i], sparse_cost, updates=opt.updates(sparse_cost),
                                    mode=mode)

    (fn, opt, sparse), (ref, ref_opt, ref_sparse) = build(JIT), build(
        mg.Mode(backend="numba", linker="vm"))
    phases = []
    real = fn._run_phases
    fn._run_phases = lambda storage: phases.append(1) or real(storage)
    batches = _batches(3)
    for f, s in ((fn, sparse), (ref, ref_sparse)):
        f(*batches[0])
        s(np.array([1, 3], np.int32))  # rows 0 and 2 of W now lag
        o = opt if f is fn else ref_opt
        before = _everything(o, history=False)  # (the per-node path records the step's lr
        x, z = batches[1]  # before its kernels run: a retried step rewrites it)
        with pytest.raises(FloatingPointError, match="update of W"):
            f(x * 1e200, z)  # rows caught up, then a non-finite update: all undone
        _assert_bitwise(_everything(o, history=False), before)
        f(*batches[1])  # catches them up, then steps every row
        f(*batches[2])  # nothing lags: one call again
    assert phases == [1, 1]  # the failed call and the catching-up call
    # (the vm linker records every step in the history, the one call restarts it)
    _assert_bitwise(_everything(opt, history=False), _everything(ref_opt, history=False))


def test_non_finite_update_of_an_exact_entry_is_undone_and_named():
    fn, opt = _linear(JIT)
    (x, z), *rest = _batches()
    fn(x, z)
    before = _everything(opt)
    bad = z.copy()
    bad[:, 2] = 1e200  # reaches c's last column (and W's): the square overflows
    with pytest.raises(FloatingPointError, match="update of W"):
        fn(x, bad)
    _assert_bitwise(_everything(opt), before)
    fn(*rest[0])  # and the next call steps from there
    assert int(opt.param_states[1].step.get_value()) == 2


@pytest.mark.parametrize("on_nan", ["raise", "skip"])
def test_nan_guard_true_checks_outputs_and_gradients_in_the_call(on_nan):
    fn, opt = _linear(JIT, nan_guard=True, on_nan=on_nan)
    (x, z), *_ = _batches()
    fn(x, z)
    before = _everything(opt)
    x = x.copy()
    x[0, 0] = np.nan
    if on_nan == "raise":
        with pytest.raises(FloatingPointError, match="non-finite value .* in an output"):
            fn(x, z)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert fn(x, z) is None
        assert any("in an output" in str(w.message) and "step skipped" in str(w.message)
                   for w in caught)
    assert fn._fused_step.fallbacks == []
    _assert_bitwise(_everything(opt), before)
