"""Row updates called straight into their compiled loop (``minigrad/direct_updates.py``).

A compiled step on the numba backend skips ``check_rows_args`` and the Python layers
around the row kernels where ``PrepareRows`` and the prologue already checked the call.
The ``vm`` linker keeps the checked path: both run the same compiled loop, so every
table and state must agree *bitwise* after several steps (lazy and exact mode, catch-ups,
weight decay, nan_guard on and off), and both must match the NumPy reference backend.
A failing call leaves every table bitwise unchanged. Tiny tables: no new Numba compile
beyond the row loops the rest of the suite compiles anyway.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the direct path calls the Numba row loops")

from test_optim_row_guard import _raw  # noqa: E402  (tests/ is on sys.path)

import minigrad as mg  # noqa: E402
from minigrad import direct_updates  # noqa: E402

CONFIGS = [
    ("Adam", dict(sparse="lazy")),
    ("Adam", dict(sparse="exact", weight_decay=0.01)),  # L2: the replayed catch-up
    ("AdamW", dict(sparse="exact", weight_decay=0.05)),  # decoupled: the closed form
    ("SGD", dict()),
    ("SGD", dict(sparse="exact", weight_decay=0.1)),
    ("Momentum", dict(momentum=0.9, sparse="lazy")),
    ("Momentum", dict(momentum=0.9, nesterov=True, sparse="exact", weight_decay=0.01)),
]


def _model(name, kw, backend="numba", linker="generated", nan_guard=None, dtype="float64"):
    """Two row-sparse tables (one 2-D, one 1-D) and a dense bias, one optimizer."""
    rng = np.random.default_rng(7)
    A = mg.shared(rng.normal(size=(30, 4)).astype(dtype), name="A")
    b = mg.shared(rng.normal(size=(30,)).astype(dtype), name="b")
    c = mg.shared(rng.normal(size=(4,)).astype(dtype), name="c")
    i, x = mg.ivector("i"), mg.matrix("x", dtype)
    cost = ((A[i] + c) * x).sum() + (b[i] * x[:, 0]).sum() + (A[i] ** 2).sum() * 0.1
    opt = getattr(mg.optim, name)([A, b, c], 0.05, **kw)
    f = mg.function([i, x], cost, updates=opt.updates(cost), nan_guard=nan_guard,
                    mode=mg.Mode(backend=backend, linker=linker))
    return f, opt


def _batches(n_steps=6):
    rng = np.random.default_rng(3)
    out = []
    for k in range(n_steps):  # repeated ids (coalesced), and rows that lag (catch-ups)
        n = 5 + k % 3
        ids = rng.choice(30 if k % 2 else 8, n).astype(np.int32)
        out.append((ids, rng.normal(size=(n, 4))))
    return out


def _tables(opt):
    """Every array the optimizer writes, flushed (exact mode's pending rows caught up)."""
    out = []
    for ps in opt.param_states:
        for var in ps.table_vars(ps.last is not None):
            out.append((str(var), np.array(var.get_value())))
    return out


def _per_node(f):
    """The per-node guarded phase: the phase itself, or the fallback of the one-call
    driver (``minigrad/update_driver.py``) where every row update is covered by it."""
    g = f._guarded_phase
    return g if f.update_driver is None else f.update_driver.fallback_guarded


def _direct_steps(f):
    return [s for s in _per_node(f)._steps
            if isinstance(getattr(s, "call", None), direct_updates._Direct)]


@pytest.mark.parametrize("name,kw", CONFIGS, ids=[f"{n}-{k}" for n, k in CONFIGS])
@pytest.mark.parametrize("nan_guard", [None, False])
def test_direct_path_is_bitwise_the_checked_path_and_matches_the_reference(name, kw,
                                                                            nan_guard):
    fd, od = _model(name, kw, nan_guard=nan_guard)
    fc, oc = _model(name, kw, linker="vm", nan_guard=nan_guard)
    fr, orf = _model(name, kw, backend="numpy", nan_guard=nan_guard)
    # lazy mode: the one-call driver, with the direct per-node path as its fallback;
    # exact mode with row-sparse gradients: the direct per-node path
    assert (fd.update_driver is not None) == (kw.get("sparse", "lazy") == "lazy")
    assert fc.update_driver is None
    if nan_guard is None:
        assert len(_direct_steps(fd)) == 3  # every row update takes the direct path
        assert not _direct_steps(fc)
    else:
        plain = (fd._destructive_run if fd.update_driver is None
                 else fd.update_driver.fallback_plain)
        assert sum(isinstance(t, direct_updates._Direct)
                   for t in plain.__globals__.values()) == 3
    for ids, x in _batches():
        np.testing.assert_array_equal(fd(ids, x), fc(ids, x))
        fr(ids, x)
    for (label, d), (_, c), (_, r) in zip(_tables(od), _tables(oc), _tables(orf)):
        np.testing.assert_array_equal(d, c, err_msg=label)
        np.testing.assert_allclose(d, r, rtol=1e-10, atol=1e-12, err_msg=label)


@pytest.mark.parametrize("kw", [dict(sparse="lazy"), dict(sparse="lazy", weight_decay=0.1),
                                dict(sparse="lazy", weight_decay=0.1, decoupled=True)],
                         ids=["plain", "l2", "decoupled"])
def test_lazy_adam_loop_is_bitwise_the_general_adam_loop_in_float32(kw, monkeypatch):
    """Lazy Adam takes the plain loop of kernels/cpu/direct_rows.py; the vm linker's
    checked path runs kernels/cpu/optim.py's general loop: the bits must agree."""
    name = "AdamW" if kw.pop("decoupled", False) else "Adam"
    import minigrad.update_driver as update_driver

    monkeypatch.setattr(update_driver, "build", lambda *a: None)  # the per-node path
    fd, od = _model(name, kw, dtype="float32")
    fc, oc = _model(name, kw, linker="vm", dtype="float32")
    import kernels.cpu.direct_rows as direct_rows

    real, calls = direct_rows.lazy_adam, []
    monkeypatch.setattr(direct_rows, "lazy_adam", lambda *a: calls.append(1) or real(*a))
    for ids, x in _batches(8):
        np.testing.assert_array_equal(fd(ids, x.astype(np.float32)),
                                      fc(ids, x.astype(np.float32)))
    for (label, d), (_, c) in zip(_tables(od), _tables(oc)):
        assert d.dtype == (np.int64 if label.endswith("last_step") else np.float32)
        np.testing.assert_array_equal(d, c, err_msg=label)
    assert len(calls) == 16  # A and b each step; c is dense (exact mode): the general loop


@pytest.mark.parametrize("sparse", ["lazy", "exact"])
def test_a_non_finite_update_on_the_direct_path_leaves_every_table_bitwise_unchanged(sparse):
    f, opt = _model("Adam", dict(sparse=sparse, weight_decay=0.01), dtype="float32")
    assert len(_direct_steps(f)) == 3
    for ids, x in _batches(4):
        f(ids, x.astype(np.float32))
    before = [(k, v.copy()) for k, v in _raw(opt)]
    x = np.ones((4, 4), np.float32)
    x[2, 0] = np.inf  # an inf gradient reaches rows of every table
    with pytest.raises(FloatingPointError, match="update of"):
        f(np.array([1, 9, 2, 9], np.int32), x)
    for (label, a), (_, b) in zip(before, _raw(opt)):
        np.testing.assert_array_equal(a, b, err_msg=label)
    bad = np.array([1, 30], np.int32)  # an id out of range: refused before anything runs
    with pytest.raises(IndexError):
        f(bad, np.ones((2, 4), np.float32))
    for (label, a), (_, b) in zip(before, _raw(opt)):
        np.testing.assert_array_equal(a, b, err_msg=label)
    f(np.array([1, 2], np.int32), np.ones((2, 4), np.float32))  # and it still steps
    assert int(opt.param_states[0].step.value) == 5


def test_what_the_direct_path_does_not_cover_keeps_the_checked_path(monkeypatch):
    f, _ = _model("Adam", dict(amsgrad=True))  # amsgrad: not covered
    assert not _direct_steps(f)
    f, _ = _model("Adagrad", dict())  # another rule
    assert not _direct_steps(f)
    # a row loop whose parameters changed is not called directly (no guessing)
    monkeypatch.setitem(direct_updates._SIGNATURES, "_adam", ("P",))
    f, _ = _model("Adam", dict(sparse="lazy"))
    assert not _direct_steps(f)
    f, _ = _model("SGD", dict())
    assert len(_direct_steps(f)) == 3
