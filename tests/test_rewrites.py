"""Rewrites change how a graph runs, never what it computes."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from minigrad.ops.elemwise import MulReduceLike
from minigrad.ops.indexing import Take
from minigrad.rewrite import REGISTRY


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


def test_fusion_happens_in_the_masked_embedding_gradient():
    model = mg.models.MaskedEmbeddingClassifier(50, 8, 3, seed=0)
    tokens, mask, y = mg.lmatrix("t"), mg.matrix("m"), mg.lvector("y")
    f = mg.function([tokens, mask, y], mg.grad(model.cost(tokens, mask, y), model.M))
    assert "MulReduceLike" in _ops(f)


def test_fm_products_share_one_gather():
    fm = mg.models.FactorizationMachine(30, 4, seed=0)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    f = mg.function([X, y], fm.cost(X, y), backend="numpy")
    gathers_of_v = [n for n in f.nodes if isinstance(n.op, Take) and n.inputs[0] is fm.V]
    assert len(gathers_of_v) == 1
    Xv = sp.random(6, 30, density=0.2, format="csr", random_state=0)
    assert np.isfinite(f(Xv, np.ones(6)))


def test_each_rewrite_is_registered_once_and_named():
    names = [name for name, _, _ in REGISTRY]
    assert len(names) == len(set(names))
    for expected in ("merge", "constant_folding", "take_through_elemwise", "shape_only_inputs",
                     "csr_pattern", "merge_take_grads", "fuse_mul_reduce", "simplify"):
        assert expected in names
    assert MulReduceLike.shape_only_inputs == (2,)


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
    unmerged = [r for r in REGISTRY if r[0] != "merge_take_grads"]
    saved = list(REGISTRY)
    try:
        REGISTRY[:] = unmerged
        reference = mg.function([X, y], g, backend="numpy")(Xv, yv)
    finally:
        REGISTRY[:] = saved
    np.testing.assert_allclose(got.to_dense(), reference.to_dense(), rtol=1e-12, atol=1e-15)
