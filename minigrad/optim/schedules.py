"""Learning-rate (and weight-decay) schedules: ``lr=mg.optim.schedules.CosineAnnealingLR(...)``.

A schedule is a pure function of the optimizer step ``t`` (1 for the first step): it holds
no position of its own, so a resumed optimizer (whose step count travels in
``state_dict``/``mg.save``) continues it exactly, and an exact-mode catch-up can ask for the
value of any skipped step. Names and formulas follow ``torch.optim.lr_scheduler``: the value
for step ``t`` is what torch's scheduler of the same name gives to the ``t``-th
``optimizer.step()`` when ``scheduler.step()`` is called after every ``optimizer.step()``,
i.e. torch's closed form at ``last_epoch = t - 1``. Every schedule takes the base value
first, and refuses invalid arguments (non-finite, negative, ...) when it is built.
"""
from __future__ import annotations

import bisect
import math

__all__ = [
    "Schedule", "Constant", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts", "PolynomialLR", "OneCycleLR", "LinearWarmup",
    "InverseSqrt", "LambdaLR", "as_schedule",
]


def _finite(name, value, low=0.0, strict=False):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < low or (strict and value == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return value


def _count(name, value, low=1):
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class Schedule:
    """Base class: ``schedule(t)`` is the value used by optimizer step ``t`` (t >= 1)."""

    def __call__(self, t):
        t = int(t)
        if t < 1:
            raise ValueError(f"{type(self).__name__}: steps count from 1, got {t}")
        value = self.value(t)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{type(self).__name__} gave {value!r} at step {t}: a learning "
                             f"rate must be finite and >= 0")
        return value

    def value(self, t):
        raise NotImplementedError

    def config(self):
        """JSON-able description (saved with the optimizer's hyperparameters)."""
        return {"schedule": type(self).__name__,
                **{k: v for k, v in vars(self).items() if not callable(v)}}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "schedule")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same value at every step."""

    def __init__(self, lr):
        self.lr = _finite("lr", lr)

    def value(self, t):
        return self.lr


class StepLR(Schedule):
    """``lr * gamma ** ((t - 1) // step_size)``."""

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr, self.step_size = _finite("lr", lr), _count("step_size", step_size)
        self.gamma = _finite("gamma", gamma)

    def value(self, t):
        return self.lr * self.gamma ** ((t - 1) // self.step_size)


class MultiStepLR(Schedule):
    """``lr * gamma ** (number of milestones <= t - 1)``."""

    def __init__(self, lr, milestones, gamma=0.1):
        self.lr, self.gamma = _finite("lr", lr), _finite("gamma", gamma)
        self.milestones = sorted(_count("milestone", m, 0) for m in milestones)

    def value(self, t):
        return self.lr * self.gamma ** bisect.bisect_right(self.milestones, t - 1)


class ExponentialLR(Schedule):
    """``lr * gamma ** (t - 1)``."""

    def __init__(self, lr, gamma):
        self.lr, self.gamma = _finite("lr", lr), _finite("gamma", gamma)

    def value(self, t):
        return self.lr * self.gamma ** (t - 1)


class CosineAnnealingLR(Schedule):
    """``eta_min + (lr - eta_min) * (1 + cos(pi * (t - 1) / T_max)) / 2`` (torch's closed
    form; past ``T_max`` it rises again, as torch's does)."""

    def __init__(self, lr, T_max, eta_min=0.0):
        self.lr, self.T_max = _finite("lr", lr), _count("T_max", T_max)
        self.eta_min = _finite("eta_min", eta_min)

    def value(self, t):
        cos = math.cos(math.pi * (t - 1) / self.T_max)
        return self.eta_min + (self.lr - self.eta_min) * (1 + cos) / 2


class CosineAnnealingWarmRestarts(Schedule):
    """Cosine annealing restarted after ``T_0``, then ``T_0 * T_mult``, ... steps (SGDR)."""

    def __init__(self, lr, T_0, T_mult=1, eta_min=0.0):
        self.lr, self.T_0 = _finite("lr", lr), _count("T_0", T_0)
        self.T_mult, self.eta_min = _count("T_mult", T_mult), _finite("eta_min", eta_min)

    def value(self, t):
        cur, period = t - 1, self.T_0
        if self.T_mult == 1:
            cur %= period
        else:
            while cur >= period:  # O(log t): periods grow geometrically
                cur -= period
                period *= self.T_mult
        return self.eta_min + (self.lr - self.eta_min) * (1 + math.cos(math.pi * cur / period)) / 2


class PolynomialLR(Schedule):
    """``lr * (1 - min(t - 1, total_iters) / total_iters) ** power``."""

    def __init__(self, lr, total_iters, power=1.0):
        self.lr, self.total_iters = _finite("lr", lr), _count("total_iters", total_iters)
        self.power = _finite("power", power)

    def value(self, t):
        return self.lr * (1.0 - min(t - 1, self.total_iters) / self.total_iters) ** self.power


class OneCycleLR(Schedule):
    """torch's one-cycle policy (two phases; the lr only: torch's default also cycles
    momentum, which this does not). Stepping past ``total_steps + 1`` raises, as torch."""

    def __init__(self, max_lr, total_steps, pct_start=0.3, anneal_strategy="cos",
                 div_factor=25.0, final_div_factor=1e4):
        self.max_lr, self.total_steps = _finite("max_lr", max_lr), _count("total_steps",
                                                                          total_steps)
        self.pct_start = _finite("pct_start", pct_start)
        if not 0 <= self.pct_start <= 1:
            raise ValueError(f"pct_start must be in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _finite("div_factor", div_factor, strict=True)
        self.final_div_factor = _finite("final_div_factor", final_div_factor, strict=True)

    def value(self, t):
        step = t - 1
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: step {t} is past total_steps={self.total_steps} "
                             f"(+1, as torch allows)")
        initial = self.max_lr / self.div_factor
        minimum = initial / self.final_div_factor
        phases = [(float(self.pct_start * self.total_steps) - 1, initial, self.max_lr),
                  (self.total_steps - 1, self.max_lr, minimum)]
        start = 0.0
        for i, (end, lo, hi) in enumerate(phases):
            if step <= end or i == len(phases) - 1:
                pct = (step - start) / (end - start) if end != start else 0.0
                if self.anneal_strategy == "cos":
                    return hi + (lo - hi) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (hi - lo) * pct + lo
            start = end
        raise AssertionError("unreachable")


class LinearWarmup(Schedule):
    """Linear warm-up, then another schedule (or a constant) from its own step 1.

    Steps ``1..warmup_steps`` use ``base * (start_factor + (1 - start_factor) * (t - 1) /
    warmup_steps)`` with ``base`` the inner schedule's first value; step ``t`` after that
    uses ``inner(t - warmup_steps)``: torch's ``SequentialLR([LinearLR(start_factor,
    total_iters=warmup_steps), inner], milestones=[warmup_steps])``.
    """

    def __init__(self, schedule_or_lr, warmup_steps, start_factor=0.0):
        self.inner = as_schedule(schedule_or_lr, "schedule_or_lr")
        self.warmup_steps = _count("warmup_steps", warmup_steps, 0)
        self.start_factor = _finite("start_factor", start_factor)
        if self.start_factor > 1:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor!r}")

    def value(self, t):
        if t <= self.warmup_steps:
            f = self.start_factor + (1 - self.start_factor) * (t - 1) / self.warmup_steps
            return self.inner(1) * f
        return self.inner(t - self.warmup_steps)

    def config(self):
        return {"schedule": "LinearWarmup", "inner": self.inner.config(),
                "warmup_steps": self.warmup_steps, "start_factor": self.start_factor}


class InverseSqrt(Schedule):
    """``lr * t / warmup_steps`` while warming up, then ``lr * sqrt(warmup_steps / t)``
    (the Transformer / fairseq schedule); ``warmup_steps=0``: ``lr / sqrt(t)``."""

    def __init__(self, lr, warmup_steps):
        self.lr, self.warmup_steps = _finite("lr", lr), _count("warmup_steps", warmup_steps, 0)

    def value(self, t):
        w = self.warmup_steps
        if w == 0:
            return self.lr / math.sqrt(t)
        return self.lr * min(t / w, math.sqrt(w / t))


class LambdaLR(Schedule):
    """``lr * fn(t - 1)``: torch's ``LambdaLR`` (``fn`` gets the number of steps already
    taken, 0 for the first). ``fn`` must be pure: the catch-up may ask for any step."""

    def __init__(self, lr, fn):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self.lr, self.fn = _finite("lr", lr), fn

    def value(self, t):
        return self.lr * float(self.fn(t - 1))

    def config(self):
        return {"schedule": "LambdaLR", "lr": self.lr,
                "fn": getattr(self.fn, "__qualname__", repr(self.fn))}


def as_schedule(value, name="lr"):
    """A schedule from a schedule or a number (``Constant``)."""
    if isinstance(value, Schedule):
        return value
    return Constant(_finite(name, value))
