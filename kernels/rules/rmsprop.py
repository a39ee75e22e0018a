"""RMSprop (``torch.optim.RMSprop``; ``alpha`` is the API's ``rho``): one element, one step."""
from __future__ import annotations

import numpy as np


def update(p, sq, ga, b, g, lr, alpha, eps, mom, centered, wd):
    """``(p, square_avg, grad_avg, buffer)`` after one step; ``ga`` is only read when
    ``centered``, ``b`` only when ``mom != 0`` (either may be a placeholder otherwise)."""
    g = g + wd * p
    sq = alpha * sq + (1.0 - alpha) * (g * g)
    if centered:
        ga = alpha * ga + (1.0 - alpha) * g
        avg = np.sqrt(sq - ga * ga) + eps
    else:
        avg = np.sqrt(sq) + eps
    if mom != 0.0:
        b = mom * b + g / avg
        p = p - lr * b
    else:
        p = p - lr * (g / avg)
    return p, sq, ga, b


def matrix(lr, momentum):
    """One zero-gradient step on ``(param, buffer)`` without weight decay."""
    return (1.0, -lr * momentum, 0.0, momentum)
