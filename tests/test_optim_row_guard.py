"""The NaN guard inside the optimizer row kernels (issue 15 item 12).

A non-finite result in the 2nd of 3 row updates of a call, in the middle of that table's
rows, must leave every table, every state table, ``last`` and the step counters bitwise as
they were, for every rule, lazy and exact; ``nan_guard=False`` writes it (documented
opt-out). The kernels are also called directly with a ``RowGuard``: each saves the old rows,
stops at the first bad row and ``restore`` puts them back.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import minigrad as mg
from kernels.row_guard import RowGuard

# the inputs are made non-finite on purpose: NumPy's warnings about them are expected
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

RULES = [
    ("SGD", {"weight_decay": 0.01}),
    ("Momentum", {"momentum": 0.9, "weight_decay": 0.01}),
    ("Momentum", {"momentum": 0.9, "nesterov": True}),
    ("Adagrad", {"weight_decay": 0.01}),
    ("RMSprop", {"momentum": 0.5, "centered": True}),
    ("RMSprop", {"weight_decay": 0.01}),
    ("Adam", {}),
    ("Adam", {"amsgrad": True, "weight_decay": 0.01}),
    ("AdamW", {}),
]
IDS = [f"{n}-{'-'.join(k for k in kw) or 'plain'}" for n, kw in RULES]


def _raw(opt):
    """Every array the optimizer's kernels write, read without flushing anything."""
    out = []
    for ps in opt.param_states:
        for var in ps.table_vars(ps.last is not None):
            out.append((str(var), var._value.copy()))
        out.append((str(ps.step), np.array(ps.step._value)))
    return out


def _three_tables(name, kw, sparse, backend, nan_guard=None):
    rng = np.random.default_rng(1)
    tables = [mg.shared(rng.normal(size=(12, 3)), name=n) for n in "ABC"]
    i, x = mg.ivector("i"), mg.matrix("x")
    cost = sum((T[i] * x[:, k:k + 1]).sum() for k, T in enumerate(tables))
    cls = getattr(mg.optim, name)
    extra = {} if name in ("SGD", "Adagrad") else {"sparse": sparse}
    if name in ("SGD", "Adagrad") and sparse == "lazy":
        pytest.skip(f"{name} has no lazy/exact distinction")
    opt = cls(tables, 0.05, **kw, **extra)
    f = mg.function([i, x], cost, updates=opt.updates(cost), backend=backend,
                    nan_guard=nan_guard)
    return tables, opt, f


@pytest.mark.parametrize("sparse", ["lazy", "exact"])
@pytest.mark.parametrize("name, kw", RULES, ids=IDS)
def test_bad_row_in_the_second_table_leaves_everything_bitwise(backend, name, kw, sparse):
    tables, opt, f = _three_tables(name, kw, sparse, backend)
    rows = np.array([1, 4, 6, 9], np.int32)
    for t in range(3):  # some history: rows lag behind in exact mode, states are nonzero
        f(rows[t % 2::2], np.full((2, 3), 0.5 + t))
    before = _raw(opt)
    x = np.ones((4, 3))
    x[2, 1] = np.inf  # only B's gradient, and only at row 6 (the 3rd of 4 rows)
    with pytest.raises(FloatingPointError, match=r"update of B \(row 6\)"):
        f(rows, x)
    after = _raw(opt)
    assert [n for n, _ in after] == [n for n, _ in before]
    for (label, a), (_, b) in zip(before, after):
        np.testing.assert_array_equal(b, a, err_msg=label)  # bitwise, NaN-aware
    f(rows, np.ones((4, 3)))  # the step is retried cleanly
    assert all(np.isfinite(T.get_value()).all() for T in tables)


@pytest.mark.parametrize("name, kw", RULES[:1] + RULES[6:7], ids=IDS[:1] + IDS[6:7])
def test_nan_guard_false_writes_the_nan(backend, name, kw):
    tables, opt, f = _three_tables(name, kw, "exact", backend, nan_guard=False)
    x = np.ones((2, 3))
    x[1, 1] = np.nan
    f(np.array([2, 5], np.int32), x)
    B = tables[1].get_value()
    assert np.isnan(B[5]).all() and np.isfinite(B[2]).all()
    assert np.isfinite(tables[0].get_value()).all()


