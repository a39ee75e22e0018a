"""Which kernels each backend runs: the numpy backend is the NumPy reference end to end."""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg
import minigrad.kernels_dispatch as dispatch


@pytest.mark.parametrize("backend,expected", [("numpy", "kernels.reference"),
                                              ("numba", "kernels.cpu")])
def test_kernels_behind_perform_follow_the_backend(backend, expected, monkeypatch):
    pytest.importorskip("numba", reason="numba not installed")
    if backend == "numba" and dispatch._load() is not False and \
            dispatch._load().__name__ != "kernels.cpu":
        pytest.skip("MINIGRAD_BACKEND=numpy forces the reference kernels everywhere")
    seen = []
    original = dispatch._impl

    def spy():
        module = original()
        seen.append(getattr(module, "__name__", module))
        return module

    monkeypatch.setattr(dispatch, "_impl", spy)
    E = mg.shared(np.ones((10, 3)), name="E")
    idx = mg.lvector("idx")
    dense = mg.grad(E[idx].sum(), E).to_dense()
    out = mg.function([idx], dense, backend=backend)(np.array([1, 1, 2]))
    np.testing.assert_array_equal(out.sum(axis=1), [0, 6, 3, 0, 0, 0, 0, 0, 0, 0])
    assert set(seen) == {expected}
