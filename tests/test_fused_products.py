"""Several CSR products sharing one gather (``FusedCSRGatherSums``) and their gradient written
straight into de-duplicated rows (``FusedCSRScatterSums``), against their definitions.

* kernels: ``kernels.reference.fused_products`` and the Numba versions in
  ``kernels.cpu.fused`` against a dense SciPy oracle: float32 and float64, empty rows,
  duplicate columns within and across rows, width-1 gradients broadcast, trusted calls; bad
  input refused with a message and the slot map left clean;
* Ops: the gradient of ``FusedCSRGatherSums`` (built directly) equals the dense formula;
* rewrites: a graph with ``X @ V``, ``square(X) @ V**2`` and ``X @ V**2`` (broadcast
  weights on top) compiled on each backend and on the jit linker equals the NumPy reference
  backend unfused, loss and parameters after SGD steps; ``debugprint`` shows the fused
  nodes; a failing call leaves every parameter bitwise unchanged.

The jit functions are compiled once per dtype (module fixture): each is one Numba compile.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from minigrad.ops.fused_products import FusedCSRGatherSums, FusedCSRScatterSums

FLOATS = [np.float32, np.float64]


def _tol(dtype):
    return dict(rtol=3e-5, atol=3e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


@pytest.fixture(params=["reference", "cpu"])
def kern(request):
    name = "kernels.reference.fused_products" if request.param == "reference" else \
        "kernels.cpu.fused"
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"{name} unavailable: {exc}")


def _batch(seed, n_rows, V, dtype):
    """CSR parts with empty rows and duplicate columns in and across rows."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, n_rows)
    counts[0] = 0  # an empty row, always
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    indices = rng.integers(0, max(V // 2, 1), indptr[-1]).astype(np.int32)
    if indptr[-1] >= 2:
        indices[1] = indices[0]  # a duplicate inside a row (or across two)
    data = rng.uniform(-2.0, 2.0, indptr[-1]).astype(dtype)
    return indptr, indices, data


def _dense(indptr, indices, data, V):
    return sp.csr_matrix((data.astype(np.float64), indices, indptr),
                         shape=(len(indptr) - 1, V)).toarray()  # duplicates summed


@pytest.mark.parametrize("dtype", FLOATS)
def test_gather_sums_equal_the_dense_products(kern, dtype):
    indptr, indices, data = _batch(0, 7, 12, dtype)
    T = np.random.default_rng(1).standard_normal((12, 3)).astype(dtype)
    datas = [data, data * data, data]
    outs = kern.csr_gather_sums(indptr, indices, datas, T, [1, 2, 2])
    X, X2 = _dense(indptr, indices, data, 12), _dense(indptr, indices, data * data, 12)
    T64 = T.astype(np.float64)
    for out, want in zip(outs, (X @ T64, X2 @ T64 ** 2, X @ T64 ** 2)):
        assert out.dtype == dtype and out.shape == (7, 3)
        np.testing.assert_allclose(out, want, **_tol(dtype))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("narrow", [False, True], ids=["wide", "width1"])
def test_scatter_sums_equal_the_dense_gradient(kern, dtype, narrow):
    indptr, indices, data = _batch(2, 6, 10, dtype)
    rng = np.random.default_rng(3)
    T = rng.standard_normal((10, 4)).astype(dtype)
    G0 = rng.standard_normal((6, 4)).astype(dtype)
    G1 = rng.standard_normal((6, 1 if narrow else 4)).astype(dtype)
    G2 = rng.standard_normal((6, 4)).astype(dtype)
    datas, coefs, powers = [data, data * data, data], [1.0, 2.0, -0.5], [0, 1, 2]
    slot = np.full(10, -1, np.int32)
    args = (indptr, indices, datas, [G0, G1, G2], T, coefs, powers)
    unique, rows = kern.csr_scatter_sums(*args, slot) if kern.__name__.endswith("cpu.fused") \
        else kern.csr_scatter_sums(*args)
    X, X2 = _dense(indptr, indices, data, 10), _dense(indptr, indices, data * data, 10)
    T64 = T.astype(np.float64)
    dense = X.T @ G0 + 2.0 * (X2.T @ np.broadcast_to(G1, (6, 4))) * T64 \
        - 0.5 * (X.T @ G2) * T64 ** 2
    assert np.array_equal(unique, np.unique(indices)) and unique.dtype == np.int64
    assert rows.dtype == dtype
    np.testing.assert_allclose(rows, dense[unique], **_tol(dtype))
    assert (slot == -1).all()  # reset after the call


def test_fast_kernels_equal_the_reference_trusted_or_not():
    import kernels.reference.fused_products as ref

    cpu = pytest.importorskip("kernels.cpu.fused", reason="Numba kernels unavailable")
    indptr, indices, data = _batch(4, 9, 16, np.float64)
    rng = np.random.default_rng(5)
    T = rng.standard_normal((16, 5))
    grads = [rng.standard_normal((9, 5)), rng.standard_normal((9, 5))]
    want = ref.csr_gather_sums(indptr, indices, [data, data ** 2], T, [1, 2])
    u_ref, r_ref = ref.csr_scatter_sums(indptr, indices, [data, data ** 2], grads, T,
                                        [2.0, -1.0], [1, 0])
    for trusted in (False, True):
        got = cpu.csr_gather_sums(indptr, indices, [data, data ** 2], T, [1, 2], trusted)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
        u, r = cpu.csr_scatter_sums(indptr, indices, [data, data ** 2], grads, T,
                                    [2.0, -1.0], [1, 0], np.full(16, -1, np.int32), trusted)
        assert np.array_equal(u, u_ref)
        np.testing.assert_allclose(r, r_ref, rtol=1e-13, atol=1e-13)


def test_empty_batch(kern):
    indptr, indices, data = np.zeros(4, np.int32), np.zeros(0, np.int32), np.zeros(0)
    T = np.ones((5, 2))
    outs = kern.csr_gather_sums(indptr, indices, [data, data], T, [1, 2])
    assert [o.shape for o in outs] == [(3, 2), (3, 2)] and not any(o.any() for o in outs)
    unique, rows = kern.csr_scatter_sums(indptr, indices, [data], [np.ones((3, 2))], T,
                                         [1.0], [1])
    assert unique.shape == (0,) and rows.shape == (0, 2)


def test_bad_input_is_refused_and_the_slot_map_stays_clean(kern):
    indptr, indices, data = _batch(6, 5, 8, np.float64)
    T, G = np.ones((8, 3)), [np.ones((5, 3))]
    with pytest.raises(ValueError, match="powers"):
        kern.csr_gather_sums(indptr, indices, [data], T, [3])
    with pytest.raises(ValueError, match="products but"):
        kern.csr_gather_sums(indptr, indices, [data, data], T, [1])
    with pytest.raises(ValueError, match="data 1"):
        kern.csr_gather_sums(indptr, indices, [data, data[:-1]], T, [1, 1])
    with pytest.raises(IndexError):
        kern.csr_gather_sums(indptr, indices, [data], np.ones((2, 3)), [1])
    with pytest.raises(ValueError, match="gradient 0"):
        kern.csr_scatter_sums(indptr, indices, [data], [np.ones((4, 3))], T, [1.0], [0])
    with pytest.raises(ValueError, match="width 1"):  # no term reaches the table's width
        kern.csr_scatter_sums(indptr, indices, [data], [np.ones((5, 1))], T, [1.0], [0])
    if kern.__name__.endswith("cpu.fused"):
        slot = np.full(8, -1, np.int32)
        with pytest.raises(ValueError):
            kern.csr_scatter_sums(indptr, indices, [data], [np.ones((5, 2))], T, [1.0], [0],
                                  slot)
        assert (slot == -1).all()
    del G


# --- the Ops ----------------------------------------------------------------------------


def _csr(seed, n_rows, V, dtype=np.float64):
    indptr, indices, data = _batch(seed, n_rows, V, dtype)
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, V))


