"""Ops that move elements around without arithmetic: shape, reshape, transpose,
broadcast, expand_dims, concatenate, stack and basic slicing.

Their gradients move ``gz`` back the same way: the VJP of a transpose is the inverse
transpose, of a reshape a reshape to the input's shape, of a slice a zero array with
``gz`` written into the slice, of a concatenation the matching pieces of ``gz``.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Constant, Op
from minigrad.ops.index_key import freeze_key, thaw_key
from minigrad.types import CSRType, RowSparseType, TensorType
from minigrad.variables import as_variable


class Shape(Op):
    """The run-time shape of ``x`` as an int64 vector of length ``x.ndim``.

    Ops that need only the *shape* of a value (``TakeGrad`` needs the table's shape, the VJP
    of a sum broadcasts to its input's shape) take this vector as an input instead of the
    value itself, so the graph states what they really read: a function that reads an
    exact-mode table only through gathers and ``Shape`` does not read its data (no flush);
    the CuPy backend never copies a device table to learn its shape; and the rewriter can
    take the shape from a cheaper variable of the same shape (``shape_of_same_shape``).
    No gradient: a shape is not differentiable (its input's gradient is disconnected).
    """

    #: reads its input's shape, never its data (``optim.ops.needs_flush``, backends)
    reads_shape_only = True

    def make_node(self, x):
        x = as_variable(x)
        if not isinstance(x.type, (TensorType, CSRType, RowSparseType)):
            raise TypeError(f"{x.type} has no shape")
        return Apply(self, [x], [TensorType("int64", (x.ndim,))])

    def perform(self, node, inputs):
        return (np.asarray(inputs[0].shape, dtype="int64"),)

    def grad(self, inputs, outputs, output_grads):
        return [None]


def shape_of(x):
    x = as_variable(x)
    if not isinstance(x.type, (TensorType, CSRType, RowSparseType)):
        raise TypeError(f"{x.type} has no shape")
    return Shape()(x)


def shape_source(shape_var):
    """The variable whose shape ``shape_var`` is (``x`` for ``Shape(x)``), else ``None``."""
    owner = shape_var.owner
    return owner.inputs[0] if owner is not None and isinstance(owner.op, Shape) else None


def static_shape(shape_var):
    """What is known before running about the shape held in ``shape_var``: a tuple with
    ``None`` for unknown lengths (shape inference for ops taking a shape value)."""
    source = shape_source(shape_var)
    if source is not None:
        return tuple(source.type.shape)
    if isinstance(shape_var, Constant):
        return tuple(int(n) for n in np.asarray(shape_var.data).reshape(-1))
    return (None,) * shape_var.type.shape[0]


def check_shape_input(shape_var, op, what):
    """Refuse anything but a shape value (``shape_of(x)``: an int64 vector of static
    length) where ``op`` takes the shape of ``what``."""
    t = shape_var.type
    known_length = t.ndim == 1 and (t.shape[0] is not None or isinstance(shape_var, Constant))
    if not (isinstance(t, TensorType) and known_length and np.dtype(t.dtype).kind in "iu"):
        raise TypeError(
            f"{type(op).__name__} takes the shape of {what} as a value (shape_of({what})), "
            f"an integer vector of known length; got {t}"
        )
    return shape_var


def value_name(var, default):
    """The name to show for ``var`` in an error, looking through ``Shape``: the table's."""
    source = shape_source(var)
    return (source if source is not None else var).name or default


def shape_tuple(value):
    """A run-time shape value (int64 vector, or a tuple) as a tuple of Python ints."""
    return tuple(value.tolist()) if isinstance(value, np.ndarray) else tuple(value)


class ProdShape(Op):
    """Total number of elements of ``x`` (int64 scalar)."""

    def make_node(self, x):
        return Apply(self, [x], [TensorType("int64", ())])

    def perform(self, node, inputs):
        return (np.asarray(np.size(inputs[0]), dtype="int64"),)

    def grad(self, inputs, outputs, output_grads):
        return [None]


def prod_shape(x):
    return ProdShape()(x)


class Reshape(Op):
    """Reshape to a static target (one entry may be -1)."""

    __props__ = ("shape",)

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)
        if sum(s == -1 for s in self.shape) > 1:
            raise ValueError(f"reshape: at most one -1 allowed, got {self.shape}")

    def make_node(self, x):
        x = as_variable(x)
        static = tuple(None if s == -1 else s for s in self.shape)
        return Apply(self, [x], [TensorType(x.dtype, static)])

    def perform(self, node, inputs):
        try:
            return (np.reshape(inputs[0], self.shape),)
        except ValueError as err:
            raise ValueError(
                f"cannot reshape {node.inputs[0]} of shape {np.shape(inputs[0])} "
                f"to {self.shape}"
            ) from err

    def grad(self, inputs, outputs, output_grads):
        (x,), (gz,) = inputs, output_grads
        return [reshape_like(gz, x)]


class ReshapeLike(Op):
    """Reshape ``g`` to a run-time shape (``reshape_like(g, x)``: ``x``'s, for gradients)."""

    def make_node(self, g, shape):
        g, shape = as_variable(g), check_shape_input(as_variable(shape), self, "x")
        return Apply(self, [g, shape], [TensorType(g.dtype, static_shape(shape))])

    def perform(self, node, inputs):
        g, shape = inputs
        return (np.reshape(g, shape_tuple(shape)),)

    def grad(self, inputs, outputs, output_grads):
        g, _ = inputs
        return [reshape_like(output_grads[0], g), None]


def reshape(x, shape):
    return Reshape(shape)(x)


def reshape_like(g, x):
    return ReshapeLike()(g, shape_of(x))


class Transpose(Op):
    """Permute axes (reverse them when ``axes`` is ``None``)."""

    __props__ = ("axes",)

    def __init__(self, axes):
        self.axes = tuple(axes)

    def make_node(self, x):
        x = as_variable(x)
        if sorted(self.axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {self.axes} do not fit rank {x.ndim}")
        shape = tuple(x.type.shape[a] for a in self.axes)
        return Apply(self, [x], [TensorType(x.dtype, shape)])

    def perform(self, node, inputs):
        return (np.transpose(inputs[0], self.axes),)

    def grad(self, inputs, outputs, output_grads):
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        return [Transpose(inverse)(output_grads[0])]


def transpose(x, axes=None):
    x = as_variable(x)
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(axes)
    return Transpose(axes)(x)


class ExpandDims(Op):
    """Insert length-1 axes at the positions ``axes`` of the output."""

    __props__ = ("axes",)

    def __init__(self, axes):
        self.axes = tuple(sorted(axes))

    def make_node(self, x):
        x = as_variable(x)
        shape = list(x.type.shape)
        for a in self.axes:
            shape.insert(a, 1)
        return Apply(self, [x], [TensorType(x.dtype, tuple(shape))])

    def perform(self, node, inputs):
        x = inputs[0]
        shape = list(np.shape(x))
        for a in self.axes:  # a reshape: np.expand_dims costs ~10x more per call
            shape.insert(a, 1)
        return (np.reshape(x, shape),)

    def grad(self, inputs, outputs, output_grads):
        (x,), (gz,) = inputs, output_grads
        return [reshape_like(gz, x)]


def expand_dims(x, axes):
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return ExpandDims(axes)(x) if axes else x


class BroadcastLike(Op):
    """Broadcast ``g`` to a run-time shape (``broadcast_like(g, x)``: the VJP of a sum)."""

    def make_node(self, g, shape):
        g, shape = as_variable(g), check_shape_input(as_variable(shape), self, "x")
        return Apply(self, [g, shape], [TensorType(g.dtype, static_shape(shape))])

    def perform(self, node, inputs):
        g, shape = inputs
        g = np.asarray(g)
        out = np.empty(shape_tuple(shape), dtype=g.dtype)
        out[...] = g  # broadcasts (ValueError if it cannot), one pass, no view object
        return (out,)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.elemwise import reduce_like

        g, _ = inputs
        return [reduce_like(output_grads[0], g), None]


def broadcast_like(g, x):
    return BroadcastLike()(g, shape_of(x))


class Concatenate(Op):
    """Join tensors along an existing axis; the VJP slices ``gz`` back into pieces."""

    __props__ = ("axis",)

    def __init__(self, axis):
        self.axis = int(axis)

    def make_node(self, *xs):
        from minigrad.ops.elemwise import result_dtype

        xs = [as_variable(x) for x in xs]
        ndim = xs[0].ndim
        if any(x.ndim != ndim for x in xs):
            raise ValueError("concatenate: all inputs need the same rank")
        axis = self.axis % ndim
        shape = list(xs[0].type.shape)
        lens = [x.type.shape[axis] for x in xs]
        shape[axis] = None if None in lens else sum(lens)
        return Apply(self, xs, [TensorType(result_dtype(xs), tuple(shape))])

    def perform(self, node, inputs):
        return (np.concatenate(inputs, axis=self.axis).astype(node.outputs[0].dtype, copy=False),)

    def grad(self, inputs, outputs, output_grads):
        pieces = SplitLike(self.axis)(output_grads[0], *inputs)
        pieces = pieces if isinstance(pieces, list) else [pieces]
        return [p if np.dtype(x.dtype).kind == "f" else None for p, x in zip(pieces, inputs)]


class SplitLike(Op):
    """Split ``g`` along ``axis`` into pieces as long as the reference inputs."""

    __props__ = ("axis",)

    def __init__(self, axis):
        self.axis = int(axis)

    def make_node(self, g, *refs):
        return Apply(self, [g, *refs], [TensorType(g.dtype, r.type.shape) for r in refs])

    def perform(self, node, inputs):
        g, refs = inputs[0], inputs[1:]
        bounds = np.cumsum([np.shape(r)[self.axis] for r in refs])[:-1]
        return tuple(np.ascontiguousarray(p) for p in np.split(g, bounds, axis=self.axis))

    def grad(self, inputs, outputs, output_grads):
        raise NotImplementedError("second derivative of concatenate")


def concatenate(xs, axis=0):
    return Concatenate(axis)(*xs)


def stack(xs, axis=0):
    """Join along a new axis: expand each input, then concatenate."""
    xs = [as_variable(x) for x in xs]
    axis = axis % (xs[0].ndim + 1)
    return concatenate([expand_dims(x, axis) for x in xs], axis=axis)


# --------------------------------------------------------------------------------------
# Basic slicing: x[1:3, ::2, 0]


class Subtensor(Op):
    """Basic (view) slicing with a static key."""

    __props__ = ("key",)

    def __init__(self, key):
        self.key = key

    def make_node(self, x):
        x = as_variable(x)
        # unknown lengths get a length every int in the key fits (a zero-stride probe)
        fit = 1 + max([abs(k[1]) for k in self.key if k[0] == "int"], default=0)
        probe = np.broadcast_to(np.int8(0), [fit if s is None else s for s in x.type.shape])
        try:
            out_ndim = probe[thaw_key(self.key)].ndim
        except IndexError as err:
            raise IndexError(f"index {thaw_key(self.key)} does not fit {x.type}: {err}") from None
        return Apply(self, [x], [TensorType(x.dtype, (None,) * out_ndim)])

    def perform(self, node, inputs):
        try:
            return (np.asarray(inputs[0][thaw_key(self.key)]),)
        except IndexError as err:
            raise IndexError(f"{node.inputs[0]}[{thaw_key(self.key)}]: {err}") from None

    def grad(self, inputs, outputs, output_grads):
        (x,), (gz,) = inputs, output_grads
        return [SubtensorGrad(self.key)(shape_of(x), gz)]


class SubtensorGrad(Op):
    """Zeros of the shape ``shape`` (``x``'s) with ``gz`` written into the slice ``key``."""

    __props__ = ("key",)

    def __init__(self, key):
        self.key = key

    def make_node(self, shape, gz):
        shape, gz = check_shape_input(as_variable(shape), self, "x"), as_variable(gz)
        return Apply(self, [shape, gz], [TensorType(gz.dtype, static_shape(shape))])

    def perform(self, node, inputs):
        shape, gz = inputs
        out = np.zeros(shape_tuple(shape), dtype=node.outputs[0].dtype)
        out[thaw_key(self.key)] = gz
        return (out,)

    def grad(self, inputs, outputs, output_grads):
        return [None, Subtensor(self.key)(output_grads[0])]


def subtensor(x, key):
    from minigrad.ops.dynamic_slice import DynamicSubtensor

    frozen, scalars = freeze_key(key)
    if scalars:  # X[i * B:(i + 1) * B] with i an integer scalar input
        return DynamicSubtensor(frozen)(x, *scalars)
    return Subtensor(frozen)(x)
