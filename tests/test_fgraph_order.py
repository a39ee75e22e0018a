"""``FunctionGraph.toposort`` is kept between edits: every edit must forget it."""
from __future__ import annotations

import minigrad as mg
from minigrad.fgraph import FunctionGraph
from minigrad.graph import toposort


def _fresh(fg):
    return toposort(fg.outputs)  # what the order is, computed from scratch


def test_kept_order_follows_every_edit_and_callers_cannot_change_it():
    x, y = mg.vector("x"), mg.vector("y")
    s = mg.exp(x) + y
    out = (s * s).sum()
    fg = FunctionGraph([x, y], [out, s])
    first = fg.toposort()
    assert first == _fresh(fg)
    first.clear()  # the caller's list, not the kept one
    assert fg.toposort() == _fresh(fg) and fg.toposort()
    s_in = fg.outputs[1]
    fg.replace(s_in, mg.log(x) * y, reason="test")  # imports two nodes, prunes exp and add
    assert fg.toposort() == _fresh(fg)
    assert "Exp" not in {type(n.op).__name__ for n in fg.toposort()}
    prod = fg.outputs[0].owner.inputs[0]  # the product, read by the sum only
    fg.replace(prod, fg.outputs[1], reason="test")  # the product's node is pruned
    assert fg.toposort() == _fresh(fg)
    assert len(fg.toposort()) == len(fg.apply_nodes)
    fg.check_integrity()
    fg.replace(y, mg.sqrt(x), reason="test")  # a leaf: new nodes, nothing pruned
    assert fg.toposort() == _fresh(fg)
    assert "sqrt" in {str(n.op) for n in fg.toposort()}
    fg.check_integrity()
