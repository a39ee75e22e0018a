"""``mg.pp``: one-line formulas. Printed arithmetic is valid Python with the right
precedence (evaluating the text gives the graph's value), gradients read as maths, and
shared sub-expressions are bound once instead of repeated."""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg

RNG = np.random.default_rng(3)


def _random_expression(rng, leaves, depth):
    if depth == 0 or rng.random() < 0.2:
        k = rng.integers(len(leaves) + 1)
        return leaves[k] if k < len(leaves) else float(rng.integers(1, 4))
    op = rng.choice(["+", "-", "*", "/", "neg", "**"])
    a = _random_expression(rng, leaves, depth - 1)
    if op == "neg":
        return -mg.ops.elemwise.as_variable(a)
    if op == "**":
        return mg.ops.elemwise.as_variable(a) ** float(rng.integers(1, 3))
    b = _random_expression(rng, leaves, depth - 1)
    a = mg.ops.elemwise.as_variable(a)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]


@pytest.mark.parametrize("seed", range(40))
def test_printed_arithmetic_evaluates_to_the_graph_value(seed):
    rng = np.random.default_rng(seed)
    x, y, z = mg.vector("x"), mg.vector("y"), mg.vector("z")
    expr = x * _random_expression(rng, [x, y, z], 4) - _random_expression(rng, [y, z], 3)
    text = mg.pp(expr, print_=False)
    assert "\n" not in text and "where" not in text
    values = {k: rng.uniform(0.5, 2.0, size=3) for k in "xyz"}
    with np.errstate(all="ignore"):
        expected = mg.function([x, y, z], expr, backend="numpy")(*values.values())
        printed = eval(text, {}, dict(values))  # noqa: S307 - our own formula
    np.testing.assert_allclose(printed, expected, rtol=1e-12)


def test_operators_and_calls():
    x, W, b = mg.matrix("x"), mg.matrix("W"), mg.vector("b")
    assert mg.pp(mg.tanh(x @ W + b).sum(axis=1), print_=False) == "sum(tanh(x @ W + b), axis=1)"
    assert mg.pp(x.T.mean(), print_=False) == "mean(x.T)"
    assert mg.pp(-(x - 1.0) ** 2, print_=False) == "-(x - 1.0) ** 2"
    assert mg.pp(x[1:, ::2], print_=False) == "x[1:, ::2]"
    assert mg.pp(mg.maximum(x, 0.0) < 2.0, print_=False) == "maximum(x, 0.0) < 2.0"


def test_gradient_of_a_gather_reads_like_maths(capsys):
    E = mg.shared(RNG.standard_normal((10, 4)), name="E")
    tokens = mg.lvector("tokens")
    cost = (E[tokens] ** 2).sum()
    text = mg.pp(mg.grad(cost, E))
    assert capsys.readouterr().out.strip() == text
    assert text == "TakeGrad(tokens, 2 * E[tokens])"


def test_softmax_regression_gradient_shows_the_mean():
    x, W, y = mg.matrix("x"), mg.shared(np.zeros((3, 2)), name="W"), mg.ivector("y")
    cost = mg.nn.cross_entropy(x @ W, y)
    text = mg.pp(mg.grad(cost, W), print_=False)
    assert text.startswith("x.T @ ") and "CountOf" not in text and "ReduceLike" not in text


def test_shared_subexpressions_are_bound_once():
    x = mg.vector("x")
    h = x
    for _ in range(12):  # each level uses the previous one twice: inlining is 2 ** 12 long
        h = mg.tanh(h) * mg.exp(h) + h
    text = mg.pp(h, print_=False)
    assert len(text) < 2000 and "where" in text and "t0 = " in text


def test_named_intermediates_are_defined_after_the_formula():
    a, b = mg.vector("a"), mg.vector("b")
    d = a - b
    d.name = "d"
    assert mg.pp((d * d).sum(), print_=False) == "sum(d * d)  where  d = a - b"


def test_pp_rejects_a_compiled_function():
    x = mg.vector("x")
    with pytest.raises(TypeError, match="debugprint"):
        mg.pp(mg.function([x], x * 2.0))
