"""The generated linker runs exactly what the VM runs: same values, same atomicity."""
from __future__ import annotations

import traceback

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg

LINKERS = ["generated", "vm"]
#: the atomicity tests also run the jit linker (compiled Numba segments, linker_jit.py)
ATOMIC_LINKERS = LINKERS + ["jit"]


def _fm_step(linker, backend, opt_factory):
    fm = mg.models.FactorizationMachine(40, 4, seed=0)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = fm.cost(X, y)
    opt = opt_factory(fm.params)
    step = mg.function([X, y], cost, updates=opt.updates(cost),
                       mode=mg.Mode(backend=backend, linker=linker))
    return fm, step


def _batches(n=4):
    for k in range(n):
        Xv = sp.random(8, 40, density=0.15, format="csr", random_state=k)
        yield Xv, (np.arange(8) % 2).astype(float)


OPTIMIZERS = {
    "sgd": lambda p: mg.optim.SGD(p, lr=0.1),
    "adam_lazy": lambda p: mg.optim.Adam(p, lr=0.05),
    "momentum_exact": lambda p: mg.optim.Momentum(p, lr=0.05, sparse="exact"),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_generated_step_equals_the_vm_and_the_reference(opt, backend):
    pytest.importorskip("numba") if backend == "numba" else None
    runs = {}
    for linker, be in (("vm", "numpy"), ("generated", backend)):
        fm, step = _fm_step(linker, be, OPTIMIZERS[opt])
        losses = [step(Xv, yv) for Xv, yv in _batches()]
        runs[linker] = (losses, [p.get_value() for p in fm.params])
    (l_vm, p_vm), (l_gen, p_gen) = runs["vm"], runs["generated"]
    np.testing.assert_allclose(l_gen, l_vm, rtol=1e-10)
    for a, b in zip(p_gen, p_vm):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("linker", LINKERS)
def test_broadcasting_multiple_outputs_and_dense_updates(linker):
    rng = np.random.default_rng(0)
    w = mg.shared(rng.standard_normal((1, 3)), name="w")
    x = mg.matrix("x")
    h = mg.tanh(x * w + 1.0)
    cost = (h ** 2).mean()
    g = mg.grad(cost, w)
    f = mg.function([x], [cost, h, g], updates=[(w, w - 0.1 * g)],
                    mode=mg.Mode(linker=linker, backend="numpy"))
    xv = rng.standard_normal((4, 3))
    w0 = w.get_value()
    c, hv, gv = f(xv)
    np.testing.assert_allclose(hv, np.tanh(xv * w0 + 1.0))
    np.testing.assert_allclose(c, (np.tanh(xv * w0 + 1.0) ** 2).mean())
    np.testing.assert_allclose(w.get_value(), w0 - 0.1 * gv)


def test_generated_source_is_straight_line_and_readable():
    x = mg.vector("x")
    f = mg.function([x], mg.exp(x).sum() + 1.0)
    src = f._safe_run.source
    assert src.startswith("def safe_phase(v0):")
    assert "for " not in src and "exp" in src and "return" in src
    assert f.mode.linker == "generated"


def test_a_failure_in_generated_code_points_at_the_node():
    E = mg.shared(np.zeros((5, 2)), name="E")
    idx = mg.lvector("idx")
    f = mg.function([idx], (mg.exp(E[idx * 2]) + 1.0).sum(), backend="numpy")
    with pytest.raises(IndexError) as info:
        f(np.array([1, 3]))
    text = "".join(traceback.format_exception(info.value))
    assert "minigrad generated safe_phase" in text and "Take" in text


@pytest.mark.parametrize("linker", ATOMIC_LINKERS)
def test_a_failed_exact_mode_call_leaves_state_bitwise_unchanged(linker):
    rng = np.random.default_rng(1)
    E = mg.shared(rng.standard_normal((10, 3)), name="E")
    W = mg.shared(rng.standard_normal((3, 4)), name="W")
    idx, y = mg.lvector("idx"), mg.lvector("y")
    cost = mg.nn.cross_entropy(E[idx] @ W, y)
    opt = mg.optim.Momentum([E, W], lr=0.1, sparse="exact")
    step = mg.function([idx, y], cost, updates=opt.updates(cost),
                       mode=mg.Mode(linker=linker))
    for k in range(3):
        step(np.array([k, k + 1]), np.array([0, 1]))
    tables = [E, W, opt.t] + [v for st in opt.state for v in st.values()] + [
        v for v in opt.last if v is not None]
    before = [np.array(v.value, copy=True) for v in tables]
    with pytest.raises(IndexError):
        # row 0 has two pending steps: the forward gather catches it up, then the bad
        # label fails; the catch-up must not be visible
        step(np.array([0, 1]), np.array([0, 9]))
    after = [v.value for v in tables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dense_read", [False, True], ids=["gather", "dense-read"])
@pytest.mark.parametrize("failure", ["nan_guard", "error_after_catch_up"])
@pytest.mark.parametrize("linker", ATOMIC_LINKERS)
def test_a_call_failing_after_the_catch_up_puts_the_rows_back(linker, failure, dense_read):
    """Exact mode catches rows up as they are read: a gather through ``FreshTake`` (a copy),
    a dense read through ``CatchUpAll``, which writes E, its momentum and ``last`` in the
    safe phase. A NaN (nan_guard) or an error in a later node must leave them bitwise
    unchanged (the compiler's undo log, ``undo.py``)."""
    rng = np.random.default_rng(1)
    E = mg.shared(rng.standard_normal((10, 3)), name="E")
    W = mg.shared(rng.standard_normal((3, 4)), name="W")
    idx, y, s, extra = mg.lvector("idx"), mg.lvector("y"), mg.scalar("s"), mg.vector("extra")
    cost = mg.nn.cross_entropy(E[idx] @ W, y) * s + extra.reshape((2,)).sum() * 0.0
    opt = mg.optim.Momentum([E, W], lr=0.1, sparse="exact")
    # a monitored norm reads every row of E (its gradient stays row-sparse)
    outputs = [cost, (E ** 2).sum()] if dense_read else cost
    step = mg.function([idx, y, s, extra], outputs, updates=opt.updates(cost),
                       nan_guard=True, mode=mg.Mode(linker=linker))
    for k in range(3):
        step(np.array([k, k + 1]), np.array([0, 1]), 1.0, np.zeros(2))
    tables = [E, W, opt.t] + [v for st in opt.state for v in st.values()] + [
        v for v in opt.last if v is not None]
    before = [np.array(v.value, copy=True) for v in tables]
    if failure == "nan_guard":
        with pytest.raises(FloatingPointError):
            step(np.array([0, 1]), np.array([0, 1]), np.nan, np.zeros(2))
    else:
        with pytest.raises(ValueError, match="reshape"):
            step(np.array([0, 1]), np.array([0, 1]), 1.0, np.zeros(3))
    for a, v in zip(before, tables):
        np.testing.assert_array_equal(a, v.value)
    if dense_read:
        assert any(type(n.op).__name__ == "CatchUpAll" for n in step.nodes)
    step(np.array([0, 1]), np.array([0, 1]), 1.0, np.zeros(2))  # and the next call runs


def test_nan_guard_with_the_generated_linker():
    w = mg.shared(np.ones(2), name="w")
    x = mg.vector("x")
    f = mg.function([x], (w * x).sum(), updates=[(w, w * x)], nan_guard=True)
    with pytest.raises(FloatingPointError):
        f(np.array([np.nan, 1.0]))
    np.testing.assert_array_equal(w.get_value(), [1.0, 1.0])


def _op_table():
    from test_ops_grad import CASES  # tests/ is on sys.path under pytest

    return CASES


@pytest.mark.parametrize("case", _op_table(), ids=[c[0] for c in _op_table()])
def test_op_table_compiled_equals_the_unrewritten_reference(case):
    """Every op of the gradient-check table, values and gradients: the default compile
    (all rewrites, generated code, default backend) against the NumPy reference run by
    the VM with every rewrite phase switched off."""
    _, fn, points = case
    symbols = [mg.tensor(f"x{k}", shape=(None,) * np.ndim(p)) for k, p in enumerate(points)]
    out = fn(*symbols)
    value = mg.function(symbols, out, backend="numpy")(*points)
    weights = np.linspace(0.5, 1.5, value.size).reshape(value.shape)
    cost = (out * mg.constant(weights)).sum()
    wrt = [s for s, p in zip(symbols, points) if np.asarray(p).dtype.kind == "f"]
    grads = mg.grad(cost, wrt, disconnected="zero")
    plain = mg.Mode(backend="numpy", linker="vm",
                    exclude=("canonicalize", "specialize", "fuse", "inplace"))
    want = mg.function(symbols, [out, *grads], mode=plain)(*points)
    got = mg.function(symbols, [out, *grads])(*points)
    for a, b in zip(got, want):
        a = a.to_dense() if isinstance(a, mg.RowSparse) else a
        b = b.to_dense() if isinstance(b, mg.RowSparse) else b
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
