"""``mg.to_dot``: a graph as Graphviz DOT text, and rendering it when Graphviz exists.

The picture follows the data: inputs and shared tables at the top, every Apply node a
box, one edge per operand, the output at the bottom.

* Labels are HTML-like (``<...>``, XML-escaped), so ``Sum{axes=(0,)}`` or ``a < b``
  never breaks the DOT syntax (``shape=record`` would parse the braces).
* Each edge is labelled with the operand position it feeds (``sub(a, b)`` and
  ``sub(b, a)`` differ) and the type of the value it carries.
* Row-sparse values travel on thick red edges; inputs an Op reads only for their shape
  (the input of a ``Shape`` node) are dashed grey edges: they borrow a shape, not data;
  the readable view drops borrowed shapes (``readable.shape_inputs``) altogether.
* An Op with an inner graph (``op.inner_inputs``/``op.inner_outputs``, e.g. a fused
  element-wise chain) is drawn as a cluster holding that graph.
* ``readable=True`` looks through bookkeeping Ops, as ``debugprint(readable=True)`` does.

Writing a ``.dot``/``.gv`` file is plain text; other suffixes (``.png``, ``.svg``,
``.pdf``) run the ``dot`` program.
"""
from __future__ import annotations

import html
import os
import shutil
import subprocess

import numpy as np

from minigrad.graph import Constant
from minigrad.printing import _short_type, inner_graph, leaf_label, roots_of
from minigrad.readable import legend_line, look_through, op_name, shape_inputs, shape_only
from minigrad.types import RowSparseType
from minigrad.variables import SharedVariable

TEXT_SUFFIXES = (".dot", ".gv")


def _html(text):
    return html.escape(str(text), quote=False)


