"""``Adam`` and ``AdamW`` (torch.optim semantics; lazy mode = torch.optim.SparseAdam)."""
from __future__ import annotations

from kernels.reference.optim import adam_matrix
from kernels.rules.adam import series_blocks
from minigrad.ops import cast, maximum, sqrt
from minigrad.optim.base import Optimizer, check_hyper


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is L2 (added to the gradient);
    ``amsgrad=True`` keeps the running maximum of ``v`` (torch's AMSGrad).

    Row-sparse gradients: ``sparse="lazy"`` (default, as the API says) is
    ``torch.optim.SparseAdam``: only touched rows' m, v and parameters move, with
    SparseAdam's ``step = lr*sqrt(bc2)/bc1 * m/(sqrt(v)+eps)``. ``sparse="exact"`` gives
    the parameters of dense Adam fed the densified gradient: a row touched after ``k``
    skipped steps gets ``m *= b1**k``, ``v *= b2**k`` and the drift of those steps (each
    with its own lr), a sum truncated once the remaining terms are provably below 1e-18 of
    the parameter; the compiled kernel sums it once per row as a series in
    ``eps / sqrt(v)`` (O(1) per element), see docs/optimizers.md.
    """

    rule = "adam"
    layout = ("exp_avg", "exp_avg_sq")  # max_exp_avg_sq (amsgrad) goes by keyword
    default_sparse = "lazy"
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 transforms=None, sparse="lazy", amsgrad=False):
        name = type(self).__name__
        b1, b2 = (check_hyper(name, "betas", b, 0.0, 1.0, high_open=True) for b in betas)
        self.betas, self.eps = (b1, b2), check_hyper(name, "eps", eps)
        self.amsgrad = bool(amsgrad)
        super().__init__(params, lr, weight_decay, transforms, sparse)

    def state_names(self):
        return ("exp_avg", "exp_avg_sq") + ("max_exp_avg_sq",) * self.amsgrad

    def kernel_hyper(self):
        return {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps,
                "decoupled": self.decoupled, "amsgrad": self.amsgrad}

    def catch_up_matrix(self):
        return adam_matrix if self.decoupled else None

    def catch_up_series(self):
        return series_blocks(*self.betas, self.decoupled, self.amsgrad)

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps,
                "amsgrad": self.amsgrad}

    def dense_update(self, p, g, state, t_new, lr, wd):
        b1, b2 = self.betas
        if self.decoupled:
            p = p * (1.0 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * state["exp_avg"] + (1 - b1) * g
        v = b2 * state["exp_avg_sq"] + (1 - b2) * (g * g)
        new = {"exp_avg": m, "exp_avg_sq": v}
        if self.amsgrad:
            v = new["max_exp_avg_sq"] = maximum(state["max_exp_avg_sq"], v)
        tf = cast(t_new, "float64")
        step_size = lr / cast(1.0 - b1 ** tf, p.dtype)
        sqrt_bc2 = cast(sqrt(1.0 - b2 ** tf), p.dtype)
        new_p = p - step_size * (m / (sqrt(v) / sqrt_bc2 + self.eps))
        return new_p, new


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p *= 1 - lr*wd`` before the Adam step."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 transforms=None, sparse="lazy", amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, transforms, sparse, amsgrad)
