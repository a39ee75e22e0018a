"""Checking gradients: ``verify_grad``; and the graph viewers, re-exported.

``verify_grad`` compares a symbolic gradient with central finite differences along
random directions. The viewers live one per file: ``debugprint`` in
:mod:`minigrad.printing`, ``pp`` in :mod:`minigrad.formula`, ``to_dot`` in
:mod:`minigrad.dot`.
"""
from __future__ import annotations

import numpy as np

from minigrad.dot import to_dot  # noqa: F401  (re-exported)
from minigrad.formula import pp  # noqa: F401
from minigrad.printing import debugprint  # noqa: F401


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
