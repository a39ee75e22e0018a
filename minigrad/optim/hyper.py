"""Hyperparameters that the step reads at run time: ``lr`` and ``weight_decay``.

Each is a ``HyperSlot`` holding a float, a shared float scalar or a schedule. The compiled
step reads the slot through one ``StepHyper`` node (in the safe phase, so an invalid value
raises before any table is written), never a constant baked into a kernel call:
``opt.lr = x`` (or ``lr.set_value(x)`` on a shared scalar) takes effect at the next step,
for every row, without recompiling. Exact mode records each step's values in the
parameter's ``StepHistory``, so rows caught up later get each skipped step's own values.
"""
from __future__ import annotations

import math

import numpy as np

from minigrad.graph import Apply, Op
from minigrad.optim.schedules import Schedule
from minigrad.types import TensorType
from minigrad.variables import SharedVariable


class HyperSlot:
    """Where one hyperparameter of one optimizer comes from; ``at(t)`` is its value at
    step ``t``, checked (finite, >= 0) every time it is read."""

    def __init__(self, name, owner, value):
        self.name, self.owner = name, owner
        self.set(value)

    def set(self, value):
        self.source = self._checked_source(value)

    def _checked_source(self, value):
        if isinstance(value, Schedule):
            return value
        if isinstance(value, SharedVariable):
            if value.type.ndim != 0 or np.dtype(value.type.dtype).kind != "f":
                raise TypeError(f"{self.owner}: {self.name} as a shared variable must be a "
                                f"float scalar, got {value.type}")
            self._check(float(value.value), "now")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating,
                                                             np.integer)):
            if hasattr(value, "owner") or hasattr(value, "type"):
                raise TypeError(f"{self.owner}: {self.name} must be a float, a shared float "
                                f"scalar (mg.shared) or a schedule from mg.optim.schedules; "
                                f"got the symbolic {value!r}")
            raise TypeError(f"{self.owner}: {self.name} must be a float, a shared float "
                            f"scalar or a schedule, got {type(value).__name__}")
        return self._check(float(value), "given")

    def _check(self, value, when):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{self.owner}: {self.name} must be finite and >= 0, {value!r} "
                             f"{when}")
        return value

    def at(self, t):
        """The value used by step ``t`` (1-based)."""
        src = self.source
        if isinstance(src, float):
            return src
        if isinstance(src, SharedVariable):
            return self._check(float(src.value), f"at step {t} (its shared variable)")
        return self._check(float(src(t)), f"at step {t} ({src!r})")

    def may_be_nonzero(self):
        return not (isinstance(self.source, float) and self.source == 0.0)

    def value(self):
        """What the user gave: the float, the shared variable or the schedule."""
        return self.source

    def config(self):
        src = self.source
        if isinstance(src, float):
            return src
        if isinstance(src, SharedVariable):
            return {"shared": src.name, "value": float(src.value)}
        return src.config()

    def __repr__(self):
        return f"HyperSlot({self.owner}.{self.name}={self.source!r})"


class StepHyper(Op):
    """``[lr, weight_decay]`` (float64) of step ``t``, read from the optimizer's slots when
    the step runs. An ordinary node: a bad value stops the call before any write."""

    __props__ = ("slots",)

    def __init__(self, slots):
        self.slots = tuple(slots)

    def make_node(self, t):
        return Apply(self, [t], [TensorType("float64", (len(self.slots),))])

    def perform(self, node, inputs):
        t = int(inputs[0])
        return (np.array([slot.at(t) for slot in self.slots], dtype=np.float64),)
