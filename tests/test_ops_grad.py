"""``mg.verify_grad`` on every differentiable Op (float64), backend parity of the same
graphs, the inner-product identity <v, J u> = <J^T v, u>, and float32 end to end."""
from __future__ import annotations

import operator

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from minigrad.ops import expand_dims

R = np.random.default_rng(7)


def n(*shape):
    return R.standard_normal(shape)


def pos(*shape):
    return np.abs(R.standard_normal(shape)) + 0.5


IDX1 = mg.constant(np.array([0, 2, 2, 5]))
IDX2 = mg.constant(np.array([[1, 2], [3, 3], [0, 5]]))
IDX0 = mg.constant(np.array(4))
LABELS = mg.constant(np.array([0, 3, 1, 3, 2]))
CLASS_W = np.array([0.5, 1.0, 2.0, 3.0])

# (id, fn(*symbols) -> symbolic tensor, points)
CASES = [
    *[(f"unary-{name}", getattr(mg, name), [n(3, 4)])
      for name in ["exp", "tanh", "sigmoid", "relu", "softplus", "abs", "square"]],
    ("unary-log", mg.log, [pos(3, 4)]),
    ("unary-sqrt", mg.sqrt, [pos(3, 4)]),
    ("unary-log1p", mg.log1p, [pos(3, 4)]),
    ("unary-neg", operator.neg, [n(3, 4)]),
    ("sigmoid-large", lambda x: mg.sigmoid(x * 30.0), [n(3, 4)]),
]
for opname in ["add", "sub", "mul", "truediv", "pow"]:
    f = getattr(operator, opname)
    for sa, sb in [((3, 4), (3, 4)), ((3, 4), (4,)), ((4,), (3, 4)), ((3, 4), (3, 1)),
                   ((3, 1), (3, 4)), ((3, 1), (1, 4)), ((3, 4), ())]:
        a = pos(*sa) if opname == "pow" else n(*sa)
        b = pos(*sb) if opname == "truediv" else n(*sb)
        CASES.append((f"{opname}-{sa}-{sb}", f, [a, b]))
CASES += [
    ("pow-python-scalar", lambda x: x ** 3, [n(3, 4)]),
    ("pow-square", lambda x: x ** 2, [n(3, 4)]),
    ("rpow", lambda x: 2.0 ** x, [n(3, 4)]),
    ("scalar-arith", lambda x: 3.0 - 2.0 * x / 4.0 + 1.0 / (x * x + 1.0), [n(3, 4)]),
    ("maximum", mg.maximum, [n(3, 4), n(4)]),
    ("minimum", mg.minimum, [n(3, 1), n(1, 4)]),
    ("maximum-const", lambda x: mg.maximum(x, 0.1), [n(3, 4)]),
    ("where", lambda a, b: mg.where(a > 0, a, b), [n(3, 4), n(4)]),
    ("where-bcast-cond", lambda a: mg.where(mg.constant(np.array([True, False, True])), a, 0.0),
     [n(2, 3)]),
    ("cast-f64-f64", lambda x: mg.cast(x, "float64") * 2.0, [n(3, 4)]),
    ("astype", lambda x: x.astype("float64") ** 2, [n(3, 4)]),
]
for red in ["sum", "mean", "max"]:
    for axis in [None, 0, 1, -1, (0, 2)]:
        for keepdims in [False, True]:
            CASES.append((
                f"{red}-{axis}-{keepdims}",
                lambda x, r=red, a=axis, k=keepdims: getattr(mg, r)(x, axis=a, keepdims=k),
                [n(2, 3, 4)],
            ))
