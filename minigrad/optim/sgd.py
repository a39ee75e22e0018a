"""``SGD``: plain stochastic gradient descent (torch.optim.SGD with momentum=0)."""
from __future__ import annotations

import functools

from kernels.reference.optim import momentum_matrix
from minigrad.optim.base import Optimizer


class SGD(Optimizer):
    """``p -= lr * (g + weight_decay * p)``; a row-sparse gradient touches only its rows.

    With ``weight_decay`` an untouched row still shrinks by ``(1 - lr*wd)`` per step;
    ``sparse="exact"`` (default) applies the product of the skipped steps' factors when the
    row is next touched or flushed, ``"lazy"`` decays touched rows only.
    """

    rule = "sgd"

    def __init__(self, params, lr=1e-3, weight_decay=0.0, transforms=None, sparse="exact"):
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def catch_up_matrix(self):
        return functools.partial(_sgd_matrix)

    def needs_catch_up(self):
        return self._wd.may_be_nonzero()

    def dense_update(self, p, g, state, t_new, lr, wd):
        return p - lr * (g + wd * p), {}


def _sgd_matrix(lr, wd):
    return momentum_matrix(lr, 0.0, 0.0, False, wd)
