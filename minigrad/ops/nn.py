"""Softmax family and cross-entropy, with numerically stable forward and backward.

``log_softmax(x) = x - logsumexp(x)``; its VJP is ``gz - softmax(x) * sum(gz)``.
``softmax``'s VJP is ``s * (gz - sum(gz * s))``. Both are done as single ops so the
backward pass never exponentiates large numbers.
"""
from __future__ import annotations

import numpy as np

from kernels import _validate as V
from minigrad.graph import Apply, Op
from minigrad.prologue import is_checked
from minigrad.types import INT_KINDS, TensorType
from minigrad.variables import as_variable


def _logsumexp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


class _AxisOp(Op):
    __props__ = ("axis",)

    def __init__(self, axis=-1):
        self.axis = int(axis)

    def make_node(self, x):
        x = as_variable(x)
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(f"{type(self).__name__} needs float input, got {x.dtype}")
        return Apply(self, [x], [TensorType(x.dtype, x.type.shape)])


class Softmax(_AxisOp):
    def perform(self, node, inputs):
        (x,) = inputs
        return (np.exp(x - _logsumexp(x, self.axis, True)),)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.reduce import sum as sum_

        (s,), (gz,) = outputs, output_grads
        return [s * (gz - sum_(gz * s, axis=self.axis, keepdims=True))]


class LogSoftmax(_AxisOp):
    def perform(self, node, inputs):
        (x,) = inputs
        return (x - _logsumexp(x, self.axis, True),)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.elemwise import Unary
        from minigrad.ops.reduce import sum as sum_

        (z,), (gz,) = outputs, output_grads
        return [gz - Unary("exp")(z) * sum_(gz, axis=self.axis, keepdims=True)]


class LogSumExp(Op):
    __props__ = ("axis", "keepdims")

    def __init__(self, axis=-1, keepdims=False):
        self.axis, self.keepdims = int(axis), bool(keepdims)

    def make_node(self, x):
        x = as_variable(x)
        axis = self.axis % x.ndim
        shape = tuple(
            1 if i == axis else n for i, n in enumerate(x.type.shape)
            if self.keepdims or i != axis
        )
        return Apply(self, [x], [TensorType(x.dtype, shape)])

    def perform(self, node, inputs):
        return (np.asarray(_logsumexp(inputs[0], self.axis, self.keepdims)),)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.shape import expand_dims

        (x,), (gz,) = inputs, output_grads
        if not self.keepdims:
            gz = expand_dims(gz, self.axis % x.ndim)
        return [gz * Softmax(self.axis)(x)]


class PickColumns(Op):
    """``x[arange(n), labels]`` for a 2-D ``x``: one entry per row (labels checked)."""

    def make_node(self, x, labels):
        x, labels = as_variable(x), as_variable(labels)
        if x.ndim != 2 or labels.ndim != 1 or np.dtype(labels.dtype).kind not in INT_KINDS:
            raise TypeError("PickColumns needs a matrix and an integer vector of labels")
        return Apply(self, [x, labels], [TensorType(x.dtype, (x.type.shape[0],))])

    def perform(self, node, inputs):
        x, labels = inputs
        n, k = x.shape
        if labels.shape[0] != n:
            raise ValueError(
                f"{node.inputs[1].name or 'labels'}: {labels.shape[0]} labels for {n} rows"
            )
        if not is_checked(node):  # (the call's prologue checked them: prologue.py)
            V.check_index_range("labels", labels, k, message=lambda bad, k: (
                f"{node.inputs[1].name or 'labels'}: label {bad} is out of range for "
                f"{k} classes (valid: 0..{k - 1})"))
        return (x[np.arange(n), labels],)

    def grad(self, inputs, outputs, output_grads):
        from minigrad.ops.shape import shape_of

        x, labels = inputs
        return [PickColumnsGrad()(shape_of(x), labels, output_grads[0]), None]


class PickColumnsGrad(Op):
    """Zeros of ``x``'s shape (input ``shape_of(x)``) with ``gz`` at the label columns."""

    def make_node(self, shape, labels, gz):
        from minigrad.ops.shape import check_shape_input, static_shape

        shape = check_shape_input(as_variable(shape), self, "x")
        labels, gz = as_variable(labels), as_variable(gz)
        return Apply(self, [shape, labels, gz], [TensorType(gz.dtype, static_shape(shape))])

    def perform(self, node, inputs):
        from minigrad.ops.shape import shape_tuple

        shape, labels, gz = inputs
        shape = shape_tuple(shape)
        out = np.zeros(shape, dtype=node.outputs[0].dtype)
        out[np.arange(shape[0]), labels] = gz
        return (out,)


def softmax(x, axis=-1):
    return Softmax(axis)(x)


def log_softmax(x, axis=-1):
    return LogSoftmax(axis)(x)


def logsumexp(x, axis=-1, keepdims=False):
    return LogSumExp(axis, keepdims)(x)


def cross_entropy(logits, labels, weights=None):
    """Mean over rows of ``-w[y] * log_softmax(logits)[y]`` (``weights`` per class).

    With ``weights`` the mean is the plain mean over rows of the weighted terms (as the
    API states), not PyTorch's weight-normalised mean.
    """
    from minigrad.ops.elemwise import cast
    from minigrad.ops.indexing import take
    from minigrad.ops.reduce import mean

    logits = as_variable(logits)
    picked = PickColumns()(log_softmax(logits, axis=-1), labels)
    if weights is not None:  # weights follow the logits' dtype (float64 numpy weights
        picked = picked * take(cast(weights, logits.dtype), labels)  # must not upcast f32)
    return -mean(picked)
