"""From ``y = x ** 2`` to a logistic-regression cost with a sparse embedding.

Run it: ``python examples/tutorial.py``. Every step prints the graph with
``mg.debugprint`` so you can see what ``mg.grad`` and ``mg.function`` build.
docs/tutorial.md walks through the same code with its output.
"""
from __future__ import annotations

import numpy as np

import minigrad as mg


def section(title):
    print(f"\n=== {title} " + "=" * max(0, 60 - len(title)))


def step1_scalar():
    section("1. y = x ** 2 and its gradient")
    x = mg.scalar("x")
    y = x**2
    mg.debugprint(y)
    dy_dx = mg.grad(y, x)  # more graph, not a number
    print("-- gradient graph:")
    mg.debugprint(dy_dx)
    f = mg.function([x], [y, dy_dx])
    print("-- after the compiler's rewrites (x**2 -> square, x**1 -> x, 1*g -> g):")
    mg.debugprint(f)
    print("f(3.0) =", [float(v) for v in f(3.0)])


def step2_vector():
    section("2. a vector and broadcasting")
    w = mg.vector("w")
    b = mg.scalar("b")
    cost = ((w + b) ** 2).sum()
    gw, gb = mg.grad(cost, [w, b])
    f = mg.function([w, b], [cost, gw, gb])
    print("cost, dcost/dw, dcost/db =", f(np.array([1.0, 2.0, 3.0]), 0.5))


def step3_embedding_logreg():
    section("3. logistic regression over a sparse embedding")
    rng = np.random.default_rng(0)
    vocab, dim = 1000, 8
    E = mg.shared(0.1 * rng.standard_normal((vocab, dim)), name="E")  # the table
    w = mg.shared(0.1 * rng.standard_normal(dim), name="w")
    tokens = mg.lmatrix("tokens")  # (batch, length) word ids
    y = mg.vector("y")  # 0/1 labels

    doc = E[tokens].mean(axis=1)  # row gather, then average the words
    logit = doc @ w
    p = mg.sigmoid(logit)
    cost = -(y * mg.log(p) + (1 - y) * mg.log(1 - p)).mean()

    gE, gw = mg.grad(cost, [E, w])
    print("type of dcost/dE:", gE.type, " <- only the rows in `tokens`")
    print("type of dcost/dw:", gw.type)
    print("-- gradient of E, top 3 levels (TakeGrad makes the RowSparse value):")
    mg.debugprint(gE, depth=3)

    step = mg.function([tokens, y], cost, updates=mg.optim.SGD([E, w], lr=2.0).updates(cost))
    toks = rng.integers(0, vocab, size=(256, 5))
    labels = (toks % 2 == 0).mean(axis=1).round()  # a learnable rule: mostly even ids?
    for epoch in range(201):
        c = float(step(toks, labels))
        if epoch % 50 == 0:
            print(f"epoch {epoch:3d}: cost {c:.4f}")

    f_grad = mg.function([tokens, y], gE)
    g = f_grad(toks[:2], labels[:2])
    print("a RowSparse value:", g, "-> unique rows", g.nnz_rows)
    print("as scipy CSR:", repr(g.to_scipy()))


if __name__ == "__main__":
    step1_scalar()
    step2_vector()
    step3_embedding_logreg()
