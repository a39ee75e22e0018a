"""Graph rewrites: a tagged database of rewriters that edit a ``FunctionGraph`` in place.

``mg.function`` copies the user's graph into a :class:`~minigrad.fgraph.FunctionGraph` and
hands it to :data:`DB`, which runs four **phases** in order:

``canonicalize``  one spelling per computation: merge duplicates, fold constants,
                  ``x * 1 -> x``, ``x ** 2 -> square(x)``;
``specialize``    cheaper forms of the same value: push row gathers through element-wise
                  ops, read shapes from cheaper sources, share one gather per CSR pattern,
                  add the row-sparse gradients of one gather row-wise; the optimizers'
                  ``fresh_reads`` (exact-mode catch-up of gathered rows) runs last here;
``fuse``          several nodes become one (``fuse_mul_reduce``; the fused kernels of
                  ``rewrite_fusion.py``);
``inplace``       nodes that may overwrite a buffer nobody else reads.

Two kinds of rewriter (this is the registration API other modules use; it is stable):

* a **node rewriter** ``fn(fgraph, node) -> None | list | dict`` looks at one node and
  returns replacements for its outputs (a list, one per output, or ``{old: new}``), or
  ``None`` when it does not apply. The phase's node rewriters are applied together by a
  walker, to a fixpoint: a node whose inputs were replaced, and every new node, is visited
  again. ``tracks=(OpClass, ...)`` limits the calls to nodes of those Op classes::

      register_node_rewriter(fuse_exp_sum, "fuse", "fast_math", tracks=(Sum,))

* a **graph rewriter** ``fn(fgraph) -> None`` edits the whole graph (with
  ``fgraph.replace``/``replace_all``): :func:`register_graph_rewriter`.

The positional tags say where and when a rewriter runs: a tag among :data:`PHASES` is its
phase (default ``"specialize"``; ``phase=`` says the same), and every rewriter carries its
name, its phase and ``"default"`` (unless ``default=False``) as tags. ``mg.Mode(include=...,
exclude=...)`` selects: a rewriter runs when one of its tags is ``"default"`` or included,
and none is excluded. So ``mg.Mode(exclude=("fuse",))`` switches the fuse phase off and
``mg.Mode(exclude=("merge_take_grads",))`` one rewriter, without touching the database.
``order=`` (default 50) orders the rewriters inside a phase; consecutive node rewriters form
one walker. After each phase, ``merge`` runs again (if selected).

The older form, a function ``outputs -> new outputs`` decorated with ``@register(*tags)``,
is still accepted (it becomes a graph rewriter; the optimizers' ``fresh_reads`` uses it).
"""
from __future__ import annotations

import collections
import itertools

import numpy as np

from minigrad.fgraph import OUTPUT, FunctionGraph
from minigrad.graph import Constant, toposort
from minigrad.ops.elemwise import Binary, Elemwise, Unary
from minigrad.ops.indexing import Take
from minigrad.types import TensorType
from minigrad.variables import TensorConstant

PHASES = ("canonicalize", "specialize", "fuse", "inplace")
DEFAULT_ORDER = 50


class Rewriter:
    """One registered rewriter: its function, kind (``"node"``/``"graph"``), phase, tags."""

    __slots__ = ("name", "fn", "kind", "phase", "tags", "tracks", "order", "serial")

    def __init__(self, name, fn, kind, phase, tags, tracks, order, serial):
        self.name, self.fn, self.kind, self.phase = name, fn, kind, phase
        self.tags, self.tracks, self.order, self.serial = frozenset(tags), tracks, order, serial

    def selected(self, include, exclude):
        return bool(self.tags & include) and not self.tags & exclude

    def __repr__(self):
        return f"<{self.kind} rewriter {self.name} ({self.phase}, tags={sorted(self.tags)})>"


