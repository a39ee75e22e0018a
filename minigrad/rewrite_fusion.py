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
from minigrad.types import TensorType


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


def _shared_gather_products(outputs):
    """``{(table, cols): [product nodes]}`` for gathers read by several CSR products, each
    ``X_i @ T[cols]`` or ``X_i @ square(T[cols])`` (the FM's ``X @ V``, ``X**2 @ V**2``)."""
    groups, spoiled = {}, set()
    for node in toposort(outputs):
        found = _product_tables(node)
        if found is None:
            continue
        cols, tables = found
        key = (tables[0], cols)
        if (not isinstance(node.op, CSRGatheredDot) or len({id(t) for t in tables}) != 1
                or len(tables) > 2):
            spoiled.update((t, cols) for t in tables)  # a product the fused loop cannot do
            continue
        groups.setdefault(key, []).append(node)
    return {key: nodes for key, nodes in groups.items()
            if len(nodes) > 1 and key not in spoiled}


def _gather_sums_replacement(table, nodes):
    """``{old output: new output}`` of one ``FusedCSRGatherSums`` for ``nodes``, or ``{}``."""
    from minigrad.ops.fused_products import FusedCSRGatherSums

    dtype = nodes[0].outputs[0].dtype
    if table.ndim != 2 or table.dtype != dtype or any(
            n.inputs[0].dtype != dtype or n.outputs[0].dtype != dtype for n in nodes):
        return {}  # one dtype for the fused loop; mixed ones stay unfused
    # X @ T[cols]: [T], power 1; X @ square(T[cols]) or T[cols] * T[cols]: [T, T], power 2
    powers = [len(_product_tables(n)[1]) for n in nodes]
    fused = FusedCSRGatherSums(powers)(table, *[n.inputs[0] for n in nodes])
    return {n.outputs[0]: new for n, new in zip(nodes, fused)
            if new.type == n.outputs[0].type}


@register("default", "fuse", "fuse_csr_gather_sums")
def fuse_csr_gather_sums(outputs):
    """CSR products sharing one gather (``X @ V`` and ``square(X) @ V**2``) become one pass
    that reads each gathered row once (``FusedCSRGatherSums``); see :func:`shared_gathers`
    for why they are not fused one by one."""
    replace = {}
    for (table, _), nodes in _shared_gather_products(outputs).items():
        found = _gather_sums_replacement(table, nodes)
        if len(found) == len(nodes):
            replace.update(found)
    if not replace:
        return outputs
    return clone_replace(outputs, replace)


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


# --- the gradient through several products sharing a gather, as one scatter ---------------


def _same_index(idx, cols):
    """Whether ``idx`` holds the values of ``cols``: ``cols`` itself, or the indices of a
    ``TakeGrad`` by ``cols`` (``(V * g)[rows of g]``, the gradient through ``V ** 2``)."""
    if idx is cols:
        return True
    node = idx.owner
    if node is None or type(node.op).__name__ != "RowSparseIndices":
        return False
    inner = node.inputs[0].owner
    return inner is not None and isinstance(inner.op, TakeGrad) and inner.inputs[1] is cols


def _monomial(var, table, cols):
    """``(c, m)`` when ``var`` is ``c * table[cols] ** m`` (scalar constants, gathers of
    ``table`` by ``cols``, their products, negations and squares), else ``None``."""
    if _is_scalar_constant(var):
        value = np.asarray(var.data)
        return (float(value), 0) if value.dtype.kind in "iuf" else None
    node = var.owner
    if node is None or var.dtype != table.dtype:
        return None
    if isinstance(node.op, Take):
        return (1.0, 1) if node.inputs[0] is table and _same_index(node.inputs[1], cols) else None
    parts = [_monomial(v, table, cols) for v in node.inputs]
    if None in parts:
        return None
    if _op_name(var, Unary) == "neg":
        return (-parts[0][0], parts[0][1])
    if _op_name(var, Unary) == "square":
        return (parts[0][0] ** 2, 2 * parts[0][1])
    if _op_name(var, Binary) == "mul":
        return (parts[0][0] * parts[1][0], parts[0][1] + parts[1][1])
    return None


def _linear_terms(var, table, cols, depth=0):
    """``[(coef, X_i, G_i, m_i)]`` when the per-entry gradient rows ``var`` (``nnz x D``)
    are ``sum_i coef_i * CSRGatheredDotGradRows(X_i, G_i) * table[cols] ** m_i``, with
    every ``X_i`` of ``cols``'s pattern; ``None`` when they are anything else."""
    node = var.owner
    if (node is None or depth > 32 or not isinstance(var.type, TensorType) or var.ndim != 2
            or var.dtype != table.dtype):
        return None
    if isinstance(node.op, CSRGatheredDotGradRows):
        X, gz = node.inputs
        ok = (columns_of(X, cols) and X.dtype == table.dtype and gz.ndim == 2
              and gz.dtype == table.dtype)
        return [(1.0, X, gz, 0)] if ok else None
    if type(node.op).__name__ == "RowSparseValues":  # the rows of a TakeGrad by cols
        inner = node.inputs[0].owner
        if (inner is None or not isinstance(inner.op, TakeGrad) or inner.inputs[1] is not cols
                or shape_source(inner.inputs[0]) is not table):
            return None
        return _linear_terms(inner.inputs[2], table, cols, depth + 1)
    name = _op_name(var, Binary) or _op_name(var, Unary)
    if name in ("add", "sub"):
        a, b = (_linear_terms(v, table, cols, depth + 1) for v in node.inputs)
        if a is None or b is None:
            return None
        sign = -1.0 if name == "sub" else 1.0
        return a + [(sign * c, X, g, m) for c, X, g, m in b]
    if name == "neg":
        inner = _linear_terms(node.inputs[0], table, cols, depth + 1)
        return None if inner is None else [(-c, X, g, m) for c, X, g, m in inner]
    if name == "mul":
        for scale, rest in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            mono = _monomial(scale, table, cols)
            inner = None if mono is None else _linear_terms(rest, table, cols, depth + 1)
            if inner is not None:
                c0, m0 = mono
                return [(c0 * c, X, g, m0 + m) for c, X, g, m in inner]
    return None


def scatter_terms(table, cols, rows):
    """The terms of :func:`_linear_terms` when ``FusedCSRScatterSums`` can compute them (a
    2-D table, powers up to 2, at least one term reading ``table`` or several products:
    a lone ``X^T G`` is ``FusedCSRScatterGrad``'s), else ``None``."""
    if table.ndim != 2 or cols.ndim != 1:
        return None
    terms = _linear_terms(rows, table, cols)
    if not terms or any(m > 2 for _, _, _, m in terms):
        return None
    if len(terms) == 1 and terms[0][3] == 0:
        return None
    return terms


def scatter_sums_node(dtype, table_shape, table, terms):
    """The ``FusedCSRScatterSums`` output for ``terms`` (:func:`scatter_terms`)."""
    from minigrad.ops.fused_products import FusedCSRScatterSums

    op = FusedCSRScatterSums(dtype, [c for c, _, _, _ in terms], [m for _, _, _, m in terms])
    return op(table_shape, table, *[X for _, X, _, _ in terms], *[g for _, _, g, _ in terms])


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
        terms = None if found is not None or table is None else scatter_terms(table, idx, rows)
        if found is not None:
            X, gz, factor = found
            new = FusedCSRScatterGrad(node.op.dtype)(X, gz, table_shape, factor)
        elif terms is not None:
            new = scatter_sums_node(node.op.dtype, table_shape, table, terms)
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
