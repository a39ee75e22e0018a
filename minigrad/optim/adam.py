"""``Adam`` and ``AdamW`` (torch.optim semantics; lazy mode = torch.optim.SparseAdam)."""
from __future__ import annotations

from minigrad.ops import cast, sqrt
from minigrad.optim.base import Optimizer


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is L2 (added to the gradient).

    Row-sparse gradients: ``sparse="lazy"`` (default, as the API says) is
    ``torch.optim.SparseAdam``: only touched rows' m, v and parameters move, with
    SparseAdam's ``step = lr*sqrt(bc2)/bc1 * m/(sqrt(v)+eps)``. ``sparse="exact"`` gives
    the parameters of dense Adam fed the densified gradient: a row touched after ``k``
    skipped steps gets ``m *= b1**k``, ``v *= b2**k`` and the drift of those steps, an exact
    sum with no closed form computed in the kernel and truncated once the remaining terms
    are provably below 1e-18 of the parameter (docs/optimizers.md).
    """

    kernel = "adam_rows"
    layout = ("exp_avg", "exp_avg_sq")
    default_sparse = "lazy"
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 transforms=None, sparse="lazy"):
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.betas, self.eps = (b1, b2), float(eps)
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def state_names(self):
        return self.layout

    def hyper(self):
        return (self.lr, *self.betas, self.eps, self.weight_decay, self.decoupled)

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}

    def dense_update(self, p, g, state, t_new):
        (b1, b2), lr, wd = self.betas, self.lr, self.weight_decay
        if self.decoupled:
            p = p * (1.0 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * state["exp_avg"] + (1 - b1) * g
        v = b2 * state["exp_avg_sq"] + (1 - b2) * (g * g)
        tf = cast(t_new, "float64")
        step_size = cast(lr / (1.0 - b1 ** tf), p.dtype)
        sqrt_bc2 = cast(sqrt(1.0 - b2 ** tf), p.dtype)
        new_p = p - step_size * (m / (sqrt(v) / sqrt_bc2 + self.eps))
        return new_p, {"exp_avg": m, "exp_avg_sq": v}


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p *= 1 - lr*wd`` before the Adam step."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 transforms=None, sparse="lazy"):
        super().__init__(params, lr, betas, eps, weight_decay, transforms, sparse)