class RewriteDB:
    """Rewriters by name, with tags and phases; ``apply`` runs a selection on an fgraph."""

    def __init__(self):
        self._rewriters = {}
        self._serial = itertools.count()

    # ---------------------------------------------------------------- registering
    def _add(self, fn, kind, tags, phase, name, tracks, order, default):
        name = name or fn.__name__
        if name in self._rewriters:
            raise ValueError(f"a rewriter named {name!r} is already registered")
        tags = set(tags)
        phases = tags & set(PHASES)
        if phase is None:
            if len(phases) > 1:
                raise ValueError(f"rewriter {name!r} names several phases: {sorted(phases)}")
            phase = phases.pop() if phases else "specialize"
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases are {PHASES}")
        tags.discard("default")
        tags |= {name, phase}
        if default:
            tags.add("default")
        tracks = tuple(tracks) if tracks else None
        rw = Rewriter(name, fn, kind, phase, tags, tracks, float(order), next(self._serial))
        self._rewriters[name] = rw
        return rw

    def register_node_rewriter(self, fn, *tags, phase=None, name=None, tracks=None,
                               order=DEFAULT_ORDER, default=True):
        """Register ``fn(fgraph, node) -> replacements | None`` (see the module docstring)."""
        self._add(fn, "node", tags, phase, name, tracks, order, default)
        return fn

    def register_graph_rewriter(self, fn, *tags, phase=None, name=None, order=DEFAULT_ORDER,
                                default=True):
        """Register ``fn(fgraph) -> None``, which edits the graph with ``fgraph.replace``."""
        self._add(fn, "graph", tags, phase, name, None, order, default)
        return fn

    def unregister(self, name):
        """Remove a rewriter (for plugins that re-register; tests use ``mg.Mode``)."""
        del self._rewriters[name]

    # ---------------------------------------------------------------- reading
    def __contains__(self, name):
        return name in self._rewriters

    def __getitem__(self, name):
        return self._rewriters[name]

    def __iter__(self):
        return iter(sorted(self._rewriters.values(), key=_position))

    def names(self):
        return [rw.name for rw in self]

    def select(self, include=(), exclude=()):
        """The rewriters a mode with these tags runs, in running order."""
        include = {"default", *include}
        exclude = set(exclude)
        return [rw for rw in self if rw.selected(include, exclude)]

    # ---------------------------------------------------------------- running
    def apply(self, fgraph, include=(), exclude=()):
        """Run the selected rewriters on ``fgraph``, phase by phase; returns ``fgraph``."""
        chosen = self.select(include, exclude)
        merge_rw = next((rw for rw in chosen if rw.name == "merge"), None)
        for phase in PHASES:
            group = []
            for rw in chosen:
                if rw.phase != phase:
                    continue
                if rw.kind == "node":
                    group.append(rw)
                    continue
                if group:
                    walk(fgraph, group, merge=merge_rw is not None)
                    group = []
                rw.fn(fgraph)
            if group:
                walk(fgraph, group, merge=merge_rw is not None)
            if merge_rw is not None:
                merge_rw.fn(fgraph)
        return fgraph


def _position(rw):
    return (PHASES.index(rw.phase), rw.order, rw.serial)


DB = RewriteDB()


def register_node_rewriter(fn, *tags, **options):
    """``DB.register_node_rewriter``: register ``fn(fgraph, node)`` in the global database."""
    return DB.register_node_rewriter(fn, *tags, **options)


def register_graph_rewriter(fn, *tags, **options):
    """``DB.register_graph_rewriter``: register ``fn(fgraph)`` in the global database."""
    return DB.register_graph_rewriter(fn, *tags, **options)


def node_rewriter(*tags, **options):
    """Decorator form of :func:`register_node_rewriter`."""
    def deco(fn):
        return register_node_rewriter(fn, *tags, **options)
    return deco


def graph_rewriter(*tags, **options):
    """Decorator form of :func:`register_graph_rewriter`."""
    def deco(fn):
        return register_graph_rewriter(fn, *tags, **options)
    return deco


# --------------------------------------------------------------------------------------
# The walker


class RewriteLoopError(RuntimeError):
    """The node rewriters kept replacing each other's results (a bug in a rewriter)."""


