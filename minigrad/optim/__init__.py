"""``mg.optim``: optimizers whose row-sparse updates cost O(rows touched).

See ``docs/optimizers.md`` for the update formulas, the ``sparse="exact"`` catch-up, the
``"lazy"`` mode and the learning-rate schedules (``mg.optim.schedules``).
"""
from minigrad.optim import schedules
from minigrad.optim.adagrad import Adagrad
from minigrad.optim.adam import Adam, AdamW
from minigrad.optim.adamax import Adamax
from minigrad.optim.base import Optimizer
from minigrad.optim.momentum import Momentum
from minigrad.optim.rmsprop import RMSprop
from minigrad.optim.sgd import SGD
from minigrad.optim.transforms import ClipGradNorm, GradientNoise, clip_grad_norm

__all__ = [
    "SGD", "Momentum", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "Optimizer",
    "GradientNoise", "ClipGradNorm", "clip_grad_norm", "schedules",
]
