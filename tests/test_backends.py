"""A backend is one layer: its table picks the kernels, and nothing else does.

The numpy backend is the NumPy reference end to end (``Op.perform`` and
``kernels.reference`` only): with every ``kernels.cpu`` function replaced by a trap, a
numpy-backend step still runs. The numba backend's table calls ``kernels.cpu`` directly.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from minigrad.backends import get_backend


def _poison_cpu_kernels(monkeypatch):
    cpu = pytest.importorskip("kernels.cpu", reason="numba not installed")
    calls = []

    def trap(name):
        def fn(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"kernels.cpu.{name} called")

        return fn

    for name in cpu.__all__:
        monkeypatch.setattr(cpu, name, trap(name))
    from kernels import row_kernels  # the optimizers' kernels are found in this table

    for rule in row_kernels.rules_of("numba"):
        monkeypatch.setitem(row_kernels._TABLE, (rule, "numba"), trap(f"{rule} row kernel"))
    return calls


def _fm_step(backend, sparse_mode="exact", exclude=()):
    fm = mg.models.FactorizationMachine(30, 4, seed=0)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = fm.cost(X, y)
    opt = mg.optim.Momentum(fm.params, lr=0.1, sparse=sparse_mode)
    mode = mg.Mode(backend=backend, exclude=exclude)
    return fm, opt, mg.function([X, y], cost, updates=opt.updates(cost), mode=mode)


def test_numpy_backend_never_calls_the_numba_kernels(monkeypatch):
    calls = _poison_cpu_kernels(monkeypatch)
    E = mg.shared(np.ones((10, 3)), name="E")
    idx = mg.lvector("idx")
    dense = mg.grad(E[idx].sum(), E).to_dense()
    out = mg.function([idx], dense, backend="numpy")(np.array([1, 1, 2]))
    np.testing.assert_array_equal(out.sum(axis=1), [0, 6, 3, 0, 0, 0, 0, 0, 0, 0])
    fm, opt, step = _fm_step("numpy", sparse_mode="lazy")
    for k in range(2):
        Xv = sp.random(6, 30, density=0.2, format="csr", random_state=k)
        step(Xv, np.arange(6) % 2.0)
    assert calls == []


def test_numba_backend_table_calls_the_compiled_kernels(monkeypatch):
    cpu = pytest.importorskip("kernels.cpu", reason="numba not installed")
    seen = []
    for name in ("csr_gathered_dot", "csr_scale_rows", "coalesce_rows", "scatter_add_rows"):
        original = getattr(cpu, name)

        def spy(*args, _name=name, _original=original):
            seen.append(_name)
            return _original(*args)

        monkeypatch.setattr(cpu, name, spy)
    import kernels.cpu.rows as rows  # compiled code coalesces a RowSparse without re-checks

    original_trusted = rows.coalesce_rows_trusted
    monkeypatch.setattr(rows, "coalesce_rows_trusted",
                        lambda *a: seen.append("coalesce_rows") or original_trusted(*a))
    # the unfused sparse product and row-sparse ops (the fuse phase has its own kernels)
    fm, opt, step = _fm_step("numba", sparse_mode="lazy", exclude=("fuse",))
    Xv = sp.random(6, 30, density=0.2, format="csr", random_state=0)
    step(Xv, np.arange(6) % 2.0)
    assert {"csr_gathered_dot", "csr_scale_rows", "coalesce_rows"} <= set(seen)


@pytest.mark.parametrize("mode", ["lazy", "exact"])
def test_numba_and_numpy_backends_agree_on_a_training_run(mode):
    pytest.importorskip("numba", reason="numba not installed")
    results = {}
    for backend in ("numpy", "numba"):
        fm, opt, step = _fm_step(backend, sparse_mode=mode)
        losses = [step(sp.random(6, 30, density=0.2, format="csr", random_state=k),
                       np.arange(6) % 2.0) for k in range(4)]
        results[backend] = (losses, [p.get_value() for p in fm.params])
    np.testing.assert_allclose(results["numba"][0], results["numpy"][0], rtol=1e-10)
    for a, b in zip(results["numba"][1], results["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_backend_modules_share_one_interface():
    for name in ("numpy", "numba"):
        if name == "numba":
            pytest.importorskip("numba", reason="numba not installed")
        module = get_backend(name)
        for attr in ("impl", "make_thunk", "call_context", "load_shared", "to_device",
                     "to_host", "isfinite_all", "kernels", "check_available"):
            assert hasattr(module, attr), (name, attr)
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tpu")


def test_no_environment_reads_outside_config():
    """MINIGRAD_BACKEND is read once, in config.py (issue 12, item 2)."""
    import pathlib

    root = pathlib.Path(mg.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            reads_env = "environ" in line and "MINIGRAD_BACKEND" in line
            if path.name != "config.py" and (reads_env or "contextvars" in line):
                offenders.append(f"{path.relative_to(root)}: {line.strip()}")
    assert offenders == []
    import minigrad.kernels_dispatch as dispatch

    assert not hasattr(dispatch, "_REFERENCE_ONLY") and not hasattr(dispatch, "_IMPL")
