"""Rewrites change how a graph runs, never what it computes."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from minigrad.ops.elemwise import MulReduceLike
from minigrad.ops.indexing import Take
from minigrad.rewrite import DB, PHASES


def _ops(f):
    return [type(n.op).__name__ for n in f.nodes]


@pytest.mark.parametrize("shape_a,shape_b,shape_x", [
    ((5, 4), (5, 4), (5, 1)),
    ((5, 4), (5, 4), (1, 4)),
    ((5, 4), (5, 4), (1, 1)),
    ((5, 4), (5, 4), (4,)),
    ((5, 1), (5, 4), (5, 1)),
    ((2, 3, 4), (2, 3, 4), (2, 1, 4)),
])
def test_fused_mul_reduce_matches_the_unfused_gradient(shape_a, shape_b, shape_x):
    rng = np.random.default_rng(0)
    x = mg.shared(rng.standard_normal(shape_x), name="x")
    b = mg.shared(rng.standard_normal(shape_b), name="b")
    a_val = rng.standard_normal(shape_a)
    a = mg.tensor("a", shape=(None,) * len(shape_a))
    cost = ((a * (x * b)) ** 2).sum()
    g = mg.grad(cost, x)
    fused = mg.function([a], g, backend="numpy")
    x_v, b_v = x.get_value(), b.get_value()
    full = 2 * a_val * (x_v * b_v) * a_val * b_v  # d/dx of (a x b)^2, before reduction
    lead = full.ndim - x_v.ndim
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(x_v.shape)
                                      if n == 1 and full.shape[lead + i] != 1)
    expected = full.sum(axis=axes, keepdims=True).reshape(x_v.shape)
    np.testing.assert_allclose(fused(a_val), expected, rtol=1e-12)


def test_fusion_happens_for_a_broadcast_product_gradient():
    s = mg.shared(np.ones((5, 1)), name="s")
    a = mg.matrix("a")
    f = mg.function([a], mg.grad((mg.tanh(a) * s).sum(), s))
    assert "MulReduceLike" in _ops(f)
    np.testing.assert_allclose(f(np.ones((5, 3))), np.full((5, 1), 3 * np.tanh(1.0)))


def test_masked_embedding_uses_the_scaled_sparse_product():
    model = mg.models.MaskedEmbeddingClassifier(50, 8, 3, seed=0, mask_kind="per_word")
    tokens, mask, y = mg.lmatrix("t"), mg.matrix("m"), mg.lvector("y")
    f = mg.function([tokens, mask, y], mg.grad(model.cost(tokens, mask, y), model.M))
    assert "CSRScaledDotGradScale" in _ops(f)


def test_fm_products_share_one_gather():
    fm = mg.models.FactorizationMachine(30, 4, seed=0)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    # the "fuse" phase (rewrite_fusion.py) would replace the gather by fused products
    f = mg.function([X, y], fm.cost(X, y), mode=mg.Mode(backend="numpy", exclude=("fuse",)))
    gathers_of_v = [n for n in f.nodes if isinstance(n.op, Take) and n.inputs[0] is fm.V]
    assert len(gathers_of_v) == 1
    Xv = sp.random(6, 30, density=0.2, format="csr", random_state=0)
    assert np.isfinite(f(Xv, np.ones(6)))


def test_each_rewrite_is_registered_once_named_and_phased():
    import minigrad.optim  # noqa: F401  (registers fresh_reads)

    names = DB.names()
    assert len(names) == len(set(names))
    for expected in ("merge", "constant_folding", "take_through_elemwise", "shape_of_same_shape",
                     "csr_pattern", "merge_take_grads", "fuse_mul_reduce", "simplify",
                     "fresh_reads"):
        assert expected in names
        assert DB[expected].phase in PHASES
        assert {expected, DB[expected].phase, "default"} <= DB[expected].tags
    assert DB["fuse_mul_reduce"].phase == "fuse"
    # no op takes a fake data input for its shape any more: shapes are values (Shape)
    assert not any(hasattr(cls, "shape_only_inputs") for cls in _all_op_classes())


def _all_op_classes():
    import minigrad.graph

    seen, stack = set(), [minigrad.graph.Op]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
    return seen


def test_fm_gradient_rows_of_one_gather_are_added_before_coalescing():
    """``merge_take_grads``: the FM's two contributions to ``V``'s gradient become one
    row-sparse value over the gathered columns, with the same dense meaning."""
    fm = mg.models.FactorizationMachine(30, 4, seed=0)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    g = mg.grad(fm.cost(X, y), fm.V)
    f = mg.function([X, y], g, backend="numpy")
    assert "RowSparseAdd" not in _ops(f)
    Xv = sp.random(6, 30, density=0.2, format="csr", random_state=0)
    yv = np.arange(6) % 2.0
    got = f(Xv, yv)
    assert got.indices.shape[0] == Xv.nnz  # one row per stored entry, not two
    before = DB.names()
    unmerged = mg.function([X, y], g, mode=mg.Mode(backend="numpy",
                                                   exclude=("merge_take_grads",)))
    assert "RowSparseAdd" in _ops(unmerged)
    assert DB.names() == before  # the mode did not touch the database
    reference = unmerged(Xv, yv)
    np.testing.assert_allclose(got.to_dense(), reference.to_dense(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("scale_shape", [(30,), (30, 1)])
def test_sparse_dot_with_scale_matches_the_explicit_product(backend, scale_shape):
    rng = np.random.default_rng(0)
    W = mg.shared(rng.standard_normal((30, 4)), name="W")
    s = mg.shared(rng.standard_normal(scale_shape), name="s")
    X = mg.csr_matrix("X")
    Xv = sp.random(7, 30, density=0.2, format="csr", random_state=1)
    s_col = s if len(scale_shape) == 2 else s.reshape((30, 1))
    fused = mg.tanh(mg.sparse.dot(X, W, scale=s)).sum()
    plain = mg.tanh(mg.sparse.dot(X, s_col * W)).sum()
    g_fused = mg.grad(fused, [W, s])
    assert all(isinstance(g.type, mg.RowSparseType) for g in g_fused)
    got = mg.function([X], [fused, *g_fused], backend=backend)(Xv)
    want = mg.function([X], [plain, *mg.grad(plain, [W, s])], backend=backend)(Xv)
    for a, b in zip(got, want):
        a = a.to_dense() if isinstance(a, mg.RowSparse) else a
        b = b.to_dense() if isinstance(b, mg.RowSparse) else b
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_sparse_dot_with_scale_verify_grad():
    rng = np.random.default_rng(2)
    Xv = sp.random(5, 12, density=0.3, format="csr", random_state=3)
    X = mg.csr_matrix("X")
    # verify_grad feeds dense points only, so the directional check is written out here
    W0, s0 = rng.standard_normal((12, 3)), rng.standard_normal((12, 1))
    W, s = mg.matrix("W"), mg.matrix("s")
    cost = (mg.sparse.dot(X, W, scale=s) ** 2).sum()
    f = mg.function([X, W, s], cost, backend="numpy")
    gW, gs = mg.function([X, W, s], mg.grad(cost, [W, s]), backend="numpy")(Xv, W0, s0)
    eps = 1e-6
    for point, grad, which in ((W0, gW, 0), (s0, gs, 1)):
        direction = rng.standard_normal(point.shape)
        args = [W0, s0]
        plus = list(args)
        minus = list(args)
        plus[which] = point + eps * direction
        minus[which] = point - eps * direction
        numeric = (f(Xv, *plus) - f(Xv, *minus)) / (2 * eps)
        dense = grad.to_dense() if isinstance(grad, mg.RowSparse) else grad
        assert float(np.sum(dense * direction)) == pytest.approx(float(numeric), rel=1e-6)


def test_fused_nodes_expose_their_inner_graph():
    s = mg.shared(np.ones((5, 1)), name="s")
    a = mg.matrix("a")
    f = mg.function([a], mg.grad((mg.tanh(a) * s).sum(), s))
    (fused,) = [n for n in f.nodes if isinstance(n.op, MulReduceLike)]
    inputs, outputs = fused.op.inner_graph(fused)
    assert [v.name for v in inputs] == ["a", "b", "shape"]  # x's shape, as a value
    assert [type(n.op).__name__ for n in mg.toposort(outputs)] == ["Binary", "ReduceLike"]
    inner = mg.function(inputs, outputs[0], backend="numpy")
    rng = np.random.default_rng(0)
    av, bv, xv = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), np.array([5, 1])
    np.testing.assert_allclose(inner(av, bv, xv), (av * bv).sum(axis=1, keepdims=True))
    assert all(n.op.inner_graph(n) is None for n in f.nodes if n is not fused)
