"""``mg.function``: turn a symbolic graph into a Python callable.

Compilation is five plain steps:

1. **collect** the outputs and the new values of the updates;
2. **rewrite** a copy of that graph, a ``FunctionGraph`` (``fgraph.py``), with the rewrite
   database's phases chosen by the ``mg.Mode`` (merge duplicates, fold constants, push row
   gathers through element-wise ops, fuse...; see ``rewrite.py``);
3. **order** the nodes topologically, putting nodes that overwrite a shared value in place
   (optimizer row updates, ``op.destroy_map``) after every other node;
4. **make a thunk** per node from the backend's table (``backends/``);
5. **link**: each phase (safe, destructive) becomes one generated straight-line Python
   function with values in locals (``linker.py``; ``Mode(linker="vm")``: a loop).

A call is atomic. Inputs are validated (count, rank, dtype kind, sparse format) and index
inputs range-checked once, in a prologue (``prologue.py``), before anything runs; Ops
validate what the prologue could not know while computing, and nothing is written to a
shared variable until every non-destructive node has run: an exception in that phase
leaves all state exactly as it was.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from minigrad import call_checks
from minigrad.backends import get_backend
from minigrad.fgraph import FunctionGraph
from minigrad.graph import Constant, Variable
from minigrad.linker import generated_phase, vm_phase
from minigrad.mode import resolve_mode
from minigrad.prologue import Prologue
from minigrad.rewrite import DB
from minigrad.types import CSRType, RowSparse, RowSparseType
from minigrad.undo import logged, roll_back, writes_early
from minigrad.variables import SharedVariable, as_variable


def _normalize_updates(updates):
    if updates is None:
        return []
    if isinstance(updates, dict):
        updates = list(updates.items())
    pairs = []
    for pair in updates:
        try:
            target, value = pair
        except (TypeError, ValueError):
            raise TypeError(f"updates must be (shared, expression) pairs, got {pair!r}") from None
        if not isinstance(target, SharedVariable):
            raise TypeError(f"update target {target!r} is not a shared variable")
        value = as_variable(value)
        if isinstance(value.type, RowSparseType):
            raise TypeError(
                f"update of {target} is row-sparse; apply it with an optimizer "
                "(mg.optim.SGD(...).updates) or densify it with .to_dense()"
            )
        if value.ndim != target.ndim:
            raise TypeError(
                f"update of {target}: new value has rank {value.ndim}, expected {target.ndim}"
            )
        pairs.append((target, value))
    targets = [t for t, _ in pairs]
    dupes = {t.name or repr(t) for t in targets if targets.count(t) > 1}
    if dupes:
        raise ValueError(f"shared variables updated more than once: {sorted(dupes)}")
    return pairs


def _check_inputs(inputs):
    inputs = list(inputs)
    for var in inputs:
        if not isinstance(var, Variable):
            raise TypeError(f"inputs must be symbolic variables, got {var!r}")
        if isinstance(var, (SharedVariable, Constant)) or var.owner is not None:
            raise TypeError(
                f"{var} cannot be an input: inputs are symbolic leaves "
                "(shared variables and constants are read automatically)"
            )
    if len(set(inputs)) != len(inputs):
        raise ValueError("the same variable is listed twice in inputs")
    return inputs


class Function:
    """A compiled graph; call it with one value per input."""

    def __init__(self, inputs, outputs, updates=None, backend=None, nan_guard=None, name=None,
                 on_nan="raise", mode=None, allow_input_downcast=False):
        t0 = time.perf_counter()
        self.name = name
        self.inputs = _check_inputs(inputs)
        self.output_structure, out_list = call_checks.split_outputs(outputs)
        self.single_output = self.output_structure[0] == "single"
        self.outputs = [as_variable(o) for o in out_list]
        self.updates = _normalize_updates(updates)
        self.mode = resolve_mode(mode, backend)
        self.backend = get_backend(self.mode.backend)
        t_backend = time.perf_counter()
        # None (default): updates only; True: outputs too; False: nothing is checked
        self.nan_guard = bool(nan_guard)
        self.update_guard = nan_guard is None or bool(nan_guard)
        self.allow_input_downcast = bool(allow_input_downcast)
        #: the inputs' names in error messages (made once: each call filters every input)
        self._input_labels = [f"input {i}" + (f" ({var.name!r})" if var.name else "")
                              for i, var in enumerate(self.inputs)]
        if on_nan not in ("raise", "skip"):
            raise ValueError("on_nan must be 'raise' or 'skip'")
        self.on_nan = on_nan

        roots = self.outputs + [v for _, v in self.updates]
        # the rewrites edit a copy of the graph (a FunctionGraph); the caller's is untouched
        self.fgraph = FunctionGraph(self.inputs, roots)
        DB.apply(self.fgraph, self.mode.include, self.mode.exclude)
        roots = list(self.fgraph.outputs)
        self.graph_outputs = roots[: len(self.outputs)]
        self.graph_updates = roots[len(self.outputs):]
        t_rewrites = time.perf_counter()
        self._link()
        t_end = time.perf_counter()
        self.compile_seconds = t_end - t0
        # where the compile went (benchmarks/compile_time.py): "setup" (argument checks,
        # the backend: its kernels are imported at its first use in a process), rewrites,
        # and linking (thunks, generated phases, jit segments' source and module)
        self.compile_phases = {"setup": t_backend - t0, "rewrites": t_rewrites - t_backend,
                               "link": t_end - t_rewrites}

    # ----------------------------------------------------------------------------------
    def _link(self):
        nodes = self.fgraph.toposort()
        missing = self._missing_inputs(nodes)
        if missing:
            raise ValueError(
                "the outputs depend on inputs that were not given: "
                + ", ".join(str(m) for m in missing)
            )
        # Destructive nodes (in-place updates) run last, after everything that reads.
        self.nodes = [n for n in nodes if not n.op.destroy_map] + [
            n for n in nodes if n.op.destroy_map
        ]
        self.n_safe = sum(1 for n in self.nodes if not n.op.destroy_map)
        # index inputs range-checked once per call, before anything runs; marks the nodes
        # it covers (node.index_checked) so their thunks skip the check: before make_thunk
        self.prologue = Prologue(self.nodes, self.inputs)
        self._kernels = self.backend.kernels() if self.n_safe < len(self.nodes) else None
        slot = {}

        def slot_of(var):
            if var not in slot:
                slot[var] = len(slot)
            return slot[var]

        for var in self.inputs:
            slot_of(var)
        # leaves read at every call: shared values (loaded) and constants (stored once)
        self.shared, self.constants = [], []
        leaves = [v for n in self.nodes for v in n.inputs]
        for var in leaves + self.graph_outputs + self.graph_updates:
            if var in slot:
                continue
            if isinstance(var, SharedVariable):
                self.shared.append((var, slot_of(var)))
            elif isinstance(var, Constant):
                self.constants.append((slot_of(var), self.backend.to_device(var.data)))
        # catch-up nodes write tables in the safe phase: their rows are logged first so a
        # call that fails before its destructive phase puts them back (see undo.py)
        self._undo_log = []
        self.program = [
            (self._thunk(n), [slot_of(i) for i in n.inputs], [slot_of(o) for o in n.outputs])
            for n in self.nodes
        ]
        # Shared values this function updates in place are its own to keep consistent (an
        # exact-mode optimizer catches their rows up as it reads them, O(rows touched));
        # any other shared value with pending catch-up steps is flushed before each call.
        in_place = {n.inputs[i] for n in self.nodes for i in n.op.destroy_map.values()}
        from minigrad.optim.ops import needs_flush  # exact tables read by gathers only: no

        self.flush_first = [v for v, _ in self.shared  # flush (FreshTake catches them up)
                            if v._flush_hooks and v not in in_place
                            and needs_flush(v, self.nodes)]
        self.safe_program = self.program[: self.n_safe]
        self.destructive_program = self.program[self.n_safe:]
        self.destructive_nodes = self.nodes[self.n_safe:]
        # the NaN guard's destructive phase, with its scratch, built once (call_checks.py)
        # row updates straight into their compiled loops, past checks this call already
        # made (direct_updates.py); the plain "vm" linker keeps the checked path
        self._direct = self.mode.linker != "vm" and self.backend.name == "numba"
        self._guarded_phase = (call_checks.GuardedPhase(self.destructive_nodes,
                                                        self.destructive_program, self._kernels,
                                                        self._direct)
                               if self.update_guard else None)
        # exact-mode states this function leaves rows pending in: their later flush (a
        # get_value, another function's read) catches up with this function's kernels
        self._pending_states = [n.op.state for n in self.destructive_nodes
                                if getattr(n.op, "exact", False) and hasattr(n.op, "state")]
        self.in_place_targets = [(v, slot[v]) for v in
                                 dict.fromkeys(n.inputs[i] for n in self.destructive_nodes
                                               for i in n.op.destroy_map.values())
                                 if isinstance(v, SharedVariable)]
        # the arrays that passed check_destinations (the same objects are not re-checked)
        self._destinations_checked = call_checks.destination_record(self.in_place_targets)
        self.output_slots = [slot_of(v) for v in self.graph_outputs]
        # a shared variable returned as such is read with get_value(): its flush hooks run
        # (an exact-mode optimizer's pending rows are caught up) and the caller gets a copy
        self.output_shared = [v if isinstance(v, SharedVariable) else None
                              for v in self.graph_outputs]
        self.update_slots = [
            (target, slot_of(v), v.owner is not None and bool(v.owner.op.destroy_map))
            for (target, _), v in zip(self.updates, self.graph_updates)
        ]
        # the updates written by assignment (step counters, dense values), not in place:
        # what the call's finiteness check and its last loop look at
        self._assigned_updates = [u for u in self.update_slots if not u[2]]
        self.leaf_slots = {slot[v] for v in slot if v.owner is None}
        # nan_guard looks at what would be written or returned: outputs, dense update
        # values, and the inputs of in-place update nodes (their gradients)
        guard = list(self.output_slots) + [s for _, s, _ in self.update_slots]
        for _, ins, _ in self.program[self.n_safe:]:
            guard.extend(ins)
        self.guard_slots = sorted(set(guard) - self.leaf_slots)
        self.n_slots = len(slot)
        self._make_phases()

    _fused_step = None  # (jit linker: fused_step.FusedStep where it covers the step)

    def _make_phases(self):
        """One callable per phase, by the mode's linker (see ``linker.py``).

        The safe phase takes the inputs and shared values and returns what the rest of
        the call needs (outputs, update values, the destructive nodes' inputs); the
        destructive phase takes its inputs from those. Constants are bound once.
        """
        const = dict(self.constants)
        labels = [_node_label(n) for n in self.nodes]
        safe = [(*entry, label) for entry, label in zip(self.safe_program, labels)]
        late = [(*entry, label) for entry, label in
                zip(self.destructive_program, labels[self.n_safe:])]
        self.safe_in = list(range(len(self.inputs))) + [s for _, s in self.shared]
        made_late = {o for _, _, outs in self.destructive_program for o in outs}
        self.destructive_in = sorted({i for _, ins, _ in self.destructive_program
                                      for i in ins if i not in made_late and i not in const})
        needed = set(self.output_slots) | {s for _, s, _ in self.update_slots}
        self.safe_out = sorted((needed | set(self.destructive_in) | set(self.guard_slots))
                               - made_late)
        linker = self.mode.linker
        if linker in ("jit", "tiered") and self.backend.name != "numba":
            linker = "generated"  # jit segments are Numba code
        if linker == "vm":
            self.update_driver = None
            self._safe_run = vm_phase(safe, self.safe_in, self.safe_out, self.n_slots, const)
            self._destructive_run = vm_phase(late, self.destructive_in, (), self.n_slots, const)
            return
        # every other linker keeps the destructive phase generated Python
        if self._direct:
            from minigrad.direct_updates import direct_entries

            late = direct_entries(self.destructive_nodes, late, self._kernels)
        self._destructive_run = generated_phase(late, self.destructive_in, (),
                                                "destructive_phase", const)
        self.update_driver = None
        if self._direct:  # every row update in one compiled call where all are covered
            from minigrad.update_driver import build  # (update_driver.py)

            self.update_driver = driver = build(self.destructive_nodes,
                                                self.destructive_program, self._kernels,
                                                self.destructive_in, const)
            if driver is not None:  # the per-node phases stay: the catch-up path
                driver.fallback_plain, self._destructive_run = self._destructive_run, driver.plain
                driver.fallback_guarded = self._guarded_phase
                self._guarded_phase = driver.guarded if self._guarded_phase else None
        if linker == "jit":
            from minigrad.linker_jit import jit_phase  # compiled segments (linker_jit.py)

            self._safe_run = jit_phase(self.nodes[: self.n_safe], safe, self.safe_in,
                                       self.safe_out, "safe_phase", const)
            from minigrad.fused_step import build as fused_step  # segment + row updates

            self._fused_step = fused_step(self)  # in one compiled call (fused_step.py)
            return
        plain = generated_phase(safe, self.safe_in, self.safe_out, "safe_phase", const)
        if linker == "tiered":
            from minigrad.linker_jit import jit_phase
            from minigrad.tiered import TieredPhase  # generated first, jit once hot

            self._safe_run = TieredPhase(plain, lambda: jit_phase(
                self.nodes[: self.n_safe], safe, self.safe_in, self.safe_out, "safe_phase",
                const, tiered=True))
        else:
            self._safe_run = plain

    def _thunk(self, node):
        thunk = self.backend.make_thunk(node)
        return logged(node, thunk, self._undo_log) if writes_early(node) else thunk

    def _missing_inputs(self, nodes):
        given = set(self.inputs)
        missing = []
        for var in [i for n in nodes for i in n.inputs] + self.graph_outputs + self.graph_updates:
            if var.owner is None and not isinstance(var, (SharedVariable, Constant)):
                if var not in given and var not in missing:
                    missing.append(var)
        return missing

    # ----------------------------------------------------------------------------------
    def _validate(self, args):
        if len(args) != len(self.inputs):
            names = ", ".join(str(v) for v in self.inputs)
            raise TypeError(
                f"{self._label()} expects {len(self.inputs)} inputs ({names}), got {len(args)}"
            )
        values = []
        for var, value, label in zip(self.inputs, args, self._input_labels):
            values.append(var.type.filter(value, name=label,
                                          allow_downcast=self.allow_input_downcast))
        if self.updates:
            call_checks.check_not_empty(self.inputs, values, self._label())
        if self.prologue:
            self.prologue(values)  # on the host, before any upload or node
        return [self.backend.to_device(v) for v in values]

    def _label(self):
        return f"function {self.name!r}" if self.name else "this function"

    def __call__(self, *args):
        with call_checks.CALL_LOCK, self.backend.call_context():
            return self._call(args)

    def _call(self, args):
        values = self._validate(args)
        if not self.updates and call_checks.has_empty_batch(values):
            with call_checks.quiet_empty_batch():  # a mean over nothing: NaN, no warnings
                return self._execute(values)
        return self._execute(values)

    def _execute(self, values):
        storage = [None] * self.n_slots
        storage[: len(values)] = values
        for var in self.flush_first:
            var.flush()  # not maintained by this function: bring pending rows up to date
        for var, s in self.shared:
            storage[s] = self.backend.load_shared(var)
        for s, data in self.constants:
            storage[s] = data
        call_checks.check_destinations(self.in_place_targets, storage, self._label(),
                                       self._destinations_checked)
        fused = self._fused_step
        if fused is not None and fused.enabled:  # the whole step, one compiled call
            result = fused.execute(self, storage)
            if result is not fused.TWO_PHASES:
                return result
        return self._run_phases(storage)

    def _run_phases(self, storage):
        """The safe phase, the checks between, the destructive phase (``storage``: the
        call's inputs, shared values and constants, loaded)."""
        self._undo_log.clear()
        try:
            results = self._safe_run(*[storage[s] for s in self.safe_in])
        except BaseException:
            roll_back(self._undo_log)  # the caught-up rows of a failed call go back
            raise
        for s, value in zip(self.safe_out, results):
            storage[s] = value
        if self.nan_guard and not self._all_finite(storage):
            roll_back(self._undo_log)
            return self._on_nan()
        if self.update_guard and not call_checks.dense_updates_finite(self._assigned_updates,
                                                                      storage):
            roll_back(self._undo_log)
            return self._on_nan()
        handed_out = set()  # ids of arrays already returned or stored in a shared variable
        outputs = [
            self._export(storage[s], s, handed_out) if var is None else var.get_value()
            for s, var in zip(self.output_slots, self.output_shared)
        ]
        if self.update_guard:
            # the guarded runner undoes its own writes on any error; the catch-up rows of
            # the safe phase then go back too, so the call changes nothing
            try:
                self._guarded_phase(storage, self._label())
            except FloatingPointError as err:
                roll_back(self._undo_log)
                if self.on_nan == "raise":
                    raise
                warnings.warn(f"{err} (step skipped)", RuntimeWarning, stacklevel=3)
                return None
            except BaseException:
                roll_back(self._undo_log)
                raise
        else:
            self._destructive_run(*[storage[s] for s in self.destructive_in])
        self._undo_log.clear()
        for state in self._pending_states:
            state.flush_module = self._kernels  # the backend that pended the rows
        for target, s, in_place in self._assigned_updates:
            if not in_place:
                value = storage[s]
                if s in self.leaf_slots or id(value) in handed_out or (
                    getattr(value, "base", None) is not None
                ) or not getattr(getattr(value, "flags", None), "c_contiguous", True):
                    value = value.copy()  # NumPy or CuPy: the update owns its buffer
                handed_out.add(id(value))
                target._value = value
        return call_checks.pack_outputs(self.output_structure, outputs)

    @staticmethod
    def _run(program, storage):
        """The plain VM over a program of ``(thunk, input_slots, output_slots)`` entries
        and a slot list (for code that runs part of a program itself)."""
        for thunk, ins, outs in program:
            results = thunk([storage[i] for i in ins])
            for s, r in zip(outs, results):
                storage[s] = r

    def _all_finite(self, storage):
        for s in self.guard_slots:
            v = storage[s]
            if isinstance(v, RowSparse):
                v = v.values
            is_float = getattr(getattr(v, "dtype", None), "kind", "") == "f"
            if is_float and not self.backend.isfinite_all(v):  # NumPy or CuPy arrays
                return False
        return True

    def _on_nan(self):
        message = (
            f"{self._label()}: non-finite value (NaN or inf) in an output or update; "
            "no shared variable was changed"
        )
        if self.on_nan == "raise":
            raise FloatingPointError(message)
        warnings.warn(message + " (step skipped)", RuntimeWarning, stacklevel=3)
        return None

    def _export(self, value, s, handed_out):
        """Outputs never alias internal buffers, inputs, shared values or each other.

        A merged graph can give two outputs (or an output and an update) the same array;
        ``handed_out`` holds the ids of arrays already returned, which are copied again.
        """
        value = self.backend.to_host(value)
        if isinstance(value, RowSparse):
            return value.copy()
        if isinstance(value, np.ndarray):
            if (s in self.leaf_slots or id(value) in handed_out or value.base is not None
                    or not value.flags.owndata):
                value = value.copy()
            handed_out.add(id(value))
        return value


def _node_label(node):
    """A short label for the generated code's comment: the Op's class name for a fused
    node (its printed formula can be as deep as its inner graph), else ``str(op)``."""
    op = node.op
    if getattr(op, "inner_nodes", None) is not None or op.inner_graph(node) is not None:
        return type(op).__name__
    try:
        return str(op)
    except Exception:  # a label must never stop a compile
        return type(op).__name__


def function(inputs, outputs=None, updates=None, backend=None, nan_guard=None, name=None,
             on_nan="raise", allow_input_downcast=False, mode=None):
    """Compile ``outputs`` (and ``updates``) as a function of ``inputs``.

    ``outputs``: a variable, or a list, tuple or dict of variables; the result has the same
    structure. ``updates``: ``(shared, new_value)`` pairs or what an optimizer returns; all
    new values are computed from the old ones, then written. ``mode``: an ``mg.Mode`` (backend
    and rewrite tags to include/exclude). ``backend``: ``"numpy"``, ``"numba"`` (default
    when numba imports) or ``"cupy"``, a shorthand for ``mode=mg.Mode(backend=...)``.

    NaN policy: by default (``nan_guard=None``) a non-finite *update* never reaches a
    shared variable: the call raises ``FloatingPointError`` naming it and changes nothing
    (in-place row updates are checked on the rows written and undone). ``nan_guard=True``
    also checks the outputs and gradients; ``nan_guard=False`` checks nothing (fastest).
    ``on_nan="skip"``: warn and skip the step instead of raising.

    ``allow_input_downcast`` (Theano's): inputs are cast to their declared dtype when no
    value changes; a float value that would overflow or underflow the narrower dtype is
    refused unless ``True``. Integer values that do not fit are always refused.
    """
    return Function(inputs, outputs, updates=updates, backend=backend, nan_guard=nan_guard,
                    name=name, on_nan=on_nan, allow_input_downcast=allow_input_downcast,
                    mode=mode)


__all__ = ["function", "Function", "CSRType"]
