"""The destructive phase in one compiled call (``minigrad/update_driver.py``).

The driver must give, bitwise, what the checked per-node path gives (the ``vm`` linker
calls every kernel through its checks), and match the NumPy reference backend: two
row-sparse tables, a dense head, a rank-1 bias and a scalar in one step, lazy and
dense-semantics (exact) updates, nan_guard on and off. A non-finite value in any entry,
or a bad index, leaves every table, state, ``last`` and step counter bitwise unchanged;
a dense exact table with a lagging row goes through the catch-up path. Tiny float32 /
float64 tables: the driver is compiled once per dtype for the whole suite.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the one-call driver is Numba code")

from test_optim_row_guard import _raw  # noqa: E402  (tests/ is on sys.path)

import minigrad as mg  # noqa: E402
from kernels.reference.history import StepHistory  # noqa: E402


def _step(name="Adam", kw=None, backend="numba", linker="generated", nan_guard=None,
          dtype="float32"):
    """An embedding-shaped step: tables ``E``, ``M`` (row-sparse), head ``W``, bias ``c``
    and a scalar ``s`` (dense gradients), one optimizer."""
    kw = dict(sparse="lazy") if kw is None else kw
    rng = np.random.default_rng(11)
    E = mg.shared(rng.normal(size=(40, 3)).astype(dtype), name="E")
    M = mg.shared(rng.normal(size=(40, 3)).astype(dtype), name="M")
    W = mg.shared(rng.normal(size=(3, 2)).astype(dtype), name="W")
    c = mg.shared(rng.normal(size=(2,)).astype(dtype), name="c")
    s = mg.shared(np.asarray(0.5, dtype=dtype), name="s")
    i, z = mg.ivector("i"), mg.vector("z", dtype)
    r = E[i] * M[i]
    cost = (((r @ W) + c) ** 2).sum() * s + (c * z).sum() + s * s
    opt = getattr(mg.optim, name)([E, M, W, c, s], 0.05, **kw)
    f = mg.function([i, z], cost, updates=opt.updates(cost), nan_guard=nan_guard,
                    mode=mg.Mode(backend=backend, linker=linker))
    return f, opt


def _batches(n_steps=5, dtype="float32"):
    rng = np.random.default_rng(2)
    return [(rng.choice(40 if k % 2 else 9, 6).astype(np.int32),
             rng.normal(size=2).astype(dtype)) for k in range(n_steps)]


def _tables(opt):
    return [(str(v), np.array(v.get_value())) for ps in opt.param_states
            for v in ps.table_vars(ps.last is not None)]


CASES = [("Adam", dict(sparse="lazy")),
         ("AdamW", dict(sparse="lazy", weight_decay=0.05)),
         ("Momentum", dict(momentum=0.9, nesterov=True, sparse="lazy", weight_decay=0.01)),
         ("SGD", dict(weight_decay=0.01, sparse="lazy"))]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("nan_guard", [None, False], ids=["guarded", "unguarded"])
def test_the_driver_is_bitwise_the_checked_path_and_matches_the_reference(name, kw, nan_guard):
    fd, od = _step(name, kw, nan_guard=nan_guard)
    fc, oc = _step(name, kw, linker="vm", nan_guard=nan_guard)
    fr, orf = _step(name, kw, backend="numpy", nan_guard=nan_guard)
    assert fd.update_driver is not None and len(fd.update_driver.entries) == 5
    assert fc.update_driver is None and fr.update_driver is None
    for ids, z in _batches():
        np.testing.assert_array_equal(fd(ids, z), fc(ids, z))
        fr(ids, z)
    for (label, d), (_, c), (_, r) in zip(_tables(od), _tables(oc), _tables(orf)):
        np.testing.assert_array_equal(d, c, err_msg=label)
        np.testing.assert_allclose(d, r, rtol=2e-5, atol=1e-6, err_msg=label)
    for ps_d, ps_c in zip(od.param_states, oc.param_states):
        assert int(ps_d.step.value) == int(ps_c.step.value) == 5
        if ps_d.last is not None:  # a dense exact table: every row at the last step
            assert (ps_d.last.value == 5).all() and not ps_d.pending
            assert ps_d.history.n == ps_d.history.base == 5


def test_a_non_finite_value_in_a_later_entry_restores_every_entry_bitwise():
    f, opt = _step()
    for ids, z in _batches(3):
        f(ids, z)
    before = _raw(opt)
    z = np.array([1.0, np.inf], np.float32)  # reaches c's gradient only (c * z)
    with pytest.raises(FloatingPointError, match=r"update of c \(row 1\)"):
        f(np.array([1, 2, 3], np.int32), z)
    after = _raw(opt)
    for (label, a), (_, b) in zip(before, after):
        np.testing.assert_array_equal(b, a, err_msg=label)  # E, M, W written, then undone
    with pytest.raises(IndexError):  # an id out of range: refused before anything runs
        f(np.array([1, 40], np.int32), np.ones(2, np.float32))
    for (label, a), (_, b) in zip(before, _raw(opt)):
        np.testing.assert_array_equal(b, a, err_msg=label)
    f(np.array([1, 2, 3], np.int32), np.ones(2, np.float32))  # the step is retried cleanly
    assert int(opt.param_states[0].step.value) == 4


def test_on_nan_skip_warns_and_changes_nothing_and_an_unguarded_driver_writes_the_nan():
    z = np.array([1.0, np.inf], np.float32)
    f, opt = _step()
    f.on_nan = "skip"
    f(np.array([1, 2], np.int32), np.ones(2, np.float32))
    before = _raw(opt)
    with pytest.warns(RuntimeWarning, match=r"update of c \(row 1\).*step skipped"):
        assert f(np.array([1, 2], np.int32), z) is None
    for (label, a), (_, b) in zip(before, _raw(opt)):
        np.testing.assert_array_equal(b, a, err_msg=label)
    g, opt = _step(nan_guard=False)
    assert g.update_driver is not None
    g(np.array([1, 2], np.int32), z)  # nan_guard=False checks nothing: the inf lands
    assert not np.isfinite(opt.param_states[3].param.get_value()).all()
    assert int(opt.param_states[3].step.value) == 1


def test_a_lagging_row_of_a_dense_exact_table_takes_the_catch_up_path():
    """``W`` stepped with a dense gradient by one function (the driver) and row-sparsely
    in exact mode by another (rows lag). The dense step is given its gradient (so no dense
    read of ``W`` catches the rows up in the safe phase): the driver finds the lagging
    rows before writing and hands the step to the per-node path, which catches them up;
    bitwise the checked path's."""
    def build(linker):
        rng = np.random.default_rng(5)
        W = mg.shared(rng.normal(size=(6, 3)), name="W")
        x, i = mg.matrix("x"), mg.ivector("i")
        opt = mg.optim.Adam([W], 0.05, sparse="exact")
        sparse_cost = (W[i] ** 2).sum()
        mode = mg.Mode(backend="numba", linker=linker)
        return (opt, mg.function([x], x.sum(), updates=opt.updates(grads=[x]), mode=mode),
                mg.function([i], sparse_cost, updates=opt.updates(sparse_cost), mode=mode))

    (od, dense_d, sparse_d), (oc, dense_c, sparse_c) = build("generated"), build("vm")
    assert dense_d.update_driver is not None and sparse_d.update_driver is None
    fallbacks = []
    real = dense_d.update_driver.fallback_guarded
    dense_d.update_driver.fallback_guarded = lambda *a: fallbacks.append(1) or real(*a)
    x = np.linspace(0.5, 1.5, 18).reshape(6, 3)
    for dense_f, sparse_f in ((dense_d, sparse_d), (dense_c, sparse_c)):
        dense_f(x)
        sparse_f(np.array([1, 4], np.int32))  # rows 0, 2, 3, 5 now lag
        sparse_f(np.array([4], np.int32))
        dense_f(x)  # catches them up (per node), then steps every row
        dense_f(x)  # nothing lags: the driver again
    assert fallbacks == [1]
    for (label, d), (_, c) in zip(_tables(od), _tables(oc)):
        np.testing.assert_array_equal(d, c, err_msg=label)


