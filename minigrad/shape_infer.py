"""Shape inference on symbolic dimensions: which lengths are *the same* at run time.

A static shape says little in a gradient graph: almost every length is ``None`` (the batch).
Yet most of those unknown lengths are provably equal. ``sigmoid(z) * gz`` has the shape of
``z`` because both operands have it; ``E[idx]`` has ``idx``'s length. So each axis of each
variable gets a *dimension key*: ``("static", n)`` for a known length, or the key of the axis
it provably equals (an input's axis, the batch axis of a CSR input, the stored entries of a
CSR pattern), or a fresh key of its own when nothing is known. Equal keys mean equal lengths
in every call: this is what lets the rewrite ``shape_inference`` (registered in
``rewrite.py``)

* drop ``ReduceLike(g, Shape(x))``, ``BroadcastLike(g, Shape(x))``, ``ReshapeLike(g,
  Shape(x))`` when ``g`` already has ``x``'s dimensions (the gradient of ``a * b`` for equal
  shapes: no sum, no copy, two nodes fewer each);
* read every ``Shape(x)`` from the earliest variable with ``x``'s dimensions, so that one
  ``Shape`` node serves them all after ``merge``.

The rules are conservative: an Op without a rule gives fresh keys (nothing is assumed), and
broadcasting two unknown lengths with different keys gives a fresh key too (either may be 1).
"""
from __future__ import annotations

import itertools

from minigrad.types import CSRType


class DimKeys:
    """Dimension keys of every variable of a graph, computed once in topological order."""

    def __init__(self, nodes):
        self._keys = {}
        self._fresh = itertools.count()
        for node in nodes:
            try:
                found = _RULES.get(type(node.op).__name__, _fresh_rule)(self, node)
            except Exception:  # a rule must never stop a compile: assume nothing
                found = None
            for k, out in enumerate(node.outputs):
                keys = found[k] if found is not None and k < len(found) else None
                self._keys[out] = keys if keys is not None and len(keys) == _ndim(out) \
                    else self._fresh_keys(out)

    def _fresh_keys(self, var):
        shape = getattr(var.type, "shape", ())
        return tuple(("static", n) if n is not None else ("fresh", next(self._fresh))
                     for n in shape)

    def of(self, var):
        """The keys of ``var`` (a leaf: its static lengths, else its own axes)."""
        keys = self._keys.get(var)
        if keys is None:
            shape = getattr(var.type, "shape", ())
            keys = tuple(("static", n) if n is not None else ("axis", var, a)
                         for a, n in enumerate(shape))
            self._keys[var] = keys
        return keys

    def of_shape_value(self, shape_var):
        """The keys of the shape held by ``shape_var`` (``Shape(x)``: ``x``'s keys)."""
        from minigrad.ops.shape import shape_source, static_shape

        source = shape_source(shape_var)
        if source is not None:
            return self.of(source)
        static = static_shape(shape_var)
        if None in static:
            return None
        return tuple(("static", n) for n in static)


def _ndim(var):
    return len(getattr(var.type, "shape", ()))


def _fresh_rule(dims, node):
    return None


def _same_as_input(dims, node):
    return [dims.of(node.inputs[0])]


def _broadcast(dims, node):
    """NumPy broadcasting on keys: axes aligned from the right; a static 1 gives way; equal
    keys stay; a known length wins over unknown ones; otherwise nothing is known."""
    out_ndim = _ndim(node.outputs[0])
    result = []
    for axis in range(out_ndim):
        candidates = set()
        for x in node.inputs:
            keys = dims.of(x)
            offset = len(keys) - out_ndim + axis
            if offset >= 0 and keys[offset] != ("static", 1):
                candidates.add(keys[offset])
        statics = {k for k in candidates if k[0] == "static"}
        if not candidates:
            result.append(("static", 1))
        elif len(statics) == 1:
            result.append(statics.pop())
        elif len(candidates) == 1:
            result.append(candidates.pop())
        else:
            return None
    return [tuple(result)]


def _take(dims, node):
    table, idx = node.inputs[0], node.inputs[-1]  # Take(T, idx), FreshTake(T, ..., idx)
    return [dims.of(idx) + dims.of(table)[1:]]


def _reduce(dims, node):
    keys, op = dims.of(node.inputs[0]), node.op
    if op.keepdims:
        return [tuple(("static", 1) if a in op.axes else k for a, k in enumerate(keys))]
    return [tuple(k for a, k in enumerate(keys) if a not in op.axes)]


