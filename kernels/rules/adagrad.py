"""Adagrad (``torch.optim.Adagrad``): one element, one step."""
from __future__ import annotations

import numpy as np


def update(p, acc, g, clr, eps, wd):
    """``(p, acc)`` after one step; ``clr`` is the decayed lr ``lr / (1 + (s-1) lr_decay)``."""
    g = g + wd * p
    acc = acc + g * g
    return p - clr * (g / (np.sqrt(acc) + eps)), acc


def step_lr(lr, s, lr_decay):
    """The lr of step ``s`` (scalar or array) under ``lr_decay``."""
    return lr / (1.0 + (s - 1.0) * lr_decay)
