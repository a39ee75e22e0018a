"""``SGD``: plain stochastic gradient descent (torch.optim.SGD with momentum=0)."""
from __future__ import annotations

from minigrad.optim.base import Optimizer


class SGD(Optimizer):
    """``p -= lr * (g + weight_decay * p)``; a row-sparse gradient touches only its rows.

    With ``weight_decay`` an untouched row still shrinks by ``(1 - lr*wd)`` per step;
    ``sparse="exact"`` (default) applies ``(1 - lr*wd)**k`` when the row is next touched or
    flushed, ``"lazy"`` decays touched rows only.
    """

    kernel = "sgd_rows"

    def __init__(self, params, lr=1e-3, weight_decay=0.0, transforms=None, sparse="exact"):
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def hyper(self):
        return (self.lr, self.weight_decay)

    def needs_catch_up(self):
        return self.weight_decay != 0

    def dense_update(self, p, g, state, t_new):
        if self.weight_decay:
            g = g + self.weight_decay * p
        return p - self.lr * g, {}