CASES += [
    ("method-sum", lambda x: x.sum(axis=1), [n(3, 4)]),
    ("method-mean", lambda x: x.mean(), [n(3, 4)]),
    ("method-max", lambda x: x.max(axis=0, keepdims=True), [n(3, 4)]),
    ("reshape", lambda x: x.reshape((2, 6)), [n(3, 4)]),
    ("reshape-minus1", lambda x: mg.reshape(x, (-1,)), [n(3, 4)]),
    ("reshape-3d", lambda x: x.reshape(4, 1, 3), [n(3, 4)]),
    ("T", lambda x: x.T, [n(3, 4)]),
    ("transpose-axes", lambda x: mg.transpose(x, (1, 2, 0)), [n(2, 3, 4)]),
    ("expand_dims", lambda x: expand_dims(x, 1), [n(3, 4)]),
    ("expand_dims-many", lambda x: expand_dims(x, (0, 2)), [n(3, 4)]),
    ("concatenate-0", lambda a, b: mg.concatenate([a, b], axis=0), [n(3, 4), n(2, 4)]),
    ("concatenate-1", lambda a, b, c: mg.concatenate([a, b, c], axis=1),
     [n(3, 4), n(3, 1), n(3, 2)]),
    ("concatenate-neg", lambda a, b: mg.concatenate([a, b], axis=-1), [n(2, 3, 2), n(2, 3, 1)]),
    ("stack-0", lambda a, b: mg.stack([a, b]), [n(3, 4), n(3, 4)]),
    ("stack-last", lambda a, b: mg.stack([a, b], axis=-1), [n(3, 4), n(3, 4)]),
    ("slice", lambda x: x[1:, ::2], [n(3, 4)]),
    ("slice-int", lambda x: x[1], [n(3, 4)]),
    ("slice-negative", lambda x: x[:, -1], [n(3, 4)]),
    ("slice-newaxis", lambda x: x[None, 1:, 2], [n(3, 4)]),
    ("slice-ellipsis", lambda x: x[..., 1:3], [n(2, 3, 4)]),
    ("slice-reverse", lambda x: x[::-1], [n(3, 4)]),
]
for sa in [(4,), (3, 4), (2, 3, 4)]:
    for sb in [(4,), (4, 5)]:
        CASES.append((f"matmul-{sa}-{sb}", operator.matmul, [n(*sa), n(*sb)]))
CASES += [
    ("mg.matmul", mg.matmul, [n(2, 3, 4), n(4, 2)]),
    ("dot-mv", mg.dot, [n(3, 4), n(4)]),
    ("dot-vv", mg.dot, [n(4), n(4)]),
    ("dot-mm", mg.dot, [n(3, 4), n(4, 2)]),
    ("outer", mg.outer, [n(4), n(3)]),
]
for axis in [-1, 0]:
    CASES += [
        (f"softmax-{axis}", lambda x, a=axis: mg.softmax(x, axis=a), [n(3, 4)]),
        (f"log_softmax-{axis}", lambda x, a=axis: mg.log_softmax(x, axis=a), [n(3, 4)]),
        (f"logsumexp-{axis}", lambda x, a=axis: mg.logsumexp(x, axis=a), [n(3, 4)]),
        (f"logsumexp-{axis}-keep", lambda x, a=axis: mg.logsumexp(x, axis=a, keepdims=True),
         [n(3, 4)]),
    ]
CASES += [
    ("softmax-3d", lambda x: mg.softmax(x, axis=1), [n(2, 3, 4)]),
    ("softmax-large", lambda x: mg.softmax(x * 100.0), [n(3, 4)]),
    ("nn.softmax", mg.nn.softmax, [n(3, 4)]),
    ("nn.logsumexp", mg.nn.logsumexp, [n(3, 4)]),
    ("cross_entropy", lambda x: mg.nn.cross_entropy(x, LABELS), [n(5, 4)]),
    ("cross_entropy-weights", lambda x: mg.nn.cross_entropy(x, LABELS, weights=CLASS_W),
     [n(5, 4)]),
    ("cross_entropy-weights-var", lambda x, w: mg.nn.cross_entropy(x, LABELS, weights=w),
     [n(5, 4), pos(4)]),
    ("take-1d", lambda e: e[IDX1], [n(6, 3)]),
    ("take-2d", lambda e: e[IDX2], [n(6, 3)]),
    ("take-0d", lambda e: e[IDX0], [n(6, 3)]),
    ("take-rank3-table", lambda e: e[IDX1], [n(6, 2, 3)]),
    ("take-vector-table", lambda e: e[IDX2], [n(6)]),
    ("take-twice", lambda e: e[IDX1] * e[IDX0], [n(6, 3)]),
    ("take-and-dense", lambda e: e[IDX1].sum() + (e * e).sum(), [n(6, 3)]),
    ("take-of-elemwise", lambda e: (e ** 2)[IDX1] + mg.exp(e)[IDX2].sum(), [n(6, 3)]),
    ("take-numpy-index", lambda e: mg.ops.take(e, np.array([1, 1, 0])), [n(6, 3)]),
]


@pytest.mark.parametrize("fn,points", [pytest.param(c[1], c[2], id=c[0]) for c in CASES])
def test_verify_grad(fn, points):
    mg.verify_grad(fn, points, rng=0)


CSR = sp.random(5, 6, density=0.4, random_state=3, format="csr")
CSR_EMPTY_ROW = sp.csr_matrix((np.array([2.0, -1.0]), np.array([1, 4]), np.array([0, 1, 1, 2])),
                              shape=(3, 6))


