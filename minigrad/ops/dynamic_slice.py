"""Slicing with bounds known only at run time: ``X[i * B:(i + 1) * B]``, ``X[:, j]``.

Theano users write minibatch loops this way, with ``i`` an integer scalar input. The
bounds become extra inputs of the node; the key keeps a placeholder ``("input", k)``
where the ``k``-th of them goes. The gradient is the static slice's: zeros shaped like
``X`` with ``gz`` written into the same slice (the bounds get no gradient).
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Op, Variable
from minigrad.types import INT_KINDS, TensorType
from minigrad.variables import as_variable


def has_symbolic_bounds(key) -> bool:
    key = key if isinstance(key, tuple) else (key,)
    for k in key:
        if isinstance(k, Variable):
            return True
        if isinstance(k, slice) and any(isinstance(b, Variable) for b in (k.start, k.stop,
                                                                         k.step)):
            return True
    return False


def _check_bound(var, what):
    from minigrad.naming import describe

    if var.ndim != 0 or np.dtype(var.dtype).kind not in INT_KINDS:
        raise TypeError(
            f"slicing: {what} {describe(var)} must be an integer scalar, got {var.type}; "
            "use mg.iscalar()/mg.lscalar() inputs, or .astype('int64')"
        )


def freeze_symbolic_key(key):
    """(hashable key with placeholders, list of the scalar variables they stand for)."""
    key = key if isinstance(key, tuple) else (key,)
    frozen, scalars = [], []

    def bound(b, what):
        if isinstance(b, Variable):
            _check_bound(b, what)
            scalars.append(b)
            return ("input", len(scalars) - 1)
        if b is None or (isinstance(b, (int, np.integer)) and not isinstance(b, bool)):
            return None if b is None else int(b)
        raise TypeError(f"slicing: unsupported {what} {b!r}: use ints, None or an integer "
                        "scalar variable")

    for k in key:
        if isinstance(k, slice):
            frozen.append(("slice", bound(k.start, "start"), bound(k.stop, "stop"),
                           bound(k.step, "step")))
        elif isinstance(k, Variable):
            frozen.append(("int", bound(k, "index")))
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
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


def thaw(key, values):
    """The NumPy key with the run-time ``values`` of the bounds filled in."""
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


def _out_ndim(x, key):
    dropped = sum(1 for k in key if k[0] == "int")
    added = sum(1 for k in key if k[0] == "newaxis")
    if len([k for k in key if k[0] in ("slice", "int")]) > x.ndim:
        raise IndexError(f"too many indices ({len(key)}) for {x.type}")
    return x.ndim - dropped + added


class DynamicSubtensor(Op):
    """``x[key]`` where some bounds or integer indices are integer scalar variables."""

    __props__ = ("key",)

    def __init__(self, key):
        self.key = key

    def make_node(self, x, *scalars):
        x = as_variable(x)
        return Apply(self, [x, *scalars], [TensorType(x.dtype, (None,) * _out_ndim(x, self.key))])

    def perform(self, node, inputs):
        x, values = inputs[0], inputs[1:]
        key = thaw(self.key, values)
        try:
            return (np.asarray(x[key]),)
        except IndexError as err:
            from minigrad.naming import describe

            raise IndexError(f"{describe(node.inputs[0])}{list(key)}: {err}") from None

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.shape import shape_of

        x, scalars = inputs[0], inputs[1:]
        gx = DynamicSubtensorGrad(self.key)(shape_of(x), output_grads[0], *scalars)
        return [gx] + [None] * len(scalars)


class DynamicSubtensorGrad(Op):
    """Zeros of ``x``'s shape (input ``shape_of(x)``) with ``gz`` written into the run-time
    slice."""

    __props__ = ("key",)

    def __init__(self, key):
        self.key = key

    def make_node(self, shape, gz, *scalars):
        from minigrad.ops.shape import check_shape_input, static_shape

        shape = check_shape_input(as_variable(shape), self, "x")
        return Apply(self, [shape, gz, *scalars], [TensorType(gz.dtype, static_shape(shape))])

    def perform(self, node, inputs):
        from minigrad.ops.shape import shape_tuple

        shape, gz, values = inputs[0], inputs[1], inputs[2:]
        out = np.zeros(shape_tuple(shape), dtype=node.outputs[0].dtype)
        out[thaw(self.key, values)] = gz
        return (out,)

    def grad(self, inputs, outputs, output_grads):
        scalars = inputs[2:]
        return [None, DynamicSubtensor(self.key)(output_grads[0], *scalars)] + [None] * len(
            scalars)


def dynamic_subtensor(x, key):
    frozen, scalars = freeze_symbolic_key(key)
    return DynamicSubtensor(frozen)(x, *scalars)