def quote(text):
    """A DOT double-quoted string (backslashes and quotes escaped, no raw newlines)."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _op_label(op):
    name = op.name if op_name(op) in ("Unary", "Binary") else type(op).__name__
    props = getattr(op, "__props__", ())
    extra = ", ".join(f"{p}={getattr(op, p)!r}" for p in props if p != "name")
    label = f"<b>{_html(name)}</b>"
    if extra:
        label += f'<br/><font point-size="9">{_html(extra)}</font>'
    return f"<{label}>"


class _Writer:
    def __init__(self, readable, show_types):
        self.readable, self.show_types = readable, show_types
        self.lines, self.ids, self.done = [], {}, set()
        self.counter = 0
        self.scope = None  # the cluster being drawn: its leaves are its own nodes

    def fresh(self, prefix):
        self.counter += 1
        return f"{prefix}{self.counter}"

    def view(self, var):
        return look_through(var) if self.readable else var

    def inputs_of(self, node):
        """(position, variable, shape_only) for each operand edge to draw."""
        dashed, borrowed = shape_only(node), shape_inputs(node)
        out = []
        for i, var in enumerate(node.inputs):
            if self.readable and i in borrowed:
                continue
            out.append((i, self.view(var), i in dashed))
        return out

    # ------------------------------------------------------------------ nodes
    def leaf(self, var, indent):
        key = ("leaf", var, self.scope)
        if key in self.ids:
            return self.ids[key]
        ident = self.ids[key] = self.fresh("v")
        if isinstance(var, Constant):
            data = np.asarray(var.data)
            text = np.array2string(data, threshold=6) if data.size <= 6 else f"array{data.shape}"
            attrs = f'shape=plaintext, fontsize=10, label=<{_html(text)}>'
        else:
            shared = isinstance(var, SharedVariable)
            title = _html(leaf_label(var))
            kind = "box" if shared else "ellipse"
            fill = "lightblue" if shared else "palegreen"
            attrs = (f'shape={kind}, style=filled, fillcolor={fill}, label=<<b>{title}</b>'
                     f'<br/><font point-size="9">{_html(_short_type(var))}</font>>')
        self.lines.append(f"{indent}{ident} [{attrs}];")
        return ident

    def source(self, var, indent):
        """The DOT node an edge carrying ``var`` starts from (drawing it if needed)."""
        var = self.view(var)
        if var.owner is None:
            return self.leaf(var, indent)
        if var.owner not in self.done:
            for node in self.order(var):  # producers first, without recursion
                self.apply(node, indent)
        return self.ids[("out", var.owner, var.index)]

    def order(self, var):
        """The undrawn Apply nodes ``var`` needs, each after those feeding it (iterative:
        a graph 10^5 nodes deep must not hit the recursion limit)."""
        out, seen = [], set()
        stack = [(var.owner, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                out.append(node)
                continue
            if node in seen or node in self.done:
                continue
            seen.add(node)
            stack.append((node, True))
            for _, inp, _ in reversed(self.inputs_of(node)):
                if inp.owner is not None and inp.owner not in seen and inp.owner not in self.done:
                    stack.append((inp.owner, False))
        return out

    def apply(self, node, indent):
        if node in self.done:
            return
        self.done.add(node)
        inner = inner_graph(node)
        if inner is not None:
            return self.cluster(node, inner, indent)
        ident = self.fresh("n")
        for k in range(len(node.outputs)):
            self.ids[("out", node, k)] = ident
        tip = legend_line(node.op)
        tooltip = f", tooltip={quote(tip)}" if tip else ""
        self.lines.append(f'{indent}{ident} [shape=box, style="rounded,filled", '
                          f'fillcolor=lightgrey, label={_op_label(node.op)}{tooltip}];')
        self.edges_into(node, ident, indent)

    def edges_into(self, node, target, indent):
        many = len(self.inputs_of(node)) > 1
        for pos, var, borrowed in self.inputs_of(node):
            src = self.source(var, indent)
            self.edge(src, target, var, pos if many else None, borrowed, indent)

    def edge(self, src, dst, var, pos, borrowed, indent):
        parts = []
        if pos is not None:
            parts.append(f"{pos}")
        if var.owner is not None and len(var.owner.outputs) > 1:
            parts.append(f"out {var.index}")
        text = _html(" ".join(parts))
        if borrowed:
            text += (" " if text else "") + "shape only"
        if self.show_types:
            text += f'<br/><font point-size="8">{_html(_short_type(var))}</font>'
        attrs = [f"label=<{text}>"] if text else []
        if isinstance(var.type, RowSparseType):
            attrs += ['color="red"', "fontcolor=red", "penwidth=2.5"]
        if borrowed:
            attrs += ["style=dashed", "color=gray50"]
        self.lines.append(f"{indent}{src} -> {dst} [{', '.join(attrs)}];")

    def cluster(self, node, inner, indent):
        """A fused node: its inner graph inside a box; outer edges enter inner inputs."""
        ins, outs = inner
        ident = self.fresh("cluster_")
        self.lines.append(f"{indent}subgraph {ident} {{")
        sub = indent + "  "
        title = str(node.op)
        title = title if len(title) <= 60 else title[:57] + "..."
        self.lines.append(f'{sub}label=<<b>{_html(title)}</b>>; style="rounded,dashed"; '
                          "color=blue;")
        outer_scope, self.scope = self.scope, ident
        placeholders = {}
        for k, var in enumerate(ins):
            placeholders[var] = p = self.fresh("i")
            self.lines.append(f'{sub}{p} [shape=circle, width=0.3, fontsize=9, label="in {k}"];')
            self.ids[("leaf", var, ident)] = p
        for k, var in enumerate(outs):
            src = self.source(var, sub)
            o = self.fresh("o")
            self.lines.append(f'{sub}{o} [shape=circle, width=0.3, fontsize=9, label="out {k}"];')
            self.edge(src, o, var, None, False, sub)
            self.ids[("out", node, k)] = o
        self.scope = outer_scope
        self.lines.append(f"{indent}}}")
        outer = list(zip(range(len(node.inputs)), node.inputs))
        for (pos, var), inner_in in zip(outer, ins):
            src = self.source(var, indent)
            self.edge(src, placeholders[inner_in], var, pos, pos in shape_only(node), indent)


def to_dot(obj, path=None, readable=False, show_types=True):
    """Graphviz DOT source for a variable, a list of them or a compiled function.

    ``path`` ending in ``.dot``/``.gv`` gets the text (no Graphviz needed); any other
    suffix is rendered with Graphviz's ``dot`` (``RuntimeError`` if it is missing).
    """
    roots, titles = roots_of(obj)
    writer = _Writer(readable, show_types)
    out = ["digraph minigrad {", "  rankdir=TB;", '  node [fontname="Helvetica"];',
           '  edge [fontname="Helvetica", fontsize=9];']
    for k, (root, title) in enumerate(zip(roots, titles)):
        src = writer.source(root, "  ")
        sink = f"out{k}"
        label = _html(title or (f"'{root.name}'" if root.name else "output"))
        writer.lines.append(f'  {sink} [shape=ellipse, style=bold, label=<<b>{label}</b>>];')
        writer.edge(src, sink, writer.view(root), None, False, "  ")
    out += writer.lines
    out.append("}")
    text = "\n".join(out) + "\n"
    if path is not None:
        write_or_render(text, path)
    return text


def write_or_render(text, path):
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TEXT_SUFFIXES or not suffix:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return
    if shutil.which("dot") is None:
        raise RuntimeError(
            f"rendering {path!r} needs the Graphviz 'dot' program (apt install graphviz, "
            "brew install graphviz); a '.dot' path writes the text without it"
        )
    proc = subprocess.run(["dot", f"-T{suffix[1:]}", "-o", path], input=text.encode(),
                          capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"Graphviz failed to render {path!r}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
