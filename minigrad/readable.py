"""What the readable views hide, and a one-line explanation of every internal Op.

``mg.grad`` writes gradients with a few *bookkeeping* Ops that carry no maths of their
own: they put axes back (``ExpandDims``), broadcast a gradient to its input's shape
(``BroadcastLike``), sum it back over broadcast axes (``ReduceLike``) or change its dtype
(``Cast``). ``debugprint(..., readable=True)``, ``pp`` and ``to_dot(..., readable=True)``
look *through* them to the value they carry, and drop the ``Shape`` values such an Op
takes (``broadcast_like(g, x)`` is ``BroadcastLike(g, Shape(x))``): a borrowed shape is
not a data dependency.

The tables are keyed by class name so that Ops defined elsewhere (fused Ops, optimizer
Ops, a student's own Op) get the same treatment by declaring ``bookkeeping = True`` and
``legend = "..."`` on the class.
"""
from __future__ import annotations

import re

#: Op class name -> index of the input whose value the op passes on (looked through)
BOOKKEEPING = {
    "ReduceLike": 0,
    "BroadcastLike": 0,
    "ReshapeLike": 0,
    "ExpandDims": 0,
    "Cast": 0,
    "FlattenBatch": 0,
}

#: one line per internal Op a student meets in a gradient or compiled graph
LEGEND = {
    "Take": "T[idx]: gather whole rows of the table T (idx any integer array)",
    "TakeGrad": "gradient of T[idx]: rows of gz tagged with idx (RowSparse, never V x D)",
    "RowSparseAdd": "sum of row-sparse gradients: their (index, row) lists concatenated",
    "DenseAddRowSparse": "dense + row-sparse: scatter-add the rows into a dense copy",
    "RowSparseToDense": "a row-sparse gradient made dense (scatter-add into zeros)",
    "RowSparseCoalesce": "sorts the row indices of a row-sparse value, summing duplicates",
    "RowSparseValues": "the stored rows of a row-sparse value",
    "RowSparseIndices": "the row indices of a row-sparse value",
    "RowSparseWithValues": "the same row indices with new rows (e.g. scaled or cast)",
    "RowSparseReduceColumns": "row-sparse gradient summed over broadcast columns",
    "ReduceLike": "sums a gradient over the axes its input was broadcast along",
    "BroadcastLike": "repeats a gradient over the axes a sum/mean removed (the VJP of a sum)",
    "MulReduceLike": "a * b summed back to an input's shape in one pass (fused ReduceLike)",
    "ReshapeLike": "reshapes a gradient back to its input's shape",
    "ExpandDims": "inserts length-1 axes so a reduced gradient broadcasts again",
    "Cast": "changes the dtype (bool masks become 0.0/1.0)",
    "CountOf": "number of elements a mean averaged over, read at run time",
    "SubtensorGrad": "gradient of a slice: zeros with gz written into the slice",
    "DynamicSubtensor": "slice whose bounds are integer scalar variables, e.g. X[i*B:(i+1)*B]",
    "DynamicSubtensorGrad": "gradient of a symbolic slice: zeros with gz written into it",
    "SplitLike": "gradient of concatenate: gz cut back into the pieces' lengths",
    "FlattenBatch": "merges leading axes: x.reshape(-1, x.shape[-1])",
    "Shape": "the run-time shape of a value",
    "ProdShape": "the run-time number of elements of a value",
    "PickColumns": "x[i, y[i]] for every row i (the label's column)",
    "PickColumnsGrad": "gradient of PickColumns: gz placed at the label columns",
    "CSRColumns": "the stored column ids of a CSR batch (which table rows it reads)",
    "CSRGatheredDot": "X @ W for a CSR X, from the rows of W its stored columns gathered",
    "CSRGatheredDotGradRows": "gradient of X @ W w.r.t. the gathered rows: X.data * gz[row]",
    "CSRScaledGatheredDot": "X @ (s * W) for a CSR X and a per-row scale s, in one pass",
    "CSRScaledDotGradRows": "gradient of X @ (s * W) w.r.t. the gathered rows of W",
    "CSRScaledDotGradScale": "gradient of X @ (s * W) w.r.t. the scale s",
    "SumRows": "row sums of a CSR matrix",
    "Square": "element-wise square of a CSR matrix's stored values",
    "AddGradientNoise": "adds N(0, eta / (1 + t)**gamma) noise to a gradient (touched rows only)",
    "BagOfWords": "(tokens, mask) as a CSR batch: one entry per real token",
    "PrepareRows": "coalesces a row-sparse gradient before an optimizer's row update",
    "RowUpdate": "the optimizer's in-place update of only the rows in the gradient",
    "AllRows": "a dense gradient seen as a row update of every row",
    "CatchUpRows": "exact mode: applies the skipped steps to rows touched again",
    "CatchUpAll": "exact mode: brings every row up to date before a dense read",
}


def op_name(op) -> str:
    return type(op).__name__


def is_bookkeeping(op) -> bool:
    return bool(getattr(op, "bookkeeping", False)) or op_name(op) in BOOKKEEPING


def passed_input(op) -> int:
    return getattr(op, "bookkeeping_input", BOOKKEEPING.get(op_name(op), 0))


