"""Element-wise operations and their gradients (NumPy broadcasting included).

Each entry of the two tables below is one scalar function and its *vector-Jacobian
product*: given the gradient ``gz`` of the cost with respect to the output ``z``, return
the gradient with respect to each input. Element-wise ops have diagonal Jacobians, so the
VJP is just ``gz`` times the local derivative, e.g. for ``z = exp(x)`` it is ``gz * z``.

Broadcasting makes one extra step necessary: if ``x`` of shape ``(3,)`` was broadcast
against ``(5, 3)``, its gradient is ``gz`` *summed* over the broadcast axis. ``reduce_like``
does that, at run time, so it works whatever shapes are fed.

Gradients flowing into a table through row gathers are row-sparse (``RowSparseType``).
These ops accept them (``row_sparse_grad_ok``): ``gz * f'(x)`` with ``gz`` row-sparse
multiplies only the stored rows (see ``ops/rowsparse.py``), so sparsity survives
``(V ** 2)[idx]`` and friends.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.types import RowSparseType, TensorType
from minigrad.variables import TensorConstant, as_variable


def _broadcast_static(shapes):
    """Static broadcast of shapes that may hold ``None`` (unknown length)."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(ndim):
        lens = [s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0]
        known = {n for n in lens if n is not None and n != 1}
        if len(known) > 1:
            raise ValueError(f"shapes {shapes} cannot be broadcast together")
        if known:
            out.append(known.pop())
        elif any(n is None for n in lens):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def broadcast_error(op, variables, shapes, when):
    """A broadcast failure naming the variables, their shapes, the op, and what to do."""
    from minigrad.naming import describe

    shown = ", ".join(f"{describe(v)} of shape {tuple('?' if n is None else n for n in s)}"
                      for v, s in zip(variables, shapes))
    return ValueError(
        f"{op}: cannot broadcast {shown} ({when}). NumPy broadcasting compares shapes from "
        "the last axis: each pair of lengths must be equal or 1. Transpose (x.T), insert an "
        "axis (x[:, None]) or reshape one operand, or check the data you fed"
    )


def _is_weak_scalar(var):
    """A rank-0 constant made from a Python number adopts the other operand's dtype."""
    return isinstance(var, TensorConstant) and var.ndim == 0 and var.tag.get("weak", False)


def result_dtype(inputs):
    strong = [v.dtype for v in inputs if not _is_weak_scalar(v)]
    if not strong:
        return np.result_type(*[v.dtype for v in inputs]).name
    dtype = np.result_type(*strong)
    for v in inputs:
        if _is_weak_scalar(v) and np.dtype(v.dtype).kind == "f" and dtype.kind != "f":
            dtype = np.result_type(dtype, v.dtype)
    return np.dtype(dtype).name


class Elemwise(Op):
    """Apply ``fn`` element by element; the gradient rule comes from a table entry."""

    __props__ = ("name",)
    row_sparse_grad_ok = True
    table: dict = {}

    def __init__(self, name):
        if name not in self.table:
            raise ValueError(f"unknown {type(self).__name__} {name!r}")
        self.name = name
        self.fn, self.vjp = self.table[name][:2]
        self.out_kind = self.table[name][2] if len(self.table[name]) > 2 else None

    def __call__(self, *inputs):
        inputs = [as_variable(x) for x in inputs]
        if inputs and all(_is_weak_scalar(x) for x in inputs):
            # fold Python-number arithmetic now so the result stays a weak scalar
            const = as_variable(self.fn(*[x.data for x in inputs]).item())
            return const
        return super().__call__(*inputs)

    def __str__(self):
        return self.name

    def make_node(self, *inputs):
        inputs = [as_variable(x) for x in inputs]
        for x in inputs:
            if not isinstance(x.type, TensorType):
                raise TypeError(f"{self.name}: expected dense tensors, got {x.type}")
        try:
            shape = _broadcast_static([x.type.shape for x in inputs])
        except ValueError:
            raise broadcast_error(self, inputs, [x.type.shape for x in inputs],
                                  "while building the graph") from None
        dtype = self.out_kind or result_dtype(inputs)
        if dtype == "float":
            dtype = result_dtype(inputs)
            if np.dtype(dtype).kind != "f":
                dtype = "float64"
        return Apply(self, inputs, [TensorType(dtype, shape)])

    def perform(self, node, inputs):
        try:
            out = self.fn(*inputs)
        except ValueError:
            shapes = [np.shape(x) for x in inputs]
            try:
                np.broadcast_shapes(*shapes)
            except ValueError:
                from minigrad.naming import describe

                raise broadcast_error(self, node.inputs, shapes,
                                      f"in {describe(node.outputs[0])}, with the values fed"
                                      ) from None
            raise
        return (np.asarray(out, dtype=node.outputs[0].dtype),)

    def grad(self, inputs, outputs, output_grads):
        (gz,) = output_grads
        if gz is None or self.vjp is None:
            return [None] * len(inputs)
        grads = self.vjp(gz, outputs[0], *inputs)
        return [
            None if g is None or np.dtype(x.dtype).kind != "f" else reduce_like(g, x)
            for g, x in zip(grads, inputs)
        ]


