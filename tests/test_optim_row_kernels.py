"""``kernels.row_kernels``: each optimizer's rule has its fused row kernel on every backend
in one table (no ``getattr(module, "adam_rows")``), compiled steps, ``apply`` and flushes
call the table's entry, and a missing entry is an error naming the rule and backend."""
import numpy as np
import pytest

import kernels.reference as reference
import minigrad as mg
from kernels import row_kernels

OPTIMIZERS = [mg.optim.SGD, mg.optim.Momentum, mg.optim.Adagrad, mg.optim.RMSprop,
              mg.optim.Adam, mg.optim.AdamW]


def _backends():
    out = ["numpy"]
    try:
        import kernels.cpu  # noqa: F401

        out.append("numba")
    except ImportError:  # pragma: no cover - Numba missing
        pass
    return out


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_every_rule_has_a_kernel_on_every_backend(cls, backend):
    import importlib

    module = importlib.import_module(row_kernels.BACKENDS[backend])
    package = importlib.import_module(module.__name__.rsplit(".", 1)[0])
    kernel = row_kernels.row_kernel(cls.rule, package)
    assert kernel is getattr(module, f"{cls.rule}_rows")  # the one defined there
    assert cls.rule in row_kernels.rules_of(backend)


def test_missing_entries_are_named():
    with pytest.raises(NotImplementedError, match="'nadam'.*numpy"):
        row_kernels.row_kernel("nadam", reference)
    with pytest.raises(TypeError, match="not a kernel module"):
        row_kernels.row_kernel("adam", np)
    with pytest.raises(ValueError, match="unknown backend"):
        row_kernels.register_row_kernels("tpu", {"adam": reference.adam_rows})
    with pytest.raises(TypeError, match="not callable"):
        row_kernels.register_row_kernels("numpy", {"adam": "adam_rows"})


@pytest.mark.parametrize("backend", _backends())
def test_compiled_step_apply_and_flush_call_the_table_entry(monkeypatch, backend):
    """Swap the table's Momentum kernel for a counting wrapper: the compiled update, the
    catch-up of a lagging row read by the next step and the flush of a ``get_value`` all
    go through it (as trusted calls), and an eager ``apply`` too (checked)."""
    calls = []
    import importlib

    package = importlib.import_module(row_kernels.BACKENDS[backend].rsplit(".", 1)[0])
    original = row_kernels.row_kernel("momentum", package)

    def counting(*args, **kwargs):
        calls.append(kwargs.get("trusted", False))
        return original(*args, **kwargs)

    monkeypatch.setitem(row_kernels._TABLE, ("momentum", backend), counting)
    # the read through the general path (gather_lagging + the row kernel), not the fused
    # read of kernels.cpu.fresh (test_optim_fused_reads.py)
    row_kernels.fresh_read("momentum", package)
    monkeypatch.delitem(row_kernels._FRESH, ("momentum", backend), raising=False)
    E = mg.shared(np.ones((6, 2)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    opt = mg.optim.Momentum([E], lr=0.1, momentum=0.9, weight_decay=0.01, sparse="exact")
    step = mg.function([idx], cost, updates=opt.updates(cost), backend=backend)
    step(np.array([0, 1]))
    assert calls == [True]  # compiled: indices checked by PrepareRows, the kernel trusts
    step(np.array([2]))  # row 2 lags a step: its read catches it up, then the update
    assert calls == [True, True, True]
    E.get_value()  # flush: rows 0, 1 (and the untouched ones) catch up
    assert calls == [True] * 4
    opt.apply(E, mg.RowSparse(np.array([4]), np.ones((1, 2)), (6, 2)))
    from minigrad.optim.ops import kernel_module

    if row_kernels.backend_of(kernel_module()) == backend:  # apply's backend: the default
        assert calls == [True] * 4 + [False]  # a user's call: every index is checked
    # the same numbers as the untouched table entry would give
    monkeypatch.setitem(row_kernels._TABLE, ("momentum", backend), original)
    E2 = mg.shared(np.ones((6, 2)), name="E2")
    cost2 = (E2[idx] ** 2).sum()
    opt2 = mg.optim.Momentum([E2], lr=0.1, momentum=0.9, weight_decay=0.01, sparse="exact")
    step2 = mg.function([idx], cost2, updates=opt2.updates(cost2), backend=backend)
    step2(np.array([0, 1]))
    step2(np.array([2]))
    E2.get_value()
    opt2.apply(E2, mg.RowSparse(np.array([4]), np.ones((1, 2)), (6, 2)))
    np.testing.assert_array_equal(E.get_value(), E2.get_value())
