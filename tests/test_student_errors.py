"""The errors a student meets first name the variable and the op and say what to do:
an element-wise broadcast failure, symbolic slicing with integer scalar inputs (which
works, with its gradient), and ``clone_replace`` given a single variable."""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg


def test_broadcast_error_at_run_time_names_variables_op_and_fix():
    x = mg.matrix("x")
    W = mg.shared(np.ones((8, 8)), name="W")
    f = mg.function([x], (x - W).sum(), updates=[(W, W * 2.0)])
    before = W.get_value()
    with pytest.raises(ValueError) as info:
        f(np.ones((16, 8)))
    msg = str(info.value)
    for part in ("sub", "'x' of shape (16, 8)", "'W' of shape (8, 8)", "x - W", "x.T",
                 "x[:, None]"):
        assert part in msg, (part, msg)
    np.testing.assert_array_equal(W.get_value(), before)  # the failed call changed nothing


def test_broadcast_error_while_building_names_variables():
    a, b = mg.tensor("a", shape=(3, 4)), mg.tensor("b", shape=(5,))
    with pytest.raises(ValueError, match=r"add: cannot broadcast 'a' of shape \(3, 4\), 'b' "
                                         r"of shape \(5,\) \(while building the graph\)"):
        a + b
    h = mg.tensor("h", shape=(2, 3)) * 2.0
    with pytest.raises(ValueError, match=r"'h \* 2.0' of shape \(2, 3\)"):
        mg.where(h > 0, h, mg.tensor("z", shape=(4,)))


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_unnamed_variables_are_described_by_their_formula(fused):
    x = mg.matrix("x")
    mode = mg.Mode() if fused else mg.Mode(exclude=("fuse",))
    f = mg.function([x], mg.exp(x) * mg.constant(np.ones((3, 3))), mode=mode)
    with pytest.raises(ValueError, match=r"'exp\(x\)' of shape \(2, 2\), a constant of shape"):
        f(np.ones((2, 2)))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_symbolic_minibatch_slicing_with_gradient(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    X = mg.shared(np.arange(40.0).reshape(10, 4), name="X")
    i, B = mg.iscalar("i"), 3
    batch = X[i * B:(i + 1) * B]
    cost = (batch ** 2).sum()
    g = mg.grad(cost, X)
    f = mg.function([i], [batch, g], backend=backend)
    x = X.get_value()
    for k in range(4):  # the last batch is short, as with NumPy
        rows, grad = f(k)
        np.testing.assert_array_equal(rows, x[k * B:(k + 1) * B])
        expected = np.zeros_like(x)
        expected[k * B:(k + 1) * B] = 2 * x[k * B:(k + 1) * B]
        np.testing.assert_array_equal(grad, expected)


def test_symbolic_index_and_step_and_verify_grad():
    j, s = mg.lscalar("j"), mg.lscalar("s")
    M = mg.matrix("M")
    f = mg.function([M, j, s], M[::s, j])
    m = np.arange(20.0).reshape(5, 4)
    np.testing.assert_array_equal(f(m, 2, 2), m[::2, 2])
    one, three = mg.constant(np.int64(1)), mg.constant(np.int64(3))
    mg.verify_grad(lambda x: (x[one:three, three] ** 2).sum() * x[one],
                   [np.random.default_rng(0).random((5, 4))])
    mg.verify_grad(lambda x: mg.grad((x[one:three] ** 3).sum(), x) * x,
                   [np.random.default_rng(1).random((4, 2))])  # second derivative


def test_symbolic_slice_bounds_must_be_integer_scalars():
    X, t, v = mg.matrix("X"), mg.scalar("t"), mg.lvector("v")
    with pytest.raises(TypeError, match="start 't' must be an integer scalar.*lscalar"):
        X[t:]
    with pytest.raises(TypeError, match="stop 'v' must be an integer scalar"):
        X[:v]


def test_symbolic_index_out_of_range_names_the_variable():
    X, j = mg.matrix("X"), mg.lscalar("j")
    f = mg.function([X, j], X[:, j])
    with pytest.raises(IndexError, match="'X'"):
        f(np.ones((2, 3)), 7)


def test_clone_replace_accepts_a_single_variable_and_pairs():
    x, y = mg.vector("x"), mg.vector("y")
    cost = (x * 2.0).sum()
    single = mg.clone_replace(cost, {x: y})
    assert isinstance(single, mg.Variable) and mg.pp(single, print_=False) == "sum(y * 2.0)"
    (listed,) = mg.clone_replace([cost], [(x, y)])
    assert mg.function([y], listed)(np.ones(3)) == 6.0
    with pytest.raises(TypeError, match="key of replace is a str"):
        mg.clone_replace(cost, {"x": y})
    with pytest.raises(TypeError, match="dict .* or a list of"):
        mg.clone_replace(cost, [x, y])


def test_static_and_symbolic_keys_are_frozen_the_same_way():
    """One key parser serves ``x[1:3]`` and ``x[i:j]``: the same bound types are accepted
    and refused, NumPy integer bounds merge with Python ints, and a symbolic slice gives
    what the static one gives."""
    X, i, j = mg.matrix("X"), mg.lscalar("i"), mg.lscalar("j")
    m = np.arange(30.0).reshape(6, 5)
    static = mg.function([X], [X[1:4, ::2], X[np.int64(1):np.int64(4), ::2], X[..., None, 2]])
    a, b, c = static(m)
    np.testing.assert_array_equal(a, m[1:4, ::2])
    np.testing.assert_array_equal(b, m[1:4, ::2])
    np.testing.assert_array_equal(c, m[..., None, 2])
    assert X[1:4].owner.op == X[np.int64(1):np.int64(4)].owner.op  # hashable, merged by rewrites
    dynamic = mg.function([X, i, j], X[i:j, ::2])
    np.testing.assert_array_equal(dynamic(m, 1, 4), a)
    for bad in (slice(1.5, 3), slice(None, "3"), slice(True, 3)):
        with pytest.raises(TypeError, match=r"slicing: unsupported (start|stop) .*integer scalar"):
            X[bad]
    with pytest.raises(TypeError, match=r"unsupported index 2.0: use ints, slices"):
        X[2.0]
    with pytest.raises(TypeError, match=r"unsupported index True"):
        X[True]
