"""Shared fixtures: ``import minigrad`` from the repo root, and a fixture that runs a test
under each backend ("numpy" always; "numba" when it imports)."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    """``MINIGRAD_COMPILE_PROFILE=out.json``: charge each Numba compile to the test that paid
    it (``tests/compile_profile.py``); off by default."""
    path = os.environ.get("MINIGRAD_COMPILE_PROFILE")
    if path and importlib.util.find_spec("numba"):
        from compile_profile import CompileProfile

        config.pluginmanager.register(CompileProfile(os.path.abspath(path)), "compile_profile")


BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The backend name passed to ``mg.function(..., backend=backend)``."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def float32():
    """Run a test with ``mg.config.floatX = "float32"`` and restore it afterwards."""
    import minigrad as mg

    old = mg.config.floatX
    mg.config.floatX = "float32"
    yield
    mg.config.floatX = old
