"""Parity test of ``csr_gathered_dot`` (reference, cpu, gpu) against SciPy's product.

``csr_gathered_dot(indptr, data, rows)`` is ``X @ W`` once ``rows = W[X.indices]`` has
been gathered: the forward pass of ``mg.sparse.dot``.
"""
import importlib

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

IMPLS = ["reference", "cpu", pytest.param("gpu", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module", params=IMPLS)
def impl(request):
    try:
        mod = importlib.import_module(f"kernels.{request.param}")
    except ImportError as exc:
        pytest.skip(f"kernels.{request.param} unavailable: {exc}")
    if request.param == "gpu":
        import cupy

        return mod, cupy.asarray, cupy.asnumpy
    return mod, (lambda a: a), np.asarray


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(n_rows=st.integers(0, 9), n_cols=st.integers(1, 12), density=st.floats(0, 1),
       trailing=st.sampled_from([(), (1,), (4,), (2, 3)]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_csr_gathered_dot_equals_the_sparse_product(impl, n_rows, n_cols, density, trailing,
                                                    dtype, seed):
    mod, dev, host = impl
    X = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed,
                  dtype=np.float64)
    W = np.random.default_rng(seed).standard_normal((n_cols,) + trailing).astype(dtype)
    rows = W[X.indices]
    got = host(mod.csr_gathered_dot(dev(X.indptr), dev(X.data.astype(dtype)), dev(rows)))
    want = (X @ W.reshape(n_cols, -1)).reshape((n_rows,) + trailing)
    assert got.dtype == dtype and got.shape == (n_rows,) + trailing
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_csr_gathered_dot_refuses_bad_arguments(impl):
    mod, dev, _ = impl
    rows = dev(np.ones((3, 2)))
    with pytest.raises(ValueError, match="same length"):
        mod.csr_gathered_dot(dev(np.array([0, 1, 2])), dev(np.ones(2)), rows)
    with pytest.raises(ValueError, match="end at nnz"):
        mod.csr_gathered_dot(dev(np.array([0, 1, 5])), dev(np.ones(3)), rows)
    with pytest.raises(ValueError, match="non-decreasing"):
        mod.csr_gathered_dot(dev(np.array([0, 2, 1, 3])), dev(np.ones(3)), rows)
