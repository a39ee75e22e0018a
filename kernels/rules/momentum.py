"""SGD / momentum / Nesterov (``torch.optim.SGD`` semantics): one element, one step."""
from __future__ import annotations


def update(p, b, g, first, lr, mu, damp, nesterov, wd):
    """``(p, buffer)`` after one step with gradient ``g``; ``first``: the step that sets
    the buffer to ``g`` (torch's step 1). ``mu == 0``: plain SGD (``b`` is returned as is)."""
    g = g + wd * p
    if mu != 0.0:
        b = g if first else mu * b + (1.0 - damp) * g
        g = g + mu * b if nesterov else b
    return p - lr * g, b


def matrix(lr, mu, damp, nesterov, wd):
    """The 2x2 map of one zero-gradient step on ``(param, buffer)`` (after step 1), as
    ``(a11, a12, a21, a22)``; with ``mu = 0`` it is plain SGD's ``p *= 1 - lr*wd``."""
    c = 1.0 - damp
    if nesterov:
        return (1.0 - lr * wd - lr * mu * c * wd, -lr * mu * mu, c * wd, mu)
    if not mu:
        return (1.0 - lr * wd, 0.0, 0.0, 1.0)
    return (1.0 - lr * c * wd, -lr * mu, c * wd, mu)
