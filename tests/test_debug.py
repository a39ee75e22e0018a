"""``debugprint`` (indented tree with ops, types, row-sparse marks), ``to_dot`` and
``verify_grad`` catching a wrong gradient."""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg
from minigrad.graph import Apply, Op
from minigrad.types import TensorType


def test_debugprint_tree(capsys):
    E = mg.shared(np.ones((5, 2)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    g = mg.grad(cost, E)
    text = mg.debugprint(g)
    assert capsys.readouterr().out.strip() == text
    lines = text.splitlines()
    assert lines[0].startswith("TakeGrad") and "RowSparse[float64" in lines[0]
    assert "<- row-sparse" in lines[0]
    assert any(line.startswith("  |") for line in lines)  # indented children
    assert any("shared E" in line for line in lines) and any("input idx" in line for line in lines)
    assert "Tensor[int64, (?,)]" in text


def test_debugprint_function_and_no_print(capsys):
    x = mg.vector("x")
    a = mg.shared(np.zeros(2), name="a")
    f = mg.function([x], mg.exp(x) + mg.exp(x), updates=[(a, a + x)], backend="numpy")
    text = mg.debugprint(f, print_=False)
    assert capsys.readouterr().out == ""
    assert "[output 0]" in text and "[update a]" in text
    assert "exp" in text and "Tensor[float64, (?,)]" in text
    assert "(see above)" in text or text.count("exp") == 1
    assert mg.debugprint([x * 2.0, x], print_=False).count("input x") >= 1


def test_to_dot():
    E = mg.shared(np.ones((5, 2)), name="E")
    idx = mg.lvector("idx")
    g = mg.grad(E[idx].sum(), E)
    dot = mg.to_dot(g)
    assert dot.startswith("digraph")
    assert dot.rstrip().endswith("}")
    assert "->" in dot and "TakeGrad" in dot and 'color="red"' in dot
    f = mg.function([idx], g, backend="numpy")
    assert mg.to_dot(f).startswith("digraph")


class _WrongSquare(Op):
    """x ** 2 with a deliberately wrong gradient (3x instead of 2x)."""

    def make_node(self, x):
        return Apply(self, [x], [TensorType(x.dtype, x.type.shape)])

    def perform(self, node, inputs):
        return (inputs[0] ** 2,)

    def grad(self, inputs, outputs, output_grads):
        return [output_grads[0] * inputs[0] * 3.0]


def test_verify_grad_catches_wrong_gradient():
    x = np.random.default_rng(0).standard_normal((2, 3))
    with pytest.raises(AssertionError, match="worst element: input 0"):
        mg.verify_grad(lambda a: _WrongSquare()(a).sum(), [x], rng=0)
    analytic = mg.verify_grad(lambda a: (a ** 2).sum(), [x], rng=0)
    np.testing.assert_allclose(analytic[0], 2 * x)


def test_verify_grad_rejects_int_points():
    with pytest.raises(TypeError, match="float"):
        mg.verify_grad(lambda a: a.sum(), [np.arange(3)])


# ----------------------------------------------------------------- the readable view


def _triplet_cost(name_rows):
    """Triplet margin loss over rows of one table: anchors, positives, negatives."""
    T = mg.shared(np.random.default_rng(0).standard_normal((50, 8)), name="T")
    a, p, n = mg.lvector("a"), mg.lvector("p"), mg.lvector("n")
    A, P, N = T[a], T[p], T[n]
    if name_rows:
        A.name, P.name, N.name = "A", "P", "N"
    d_pos = ((A - P) ** 2).sum(axis=1)
    d_neg = ((A - N) ** 2).sum(axis=1)
    cost = mg.maximum(d_pos - d_neg + 1.0, 0.0).mean()
    return T, (a, p, n), cost


@pytest.mark.parametrize("name_rows", [True, False], ids=["named-rows", "unnamed"])
def test_triplet_gradient_is_readable_in_under_25_lines(name_rows):
    T, _, cost = _triplet_cost(name_rows)
    g = mg.grad(cost, T)
    full = mg.debugprint(g, print_=False)
    text = mg.debugprint(g, readable=True, print_=False)
    lines = text.splitlines()
    assert len(full.splitlines()) > 80
    assert len(lines) < 25, text
    assert max(len(line) for line in lines) <= 100, text
    # the maths is visible, the bookkeeping is not (except in the legend)
    tree = text.split("legend:")[0]
    for hidden in ("ReduceLike", "BroadcastLike", "ExpandDims", "Cast", "CountOf"):
        assert hidden not in tree, hidden
    assert tree.count("TakeGrad(") == 3 and "RowSparse" in lines[0]
    legend = text.split("legend:")[1]
    assert "TakeGrad:" in legend and "RowSparseAdd:" in legend
    assert "hidden: " in legend and "ReduceLike" in legend and "BroadcastLike" in legend


def test_readable_view_defines_every_label_it_uses():
    T, _, cost = _triplet_cost(name_rows=True)
    text = mg.debugprint(mg.grad(cost, T), readable=True, print_=False)
    tree = text.split("legend:")[0]
    import re

    defined = set(re.findall(r"(#\d+|\b[A-Z]\b) = ", tree))
    used = set(re.findall(r"#\d+", tree)) | {"A", "P", "N"}
    assert used <= defined, (used - defined, text)


def test_legend_explains_every_internal_op_of_the_full_view():
    from minigrad.readable import LEGEND

    T, _, cost = _triplet_cost(name_rows=False)
    text = mg.debugprint(mg.grad(cost, T), legend=True, print_=False)
    tree, legend = text.split("legend:")
    for name in LEGEND:
        if f"{name} #" in tree or f"{name}{{" in tree:
            assert f"  {name}: " in legend, name
    assert "(shape only)" in tree  # a borrowed shape is not a data dependency


def test_readable_view_of_a_compiled_step():
    E = mg.shared(np.ones((20, 3)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).mean()
    f = mg.function([idx], cost, updates=mg.optim.SGD([E], lr=0.5).updates(cost),
                    backend="numpy")
    text = mg.debugprint(f, readable=True, print_=False)
    assert "[output 0]" in text and "[update E]" in text and "legend:" in text


def test_every_internal_op_has_a_one_line_legend():
    import minigrad.models  # noqa: F401  (their Ops register as subclasses)
    import minigrad.optim  # noqa: F401
    from minigrad.readable import PLAIN_MATHS, legend_line

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in set(subclasses(Op)):
        if not cls.__module__.startswith("minigrad.") or cls.__name__ in PLAIN_MATHS:
            continue
        if cls.__name__.startswith("_") or cls.__name__ in ("Reduce",):
            continue
        line = legend_line(cls.__new__(cls))
        assert line and "\n" not in line and len(line) <= 80, (cls.__name__, line)


def test_readable_view_of_roots_sharing_values():
    x = mg.vector("x")
    h = mg.tanh(x) * mg.exp(x) + mg.sqrt(x * x + 1.0)
    h.name = "h"
    text = mg.debugprint([h * 2.0, h], readable=True, print_=False)
    assert "where" not in text  # pp's where-clause never leaks into the tree
    assert text.count("h = ") == 1 and "h  (see above)" in text


def test_viewers_handle_graphs_deeper_than_the_recursion_limit():
    import sys

    x = mg.vector("x")
    h = x
    for _ in range(1200):  # 2400 nested nodes: past the default recursion limit of 1000
        h = h * 1.01 + 1.0
    limit = sys.getrecursionlimit()
    assert mg.debugprint(h, print_=False).count("\n") > 2400
    assert mg.debugprint(h, readable=True, print_=False).count("\n") > 100
    assert "where" in mg.pp(h, print_=False)  # deep formulas are cut into named pieces
    assert mg.to_dot(h).count("->") > 2400
    assert sys.getrecursionlimit() == limit