# --- the kernels called directly ---------------------------------------------------------

KERNELS = [
    ("sgd_rows", 0, (0.1, 0.01)),
    ("momentum_rows", 1, (0.1, 0.9, 0.0, True, 0.01)),
    ("adagrad_rows", 1, (0.1, 1e-10, 0.01)),
    ("rmsprop_rows", 3, (0.01, 0.9, 1e-8, 0.5, True, 0.01)),
    ("adam_rows", 2, (0.01, 0.9, 0.999, 1e-8, 0.01, False)),
]


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("kernel, n_states, hyper", KERNELS, ids=[k[0] for k in KERNELS])
def test_kernel_guard_saves_stops_and_restores(impl, exact, kernel, n_states, hyper):
    mod = importlib.import_module(f"kernels.{impl}")
    rng = np.random.default_rng(0)
    V, D = 10, 5
    P = rng.normal(size=(V, D))
    positive = [k == 0 or kernel == "adam_rows" for k in range(n_states)]  # sq, v >= 0
    S = [np.abs(rng.normal(size=(V, D))) + 1.0 if pos else 0.1 * rng.normal(size=(V, D))
         for pos in positive]
    last = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], dtype=np.int64) if exact else None
    idx = np.array([0, 3, 5, 8], dtype=np.int64)
    g = rng.normal(size=(4, D))
    g[2, 3] = np.nan  # row 5
    before = [a.copy() for a in [P, *S] + ([last] if exact else [])]
    guard = RowGuard()
    bad = getattr(mod, kernel)(P, *S, idx, g, 4, last, *hyper, guard=guard)
    assert bad == 2 and guard.bad_row() == 5
    assert guard.written in (0, 3)  # the reference writes nothing, the loop stops at row 5
    guard.restore()
    for a, b in zip(before, [P, *S] + ([last] if exact else [])):
        np.testing.assert_array_equal(b, a)
    g[2, 3] = 0.5  # a finite call through the same guard (reused scratch) returns -1
    assert getattr(mod, kernel)(P, *S, idx, g, 4, last, *hyper, guard=guard) == -1
    ref = [a.copy() for a in before]
    getattr(mod, kernel)(ref[0], *ref[1:1 + n_states], idx, g, 4,
                         ref[-1] if exact else None, *hyper)
    for a, b in zip(ref, [P, *S] + ([last] if exact else [])):
        np.testing.assert_array_equal(b, a)  # guarded and unguarded results are identical


def test_guard_scratch_is_reused_across_calls():
    import kernels.cpu as K

    P, M, V = (np.zeros((50, 4)) for _ in range(3))
    guard = RowGuard()
    g = np.ones((8, 4))
    K.adam_rows(P, M, V, np.arange(8), g, 1, None, 0.1, 0.9, 0.999, 1e-8, 0.0, False,
                guard=guard)
    buffers = [id(b) for b in guard._views]
    K.adam_rows(P, M, V, np.arange(0, 16, 2), g, 2, None, 0.1, 0.9, 0.999, 1e-8, 0.0, False,
                guard=guard)
    assert [id(b) for b in guard._views] == buffers


@pytest.mark.parametrize("sparse", ["lazy", "exact"])
def test_eager_apply_refuses_an_overflowing_update_and_changes_nothing(sparse):
    E = mg.shared(np.ones((6, 2)), name="E")
    opt = mg.optim.Momentum([E], 1e10, momentum=0.9, sparse=sparse)
    opt.apply(E, mg.RowSparse(np.array([1, 4]), np.ones((2, 2)), (6, 2)))
    before = _raw(opt)
    huge = mg.RowSparse(np.array([0, 2, 5]), np.array([[1.0, 1.0], [1e300, 1.0], [1.0, 1.0]]),
                        (6, 2))
    with pytest.raises(FloatingPointError, match="row 2"):
        opt.apply(E, huge)
    for (label, a), (_, b) in zip(before, _raw(opt)):
        np.testing.assert_array_equal(b, a, err_msg=label)
