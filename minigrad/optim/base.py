"""``Optimizer``: the part every rule shares.

An optimizer owns, per parameter, a ``ParamState`` (minigrad/optim/param_state.py): the
state tables as ``mg.shared`` variables (so ``mg.save``, ``state_dict`` and hogwild can find
them), the parameter's own int64 step counter and, in exact mode, its per-row last-step
array and step history. ``updates()`` returns ``(shared, new_value)`` pairs for
``mg.function``; which pairs depends on the *type* of each gradient (a dict from type class
to rule, no isinstance ladder): a ``RowSparseType`` gradient, and a dense one (as a
row-sparse gradient touching every row), both go to one ``PrepareRows`` node (coalesce +
checks) and one destructive ``RowUpdate`` node calling the rule's fused kernel
``kernels.*.<rule>_rows``, the same call ``apply()`` and ``flush()`` make.

``lr`` and ``weight_decay`` are ``HyperSlot``s (a float, a shared scalar or a schedule)
read at every step by a ``StepHyper`` node; the rule's other hyperparameters are passed
to the kernel by name (``kernel_hyper()``).
"""
from __future__ import annotations

import math

import numpy as np

from kernels import _validate as V
from minigrad.ops import cast
from minigrad.optim.hyper import HyperSlot, StepHyper
from minigrad.optim.ops import AllRows, PrepareRows, RowUpdate
from minigrad.optim.param_state import ParamState, module_for
from minigrad.types import RowSparse, RowSparseType, TensorType, array_module
from minigrad.variables import SharedVariable, as_variable, shared

STATE_FORMAT_VERSION = 2


def _as_dtype(x, dtype):
    return x if x.dtype == dtype else cast(x, dtype)


