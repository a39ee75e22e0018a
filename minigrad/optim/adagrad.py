"""``Adagrad`` (torch.optim.Adagrad, with ``lr_decay`` and ``initial_accumulator_value``)."""
from __future__ import annotations

import numpy as np

from minigrad.ops import cast, sqrt
from minigrad.optim.base import Optimizer, check_hyper


class Adagrad(Optimizer):
    """``acc += g*g; p -= clr * g / (sqrt(acc) + eps)``, ``clr = lr / (1 + (t-1)*lr_decay)``.

    A zero gradient changes nothing, so a row-sparse gradient is exact by nature; only
    ``weight_decay`` (L2: ``g += wd*p``) makes skipped steps move a row, and exact mode
    then replays them in the kernel (each with its own lr and weight decay; O(k) per
    touched row skipped k steps: the step is not linear, so no closed form exists).
    """

    rule = "adagrad"
    layout = ("sum",)

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0.0,
                 initial_accumulator_value=0.0, transforms=None, sparse="exact", lr_decay=0.0):
        name = type(self).__name__
        self.eps = check_hyper(name, "eps", eps)
        self.lr_decay = check_hyper(name, "lr_decay", lr_decay)
        self.initial_accumulator_value = check_hyper(name, "initial_accumulator_value",
                                                     initial_accumulator_value)
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def state_names(self):
        return ("sum",)

    def initial_state(self, name, value):
        return np.full_like(value, self.initial_accumulator_value)

    def kernel_hyper(self):
        return {"eps": self.eps, "lr_decay": self.lr_decay}

    def needs_catch_up(self):
        return self._wd.may_be_nonzero()

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps, "lr_decay": self.lr_decay,
                "initial_accumulator_value": self.initial_accumulator_value}

    def dense_update(self, p, g, state, t_new, lr, wd):
        g = g + wd * p
        acc = state["sum"] + g * g
        clr = lr / (1.0 + cast(cast(t_new, "float64") - 1.0, p.dtype) * self.lr_decay)
        return p - clr * (g / (sqrt(acc) + self.eps)), {"sum": acc}
