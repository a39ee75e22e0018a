"""``Optimizer``: the part every rule shares.

An optimizer owns, per parameter, its state tables as ``mg.shared`` variables (so
``mg.save``, ``state_dict`` and hogwild can find them) and one shared int64 step counter
``t``. ``updates()`` returns ``(shared, new_value)`` pairs for ``mg.function``; which pairs
depends on the *type* of each gradient (a dict from type class to rule, no isinstance
ladder):

* ``TensorType`` -> the subclass's ``dense_update``: symbolic expressions, so every backend
  runs them and ``nan_guard`` checks them like any update;
* ``RowSparseType`` -> one ``PrepareRows`` node (coalesce + checks) and one destructive
  ``RowUpdate`` node calling the fused kernel ``kernels.*.<rule>_rows``.

In ``sparse="exact"`` mode a rule whose zero-gradient step is not a no-op also keeps a
per-row ``last`` step array; rows are caught up when touched, and all of them by
``flush()``, which runs before anyone reads a parameter or a state table (flush hooks).
"""
from __future__ import annotations

import functools

import numpy as np

from minigrad.ops import cast
from minigrad.optim.ops import AllRows, PrepareRows, RowUpdate, kernel_module
from minigrad.types import RowSparseType, TensorType
from minigrad.variables import SharedVariable, as_variable, shared

STATE_FORMAT_VERSION = 1


def _as_dtype(x, dtype):
    return x if x.dtype == dtype else cast(x, dtype)


def _module_for(array):
    if type(array).__module__.split(".")[0] == "cupy":
        import kernels.gpu as gpu

        return gpu
    return kernel_module()


