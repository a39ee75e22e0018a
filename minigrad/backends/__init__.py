"""Backends turn an Apply node into a *thunk*: ``thunk(input_values) -> output tuple``.

Each backend is a ``functools.singledispatch`` function on the Op class, so supporting an
Op on a backend is one registered function; unregistered Ops use the NumPy reference
``op.perform``. The VM in ``compile.py`` is the same loop for every backend.
"""
from __future__ import annotations

import importlib

from minigrad.config import config

_MODULES = {
    "numpy": "minigrad.backends.numpy",
    "numba": "minigrad.backends.numba",
    "cupy": "minigrad.backends.cupy",
}


def get_backend(name=None):
    """The backend module for ``name`` (default: ``mg.config.backend``)."""
    name = name or config.backend
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_MODULES)}")
    module = importlib.import_module(_MODULES[name])
    module.check_available()
    return module
