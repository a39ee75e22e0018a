"""Basic-indexing keys (``x[1:3, ::2, 0]``, ``X[i * B:(i + 1) * B]``) as hashable Op parameters.

An Op's parameters must be hashable and comparable (two ``x[1:3]`` nodes are the same
computation, which is how rewrites merge them), and a NumPy key is neither: slices do not
hash. ``freeze_key`` turns a key into nested tuples and checks, while the user's call is
still on the stack, that it holds only ints, slices, ``None`` and ``...``. A bound that is a
symbolic integer scalar becomes the placeholder ``("input", k)``: the ``k``-th of the
scalars returned beside the key, which the slicing Op takes as extra inputs and
``thaw_key`` fills in with their run-time values.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Variable
from minigrad.types import INT_KINDS

__all__ = ["freeze_key", "thaw_key"]


def _is_int(b):
    return isinstance(b, (int, np.integer)) and not isinstance(b, bool)


def _check_bound(var, what):
    from minigrad.naming import describe

    if var.ndim != 0 or np.dtype(var.dtype).kind not in INT_KINDS:
        raise TypeError(
            f"slicing: {what} {describe(var)} must be an integer scalar, got {var.type}; "
            "use mg.iscalar()/mg.lscalar() inputs, or .astype('int64')"
        )


def freeze_key(key):
    """(hashable key with placeholders, list of the scalar variables they stand for)."""
    key = key if isinstance(key, tuple) else (key,)
    frozen, scalars = [], []

    def bound(b, what):
        if isinstance(b, Variable):
            _check_bound(b, what)
            scalars.append(b)
            return ("input", len(scalars) - 1)
        if b is None or _is_int(b):
            return None if b is None else int(b)
        raise TypeError(f"slicing: unsupported {what} {b!r}: use ints, None or an integer "
                        "scalar variable")

    for k in key:
        if isinstance(k, slice):
            frozen.append(("slice", bound(k.start, "start"), bound(k.stop, "stop"),
                           bound(k.step, "step")))
        elif isinstance(k, Variable):
            frozen.append(("int", bound(k, "index")))
        elif _is_int(k):
            frozen.append(("int", int(k)))
        elif k is None:
            frozen.append(("newaxis",))
        elif k is Ellipsis:
            frozen.append(("ellipsis",))
        else:
            raise TypeError(
                f"unsupported index {k!r}: use ints, slices, None, ... or integer variables"
            )
    return tuple(frozen), scalars


def thaw_key(key, values=()):
    """The NumPy key, with the run-time ``values`` of the placeholders filled in."""
    def fill(b):
        return int(values[b[1]]) if isinstance(b, tuple) else b

    out = []
    for k in key:
        if k[0] == "slice":
            out.append(slice(fill(k[1]), fill(k[2]), fill(k[3])))
        elif k[0] == "int":
            out.append(fill(k[1]))
        elif k[0] == "newaxis":
            out.append(None)
        else:
            out.append(Ellipsis)
    return tuple(out)
