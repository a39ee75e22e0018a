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
