"""Shared fixtures: ``import minigrad`` from the repo root, a fixture that runs a test
under each backend ("numpy" always; "numba" when it imports), the background lane for long
subprocess tests (``tests/background_lane.py``) and the opt-in compile profile."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
from background_lane import Lane

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


_LANE = Lane()


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: start only the jobs still needed
def pytest_collection_modifyitems(session, config, items):
    """Tests marked ``background`` go last, and their jobs start now, in a second process,
    so that they run while the rest of the suite does."""
    marked = [item for item in items if item.get_closest_marker("background")]
    if not marked:
        return
    items[:] = [item for item in items if item not in marked] + marked
    for item in marked:
        name = item.get_closest_marker("background").args[0]
        _LANE.add(name, **item.module.BACKGROUND_JOBS[name])
    if not config.option.collectonly:
        _LANE.start()


def pytest_sessionfinish(session):
    _LANE.close()


def pytest_terminal_summary(terminalreporter):
    if _LANE.results:
        terminalreporter.write_sep("-", "background jobs (tests/background_lane.py)")
        for r in _LANE.results.values():
            terminalreporter.write_line(f"{r.wall_s:8.1f} s  {r.name}  (exit {r.returncode})")


@pytest.fixture(scope="session")
def background():
    """The lane running the modules' ``BACKGROUND_JOBS``: ``background.result(name)``."""
    return _LANE


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
