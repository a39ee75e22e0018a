"""``mg.grad`` structure and ``mg.function``: outputs, updates, aliasing, pruning, rewrites,
and atomic failure on bad input (error type, message, shared values untouched)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from minigrad.graph import Constant

# ----------------------------------------------------------------------------------- grad


def test_disconnected_input_raises_or_zero(backend):
    x, z = mg.vector("x"), mg.matrix("z")
    cost = (x ** 2).sum()
    with pytest.raises(mg.DisconnectedInputError, match="z"):
        mg.grad(cost, [x, z])
    gx, gz = mg.grad(cost, [x, z], disconnected="zero")
    out = mg.function([x, z], [gx, gz], backend=backend)(np.array([1.0, 2.0]), np.ones((2, 3)))
    np.testing.assert_allclose(out[0], [2.0, 4.0])
    np.testing.assert_array_equal(out[1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="disconnected"):
        mg.grad(cost, x, disconnected="ignore")


def test_fan_out_accumulates(backend):
    x = mg.vector("x")
    y = mg.exp(x)
    cost = (y * y).sum() + y.sum() + (x * 3.0).sum()
    g = mg.function([x], mg.grad(cost, x), backend=backend)(np.array([0.0, 1.0]))
    v = np.array([0.0, 1.0])
    np.testing.assert_allclose(g, 2 * np.exp(2 * v) + np.exp(v) + 3)


def test_broadcast_reduction(backend):
    x, b, s = mg.matrix("x"), mg.vector("b"), mg.scalar("s")
    col = mg.matrix("col")
    cost = ((x + b) * s * col).sum()
    grads = mg.grad(cost, [x, b, s, col])
    xv, bv, cv = np.ones((3, 4)), np.arange(4.0), np.arange(3.0).reshape(3, 1)
    gx, gb, gs, gc = mg.function([x, b, s, col], grads, backend=backend)(xv, bv, 2.0, cv)
    assert gx.shape == (3, 4) and gb.shape == (4,) and np.shape(gs) == () and gc.shape == (3, 1)
    np.testing.assert_allclose(gb, 2 * cv.sum() * np.ones(4))
    np.testing.assert_allclose(gs, ((xv + bv) * cv).sum())
    np.testing.assert_allclose(gc, 2 * (xv + bv).sum(axis=1, keepdims=True))


def test_shared_bias_row_broadcast(backend):
    """A (1, D) shared bias has unknown static lengths; its gradient keeps shape (1, D)."""
    b = mg.shared(np.ones((1, 3)), name="b")
    x = mg.matrix("x")
    for cost in [(b + x).sum(), (x + b).sum(), ((b + x) * x).sum()]:
        g = mg.function([x], mg.grad(cost, b), backend=backend)(np.ones((4, 3)))
        assert g.shape == (1, 3)


def test_integer_inputs_get_no_gradient():
    x, i = mg.vector("x"), mg.lvector("i")
    cost = (x[i] * mg.cast(i, "float64")).sum()
    with pytest.raises(TypeError, match="integer"):
        mg.grad(cost, i)
    with pytest.raises(TypeError, match="integer"):
        mg.grad(cost, [x, mg.ivector("j")])
    with pytest.raises(TypeError, match="scalar"):
        mg.grad(x * 2.0, x)
    assert isinstance(mg.grad(cost, x).type, mg.RowSparseType)


def test_grad_structure():
    x, y = mg.vector("x"), mg.vector("y")
    cost = (x * y).sum()
    single = mg.grad(cost, x)
    assert isinstance(single, mg.Variable)
    as_list = mg.grad(cost, [x])
    assert isinstance(as_list, list) and len(as_list) == 1
    pair = mg.grad(cost, (x, y))
    assert isinstance(pair, list) and len(pair) == 2
    assert pair[0].type == x.type or pair[0].ndim == 1


# ------------------------------------------------------------------------------- function


def test_outputs_structure(backend):
    x = mg.vector("x")
    v = np.array([1.0, 2.0])
    single = mg.function([x], x * 2.0, backend=backend)(v)
    assert isinstance(single, np.ndarray)
    lst = mg.function([x], [x * 2.0], backend=backend)(v)
    assert isinstance(lst, list) and len(lst) == 1
    two = mg.function([x], [x * 2.0, x.sum()], backend=backend)(v)
    assert len(two) == 2 and float(two[1]) == 3.0
    assert mg.function([x], [], backend=backend)(v) in (None, [])


def test_updates_use_old_values_swap(backend):
    a = mg.shared(np.array([1.0, 2.0]), name="a")
    b = mg.shared(np.array([3.0, 4.0]), name="b")
    f = mg.function([], [a, b], updates=[(a, b), (b, a)], backend=backend)
    out = f()
    np.testing.assert_array_equal(out[0], [1.0, 2.0])  # outputs see the old values
    np.testing.assert_array_equal(a.get_value(), [3.0, 4.0])
    np.testing.assert_array_equal(b.get_value(), [1.0, 2.0])
    f()
    np.testing.assert_array_equal(a.get_value(), [1.0, 2.0])
    c = mg.shared(np.array(1.0), name="c")
    g = mg.function([], c * 1.0, updates=[(c, c + 1.0), (a, a * c)], backend=backend)
    assert float(g()) == 1.0 and float(c.get_value()) == 2.0
    np.testing.assert_array_equal(a.get_value(), [1.0, 2.0])  # multiplied by the old c = 1


def test_update_rejects_bad_targets():
    a = mg.shared(np.zeros(2), name="a")
    with pytest.raises(TypeError, match="shared"):
        mg.function([], [], updates=[(mg.vector(), a)])
    with pytest.raises(TypeError, match="rank"):
        mg.function([], [], updates=[(a, mg.matrix())])
    with pytest.raises(ValueError, match="more than once"):
        mg.function([], [], updates=[(a, a), (a, a * 2.0)])


def test_outputs_never_alias(backend):
    a = mg.shared(np.array([1.0, 2.0]), name="a")
    b = mg.shared(np.array([0.0, 0.0]), name="b")
    x = mg.vector("x")
    v = np.array([5.0, 6.0])
    cases = [
        mg.function([x], [x, a, a.T, a[:], a.reshape((2,)), a * 1.0], backend=backend),
        mg.function([x], [a * 2.0, a * 2.0], backend=backend),
    ]
    for f in cases:
        outs = f(v)
        for o in outs:
            o[...] = -7.0
        np.testing.assert_array_equal(v, [5.0, 6.0])
        np.testing.assert_array_equal(a.get_value(), [1.0, 2.0])
        again = f(v)
        assert not np.any(again[-1] == -7.0)
    # an output equal to an update value, and two updates with one value
    f = mg.function([], a * 2.0, updates=[(a, a * 2.0)], backend=backend)
    out = f()
    out[...] = -1.0
    np.testing.assert_array_equal(a.get_value(), [2.0, 4.0])
    f = mg.function([], [], updates=[(a, b + 1.0), (b, b + 1.0)], backend=backend)
    f()
    a.get_value(borrow=True)[...] = 100.0
    np.testing.assert_array_equal(b.get_value(), [1.0, 1.0])
    # a row-sparse output is a copy too
    E, idx = mg.shared(np.ones((4, 2)), name="E"), mg.lvector("idx")
    g = mg.function([idx], mg.grad(E[idx].sum(), E), backend=backend)
    r = g(np.array([1]))
    r.values[...] = 9.0
    np.testing.assert_array_equal(g(np.array([1])).values, [[1.0, 1.0]])


def test_extra_inputs_are_allowed_missing_inputs_are_not(backend):
    x, unused = mg.vector("x"), mg.matrix("unused")
    f = mg.function([x, unused], x * 2.0, backend=backend)
    np.testing.assert_array_equal(f(np.ones(2), np.zeros((1, 1))), [2.0, 2.0])
    with pytest.raises(TypeError, match="2 inputs"):
        f(np.ones(2))
    with pytest.raises(ValueError, match="not given"):
        mg.function([], x * 2.0)
    with pytest.raises(TypeError, match="input"):
        mg.function([mg.shared(np.ones(2))], x)
    with pytest.raises(ValueError, match="twice"):
        mg.function([x, x], x)


def test_merge_and_constant_folding():
    x = mg.vector("x")
    f = mg.function([x], mg.exp(x) * 2.0 + mg.exp(x) * 2.0, backend="numpy")
    # a FusedElemwise node (rewrite_fusion.py) computes the nodes of its inner graph
    ops = [str(m.op) for n in f.nodes for m in getattr(n.op, "inner_nodes", [n])]
    assert ops.count("exp") == 1, ops  # identical nodes merged
    c = mg.constant(np.array([1.0, 2.0]))
    f = mg.function([x], x + mg.exp(c * 2.0 + 1.0), backend="numpy")
    assert len(f.nodes) == 1 and str(f.nodes[0].op) == "add"
    folded = [i for i in f.nodes[0].inputs if isinstance(i, Constant)]
    np.testing.assert_allclose(folded[0].data, np.exp([3.0, 5.0]))
    np.testing.assert_allclose(f(np.zeros(2)), np.exp([3.0, 5.0]))


def test_rewrites_keep_results_under_broadcasting(backend):
    p, q = mg.matrix("p"), mg.matrix("q")
    pv, qv = np.arange(3.0).reshape(3, 1), np.arange(4.0).reshape(1, 4)
    gp, gq = mg.function([p, q], mg.grad((p * q).sum(), [p, q]), backend=backend)(pv, qv)
    np.testing.assert_allclose(gp, np.full((3, 1), qv.sum()))
    np.testing.assert_allclose(gq, np.full((1, 4), pv.sum()))
    E, b, idx = mg.shared(np.ones((10, 3))), mg.shared(np.full((1, 3), 2.0)), mg.lvector("i")
    assert float(mg.function([idx], (E + b)[idx].sum(), backend=backend)(np.array([4, 5]))) == 18


# ------------------------------------------------------------------ bad inputs are atomic


@pytest.fixture
def model(rng):
    E = mg.shared(rng.standard_normal((10, 3)), name="E")
    W = mg.shared(rng.standard_normal((3, 4)), name="W")
    idx, X, y = mg.ivector("idx"), mg.csr_matrix("X"), mg.ivector("y")
    cost = mg.nn.cross_entropy(E[idx] @ W + mg.sparse.dot(X, E) @ W, y)
    gE, gW = mg.grad(cost, [E, W])
    updates = [(E, E - 0.1 * gE.to_dense()), (W, W - 0.1 * gW)]
    return E, W, [idx, X, y], cost, updates


GOOD = (np.array([1, 2], np.int32), sp.random(2, 10, density=0.3, format="csr", random_state=1),
        np.array([0, 3], np.int32))


@pytest.mark.parametrize("args,exc,pattern", [
    ((GOOD[0],), TypeError, r"expects 3 inputs.*got 1"),
    ((np.array([[1, 2]]), GOOD[1], GOOD[2]), TypeError, r"'idx'.*rank 1.*rank 2"),
    ((np.array([1.0, 2.0]), GOOD[1], GOOD[2]), TypeError, r"'idx'.*integer.*float64"),
    ((np.array([1, 12]), GOOD[1], GOOD[2]), IndexError, r"'idx'.*12.*out of range"),
    ((np.array([-1, 2]), GOOD[1], GOOD[2]), IndexError, r"'idx'.*-1"),
    ((GOOD[0], GOOD[1].tocoo(), GOOD[2]), TypeError, r"CSR.*COO"),
    ((GOOD[0], GOOD[1].tocsc(), GOOD[2]), TypeError, r"CSR.*CSC"),
    ((GOOD[0], GOOD[1].toarray(), GOOD[2]), TypeError, r"CSR"),
    ((GOOD[0], sp.random(2, 9, density=0.3, format="csr", random_state=1), GOOD[2]), ValueError,
     r"9 columns.*10 rows"),
    ((GOOD[0], GOOD[1], np.array([0, 4])), IndexError, r"y.*label 4.*4 classes"),
    ((GOOD[0], GOOD[1], np.array([-1, 0])), IndexError, r"label -1"),
    ((GOOD[0], GOOD[1], np.array([0, 1, 2])), ValueError, r"labels|rows|shape"),
])
def test_bad_input_raises_and_changes_nothing(model, backend, args, exc, pattern):
    E, W, inputs, cost, updates = model
    f = mg.function(inputs, cost, updates=updates, backend=backend)
    E0, W0 = E.get_value(), W.get_value()
    with pytest.raises(exc, match=pattern):
        f(*args)
    np.testing.assert_array_equal(E.get_value(), E0)
    np.testing.assert_array_equal(W.get_value(), W0)
    f(*GOOD)  # a good call still works afterwards and does update
    assert not np.array_equal(W.get_value(), W0)


@pytest.mark.parametrize("backend_", ["numpy", "numba"])
def test_nan_guard_raise_and_skip(backend_):
    if backend_ == "numba":
        pytest.importorskip("numba")
    x = mg.vector("x")
    p = mg.shared(np.ones(3), name="p")
    f = mg.function([x], (p * x).sum(), updates=[(p, p - x)], nan_guard=True, backend=backend_)
    with pytest.raises(FloatingPointError, match="NaN"):
        f(np.array([1.0, np.nan, 0.0]))
    np.testing.assert_array_equal(p.get_value(), np.ones(3))
    g = mg.function([x], (p * x).sum(), updates=[(p, p - x)], nan_guard=True, on_nan="skip",
                    backend=backend_)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert g(np.array([np.inf, 0.0, 0.0])) is None
    np.testing.assert_array_equal(p.get_value(), np.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g(np.array([1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(p.get_value(), [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="on_nan"):
        mg.function([x], x, on_nan="ignore")


def test_nan_guard_checks_row_sparse_gradients():
    E = mg.shared(np.ones((5, 2)), name="E")
    idx, s = mg.lvector("idx"), mg.scalar("s")
    g = mg.grad((E[idx] * s).sum(), E)
    f = mg.function([idx, s], g, nan_guard=True, backend="numpy")
    with pytest.raises(FloatingPointError):
        f(np.array([1]), np.nan)
    f(np.array([1]), 1.0)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        mg.function([], mg.constant(1.0), backend="tpu")


# ---- checks once: the index prologue ------------------------------------------------


def test_index_inputs_are_checked_once_in_the_prologue(monkeypatch):
    pytest.importorskip("numba", reason="numba not installed")
    import minigrad.backends.numba as numba_backend

    calls = []
    original = numba_backend.check_index_range
    monkeypatch.setattr(numba_backend, "check_index_range",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    E = mg.shared(np.arange(20.0).reshape(10, 2), name="E")
    idx = mg.lvector("tokens")
    f = mg.function([idx], [E[idx].sum(), (E[idx] ** 2).sum()], backend="numba")
    assert f.prologue and any(getattr(n, "index_checked", False) for n in f.nodes)
    f(np.array([0, 9, 3]))
    assert calls == []  # the Take thunks skipped their own check
    with pytest.raises(IndexError, match=r"index 'tokens': value 10 is out of range for E "
                                         r"with 10 rows"):
        f(np.array([0, 10]))
    with pytest.raises(IndexError, match="value -1"):
        f(np.array([-1, 2]))


def test_the_prologue_stops_a_bad_label_before_any_node_runs():
    E = mg.shared(np.ones((6, 3)), name="E")
    W = mg.shared(np.ones((3, 4)), name="W")
    c = mg.shared(np.zeros(4), name="c")
    idx, y = mg.lvector("idx"), mg.lvector("y")
    f = mg.function([idx, y], mg.nn.cross_entropy(E[idx] @ W + c, y))
    assert len(f.prologue.checks) == 2  # idx against rows of E, y against columns of W
    ran = []
    f._safe_run = lambda *a: ran.append(1)  # nothing may run on a bad call
    with pytest.raises(IndexError, match="label 4 is out of range for 4 classes"):
        f(np.array([1, 2]), np.array([0, 4]))
    assert ran == []


def test_csr_column_indices_are_checked_once():
    V = mg.shared(np.ones((5, 2)), name="V")
    X = mg.csr_matrix("X")
    # the unfused product: a gather of V's rows by the CSR columns (the fused kernels of
    # the fuse phase read the rows themselves and check their own arguments)
    f = mg.function([X], mg.sparse.dot(X, V).sum(), mode=mg.Mode(exclude=("fuse",)))
    assert f.prologue.csr_inputs == [0]
    good = sp.csr_matrix(np.eye(5)[:3])
    assert f(good) == pytest.approx(6.0)
    bad = sp.csr_matrix((np.ones(2), np.array([1, 7]), np.array([0, 1, 2])), shape=(2, 5))
    with pytest.raises(IndexError, match="CSR column index 7"):
        f(bad)


def test_shared_table_shrunk_by_set_value_is_seen_by_the_prologue():
    E = mg.shared(np.ones((10, 2)), name="E")
    idx = mg.lvector("idx")
    f = mg.function([idx], E[idx].sum())
    assert f(np.array([8])) == 2.0
    E.set_value(np.ones((5, 2)))
    with pytest.raises(IndexError, match="with 5 rows"):
        f(np.array([8]))