def test_gather_sums_gradient_is_the_dense_formula(backend):
    X, T = mg.csr_matrix("X"), mg.matrix("T")
    A, B = mg.matrix("A"), mg.matrix("B")
    xv, x2v2 = FusedCSRGatherSums((1, 2))(T, X, mg.sparse.square(X))
    cost = (xv * A).sum() + (x2v2 * B).sum()
    (g,) = mg.grad(cost, [T])
    f = mg.function([X, T, A, B], [xv, x2v2, g.to_dense()], backend=backend)
    rng = np.random.default_rng(7)
    Xv, Tv = _csr(8, 6, 11), rng.standard_normal((11, 3))
    Av, Bv = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    got_xv, got_x2v2, got_g = f(Xv, Tv, Av, Bv)
    Xd = Xv.toarray()
    np.testing.assert_allclose(got_xv, Xd @ Tv, rtol=1e-12)
    np.testing.assert_allclose(got_x2v2, (Xd ** 2) @ Tv ** 2, rtol=1e-12)
    np.testing.assert_allclose(got_g, Xd.T @ Av + 2 * ((Xd ** 2).T @ Bv) * Tv,
                               rtol=1e-11, atol=1e-12)


def test_ops_refuse_batches_of_another_pattern_or_width():
    X, X2, T = mg.csr_matrix("X"), mg.csr_matrix("X2"), mg.matrix("T")
    f = mg.function([X, X2, T], list(FusedCSRGatherSums((1, 2))(T, X, X2)), backend="numpy")
    with pytest.raises(ValueError, match="one sparsity pattern"):
        f(_csr(1, 4, 9), _csr(2, 4, 9), np.ones((9, 2)))
    with pytest.raises(ValueError, match="X has 9 columns but T has 8 rows"):
        f(_csr(1, 4, 9), _csr(1, 4, 9), np.ones((8, 2)))
    with pytest.raises(ValueError, match="powers"):
        FusedCSRGatherSums((3,))
    with pytest.raises(ValueError, match="one coefficient"):
        FusedCSRScatterSums("float64", (1.0,), (0, 1))