def test_restart_at_is_a_restart_keeping_the_steps_values():
    fast, slow = StepHistory(), StepHistory()
    fast.restart(3)
    slow.restart(3)
    fast.restart_at(4, 0.1, 0.01)  # nothing recorded since the restart: O(1)
    slow.restart(4)
    slow.lr[0], slow.wd[0] = 0.1, 0.01
    for h in (fast, slow):
        assert (h.n, h.base, h.at(4), h.lr_max) == (4, 4, (0.1, 0.01), 0.0)
        h.record(5, 0.2, 0.0)
    np.testing.assert_array_equal(fast.lr, slow.lr)
    fast.restart_at(6, 0.3, 0.0)  # steps recorded: a full restart
    assert (fast.n, fast.base, fast.at(6), fast.lr_max) == (6, 6, (0.3, 0.0), 0.0)


def test_what_the_driver_does_not_cover_keeps_the_per_node_path():
    assert _step("Adam", dict(sparse="lazy", amsgrad=True))[0].update_driver is None
    assert _step("Adam", dict(sparse="exact"))[0].update_driver is None  # sparse exact
    assert _step("Adagrad", dict())[0].update_driver is None
    assert _step(backend="numpy")[0].update_driver is None
    assert _step(linker="vm")[0].update_driver is None
    rng = np.random.default_rng(0)  # two dtypes in one step: not one tuple of tables
    A = mg.shared(rng.normal(size=(4, 2)).astype("float32"), name="A")
    B = mg.shared(rng.normal(size=(4, 2)), name="B")
    cost = (A * A).sum() + (B * B).sum()
    f = mg.function([], cost, updates=mg.optim.SGD([A, B], 0.1).updates(cost),
                    backend="numba")
    assert f.update_driver is None


