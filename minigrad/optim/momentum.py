"""``Momentum``: SGD with (Nesterov) momentum, torch.optim.SGD semantics."""
from __future__ import annotations

import functools

from kernels.reference.optim import momentum_matrix
from minigrad.ops import eq, where
from minigrad.optim.base import Optimizer, check_hyper


class Momentum(Optimizer):
    """torch.optim.SGD(momentum=..., dampening=..., nesterov=...).

    As in torch, the buffer is set to the gradient at step 1 (``buf = g``), then
    ``buf = momentum*buf + (1-dampening)*g``; the step is ``g + momentum*buf`` with Nesterov,
    ``buf`` without. A zero-gradient step is linear in ``(p, buf)``, so exact mode catches up
    ``k`` skipped steps with the product of their 2x2 step maps (each with its own lr and
    weight decay, from the step history's block products: docs/optimizers.md).
    """

    rule = "momentum"
    layout = ("buf",)

    def __init__(self, params, lr=1e-3, momentum=0.9, nesterov=False, dampening=0.0,
                 weight_decay=0.0, transforms=None, sparse="exact"):
        name = type(self).__name__
        momentum = check_hyper(name, "momentum", momentum, 0.0, 1.0, high_open=True)
        dampening = check_hyper(name, "dampening", dampening, 0.0, 1.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        self.momentum, self.nesterov = momentum, bool(nesterov)
        self.dampening = dampening
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def state_names(self):
        return ("buf",) if self.momentum else ()

    def kernel_hyper(self):
        return {"momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov}

    def catch_up_matrix(self):
        return functools.partial(_matrix, mu=self.momentum, damp=self.dampening,
                                 nesterov=self.nesterov)

    def needs_catch_up(self):
        return bool(self.momentum) or self._wd.may_be_nonzero()

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum,
                "nesterov": self.nesterov, "dampening": self.dampening}

    def dense_update(self, p, g, state, t_new, lr, wd):
        g = g + wd * p
        if not self.momentum:
            return p - lr * g, {}
        mu = self.momentum
        buf = where(eq(t_new, 1), g, mu * state["buf"] + (1 - self.dampening) * g)
        step = g + mu * buf if self.nesterov else buf
        return p - lr * step, {"buf": buf}


def _matrix(lr, wd, mu, damp, nesterov):
    return momentum_matrix(lr, mu, damp, nesterov, wd)
