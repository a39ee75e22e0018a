"""Looking at graphs and checking gradients: ``debugprint``, ``to_dot``, ``verify_grad``.

``debugprint`` prints one line per variable, indented by depth, with the Op, the type
(a row-sparse gradient shows as ``RowSparse[...]``) and an id so shared sub-graphs are
printed once and referred to afterwards. ``to_dot`` gives the same graph as Graphviz DOT
text. ``verify_grad`` compares a symbolic gradient with central finite differences along
random directions.
"""
from __future__ import annotations

import numpy as np

from minigrad.graph import Constant, Variable
from minigrad.types import RowSparseType
from minigrad.variables import SharedVariable


def _roots(obj):
    from minigrad.compile import Function

    if isinstance(obj, Function):
        return obj.graph_outputs + obj.graph_updates, (
            [f"output {i}" for i in range(len(obj.graph_outputs))]
            + [f"update {t.name or t}" for t, _ in obj.updates]
        )
    if isinstance(obj, Variable):
        return [obj], [None]
    objs = list(obj)
    return objs, [None] * len(objs)


def _leaf_label(var):
    if isinstance(var, SharedVariable):
        return f"shared {var.name or ''}".strip()
    if isinstance(var, Constant):
        data = np.asarray(var.data)
        shown = np.array2string(data, threshold=6) if data.size <= 6 else f"array{data.shape}"
        return f"constant {shown}"
    return f"input {var.name or ''}".strip()


def _type_label(var):
    mark = "  <- row-sparse" if isinstance(var.type, RowSparseType) else ""
    return f"{var.type}{mark}"


def debugprint(obj, file=None, print_=True, depth=None):
    """Print (and return) the graph of a variable, a list of them or a compiled function.

    ``depth`` limits how many levels below each root are shown (``...`` marks the cut).
    """
    roots, titles = _roots(obj)
    ids, lines = {}, []

    def ident(var):
        return ids.setdefault(var, f"#{len(ids)}")

    def walk(var, level):
        pad = "  " * level + ("|" if level else "")
        if depth is not None and level > depth:
            lines.append(f"{pad}...")
            return
        if var.owner is None:
            lines.append(f"{pad}{_leaf_label(var)} {ident(var)} : {_type_label(var)}")
            return
        seen = var in ids
        name = f" '{var.name}'" if var.name else ""
        out = f".{var.index}" if len(var.owner.outputs) > 1 else ""
        lines.append(f"{pad}{var.owner.op}{out}{name} {ident(var)} : {_type_label(var)}")
        if seen:
            lines[-1] += "  (see above)"
            return
        for inp in var.owner.inputs:
            walk(inp, level + 1)

    for root, title in zip(roots, titles):
        if title:
            lines.append(f"[{title}]")
        walk(root, 0)
    text = "\n".join(lines)
    if print_:
        print(text, file=file)
    return text


def to_dot(obj, path=None):
    """Graphviz DOT source for the graph; renders ``path`` (.png/.svg) if graphviz exists."""
    roots, _ = _roots(obj)
    from minigrad.graph import ancestors

    variables = ancestors(roots)
    ids = {v: f"v{i}" for i, v in enumerate(variables)}
    nodes = {}
    out = ["digraph minigrad {", "  rankdir=BT;", '  node [fontname="Helvetica"];']
    for var in variables:
        color = ', color="red"' if isinstance(var.type, RowSparseType) else ""
        label = (var.name + "\\n" if var.name else "") + str(var.type)
        if var.owner is None:
            label = _leaf_label(var).replace('"', "'") + "\\n" + str(var.type)
        shape = "box" if var.owner is None else "ellipse"
        out.append(f'  {ids[var]} [label="{label}", shape={shape}{color}];')
        if var.owner is not None and var.owner not in nodes:
            node_id = nodes[var.owner] = f"n{len(nodes)}"
            op_label = str(var.owner.op).replace('"', "'")
            out.append(f'  {node_id} [label="{op_label}", shape=record, style=filled, '
                       'fillcolor="lightgrey"];')
            for inp in var.owner.inputs:
                out.append(f"  {ids[inp]} -> {node_id};")
        if var.owner is not None:
            out.append(f"  {nodes[var.owner]} -> {ids[var]};")
    out.append("}")
    text = "\n".join(out)
    if path is not None:
        _render(text, path)
    return text


