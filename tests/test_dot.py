"""``mg.to_dot``: every graph of the op test table (forward, gradient, compiled) gives DOT
text that parses, and renders with Graphviz when it is installed; operand order, row-sparse
edges, shape-only edges and fused clusters are drawn; a ``.dot`` file needs no Graphviz."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from dot_syntax import DotSyntaxError, parse_dot
from test_ops_grad import CASES

import minigrad as mg
from minigrad.graph import Apply, Op, toposort
from minigrad.types import TensorType


def _graphs(fn, points):
    syms = [mg.tensor(f"x{i}", "float64", (None,) * p.ndim) for i, p in enumerate(points)]
    out = fn(*syms)
    cost = out.sum() if out.ndim else out
    grads = mg.grad(cost, syms)
    f = mg.function(syms, [out] + grads, backend="numpy")
    return [out, [cost] + grads, f]


def _dot_texts(fn, points):
    """(graph, readable, DOT text) for the forward, gradient and compiled graphs."""
    return [(graph, readable, mg.to_dot(graph, readable=readable))
            for graph in _graphs(fn, points) for readable in (False, True)]


TEXTS = {name: _dot_texts(fn, points) for name, fn, points in CASES}


@pytest.mark.parametrize("name", list(TEXTS))
def test_dot_text_parses_and_shows_every_op(name):
    for graph, readable, text in TEXTS[name]:
        nodes, edges = parse_dot(text)
        assert "shape=record" not in text  # record labels choke on {braces}
        assert edges, "a graph without edges"
        if readable:
            continue
        roots = graph.graph_outputs if isinstance(graph, mg.Function) else (
            graph if isinstance(graph, list) else [graph])
        for node in toposort(roots):  # the full view draws every op
            label = getattr(node.op, "name", None) or type(node.op).__name__
            assert f"<b>{label}" in text, label


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz 'dot' is not installed (apt install graphviz); the DOT "
                    "text is still checked by test_dot_text_parses_and_shows_every_op")
def test_every_graph_of_the_op_table_renders():
    # one dot process for all graphs: dot reads a stream of graphs
    stream = "".join(t for texts in TEXTS.values() for _, _, t in texts)
    proc = subprocess.run(["dot", "-Tsvg"], input=stream.encode(), capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stderr.decode().strip() == "", proc.stderr.decode()[-2000:]
    assert proc.stdout.count(b"</svg>") == sum(len(t) for t in TEXTS.values())


def test_operand_order_is_drawn():
    a, b = mg.vector("a"), mg.vector("b")
    one, other = mg.to_dot(a - b), mg.to_dot(b - a)
    assert one != other
    edge = re.compile(r"(v\d+) -> (n\d+) \[label=<(\d)")
    ids_one = {m.group(3): m.group(1) for m in edge.finditer(one)}
    label_of = dict(re.findall(r"(v\d+) \[.*?<b>input (\w)</b>", one))
    assert label_of[ids_one["0"]] == "a" and label_of[ids_one["1"]] == "b"


def test_braces_and_html_characters_are_escaped():
    x = mg.matrix("x<&>")
    text = mg.to_dot(mg.sum(x, axis=0) < 1.0)
    parse_dot(text)
    assert "Sum" in text and "axes=(0,)" in text and "&lt;&amp;&gt;" in text


def test_row_sparse_and_shape_only_edges():
    E = mg.shared(np.ones((5, 2)), name="E")
    idx = mg.lvector("idx")
    g = mg.grad(E[idx].sum(), E)
    text = mg.to_dot(g)
    parse_dot(text)
    red = [line for line in text.splitlines() if 'color="red"' in line]
    assert red and all("penwidth" in line for line in red)
    assert any("RowSparse" in line for line in red)
    dashed = [line for line in text.splitlines() if "style=dashed" in line]
    assert dashed and all("shape only" in line for line in dashed)
    # the readable view drops shape-only inputs altogether
    assert "style=dashed" not in mg.to_dot(g, readable=True)


class _FusedAxpy(Op):
    """A stand-in fused Op: one node holding the inner graph ``a * x + y``."""

    def __init__(self):
        self.inner_inputs = [mg.vector("a"), mg.vector("x"), mg.vector("y")]
        a, x, y = self.inner_inputs
        self.inner_outputs = [a * x + y]

    def make_node(self, *inputs):
        return Apply(self, list(inputs), [TensorType("float64", (None,))])


class _FusedAxpyMethod(Op):
    """The same, declaring its inner graph the compiler's way: ``inner_graph(node)``."""

    def inner_graph(self, node):
        a, x, y = (v.type.make_variable(name=n) for v, n in zip(node.inputs, "axy"))
        return [a, x, y], [a * x + y]

    def make_node(self, *inputs):
        return Apply(self, list(inputs), [TensorType("float64", (None,))])


@pytest.mark.parametrize("fused", [_FusedAxpy, _FusedAxpyMethod])
def test_fused_ops_are_clusters_and_debugprint_shows_inner_graph(fused):
    a, x, y = mg.vector("a"), mg.vector("x"), mg.vector("y")
    out = mg.exp(fused()(a, x, y))
    text = mg.to_dot(out)
    parse_dot(text)
    assert "subgraph cluster_" in text and "<b>mul</b>" in text and "<b>add</b>" in text
    tree = mg.debugprint(out, print_=False)
    assert "inner graph (3 inputs -> 1 outputs)" in tree and "add" in tree
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True, check=True)


def test_writing_dot_needs_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    x = mg.vector("x")
    text = mg.to_dot(mg.exp(x), tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == text
    with pytest.raises(RuntimeError, match="Graphviz"):
        mg.to_dot(mg.exp(x), tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_render_png(tmp_path):
    E = mg.shared(np.ones((5, 2)), name="E")
    idx = mg.lvector("idx")
    cost = mg.mean(E[idx] ** 2)
    mg.to_dot(mg.grad(cost, E), tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_syntax_checker_rejects_what_graphviz_rejects():
    for bad in ['digraph { a -> }', 'digraph { a [label=<x < y>] }', 'graph { a -> b }',
                'digraph { a [label="unterminated] }', 'digraph { a [label=<<b>x</i>>] }']:
        with pytest.raises(DotSyntaxError):
            parse_dot(bad)
    parse_dot('digraph g { rankdir=TB; a [label=<<b>x</b>>]; a -> b [label="1"]; '
              'subgraph cluster_0 { c; } }')
