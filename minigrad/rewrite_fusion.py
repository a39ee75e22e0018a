"""Fusion rewrites of the sparse path: gathers, products and scatters become fused Ops.

Each is a plain ``outputs -> outputs`` graph function registered with the tags
``("default", "fuse", <its name>)``: excluding ``"fuse"`` (or one name) switches it off.
They are registered from ``minigrad/rewrite.py`` (so every backend compiles the same
graph) in the ``"fuse"`` phase, which runs after ``specialize`` (``merge_take_grads``, the
optimizers' ``fresh_reads``) and, inside the phase, after ``fuse_mul_reduce``:

* ``fuse_csr_gather_sum`` (forward): ``CSRGatheredDot(X, T[cols])``,
  ``CSRGatheredDot(X, T[cols] * F[cols])``, ``CSRGatheredDot(X, square(T[cols]))`` and
  ``CSRScaledGatheredDot(X, T[cols], F[cols])`` with ``cols = CSRColumns(X, .)`` become
  ``FusedCSRGatherSum(X, T[, F])``: one pass over the stored entries, no gathered rows.
* ``fuse_csr_scatter_grad`` (backward): ``TakeGrad(T, cols, rows)`` read only by optimizers
  (``PrepareRows``, which coalesces anyway), with ``rows`` the gradient of one of those
  products (``CSRGatheredDotGradRows(X, gz)`` optionally times ``F[cols]``, or the scaled
  products' two VJPs), becomes ``FusedCSRScatterGrad(X, gz, T[, F])``, written straight into
  de-duplicated rows. Any other such ``TakeGrad`` with a 1-D index becomes ``SlotTakeGrad``
  (the rows exist; only the de-duplication changes).
* ``fuse_elemwise``: maximal chains of element-wise nodes (the two tables of
  ``ops/elemwise.py``, ``where``, ``cast``) become one ``FusedElemwise`` node whose inner
  graph the Numba backend compiles into a single loop.

Exact-mode optimizers read their tables through ``FreshTake`` (caught-up copies of the
gathered rows), not ``Take``: those products stay unfused and their gradients get
``SlotTakeGrad``. Restricting the backward to optimizer readers keeps the semantics exact:
a gradient that a user returns or transforms stays the uncoalesced ``TakeGrad`` it was (a
transform that adds noise "per stored row" would see fewer rows after coalescing).
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Constant, clone_replace, toposort
from minigrad.ops.elemwise import Binary, MulReduceLike, Unary
from minigrad.ops.fused import FusedCSRGatherSum, FusedCSRScatterGrad, SlotTakeGrad
from minigrad.ops.indexing import Take, TakeGrad
from minigrad.ops.shape import shape_source
from minigrad.ops.sparse import (
    CSRColumns,
    CSRGatheredDot,
    CSRGatheredDotGradRows,
    CSRScaledDotGradRows,
    CSRScaledDotGradScale,
    CSRScaledGatheredDot,
)
from minigrad.rewrite import apply_local, register


def pattern_source(X):
    """The CSR variable whose stored columns ``X`` has (``square(X)`` keeps them)."""
    while X.owner is not None and getattr(X.owner.op, "same_pattern", False):
        X = X.owner.inputs[0]
    return X


def columns_of(X, cols):
    """Whether ``cols`` is ``CSRColumns`` of ``X`` (or of a CSR with ``X``'s pattern)."""
    node = cols.owner
    return (node is not None and isinstance(node.op, CSRColumns)
            and pattern_source(node.inputs[0]) is pattern_source(X))


def gathered_table(rows, cols):
    """``T`` when ``rows`` is ``Take(T, cols)``, else ``None``."""
    node = rows.owner
    if node is not None and isinstance(node.op, Take) and node.inputs[1] is cols:
        return node.inputs[0]
    return None


def _op_name(var, cls):
    node = var.owner
    return node.op.name if node is not None and isinstance(node.op, cls) else None


def _gathered_factors(rows, cols):
    """``[T]`` or ``[T, F]`` when ``rows`` is ``T[cols]``, ``T[cols] * F[cols]`` or
    ``square(T[cols])``; ``None`` otherwise."""
    table = gathered_table(rows, cols)
    if table is not None:
        return [table]
    if _op_name(rows, Unary) == "square":
        table = gathered_table(rows.owner.inputs[0], cols)
        return None if table is None else [table, table]
    if _op_name(rows, Binary) == "mul":
        pair = [gathered_table(v, cols) for v in rows.owner.inputs]
        return None if None in pair else pair
    return None


def _gather_index(rows):
    """The index of the first row gather in ``rows``, ``square(rows)`` or ``a * b``."""
    node = rows.owner
    if node is None:
        return None
    if isinstance(node.op, Take):
        return node.inputs[1]
    if isinstance(node.op, (Unary, Binary)):
        for v in node.inputs:
            if v.owner is not None and isinstance(v.owner.op, Take):
                return v.owner.inputs[1]
    return None


def _product_tables(node):
    """``(cols, tables)`` of a CSR product of gathered rows (``X @ T[cols]``, ``X @ (T *
    F)[cols]``...), or ``None``."""
    if not isinstance(node.op, (CSRGatheredDot, CSRScaledGatheredDot)):
        return None
    X, rows = node.inputs[:2]
    cols = _gather_index(rows)
    if cols is None or not columns_of(X, cols):
        return None
    if isinstance(node.op, CSRGatheredDot):
        tables = _gathered_factors(rows, cols)
    else:
        tables = [gathered_table(rows, cols), gathered_table(node.inputs[2], cols)]
        tables = None if None in tables else tables
    return None if tables is None else (cols, tables)


def shared_gathers(outputs):
    """``{(table, cols)}`` gathered for more than one CSR product (the cost rule).

    Fused, every product reads its table rows again, at random (``V`` of a factorization
    machine: ``X @ V`` and ``X**2 @ V**2``, three random passes over a table far bigger
    than the caches); unfused, the rows are gathered once and the products read them in
    order. Measured on the FM step (k=16, batch 256): fusing those products made the step
    slower (1.21 ms against 0.92 ms unfused, quiet box), so a gather shared by several
    products stays a gather. A gather read by one product (``X @ (E * M)`` of the
    masked-embedding model) is fused: that saves materialising the rows at all.
    """
    count = {}
    for node in toposort(outputs):
        found = _product_tables(node)
        if found is not None:
            cols, tables = found
            for table in {id(t): t for t in tables}.values():
                key = (table, cols)
                count[key] = count.get(key, 0) + 1
    return {key for key, n in count.items() if n > 1}


def _fused_forward(node, shared=frozenset()):
    """The ``FusedCSRGatherSum`` output replacing a CSR product node, or ``None``."""
    found = _product_tables(node)
    if found is None:
        return None
    X = node.inputs[0]
    cols, tables = found
    if any((t, cols) in shared for t in tables):
        return None  # the cost rule: see shared_gathers
    if any(t.ndim not in (1, 2) for t in tables) or tables[0].ndim != 2:
        return None
    out = node.outputs[0]
    if any(v.dtype != out.dtype for v in (X, *tables)):
        return None  # the fused kernels compute in one dtype; mixed ones stay unfused
    fused = FusedCSRGatherSum()(X, *tables)
    return fused if fused.type == out.type or fused.dtype == out.dtype else None


@register("default", "fuse", "fuse_csr_gather_sum")
def fuse_csr_gather_sum(outputs):
    """Forward products of CSR batches with gathered rows become one fused pass (unless the
    gather serves several products: :func:`shared_gathers`)."""
    shared = shared_gathers(outputs)

    def local(node):
        fused = _fused_forward(node, shared)
        return None if fused is None else [fused]

    return apply_local(outputs, local)


def _csr_grad_rows(var):
    """``(X, gz)`` when ``var`` is ``CSRGatheredDotGradRows(X, gz)``."""
    node = var.owner
    if node is not None and isinstance(node.op, CSRGatheredDotGradRows):
        return node.inputs
    return None


def _fused_backward(table, cols, rows):
    """``(X, gz, factor_or_None)`` for ``FusedCSRScatterGrad`` when ``rows`` is the
    gradient of a fusable product w.r.t. the gathered rows ``table[cols]``; else ``None``."""
    node = rows.owner
    if node is None:
        return None
    found = None
    if isinstance(node.op, CSRGatheredDotGradRows):
        found = (*node.inputs, None)
    elif isinstance(node.op, MulReduceLike):
        a, b, like = node.inputs
        for grad_rows, other in ((a, b), (b, a)):
            pair, factor = _csr_grad_rows(grad_rows), gathered_table(other, cols)
            if (pair is not None and factor is not None
                    and _gathered_shape_of(like, cols) is table):
                found = (*pair, factor)
                break
    elif isinstance(node.op, CSRScaledDotGradRows):
        X, scale_rows, gz = node.inputs
        factor = gathered_table(scale_rows, cols)
        found = None if factor is None else (X, gz, factor)
    elif isinstance(node.op, CSRScaledDotGradScale):
        X, gz, table_rows, scale_shape = node.inputs
        factor = gathered_table(table_rows, cols)
        if factor is not None and _gathered_shape_of(scale_shape, cols) is table:
            found = (X, gz, factor)
    if found is None or not columns_of(found[0], cols):
        return None
    X, gz, factor = found
    if table.ndim not in (1, 2) or gz.ndim != 2 or gz.dtype != table.dtype:
        return None
    if factor is not None and (factor.ndim not in (1, 2) or factor.dtype != table.dtype):
        return None
    return X, gz, factor


def _gathered_shape_of(shape, cols):
    """The table ``T`` when ``shape`` is the shape of the gathered rows ``T[cols]``."""
    source = shape_source(shape)
    return None if source is None else gathered_table(source, cols)


def optimizer_only_readers(outputs):
    """Variables read only by ``PrepareRows`` nodes (and not themselves outputs)."""
    from minigrad.optim.ops import PrepareRows

    readers = {}
    for node in toposort(outputs):
        for var in node.inputs:
            readers.setdefault(var, []).append(node.op)
    returned = set(outputs)
    return {v for v, ops in readers.items()
            if v not in returned and all(isinstance(op, PrepareRows) for op in ops)}


@register("default", "fuse", "fuse_csr_scatter_grad")
def fuse_csr_scatter_grad(outputs):
    """Row-sparse gradients fed to an optimizer are written straight into unique rows."""
    only_optimizer = optimizer_only_readers(outputs)
    replace = {}
    for node in toposort(outputs):
        if not isinstance(node.op, TakeGrad) or node.outputs[0] not in only_optimizer:
            continue
        table_shape, idx, rows = node.inputs
        if idx.ndim != 1:
            continue
        table = shape_source(table_shape)
        found = None if table is None else _fused_backward(table, idx, rows)
        if found is not None:
            X, gz, factor = found
            new = FusedCSRScatterGrad(node.op.dtype)(X, gz, table_shape, factor)
        else:
            new = SlotTakeGrad(node.op.dtype)(table_shape, idx, rows)
        if new.type == node.outputs[0].type:
            replace[node.outputs[0]] = new
    if not replace:
        return outputs
    return clone_replace(outputs, replace)


# --- element-wise chains -------------------------------------------------------------------


def fusable_elemwise(node):
    """Element-wise nodes the fused loop can compute (every entry of the two tables, ``where``
    and ``cast``), on dense tensors only."""
    from minigrad.ops.elemwise import Cast, Where
    from minigrad.types import TensorType

    if not isinstance(node.op, (Unary, Binary, Where, Cast)) or len(node.outputs) != 1:
        return False
    return all(isinstance(v.type, TensorType) for v in [*node.inputs, node.outputs[0]])


def _is_scalar_constant(var):
    return isinstance(var, Constant) and np.ndim(var.data) == 0


def elemwise_groups(outputs):
    """Maximal single-output chains of fusable nodes: ``{root: [members, root last]}``.

    A producer joins its reader's group when every reader of its value is in the group (so
    nothing outside needs the intermediate) and it has the root's rank (a rank-0 bias
    correction is not recomputed for every element of a table).
    """
    nodes = toposort(outputs)
    clients = {}
    for node in nodes:
        for var in node.inputs:
            clients.setdefault(var, set()).add(node)
    returned = set(outputs)
    member_of, groups = {}, {}
    for root in reversed(nodes):
        if root in member_of or not fusable_elemwise(root):
            continue
        rank = root.outputs[0].ndim
        group, stack = {root}, list(root.inputs)
        while stack:
            var = stack.pop()
            producer = var.owner
            if (producer is None or producer in member_of or producer in group
                    or not fusable_elemwise(producer) or var in returned
                    or var.ndim != rank or not clients[var] <= group):
                continue
            group.add(producer)
            stack.extend(producer.inputs)
        for member in group:
            member_of[member] = root
        if len(group) > 1:
            groups[root] = [n for n in nodes if n in group]
    return groups


def fused_elemwise_node(members):
    """``(FusedElemwise op, outer inputs)`` for a group (root last)."""
    from minigrad.ops.fused import FusedElemwise

    produced = {n.outputs[0] for n in members}
    outer = []
    for node in members:
        for var in node.inputs:
            if var not in produced and not _is_scalar_constant(var) and var not in outer:
                outer.append(var)
    leaves = []
    for var in outer:  # a constant stays one inside (error messages call it "a constant")
        leaf = var.clone() if isinstance(var, Constant) else var.type.make_variable()
        leaf.name = var.name
        leaves.append(leaf)
    (inner_out,) = clone_replace([members[-1].outputs[0]], dict(zip(outer, leaves)))
    return FusedElemwise(leaves, [inner_out]), outer


@register("default", "fuse", "fuse_elemwise")
def fuse_elemwise(outputs):
    """Chains of element-wise nodes become one ``FusedElemwise`` node (one loop)."""
    groups = elemwise_groups(outputs)
    if not groups:
        return outputs
    inside = {n for members in groups.values() for n in members}
    memo = {}
    for node in toposort(outputs):
        if node in groups:
            op, outer = fused_elemwise_node(groups[node])
            new = op.make_node(*[memo.get(v, v) for v in outer]).outputs[0]
            old = node.outputs[0]
            new.name, new.tag = old.name, dict(old.tag)
            memo[old] = new
            continue
        if node in inside:
            continue  # computed inside its group's fused node
        inputs = [memo.get(v, v) for v in node.inputs]
        if all(a is b for a, b in zip(inputs, node.inputs)):
            continue
        rebuilt = node.op.make_node(*inputs)
        for old, new in zip(node.outputs, rebuilt.outputs):
            new.name, new.tag = old.name, dict(old.tag)
            memo[old] = new
    return [memo.get(o, o) for o in outputs]
