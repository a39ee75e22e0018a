"""Adam / AdamW (``torch.optim.Adam``/``AdamW``; lazy: ``torch.optim.SparseAdam``): one
element, one step."""
from __future__ import annotations

import numpy as np


def update(p, m, v, vmax, g, b1, b2, eps, l2, q, step_size, sqrt_bc2, lazy, amsgrad):
    """``(p, m, v, vmax)`` after one step.

    ``q = 1 - lr*wd`` (AdamW's decoupled decay, else 1) and ``l2 = wd`` (Adam's L2 term,
    else 0); ``step_size``/``sqrt_bc2`` are the step's bias-correction scalars from
    ``scalars`` (scalars or per-row columns). ``vmax`` is only read with ``amsgrad``.
    """
    p = p * q
    g = g + l2 * p
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * (g * g)
    if amsgrad:
        vmax = np.maximum(vmax, v)
        denom = vmax
    else:
        denom = v
    if lazy:
        p = p - step_size * (m / (np.sqrt(denom) + eps))
    else:
        # dense Adam's ``step_size * m / (sqrt(v) / sqrt_bc2 + eps)``, multiplied through by
        # ``sqrt_bc2``: one division per element instead of two (the per-step products are
        # hoisted out of a row loop), ~1.4x cheaper, the same value to a few ulp
        p = p - (step_size * sqrt_bc2) * (m / (np.sqrt(denom) + eps * sqrt_bc2))
    return p, m, v, vmax


def scalars(lr, b1, b2, s, lazy):
    """``(step_size, sqrt(1 - b2**s))`` of step ``s``: dense Adam's ``lr / bc1``, or
    SparseAdam's ``lr * sqrt(bc2) / bc1`` (lazy, with ``sqrt(v) + eps`` undivided)."""
    bc1, bc2 = 1.0 - b1 ** s, 1.0 - b2 ** s
    if lazy:
        return lr * np.sqrt(bc2) / bc1, np.sqrt(bc2)
    return lr / bc1, np.sqrt(bc2)


def matrix(lr, wd):
    """AdamW's decoupled decay of one skipped step (``p *= 1 - lr*wd``) as a 2x2 map."""
    return (1.0 - lr * wd, 0.0, 0.0, 1.0)


class SeriesBlocks:
    """What ``StepHistory`` keeps for the exact Adam catch-up in O(log gap) per row.

    The closed-form catch-up (``kernels.cpu.optim._adam_series``) of a row last updated at
    step ``L`` needs, over its skipped steps ``s = L + j``, ``j = 1..J``, the sums
    ``S_n = sum_j Q_(j+1..J) w_n(s) rho_n**j`` (``n = 0..5``), with ``w_n(s) = lr_s / (1 -
    b1**s) * sqrt(1 - b2**s)**(n + 1)``, ``rho_n = b1 / b2**((n + 1) / 2)`` (AMSGrad:
    ``b1``) and ``Q`` the product of AdamW's ``q_s = 1 - lr_s wd_s`` (else 1). A block of
    steps ``[a, e]`` stores ``(Q, B_0..B_5)``, ``B_n = sum_s Q_(s+1..e) w_n(s) rho_n**(s-a+1)``;
    two neighbours combine as ``Q = Q_lo Q_hi``, ``B_n = Q_hi B_lo + rho_n**len_lo B_hi``,
    so ``S_n`` comes out of at most ``2 log2(J)`` aligned blocks, each factor at most 1
    (``rho_n < 1``, ``q <= 1``; ``usable`` is False otherwise): no power of ``rho_n**-1``,
    nothing that overflows or underflows to a wrong sum.
    """

    width = 7

    def __init__(self, b1, b2, decoupled, amsgrad):
        self.key = (float(b1), float(b2), bool(decoupled), bool(amsgrad))
        self.b1, self.b2 = float(b1), float(b2)
        self.decoupled, self.amsgrad = bool(decoupled), bool(amsgrad)
        n = np.arange(6, dtype=np.float64)
        self.rho = np.full(6, self.b1) if self.amsgrad else self.b1 / self.b2 ** ((n + 1) / 2)
        self.usable = bool((self.rho < 1.0).all()) and self.b1 > 0.0
        self.rho_pow = np.ones((1, 6))

    def levels(self, n_levels):
        """``rho_pow[l, n] = rho_n ** (2**l)`` for ``l < n_levels`` (underflow to 0 is the
        right limit)."""
        with np.errstate(under="ignore"):
            self.rho_pow = self.rho[None, :] ** (2.0 ** np.arange(n_levels))[:, None]

    def leaf(self, s, lr, wd):
        """The block of step ``s`` alone."""
        q = 1.0 - lr * wd if self.decoupled else 1.0
        with np.errstate(under="ignore"):
            c = lr / (1.0 - self.b1 ** s)
            sb2 = np.sqrt(1.0 - self.b2 ** s)
        out = np.empty(7)
        out[0] = q
        out[1:] = c * sb2 ** np.arange(1.0, 7.0) * self.rho
        return out

    def combine(self, lo, hi, level):
        """The block of two neighbours of ``2**(level - 1)`` steps each (``lo`` first)."""
        out = np.empty(7)
        out[0] = lo[0] * hi[0]
        out[1:] = hi[0] * lo[1:] + self.rho_pow[level - 1] * hi[1:]
        return out


def series_blocks(b1, b2, decoupled, amsgrad):
    """The ``SeriesBlocks`` of these hyperparameters, or None where it cannot be used."""
    sb = SeriesBlocks(b1, b2, decoupled, amsgrad)
    return sb if sb.usable else None
