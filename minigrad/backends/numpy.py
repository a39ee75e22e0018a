"""The reference backend: every Op runs its own NumPy ``perform``, and nothing else.

``Op.perform`` is the definition of each Op (it calls ``kernels.reference`` where it needs
a kernel), so this backend's table is empty: the default implementation is ``perform``.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

name = "numpy"


def check_available():
    return None


@functools.singledispatch
def impl(op, node):
    """Return ``thunk(inputs) -> outputs`` for ``node``; default: ``op.perform``."""
    return functools.partial(op.perform, node)


def make_thunk(node):
    return impl(node.op, node)


def call_context():
    """Nothing to set up around a call (kept in the backend interface for others)."""
    return contextlib.nullcontext()


def kernels():
    """The kernel module this backend's implementations call."""
    import kernels.reference as ref

    return ref


def load_shared(var):
    """The value of a shared variable as this backend's array (moved back from a GPU)."""
    value = var.value  # no flush hooks: a step must cost O(rows touched), see SharedVariable
    if hasattr(value, "__cuda_array_interface__"):
        value = var._value = value.get()
    return value


def to_device(value):
    """Backends with their own memory (CuPy) move values here; NumPy needs nothing."""
    return value


def to_host(value):
    return value


def isfinite_all(value):
    return bool(np.isfinite(value).all())