def _replacements(node, result):
    if isinstance(result, dict):
        return list(result.items())
    result = list(result)
    if len(result) != len(node.outputs):
        raise ValueError(f"a rewrite of {node.op} returned {len(result)} replacements for "
                         f"{len(node.outputs)} outputs")
    return list(zip(node.outputs, result))


def _duplicate_of(fgraph, node):
    """An other node of ``fgraph`` with the same Op and the same inputs, if any."""
    if node.op.destroy_map or not node.inputs:
        return None
    for client, _k in fgraph.clients.get(node.inputs[0], ()):
        if client is not node and client != OUTPUT and client.op == node.op \
                and not client.op.destroy_map and len(client.inputs) == len(node.inputs) \
                and all(a is b for a, b in zip(client.inputs, node.inputs)):
            return client
    return None


def walk(fgraph, rewriters, merge=True):
    """Apply node ``rewriters`` until none applies anywhere (a fixpoint).

    A work list starts with every node in topological order. When a rewriter replaces a
    node's outputs, the new nodes and the readers of the new variables join the list, so
    a rewrite that enables another one (a gather pushed down meets the next element-wise
    op) is seen without re-walking the whole graph. Rewriters also look deeper than a
    node's inputs (``merge_take_grads`` looks two nodes up), so when the list runs dry after
    any change, one more full pass confirms the fixpoint. ``merge``: a node equal to another one
    (same Op, same inputs) is replaced by it first, so rewrites that compare inputs by
    identity (``merge_take_grads``) see shared subexpressions as they appear.
    """
    by_class = {}

    def candidates(op_class):
        if op_class not in by_class:
            by_class[op_class] = [rw for rw in rewriters
                                  if rw.tracks is None or issubclass(op_class, rw.tracks)]
        return by_class[op_class]

    queue = collections.deque()
    queued = set()

    def push(node):
        if node not in queued:
            queued.add(node)
            queue.append(node)

    def listener(event, node):
        if event == "import":
            push(node)

    def push_readers(variables):
        for var in variables:
            for client, _k in fgraph.clients.get(var, ()):
                if client != OUTPUT:
                    push(client)

    def visit(node):
        """Rewrite ``node`` once if something applies; returns whether it changed."""
        twin = _duplicate_of(fgraph, node) if merge else None
        if twin is not None:
            fgraph.replace_all(list(zip(node.outputs, twin.outputs)), reason="merge")
            push_readers(twin.outputs)
            return True
        for rw in candidates(type(node.op)):
            result = rw.fn(fgraph, node)
            if result is None or result is False:
                continue
            pairs = [(o, n) for o, n in _replacements(node, result) if o is not n]
            if pairs:
                fgraph.replace_all(pairs, reason=rw.name)
                push_readers(new for _, new in pairs)
                return True
        return False

    fgraph.listeners.append(listener)
    budget = 2000 + 200 * len(fgraph.apply_nodes)
    try:
        changed = True
        while changed:  # each round starts with a full pass; the last finds nothing
            changed = False
            for node in fgraph.toposort():
                push(node)
            while queue:
                node = queue.popleft()
                queued.discard(node)
                if node not in fgraph.apply_nodes:
                    continue
                budget -= 1
                if budget < 0:
                    raise RewriteLoopError("node rewriters did not reach a fixpoint: "
                                           + ", ".join(rw.name for rw in rewriters))
                changed |= visit(node)
    finally:
        fgraph.listeners.remove(listener)


# --------------------------------------------------------------------------------------
# The older interface: ``outputs -> outputs`` functions


def register(*tags):
    """Decorator for an ``outputs -> new outputs`` function (the older rewrite form).

    It becomes a graph rewriter: run on the fgraph's outputs, whose changed entries are
    then replaced. Kept so that modules written against it (``optim/ops.py``) still work.
    """
    def deco(fn):
        def run(fgraph):
            old = list(fgraph.outputs)
            new = fn(old)
            fgraph.replace_all([(o, n) for o, n in zip(old, new) if o is not n],
                               reason=fn.__name__)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        DB.register_graph_rewriter(run, *tags, name=fn.__name__, order=100,
                                   default="default" in tags)
        return fn

    return deco


