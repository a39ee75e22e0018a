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
from minigrad.types import RowSparse, RowSparseType, TensorType, array_module
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
        # each parameter counts its own steps (torch keeps ``step`` per parameter too):
        # compiled updates advance all of them together, ``apply(param, grad)`` only its own
        self.steps = []
        self.state = []
        for i, p in enumerate(params):
            label = p.name or f"param{i}"
            self.steps.append(shared(np.int64(0), name=f"{label}.step"))
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
        pairs = []
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g.ndim != p.ndim:
                raise ValueError(f"gradient of rank {g.ndim} for {p} of rank {p.ndim}")
            rule = self._RULES.get(type(g.type))
            if rule is None:
                raise TypeError(f"no update rule for a gradient of type {g.type}")
            t_new = self.steps[i] + 1
            pairs.extend(rule(self, i, p, g, t_new))
            pairs.append((self.steps[i], t_new))
        pairs.append((self.t, self.t + 1))
        return pairs

    def _claim(self, i, kind):
        """Record how parameter ``i`` is updated: ``(gradient kind, exact rule?)``.

        Dense and row-sparse gradients may share a parameter only when both use the exact
        (dense-equivalent) row rule; any other mix would apply two different update rules
        to the same state.
        """
        self._check_claim(i, kind)
        self._kinds[i] = kind

    def _dense_rule(self, i, p, g, t_new):
        if p.ndim >= 1 and self.kernel:
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
            tables.append(self._last_table(i))
        g = PrepareRows()(g, *tables)
        op = RowUpdate(self.kernel, self.layout, tuple(self.state[i]), exact, self.hyper())
        outs = op(*tables, g, t_new)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return list(zip(tables, outs))

    _RULES = {TensorType: _dense_rule, RowSparseType: _sparse_rule}

    # --- eager step ----------------------------------------------------------------------
    def apply(self, param, grad, check_finite=True):
        """Apply one optimizer step to ``param`` alone, now; ``grad`` is an ndarray of the
        parameter's shape or a ``mg.RowSparse``.

        The same fused kernel as the compiled update does the work, under the same rules: an
        ndarray gradient has dense semantics (every row steps, exact catch-up included), a
        ``RowSparse`` follows ``sparse=`` (``"exact"``: skipped steps are caught up when a
        row comes back; ``"lazy"``: only its rows move). The parameter's own step counter
        advances by one (the others do not: a parameter server applies each table's
        gradient as it arrives). Everything is checked before the first write: a bad
        gradient (wrong type, shape or dtype, an index out of range, a non-finite value
        unless ``check_finite=False``) raises an error naming the parameter and leaves the
        parameter, its state and the step counters bitwise unchanged.
        """
        i = self._index_of(param)
        label = self._label(i)
        rows, dense = self._eager_gradient(i, label, grad, check_finite)
        step = int(self.steps[i].value)
        for transform in self.transforms:
            eager = getattr(transform, "eager", None)
            if eager is None:
                raise TypeError(
                    f"transform {transform!r} has no eager form (an eager(grads, step, "
                    f"indices) method), so apply() cannot run it; use the compiled updates()"
                )
            (rows,) = eager([rows], step=step, indices=[i])
            rows = RowSparse(rows.indices, np.ascontiguousarray(rows.values,
                             dtype=self.params[i].type.dtype), rows.shape, coalesced=True)
        exact = (dense or self.sparse == "exact") and self.needs_catch_up()
        kind = ("dense" if dense else "row-sparse", exact or not self.needs_catch_up())
        self._check_claim(i, kind)
        p = self.params[i]
        tables = [p.value, *[v.value for v in self.state[i].values()]]
        last = self._last_table(i) if exact else None
        kernel = getattr(_module_for(p.value), self.kernel)
        states = dict(zip(self.state[i], tables[1:]))
        kernel(tables[0], *[states.get(k) for k in self.layout], rows.indices, rows.values,
               step + 1, None if last is None else last.value, *self.hyper())
        self._kinds[i] = kind
        self.steps[i]._value = np.asarray(step + 1, dtype=np.int64)
        if step + 1 > int(self.t.value):
            self.t._value = np.asarray(step + 1, dtype=np.int64)

    def _index_of(self, param):
        for i, p in enumerate(self.params):
            if p is param:
                return i
        raise ValueError(f"{param!r} is not a parameter of this {type(self).__name__}")

    def _label(self, i):
        return self.params[i].name or f"parameter {i}"

    def _eager_gradient(self, i, label, grad, check_finite):
        """``grad`` checked against parameter ``i``, as a coalesced ``RowSparse`` of its dtype
        (an ndarray becomes every row); returns ``(rows, dense)``."""
        p = self.params[i]
        shape, dtype = tuple(p.value.shape), np.dtype(p.type.dtype)
        if isinstance(grad, RowSparse):
            dense = False
            if tuple(grad.shape) != shape:
                raise ValueError(f"gradient for {label!r}: RowSparse of shape {grad.shape}, the "
                                 f"parameter has shape {shape}")
            if np.dtype(grad.values.dtype).kind not in "fiu":
                raise TypeError(f"gradient for {label!r}: values of dtype {grad.values.dtype}, "
                                f"expected floats")
            idx = grad.indices
            if idx.shape[0] and (int(idx.min()) < 0 or int(idx.max()) >= shape[0]):
                bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
                raise IndexError(f"gradient for {label!r}: row index {bad} out of range "
                                 f"[0, {shape[0]})")
            rows = grad.coalesce()
            values = rows.values
        elif hasattr(grad, "shape") and hasattr(grad, "dtype"):
            dense = True
            if tuple(grad.shape) != shape:
                raise ValueError(f"gradient for {label!r}: array of shape {tuple(grad.shape)}, "
                                 f"the parameter has shape {shape}")
            if np.dtype(grad.dtype).kind not in "fiu":
                raise TypeError(f"gradient for {label!r}: dtype {grad.dtype}, expected floats")
            if len(shape) == 0:
                raise ValueError(f"apply() needs a parameter with at least one axis; "
                                 f"{label!r} is a scalar")
            values, rows = grad, None
        else:
            raise TypeError(f"gradient for {label!r}: expected an ndarray or mg.RowSparse, got "
                            f"{type(grad).__name__}")
        xp = array_module(p.value)
        values = xp.ascontiguousarray(xp.asarray(values), dtype=dtype)
        if check_finite and values.size and not bool(xp.isfinite(values).all()):
            raise FloatingPointError(f"gradient for {label!r} holds non-finite values (nan or "
                                     f"inf); nothing was changed")
        if rows is None:
            return RowSparse(xp.arange(shape[0], dtype=np.int64), values, shape,
                             coalesced=True), True
        return RowSparse(rows.indices, values, shape, coalesced=True), dense

    def _check_claim(self, i, kind):
        prev = self._kinds[i]
        if prev is not None and prev != kind and not (prev[1] and kind[1]):
            raise ValueError(
                f"{self.params[i]} already gets a {prev[0]} gradient from this optimizer; a "
                f"{kind[0]} one would mix two update rules (use sparse='exact' to mix them)"
            )

    def _last_table(self, i):
        """The per-row last-step array of parameter ``i`` (exact mode), created on demand."""
        if self.last[i] is None:
            p = self.params[i]
            start = np.full(p.value.shape[0], int(self.steps[i].value), dtype=np.int64)
            self.last[i] = shared(start, name=f"{p.name or f'param{i}'}.last_step")
            self.last[i].add_flush_hook(functools.partial(self.flush_param, i))
        return self.last[i]

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
        t = int(self.steps[i].value)
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
            "steps": [int(s.value) for s in self.steps],
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
        t = _step_count("t", d["t"])
        steps = d.get("steps")
        steps = [t] * len(self.params) if steps is None else list(np.asarray(steps).reshape(-1))
        if len(steps) != len(self.params):
            raise ValueError(f"state_dict has {len(steps)} step counters for "
                             f"{len(self.params)} parameters")
        steps = [_step_count(f"steps[{i}]", s) for i, s in enumerate(steps)]
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
        return t, steps

    def load_state_dict(self, d):
        """Replace step count and state (validated first: on error nothing changes)."""
        t, steps = self.check_state_dict(d)
        self.flush()
        new = {(i, k): _like(var.value, np.asarray(d["state"][f"{i}.{k}"]))
               for i, states in enumerate(self.state) for k, var in states.items()}
        for i, states in enumerate(self.state):
            for k, var in states.items():
                var.value[...] = new[(i, k)]
        self.t._value = np.asarray(t, dtype=np.int64)
        for i, step in enumerate(steps):
            self.steps[i]._value = np.asarray(step, dtype=np.int64)
            if self.last[i] is not None:
                self.last[i].value[...] = step


def _step_count(name, value):
    """A step counter from a state_dict: an integer in [0, 2**62] (checked, never wrapped)."""
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "iuf" or (
        arr.dtype.kind == "f" and not float(arr).is_integer()
    ):
        raise ValueError(f"state_dict {name} must be a whole number, got {value!r}")
    step = int(arr)
    if not 0 <= step <= 2**62:
        raise ValueError(f"state_dict {name} must be in [0, 2**62], got {step}")
    return step


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
