"""Graph rewrites applied by ``mg.function`` before it compiles a graph.

Each rewrite is a plain function ``outputs -> new outputs`` registered with tags; the
compiler runs the ones tagged ``"default"`` in registration order. Local rewrites (look
at one node, maybe return replacements) go through :func:`apply_local`, which rebuilds
the graph bottom-up and repeats until nothing changes.

* ``merge``: identical nodes (same Op, same inputs) and equal constants become one.
* ``constant_folding``: nodes whose inputs are all constants are computed once.
* ``take_through_elemwise``: ``f(T)[idx] -> f(T[idx])`` — a gather commutes with
  element-wise ops, so ``(V ** 2)[idx]`` squares only the gathered rows.
* ``shape_only_inputs``: an op that needs only the *shape* of an input (``TakeGrad``,
  ``CSRColumns``) reads it from the element-wise op's own input, so ``V ** 2`` is not
  computed just to learn its shape.
* ``csr_pattern``: the stored columns of ``square(X)`` are those of ``X``, so the FM's two
  sparse products share one gather of ``V``.
* ``merge_take_grads``: two row-sparse gradients of the same gather are added row-wise
  before the optimizer coalesces them.
* ``fuse_mul_reduce``: ``reduce_like(a * b, x)`` (the gradient of a broadcast product)
  becomes one einsum.
* ``simplify``: ``x * 1``, ``x ** 1`` and ``x ** 2`` become ``x``, ``x``, ``square(x)``.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Constant, toposort
from minigrad.ops.elemwise import Binary, Elemwise, Unary
from minigrad.ops.indexing import Take
from minigrad.types import TensorType
from minigrad.variables import TensorConstant

REGISTRY = []  # (name, function, tags)


def register(*tags):
    def deco(fn):
        REGISTRY.append((fn.__name__, fn, set(tags)))
        return fn

    return deco


def rewrite(outputs, include=("default",), exclude=()):
    """Run the registered rewrites whose tags match; returns the new outputs."""
    for _name, fn, tags in REGISTRY:
        if tags & set(include) and not tags & set(exclude):
            outputs = fn(outputs)
    return outputs


def apply_local(outputs, local, max_passes=20):
    """Rebuild the graph of ``outputs``, letting ``local(node)`` replace node outputs."""
    for _ in range(max_passes):
        memo, changed = {}, False
        for node in toposort(outputs):
            inputs = [memo.get(i, i) for i in node.inputs]
            if any(a is not b for a, b in zip(inputs, node.inputs)):
                new_node = node.op.make_node(*inputs)
                for old, new in zip(node.outputs, new_node.outputs):
                    new.name = old.name
                    new.tag = dict(old.tag)
            else:
                new_node = node
            replacement = local(new_node)
            if replacement is not None:
                changed = True
                new_outputs = replacement
            else:
                new_outputs = new_node.outputs
            for old, new in zip(node.outputs, new_outputs):
                if new is not old:
                    memo[old] = new
        outputs = [memo.get(o, o) for o in outputs]
        if not changed:
            return outputs
    return outputs


# --------------------------------------------------------------------------------------


@register("default", "merge")
def merge(outputs):
    """Common-subexpression elimination: one node per (Op, inputs), one per constant."""
    canon_const, seen, memo = {}, {}, {}

    def canon(var):
        var = memo.get(var, var)
        if isinstance(var, Constant):
            return canon_const.setdefault(var.signature(), var)
        return var

    for node in toposort(outputs):
        inputs = [canon(i) for i in node.inputs]
        if node.op.destroy_map:
            key = None
        else:
            key = (node.op, tuple(id(i) for i in inputs))
        if key is not None and key in seen:
            for old, new in zip(node.outputs, seen[key]):
                memo[old] = new
            continue
        if any(a is not b for a, b in zip(inputs, node.inputs)):
            new_node = node.op.make_node(*inputs)
            for old, new in zip(node.outputs, new_node.outputs):
                new.name, new.tag = old.name, dict(old.tag)
                memo[old] = new
            outs = new_node.outputs
        else:
            outs = node.outputs
        if key is not None:
            seen[key] = outs
    return [canon(o) for o in outputs]


FOLD_MAX_ELEMENTS = 1 << 16


@register("default", "constant_folding")
def constant_folding(outputs):
    """Compute nodes whose inputs are all (small) constants at compile time."""

    def local(node):
        if node.op.destroy_map or not node.inputs:
            return None
        if not all(isinstance(i, Constant) for i in node.inputs):
            return None
        if not all(isinstance(o.type, TensorType) for o in node.outputs):
            return None
        if any(np.size(i.data) > FOLD_MAX_ELEMENTS for i in node.inputs):
            return None
        values = node.op.perform(node, [i.data for i in node.inputs])
        return [
            TensorConstant(o.type, np.asarray(v), name=o.name)
            for o, v in zip(node.outputs, values)
        ]

    return apply_local(outputs, local)


def _full_rank_inputs(node):
    """Inputs of an element-wise node that span its output (not broadcast on axis 0)."""
    out = node.outputs[0]
    return [x for x in node.inputs if x.ndim == out.ndim and x.type.shape[0] != 1]


@register("default", "take_through_elemwise")
def take_through_elemwise(outputs):
    """``f(T, c)[idx] -> f(T[idx], c)`` for element-wise ``f``."""

    def local(node):
        if not isinstance(node.op, Take):
            return None
        table, idx = node.inputs
        inner = table.owner
        if inner is None or not isinstance(inner.op, Elemwise):
            return None
        out = inner.outputs[0]
        if out.ndim == 0:
            return None
        full = _full_rank_inputs(inner)
        others = [x for x in inner.inputs if x not in full]
        # two inputs of unknown row count may broadcast against each other at run time
        # (a (1, D) shared bias has static shape (?, ?)): gathering both could fail
        if len(full) != 1 or (idx.ndim == 0 and any(x.ndim == out.ndim for x in others)):
            return None
        if any(x.ndim == out.ndim and x.type.shape[0] != 1 for x in others):
            return None
        new_inputs = [Take()(x, idx) if x in full else x for x in inner.inputs]
        result = type(inner.op)(inner.op.name).make_node(*new_inputs).outputs[0]
        if result.dtype != node.outputs[0].dtype:
            return None
        return [result]

    return apply_local(outputs, local)


def _same_shape_source(var):
    """A variable with the same run-time shape as ``var`` that is cheaper to reach."""
    while var.owner is not None and isinstance(var.owner.op, (Unary, Binary)):
        node = var.owner
        # only when no other input can broadcast it (all their static lengths are 1):
        # x (?, ?) fed (3, 1) times y (?, ?) fed (1, 4) has neither's shape
        full = [x for x in node.inputs if x.ndim == var.ndim]
        others = [x for x in node.inputs if x not in full]
        if len(full) != 1 or any(n != 1 for x in others for n in x.type.shape):
            break
        var = full[0]
    return var


@register("default", "shape_only_inputs")
def shape_only_inputs(outputs):
    def local(node):
        positions = getattr(node.op, "shape_only_inputs", ())
        if not positions:
            return None
        inputs = list(node.inputs)
        for p in positions:
            inputs[p] = _same_shape_source(inputs[p])
        if all(a is b for a, b in zip(inputs, node.inputs)):
            return None
        return node.op.make_node(*inputs).outputs

    return apply_local(outputs, local)


@register("default", "csr_pattern")
def csr_pattern(outputs):
    """``CSRColumns(f(X), W) -> CSRColumns(X, W)`` when ``f`` keeps the sparsity pattern,
    so gathers through ``X`` and ``f(X)`` become the same node after ``merge``."""
    from minigrad.ops.sparse import CSRColumns

    def local(node):
        if not isinstance(node.op, CSRColumns):
            return None
        X, W = node.inputs
        source = X
        while source.owner is not None and getattr(source.owner.op, "same_pattern", False):
            source = source.owner.inputs[0]
        return None if source is X else node.op.make_node(source, W).outputs

    return merge(apply_local(outputs, local))


@register("default", "fuse_mul_reduce")
def fuse_mul_reduce(outputs):
    """``ReduceLike(a * b, x) -> MulReduceLike(a, b, x)`` when nothing else reads ``a * b``."""
    from minigrad.ops.elemwise import MulReduceLike, ReduceLike

    readers = {}
    for node in toposort(outputs):
        for inp in node.inputs:
            readers[inp] = readers.get(inp, 0) + 1
    for out in outputs:
        readers[out] = readers.get(out, 0) + 1

    def local(node):
        if not isinstance(node.op, ReduceLike):
            return None
        product, x = node.inputs
        inner = product.owner
        if inner is None or not (isinstance(inner.op, Binary) and inner.op.name == "mul"):
            return None
        if readers.get(product, 0) != 1:
            return None
        fused = MulReduceLike().make_node(*inner.inputs, x).outputs[0]
        return [fused] if fused.type == node.outputs[0].type else None

    return apply_local(outputs, local)


@register("default", "merge_take_grads")
def merge_take_grads(outputs):
    """``TakeGrad(T, i, a) + TakeGrad(T, i, b) -> TakeGrad(T, i, a + b)``.

    Two gathers of the same rows (``dot(X, V)`` and ``dot(square(X), V ** 2)`` in a
    factorization machine) give row-sparse gradients with equal indices; adding their rows
    first halves what the optimizer has to sort and coalesce.
    """
    from minigrad.ops.indexing import TakeGrad
    from minigrad.ops.rowsparse import RowSparseAdd, RowSparseWithValues

    def rows_of(var):
        """``(table, idx, rows)`` when ``var`` is ``TakeGrad(table, idx, rows)`` for a 1-D
        ``idx``, possibly with its rows replaced (``RowSparseWithValues``)."""
        node = var.owner
        if node is not None and isinstance(node.op, RowSparseWithValues):
            inner = rows_of(node.inputs[0])
            return None if inner is None else (*inner[:2], node.inputs[1])
        if node is None or not isinstance(node.op, TakeGrad) or node.inputs[1].ndim != 1:
            return None
        return tuple(node.inputs)

    def local(node):
        if not isinstance(node.op, RowSparseAdd):
            return None
        a, b = rows_of(node.inputs[0]), rows_of(node.inputs[1])
        if a is None or b is None or a[0] is not b[0] or a[1] is not b[1]:
            return None
        summed = Binary("add")(a[2], b[2])
        if summed.ndim != a[2].ndim or summed.dtype != node.outputs[0].dtype:
            return None
        return TakeGrad().make_node(a[0], a[1], summed).outputs

    return apply_local(outputs, local)


def _scalar_constant_value(var):
    if isinstance(var, Constant) and np.ndim(var.data) == 0:
        return float(var.data)
    return None


@register("default", "simplify")
def simplify(outputs):
    """``x * 1 -> x``, ``x ** 1 -> x``, ``x ** 2 -> square(x)`` (same type only)."""

    def local(node):
        op, out = node.op, node.outputs[0]
        if not isinstance(op, Binary) or op.name not in ("mul", "pow"):
            return None
        a, b = node.inputs
        if op.name == "pow":
            power = _scalar_constant_value(b)
            if power == 1.0 and a.type == out.type:
                return [a]
            if power == 2.0 and a.dtype == out.dtype:
                return [Unary("square")(a)]
            return None
        for x, other in ((a, b), (b, a)):
            if _scalar_constant_value(other) == 1.0 and x.type == out.type:
                return [x]
        return None

    return apply_local(outputs, local)


from minigrad import rewrite_fusion  # noqa: E402,F401  (the "fuse" rewrites register last)
