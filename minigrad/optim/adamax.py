"""``Adamax`` (``torch.optim.Adamax``): the whole optimizer in one file.

The rule's one step is written once (``update``); ``kernels.rule_drivers.register_rule``
builds its row kernel for every backend from it (the exact catch-up replays the skipped
zero-gradient steps, each with its own lr and weight decay), and the class below only
names the rule, its states and its hyperparameters. Adding an optimizer this way touches
this file, one import line in ``minigrad/optim/__init__.py``, and its tests
(tests/test_optim_adamax.py).
"""
from __future__ import annotations

import numpy as np

from kernels.rule_drivers import register_rule
from minigrad.optim.base import Optimizer, check_hyper


def update(p, m, u, g, s, lr, wd, beta1, beta2, eps):
    """``(p, exp_avg, exp_inf)`` after step ``s`` with gradient ``g`` (torch's formula:
    ``u = max(b2 u, |g| + eps)``, ``p -= lr / (1 - b1**s) * m / u``)."""
    g = g + wd * p
    m = beta1 * m + (1.0 - beta1) * g
    u = np.maximum(beta2 * u, np.abs(g) + eps)
    return p - (lr / (1.0 - beta1 ** s)) * (m / u), m, u


adamax_rows = register_rule("adamax", update, ("exp_avg", "exp_inf"),
                            ("beta1", "beta2", "eps"))


class Adamax(Optimizer):
    """Adamax (Adam with the infinity norm), torch semantics. A zero gradient still moves
    a row (``m`` decays, ``u`` too, and the step uses both), so ``sparse="exact"`` (the
    default) replays a returning row's skipped steps; ``"lazy"`` steps touched rows only."""

    rule = "adamax"
    layout = ("exp_avg", "exp_inf")

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 transforms=None, sparse="exact"):
        name = type(self).__name__
        b1, b2 = (check_hyper(name, "betas", b, 0.0, 1.0, high_open=True) for b in betas)
        self.betas, self.eps = (b1, b2), check_hyper(name, "eps", eps)
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def state_names(self):
        return self.layout

    def kernel_hyper(self):
        return {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps}

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}
