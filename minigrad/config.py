"""Process-wide settings: the default float dtype and the default backend.

``floatX`` follows Theano: symbolic constructors with ``dtype=None`` use it. It starts
from the ``MINIGRAD_FLOATX`` environment variable ("float64" unless set) and can be
changed at run time (``mg.config.floatX = "float32"``). ``MINIGRAD_BACKEND`` picks the
default backend of ``mg.function`` ("numba" when numba imports, else "numpy").
"""
from __future__ import annotations

import importlib.util
import os

_FLOATS = ("float32", "float64")
_BACKENDS = ("numpy", "numba", "cupy")


class _Config:
    def __init__(self) -> None:
        self._floatX = "float64"
        self.floatX = os.environ.get("MINIGRAD_FLOATX", "float64")
        self._backend = None
        env_backend = os.environ.get("MINIGRAD_BACKEND")
        if env_backend:
            self.backend = env_backend

    @property
    def floatX(self) -> str:  # noqa: N802 (Theano's spelling, fixed by the API)
        return self._floatX

    @floatX.setter
    def floatX(self, value: str) -> None:  # noqa: N802
        value = str(value)
        if value not in _FLOATS:
            raise ValueError(f"floatX must be one of {_FLOATS}, got {value!r}")
        self._floatX = value

    @property
    def backend(self) -> str:
        """The backend ``mg.function`` uses when none is given."""
        if self._backend is None:
            have_numba = importlib.util.find_spec("numba") is not None
            self._backend = "numba" if have_numba else "numpy"
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {value!r}")
        self._backend = value


config = _Config()
