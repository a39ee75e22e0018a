"""minigrad: a Theano-style autodiff framework whose row gathers have row-sparse gradients.

Build a symbolic graph, take ``mg.grad``, compile with ``mg.function(..., updates=...)``::

    import minigrad as mg
    E = mg.shared(np.random.default_rng(0).normal(size=(10_000, 16)), name="E")
    idx = mg.lvector("idx")
    cost = (E[idx] ** 2).sum()
    g = mg.grad(cost, E)          # RowSparseType: only the rows in idx
    step = mg.function([idx], cost, updates=mg.optim.SGD([E], lr=0.1).updates(cost))

``import minigrad`` never imports torch, cupy or matplotlib.
"""
from __future__ import annotations

from minigrad import nn, ops, sparse  # noqa: F401  (namespaces: mg.nn, mg.sparse)
from minigrad.compile import Function, function
from minigrad.config import config
from minigrad.debug import debugprint, pp, to_dot, verify_grad
from minigrad.grad import DisconnectedInputError, grad
from minigrad.graph import Apply, Constant, Op, Variable, clone_replace, toposort
from minigrad.mode import Mode
from minigrad.ops import (  # noqa: F401
    abs,
    cast,
    concatenate,
    dot,
    eq,
    exp,
    ge,
    gt,
    le,
    log,
    log1p,
    log_softmax,
    logsumexp,
    lt,
    matmul,
    max,
    maximum,
    mean,
    minimum,
    neq,
    outer,
    relu,
    reshape,
    sigmoid,
    softmax,
    softplus,
    sqrt,
    square,
    stack,
    sum,
    tanh,
    transpose,
    where,
)
from minigrad.ops import pow as pow  # noqa: F401
from minigrad.types import CSRType, RowSparse, RowSparseType, TensorType
from minigrad.variables import (
    SharedVariable,
    constant,
    csr_matrix,
    imatrix,
    iscalar,
    ivector,
    lmatrix,
    lscalar,
    lvector,
    matrix,
    scalar,
    shared,
    tensor,
    tensor3,
    vector,
)

__version__ = "0.1.0"

_LAZY = {"optim", "models", "data", "parallel", "distributed"}


def __getattr__(name):
    # Subpackages with heavier imports load on first use: mg.optim, mg.models, ...
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"minigrad.{name}")
        globals()[name] = module
        return module
    if name in ("save", "load"):
        from minigrad.optim import serialization

        return getattr(serialization, name)
    raise AttributeError(f"module 'minigrad' has no attribute {name!r}")


__all__ = [
    "Apply", "CSRType", "Constant", "DisconnectedInputError", "Function", "Mode", "Op",
    "RowSparse",
    "RowSparseType", "SharedVariable", "TensorType", "Variable", "clone_replace", "config",
    "constant", "csr_matrix", "debugprint", "function", "grad", "imatrix", "iscalar",
    "ivector", "lmatrix", "lscalar", "lvector", "matrix", "ops", "pp", "scalar", "shared", "tensor",
    "tensor3", "to_dot", "toposort", "vector", "verify_grad",
]