class Optimizer:
    """Base class. Subclasses set ``kernel``, ``layout`` and implement the rule methods."""

    kernel = ""  # name of the fused row kernel in kernels.{reference,cpu,gpu}
    layout = ()  # the kernel's state arguments, in order (absent ones are passed as None)
    default_sparse = "exact"

    def __init__(self, params, lr, weight_decay=0.0, transforms=None, sparse=None):
        params = list(params) if isinstance(params, (list, tuple)) else [params]
        if not params:
            raise ValueError(f"{type(self).__name__} needs at least one parameter")
        for p in params:
            if not isinstance(p, SharedVariable) or p.type.dtype not in ("float32", "float64"):
                raise TypeError(f"parameters must be float shared variables, got {p!r}")
        if len(set(params)) != len(params):
            raise ValueError("the same parameter is listed twice")
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        sparse = self.default_sparse if sparse is None else sparse
        if sparse not in ("exact", "lazy"):
            raise ValueError(f"sparse must be 'exact' or 'lazy', got {sparse!r}")
        self.params, self.lr, self.weight_decay = params, float(lr), float(weight_decay)
        self.sparse = sparse
        self.transforms = list(transforms or [])
        self.t = shared(np.int64(0), name=f"{type(self).__name__}.t")
        self.state = []
        for i, p in enumerate(params):
            label = p.name or f"param{i}"
            self.state.append({
                name: shared(self.initial_state(name, p.value), name=f"{label}.{name}")
                for name in self.state_names()
            })
        self.last = [None] * len(params)  # per-row last step, created for exact sparse rules
        self._kinds = [None] * len(params)
        for i, (p, states) in enumerate(zip(params, self.state)):
            for var in [p, *states.values()]:
                var.add_flush_hook(functools.partial(self.flush_param, i))

    # --- to override --------------------------------------------------------------------
    def state_names(self):
        """Names of the per-parameter state tables (in ``layout`` order)."""
        return ()

    def initial_state(self, name, value):
        return np.zeros_like(value)

    def hyper(self):
        """The rule's kernel arguments after ``last``, in the kernel's order."""
        raise NotImplementedError

    def needs_catch_up(self):
        """Whether a zero-gradient step changes anything (then exact mode keeps ``last``)."""
        return True

    def dense_update(self, p, g, state, t_new):
        """Symbolic ``(new_param, {state name: new value})`` for a dense gradient ``g``."""
        raise NotImplementedError

    def hyperparameters(self):
        return {"lr": self.lr, "weight_decay": self.weight_decay, "sparse": self.sparse}

    # --- graph building ----------------------------------------------------------------
    def updates(self, cost=None, grads=None):
        """Update pairs for ``mg.function(updates=...)``; give ``cost`` or ``grads``."""
        if (cost is None) == (grads is None):
            raise TypeError("updates() needs exactly one of cost= or grads=")
        if grads is None:
            from minigrad.grad import grad

            grads = grad(cost, self.params)
        grads = [as_variable(g) for g in grads]
        if len(grads) != len(self.params):
            raise ValueError(f"{len(grads)} gradients for {len(self.params)} parameters")
        for transform in self.transforms:
            grads = list(transform(grads, step=self.t))
            if len(grads) != len(self.params):
                raise ValueError(f"transform {transform!r} returned {len(grads)} gradients")
        t_new = self.t + 1
        pairs = []
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g.ndim != p.ndim:
                raise ValueError(f"gradient of rank {g.ndim} for {p} of rank {p.ndim}")
            rule = self._RULES.get(type(g.type))
            if rule is None:
                raise TypeError(f"no update rule for a gradient of type {g.type}")
            pairs.extend(rule(self, i, p, g, t_new))
        pairs.append((self.t, t_new))
        return pairs

    def _claim(self, i, kind):
        """Record how parameter ``i`` is updated: ``(gradient kind, exact rule?)``.

        Dense and row-sparse gradients may share a parameter only when both use the exact
        (dense-equivalent) row rule; any other mix would apply two different update rules
        to the same state.
        """
        prev = self._kinds[i]
        if prev is not None and prev != kind and not (prev[1] and kind[1]):
            raise ValueError(
                f"{self.params[i]} already gets a {prev[0]} gradient from this optimizer; a "
                f"{kind[0]} one would mix two update rules (use sparse='exact' to mix them)"
            )
        self._kinds[i] = kind

    def _dense_rule(self, i, p, g, t_new):
        if p.ndim >= 2 and self.kernel:
            # a table's dense gradient is a row-sparse one touching every row: the fused
            # kernel updates it in place in one pass (dense semantics: exact mode), where
            # the symbolic rule would allocate a V x D temporary per arithmetic step
            return self._sparse_rule(i, p, AllRows()(_as_dtype(g, p.dtype)), t_new,
                                     dense_semantics=True)
        self._claim(i, ("dense", False))
        new_p, new_state = self.dense_update(p, _as_dtype(g, p.dtype), self.state[i], t_new)
        pairs = [(p, _as_dtype(new_p, p.dtype))]
        pairs += [(self.state[i][k], _as_dtype(v, p.dtype)) for k, v in new_state.items()]
        return pairs

    def _sparse_rule(self, i, p, g, t_new, dense_semantics=False):
        exact = (dense_semantics or self.sparse == "exact") and self.needs_catch_up()
        self._claim(i, ("dense" if dense_semantics else "row-sparse",
                        exact or not self.needs_catch_up()))
        tables = [p, *self.state[i].values()]
        if exact:
            if self.last[i] is None:
                start = np.full(p.value.shape[0], int(self.t.value), dtype=np.int64)
                self.last[i] = shared(start, name=f"{p.name or f'param{i}'}.last_step")
                self.last[i].add_flush_hook(functools.partial(self.flush_param, i))
            tables.append(self.last[i])
        g = PrepareRows()(g, *tables)
        op = RowUpdate(self.kernel, self.layout, tuple(self.state[i]), exact, self.hyper())
        outs = op(*tables, g, t_new)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return list(zip(tables, outs))

    _RULES = {TensorType: _dense_rule, RowSparseType: _sparse_rule}

    # --- state -------------------------------------------------------------------------
    def flush(self):
        """Bring every row with pending skipped steps up to date (exact mode)."""
        for i in range(len(self.params)):
            self.flush_param(i)

    def flush_param(self, i):
        """``flush`` for parameter ``i`` alone (the flush hook of it and of its state)."""
        last = self.last[i]
        if last is None:
            return
        t = int(self.t.value)
        lag = last.value
        idx = (lag < t).nonzero()[0]
        if idx.shape[0] == 0:
            return
        param = self.params[i].value
        states = {k: v.value for k, v in self.state[i].items()}
        kernel = getattr(_module_for(param), self.kernel)
        kernel(param, *[states.get(k) for k in self.layout], idx, None, t, lag, *self.hyper())

    def state_dict(self):
        """Step count and state tables (copies), after a flush; plain arrays and numbers."""
        self.flush()
        return {
            "optimizer": type(self).__name__,
            "version": STATE_FORMAT_VERSION,
            "hyper": self.hyperparameters(),
            "t": int(self.t.value),
            "state": {
                f"{i}.{k}": np.array(_host(v.value), copy=True)
                for i, states in enumerate(self.state)
                for k, v in states.items()
            },
        }

    def check_state_dict(self, d):
        """Validate ``d`` against this optimizer without changing anything."""
        if not isinstance(d, dict) or "state" not in d or "t" not in d:
            raise ValueError("not an optimizer state_dict (needs 't' and 'state')")
        if d.get("optimizer") != type(self).__name__:
            raise ValueError(
                f"state_dict is for {d.get('optimizer')!r}, this optimizer is "
                f"{type(self).__name__!r}"
            )
        if int(d.get("version", -1)) > STATE_FORMAT_VERSION:
            raise ValueError(f"state_dict version {d.get('version')} is newer than supported")
        t = int(np.asarray(d["t"]))
        if t < 0:
            raise ValueError(f"step count must be >= 0, got {t}")
        expected = {f"{i}.{k}": v for i, s in enumerate(self.state) for k, v in s.items()}
        if set(d["state"]) != set(expected):
            missing = sorted(set(expected) - set(d["state"]))
            extra = sorted(set(d["state"]) - set(expected))
            raise ValueError(f"state_dict entries differ: missing {missing}, unexpected {extra}")
        for key, var in expected.items():
            arr = np.asarray(d["state"][key])
            if arr.shape != tuple(var.value.shape):
                raise ValueError(
                    f"state {key!r} has shape {arr.shape}, expected {tuple(var.value.shape)}"
                )
            if arr.dtype.kind != "f":
                raise ValueError(f"state {key!r} has dtype {arr.dtype}, expected floats")
        return t

    def load_state_dict(self, d):
        """Replace step count and state (validated first: on error nothing changes)."""
        t = self.check_state_dict(d)
        self.flush()
        for i, states in enumerate(self.state):
            for k, var in states.items():
                var.value[...] = _like(var.value, np.asarray(d["state"][f"{i}.{k}"]))
        self.t._value = np.asarray(t, dtype=np.int64)
        for last in self.last:
            if last is not None:
                last.value[...] = t


def _host(a):
    return a.get() if hasattr(a, "__cuda_array_interface__") else a


def _like(target, arr):
    """``arr`` with the dtype (and device) of ``target``, to copy into it in place (the
    tables may live in shared memory, so they are never replaced)."""
    out = np.array(arr, dtype=target.dtype, copy=True)
    if hasattr(target, "__cuda_array_interface__"):
        import cupy

        out = cupy.asarray(out)
    return out
