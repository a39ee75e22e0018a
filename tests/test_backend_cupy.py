"""The CuPy backend gives the NumPy backend's values and gradients (GPU only).

Skipped with a reason where CuPy or a CUDA device is missing. On a GPU machine:
``python -m pytest -m gpu tests/test_backend_cupy.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _need_gpu():
    from minigrad.backends import get_backend

    try:
        get_backend("cupy")
    except ImportError as err:
        pytest.skip(f"CuPy backend unavailable: {err}")


def _cost_table(rng):
    """(name, inputs, values, cost, params) for a few representative cost functions."""
    cases = []
    E = mg.shared(rng.standard_normal((50, 8)), name="E")
    W = mg.shared(rng.standard_normal((8, 3)), name="W")
    tok, mask, y = mg.lmatrix("tok"), mg.matrix("mask"), mg.lvector("y")
    doc = (E[tok] * mask.reshape((4, 6, 1))).sum(axis=1)
    cost = mg.nn.cross_entropy(doc @ W, y)
    vals = [rng.integers(0, 50, (4, 6)), (rng.random((4, 6)) > 0.3).astype(float),
            rng.integers(0, 3, 4)]
    cases.append(("embedding-bag softmax", [tok, mask, y], vals, cost, [E, W]))

    V = mg.shared(rng.standard_normal((30, 4)), name="V")
    X = mg.csr_matrix("X")
    fm = 0.5 * ((mg.sparse.dot(X, V) ** 2) - mg.sparse.dot(mg.sparse.square(X), V ** 2)).sum()
    Xv = sp.random(10, 30, density=0.2, format="csr", random_state=1)
    cases.append(("fm pairwise", [X], [Xv], mg.tanh(fm), [V]))

    a = mg.matrix("a")
    lse = mg.logsumexp(a @ mg.transpose(a), axis=1).mean() + mg.sigmoid(a).max()
    cases.append(("logsumexp", [a], [rng.standard_normal((5, 4))], lse, []))
    return cases


def _dense(g):
    return g.to_dense() if isinstance(g, mg.RowSparse) else np.asarray(g)


@pytest.mark.parametrize("case", range(3))
def test_cupy_matches_numpy(case):
    rng = np.random.default_rng(case)
    name, inputs, values, cost, params = _cost_table(rng)[case]
    wrt = params + [i for i in inputs if isinstance(i.type, mg.TensorType)
                    and i.dtype.startswith("float")]
    grads = mg.grad(cost, wrt)
    ref = mg.function(inputs, [cost] + grads, backend="numpy")(*values)
    gpu = mg.function(inputs, [cost] + grads, backend="cupy")(*values)
    for r, g in zip(ref, gpu):
        np.testing.assert_allclose(_dense(g), _dense(r), rtol=1e-9, atol=1e-10, err_msg=name)


def test_cupy_sgd_updates_stay_on_device():
    rng = np.random.default_rng(0)
    E = mg.shared(rng.standard_normal((100, 4)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    step = mg.function([idx], cost, updates=[(E, E - 0.1 * mg.grad(cost, E).to_dense())],
                       backend="cupy")
    expected = E.get_value()
    for _ in range(3):
        i = rng.integers(0, 100, 7)
        step(i)
        g = np.zeros_like(expected)
        np.add.at(g, i, 2 * expected[i])
        expected -= 0.1 * g
    np.testing.assert_allclose(E.get_value(), expected, rtol=1e-12)
    assert hasattr(E.get_value(borrow=True), "__cuda_array_interface__")
    assert isinstance(E.get_value(), np.ndarray)


def test_cupy_bad_index_raises_before_update():
    E = mg.shared(np.ones((10, 2)), name="E")
    idx = mg.lvector("idx")
    cost = E[idx].sum()
    step = mg.function([idx], cost, updates=[(E, E * 2.0)], backend="cupy")
    with pytest.raises(IndexError, match="idx"):
        step(np.array([1, 10]))
    np.testing.assert_array_equal(E.get_value(), np.ones((10, 2)))
