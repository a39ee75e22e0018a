"""``RMSprop`` (torch.optim.RMSprop; the API's ``rho`` is torch's ``alpha``)."""
from __future__ import annotations

from minigrad.ops import sqrt
from minigrad.optim.base import Optimizer


class RMSprop(Optimizer):
    """``sq = rho*sq + (1-rho)*g*g; p -= lr * g / (sqrt(sq) + eps)``, optionally centered
    (``sqrt(sq - ga*ga)`` with ``ga`` the running mean of g) and with momentum
    (``buf = momentum*buf + g/avg; p -= lr*buf``).

    Exact mode without weight decay is closed form: ``sq, ga *= rho**k``,
    ``p -= lr*buf*momentum*(1-momentum**k)/(1-momentum)``, ``buf *= momentum**k``;
    with weight decay the skipped steps are replayed in the kernel (O(k) per row).
    """

    kernel = "rmsprop_rows"
    layout = ("square_avg", "grad_avg", "buf")

    def __init__(self, params, lr=1e-2, rho=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, transforms=None, sparse="exact"):
        if not 0 <= rho < 1:
            raise ValueError(f"rho must be in [0, 1), got {rho}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.rho, self.eps = float(rho), float(eps)
        self.momentum, self.centered = float(momentum), bool(centered)
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def state_names(self):
        return ("square_avg",) + ("grad_avg",) * self.centered + ("buf",) * bool(self.momentum)

    def hyper(self):
        return (self.lr, self.rho, self.eps, self.momentum, self.centered, self.weight_decay)

    def hyperparameters(self):
        return {**super().hyperparameters(), "rho": self.rho, "eps": self.eps,
                "momentum": self.momentum, "centered": self.centered}

    def dense_update(self, p, g, state, t_new):
        rho = self.rho
        if self.weight_decay:
            g = g + self.weight_decay * p
        new = {"square_avg": rho * state["square_avg"] + (1 - rho) * (g * g)}
        if self.centered:
            new["grad_avg"] = rho * state["grad_avg"] + (1 - rho) * g
            avg = sqrt(new["square_avg"] - new["grad_avg"] * new["grad_avg"]) + self.eps
        else:
            avg = sqrt(new["square_avg"]) + self.eps
        if self.momentum:
            new["buf"] = self.momentum * state["buf"] + g / avg
            return p - self.lr * new["buf"], new
        return p - self.lr * (g / avg), new
