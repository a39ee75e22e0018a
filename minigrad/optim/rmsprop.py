"""``RMSprop`` (torch.optim.RMSprop; the API's ``rho`` is torch's ``alpha``)."""
from __future__ import annotations

import functools

from kernels.reference.optim import rmsprop_matrix
from minigrad.ops import sqrt
from minigrad.optim.base import Optimizer, check_hyper


class RMSprop(Optimizer):
    """``sq = rho*sq + (1-rho)*g*g; p -= lr * g / (sqrt(sq) + eps)``, optionally centered
    (``sqrt(sq - ga*ga)`` with ``ga`` the running mean of g) and with momentum
    (``buf = momentum*buf + g/avg; p -= lr*buf``).

    Exact mode without weight decay is closed form: ``sq, ga *= rho**k`` and the momentum
    buffer's drift is linear (the product of the skipped steps' 2x2 maps, each with its
    own lr); with weight decay the skipped steps are replayed in the kernel (O(k) per row).
    """

    rule = "rmsprop"
    layout = ("square_avg", "grad_avg", "buf")

    def __init__(self, params, lr=1e-2, rho=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, transforms=None, sparse="exact"):
        name = type(self).__name__
        self.rho = check_hyper(name, "rho", rho, 0.0, 1.0, high_open=True)
        self.momentum = check_hyper(name, "momentum", momentum, 0.0, 1.0, high_open=True)
        self.eps = check_hyper(name, "eps", eps)
        self.centered = bool(centered)
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def state_names(self):
        return ("square_avg",) + ("grad_avg",) * self.centered + ("buf",) * bool(self.momentum)

    def kernel_hyper(self):
        return {"alpha": self.rho, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered}

    def catch_up_matrix(self):
        return functools.partial(_matrix, momentum=self.momentum)

    def hyperparameters(self):
        return {**super().hyperparameters(), "rho": self.rho, "eps": self.eps,
                "momentum": self.momentum, "centered": self.centered}

    def dense_update(self, p, g, state, t_new, lr, wd):
        rho = self.rho
        g = g + wd * p
        new = {"square_avg": rho * state["square_avg"] + (1 - rho) * (g * g)}
        if self.centered:
            new["grad_avg"] = rho * state["grad_avg"] + (1 - rho) * g
            avg = sqrt(new["square_avg"] - new["grad_avg"] * new["grad_avg"]) + self.eps
        else:
            avg = sqrt(new["square_avg"]) + self.eps
        if self.momentum:
            new["buf"] = self.momentum * state["buf"] + g / avg
            return p - lr * new["buf"], new
        return p - lr * (g / avg), new


def _matrix(lr, wd, momentum):
    return rmsprop_matrix(lr, momentum)
