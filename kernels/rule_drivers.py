"""Row kernels built from one rule definition (issue 13 item 3): a new optimizer is one file.

The five built-in rules (SGD, momentum, Adagrad, RMSprop, Adam) have hand-fused kernels per
backend, because each has a closed-form catch-up or a compiled loop worth its code. A new
rule does not need any of that to be correct. It declares, in its own file:

* ``update(p, *states, g, s, lr, wd, **hyper) -> (p, *states)``: one step at step ``s`` with
  gradient ``g``, written as plain arithmetic valid on NumPy and CuPy arrays (``s``, ``lr``
  and ``wd`` may be per-row columns: the catch-up replays many rows' different steps at once);
* its state names (the optimizer's ``layout``, in order) and hyperparameter names;

and calls ``register_rule``, which builds the row kernel from the generic driver of
``kernels.reference.optim`` (gather the rows, catch the lagging ones up by replaying their
zero-gradient steps, each with its own lr and weight decay from the step history, apply the
step, check with the guard, scatter) and registers it in ``kernels.row_kernels`` for every
backend: ``numpy``, ``numba`` (the same NumPy kernel on host arrays: correct, not fused) and
``cupy`` (the driver is written against the array namespace of the tables). Hyperparameters
are passed by name: an unknown or missing one is refused with its name.

The exact catch-up by replay is O(k) per row for a row that skipped ``k`` steps (vectorised
over the lagging rows, step-major); a rule with a closed form gets a hand-written kernel
like the built-in ones when it is worth it. ``minigrad/optim/adamax.py`` is the example.
"""
from __future__ import annotations

from kernels.reference.optim import _drive, _Hyper, _replay
from kernels.row_kernels import BACKENDS, register_row_kernels

__all__ = ["register_rule"]


def register_rule(name, update, states, hyper_names, required=None):
    """Build the row kernel of rule ``name`` from ``update`` and register it on every
    backend; returns it. ``states``: the state tables' names in the kernel's argument
    order; ``required[i]``: whether state ``i`` must be given (default: all)."""
    states = tuple(states)
    hyper_names = frozenset(hyper_names)
    required = [True] * len(states) if required is None else [bool(r) for r in required]
    n = len(states)

    def rows_kernel(param, *args, lr, weight_decay, history=None, guard=None, trusted=False,
                    **hyper):
        if len(args) != n + 4:
            raise TypeError(f"{name}_rows takes param, {', '.join(states)}, idx, grad, t, "
                            f"last; got {len(args) + 1} positional arguments")
        unknown, missing = set(hyper) - hyper_names, hyper_names - set(hyper)
        if unknown or missing:
            raise TypeError(f"{name}_rows: unknown hyperparameters {sorted(unknown)}, "
                            f"missing {sorted(missing)} (it takes {sorted(hyper_names)})")
        tables, (idx, grad, t, last) = list(args[:n]), args[n:]
        h = _Hyper(lr, weight_decay, history)

        def step(rows, g, s, lr=h.lr, wd=h.wd):
            rows[:] = update(*rows, g, s, lr, wd, **hyper)

        def catch_up(rows, lag_from, k):
            _replay(step, rows, lag_from, k, h)

        return _drive(param, tables, idx, grad, t, last, step, catch_up, required,
                      list(states), history, guard, trusted)

    rows_kernel.__name__ = rows_kernel.__qualname__ = f"{name}_rows"
    rows_kernel.__doc__ = (f"The {name!r} rule on rows ``idx`` (built by "
                           f"``kernels.rule_drivers.register_rule`` from {update.__module__}).")
    for backend in BACKENDS:
        register_row_kernels(backend, {name: rows_kernel})
    return rows_kernel