def check_hyper(owner, name, value, low=0.0, high=math.inf, low_open=False, high_open=False):
    """A finite number in the given range, or a ``ValueError`` naming it (issue 15.16)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}") from None
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{owner}: {name} must be finite and in {lo}{low}, {high}{hi}, got "
                         f"{value!r}")
    return value


class Optimizer:
    """Base class. Subclasses set ``rule``, ``layout`` and implement the rule methods."""

    rule = ""  # the rule's key in kernels.row_kernels (its fused row kernel per backend)
    layout = ()  # the kernel's state arguments, in order (absent ones are passed as None)
    default_sparse = "exact"

    def __init__(self, params, lr, weight_decay=0.0, transforms=None, sparse=None):
        params = list(params) if isinstance(params, (list, tuple)) else [params]
        name = type(self).__name__
        if not params:
            raise ValueError(f"{name} needs at least one parameter")
        for p in params:
            if not isinstance(p, SharedVariable) or p.type.dtype not in ("float32", "float64"):
                raise TypeError(f"parameters must be float shared variables, got {p!r}")
        if len(set(params)) != len(params):
            raise ValueError("the same parameter is listed twice")
        self._lr = HyperSlot("lr", name, lr)
        self._wd = HyperSlot("weight_decay", name, weight_decay)
        sparse = self.default_sparse if sparse is None else sparse
        if sparse not in ("exact", "lazy"):
            raise ValueError(f"sparse must be 'exact' or 'lazy', got {sparse!r}")
        self.params = params
        self.sparse = sparse
        self.transforms = list(transforms or [])
        self.t = shared(np.int64(0), name=f"{name}.t")
        self._built = False  # updates()/apply() ran: whether rows catch up is now fixed
        self.param_states = []
        for i, p in enumerate(params):
            label = p.name or f"param{i}"
            states = {k: shared(self.initial_state(k, p.value), name=f"{label}.{k}")
                      for k in self.state_names()}
            self.param_states.append(ParamState(
                label, p, states, shared(np.int64(0), name=f"{label}.step"), self.rule,
                self.layout, self.kernel_hyper(), self.catch_up_matrix(),
                series=self.catch_up_series()))
        self._kinds = [None] * len(params)

    # views kept for callers and tests ----------------------------------------------------
    @property
    def state(self):
        return [ps.states for ps in self.param_states]

    @property
    def steps(self):
        return [ps.step for ps in self.param_states]

    @property
    def last(self):
        return [ps.last for ps in self.param_states]

    # --- hyperparameters read at run time ----------------------------------------------
    @property
    def lr(self):
        """The lr as given: a float, a shared scalar or a schedule (``current_lr()``: the
        value of the next step). Assigning takes effect at the next step for every row; in
        exact mode rows caught up later still get the old value for the old steps."""
        return self._lr.value()

    @lr.setter
    def lr(self, value):
        self._lr.set(value)

    @property
    def weight_decay(self):
        return self._wd.value()

    @weight_decay.setter
    def weight_decay(self, value):
        slot = HyperSlot("weight_decay", type(self).__name__, value)
        before = self.needs_catch_up()
        old, self._wd.source = self._wd.source, slot.source
        if self._built and self.needs_catch_up() != before:
            self._wd.source = old
            raise ValueError(
                f"{type(self).__name__}: the update was built with weight_decay={old!r}, "
                f"under which untouched rows {'do' if before else 'do not'} move; changing "
                f"it to {value!r} would change that. Pass a shared scalar "
                f"(mg.shared(np.float64(wd))) or a schedule as weight_decay when creating the "
                f"optimizer, then set_value() it; or build a new optimizer"
            )

    def current_lr(self):
        """The lr the next step will use."""
        return self._lr.at(int(self.t.value) + 1)

    def current_weight_decay(self):
        return self._wd.at(int(self.t.value) + 1)

    # --- to override --------------------------------------------------------------------
    def state_names(self):
        """Names of the per-parameter state tables (in ``layout`` order)."""
        return ()

    def initial_state(self, name, value):
        return np.zeros_like(value)

    def kernel_hyper(self):
        """The rule's constant kernel arguments, by the kernel's parameter names (lr and
        weight_decay are read at every step and passed separately)."""
        return {}

    def catch_up_matrix(self):
        """``f(lr, weight_decay) -> (a11, a12, a21, a22)``: the linear map of one
        zero-gradient step on a row's ``(param, buffer)`` for rules whose catch-up is linear
        (the step history multiplies blocks of them); ``None`` (the default) for rules that
        need none. A plain function of the rule's constants (it must not hold ``self``)."""
        return None

    def catch_up_series(self):
        """Per-step block sums the rule's closed-form catch-up reads from the step history
        (``kernels.rules.adam.SeriesBlocks`` for Adam), or ``None`` (the default)."""
        return None

    def needs_catch_up(self):
        """Whether a zero-gradient step changes anything (then exact mode keeps ``last``)."""
        return True

    def dense_update(self, p, g, state, t_new, lr, wd):
        """Symbolic ``(new_param, {state name: new value})`` for a dense gradient ``g``: only
        used by an optimizer without a fused ``kernel`` (every parameter of one with a
        kernel, scalars included, goes through it)."""
        raise NotImplementedError

    def hyperparameters(self):
        return {"lr": self._lr.config(), "weight_decay": self._wd.config(),
                "sparse": self.sparse}

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
            step = self.param_states[i].step
            t_new = step + 1
            hyper = StepHyper((self._lr, self._wd))(t_new)
            pairs.extend(rule(self, i, p, g, t_new, hyper))
            pairs.append((step, t_new))
        pairs.append((self.t, self.t + 1))
        self._built = True
        return pairs

    def _claim(self, i, kind):
        """Record how parameter ``i`` is updated: ``(gradient kind, exact rule?)``.

        Dense and row-sparse gradients may share a parameter only when both use the exact
        (dense-equivalent) row rule; any other mix would apply two different update rules
        to the same state.
        """
        self._check_claim(i, kind)
        self._kinds[i] = kind

    def _dense_rule(self, i, p, g, t_new, hyper):
        if self.rule:
            # a dense gradient is a row-sparse one touching every row: the fused kernel
            # updates it in place in one pass (dense semantics: exact mode), where a
            # symbolic rule would allocate a temporary per arithmetic step (a scalar
            # parameter too: one row of one element)
            return self._sparse_rule(i, p, AllRows()(_as_dtype(g, p.dtype)), t_new, hyper,
                                     dense_semantics=True)
        self._claim(i, ("dense", False))
        lr, wd = (_as_dtype(hyper[k], p.dtype) for k in range(2))
        new_p, new_state = self.dense_update(p, _as_dtype(g, p.dtype), self.state[i], t_new,
                                             lr, wd)
        pairs = [(p, _as_dtype(new_p, p.dtype))]
        pairs += [(self.state[i][k], _as_dtype(v, p.dtype)) for k, v in new_state.items()]
        return pairs

    def _sparse_rule(self, i, p, g, t_new, hyper, dense_semantics=False):
        exact = (dense_semantics or self.sparse == "exact") and self.needs_catch_up()
        self._claim(i, ("dense" if dense_semantics else "row-sparse",
                        exact or not self.needs_catch_up()))
        ps = self.param_states[i]
        if exact:
            ps.ensure_exact()
        tables = ps.table_vars(exact)
        g = PrepareRows()(g, *tables)
        outs = RowUpdate(ps, exact)(*tables, g, t_new, hyper)
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
        gradient as it arrives), and lr / weight decay are read for that step. Everything is
        checked before the first write: a bad gradient (wrong type, shape or dtype, an index
        out of range, a non-finite value unless ``check_finite=False``) or hyperparameter
        raises an error naming the parameter and leaves the parameter, its state and the
        step counters bitwise unchanged.
        """
        i = self._index_of(param)
        label = self._label(i)
        ps = self.param_states[i]
        rows, dense = self._eager_gradient(i, label, grad, check_finite)
        step = int(ps.step.value)
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
        lr, wd = self._lr.at(step + 1), self._wd.at(step + 1)
        if exact:
            ps.ensure_exact()
        module = module_for(param.value)
        guard = ps.eager_guard() if check_finite else None
        bad = ps.run(module, ps.arrays(exact), rows.indices, rows.values, step + 1, lr, wd,
                     exact, guard)
        if bad >= 0:  # the update overflowed: the kernel saved what it overwrote
            row = guard.bad_row()
            guard.restore()
            raise FloatingPointError(
                f"{label}: the update of row {row} is not finite (NaN or inf); nothing was "
                "changed (apply(..., check_finite=False) skips this check)")
        if guard is not None:
            guard.release()
        self._kinds[i] = kind
        self._built = True
        ps.step._value = np.asarray(step + 1, dtype=np.int64)
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
            if np.dtype(grad.indices.dtype).kind not in "iu":
                raise TypeError(f"gradient for {label!r}: row indices of dtype "
                                f"{grad.indices.dtype}, expected integers")
            V.check_index_range("indices", grad.indices, shape[0], message=lambda bad, n: (
                f"gradient for {label!r}: row index {bad} out of range [0, {n})"))
            rows = grad.coalesce()
            values = rows.values
        elif hasattr(grad, "shape") and hasattr(grad, "dtype"):
            dense = True
            if tuple(grad.shape) != shape:
                raise ValueError(f"gradient for {label!r}: array of shape {tuple(grad.shape)}, "
                                 f"the parameter has shape {shape}")
            if np.dtype(grad.dtype).kind not in "fiu":
                raise TypeError(f"gradient for {label!r}: dtype {grad.dtype}, expected floats")
            values, rows = grad, None
        else:
            raise TypeError(f"gradient for {label!r}: expected an ndarray or mg.RowSparse, got "
                            f"{type(grad).__name__}")
        xp = array_module(p.value)
        values = xp.ascontiguousarray(xp.asarray(values), dtype=dtype)
        if check_finite and values.size and not bool(xp.isfinite(values).all()):
            raise FloatingPointError(f"gradient for {label!r} holds non-finite values (nan or "
                                     f"inf); nothing was changed")
        if rows is None and not shape:  # a scalar parameter: one row (see ParamState)
            return RowSparse.trusted(xp.zeros(1, dtype=np.int64), values.reshape(1), (),
                                     coalesced=True), True
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

    # --- state -------------------------------------------------------------------------
    def flush(self):
        """Bring every row with pending skipped steps up to date (exact mode)."""
        for ps in self.param_states:
            ps.flush()

    def flush_param(self, i):
        """``flush`` for parameter ``i`` alone."""
        self.param_states[i].flush()

    def state_dict(self):
        """Step count and state tables (copies), after a flush; plain arrays and numbers."""
        self.flush()
        return {
            "optimizer": type(self).__name__,
            "version": STATE_FORMAT_VERSION,
            "hyper": self.hyperparameters(),
            "t": int(self.t.value),
            "steps": [int(s.value) for s in self.steps],
            "schedule_position": int(self.t.value),
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
        for ps, step in zip(self.param_states, steps):
            ps.restart(step)


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
