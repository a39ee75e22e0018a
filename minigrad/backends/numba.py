"""The Numba backend: Ops with a compiled kernel in ``kernels.cpu`` use it; the rest fall
back to the NumPy reference (which is already vectorised NumPy).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from minigrad.backends import numpy as reference
from minigrad.ops.indexing import Take, check_index_range

name = "numba"
to_device = reference.to_device
to_host = reference.to_host
isfinite_all = reference.isfinite_all
load_shared = reference.load_shared


def check_available():
    try:
        import numba  # noqa: F401

        import kernels.cpu  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"backend='numba' needs numba and the kernels package ({err}); "
            "install minigrad with its dependencies or use backend='numpy'"
        ) from err


@functools.singledispatch
def impl(op, node):
    return reference.impl(op, node)


def make_thunk(node):
    return impl(node.op, node)


def call_context():
    return contextlib.nullcontext()


def _cpu():
    import kernels.cpu as cpu

    return cpu


#: gathers of at most this many scalars use NumPy's fancy indexing: for a few hundred
#: short rows the compiled kernel's argument checks cost more than the copy
SMALL_GATHER = 2048


@impl.register
def _take(op: Take, node):
    gather_rows = _cpu().gather_rows

    def thunk(inputs):
        table, idx = inputs
        check_index_range(idx, table.shape[0], node)
        flat = np.ascontiguousarray(idx.reshape(-1))
        small = flat.shape[0] * (table.size // max(table.shape[0], 1)) <= SMALL_GATHER
        if small or not table.flags.c_contiguous:
            # fancy indexing reads only the rows (np.take would copy a strided table)
            return (table[flat].reshape(idx.shape + table.shape[1:]),)
        rows = gather_rows(table, flat)
        return (rows.reshape(idx.shape + table.shape[1:]),)

    return thunk
from minigrad.backends import numba_fused  # noqa: E402,F401  (fused Ops, fusion rewrites)
