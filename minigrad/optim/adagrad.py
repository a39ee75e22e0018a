"""``Adagrad`` (torch.optim.Adagrad with lr_decay=0)."""
from __future__ import annotations

import numpy as np

from minigrad.ops import sqrt
from minigrad.optim.base import Optimizer


class Adagrad(Optimizer):
    """``acc += g*g; p -= lr * g / (sqrt(acc) + eps)``.

    A zero gradient changes nothing, so a row-sparse gradient is exact by nature; only
    ``weight_decay`` (L2: ``g += wd*p``) makes skipped steps move a row, and exact mode
    then replays them in the kernel (cost O(k) per touched row skipped k steps).
    """

    kernel = "adagrad_rows"
    layout = ("sum",)

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0.0,
                 initial_accumulator_value=0.0, transforms=None, sparse="exact"):
        if not eps >= 0 or not initial_accumulator_value >= 0:
            raise ValueError("eps and initial_accumulator_value must be >= 0")
        self.eps, self.initial_accumulator_value = float(eps), float(initial_accumulator_value)
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def state_names(self):
        return ("sum",)

    def initial_state(self, name, value):
        return np.full_like(value, self.initial_accumulator_value)

    def hyper(self):
        return (self.lr, self.eps, self.weight_decay)

    def needs_catch_up(self):
        return self.weight_decay != 0

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps,
                "initial_accumulator_value": self.initial_accumulator_value}

    def dense_update(self, p, g, state, t_new):
        if self.weight_decay:
            g = g + self.weight_decay * p
        acc = state["sum"] + g * g
        return p - self.lr * (g / (sqrt(acc) + self.eps)), {"sum": acc}