def rewrite(outputs, include=(), exclude=()):
    """Rewrite the graph of ``outputs`` as ``mg.function`` would; returns new outputs.

    The caller's graph is not changed (the rewrites edit a copy).
    """
    fgraph = FunctionGraph([], outputs)
    DB.apply(fgraph, include, exclude)
    return list(fgraph.outputs)


def apply_local(outputs, local, max_passes=20):
    """Rebuild the graph of ``outputs``, letting ``local(node)`` replace node outputs.

    The older way of writing a rewrite (kept for ``outputs -> outputs`` rewriters); new
    code registers a node rewriter instead, which edits the FunctionGraph in place.
    """
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
# canonicalize


@graph_rewriter("canonicalize", order=0)
def merge(fgraph):
    """Common-subexpression elimination: one node per (Op, inputs), one per constant.

    Destructive nodes (in-place updates) are never merged: each writes its own table.
    """
    canon_const = {}
    for var in sorted(fgraph.constants(), key=lambda v: v._id):
        keep = canon_const.setdefault(var.signature(), var)
        if keep is not var:
            fgraph.replace(var, keep, reason="merge")
    seen = {}
    for node in fgraph.toposort():
        if node not in fgraph.apply_nodes or node.op.destroy_map:
            continue
        key = (node.op, tuple(id(i) for i in node.inputs))
        first = seen.setdefault(key, node)
        if first is not node:
            fgraph.replace_all(list(zip(node.outputs, first.outputs)), reason="merge")


FOLD_MAX_ELEMENTS = 1 << 16


@node_rewriter("canonicalize")
def constant_folding(fgraph, node):
    """Compute nodes whose inputs are all (small) constants at compile time."""
    if node.op.destroy_map or not node.inputs:
        return None
    if not all(isinstance(i, Constant) for i in node.inputs):
        return None
    if not all(isinstance(o.type, TensorType) for o in node.outputs):
        return None
    if any(np.size(i.data) > FOLD_MAX_ELEMENTS for i in node.inputs):
        return None
    values = node.op.perform(node, [i.data for i in node.inputs])
    return [TensorConstant(o.type, np.asarray(v), name=o.name)
            for o, v in zip(node.outputs, values)]


def _scalar_constant_value(var):
    if isinstance(var, Constant) and np.ndim(var.data) == 0:
        return float(var.data)
    return None


@node_rewriter("canonicalize", tracks=(Binary,))
def simplify(fgraph, node):
    """``x * 1 -> x``, ``x ** 1 -> x``, ``x ** 2 -> square(x)`` (same type only)."""
    op, out = node.op, node.outputs[0]
    if op.name not in ("mul", "pow"):
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


# --------------------------------------------------------------------------------------
# specialize


def _full_rank_inputs(node):
    """Inputs of an element-wise node that span its output (not broadcast on axis 0)."""
    out = node.outputs[0]
    return [x for x in node.inputs if x.ndim == out.ndim and x.type.shape[0] != 1]


@node_rewriter("specialize", tracks=(Take,))
def take_through_elemwise(fgraph, node):
    """``f(T, c)[idx] -> f(T[idx], c)`` for element-wise ``f``: ``(V ** 2)[idx]`` squares
    only the gathered rows."""
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


@node_rewriter("specialize")
def shape_of_same_shape(fgraph, node):
    """``Shape(f(x)) -> Shape(x)`` for an element-wise ``f`` that keeps ``x``'s shape, so
    that ``V ** 2`` is not computed (or kept alive) only to learn its shape."""
    from minigrad.ops.shape import Shape

    if not isinstance(node.op, Shape):
        return None
    source = _same_shape_source(node.inputs[0])
    return None if source is node.inputs[0] else node.op.make_node(source).outputs