def _like_last(dims, node):
    """Ops whose output has the shape held by their last input (``ReduceLike(g, s)``...)."""
    return [dims.of_shape_value(node.inputs[-1])]


def _like_first(dims, node):
    """``SubtensorGrad(shape, gz)`` and its dynamic form: the shape is the first input."""
    return [dims.of_shape_value(node.inputs[0])]


def _expand_dims(dims, node):
    keys = list(dims.of(node.inputs[0]))
    for a in node.op.axes:
        keys.insert(a, ("static", 1))
    return [tuple(keys)]


def _transpose(dims, node):
    keys = dims.of(node.inputs[0])
    return [tuple(keys[a] for a in node.op.axes)]


def _matmul(dims, node):
    a, b = (dims.of(v) for v in node.inputs)
    if len(a) == 2 and len(b) == 2:
        return [(a[0], b[1])]
    return None


def _pattern_source(X):
    while X.owner is not None and getattr(X.owner.op, "same_pattern", False):
        X = X.owner.inputs[0]
    return X


def _csr_columns(dims, node):
    return [(("nnz", _pattern_source(node.inputs[0])),)]


def _csr_rows_times(dims, node):
    """``CSRGatheredDot(X, rows)``: one output row per row of ``X``, ``rows``' width."""
    X, rows = node.inputs[0], node.inputs[1]
    return [(dims.of(X)[0],) + dims.of(rows)[1:]]


def _csr_entries_times(dims, node):
    """``CSRGatheredDotGradRows(X, gz)``: one row per stored entry of ``X``."""
    X, gz = node.inputs[0], node.inputs[-1]
    return [(("nnz", _pattern_source(X)),) + dims.of(gz)[1:]]


def _csr_value(dims, node):
    X = node.inputs[0]
    if isinstance(X.type, CSRType):
        return [dims.of(X)]
    return None


_RULES = {
    "Unary": _same_as_input, "Cast": _same_as_input, "Softmax": _same_as_input,
    "LogSoftmax": _same_as_input, "Square": _csr_value,
    "Binary": _broadcast, "Where": _broadcast,
    "Take": _take, "FreshTake": _take,
    "Sum": _reduce, "Mean": _reduce, "Max": _reduce,
    "ReduceLike": _like_last, "BroadcastLike": _like_last, "ReshapeLike": _like_last,
    "MulReduceLike": _like_last,
    "SubtensorGrad": _like_first, "DynamicSubtensorGrad": _like_first,
    "ExpandDims": _expand_dims, "Transpose": _transpose, "MatMul": _matmul,
    "CSRColumns": _csr_columns, "CSRGatheredDot": _csr_rows_times,
    "CSRScaledGatheredDot": _csr_rows_times, "CSRGatheredDotGradRows": _csr_entries_times,
    "CSRScaledDotGradRows": _csr_entries_times,
    "PickColumns": lambda dims, node: [dims.of(node.inputs[0])[:1]],
    "PickColumnsGrad": _like_first,
}


def infer_shapes(fgraph):
    """Rewrite (``shape_inference``): drop the shape bookkeeping the keys prove useless
    and read each ``Shape`` from the earliest variable of the same dimensions."""
    from minigrad.ops.shape import Shape

    nodes = fgraph.toposort()
    dims = DimKeys(nodes)
    identity_ops = ("ReduceLike", "BroadcastLike", "ReshapeLike")
    pairs = []
    earliest = {}
    for var in [*fgraph.inputs, *fgraph.leaves()]:
        earliest.setdefault((dims.of(var), _kind(var)), var)
    for node in nodes:
        name = type(node.op).__name__
        if name in identity_ops:
            g, target = node.inputs[0], dims.of_shape_value(node.inputs[1])
            out = node.outputs[0]
            if (target is not None and dims.of(g) == target and g.type == out.type):
                pairs.append((out, g))
                continue
        if isinstance(node.op, Shape):
            x = node.inputs[0]
            rep = earliest.get((dims.of(x), _kind(x)))
            if rep is not None and rep is not x:
                pairs.append((node.outputs[0], Shape()(rep)))
        for out in node.outputs:
            earliest.setdefault((dims.of(out), _kind(out)), out)
    if pairs:
        fgraph.replace_all(pairs, reason="shape_inference")


def _kind(var):
    """A shape is only shared between values of the same kind (a CSR's is not a dense's:
    ``Shape`` accepts both, but keep them apart for readability)."""
    return type(var.type).__name__
