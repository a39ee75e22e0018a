"""The graph: Op identity, toposort (deep graphs, cycles), ancestors, clone_replace."""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg
from minigrad.graph import ancestors, inputs_of
from minigrad.ops.elemwise import Unary
from minigrad.ops.reduce import Sum


def test_op_equality_and_hash_follow_props():
    assert Sum((0,), False) == Sum((0,), False)
    assert hash(Sum((0,), False)) == hash(Sum((0,), False))
    assert Sum((0,), False) != Sum((1,), False)
    assert Unary("exp") != Unary("log")
    assert "axes=(0,)" in str(Sum((0,), False))
    with pytest.raises(ValueError, match="unknown"):
        Unary("nope")


def test_toposort_orders_and_dedups():
    x = mg.vector("x")
    a = mg.exp(x)
    b = a * a
    c = b + a
    order = mg.toposort([c, b])
    assert [str(n.op) for n in order] == ["exp", "mul", "add"]
    pos = {n: i for i, n in enumerate(order)}
    for n in order:
        for i in n.inputs:
            if i.owner is not None:
                assert pos[i.owner] < pos[n]


def test_toposort_deep_graph_no_recursion_limit():
    x = mg.scalar("x")
    y = x
    for _ in range(5000):
        y = y + 1.0
    assert len(mg.toposort([y])) == 5000
    f = mg.function([x], y, backend="numpy")
    assert float(f(0.0)) == 5000.0


def test_toposort_detects_cycle():
    x = mg.vector("x")
    y = mg.exp(x)
    z = mg.log(y)
    y.owner.inputs[0] = z  # corrupt the graph on purpose
    with pytest.raises(ValueError, match="cycle"):
        mg.toposort([z])


def test_ancestors_and_inputs():
    x, w = mg.vector("x"), mg.shared(np.ones(2), name="w")
    y = (x * w).sum()
    assert {x, w} <= set(ancestors([y]))
    assert set(inputs_of([y])) == {x, w}


def test_clone_replace(backend):
    x, z = mg.vector("x"), mg.vector("z")
    w = mg.shared(np.array([1.0, 2.0]), name="w")
    y = (x * w).sum()
    (y2,) = mg.clone_replace([y], {x: z * 2.0})
    assert y2 is not y and w in ancestors([y2]) and x not in ancestors([y2])
    assert float(mg.function([z], y2, backend=backend)(np.array([1.0, 1.0]))) == 6.0
    assert float(mg.function([x], y, backend=backend)(np.array([1.0, 1.0]))) == 3.0
    with pytest.raises(TypeError, match="dense"):  # rebuilt nodes re-check their types
        mg.clone_replace([mg.exp(x)], {x: mg.csr_matrix()})


def test_variables_are_symbolic():
    x = mg.vector("x")
    with pytest.raises(TypeError):
        bool(x > 0)
    with pytest.raises(TypeError):
        list(x)
    assert x.ndim == 1 and x.dtype == "float64" and str(x) == "x"
    assert mg.matrix().ndim == 2 and mg.tensor3().ndim == 3 and mg.scalar().ndim == 0
    assert mg.ivector().dtype == "int32" and mg.lmatrix().dtype == "int64"
    assert mg.imatrix().ndim == 2 and mg.iscalar().ndim == 0 and mg.lscalar().ndim == 0
    assert mg.tensor(shape=(None, 3, None)).type.shape == (None, 3, None)
    assert isinstance(mg.csr_matrix().type, mg.CSRType)
    c = mg.constant(3)
    assert c.dtype == "int64"


def test_shape_and_size_are_symbolic(backend):
    x = mg.matrix("x")
    f = mg.function([x], [x.shape, x.size], backend=backend)
    shape, size = f(np.zeros((2, 5)))
    np.testing.assert_array_equal(shape, [2, 5])
    assert int(size) == 10


def test_shared_get_set_value():
    v = np.array([1.0, 2.0])
    s = mg.shared(v, name="s")
    v[0] = 100.0
    assert s.get_value()[0] == 1.0  # copied at construction
    got = s.get_value()
    got[1] = -5.0
    assert s.get_value()[1] == 2.0  # get_value copies
    assert s.get_value(borrow=True) is s.value
    s.set_value([3.0, 4.0])
    np.testing.assert_array_equal(s.get_value(), [3.0, 4.0])
    with pytest.raises(TypeError, match="rank"):
        s.set_value(np.ones((2, 2)))
    calls = []
    s.add_flush_hook(lambda: calls.append(1))
    s.get_value()
    assert calls == [1]
    assert mg.shared(np.arange(3)).dtype == "int64"
    with pytest.raises(TypeError):
        mg.shared(np.array(["a"]))