def test_step_rows_never_leaves_a_typing_error_after_a_write():
    """The driver calls each entry's loop in turn. Argument types are fixed where they are
    made (checked once there), but should a loop refuse its arguments after an earlier
    entry wrote, the error is a RuntimeError: never the typing error the caller answers
    by running the per-node path, which would apply those entries twice. Refused at the
    first entry, nothing is written and the typing error comes through."""
    from numba.core.errors import TypingError

    from kernels.cpu import update_driver as drv

    rng = np.random.default_rng(5)
    P0 = rng.normal(size=(6, 3)).astype(np.float32)
    M0, V0 = np.zeros_like(P0), np.zeros_like(P0)
    none = np.zeros((0, 3), np.float32)
    idx = (np.array([0, 2], np.int64), np.array([1], np.int64), np.zeros(0, np.int64))
    ints = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]], np.int64)
    fl = np.array([[0.1, 0.0, 0.9, 0.999, 1e-8, 0.0]] * 2 + [[0.0] * 6])
    no_last, st = np.zeros(1, np.int64), np.zeros(2, np.int64)

    def call(kinds, G):
        return drv.step_rows(np.array(kinds), (P0, P0, none), (M0, M0, none), (V0, V0, none),
                             (no_last,) * 3, idx, G, ints, fl, False, (none,) * 3,
                             (none,) * 3, (none,) * 3, (idx[2],) * 3, (st,) * 3)

    good, bad = np.ones((2, 3), np.float32), None  # (no loop takes None for a gradient)
    before = [a.copy() for a in (P0, M0, V0)]
    with pytest.raises(TypingError):
        call([drv.PAD, drv.ADAM, drv.PAD], (none, bad, none))
    for a, b in zip(before, (P0, M0, V0)):
        assert np.array_equal(a, b)
    with pytest.raises(RuntimeError, match=r"entry 1 failed after entries \[0\]"):
        call([drv.ADAM, drv.ADAM, drv.PAD], (good, bad, none))
