"""Fused sparse path: kernels, Ops and rewrites against their unfused definitions.

* kernels: ``kernels.reference.fused`` and ``kernels.cpu.fused`` against a plain
  NumPy/SciPy oracle (dense ``X @ (T * F)`` and its dense gradient), duplicates, empty
  batches, float32 and float64, the slot map left clean even after a refused call;
* Ops: ``verify_grad`` of ``FusedCSRGatherSum`` through its row-sparse gradient;
* rewrites: the masked-embedding classifier (per-dimension and per-word mask), ``sparse.dot``
  with a vector scale and the FM compiled with and without the ``"fuse"`` rewrites, on the
  reference and the Numba backend, give the same losses and parameters after several
  optimizer steps; a bad call leaves every parameter and optimizer state bitwise unchanged.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
import minigrad.rewrite_fusion  # noqa: F401  (registers the fusion rewrites on any backend)
from minigrad.ops.fused import FusedCSRGatherSum, SlotTakeGrad, scatter_grad

IMPLS = ["reference", "cpu"]
FLOATS = [np.float32, np.float64]


def classifier(vocab, dim, n_classes, per_dimension=True, **kw):
    """``MaskedEmbeddingClassifier`` with ``M`` (vocab, dim) or (vocab, 1), spelled as this
    checkout's model takes it (``mask_kind``, or the older ``vector_mask``)."""
    import inspect

    cls = mg.models.MaskedEmbeddingClassifier
    if "mask_kind" in inspect.signature(cls).parameters:
        kw["mask_kind"] = "per_dimension" if per_dimension else "per_word"
    else:
        kw["vector_mask"] = per_dimension
    return cls(vocab, dim, n_classes, **kw)


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


@pytest.fixture(params=IMPLS)
def kern(request):
    try:
        return importlib.import_module(f"kernels.{request.param}.fused")
    except ImportError as exc:
        pytest.skip(f"kernels.{request.param} unavailable: {exc}")


#: the kernels' index dtype in their direct tests: int32 (SciPy's, what compiled steps pass)
#: and int64 (SciPy's for big matrices) each once, tied to a float dtype. Every (index,
#: float) pair is one more cold Numba compile of each kernel, seconds apiece.
INDEX_DTYPE = {np.float32: np.int32, np.float64: np.int64}


