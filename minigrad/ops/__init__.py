"""The functions users call (``mg.exp``, ``mg.sum``...), each building one or a few nodes.

Binary arithmetic dispatches on the operands' types: row-sparse values get the
row-sparse implementations of ``ops/rowsparse.py``; everything else is element-wise.
"""
from __future__ import annotations

from minigrad.ops import nn, sparse  # noqa: F401
from minigrad.ops.elemwise import Binary, Unary, cast, where  # noqa: F401
from minigrad.ops.indexing import getitem, take  # noqa: F401
from minigrad.ops.linalg import dot, matmul, outer  # noqa: F401
from minigrad.ops.nn import log_softmax, logsumexp, softmax  # noqa: F401
from minigrad.ops.reduce import max, mean, sum  # noqa: F401,A004
from minigrad.ops.rowsparse import (  # noqa: F401
    is_row_sparse,
    rowsparse_add,
    rowsparse_mul,
    rowsparse_reduce_like,
    rowsparse_to_dense,
)
from minigrad.ops.shape import (  # noqa: F401
    broadcast_like,
    concatenate,
    expand_dims,
    prod_shape,
    reshape,
    shape_of,
    stack,
    subtensor,
    transpose,
)


def _unary(name):
    op = Unary(name)

    def fn(x):
        return op(x)

    fn.__name__ = name
    fn.__doc__ = f"Element-wise ``{name}``."
    return fn


exp = _unary("exp")
log = _unary("log")
log1p = _unary("log1p")
sqrt = _unary("sqrt")
square = _unary("square")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
relu = _unary("relu")
softplus = _unary("softplus")
sign = _unary("sign")
abs = _unary("abs")  # noqa: A001


def neg(x):
    if is_row_sparse(x):
        return rowsparse_mul(x, -1.0)
    return Unary("neg")(x)


def add(a, b):
    if is_row_sparse(a) or is_row_sparse(b):
        return rowsparse_add(a, b)
    return Binary("add")(a, b)


def sub(a, b):
    if is_row_sparse(a) or is_row_sparse(b):
        return rowsparse_add(a, neg(b))
    return Binary("sub")(a, b)


def mul(a, b):
    if is_row_sparse(a):
        return rowsparse_mul(a, b)
    if is_row_sparse(b):
        return rowsparse_mul(b, a)
    return Binary("mul")(a, b)


def true_div(a, b):
    if is_row_sparse(a):
        return rowsparse_mul(a, Binary("true_div")(1.0, b))
    return Binary("true_div")(a, b)


def _binary(name):
    op = Binary(name)

    def fn(a, b):
        return op(a, b)

    fn.__name__ = name
    fn.__doc__ = f"Element-wise ``{name}`` with NumPy broadcasting."
    return fn


pow = _binary("pow")  # noqa: A001
maximum = _binary("maximum")
minimum = _binary("minimum")
lt = _binary("lt")
le = _binary("le")
gt = _binary("gt")
ge = _binary("ge")
eq = _binary("eq")
neq = _binary("neq")