#: Ops a student wrote themselves (``x + y``, ``.sum()``, ``@``...): no legend needed
PLAIN_MATHS = {
    "Unary", "Binary", "Elemwise", "Where", "Sum", "Mean", "Max", "MatMul", "Transpose",
    "Reshape", "Subtensor", "Concatenate", "Softmax", "LogSoftmax", "LogSumExp",
}
LEGEND_WIDTH = 76


def legend_line(op):
    """The one-line explanation of ``op``'s class, or ``None`` for plain maths.

    Ops named in neither table (a fused Op, another helper's Op) are explained by the
    first sentence of their class docstring, so every internal Op gets a line."""
    text = getattr(type(op), "legend", None) or LEGEND.get(op_name(op))
    if text or op_name(op) in PLAIN_MATHS:
        return text
    doc = (type(op).__doc__ or "").strip()
    if not doc or type(op).__doc__ == Op_doc():
        return None
    first = " ".join(doc.split("\n\n")[0].split()).replace("``", "")
    first = re.split(r"\.\s+(?=[A-Z])", first)[0].rstrip(".")
    return first if len(first) <= LEGEND_WIDTH else first[: LEGEND_WIDTH - 3] + "..."


def Op_doc():  # noqa: N802 - the docstring of the base class, which explains nothing
    from minigrad.graph import Op

    return Op.__doc__


def reads_shape_only(op) -> bool:
    """Whether ``op`` reads only the shape of its input (``Shape``), never its data."""
    return bool(getattr(op, "reads_shape_only", False))


def shape_only(node) -> set:
    """Positions of ``node``'s inputs it reads only for their shape (a ``Shape`` node's)."""
    return set(range(len(node.inputs))) if reads_shape_only(node.op) else set()


def is_shape_value(var) -> bool:
    """Whether ``var`` is ``Shape(x)`` for some ``x``."""
    return var.owner is not None and op_name(var.owner.op) == "Shape"


def shape_inputs(node) -> set:
    """Positions of the shape values an Op takes beside its data (the ``x`` of
    ``BroadcastLike(g, Shape(x))``, the table of ``TakeGrad(Shape(T), idx, gz)``): the
    readable views drop them. A shape that is the whole input (``x.shape[0]``) or an
    operand of arithmetic stays, it is the value being computed with."""
    from minigrad.ops.elemwise import Elemwise

    if isinstance(node.op, Elemwise):
        return set()
    found = {i for i, v in enumerate(node.inputs) if is_shape_value(v)}
    return found if len(found) < len(node.inputs) else set()


def data_inputs(node):
    """``node``'s inputs without the shapes it borrows (``shape_inputs``)."""
    skip = shape_inputs(node)
    return [v for i, v in enumerate(node.inputs) if i not in skip]


def _is_const(var, value):
    from minigrad.graph import Constant

    while var.owner is not None and is_bookkeeping(var.owner.op):
        var = var.owner.inputs[passed_input(var.owner.op)]
    if not isinstance(var, Constant):
        return False
    import numpy as np

    data = np.asarray(var.data)
    return data.size == 1 and float(data.reshape(-1)[0]) == value


def definite_reduction(g, x):
    """Axes of ``g`` that ``ReduceLike(g, x)`` (``x`` a shape value) certainly sums over,
    from static shapes
    (leading extra axes, and axes where ``x`` has a static 1 and ``g`` does not);
    ``()`` when the shapes say nothing (then it is the identity unless fed broadcasting
    values, and the views hide it)."""
    from minigrad.ops.shape import static_shape

    gs, xs = tuple(getattr(g.type, "shape", ())), static_shape(x)
    lead = len(gs) - len(xs)
    if lead < 0:
        return ()
    axes = list(range(lead))
    axes += [lead + i for i, n in enumerate(xs) if n == 1 and gs[lead + i] != 1]
    return tuple(axes)


def _reduces(node):
    return op_name(node.op) in ("ReduceLike", "MulReduceLike") and bool(
        definite_reduction(node.inputs[0], node.inputs[-1]))


def look_through(var, hidden=None, keep=None):
    """Follow ``var`` down through bookkeeping Ops (and ``1 * g``, ``g ** 1``) to the
    variable carrying the maths; the names of the Ops looked through go into ``hidden``.
    ``keep(node)`` may stop the walk at a node a view wants to show after all."""
    while var.owner is not None:
        op, inputs = var.owner.op, var.owner.inputs
        if (keep is not None and keep(var.owner)) or _reduces(var.owner):
            return var  # a real sum over broadcast axes is maths, not bookkeeping
        if is_bookkeeping(op):
            nxt = inputs[passed_input(op)]
        elif getattr(op, "name", None) == "mul" and len(inputs) == 2 and _is_const(inputs[0], 1):
            nxt = inputs[1]
        elif getattr(op, "name", None) == "mul" and len(inputs) == 2 and _is_const(inputs[1], 1):
            nxt = inputs[0]
        elif getattr(op, "name", None) == "pow" and _is_const(inputs[1], 1):
            nxt = inputs[0]
        else:
            return var
        if hidden is not None and is_bookkeeping(op):
            hidden.add(op_name(op))
        var = nxt
    return var
