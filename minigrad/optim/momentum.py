"""``Momentum``: SGD with (Nesterov) momentum, torch.optim.SGD semantics."""
from __future__ import annotations

from minigrad.ops import eq, where
from minigrad.optim.base import Optimizer


class Momentum(Optimizer):
    """torch.optim.SGD(momentum=..., dampening=..., nesterov=...).

    As in torch, the buffer is set to the gradient at step 1 (``buf = g``), then
    ``buf = momentum*buf + (1-dampening)*g``; the step is ``g + momentum*buf`` with Nesterov,
    ``buf`` without. A zero-gradient step is linear in ``(p, buf)``, so exact mode catches up
    ``k`` skipped steps with the 2x2 matrix power ``A**k`` (docs/optimizers.md).
    """

    kernel = "momentum_rows"
    layout = ("buf",)

    def __init__(self, params, lr=1e-3, momentum=0.9, nesterov=False, dampening=0.0,
                 weight_decay=0.0, transforms=None, sparse="exact"):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        if not 0 <= dampening <= 1:
            raise ValueError(f"dampening must be in [0, 1], got {dampening}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.dampening = float(dampening)
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def state_names(self):
        return ("buf",) if self.momentum else ()

    def hyper(self):
        return (self.lr, self.momentum, self.dampening, self.nesterov, self.weight_decay)

    def needs_catch_up(self):
        return bool(self.momentum or self.weight_decay)

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum,
                "nesterov": self.nesterov, "dampening": self.dampening}

    def dense_update(self, p, g, state, t_new):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if not self.momentum:
            return p - self.lr * g, {}
        mu = self.momentum
        buf = where(eq(t_new, 1), g, mu * state["buf"] + (1 - self.dampening) * g)
        step = g + mu * buf if self.nesterov else buf
        return p - self.lr * step, {"buf": buf}
