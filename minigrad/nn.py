"""``mg.nn``: losses built from the softmax family."""
from minigrad.ops.nn import cross_entropy, log_softmax, logsumexp, softmax

__all__ = ["cross_entropy", "log_softmax", "logsumexp", "softmax"]
