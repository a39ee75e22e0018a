"""``mg.debugprint``: a graph as an indented tree, in full or in a readable view.

Full view (the default): one line per variable with its Op, an id (``#n``; a shared
sub-graph is printed once and later marked "see above") and its type; a row-sparse
value is marked ``<- row-sparse``; the input of a ``Shape`` node (an Op that borrows a
shape, like the VJP of a sum, takes ``Shape(x)``) is marked ``(shape only)``, because it
is not a data dependency; a fused Op's inner graph is printed under it.

Readable view (``readable=True``): the bookkeeping Ops of :mod:`minigrad.readable` are
looked through, borrowed shapes are dropped, small sub-trees are written as one
formula (the ``mg.pp`` text), ids appear only where a value is used twice, and a legend
explains every internal Op that is shown or was hidden. It is meant for reading a
gradient: the triplet-loss gradient is 98 lines in the full view and 15 here.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Constant, Variable
from minigrad.readable import legend_line, look_through, op_name, shape_only
from minigrad.types import RowSparseType
from minigrad.variables import SharedVariable

#: sub-trees of at most this many nodes whose formula fits collapse to one line
COLLAPSE_NODES, COLLAPSE_CHARS, SHARE_MIN_CHARS = 8, 64, 12


def roots_of(obj):
    """(root variables, a title per root) for a variable, a list of them or a Function."""
    from minigrad.compile import Function

    if isinstance(obj, Function):
        return obj.graph_outputs + obj.graph_updates, (
            [f"output {i}" for i in range(len(obj.graph_outputs))]
            + [f"update {t.name or t}" for t, _ in obj.updates]
        )
    if isinstance(obj, Variable):
        return [obj], [None]
    objs = list(obj)
    if not all(isinstance(o, Variable) for o in objs):
        raise TypeError("expected a variable, a list of variables or a compiled function")
    return objs, [None] * len(objs)


def leaf_label(var):
    if isinstance(var, SharedVariable):
        return f"shared {var.name or ''}".strip()
    if isinstance(var, Constant):
        data = np.asarray(var.data)
        shown = np.array2string(data, threshold=6) if data.size <= 6 else f"array{data.shape}"
        return f"constant {shown}"
    return f"input {var.name or ''}".strip()


def type_label(var):
    mark = "  <- row-sparse" if isinstance(var.type, RowSparseType) else ""
    return f"{var.type}{mark}"


def _short_type(var):
    typ = var.type
    dtype = {"float64": "f64", "float32": "f32", "int64": "i64", "int32": "i32"}.get(
        typ.dtype, typ.dtype)
    shape = "(" + ", ".join("?" if s is None else str(s) for s in getattr(typ, "shape", ()))
    shape += ",)" if len(getattr(typ, "shape", ())) == 1 else ")"
    kind = "RowSparse " if isinstance(typ, RowSparseType) else ""
    return f"{kind}{dtype} {shape}"


def inner_graph(node):
    """(inner inputs, inner outputs) of a fused node, or ``None`` for an ordinary one.

    Two spellings are understood: ``op.inner_graph(node)`` (fresh inner leaves typed like
    ``node.inputs``) and the attributes ``op.inner_inputs`` / ``op.inner_outputs``."""
    op = node.op
    method = getattr(op, "inner_graph", None)
    if callable(method):
        graph = method(node)
        if graph is not None:
            ins, outs = graph
            return list(ins), list(outs)
    ins, outs = getattr(op, "inner_inputs", None), getattr(op, "inner_outputs", None)
    if ins is None or outs is None:
        return None
    return list(ins), list(outs)


def _full_tree(roots, titles, depth, id_prefix="#"):
    ids, lines, legend, inner_done = {}, [], {}, set()

    def ident(var):
        return ids.setdefault(var, f"{id_prefix}{len(ids)}")

    def walk(var, level, note=""):
        pad = "  " * level + ("|" if level else "")
        if depth is not None and level > depth:
            lines.append(f"{pad}...")
            return
        if var.owner is None:
            lines.append(f"{pad}{leaf_label(var)} {ident(var)} : {type_label(var)}{note}")
            return
        seen = var in ids
        op = var.owner.op
        if legend_line(op):
            legend[op_name(op)] = legend_line(op)
        name = f" '{var.name}'" if var.name else ""
        out = f".{var.index}" if len(var.owner.outputs) > 1 else ""
        lines.append(f"{pad}{op}{out}{name} {ident(var)} : {type_label(var)}{note}")
        if seen:
            lines[-1] += "  (see above)"
            return
        inner = None if var.owner in inner_done else inner_graph(var.owner)
        inner_done.add(var.owner)
        if inner is not None:
            _inner_lines(inner, level, lines, ident(var))
        skip = shape_only(var.owner)
        for i, inp in enumerate(var.owner.inputs):
            walk(inp, level + 1, "  (shape only)" if i in skip else "")

    def _inner_lines(inner, level, out, outer_id):
        ins, outs = inner
        pad = "  " * (level + 1) + ": "
        out.append(f"{pad}inner graph ({len(ins)} inputs -> {len(outs)} outputs):")
        titles = [f"inner output {k}" for k in range(len(outs))] if len(outs) > 1 else [None]
        sub = _full_tree(outs, titles, None, id_prefix=f"{outer_id}.")
        for line in sub[0]:
            out.append(pad + "  " + line)
        legend.update(sub[1])

    for root, title in zip(roots, titles):
        if title:
            lines.append(f"[{title}]")
        walk(root, 0)
    return lines, legend


def _subtree_size(var, limit):
    from minigrad.formula import _children

    seen, stack = set(), [var]
    while stack and len(seen) <= limit:
        v = stack.pop()
        if v in seen or v.owner is None:
            continue
        seen.add(v)
        stack.extend(_children(v))
    return len(seen)


def _viewed_dag(roots):
    """Use counts of every variable the readable view shows, in first-visit order."""
    from minigrad.formula import _children
    from minigrad.formula import look_through as formula_look_through

    uses, order = {}, []
    stack = [formula_look_through(r) for r in reversed(roots)]
    seen = set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        order.append(v)
        for c in reversed(_children(v)):
            uses[c] = uses.get(c, 0) + 1
            stack.append(c)
    return uses, order


def _readable_tree(roots, titles, depth):
    """Each line is a formula; a label (a name, or ``#k`` for a value used several times)
    in it is defined on an indented line below, the first time it appears."""
    from minigrad.formula import TooLong, _children, render
    from minigrad.formula import look_through as formula_look_through

    uses, order = _viewed_dag(roots)
    atoms = {}
    for v in order:
        if v.owner is None:
            continue
        if v.name:
            atoms[v] = v.name
        elif uses.get(v, 0) > 1 and (_subtree_size(v, COLLAPSE_NODES) > COLLAPSE_NODES
                                     or len(render(v, bind=False)[0]) > SHARE_MIN_CHARS):
            atoms[v] = f"#{sum(1 for a in atoms.values() if a.startswith('#'))}"
    lines, defined, too_long = [], set(), set()

    def emit(var, level):
        pad = "  " * level + ("|" if level else "")
        if depth is not None and level > depth:
            lines.append(f"{pad}...")
            return
        label = f"{atoms[var]} = " if var in atoms else ""
        defined.add(var)
        if var.owner is None:
            lines.append(f"{pad}{render(var)[0]} : {_short_type(var)}")
            return
        try:
            text, used = render(var, bind=False, atoms=atoms, max_chars=COLLAPSE_CHARS,
                                too_long=too_long)
        except TooLong:
            text = None
        if text is not None or not _children(var):
            if text is None:
                text, used = render(var, bind=False, atoms=atoms)
            lines.append(f"{pad}{label}{text} : {_short_type(var)}")
            for atom in used:
                if atom not in defined:
                    emit(atom, level + 1)
            return
        lines.append(f"{pad}{label}{_op_text(var)} : {_short_type(var)}")
        for child in _children(var):
            if child in atoms and child in defined:
                lines.append(f"{'  ' * (level + 1)}|{atoms[child]}")
            else:
                emit(child, level + 1)

    for root, title in zip(roots, titles):
        if title:
            lines.append(f"[{title}]")
        root = formula_look_through(root)
        if root in atoms and root in defined:
            lines.append(f"{atoms[root]}  (see above)")
        else:
            emit(root, 0)
    return lines, _view_legend(roots)


def _view_legend(roots):
    """Legend lines for the internal Ops reachable from ``roots`` and those hidden."""
    from minigrad.graph import toposort

    shown, hidden = {}, set()
    for node in toposort(roots):
        if legend_line(node.op) and not _is_hidden(node):
            shown[op_name(node.op)] = legend_line(node.op)
        for inp in node.inputs:
            look_through(inp, hidden)
    for root in roots:
        look_through(root, hidden)
    for name in hidden:
        shown.pop(name, None)
    if hidden:
        shown["hidden"] = ", ".join(sorted(hidden)) + " (bookkeeping of shapes and dtypes)"
    return shown


def _is_hidden(node):
    from minigrad.readable import is_bookkeeping, reads_shape_only

    return is_bookkeeping(node.op) or reads_shape_only(node.op)  # borrowed shapes: dropped


def _op_text(var):
    op = var.owner.op
    label = op.name if op_name(op) in ("Unary", "Binary") else str(op)
    if isinstance(var.type, RowSparseType) and op_name(op) == "RowSparseAdd":
        label = "add"
    if op_name(op) == "ExpandDims":
        axes = op.axes[0] if len(op.axes) == 1 else op.axes
        label = f"expand_dims(axis={axes})"
    return label + (f".{var.index}" if len(var.owner.outputs) > 1 else "")


def debugprint(obj, file=None, print_=True, depth=None, readable=False, legend=None):
    """Print (and return) the graph of a variable, a list of them or a compiled function.

    ``depth`` limits how many levels below each root are shown (``...`` marks the cut).
    ``readable=True`` gives the readable view (see the module docstring). ``legend``
    (default: on in the readable view) appends one line per internal Op that appears.
    """
    from minigrad.deep_recursion import call_deep

    roots, titles = roots_of(obj)
    build = _readable_tree if readable else _full_tree
    lines, found = call_deep(build, roots, titles, depth)
    if legend is None:
        legend = readable
    if legend and found:
        lines.append("legend:")
        hidden = found.pop("hidden", None)
        lines.extend(f"  {name}: {text}" for name, text in sorted(found.items()))
        if hidden:
            lines.append(f"  hidden: {hidden}")
    from minigrad.compile import Function

    if isinstance(obj, Function):  # the jit / tiered linkers' compiled segments
        from minigrad.linker_jit import segment_lines

        lines.extend(segment_lines(obj))
    text = "\n".join(lines)
    if print_:
        print(text, file=file)
    return text