def _batch(seed, n_rows, V, dtype, nnz_per_row=6, index_dtype=np.int64):
    """A CSR batch with duplicate columns in and across rows (bags of words do)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, nnz_per_row + 1, n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(index_dtype)
    indices = rng.integers(0, max(V // 2, 1), indptr[-1]).astype(index_dtype)  # many repeats
    data = rng.uniform(0.5, 2.0, indptr[-1]).astype(dtype)
    return indptr, indices, data


def _dense(indptr, indices, data, V):
    X = np.zeros((len(indptr) - 1, V))
    for r in range(len(indptr) - 1):
        for k in range(indptr[r], indptr[r + 1]):
            X[r, indices[k]] += data[k]
    return X


# --- kernels -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("factor", ["none", "column", "full", "self"])
@pytest.mark.parametrize("n_rows", [0, 1, 7])
def test_gather_mul_sum_matches_dense_product(kern, dtype, factor, n_rows):
    V, D = 11, 4
    rng = np.random.default_rng(3)
    indptr, indices, data = _batch(n_rows, n_rows, V, dtype, index_dtype=INDEX_DTYPE[dtype])
    T = rng.standard_normal((V, D)).astype(dtype)
    F = {"none": None, "column": rng.standard_normal((V, 1)).astype(dtype),
         "full": rng.standard_normal((V, D)).astype(dtype), "self": T}[factor]
    out = kern.csr_gather_mul_sum(indptr, indices, data, T, F)
    expected = _dense(indptr, indices, data, V) @ (T if F is None else T * F)
    assert out.dtype == dtype and out.shape == (n_rows, D)
    np.testing.assert_allclose(out, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("factor", ["none", "column", "full", "dot"])
@pytest.mark.parametrize("n_rows", [0, 1, 7])
def test_scatter_grad_rows_match_dense_gradient(kern, dtype, factor, n_rows):
    V, D = 11, 4
    rng = np.random.default_rng(4)
    indptr, indices, data = _batch(10 + n_rows, n_rows, V, dtype,
                                   index_dtype=INDEX_DTYPE[dtype])
    G = rng.standard_normal((n_rows, D)).astype(dtype)
    F = {"none": None, "column": rng.standard_normal((V, 1)).astype(dtype),
         "full": rng.standard_normal((V, D)).astype(dtype),
         "dot": rng.standard_normal((V, D)).astype(dtype)}[factor]
    width = 1 if factor == "dot" else D
    slot = kern.new_slot_map(V)
    unique, rows = kern.csr_scatter_grad_rows(indptr, indices, data, G, V, F, width, slot)
    X = _dense(indptr, indices, data, V)
    dense = X.T @ G  # gradient of sum(G * (X @ (T * F))) w.r.t. T * F
    if factor == "dot":
        dense = (dense * F).sum(axis=1, keepdims=True)
    elif F is not None:
        dense = dense * F
    assert np.array_equal(unique, np.unique(indices)) and unique.dtype == np.int64
    np.testing.assert_allclose(rows, dense[unique], **_tol(dtype))
    assert rows.dtype == dtype and (slot == -1).all()


@pytest.mark.parametrize("factor", ["column", "full"])
def test_gather_and_scatter_over_a_table_above_the_prefetch_size(kern, factor):
    """A table (and factor) bigger than ``CSR_PREFETCH_MIN_BYTES``: the Numba loops ask for
    the rows of an entry 16 ahead, up to the last entry (a batch shorter than the distance
    too); the results are the dense oracle's, and bitwise those of the same rows in a table
    small enough not to prefetch (the same arithmetic in the same order)."""
    from kernels.cpu.rows import CSR_PREFETCH_ENTRIES, CSR_PREFETCH_MIN_BYTES

    dtype, D = np.float32, 64
    V = CSR_PREFETCH_MIN_BYTES // (D * 4) + 100
    rng = np.random.default_rng(5)
    T = rng.standard_normal((V, D)).astype(dtype)
    F = rng.standard_normal((V, 1 if factor == "column" else D)).astype(dtype)
    assert T.nbytes > CSR_PREFETCH_MIN_BYTES and (factor == "column" or F.nbytes > T.nbytes - 1)
    for n_rows, per_row in ((5, 40), (1, CSR_PREFETCH_ENTRIES // 2)):
        indptr, indices, data = _batch(n_rows, n_rows, V, dtype, per_row, np.int32)
        indices[:3] = V - 1  # the last row too
        G = rng.standard_normal((n_rows, D)).astype(dtype)
        X = _dense(indptr, indices, data, V)
        out = kern.csr_gather_mul_sum(indptr, indices, data, T, F)
        np.testing.assert_allclose(out, X @ (T * F), **_tol(dtype))
        unique, rows = kern.csr_scatter_grad_rows(indptr, indices, data, G, V, F, D)
        np.testing.assert_allclose(rows, ((X.T @ G) * F)[unique], **_tol(dtype))
        # the touched rows alone, renumbered: a table under the prefetch size
        small = np.searchsorted(unique, indices).astype(np.int32)
        out_small = kern.csr_gather_mul_sum(indptr, small, data, T[unique], F[unique])
        u_small, rows_small = kern.csr_scatter_grad_rows(indptr, small, data, G, len(unique),
                                                         F[unique], D)
        assert np.array_equal(out, out_small) and np.array_equal(rows, rows_small)
        assert np.array_equal(u_small, np.arange(len(unique)))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [0, 1, 40])
def test_slot_coalesce_matches_coalesce_rows(kern, dtype, n):
    rng = np.random.default_rng(n)
    idx = rng.integers(0, 9, n)
    values = rng.standard_normal((n, 2, 3)).astype(dtype)
    slot = kern.new_slot_map(9)
    unique, summed = kern.slot_coalesce_rows(idx, values, 9, slot)
    dense = np.zeros((9, 2, 3))
    np.add.at(dense, idx, values)
    assert np.array_equal(unique, np.unique(idx))
    np.testing.assert_allclose(summed, dense[unique], **_tol(dtype))
    assert (slot == -1).all()


def test_kernels_refuse_bad_input_and_leave_the_slot_map_clean(kern):
    indptr, indices, data = _batch(0, 3, 10, np.float64)
    G, slot = np.ones((3, 2)), kern.new_slot_map(10)
    bad = indices.copy()
    bad[-1] = 10
    with pytest.raises(IndexError, match="index 10"):
        kern.csr_scatter_grad_rows(indptr, bad, data, G, 10, None, None, slot)
    with pytest.raises(IndexError, match="index -1"):
        kern.slot_coalesce_rows(np.array([0, -1]), np.ones((2, 2)), 10, slot)
    with pytest.raises(ValueError, match="width"):
        kern.csr_scatter_grad_rows(indptr, indices, data, G, 10, np.ones((10, 3)), None, slot)
    with pytest.raises(ValueError, match="indptr"):
        kern.csr_gather_mul_sum(indptr[:-1], indices, data, np.ones((10, 2)))
    assert (slot == -1).all()
    unique, _ = kern.csr_scatter_grad_rows(indptr, indices, data, G, 10, None, None, slot)
    assert np.array_equal(unique, np.unique(indices))


# --- Ops -----------------------------------------------------------------------------------


def _csr(seed, n_rows, V, dtype=np.float64):
    indptr, indices, data = _batch(seed, n_rows, V, dtype)
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, V))


@pytest.mark.parametrize("factor_shape", [None, (9, 3), (9, 1), (9,)])
def test_fused_gather_sum_gradients_match_finite_differences(backend, factor_shape):
    X = mg.csr_matrix("X", "float64")
    T, F = mg.matrix("T"), (None if factor_shape is None else mg.tensor(
        "F", "float64", (None,) * len(factor_shape)))
    out = FusedCSRGatherSum()(X, T, F) if F is not None else FusedCSRGatherSum()(X, T)
    wrt = [T] if F is None else [T, F]
    cost = (out * out).sum()
    grads = [g.to_dense() if mg.ops.is_row_sparse(g) else g for g in mg.grad(cost, wrt)]
    rng = np.random.default_rng(0)
    Xv = _csr(5, 4, 9)
    values = [rng.standard_normal((9, 3))] + ([] if F is None else
                                              [rng.standard_normal(factor_shape)])
    f = mg.function([X, *wrt], [cost, *grads], backend=backend)
    cost_v, *grad_v = f(Xv, *values)
    eps = 1e-6
    for value, g in zip(values, grad_v):
        flat = value.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = f(Xv, *values)[0]
            flat[i] = old - eps
            down = f(Xv, *values)[0]
            flat[i] = old
            assert abs((up - down) / (2 * eps) - g.reshape(-1)[i]) < 1e-5 * (1 + abs(g).max())


def test_scatter_grad_value_is_coalesced_and_sorted(backend):
    X, gz, T = mg.csr_matrix("X", "float64"), mg.matrix("gz"), mg.matrix("T")
    f = mg.function([X, gz, T], scatter_grad(X, gz, T), backend=backend)
    Xv = _csr(1, 5, 20)
    value = f(Xv, np.ones((5, 2)), np.zeros((20, 2)))
    assert value._coalesced and np.array_equal(value.indices, np.unique(Xv.indices))
    np.testing.assert_allclose(value.to_dense(), Xv.T @ np.ones((5, 2)))


def test_fused_ops_name_the_mismatched_input(backend):
    X, T = mg.csr_matrix("X", "float64"), mg.matrix("T")
    f = mg.function([X, T], FusedCSRGatherSum()(X, T), backend=backend)
    with pytest.raises(ValueError, match="X' has 20 columns but 'T' has 7 rows|X has 20"):
        f(_csr(1, 3, 20), np.ones((7, 2)))


def test_slot_take_grad_rejects_a_rank_2_index():
    with pytest.raises(TypeError, match="1-D integer index"):
        SlotTakeGrad("float64")(mg.matrix("T").shape, mg.lmatrix("i"), mg.tensor3("r"))


# --- rewrites: whole steps, fused against unfused ------------------------------------------


def compile_step(inputs, cost, updates, backend, fuse):
    """``mg.function`` with the ``"fuse"`` rewrites on or off (through ``mg.Mode``)."""
    mode = mg.Mode(backend=backend, exclude=() if fuse else ("fuse",))
    return mg.function(inputs, cost, updates=updates, mode=mode)


def classifier_step(dtype, vector_mask, backend, fuse, optimizer="adam"):
    model = classifier(50, 6, 3, vector_mask, seed=0, dtype=dtype)
    tokens, mask, labels = mg.lmatrix("tokens"), mg.matrix("mask", dtype), mg.lvector("y")
    cost = model.cost(tokens, mask, labels)
    opt = (mg.optim.Adam(model.params, lr=0.05) if optimizer == "adam"
           else mg.optim.Momentum(model.params, lr=0.1, sparse="exact"))
    fn = compile_step([tokens, mask, labels], cost, opt.updates(cost), backend, fuse)
    return fn, model, opt


def documents(seed, batch, V=50, length=7, dtype="float64"):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V // 3, (batch, length))  # many repeated words
    mask = (rng.random((batch, length)) < 0.7).astype(dtype) * rng.uniform(0.5, 1.5)
    return tokens, mask.astype(dtype), rng.integers(0, 3, batch)


def _node_types(fn):
    return {type(n.op).__name__ for n in fn.nodes}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("vector_mask", [True, False])
@pytest.mark.parametrize("optimizer", ["adam", "exact momentum"])
def test_classifier_step_fused_equals_unfused(backend, dtype, vector_mask, optimizer):
    fused, m_fused, _ = classifier_step(dtype, vector_mask, backend, True, optimizer)
    plain, m_plain, _ = classifier_step(dtype, vector_mask, backend, False, optimizer)
    if optimizer == "adam":
        assert {"FusedCSRGatherSum", "FusedCSRScatterGrad"} <= _node_types(fused)
        assert "Take" not in _node_types(fused)
    else:  # exact mode reads caught-up copies of the rows (FreshTake): only the scatter
        assert "SlotTakeGrad" in _node_types(fused)
    assert "TakeGrad" not in _node_types(fused)
    assert not {"FusedCSRGatherSum", "FusedCSRScatterGrad"} & _node_types(plain)
    assert len(fused.nodes) < len(plain.nodes)
    tol = _tol(np.dtype(dtype).type)
    for step in range(4):
        batch = documents(step, 0 if step == 2 else 5, dtype=dtype)  # step 2: empty batch
        if step == 2:
            continue  # an empty batch has a NaN mean loss in both graphs
        np.testing.assert_allclose(fused(*batch), plain(*batch), **tol)
    for p, q in zip(m_fused.params, m_plain.params):
        np.testing.assert_allclose(p.get_value(), q.get_value(), **tol)


def test_classifier_all_padding_documents_touch_no_rows(backend):
    fused, model, _ = classifier_step("float64", True, backend, True, optimizer="exact momentum")
    E0 = model.E.get_value()
    tokens, mask, labels = documents(0, 4)
    fused(tokens, np.zeros_like(mask), labels)
    assert np.array_equal(model.E.get_value(), E0)  # no token is real: no row moves


@pytest.mark.parametrize("bad", ["token", "label", "mask shape"])
def test_failed_fused_call_changes_nothing(backend, bad):
    fn, model, opt = classifier_step("float64", True, backend, True,
                                     optimizer="exact momentum")
    fn(*documents(0, 5))
    before = [p.get_value() for p in model.params]
    state = opt.state_dict()
    tokens, mask, labels = documents(1, 5)
    if bad == "token":
        tokens[1, 0], mask[1, 0] = 50, 1.0
    elif bad == "label":
        labels[0] = 3
    else:
        mask = mask[:, :-1]
    with pytest.raises((IndexError, ValueError)):
        fn(tokens, mask, labels)
    for p, b in zip(model.params, before):
        assert np.array_equal(p.get_value(), b)
    after = opt.state_dict()
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(after[key], value), key
    # the slot maps stay clean: the next good call equals an unfused graph's
    plain, m_plain, _ = classifier_step("float64", True, backend, False,
                                        optimizer="exact momentum")
    plain(*documents(0, 5))
    np.testing.assert_allclose(fn(*documents(2, 5)), plain(*documents(2, 5)), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale_shape", ["vector", "column"])
def test_sparse_dot_with_scale_fused_equals_unfused(backend, dtype, scale_shape):
    results = []
    for fuse in (True, False):
        rng = np.random.default_rng(0)
        W = mg.shared(rng.standard_normal((30, 4)).astype(dtype), name="W")
        s_shape = (30,) if scale_shape == "vector" else (30, 1)
        s = mg.shared(rng.uniform(0.5, 1.5, s_shape).astype(dtype), name="s")
        X = mg.csr_matrix("X", dtype)
        cost = (mg.sparse.dot(X, W, scale=s) ** 2).sum()
        fn = compile_step([X], cost, mg.optim.SGD([W, s], lr=0.01).updates(cost), backend, fuse)
        if fuse:
            assert {"FusedCSRGatherSum", "FusedCSRScatterGrad"} <= _node_types(fn)
        losses = [fn(_csr(k, 6, 30, dtype)) for k in range(3)]
        results.append((losses, W.get_value(), s.get_value()))
    tol = _tol(np.dtype(dtype).type)
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tol)


def fm_step(dtype, backend, fuse):
    model = mg.models.FactorizationMachine(40, 4, seed=0, dtype=dtype, init_std=0.3)
    X, y = mg.csr_matrix("X", dtype), mg.vector("y", dtype)
    cost = model.cost(X, y)
    fn = compile_step([X, y], cost, mg.optim.SGD(model.params, lr=0.1).updates(cost),
                      backend, fuse)
    return fn, model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fm_step_fused_equals_unfused(backend, dtype):
    fused, m_fused = fm_step(dtype, backend, True)
    plain, m_plain = fm_step(dtype, backend, False)
    # w: one product (FusedCSRGatherSum / FusedCSRScatterGrad); V: two products sharing
    # one gather, X @ V and X**2 @ V**2 (FusedCSRGatherSums / FusedCSRScatterSums)
    assert {"FusedCSRGatherSum", "FusedCSRGatherSums"} <= _node_types(fused)
    assert {"FusedCSRScatterGrad", "FusedCSRScatterSums"} <= _node_types(fused)
    assert "SlotTakeGrad" not in _node_types(fused) and "Take" not in _node_types(fused)
    rng = np.random.default_rng(1)
    tol = _tol(np.dtype(dtype).type)
    for k in range(4):
        Xv = _csr(k, 8, 40, dtype)
        y = (rng.random(8) < 0.5).astype(dtype)
        np.testing.assert_allclose(fused(Xv, y), plain(Xv, y), **tol)
    for p, q in zip(m_fused.params, m_plain.params):
        np.testing.assert_allclose(p.get_value(), q.get_value(), **tol)
    b0 = [p.get_value() for p in m_fused.params]
    with pytest.raises(ValueError, match="columns"):
        fused(_csr(9, 8, 41, dtype), np.zeros(8, dtype))
    for p, b in zip(m_fused.params, b0):
        assert np.array_equal(p.get_value(), b)


def test_fuse_rewrites_can_be_switched_off_one_by_one():
    from minigrad.rewrite import DB, rewrite

    for name in ("fuse_csr_gather_sum", "fuse_csr_gather_sums", "fuse_csr_scatter_grad",
                 "fuse_elemwise"):
        assert {"default", "fuse", name} <= DB[name].tags and DB[name].phase == "fuse"
    model = classifier(20, 3, 2, seed=0)
    tokens, mask = mg.lmatrix("t"), mg.matrix("m")
    out = model.document_vectors(tokens, mask)
    only_backward = rewrite([out], exclude=("fuse_csr_gather_sum",))
    assert "FusedCSRGatherSum" not in {type(n.op).__name__ for n in mg.toposort(only_backward)}
    fused = rewrite([out])
    assert "FusedCSRGatherSum" in {type(n.op).__name__ for n in mg.toposort(fused)}


def test_a_returned_gradient_is_not_coalesced_behind_the_users_back(backend):
    model = classifier(20, 3, 2, seed=0)
    tokens, mask, labels = mg.lmatrix("t"), mg.matrix("m"), mg.lvector("y")
    gE = mg.grad(model.cost(tokens, mask, labels), model.E)
    f = mg.function([tokens, mask, labels], gE, backend=backend)
    value = f(np.array([[1, 1, 2]]), np.ones((1, 3)), np.array([0]))
    assert len(value.indices) == 3  # one stored row per real token, as TakeGrad gives


# --- element-wise chains -------------------------------------------------------------------

from minigrad.ops.elemwise import BINARY_TABLE, UNARY_TABLE  # noqa: E402
from minigrad.ops.fused import FusedElemwise  # noqa: E402


def _compile_outputs(inputs, outputs, backend, fuse):
    return compile_step(inputs, outputs, None, backend, fuse)


def _fused_nodes(fn):
    return [n for n in fn.nodes if isinstance(n.op, FusedElemwise)]


def _positive(name):
    return name in ("log", "sqrt", "log1p", "pow")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(UNARY_TABLE))
def test_every_unary_op_fuses_and_matches_the_reference(backend, dtype, name):
    x, y = mg.matrix("x", dtype), mg.vector("y", dtype)
    op = mg.ops.Unary(name)
    out = op(x * y + 0.5) * 2.0 - y  # broadcast (n, d) against (d,)
    fused = _compile_outputs([x, y], out, backend, True)
    plain = _compile_outputs([x, y], out, backend, False)
    assert len(_fused_nodes(fused)) == 1 and not _fused_nodes(plain)
    rng = np.random.default_rng(0)
    xv = rng.uniform(0.1, 2.0, (4, 3)).astype(dtype)
    yv = rng.uniform(0.1, 2.0, 3).astype(dtype)
    if name in ("relu", "abs", "sign"):
        xv -= 1.0
    got, want = fused(xv, yv), plain(xv, yv)
    assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == (4, 3)
    np.testing.assert_allclose(got, want, rtol=3e-6 if dtype == "float32" else 1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(BINARY_TABLE))
def test_every_binary_op_fuses_and_matches_the_reference(backend, dtype, name):
    x, y = mg.matrix("x", dtype), mg.matrix("y", dtype)
    op = mg.ops.Binary(name)
    inner = op(mg.exp(x), y + 1.0)
    out = mg.where(inner, x, y) if inner.dtype == "bool" else inner * 3.0
    fused = _compile_outputs([x, y], out, backend, True)
    plain = _compile_outputs([x, y], out, backend, False)
    assert len(_fused_nodes(fused)) == 1
    rng = np.random.default_rng(1)
    xv = rng.uniform(-1, 1, (5, 1)).astype(dtype)  # broadcast (5, 1) against (1, 4)
    yv = rng.uniform(0, 2, (1, 4)).astype(dtype)
    got, want = fused(xv, yv), plain(xv, yv)
    assert got.dtype == want.dtype and got.shape == want.shape == (5, 4)
    np.testing.assert_allclose(got, want, rtol=3e-6 if dtype == "float32" else 1e-13)


def test_fused_chain_keeps_dtypes_casts_and_scalar_constants(backend):
    x, t = mg.vector("x", "float32"), mg.tensor("t", "int64", ())
    out = mg.cast(mg.cast(x > 0.5, "float32") * x + 1e-3, "float64") / mg.cast(t + 1,
                                                                                "float64")
    fused = _compile_outputs([x, t], out, backend, True)
    plain = _compile_outputs([x, t], out, backend, False)
    xv = np.linspace(0, 1, 7, dtype=np.float32)
    got, want = fused(xv, np.int64(3)), plain(xv, np.int64(3))
    assert got.dtype == want.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-7)
    assert fused(np.zeros(0, np.float32), np.int64(1)).shape == (0,)  # empty batch


def test_fused_values_never_alias_inputs_and_intermediates_read_elsewhere_stay(backend):
    x = mg.vector("x")
    e = mg.exp(x)
    out = [e * 2.0 + 1.0, e.sum()]  # e is read by the reduction: not absorbed
    fn = _compile_outputs([x], out, backend, True)
    xv = np.arange(3.0)
    a, s = fn(xv)
    np.testing.assert_allclose(a, np.exp(xv) * 2 + 1)
    np.testing.assert_allclose(s, np.exp(xv).sum())
    assert a is not xv and not np.shares_memory(a, xv)


def test_fused_node_shows_its_inner_graph():
    x, y = mg.vector("x"), mg.vector("y")
    fn = _compile_outputs([x, y], mg.exp(x * y) - y, "numpy", True)
    (node,) = _fused_nodes(fn)
    assert len(node.op.inner_inputs) == 2 and len(node.op.inner_outputs) == 1
    assert "exp" in mg.debugprint(node.op.inner_outputs[0], print_=False)
    assert "FusedElemwise{exp" in mg.debugprint(fn, print_=False)
    same = _compile_outputs([x, y], mg.exp(x * y) - y, "numpy", True)
    assert _fused_nodes(same)[0].op == node.op  # equal inner graphs give equal Ops


def test_generated_kernels_are_cached_on_disk(tmp_path, monkeypatch):
    pytest.importorskip("numba")
    from minigrad.backends import numba_fused

    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba_fused, "_KERNELS", {})
    x = mg.vector("x")
    fn = _compile_outputs([x], mg.tanh(x) * 3.0 + 0.25, "numba", True)
    np.testing.assert_allclose(fn(np.ones(2)), np.tanh(1.0) * 3 + 0.25)
    written = list((tmp_path / "fused_elemwise").glob("fused_*.py"))
    assert len(written) == 1 and "def kernel(n, a0, s0)" in written[0].read_text()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_fused_kernels_match_the_reference(dtype):
    try:
        import cupy

        import kernels.gpu.fused as gpu
    except ImportError as exc:
        pytest.skip(f"kernels.gpu unavailable: {exc}")
    import kernels.reference.fused as ref

    V, D = 13, 4
    rng = np.random.default_rng(0)
    indptr, indices, data = _batch(2, 6, V, dtype)
    T = rng.standard_normal((V, D)).astype(dtype)
    G = rng.standard_normal((6, D)).astype(dtype)
    dev = cupy.asarray
    for F in (None, rng.standard_normal((V, 1)).astype(dtype), T):
        np.testing.assert_allclose(
            gpu.csr_gather_mul_sum(dev(indptr), dev(indices), dev(data), dev(T),
                                   None if F is None else dev(F)).get(),
            ref.csr_gather_mul_sum(indptr, indices, data, T, F), **_tol(dtype))
        u, r = gpu.csr_scatter_grad_rows(dev(indptr), dev(indices), dev(data), dev(G), V,
                                         None if F is None else dev(F))
        u_ref, r_ref = ref.csr_scatter_grad_rows(indptr, indices, data, G, V, F)
        assert np.array_equal(u.get(), u_ref)
        np.testing.assert_allclose(r.get(), r_ref, **_tol(dtype))
    u, s = gpu.slot_coalesce_rows(dev(indices), dev(G[:1].repeat(len(indices), 0)), V)
    u_ref, s_ref = ref.slot_coalesce_rows(indices, G[:1].repeat(len(indices), 0), V)
    assert np.array_equal(u.get(), u_ref)
    np.testing.assert_allclose(s.get(), s_ref, **_tol(dtype))


def test_cost_rule_a_gather_shared_by_several_products_is_not_fused():
    """``shared_gathers``: the FM's ``V[cols]`` serves ``X @ V`` and ``X**2 @ V**2``; fused
    one by one, each product would read ``V``'s rows again at random, so they are never
    fused one by one: together they become one ``FusedCSRGatherSums`` (each row read once),
    and without that rewrite they stay one gather. ``w``'s rows serve one product."""
    from minigrad.ops.fused_products import FusedCSRGatherSums
    from minigrad.rewrite_fusion import shared_gathers

    fused, _ = fm_step("float64", "numpy", True)
    tables = [n.inputs[1].name for n in fused.nodes if isinstance(n.op, FusedCSRGatherSum)]
    assert tables == ["fm_w"]
    multi = [n for n in fused.nodes if isinstance(n.op, FusedCSRGatherSums)]
    assert [(n.inputs[0].name, n.op.powers) for n in multi] == [("fm_V", (1, 2))]
    model = mg.models.FactorizationMachine(40, 4, seed=0)
    Xs, ys = mg.csr_matrix("X"), mg.vector("y")
    cost = model.cost(Xs, ys)
    apart = mg.function([Xs, ys], cost, updates=mg.optim.SGD(model.params, 0.1).updates(cost),
                        mode=mg.Mode(backend="numpy", exclude=("fuse_csr_gather_sums",)))
    tables = [n.inputs[1].name for n in apart.nodes if isinstance(n.op, FusedCSRGatherSum)]
    assert tables == ["fm_w"]
    gathers = [n for n in apart.nodes if type(n.op).__name__ == "Take"]
    assert any(n.inputs[0].name == "fm_V" for n in gathers)
    # the rule itself, on the graph as the fuse phase sees it (one gather after merge)
    fm = mg.models.FactorizationMachine(40, 4, seed=0)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    f = mg.function([X, y], fm.cost(X, y), mode=mg.Mode(backend="numpy", exclude=("fuse",)))
    assert {t.name for t, _ in shared_gathers(f.graph_outputs)} == {"fm_V"}
