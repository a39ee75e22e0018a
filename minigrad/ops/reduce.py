"""Reductions: sum, mean, max over some axes, and their gradients.

The VJP of a sum is a broadcast: every summed element received the same ``gz``. A mean
is a sum scaled by ``1 / n``. A max sends ``gz`` to the elements that attained it (split
evenly among ties, so the gradient is the average of the one-sided derivatives).
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.types import TensorType
from minigrad.variables import as_variable


def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"axis {a} is out of bounds for a variable of rank {ndim}")
        out.append(a % ndim if ndim else 0)
    return tuple(sorted(set(out)))


def _reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


class Reduce(Op):
    """Base: reduce ``x`` over ``axes`` (a sorted tuple) with ``keepdims``."""

    __props__ = ("axes", "keepdims")
    numpy_fn = None

    def __init__(self, axes, keepdims=False):
        self.axes = tuple(axes)
        self.keepdims = bool(keepdims)

    def make_node(self, x):
        x = as_variable(x)
        dtype = x.dtype
        if self.float_result and np.dtype(dtype).kind != "f":
            dtype = "float64"
        shape = _reduced_shape(x.type.shape, self.axes, self.keepdims)
        return Apply(self, [x], [TensorType(dtype, shape)])

    float_result = False

    #: the ufunc whose ``reduce`` is ``numpy_fn`` (called directly: no Python wrapper)
    ufunc = None

    def perform(self, node, inputs):
        (x,) = inputs
        if self.ufunc is not None and type(x) is np.ndarray:
            out = self.ufunc.reduce(x, axis=self.axes, keepdims=self.keepdims)
        else:
            out = type(self).numpy_fn(x, axis=self.axes, keepdims=self.keepdims)
        return (np.asarray(out, dtype=node.outputs[0].dtype),)

    def _gz_kept(self, gz):
        """``gz`` with the reduced axes put back as length-1 axes."""
        from minigrad.ops.shape import expand_dims

        return gz if self.keepdims else expand_dims(gz, self.axes)


class Sum(Reduce):
    numpy_fn = staticmethod(np.sum)
    ufunc = np.add

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.shape import broadcast_like

        (x,), (gz,) = inputs, output_grads
        return [broadcast_like(self._gz_kept(gz), x)]


class Mean(Reduce):
    numpy_fn = staticmethod(np.mean)
    float_result = True

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.elemwise import cast
        from minigrad.ops.shape import broadcast_like, shape_of

        (x,), (gz,) = inputs, output_grads
        # cast: an int64 count would upcast float32
        count = cast(CountOf(self.axes)(shape_of(x)), gz.dtype)
        return [broadcast_like(self._gz_kept(gz) / count, x)]


class Max(Reduce):
    numpy_fn = staticmethod(np.max)
    ufunc = np.maximum

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops import cast, eq
        from minigrad.ops.shape import broadcast_like

        (x,), (z,), (gz,) = inputs, outputs, output_grads
        hit = cast(eq(x, self._gz_kept(z)), gz.dtype)
        ties = Sum(self.axes, keepdims=True)(hit)
        return [broadcast_like(self._gz_kept(gz), x) * (hit / ties)]


class CountOf(Op):
    """Number of elements reduced over ``axes`` of a value, from its run-time shape
    (an int64 scalar; the input is ``shape_of(x)``)."""

    __props__ = ("axes",)

    def __init__(self, axes):
        self.axes = tuple(axes)

    def make_node(self, shape):
        from minigrad.ops.shape import check_shape_input

        return Apply(self, [check_shape_input(as_variable(shape), self, "x")],
                     [TensorType("int64", ())])

    def perform(self, node, inputs):
        shape = inputs[0]
        return (np.asarray(math.prod(shape[a] for a in self.axes), dtype="int64"),)

    def grad(self, inputs, outputs, output_grads):
        return [None]


def _reducer(cls):
    def reduce(x, axis=None, keepdims=False):
        x = as_variable(x)
        return cls(_normalize_axes(axis, x.ndim), keepdims)(x)

    reduce.__name__ = cls.__name__.lower()
    reduce.__doc__ = f"{cls.__name__} of ``x`` over ``axis`` (all axes when ``None``)."
    return reduce


sum = _reducer(Sum)  # noqa: A001 (mirrors numpy's name, as the API requires)
mean = _reducer(Mean)
max = _reducer(Max)  # noqa: A001