# --- the rewrites, on every backend and the jit linker --------------------------------------


def _three_products(dtype, mode):
    """``X @ V``, ``square(X) @ V**2`` and ``X @ V**2`` (one gather of ``V``), broadcast
    weights ``a`` (k,) on top; SGD on ``V`` and ``a``."""
    rng = np.random.default_rng(0)
    V = mg.shared((0.3 * rng.standard_normal((30, 4))).astype(dtype), name="V")
    a = mg.shared(rng.uniform(0.5, 1.5, 4).astype(dtype), name="a")
    X, y = mg.csr_matrix("X", dtype), mg.vector("y", dtype)
    xv = mg.sparse.dot(X, V)
    x2v2 = mg.sparse.dot(mg.sparse.square(X), V ** 2)
    xv2 = mg.sparse.dot(X, V ** 2)
    s = (0.5 * (xv ** 2 - x2v2) * a).sum(axis=1) + (xv2 * a).sum(axis=1) * 0.1
    cost = ((s - y) ** 2).mean()
    fn = mg.function([X, y], cost, updates=mg.optim.SGD([V, a], lr=0.05).updates(cost),
                     mode=mode)
    return fn, (V, a)


def _batches(dtype, n=3):
    rng = np.random.default_rng(9)
    return [(_csr(20 + k, 8, 30, dtype), rng.standard_normal(8).astype(dtype))
            for k in range(n)]


def _run(dtype, mode):
    fn, params = _three_products(dtype, mode)
    losses = [fn(*b) for b in _batches(dtype)]
    return fn, losses, [p.get_value() for p in params], params


def _node_types(fn):
    return {type(n.op).__name__ for n in fn.nodes}


MODES = {"generated": dict(), "jit": dict(linker="jit")}


