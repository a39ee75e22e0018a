"""Row kernels under hostile arguments (issue 15, items 2 and 3): aliasing inputs and
outputs, read-only outputs, and the finite-rows check behind the NaN policy; parity between
the NumPy reference and the Numba kernels. (Concurrent launches from threads are exercised
in a subprocess in ``test_faults.py``: an abort there would kill the test runner.)"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

IMPLS = ["reference", "cpu"]


@pytest.fixture(params=IMPLS)
def mod(request):
    try:
        return importlib.import_module(f"kernels.{request.param}")
    except ImportError as exc:  # pragma: no cover - numba missing
        pytest.skip(f"kernels.{request.param} unavailable: {exc}")


@pytest.mark.parametrize("values_of", ["head", "same rows", "whole"])
def test_scatter_add_with_values_aliasing_out_reads_the_old_values(mod, values_of):
    base = np.arange(20.0).reshape(10, 2)
    idx = {"head": np.array([1, 0, 2]), "same rows": np.array([0, 1, 2]),
           "whole": np.arange(10)[::-1].copy()}[values_of]
    out = base.copy()
    values = out[:3] if values_of != "whole" else out
    expected = base.copy()
    np.add.at(expected, idx, base[: len(idx)].copy())
    mod.scatter_add_rows(out, idx, values)
    np.testing.assert_array_equal(out, expected)


def test_scatter_add_refuses_a_read_only_output(mod):
    out = np.zeros((4, 2))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        mod.scatter_add_rows(out, np.array([1]), np.ones((1, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rows_finite_looks_at_the_given_rows_only(mod, dtype, bad):
    table = np.ones((8, 3), dtype)
    table[5, 2] = bad
    assert mod.rows_finite(table, np.array([0, 1, 7])) is True
    assert mod.rows_finite(table, np.array([0, 5])) is False
    assert mod.rows_finite(table, np.array([], np.int64)) is True
    assert mod.rows_finite(table.reshape(8, 3, 1), np.array([5])) is False  # rank 3


def test_rows_finite_validates_indices(mod):
    with pytest.raises(IndexError, match="index 8"):
        mod.rows_finite(np.ones((8, 3)), np.array([8]))
    with pytest.raises(TypeError):
        mod.rows_finite(np.ones((8, 3)), np.array([True]))