def _ops():
    import minigrad.ops as ops

    return ops


# --------------------------------------------------------------------------------------
# The tables: name -> (numpy function, vjp(gz, z, *inputs) -> list of input gradients)


def _vjp_sqrt(gz, z, x):
    return [gz * (0.5 / z)]


def _vjp_log(gz, z, x):
    return [gz * (1.0 / x)]


UNARY_TABLE = {
    "neg": (np.negative, lambda gz, z, x: [-gz]),
    "abs": (np.abs, lambda gz, z, x: [gz * _ops().sign(x)]),
    "sign": (np.sign, None),
    "exp": (np.exp, lambda gz, z, x: [gz * z]),
    "log": (np.log, _vjp_log),
    "log1p": (np.log1p, lambda gz, z, x: [gz * (1.0 / (1.0 + x))]),
    "sqrt": (np.sqrt, _vjp_sqrt),
    "square": (np.square, lambda gz, z, x: [gz * (2.0 * x)]),
    "tanh": (np.tanh, lambda gz, z, x: [gz * (1.0 - z * z)]),
    "sigmoid": (lambda x: _sigmoid(x), lambda gz, z, x: [gz * (z * (1.0 - z))]),
    "relu": (lambda x: np.maximum(x, 0), lambda gz, z, x: [gz * _ops().cast(x > 0, x.dtype)]),
    "softplus": (lambda x: np.logaddexp(0, x), lambda gz, z, x: [gz * _ops().sigmoid(x)]),
}


def _sigmoid(x):
    # Stable for large |x|: exp is only ever taken of a non-positive number.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def _vjp_pow(gz, z, x, y):
    ops = _ops()
    gx = gz * (y * ops.pow(x, y - 1.0))
    gy = gz * (z * ops.log(ops.where(x > 0, x, 1.0)))
    return [gx, gy]


def _vjp_max(gz, z, x, y):
    ops = _ops()
    x_wins = ops.cast(x > y, gz.dtype) + 0.5 * ops.cast(ops.eq(x, y), gz.dtype)
    return [gz * x_wins, gz * (1.0 - x_wins)]


def _vjp_min(gz, z, x, y):
    ops = _ops()
    x_wins = ops.cast(x < y, gz.dtype) + 0.5 * ops.cast(ops.eq(x, y), gz.dtype)
    return [gz * x_wins, gz * (1.0 - x_wins)]


BINARY_TABLE = {
    "add": (np.add, lambda gz, z, x, y: [gz, gz]),
    "sub": (np.subtract, lambda gz, z, x, y: [gz, -gz]),
    "mul": (np.multiply, lambda gz, z, x, y: [gz * y, gz * x]),
    "true_div": (np.true_divide, lambda gz, z, x, y: [gz * (1.0 / y), -gz * (z / y)], "float"),
    "pow": (np.power, _vjp_pow),
    "maximum": (np.maximum, _vjp_max),
    "minimum": (np.minimum, _vjp_min),
    "lt": (np.less, None, "bool"),
    "le": (np.less_equal, None, "bool"),
    "gt": (np.greater, None, "bool"),
    "ge": (np.greater_equal, None, "bool"),
    "eq": (np.equal, None, "bool"),
    "neq": (np.not_equal, None, "bool"),
}


class Unary(Elemwise):
    table = UNARY_TABLE


class Binary(Elemwise):
    table = BINARY_TABLE


class Where(Op):
    """``where(cond, a, b)``: the gradient goes to ``a`` where ``cond`` holds, else ``b``."""

    def make_node(self, cond, a, b):
        cond, a, b = as_variable(cond), as_variable(a), as_variable(b)
        try:
            shape = _broadcast_static([cond.type.shape, a.type.shape, b.type.shape])
        except ValueError:
            raise broadcast_error("where", [cond, a, b], [v.type.shape for v in (cond, a, b)],
                                  "while building the graph") from None
        return Apply(self, [cond, a, b], [TensorType(result_dtype([a, b]), shape)])

    def perform(self, node, inputs):
        cond, a, b = inputs
        return (np.asarray(np.where(cond, a, b), dtype=node.outputs[0].dtype),)

    def grad(self, inputs, outputs, output_grads):
        cond, a, b = inputs
        (gz,) = output_grads
        zero = as_variable(0.0)
        return [
            None,
            reduce_like(where(cond, gz, zero), a),
            reduce_like(where(cond, zero, gz), b),
        ]


