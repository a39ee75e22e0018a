"""Shapes as values: ``Shape(x)`` is an int64 vector, and every Op that needs only the shape
of a value (the VJP of a sum, of a gather, of a slice...) takes that vector instead of the
value itself. So the graph says what is really read: no fake data dependency, an exact-mode
table read only through gathers and its shape is not flushed, and the CuPy backend never
copies a device table to learn its shape.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg
from minigrad.graph import toposort
from minigrad.ops.elemwise import ReduceLike
from minigrad.ops.indexing import TakeGrad
from minigrad.ops.shape import BroadcastLike, Shape, shape_of, shape_source, static_shape


def _op_names(outputs):
    return [type(n.op).__name__ for n in toposort(outputs if isinstance(outputs, list)
                                                   else [outputs])]


def test_shape_value_is_an_int64_vector():
    x = mg.matrix("x")
    f = mg.function([x], shape_of(x), backend="numpy")
    value = f(np.zeros((3, 5)))
    assert value.dtype == np.int64 and value.tolist() == [3, 5]
    assert shape_of(x).type == mg.TensorType("int64", (2,))
    X = mg.csr_matrix("X")
    import scipy.sparse as sp

    g = mg.function([X], shape_of(X), backend="numpy")
    assert g(sp.random(4, 7, density=0.5, format="csr")).tolist() == [4, 7]


def test_shape_has_no_gradient_its_input_is_disconnected():
    x = mg.matrix("x")
    assert Shape().grad([x], [shape_of(x)], [mg.lvector("g")]) == [None]
    # a cost that uses x's shape as a number: the shape is a constant of the gradient
    n_rows = mg.cast(x.shape[0], "float64")
    cost = (x * n_rows).sum()
    f = mg.function([x], mg.grad(cost, x), backend="numpy")
    np.testing.assert_array_equal(f(np.ones((4, 2))), np.full((4, 2), 4.0))


def test_gradient_ops_take_the_shape_not_the_data():
    E = mg.shared(np.ones((6, 3)), name="E")
    x = mg.matrix("x")
    idx = mg.lvector("idx")
    g_rows = mg.grad(E[idx].sum(), E)
    g_sum = mg.grad((x * 2.0).sum(), x)
    for g in (g_rows, g_sum):
        for node in toposort([g]):
            for inp in node.inputs:
                # the only op that reads E or x without reading their values is Shape
                if inp is E or inp is x:
                    assert isinstance(node.op, Shape) or type(node.op).__name__ in (
                        "Take", "Binary"), node.op
    (take_grad,) = [n for n in toposort([g_rows]) if isinstance(n.op, TakeGrad)]
    assert shape_source(take_grad.inputs[0]) is E


def test_static_shapes_are_inferred_through_shape_values():
    x = mg.tensor("x", shape=(None, 4))
    assert static_shape(shape_of(x)) == (None, 4)
    g = mg.vector("g")
    assert BroadcastLike()(g, shape_of(x)).type.shape == (None, 4)
    const = mg.constant(np.array([2, 3], dtype=np.int64))
    assert BroadcastLike()(g, const).type.shape == (2, 3)
    E = mg.shared(np.ones((6, 3)), name="E")
    rs = mg.grad(E[mg.lvector("i")].sum(), E)
    assert rs.type.shape == E.type.shape and rs.dtype == E.dtype


def test_an_op_taking_a_shape_refuses_a_data_value():
    g, x = mg.vector("g"), mg.matrix("x")
    with pytest.raises(TypeError, match=r"shape_of\(x\)"):
        BroadcastLike()(g, x)
    with pytest.raises(TypeError, match="shape"):
        ReduceLike()(g, mg.lvector("n"))  # an int vector of unknown length is no shape


def test_shape_taking_ops_compute_as_before(backend):
    """The VJPs that borrow shapes: sums, means, broadcasting, slices, reshapes, gathers."""
    rng = np.random.default_rng(0)
    x, b = mg.matrix("x"), mg.shared(rng.standard_normal((1, 3)), name="b")
    E = mg.shared(rng.standard_normal((7, 3)), name="E")
    idx = mg.lvector("idx")
    cost = (((x + b) ** 2).mean(axis=0).sum() + x[1:, ::2].sum()
            + x.reshape((-1,)).sum() + (E[idx] * x).sum())
    grads = mg.grad(cost, [x, b, E])
    f = mg.function([x, idx], [grads[0], grads[1], grads[2].to_dense()], backend=backend)
    xv, iv = rng.standard_normal((4, 3)), np.array([0, 2, 2, 6])
    gx, gb, gE = f(xv, iv)
    n = xv.shape[0]
    want_x = 2 * (xv + b.get_value()) / n + 1 + E.get_value()[iv]
    want_x[1:, ::2] += 1
    want_x[0, :] += 0  # the slice starts at row 1
    np.testing.assert_allclose(gx, want_x)
    np.testing.assert_allclose(gb, (2 * (xv + b.get_value()) / n).sum(axis=0, keepdims=True))
    want_E = np.zeros((7, 3))
    np.add.at(want_E, iv, xv)
    np.testing.assert_allclose(gE, want_E)


def test_shape_of_an_elementwise_result_is_read_from_its_input():
    """``shape_of_same_shape``: ``Shape(V ** 2)`` becomes ``Shape(V)`` so ``V ** 2`` is not
    kept alive just to learn its shape."""
    V = mg.shared(np.ones((5, 2)), name="V")
    idx = mg.lvector("idx")
    cost = ((V ** 2)[idx]).sum()
    f = mg.function([idx], mg.grad(cost, V).to_dense(), backend="numpy")
    shapes = [n for n in f.nodes if isinstance(n.op, Shape)]
    assert any(n.inputs[0] is V for n in shapes)  # TakeGrad's: V's shape, not V ** 2's
    elementwise = (mg.ops.Unary, mg.ops.Binary)
    assert not any(n.inputs[0].owner is not None and isinstance(n.inputs[0].owner.op,
                                                                elementwise) for n in shapes)
    np.testing.assert_allclose(f(np.array([1, 1, 3])).sum(axis=1), [0, 8, 0, 4, 0])


def test_debugprint_shows_shape_nodes_and_the_readable_view_drops_them():
    E = mg.shared(np.ones((6, 3)), name="E")
    idx = mg.lvector("idx")
    g = mg.grad((E[idx] ** 2).sum(), E)
    full = mg.debugprint(g, print_=False)
    assert "Shape #" in full
    shape_line = next(k for k, line in enumerate(full.splitlines()) if "Shape #" in line)
    assert "(shape only)" in full.splitlines()[shape_line + 1]  # E, under its Shape
    tree = mg.debugprint(g, readable=True, print_=False).split("legend:")[0]
    assert "Shape" not in tree and "TakeGrad(" in tree
    assert "Shape" not in mg.pp(g)


def test_a_user_computing_with_a_shape_sees_it_in_the_readable_view():
    x = mg.matrix("x")
    text = mg.debugprint(x.sum() / mg.cast(x.shape[0], "float64"), readable=True,
                         print_=False)
    assert "Shape" in text or "shape" in text


# --- exact-mode tables: reads of the shape are not data reads --------------------------


def _exact_table():
    E = mg.shared(np.random.default_rng(0).standard_normal((10, 2)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    opt = mg.optim.Adam([E], 0.1, sparse="exact")
    train = mg.function([idx], cost, updates=opt.updates(cost))
    return E, idx, train


def test_a_function_reading_an_exact_table_through_gathers_and_its_shape_is_not_flushed():
    E, idx, train = _exact_table()
    train(np.array([1, 2]))
    gathers_only = mg.function([idx], E[idx].sum() * mg.cast(E.shape[0], "float64"))
    assert gathers_only.flush_first == []
    # its gradient borrows E's shape (TakeGrad(Shape(E), ...)): still no flush
    grad_only = mg.function([idx], mg.grad(E[idx].sum(), E).to_dense())
    assert grad_only.flush_first == []
    dense = mg.function([], (E ** 2).sum())
    assert dense.flush_first == [E]


def test_exact_gather_read_sees_caught_up_rows_without_a_flush():
    E, idx, train = _exact_table()
    for _ in range(3):
        train(np.array([1, 2]))
    train(np.array([5]))
    read = mg.function([idx], E[idx] * mg.cast(E.shape[1], "float64"))
    before = E._value.copy()  # the stored (lagging) table, not caught up
    got = read(np.array([1, 2]))
    np.testing.assert_array_equal(E._value, before)  # nothing flushed
    np.testing.assert_allclose(got, 2.0 * E.get_value()[[1, 2]])


# --- shape inference: equal symbolic dimensions ---------------------------------------


def _ops_of(f):
    return [type(n.op).__name__ for n in f.nodes]


def test_reductions_to_an_equal_shape_are_dropped(backend):
    a, b = mg.matrix("a"), mg.matrix("b")
    cost = (mg.sigmoid(a) * b).sum()
    f = mg.function([a, b], mg.grad(cost, [a, b]), backend=backend)
    plain = mg.function([a, b], mg.grad(cost, [a, b]), backend=backend,
                        mode=mg.Mode(backend=backend, exclude=("shape_inference",)))
    assert "ReduceLike" not in _ops_of(f) and len(f.nodes) < len(plain.nodes)
    rng = np.random.default_rng(0)
    av, bv = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    for got, want in zip(f(av, bv), plain(av, bv)):
        np.testing.assert_allclose(got, want)
    # unknown lengths that broadcast at run time: keys differ, the sum back stays
    ga, gb = f(av, bv[:1])
    np.testing.assert_allclose(gb, plain(av, bv[:1])[1])
    assert gb.shape == (1, 3) and ga.shape == (4, 3)


def test_a_static_one_keeps_its_reduction():
    a, bias = mg.matrix("a"), mg.shared(np.ones((1, 3)), name="bias")
    f = mg.function([a], mg.grad((a * bias).sum(), bias), backend="numpy")
    assert "ReduceLike" in _ops_of(f) or "MulReduceLike" in _ops_of(f)
    np.testing.assert_allclose(f(np.ones((5, 3))), np.full((1, 3), 5.0))


def test_the_fm_step_loses_its_shape_bookkeeping_and_keeps_its_values():
    def step(mode):
        fm = mg.models.FactorizationMachine(30, 4, seed=0)
        X, y = mg.csr_matrix("X"), mg.vector("y")
        cost = fm.cost(X, y)
        f = mg.function([X, y], cost, updates=mg.optim.SGD(fm.params, 0.1).updates(cost),
                        mode=mode)
        return f, fm

    import scipy.sparse as sp

    f, fm = step(mg.Mode(backend="numpy"))
    g, fm2 = step(mg.Mode(backend="numpy", exclude=("shape_inference",)))
    assert len(f.nodes) < len(g.nodes)
    shapes = [n for n in f.nodes if isinstance(n.op, Shape)]
    assert len({n.inputs[0] for n in shapes}) == len(shapes)  # one Shape per distinct value
    rng = np.random.default_rng(1)
    for _ in range(3):
        X = sp.random(8, 30, density=0.2, format="csr", random_state=rng)
        y = rng.integers(0, 2, 8).astype(float)
        np.testing.assert_allclose(f(X, y), g(X, y))
    for p, q in zip(fm.params, fm2.params):
        np.testing.assert_allclose(p.get_value(), q.get_value())