def _fd_grad(f, w, eps=1e-6):
    g = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        d = np.zeros_like(w)
        d[i] = eps
        g[i] = (f(w + d) - f(w - d)) / (2 * eps)
    return g


@pytest.mark.parametrize("X", [CSR, CSR_EMPTY_ROW, sp.csr_array(CSR)], ids=["csr", "empty-row",
                                                                        "csr_array"])
def test_sparse_dot_grad_matches_finite_differences(X, backend):
    Xs, W = mg.csr_matrix("X"), mg.matrix("W")
    proj = R.standard_normal((X.shape[0], 3))
    cost = (mg.sparse.dot(Xs, W) * mg.constant(proj)).sum() + (mg.sparse.dot(Xs, W) ** 2).sum()
    gW = mg.grad(cost, W)
    assert isinstance(gW.type, mg.RowSparseType)
    f = mg.function([Xs, W], cost, backend=backend)
    fg = mg.function([Xs, W], gW, backend=backend)
    w = R.standard_normal((6, 3))
    g = fg(X, w)
    assert isinstance(g, mg.RowSparse)
    np.testing.assert_allclose(g.to_dense(), _fd_grad(lambda v: f(X, v), w), atol=1e-6)
    np.testing.assert_allclose(f(X, w), (np.asarray((X @ w) * proj).sum()
                                         + ((X @ w) ** 2).sum()), rtol=1e-12)
    # only the stored columns of X are rows of the gradient
    assert set(g.coalesce().indices) == set(np.unique(X.indices))


@pytest.mark.parametrize("fn,points", [
    pytest.param(c[1], c[2], id=c[0]) for c in CASES
    if c[0].split("-")[0] in ("add", "mul", "pow", "matmul", "take", "softmax", "cross_entropy",
                              "concatenate", "where", "max", "slice")
])
def test_backends_agree(fn, points):
    """The same graph and its gradient give the same numbers on numpy and numba."""
    pytest.importorskip("numba")
    syms = [mg.tensor(f"x{i}", "float64", (None,) * p.ndim) for i, p in enumerate(points)]
    out = fn(*syms)
    cost = out.sum() if out.ndim else out
    grads = mg.grad(cost, syms)
    results = [mg.function(syms, [out] + grads, backend=b)(*points) for b in ("numpy", "numba")]
    for a, b in zip(*results):
        a = a.to_dense() if isinstance(a, mg.RowSparse) else a
        b = b.to_dense() if isinstance(b, mg.RowSparse) else b
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_verify_grad_cast_through_float32():
    """float32 rounding needs a larger step; the function is linear so that is exact."""
    mg.verify_grad(lambda x: mg.cast(mg.cast(x, "float32"), "float64") * 2.0, [n(3, 4)],
                   rng=0, eps=1e-2, tol=1e-4)
    mg.verify_grad(lambda x: mg.cast(x, "float32") * 2.0, [n(3, 4)], rng=0, eps=1e-2, tol=1e-4)


def test_cast_to_int_has_no_gradient():
    x = mg.vector("x")
    with pytest.raises(mg.DisconnectedInputError):
        mg.grad(mg.cast(x, "int64").sum() * 1.0, x)


def test_matmul_rejects_unsupported_ranks():
    with pytest.raises(TypeError, match="matmul"):
        mg.tensor3() @ mg.tensor3()
    with pytest.raises(ValueError, match="inner dimensions"):
        mg.tensor(shape=(2, 3)) @ mg.tensor(shape=(4, 5))


# -------------------------------------------------------------------- <v, J u> = <J^T v, u>

IDENTITY_CASES = [
    ("softmax", lambda x: mg.softmax(x), (4, 5)),
    ("log_softmax", lambda x: mg.log_softmax(x, axis=0), (4, 5)),
    ("matmul", lambda x: x @ mg.constant(n(5, 3)), (4, 5)),
    ("take", lambda x: x[IDX2] * 2.0, (6, 5)),
    ("pow-broadcast", lambda x: (x ** 2) * mg.constant(n(5)) + mg.tanh(x), (4, 5)),
    ("logsumexp", lambda x: mg.logsumexp(x, axis=1), (4, 5)),
]