@graph_rewriter("specialize", order=80)
def shape_inference(fgraph):
    """Shape bookkeeping that symbolic dimensions prove useless goes (``shape_infer.py``):
    ``ReduceLike``/``BroadcastLike``/``ReshapeLike`` of a value that already has the
    target's dimensions, and duplicate ``Shape`` nodes of equally shaped values."""
    from minigrad.shape_infer import infer_shapes

    infer_shapes(fgraph)


def _csr_columns_class():
    from minigrad.ops.sparse import CSRColumns

    return CSRColumns


@node_rewriter("specialize")
def csr_pattern(fgraph, node):
    """``CSRColumns(f(X), W) -> CSRColumns(X, W)`` when ``f`` keeps the sparsity pattern,
    so gathers through ``X`` and ``f(X)`` become the same node after ``merge``."""
    if not isinstance(node.op, _csr_columns_class()):
        return None
    X, W = node.inputs
    source = X
    while source.owner is not None and getattr(source.owner.op, "same_pattern", False):
        source = source.owner.inputs[0]
    return None if source is X else node.op.make_node(source, W).outputs


def _rows_of(var):
    """``(table, idx, rows)`` when ``var`` is ``TakeGrad(table, idx, rows)`` for a 1-D
    ``idx``, possibly with its rows replaced (``RowSparseWithValues``)."""
    from minigrad.ops.indexing import TakeGrad
    from minigrad.ops.rowsparse import RowSparseWithValues

    node = var.owner
    if node is not None and isinstance(node.op, RowSparseWithValues):
        inner = _rows_of(node.inputs[0])
        return None if inner is None else (*inner[:2], node.inputs[1])
    if node is None or not isinstance(node.op, TakeGrad) or node.inputs[1].ndim != 1:
        return None
    return tuple(node.inputs)


@node_rewriter("specialize")
def merge_take_grads(fgraph, node):
    """``TakeGrad(T, i, a) + TakeGrad(T, i, b) -> TakeGrad(T, i, a + b)``.

    Two gathers of the same rows (``dot(X, V)`` and ``dot(square(X), V ** 2)`` in a
    factorization machine) give row-sparse gradients with equal indices; adding their rows
    first halves what the optimizer has to sort and coalesce.
    """
    from minigrad.ops.indexing import TakeGrad
    from minigrad.ops.rowsparse import RowSparseAdd

    if not isinstance(node.op, RowSparseAdd):
        return None
    a, b = _rows_of(node.inputs[0]), _rows_of(node.inputs[1])
    if a is None or b is None or not _same_shape_value(a[0], b[0]) or a[1] is not b[1]:
        return None
    summed = Binary("add")(a[2], b[2])
    if summed.ndim != a[2].ndim or summed.dtype != node.outputs[0].dtype:
        return None
    return TakeGrad(node.outputs[0].dtype).make_node(a[0], a[1], summed).outputs


def _same_shape_value(a, b):
    """Whether the shape values ``a`` and ``b`` are the shape of the same variable."""
    from minigrad.ops.shape import shape_source

    return a is b or (shape_source(a) is not None and shape_source(a) is shape_source(b))


# --------------------------------------------------------------------------------------
# fuse


def _reduce_like_classes():
    from minigrad.ops.elemwise import MulReduceLike, ReduceLike

    return MulReduceLike, ReduceLike


@node_rewriter("fuse")
def fuse_mul_reduce(fgraph, node):
    """``ReduceLike(a * b, x) -> MulReduceLike(a, b, x)`` when nothing else reads ``a * b``
    (the gradient of a broadcast product in one einsum, without the product)."""
    MulReduceLike, ReduceLike = _reduce_like_classes()
    if not isinstance(node.op, ReduceLike):
        return None
    product, x = node.inputs
    inner = product.owner
    if inner is None or not (isinstance(inner.op, Binary) and inner.op.name == "mul"):
        return None
    if fgraph.n_clients(product) != 1:
        return None
    fused = MulReduceLike().make_node(*inner.inputs, x).outputs[0]
    return [fused] if fused.type == node.outputs[0].type else None


from minigrad import rewrite_fusion  # noqa: E402,F401  (the "fuse" phase: fused kernels)