def where(cond, a, b):
    return Where()(cond, a, b)


class Cast(Op):
    """Change dtype; the gradient is cast back (and vanishes for integer targets)."""

    __props__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name

    def make_node(self, x):
        x = as_variable(x)
        return Apply(self, [x], [TensorType(self.dtype, x.type.shape)])

    def perform(self, node, inputs):
        return (np.asarray(inputs[0]).astype(self.dtype),)

    def grad(self, inputs, outputs, output_grads):
        (x,), (gz,) = inputs, output_grads
        if gz is None or np.dtype(x.dtype).kind != "f" or np.dtype(self.dtype).kind != "f":
            return [None]
        return [cast(gz, x.dtype)]


def cast(x, dtype):
    x = as_variable(x)
    dtype = np.dtype(dtype).name
    return x if x.dtype == dtype else Cast(dtype)(x)


# --------------------------------------------------------------------------------------
# Undoing broadcasting in gradients


class ReduceLike(Op):
    """Sum ``g`` over the axes along which ``x`` was broadcast, giving ``x``'s shape.

    Decided at run time from the actual shapes, so a ``(1, D)`` bias fed to a graph
    declared with unknown lengths still gets a correct ``(1, D)`` gradient.
    """

    def make_node(self, g, shape):
        from minigrad.ops.shape import check_shape_input, static_shape

        g, shape = as_variable(g), check_shape_input(as_variable(shape), self, "x")
        return Apply(self, [g, shape], [TensorType(g.dtype, static_shape(shape))])

    def perform(self, node, inputs):
        from minigrad.ops.shape import shape_tuple

        g, shape = inputs
        return (sum_to_shape(g, shape_tuple(shape)),)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.shape import broadcast_like

        g, x = inputs
        return [broadcast_like(output_grads[0], g), None]


class MulReduceLike(Op):
    """``reduce_like(a * b, x)`` in one pass (the rewriter fuses the pair).

    The gradient of a broadcast product, e.g. of a ``(n, 1)`` weight times ``(n, d)`` rows,
    is ``sum over d of gz * rows``: an einsum reads both operands once and never builds the
    ``(n, d)`` product. Shapes it cannot express as one einsum fall back to the two steps.
    """

    def inner_graph(self, node):
        """``ReduceLike(a * b, shape)``: the two nodes this one replaces."""
        a, b, shape = (v.type.make_variable(name=n) for v, n in zip(node.inputs, "abx"))
        shape.name = "shape"
        return [a, b, shape], [ReduceLike()(Binary("mul")(a, b), shape)]

    def make_node(self, a, b, shape):
        from minigrad.ops.shape import check_shape_input, static_shape

        a, b = as_variable(a), as_variable(b)
        shape = check_shape_input(as_variable(shape), self, "x")
        return Apply(self, [a, b, shape],
                     [TensorType(result_dtype([a, b]), static_shape(shape))])

    def perform(self, node, inputs):
        from minigrad.ops.shape import shape_tuple
        from minigrad.types import array_module

        a, b, shape = inputs
        xp, shape, dtype = array_module(a), shape_tuple(shape), node.outputs[0].dtype
        if a.shape != b.shape or a.ndim != len(shape) or a.ndim > 8:
            return (sum_to_shape(a * b, shape).astype(dtype, copy=False),)
        axes = "abcdefgh"[: a.ndim]
        kept = "".join(c for c, n, m in zip(axes, shape, a.shape) if not (n == 1 and m != 1))
        out = xp.einsum(f"{axes},{axes}->{kept}", a, b)
        return (xp.asarray(out, dtype=dtype).reshape(shape),)


def sum_to_shape(g, shape):
    """Sum ``g`` over the axes broadcast to reach it from ``shape`` (NumPy or CuPy)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def reduce_like(g, x):
    """The gradient ``g`` of a broadcast result, brought back to the shape of ``x``."""
    if isinstance(g.type, RowSparseType):
        return _ops().rowsparse_reduce_like(g, x)
    if g.type.shape == x.type.shape and None not in x.type.shape:
        return g
    return ReduceLike()(g, _ops().shape_of(x))