@pytest.mark.parametrize("fn,shape", [pytest.param(c[1], c[2], id=c[0]) for c in IDENTITY_CASES])
def test_inner_product_identity(fn, shape, backend):
    """J u by central differences against J^T v from mg.grad: <v, J u> == <J^T v, u>."""
    x = mg.tensor("x", "float64", (None,) * len(shape))
    y = fn(x)
    f = mg.function([x], y, backend=backend)
    x0, u = n(*shape), n(*shape)
    eps = 1e-6
    ju = (f(x0 + eps * u) - f(x0 - eps * u)) / (2 * eps)
    v = n(*ju.shape)
    vjp = mg.grad((y * mg.constant(v)).sum(), x)
    jtv = mg.function([x], vjp, backend=backend)(x0)
    jtv = jtv.to_dense() if isinstance(jtv, mg.RowSparse) else jtv
    np.testing.assert_allclose(np.sum(v * ju), np.sum(jtv * u), rtol=1e-7, atol=1e-8)


def test_inner_product_identity_sparse_dot(backend):
    Xs, W = mg.csr_matrix("X"), mg.matrix("W")
    y = mg.sparse.dot(Xs, W)
    f = mg.function([Xs, W], y, backend=backend)
    w, u = n(6, 3), n(6, 3)
    ju = (f(CSR, w + 1e-6 * u) - f(CSR, w - 1e-6 * u)) / 2e-6
    v = n(*ju.shape)
    jtv = mg.function([Xs, W], mg.grad((y * mg.constant(v)).sum(), W), backend=backend)(CSR, w)
    np.testing.assert_allclose(np.sum(v * ju), np.sum(jtv.to_dense() * u), rtol=1e-7)


# -------------------------------------------------------------------------------- float32


def _float_nodes(fn):
    return {(str(node.op), o.dtype) for node in fn.nodes for o in node.outputs
            if o.dtype.startswith("float")}


@pytest.mark.parametrize("expr", [
    lambda x, W, E, i, y: x * 2.0,
    lambda x, W, E, i, y: x ** 2,
    lambda x, W, E, i, y: x ** 2.0,
    lambda x, W, E, i, y: 1.0 / (x * x + 1.0) - 3 * x,
    lambda x, W, E, i, y: mg.sqrt(x * x + 1.0).mean(axis=0),
    lambda x, W, E, i, y: mg.softmax(x @ W),
    lambda x, W, E, i, y: mg.nn.cross_entropy(x @ W, y),
    lambda x, W, E, i, y: mg.nn.cross_entropy(x @ W, y, weights=np.array([1.0, 2.0])),
    lambda x, W, E, i, y: mg.logsumexp(x, axis=1) + mg.maximum(x, 0.0).max(axis=1),
    lambda x, W, E, i, y: (E[i] ** 2).mean() * 0.5 + (E ** 2)[i].sum(),
    lambda x, W, E, i, y: mg.where(x > 0, x, 0.1 * x),
], ids=["mul-scalar", "pow-int", "pow-float", "mixed", "mean", "softmax", "ce", "ce-w",
        "lse-max", "take", "where"])
def test_float32_stays_float32(expr, backend, float32):
    rng = np.random.default_rng(0)
    x, y, i = mg.matrix("x"), mg.ivector("y"), mg.lvector("i")
    assert x.dtype == "float32"
    W = mg.shared(rng.standard_normal((3, 2)).astype(np.float32), "W")
    E = mg.shared(rng.standard_normal((10, 3)).astype(np.float32), "E")
    out = expr(x, W, E, i, y)
    assert out.dtype == "float32"
    cost = out.sum() if out.ndim else out
    grads = mg.grad(cost, [x, W, E], disconnected="zero")
    assert all(g.dtype == "float32" for g in grads)
    f = mg.function([x, i, y], [out] + grads, backend=backend)
    assert all(d == "float32" for _, d in _float_nodes(f)), _float_nodes(f)
    values = f(rng.standard_normal((4, 3)).astype(np.float32), np.array([1, 2, 2]),
               np.array([0, 1, 1, 0], dtype=np.int32))
    for v in values:
        assert (v.values if isinstance(v, mg.RowSparse) else v).dtype == np.float32


def test_float32_verify_grad():
    x = R.standard_normal((3, 4)).astype(np.float32)
    mg.verify_grad(lambda a: mg.softmax(a * 2.0) + a ** 2, [x], rng=0)


def test_float64_input_with_python_scalars_stays_float64():
    x = mg.vector("x", dtype="float64")
    assert (x * 2).dtype == "float64" and (x ** 2).dtype == "float64"
    assert (mg.ivector() * 2.0).dtype.startswith("float")
    assert (mg.ivector() * 2).dtype == "int32"