def _render(text, path):
    import shutil
    import subprocess

    fmt = str(path).rsplit(".", 1)[-1]
    if shutil.which("dot") is None:
        raise RuntimeError("rendering needs the Graphviz 'dot' program (apt install graphviz)")
    subprocess.run(["dot", f"-T{fmt}", "-o", str(path)], input=text.encode(), check=True)


def verify_grad(fn, points, rng=None, eps=None, tol=None, n_directions=3):
    """Check the symbolic gradient of ``fn`` against central finite differences.

    ``fn`` maps symbolic variables (one per point) to a symbolic scalar (or any tensor:
    it is then projected onto a random direction). ``points`` are NumPy arrays (float64
    gives the tightest check). For each of ``n_directions`` random directions ``u`` the
    directional derivative ``<grad f, u>`` is compared with
    ``(f(x + eps u) - f(x - eps u)) / (2 eps)``; an ``AssertionError`` names the input and
    the worst mismatch.
    """
    from minigrad.compile import function
    from minigrad.grad import grad
    from minigrad.types import RowSparse
    from minigrad.variables import constant, tensor

    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    points = [np.asarray(p) for p in points]
    for p in points:
        if p.dtype.kind != "f":
            raise TypeError("verify_grad points must be float arrays")
    dtype = np.result_type(*points)
    eps = eps if eps is not None else (1e-6 if dtype == np.float64 else 1e-2)
    tol = tol if tol is not None else (1e-5 if dtype == np.float64 else 3e-2)

    syms = [tensor(f"x{i}", p.dtype.name, (None,) * p.ndim) for i, p in enumerate(points)]
    out = fn(*syms)
    out_sym = out
    if out.ndim != 0:
        proj_value = rng.standard_normal(_shape_of(fn, points))
        out_sym = (out * constant(proj_value.astype(out.dtype))).sum()
    cost_fn = function(syms, out_sym, backend="numpy")
    grads = grad(out_sym, syms, disconnected="zero")
    grad_fn = function(syms, grads, backend="numpy")
    analytic = [g.to_dense() if isinstance(g, RowSparse) else g for g in grad_fn(*points)]

    for _ in range(n_directions):
        dirs = [rng.standard_normal(p.shape).astype(p.dtype) for p in points]
        plus = cost_fn(*[p + eps * d for p, d in zip(points, dirs)])
        minus = cost_fn(*[p - eps * d for p, d in zip(points, dirs)])
        numeric = (float(plus) - float(minus)) / (2 * eps)
        symbolic = float(sum(np.sum(g * d) for g, d in zip(analytic, dirs)))
        scale = max(1.0, abs(numeric), abs(symbolic))
        if abs(numeric - symbolic) > tol * scale:
            worst = _worst_element(cost_fn, points, analytic, eps)
            raise AssertionError(
                f"verify_grad: directional derivative mismatch: symbolic {symbolic:.10g} vs "
                f"finite differences {numeric:.10g} (abs err {abs(numeric - symbolic):.3g}, "
                f"tol {tol * scale:.3g}){worst}"
            )
    return analytic


def _worst_element(cost_fn, points, analytic, eps, max_elements=2000):
    """Element-wise finite differences, to name the worst gradient entry."""
    if sum(p.size for p in points) > max_elements:
        return ""
    worst = (-1.0, None)
    for k, (p, g) in enumerate(zip(points, analytic)):
        for idx in np.ndindex(p.shape):
            bumped = [q.copy() for q in points]
            bumped[k][idx] += eps
            plus = float(cost_fn(*bumped))
            bumped[k][idx] -= 2 * eps
            numeric = (plus - float(cost_fn(*bumped))) / (2 * eps)
            err = abs(numeric - float(g[idx]))
            if err > worst[0]:
                worst = (err, (k, idx, float(g[idx]), numeric))
    k, idx, sym, num = worst[1]
    return f"; worst element: input {k} at {idx}: symbolic {sym:.10g} vs numeric {num:.10g}"


def _shape_of(fn, points):
    from minigrad.compile import function
    from minigrad.variables import tensor

    syms = [tensor(f"x{i}", p.dtype.name, (None,) * p.ndim) for i, p in enumerate(points)]
    return np.shape(function(syms, fn(*syms), backend="numpy")(*points))
