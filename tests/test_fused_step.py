"""A training step as one compiled call (``minigrad/fused_step.py``).

The fused step must give what the NumPy reference backend gives (loss, parameters, step
counters after several steps), with nan_guard on and off; a bad batch or a non-finite
update leaves every parameter and step counter bitwise unchanged; a changed ``lr`` (a
float, a shared scalar, a schedule) takes effect at the next call. Two small graphs (an FM
with SGD, an embedding with lazy Adam): each is one Numba compile for the whole module,
shared by every test through module fixtures and in-process module reuse.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("numba", reason="the fused step is Numba code")

import minigrad as mg  # noqa: E402

JIT = mg.Mode(backend="numba", linker="jit")
REF = mg.Mode(backend="numpy")
N_FEATURES, K = 30, 4


def _fm(mode, lr=0.05, nan_guard=None, on_nan="raise"):
    model = mg.models.FactorizationMachine(N_FEATURES, K, seed=3)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = model.cost(X, y)
    opt = mg.optim.SGD(model.params, lr)
    fn = mg.function([X, y], cost, updates=opt.updates(cost), mode=mode, nan_guard=nan_guard,
                     on_nan=on_nan)
    return fn, model, opt


def _batches(n=5):
    rng = np.random.default_rng(4)
    out = []
    for _ in range(n):
        X = sp.random(8, N_FEATURES, density=0.2, format="csr", random_state=rng,
                      data_rvs=lambda m: rng.normal(size=m))
        out.append((X, (rng.random(8) > 0.5).astype(np.float64)))
    return out


def _state(model, opt):
    return [np.array(p.get_value()) for p in model.params] + [
        np.array(ps.step.get_value()) for ps in opt.param_states] + [np.array(opt.t.get_value())]


@pytest.fixture(scope="module")
def fm():
    """The FM step on the jit linker, its first call made (compiled or loaded once)."""
    fn, model, opt = _fm(JIT)
    assert fn._fused_step is not None, "the FM SGD step should be one compiled call"
    fn(*_batches(1)[0])
    return fn, model, opt


def _same_as_reference(make_pair, steps, change=None):
    (fn, model, opt), (ref, rmodel, ropt) = make_pair()
    for k, batch in enumerate(steps):
        if change is not None:
            change(k, opt, ropt)
        got, want = fn(*batch), ref(*batch)
        assert float(got) == pytest.approx(float(want), rel=1e-12, abs=1e-14)
    for a, b in zip(_state(model, opt), _state(rmodel, ropt)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        assert a.dtype == b.dtype
    return fn


@pytest.mark.parametrize("nan_guard", [None, False, True])
def test_fm_step_matches_the_reference(fm, nan_guard):
    fn = _same_as_reference(lambda: (_fm(JIT, nan_guard=nan_guard), _fm(REF)), _batches())
    assert fn._fused_step is not None and fn._fused_step.fallbacks == []
    assert fn._fused_step.dispatcher.overloads, "the fused step did not run compiled"


def _set_lr(value_of):
    def change(k, opt, ropt):
        opt.lr, ropt.lr = value_of(k), value_of(k)
    return change


def test_lr_changed_between_calls_takes_effect(fm):
    _same_as_reference(lambda: (_fm(JIT), _fm(REF)), _batches(),
                       change=_set_lr(lambda k: 0.05 * (k + 1)))


def test_shared_lr_and_schedule_are_read_each_call(fm):
    lr, rlr = mg.shared(np.float64(0.05), name="lr"), mg.shared(np.float64(0.05), name="rlr")

    def change(k, opt, ropt):
        lr.set_value(np.float64(0.01 * (k + 1)))
        rlr.set_value(np.float64(0.01 * (k + 1)))

    _same_as_reference(lambda: (_fm(JIT, lr=lr), _fm(REF, lr=rlr)), _batches(), change)
    sched = mg.optim.schedules.StepLR(0.1, step_size=2, gamma=0.5)
    _same_as_reference(lambda: (_fm(JIT, lr=sched), _fm(REF, lr=sched)), _batches())


def test_bad_column_changes_nothing(fm):
    fn, model, opt = fm
    before = _state(model, opt)
    X, y = _batches(1)[0]
    bad = sp.csr_matrix((X.data, X.indices.copy(), X.indptr), shape=(8, N_FEATURES + 5))
    bad.indices[-1] = N_FEATURES + 2
    with pytest.raises((IndexError, ValueError)):
        fn(bad, y)
    for a, b in zip(_state(model, opt), before):
        assert a.tobytes() == b.tobytes()
    fn(X, y)  # and the next good call runs compiled again
    assert fn._fused_step.enabled


def test_non_finite_update_is_undone_and_named(fm):
    fn, model, opt = fm
    before = _state(model, opt)
    X, y = _batches(1)[0]
    X = X.copy()
    X.data[-1] = 1e200  # the square overflows: the row of that column is not finite
    with pytest.raises(FloatingPointError, match="update of fm_"):
        fn(X, y)
    for a, b in zip(_state(model, opt), before):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("nan_guard", [None, True])
def test_overflow_only_in_the_update_is_undone_in_the_call(nan_guard):
    """Finite outputs and gradients (nan_guard=True's check passes), but an lr so large
    that ``p - lr * g`` overflows to inf where ``|g| > 1``: found by the update's own
    guard inside the one call, which puts back every row written (``fm_b``, then
    ``fm_w``'s rows), bitwise."""
    fn, model, opt = _fm(JIT, nan_guard=nan_guard)
    X, y = _batches(1)[0]
    fn(X, y)
    before = _state(model, opt)
    opt.lr = float(np.finfo(np.float64).max)
    big = X.copy()
    big.data *= 1e3  # gradients above 1, every value finite: lr * g overflows
    with pytest.raises(FloatingPointError, match="update of fm_"):
        fn(big, y)
    assert fn._fused_step.fallbacks == []
    for a, b in zip(_state(model, opt), before):
        assert a.tobytes() == b.tobytes()
    opt.lr = 0.05  # and the next call steps as before
    fn(X, y)
    assert not all(a.tobytes() == b.tobytes() for a, b in zip(_state(model, opt), before))


def test_nan_guard_true_refuses_a_non_finite_output_in_the_call():
    """nan_guard=True checks the outputs and gradients inside the one call, before any
    write: a NaN label (it reaches the loss, not every update) changes nothing."""
    fn, model, opt = _fm(JIT, nan_guard=True)
    X, y = _batches(1)[0]
    fn(X, y)
    before = _state(model, opt)
    y = y.copy()
    y[0] = np.nan
    with pytest.raises(FloatingPointError, match="in an output or update"):
        fn(X, y)
    assert fn._fused_step.fallbacks == []
    for a, b in zip(_state(model, opt), before):
        assert a.tobytes() == b.tobytes()


def test_non_finite_update_skipped_with_a_warning():
    fn, model, opt = _fm(JIT, on_nan="skip")
    assert fn._fused_step is not None
    X, y = _batches(1)[0]
    fn(X, y)
    before = _state(model, opt)
    X = X.copy()
    X.data[0] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fn(X, y) is None
    assert any("step skipped" in str(w.message) for w in caught)
    for a, b in zip(_state(model, opt), before):
        assert a.tobytes() == b.tobytes()


def test_not_built_where_not_covered():
    assert _fm(JIT.excluding("fused_step"))[0]._fused_step is None
    assert _fm(mg.Mode(backend="numba"))[0]._fused_step is None  # generated linker
    model = mg.models.FactorizationMachine(N_FEATURES, K, seed=3)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = model.cost(X, y)
    opt = mg.optim.Adam(model.params, 0.01, sparse="exact")
    assert mg.function([X, y], cost, updates=opt.updates(cost), mode=JIT)._fused_step is None


def _two_tables(mode):
    """Two row-sparse tables, one with lazy Adam, one with lazy momentum: both loops of
    the fused step's tail in one compile."""
    rng = np.random.default_rng(5)
    E = mg.shared(rng.normal(size=(20, 3)), name="E")
    F = mg.shared(rng.normal(size=(20, 3)), name="F")
    i, z = mg.lvector("i"), mg.vector("z")
    cost = (((E[i] * F[i]).sum(axis=1) - z) ** 2).mean()
    adam = mg.optim.Adam([E], 0.05, sparse="lazy")
    momentum = mg.optim.Momentum([F], 0.05, momentum=0.9, sparse="lazy")
    # (momentum first: a non-finite Adam update below then undoes both)
    fn = mg.function([i, z], cost, updates=momentum.updates(cost) + adam.updates(cost),
                     mode=mode)
    return fn, [adam, momentum]


def _tables(opts):
    return [np.array(v.get_value()) for opt in opts for ps in opt.param_states
            for v in ps.table_vars(False)] + [np.array(ps.step.get_value())
                                              for opt in opts for ps in opt.param_states]


def test_lazy_adam_and_momentum_match_the_reference():
    rng = np.random.default_rng(6)
    steps = [(rng.integers(0, 20, 7), rng.normal(size=7)) for _ in range(4)]
    fn, opts = _two_tables(JIT)
    ref, ropts = _two_tables(REF)
    assert fn._fused_step is not None
    for batch in steps:
        assert float(fn(*batch)) == pytest.approx(float(ref(*batch)), rel=1e-12)
    assert fn._fused_step.fallbacks == []
    for a, b in zip(_tables(opts), _tables(ropts)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # a token out of range: the reference's error, nothing moves
    before = _tables(opts)
    with pytest.raises(IndexError):
        fn(np.array([0, 25]), np.zeros(2))
    for a, b in zip(_tables(opts), before):
        assert a.tobytes() == b.tobytes()
    # a non-finite value in the second table's update: the first one's rows go back too
    with pytest.raises(FloatingPointError, match="update of E"):
        fn(np.array([1, 2]), np.array([1e200, 0.0]))
    for a, b in zip(_tables(opts), before):
        assert a.tobytes() == b.tobytes()


def test_unsorted_scatter_rows_are_the_sorted_rows_permuted(fm):
    """The fused FM step's scatter kernels leave their rows in order of first appearance:
    the same rows and values as the sorted kernels, and the slot map reset."""
    from kernels.cpu import fused, jit_ops

    assert "J.scatter_grad_any_order(" in fm[0]._fused_step.source
    assert "F._scatter_sums2_any_order(" in fm[0]._fused_step.source  # two products
    X, _ = _batches(1)[0]
    rng = np.random.default_rng(8)
    grad, table = rng.normal(size=(8, 1)), rng.normal(size=(N_FEATURES, K))
    slot = np.full(N_FEATURES, -1, dtype=np.int32)
    factor = np.zeros((1, 1))
    pairs = [(fused._scatter_grad, jit_ops.scatter_grad_any_order,
              (X.indptr, X.indices, X.data, grad, factor, False, 1, slot))]
    datas = np.stack([X.data, X.data ** 2])
    grads = rng.normal(size=(2, 8, K))
    pairs.append((fused._scatter_sums, jit_ops.scatter_sums_any_order,
                  (X.indptr, X.indices, datas, grads, np.array([2.0, 1.0]),
                   np.array([1, 0]), table, slot)))
    for sorted_kernel, any_order, args in pairs:
        rows, values = sorted_kernel(*args)
        got_rows, got_values = any_order(*args)
        assert (slot == -1).all()
        order = np.argsort(got_rows)
        assert np.array_equal(got_rows[order], rows)
        assert got_values[order].tobytes() == values.tobytes()
        first_seen = list(dict.fromkeys(X.indices.tolist()))
        assert got_rows.tolist() == first_seen
