"""Slicing with bounds known only at run time: ``X[i * B:(i + 1) * B]``, ``X[:, j]``.

Theano users write minibatch loops this way, with ``i`` an integer scalar input. The
bounds become extra inputs of the node; the key keeps a placeholder ``("input", k)``
where the ``k``-th of them goes. The gradient is the static slice's: zeros shaped like
``X`` with ``gz`` written into the same slice (the bounds get no gradient).
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.ops.index_key import thaw_key
from minigrad.types import TensorType
from minigrad.variables import as_variable


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
        key = thaw_key(self.key, values)
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
        out[thaw_key(self.key, values)] = gz
        return (out,)

    def grad(self, inputs, outputs, output_grads):
        scalars = inputs[2:]
        return [None, DynamicSubtensor(self.key)(output_grads[0], *scalars)] + [None] * len(
            scalars)