@pytest.fixture(scope="module", params=["float32"])
def jit_runs(request):
    """The three-products step on the jit linker, in float32 (one cold segment compile).
    float64 on the jit linker: the FM step of ``test_jit_linker`` (fused, the same two
    nodes' emitters); both dtypes of the kernels, and of this step on the generated linker
    and the reference, above."""
    pytest.importorskip("numba", reason="the jit linker needs Numba")
    if mg.config.backend != "numba":
        pytest.skip("MINIGRAD_BACKEND is not numba: the jit linker is not used")
    return request.param, _run(request.param, mg.Mode(backend="numba", linker="jit"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_three_products_fused_equal_the_reference_unfused(backend, dtype):
    ref = _run(dtype, mg.Mode(backend="numpy", exclude=("fuse",)))
    fused = _run(dtype, mg.Mode(backend=backend))
    assert {"FusedCSRGatherSums", "FusedCSRScatterSums"} <= _node_types(fused[0])
    assert not {"Take", "SlotTakeGrad", "TakeGrad"} & _node_types(fused[0])
    tol = _tol(np.dtype(dtype).type)
    np.testing.assert_allclose(fused[1], ref[1], **tol)
    for p, q in zip(fused[2], ref[2]):
        np.testing.assert_allclose(p, q, **tol)


def test_three_products_on_the_jit_linker_equal_the_reference(jit_runs):
    dtype, (fn, losses, values, _) = jit_runs
    ref = _run(dtype, mg.Mode(backend="numpy", exclude=("fuse",)))
    assert {"FusedCSRGatherSums", "FusedCSRScatterSums"} <= _node_types(fn)
    assert len(fn._safe_run.segments) == 1
    for dispatcher in fn._safe_run.compiled:  # helpers called by address, none linked in
        for cres in dispatcher.overloads.values():
            linked = [lib.name for lib in cres.library._linking_libraries]
            assert linked in ([], ["nrt"]), f"linked into the segment: {linked}"
    tol = _tol(np.dtype(dtype).type)
    np.testing.assert_allclose(losses, ref[1], **tol)
    for p, q in zip(values, ref[2]):
        np.testing.assert_allclose(p, q, **tol)


def test_a_failing_jit_call_raises_the_reference_error_and_changes_nothing(jit_runs):
    dtype, (fn, _, _, params) = jit_runs
    before = [p.get_value().copy() for p in params]
    with pytest.raises(ValueError, match="X has 31 columns but V has 30 rows"):
        fn(_csr(3, 8, 31, dtype), np.zeros(8, dtype))
    for p, b in zip(params, before):
        assert np.array_equal(p.get_value(), b)
    fn(*_batches(dtype, 1)[0])  # and the function still works


def test_debugprint_shows_the_fused_products(capsys):
    fn, _ = _three_products("float64", mg.Mode(backend="numpy"))
    mg.debugprint(fn)
    out = capsys.readouterr().out
    assert "FusedCSRGatherSums{powers=(1, 2, 2)}.0" in out
    assert "FusedCSRScatterSums{" in out and "X0'(G0*T^" in out


def test_gpu_kernels_equal_the_reference():
    import kernels.reference.fused_products as ref

    cp = pytest.importorskip("cupy", reason="CuPy not installed")
    try:
        gpu = importlib.import_module("kernels.gpu.fused_products")
    except Exception as exc:  # no device, or no working CUDA
        pytest.skip(f"kernels.gpu unavailable: {exc}")
    indptr, indices, data = _batch(11, 9, 14, np.float64)
    rng = np.random.default_rng(12)
    T = rng.standard_normal((14, 3))
    grads = [rng.standard_normal((9, 3)), rng.standard_normal((9, 1))]
    datas = [data, data * data]
    for got, want in zip(gpu.csr_gather_sums(indptr, indices, [cp.asarray(d) for d in datas],
                                             cp.asarray(T), [1, 2]),
                         ref.csr_gather_sums(indptr, indices, datas, T, [1, 2])):
        np.testing.assert_allclose(got.get(), want, rtol=1e-12, atol=1e-12)
    u, r = gpu.csr_scatter_sums(indptr, indices, [cp.asarray(d) for d in datas],
                                [cp.asarray(g) for g in grads], cp.asarray(T), [2.0, 1.0],
                                [1, 0])
    u_ref, r_ref = ref.csr_scatter_sums(indptr, indices, datas, grads, T, [2.0, 1.0], [1, 0])
    assert np.array_equal(u.get(), u_ref)
    np.testing.assert_allclose(r.get(), r_ref, rtol=1e-12, atol=1e-12)


# --- two products: the kernels without stacked copies (kernels.cpu.fused._*2) -------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_two_product_kernels_are_the_general_loops_bitwise(dtype):
    """``_gather_sums2`` / ``_scatter_sums2`` (and its unsorted twin) give the general
    loops' results bit for bit: every power, a width-1 gradient on either side."""
    cpu = pytest.importorskip("kernels.cpu.fused", reason="Numba kernels unavailable")
    indptr, indices, data = _batch(11, 9, 16, dtype)
    rng = np.random.default_rng(12)
    T = rng.standard_normal((16, 5)).astype(dtype)
    d0, d1 = data, (data * data + 0.5).astype(dtype)
    stacked = np.stack([d0, d1])
    for powers in [(1, 2), (2, 1), (1, 1)]:
        want = np.zeros((2, 9, 5), dtype)
        cpu._gather_sums(indptr, indices, stacked, np.array(powers), T, want)
        got0, got1 = np.zeros((9, 5), dtype), np.zeros((9, 5), dtype)
        cpu._gather_sums2(indptr, indices, d0, d1, *powers, T, got0, got1)
        assert got0.tobytes() == want[0].tobytes() and got1.tobytes() == want[1].tobytes()
    slot = np.full(16, -1, np.int32)
    coefs = np.array([2.0, -0.5], dtype)
    for powers, widths in [((1, 0), (5, 5)), ((0, 2), (1, 5)), ((2, 1), (5, 1)),
                           ((0, 1), (1, 1))]:
        g0, g1 = (rng.standard_normal((9, w)).astype(dtype) for w in widths)
        u, want = cpu._scatter_sums(indptr, indices, stacked, cpu.stack_grads([g0, g1], 5, dtype),
                                    coefs, np.array(powers), T, slot)
        args = (indptr, indices, d0, d1, g0, g1, coefs[0], coefs[1], *powers, T, slot)
        u2, got = cpu._scatter_sums2(*args)
        assert np.array_equal(u2, u) and got.tobytes() == want.tobytes()
        u3, got3 = cpu._scatter_sums2_any_order(*args)
        order = np.argsort(u3)
        assert np.array_equal(u3[order], u) and got3[order].tobytes() == want.tobytes()
        assert got.dtype == dtype and (slot == -1).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_two_product_gather_of_a_large_table_is_the_general_loop_bitwise(dtype):
    """A table above ``rows.CSR_PREFETCH_MIN_BYTES``: ``_gather_sums2`` asks for its rows
    ahead (entries near the end of the batch included), and still gives the general
    loop's sums bit for bit."""
    cpu = pytest.importorskip("kernels.cpu.fused", reason="Numba kernels unavailable")
    rng = np.random.default_rng(13)
    rows = pytest.importorskip("kernels.cpu.rows")
    n_rows = rows.CSR_PREFETCH_MIN_BYTES // (8 * np.dtype(dtype).itemsize) + 1000
    T = rng.standard_normal((n_rows, 8)).astype(dtype)
    assert T.nbytes > rows.CSR_PREFETCH_MIN_BYTES
    indptr, indices, data = _batch(14, 40, 2 * n_rows, dtype)
    assert indices.shape[0] > rows.CSR_PREFETCH_ENTRIES and indices.max() > n_rows // 2
    d1 = (data * data).astype(dtype)
    want = np.zeros((2, 40, 8), dtype)
    cpu._gather_sums(indptr, indices, np.stack([data, d1]), np.array([1, 2]), T, want)
    got0, got1 = np.zeros((40, 8), dtype), np.zeros((40, 8), dtype)
    cpu._gather_sums2(indptr, indices, data, d1, 1, 2, T, got0, got1)
    assert got0.tobytes() == want[0].tobytes() and got1.tobytes() == want[1].tobytes()
