"""A whole training step as one compiled call: the jit segment and the row updates (issue 12).

On the jit linker a step is, at best, a safe phase that is one compiled segment
(``linker_jit.py``) plus a destructive phase that is one compiled call of the update
driver (``update_driver.py``). Between and around them the Python side still boxes the
segment's gradients into ``RowSparse`` values, runs a ``StepHyper`` thunk per parameter,
builds the driver's padded tuples (48 arrays that Numba unboxes at every call) and its
guards' scratch. On the FM step (k=16, batch 256, SGD) that glue cost about as much as
the segment's own arithmetic.

:class:`FusedStep` generates one ``@njit`` function instead: the segment's nodes, then
each parameter's row update (the driver's own loops, called through the addressed
helpers of ``kernels/cpu/jit_ops.py`` with the arguments ``step_rows`` gives them, so the
results are bitwise those of the two-call path), returning the outputs and the new step
counters. A fused scatter kernel whose gradient only these updates read leaves its rows
unsorted (``_rows_in_any_order``). Python computes the ``StepHyper`` values first (a
schedule or a shared lr is a Python value: it is read at every call, so a change between
calls takes effect), then makes that one call, then writes the step counters.

**Atomic.** Every check of the segment (shapes, labels, index ranges) runs before the
first row is written, and so do the step's own checks: with ``nan_guard=True`` every
output, gradient and ``[lr, weight_decay]`` value is tested finite (what the two-phase
path tests between its phases); then no exact-mode row may lag (below). Guarded
(``nan_guard`` default or ``True``), each update saves the rows it overwrites (``last``
included) into scratch allocated in the call and checks the new values; on a non-finite
one the compiled code puts back, in reverse order, every row written in the call and
returns the entry, and the step raises ``FloatingPointError`` naming the parameter and
the row, as the driver does. Any exception of the compiled call (nothing written) makes
this call run the two-phase path with the segment's Python thunks, which raise the
reference's clear error (or, for a value the compiled code does not handle, compute the
result, with a warning); a Numba typing error turns the fused step off for good.

**Exact mode, dense gradients.** A table that an exact-mode optimizer updates on every
row (a head ``W``, a bias ``c``: the driver's dense exact entries) is read by the
segment through ``CatchUpAll``, which writes (catches the table up) only when a row lags.
Such a row exists only when something else stepped the table row-sparsely (another
function, a loaded checkpoint). So here ``CatchUpAll`` passes the table on, and the
compiled call tests, before any write, ``CatchUpAll``'s own condition and the driver's
(``last[r] >= t - 1`` for every row updated); when one fails it writes nothing and
returns :data:`CATCH_UP`, and the call runs on the two-phase path, which catches the
rows up under its undo log. After a call every row of such a table is at step ``t``:
its history restarts there (``StepHistory.restart_at``, O(1)), as after the driver.

``mg.Mode(linker="jit", exclude=("fused_step",))`` keeps the two-phase path.

**Covered** (else the function keeps the two-phase path): the jit linker on the numba
backend, an update driver covering every row update (lazy entries, and exact-mode ones
with a dense gradient), parameters of rank 1 or 2, a safe phase whose nodes all compile
except the ``StepHyper`` nodes, each fed by a compiled node of leaves only (the step
counter plus one), and the ``CatchUpAll`` nodes of dense exact tables, no flush before
the step, dense outputs only, and only integer values assigned (step counters). A
row-sparse exact-mode update (its catch-up of lagging rows reads the step history) keeps
the two-phase path, and so does the driver then.
"""
from __future__ import annotations

import itertools
import linecache
import warnings

import numpy as np

from minigrad.call_checks import pack_outputs
from minigrad.graph import Constant
from minigrad.types import CSRType, RowSparseType
from minigrad.variables import SharedVariable

_serial = itertools.count()

#: the value :meth:`FusedStep.execute` returns when the two-phase path is to run instead
TWO_PHASES = object()

#: the compiled call's codes besides an entry's index (not finite there) and -1 (done):
#: ``nan_guard=True`` found a non-finite output or gradient; an exact-mode row lags (the
#: two-phase path catches it up). Nothing was written.
NOT_FINITE, CATCH_UP = -2, -3


def _var_slots(fn):
    """``{variable: slot}`` of every node input and output of ``fn``."""
    slot = {}
    for node, (_, ins, outs) in zip(fn.nodes, fn.program):
        slot.update(zip(node.inputs, ins))
        slot.update(zip(node.outputs, outs))
    return slot


def _is_leaf(var):
    return isinstance(var, (SharedVariable, Constant))


def _catch_ups(safe_nodes, driver, var_of):
    """Indices of the safe phase's early writers when each is the ``CatchUpAll`` of a
    table that an exact-mode driver entry updates on every row (a dense gradient: a head
    ``W``, a bias ``c``), else None. Such a table is up to date whenever only dense steps
    touch it: the compiled call then checks that nothing lags (``CatchUpAll``'s own test,
    ``last.min() < t``) before anything is written, and when a row does lag the call is
    given to the two-phase path, which catches the table up under its undo log. No other
    early writer is fused."""
    from minigrad.undo import writes_early

    # (every exact entry of the driver has a dense gradient: it fuses no other)
    exact_tables = {var_of[e.tables[0]] for e in driver.entries if e.exact}
    found = []
    for i, node in enumerate(safe_nodes):
        if writes_early(node):
            if node.inputs[0] not in exact_tables:
                return None
            found.append(i)
    return found


def _hyper_feeds(fn, safe_nodes, skipped=()):
    """``[(StepHyper index, its input's producer index)]`` when every uncovered safe node
    (but those ``skipped``: the fused catch-ups) is a ``StepHyper`` fed by a covered node
    of leaves, read by destructive nodes only; else None."""
    from minigrad.backends.numba_jit import covered
    from minigrad.optim.hyper import StepHyper

    producer = {o: i for i, n in enumerate(safe_nodes) for o in n.outputs}
    safe_readers = {v for n in safe_nodes for v in n.inputs}
    returned = set(fn.graph_outputs) | set(fn.graph_updates)
    feeds = []
    for i, node in enumerate(safe_nodes):
        if i in skipped:
            continue
        if not isinstance(node.op, StepHyper):
            if not covered(node):
                return None
            continue
        (t,) = node.inputs
        p = producer.get(t)
        if p is None or isinstance(safe_nodes[p].op, StepHyper) or not all(
                _is_leaf(v) for v in safe_nodes[p].inputs):
            return None
        if node.outputs[0] in safe_readers or node.outputs[0] in returned:
            return None
        feeds.append((i, p))
    return feeds


def build(fn):
    """The fused step of compiled function ``fn`` (``compile.Function``), or None when
    it is not covered (see the module note)."""
    driver = getattr(fn, "update_driver", None)
    if (driver is None or fn.mode.linker != "jit" or fn.backend.name != "numba"
            or fn.flush_first or "fused_step" in fn.mode.exclude):
        return None
    safe_nodes = fn.nodes[: fn.n_safe]
    if not safe_nodes:
        return None
    slot = _var_slots(fn)
    var_of = {s: v for v, s in slot.items()}
    catch_ups = _catch_ups(safe_nodes, driver, var_of)
    if catch_ups is None:
        return None
    if any(v is not None for v in fn.output_shared) or any(
            isinstance(v.type, (CSRType, RowSparseType)) or v.ndim > 2
            for v in fn.graph_outputs):
        return None
    for target, _, in_place in fn.update_slots:
        if not in_place and np.dtype(target.type.dtype).kind == "f":
            return None  # a dense float update: its finiteness check sits between the phases
    feeds = _hyper_feeds(fn, safe_nodes, catch_ups)
    if feeds is None:
        return None
    for e in driver.entries:
        if var_of[e.tables[0]].ndim not in (1, 2):
            return None
    try:
        return FusedStep(fn, safe_nodes, feeds, catch_ups, slot, var_of, driver)
    except _NotCovered:
        return None


#: the fused scatter kernels and their variants that leave the rows unsorted
_ANY_ORDER = {"FusedCSRScatterGrad": [("_v = F._scatter_grad(", "_v = J.scatter_grad_any_order(")],
              "FusedCSRScatterSums": [("_val = F._scatter_sums(",
                                       "_val = J.scatter_sums_any_order("),
                                      ("_val = F._scatter_sums2(",
                                       "_val = F._scatter_sums2_any_order(")]}


def _rows_in_any_order(src, fn, nodes, name_of):
    """``src`` with the fused scatter kernels whose gradient only this step's row updates
    read (through ``PrepareRows``) writing their rows unsorted: the update of a row does
    not depend on the order of the rows (the same values, bitwise), and sorting the
    distinct columns of a batch costs more than finding them."""
    from minigrad.optim.ops import PrepareRows, RowUpdate

    readers = {}
    for node in fn.nodes:
        for v in node.inputs:
            readers.setdefault(v, []).append(node)
    returned = set(fn.graph_outputs) | set(fn.graph_updates)
    for node in nodes:
        swap = _ANY_ORDER.get(type(node.op).__name__)
        out = node.outputs[0]
        if swap is None or out in returned:
            continue
        prep = readers.get(out, [])
        if not prep or not all(
                isinstance(p.op, PrepareRows) and p.inputs[0] is out
                and p.outputs[0] not in returned
                and all(isinstance(r.op, RowUpdate) for r in readers.get(p.outputs[0], []))
                for p in prep):
            continue
        for parts in swap:
            old, new = (f"{name_of(out)}_idx, {name_of(out)}{part}" for part in parts)
            if src.count(old) == 1:
                src = src.replace(old, new)
    return src


class _NotCovered(Exception):
    pass


class _HyperValues:
    """The ``[lr, weight_decay]`` of the ``StepHyper`` nodes that share one tuple of
    slots (an optimizer's parameters usually do), for this call.

    While every slot holds a plain float (no schedule, no shared value), that is one
    array, the same for every member and between calls as long as each slot holds the
    same float object (``HyperSlot.set`` makes a new one, so a change between calls is
    seen): :meth:`cached` returns it after one identity check per slot. Otherwise
    (:meth:`compute`) each member's thunk runs on its own step number (its producer, the
    step counter plus one, run here too)."""

    __slots__ = ("slots", "members", "key", "value")

    def __init__(self, slots, members):
        self.slots, self.members = slots, members  # members: [(producer, thunk)]
        self.key, self.value = (), None

    def cached(self):
        """The members' shared value while the slots hold the floats it was made of,
        else None."""
        key = self.key
        if not key:
            return None
        for slot, k in zip(self.slots, key):
            if slot.source is not k:
                return None
        return self.value

    def compute(self, inputs):
        """Each member's value, ``inputs`` holding each member's producer inputs."""
        key = tuple(slot.source for slot in self.slots)
        if all(type(k) is float for k in key):  # (checked finite and >= 0 when set)
            self.key, self.value = key, np.array(key, dtype=np.float64)
            return (self.value,) * len(self.members)
        self.key = ()
        out = []
        for (producer, thunk), ins in zip(self.members, inputs):
            (t,) = producer(ins)
            out.append(thunk((t,))[0])
        return tuple(out)


class _SlotMap:
    """The slot map of one fused scatter of this step, kept between calls: every call
    holds ``call_checks.CALL_LOCK``, so no two calls of the step use it at once, and the
    kernels reset every slot they set (V-long int32, all -1 between calls)."""

    __slots__ = ("map",)

    def __init__(self):
        self.map = np.empty(0, dtype=np.int32)

    def sized(self, n_rows):
        """The map for a table of ``n_rows`` rows (a new one when the table changed)."""
        if self.map.shape[0] != n_rows:
            from kernels.cpu.fused import new_slot_map

            self.map = new_slot_map(n_rows)
        return self.map


class FusedStep:
    """One function's step as one compiled call (see the module note); built once."""

    TWO_PHASES = TWO_PHASES

    def __init__(self, fn, safe_nodes, feeds, catch_ups, slot, var_of, driver):
        from kernels.cpu import update_driver as drv
        from minigrad.linker_jit import _entry_parts, _Segment, load_segments

        def name_of(var):
            return f"v{slot[var]}"

        self.var_labels = [e.var for e in driver.entries]
        self.nan_guard = fn.nan_guard
        #: per exact-mode entry, its state: after a call, every row is at step ``t``
        self.exact_states = [e.state for e in driver.entries if e.exact]
        self.pending_states = list(fn._pending_states)
        self._guard_vars = [var_of[s] for s in fn.guard_slots] if fn.nan_guard else []
        #: the fused ``CatchUpAll`` nodes: (param, last, step) variables and output
        self._catch_ups = [(safe_nodes[i].inputs[0], safe_nodes[i].inputs[-2],
                            safe_nodes[i].inputs[-1], safe_nodes[i].outputs[0])
                           for i in catch_ups]
        skipped = {i for i, _ in feeds} | set(catch_ups)
        covered_idx = [i for i in range(len(safe_nodes)) if i not in skipped]
        consts = dict(fn.constants)
        # what the tail reads or returns: the updates' gradients and step numbers, the
        # outputs and the assigned values (step counters)
        self.out_vars = list(fn.graph_outputs)
        self.assigned = [(target, s) for target, s, in_place in fn.update_slots
                         if not in_place]
        needed = set(self.out_vars) | {var_of[s] for _, s in self.assigned}
        for e in driver.entries:
            needed |= {var_of[e.grad], var_of[e.t]}
        seg = _Segment(0, covered_idx, safe_nodes, needed, consts)
        hyper_names = [f"h{e.hyper}" for e in driver.entries]
        # the tables the updates write and what the catch-up checks read: inputs too (a
        # table read through its CatchUpAll only is not an input of the segment's nodes)
        extra_inputs = [var_of[s] for e in driver.entries for s in e.tables]
        extra_inputs += [v for param, last, t, _ in self._catch_ups for v in (last, t)]
        for v in extra_inputs:
            if v not in seg.inputs:
                if not _is_leaf(v):
                    raise _NotCovered  # (never seen: tables are shared variables)
                seg.inputs.append(v)
        extra = list(dict.fromkeys(hyper_names)) + ["guard"]

        def tail(vals):
            return self._tail_lines(vals, driver, var_of, drv)

        src, slot_args, vals = seg.source(name_of, extra_params=extra, tail=tail)
        src = _rows_in_any_order(src, fn, seg.nodes, name_of)
        self._scalar = [vals[v].is_scalar for v in self.out_vars]
        self._assigned_targets = [(target, np.dtype(target.type.dtype))
                                  for target, _ in self.assigned]
        self._dtypes = [np.dtype(v.type.dtype) for v in self.out_vars]
        from minigrad.linker_jit import _PRELUDE

        module_source = _PRELUDE + "\n\n" + src
        module, path = load_segments(module_source)
        from minigrad.backends.jit_calls import BoundSegment

        namespace = {f"v{s}": v for s, v in consts.items()}
        namespace["s0"] = BoundSegment(module.segment0)
        lines = []
        # a fused CatchUpAll passes its table on (the compiled call checks that no row lags)
        for param, _, _, out in self._catch_ups:
            lines.append(f"    v{slot[out]} = v{slot[param]}")
        # StepHyper first, in Python: a schedule or a shared value is read every call;
        # the nodes sharing one tuple of slots share one _HyperValues
        groups = {}
        for i, p in feeds:
            (_, ins, _), (_, _, outs) = fn.safe_program[p], fn.safe_program[i]
            args = ", ".join(f"v{s}" for s in ins) + ("," if len(ins) == 1 else "")
            key = tuple(map(id, safe_nodes[i].op.slots))
            groups.setdefault(key, (safe_nodes[i].op.slots, []))[1].append(
                ((fn.safe_program[p][0], fn.safe_program[i][0]), f"v{outs[0]}", f"({args})"))
        for g, (slots, members) in enumerate(groups.values()):
            namespace[f"H{g}"] = _HyperValues(slots, [m[0] for m in members])
            names = ", ".join(m[1] for m in members)
            lines += [f"    h = H{g}.cached()",
                      "    if h is None:",
                      f"        {names}, = H{g}.compute(({', '.join(m[2] for m in members)},))",
                      "    else:",
                      f"        {' = '.join(m[1] for m in members)} = h"]
        args = [p for v in seg.inputs for p in _entry_parts(vals[v])]
        for j, (sname, rows) in enumerate(slot_args):
            namespace[f"S{j}"] = _SlotMap()
            lines.append(f"    {sname} = S{j}.map")
            lines.append(f"    if {sname}.shape[0] != {rows}:")
            lines.append(f"        {sname} = S{j}.sized(int({rows}))")
            args.append(sname)
        for dtype in seg.likes:
            namespace[f"_L_{dtype}"] = np.empty(0, dtype=dtype)
            args.append(f"_L_{dtype}")
        args += [f"v{name[1:]}" for name in dict.fromkeys(hyper_names)] + ["guard"]
        lines.append(f"    return s0({', '.join(args)})")
        self.live_in = list(fn.safe_in)
        head = f"def fused_step({', '.join(f'v{s}' for s in self.live_in)}, guard):"
        py_source = "\n".join([head, *lines]) + "\n"
        filename = f"<minigrad fused step #{next(_serial)}>"
        code = compile(py_source, filename, "exec")
        linecache.cache[filename] = (len(py_source), None, py_source.splitlines(True),
                                     filename)
        exec(code, namespace)  # noqa: S102 - our own generated source
        self._run = namespace["fused_step"]
        self.dispatcher = module.segment0
        self.source = py_source + f"\n# ---- compiled step ({path or 'in memory'}) ----\n" \
            + module_source.replace("cache=CACHE", f"cache={path is not None}")
        self.enabled = True
        self.fallbacks = []

    # --- the generated tail: each parameter's row update ---------------------------------
    def _tail_lines(self, vals, driver, var_of, drv):
        # array outputs are copied first: one could be a view of a table written below
        lines = [f"{vals[v].name}_out = {vals[v].name}.copy()" for v in self.out_vars
                 if not vals[v].is_scalar]
        returned = self._returned(vals, var_of, driver)
        # nothing is written unless every check passes: nan_guard's, then no exact-mode row
        # lags (CatchUpAll's test on its table, the driver's on the rows updated)
        lines += self._finite_check(vals, driver, var_of, returned)
        lags = [f"J.table_lags({vals[last].name}, {vals[t].name})"
                for _, last, t, _ in self._catch_ups]
        lags += [f"J.rows_lag({vals[var_of[e.tables[-1]]].name}, {vals[var_of[e.grad]].name}_idx, "
                 f"{vals[var_of[e.t]].name})" for e in driver.entries if e.exact]
        if lags:
            lines.append(f"if {' or '.join(lags)}:")
            lines.append(f"    return ({CATCH_UP}, -1{returned})")
        # every view, cast and scratch of every update first: nothing below may fail (an
        # allocation) once a row is written
        lines.append("# the row updates (update_driver.step_rows' loops, in its order)")
        writes = []
        done = []  # the restore_rows arguments of the entries before
        for k, e in enumerate(driver.entries):
            kind, consts = int(driver.kinds[k]), [float(c) for c in driver.fl[k, 2:]]
            u = f"u{k}"
            n_tables = 1 + e.n_states
            table_names = []
            for s in e.tables[:n_tables]:
                v = vals[var_of[s]]
                table_names.append(v.name if var_of[s].ndim == 2
                                   else f"J.rows_of_vector({v.name})")
            grad = vals[var_of[e.grad]]
            lines.append(f"# update of {e.var} ({'Adam' if kind == drv.ADAM else 'SGD'}, "
                         f"{'exact' if e.exact else 'lazy'})")
            lines.append(f"{u}_P = {table_names[0]}")
            states = table_names[1:]
            for j, name in enumerate(states):
                lines.append(f"{u}_S{j} = {name}")
            lines.append(f"{u}_I = {grad.name}_idx")
            values = f"{grad.name}_val"
            if var_of[e.tables[0]].ndim == 1:
                values = f"J.rows_of_vector(J.contiguous({values}))"
            lines.append(f"{u}_G = {values}")
            lines.append(f"{u}_n = {u}_I.shape[0]")
            lines.append(f"{u}_SP = J.guard_rows({u}_P, {u}_n, guard)")
            for j in range(e.n_states):
                lines.append(f"{u}_SS{j} = J.guard_rows({u}_S{j}, {u}_n, guard)")
            lines.append(f"{u}_none = J.guard_rows({u}_P, 0, guard)")
            if e.exact:
                lines.append(f"{u}_L = {vals[var_of[e.tables[-1]]].name}")
                lines.append(f"{u}_SL = J.guard_last({u}_n, guard)")
            lines.append(f"{u}_st = J.update_status()")
            t = vals[var_of[e.t]].name
            h = f"h{e.hyper}"
            last = (f"{u}_L, " if e.exact else "")
            saved_last = (f", {u}_SL" if e.exact else "")
            exact = "exact_" if e.exact else ""
            if kind == drv.ADAM:
                b1, b2, eps, decoupled = consts
                writes.append(
                    f"{u}_bad = J.step_{exact}adam_rows({u}_P, {u}_S0, {u}_S1, {last}{u}_I, "
                    f"{u}_G, {t}, {h}, {b1!r}, {b2!r}, {eps!r}, {decoupled != 0.0}, guard, "
                    f"{u}_SP, {u}_SS0, {u}_SS1{saved_last}, {u}_st)")
                names = (f"{u}_S0", f"{u}_S1", f"{u}_SS0", f"{u}_SS1")
            else:
                mu, damp, nesterov, _ = consts
                buf, sbuf = ((f"{u}_S0", f"{u}_SS0") if e.n_states else (f"{u}_P", f"{u}_none"))
                writes.append(
                    f"{u}_bad = J.step_{exact}momentum_rows({u}_P, {buf}, {last}{u}_I, {u}_G, "
                    f"{t}, {h}, {mu!r}, {damp!r}, {nesterov != 0.0}, guard, {u}_SP, "
                    f"{sbuf}{saved_last}, {u}_st)")
                names = (buf, f"{u}_P", sbuf, f"{u}_none")
            if e.exact:
                rec = ("J.restore_exact_rows", f"{u}_P", names[0], names[1], f"{u}_L",
                       f"{u}_I", f"{u}_SP", names[2], names[3], f"{u}_SL", f"{u}_st")
            else:
                rec = ("J.restore_rows", f"{u}_P", names[0], names[1], f"{u}_I", f"{u}_SP",
                       names[2], names[3], f"{u}_st")
            writes.append(f"if {u}_bad >= 0:")
            for r in [rec, *reversed(done)]:  # this entry's written rows, then those before
                writes.append(f"    {r[0]}({', '.join(r[1:])})")
            writes.append(f"    return ({k}, {u}_I[{u}_bad]{returned})")
            done.append(rec)
        writes.append(f"return (-1, -1{returned})")
        return lines + writes, None

    def _finite_check(self, vals, driver, var_of, returned):
        """``nan_guard=True``: the lines returning :data:`NOT_FINITE` (nothing written)
        when an output, a gradient or a step's hyperparameters hold a non-finite value
        (what the two-phase path checks between its phases, ``Function._all_finite``)."""
        if not self.nan_guard:
            return []
        hyper = {e.hyper for e in driver.entries}
        tests = []
        for var in self._guard_vars:
            if np.dtype(var.type.dtype).kind != "f":
                continue
            val = vals.get(var)
            if val is None and var.owner is not None and var.owner.op.destroy_map:
                continue  # an in-place update's result: written below, checked there
            if val is None:
                slot = next((h for h in hyper if var_of[h] is var), None)
                if slot is None:
                    raise _NotCovered  # a guarded value the call does not see (never seen)
                tests.append(f"J.all_finite(h{slot})")
            elif val.is_rowsparse:
                tests.append(f"J.all_finite({val.name}_val)")
            elif val.is_scalar:
                tests.append(f"np.isfinite({val.name})")
            else:
                tests.append(f"J.all_finite({val.name})")
        if not tests:
            return []
        return [f"if not ({' and '.join(tests)}):", f"    return ({NOT_FINITE}, -1{returned})"]

    def _returned(self, vals, var_of, driver):
        parts = [vals[v].name + ("" if vals[v].is_scalar else "_out") for v in self.out_vars]
        parts += [vals[var_of[s]].name for _, s in self.assigned]
        # each exact-mode entry's step and [lr, wd]: its history restarts there (Python)
        parts += [p for e in driver.entries if e.exact
                  for p in (vals[var_of[e.t]].name, f"h{e.hyper}")]
        return "".join(f", {p}" for p in parts)

    # --- a call --------------------------------------------------------------------------
    def execute(self, fn, storage):
        """Run the step on the loaded ``storage``; returns the call's result, or
        :data:`TWO_PHASES` when the compiled call could not run (nothing was written)."""
        try:
            result = self._run(*[storage[s] for s in self.live_in], fn.update_guard)
        except Exception as err:  # raised before any write: the two-phase path, thunks
            return self._thunks_instead(fn, storage, err)
        code = result[0]
        if code != -1:
            return self._not_done(fn, code, result)
        n_out, n_assigned = len(self.out_vars), len(self.assigned)
        outputs = []
        handed_out = set()
        for value, scalar, dtype in zip(result[2:2 + n_out], self._scalar, self._dtypes):
            if scalar:  # a new 0-d array: it aliases nothing
                outputs.append(np.asarray(value, dtype=dtype))
            else:
                outputs.append(fn._export(value, -1, handed_out))
        for (target, dtype), value in zip(self._assigned_targets, result[2 + n_out:]):
            target._value = np.asarray(value, dtype=dtype)
        steps = result[2 + n_out + n_assigned:]
        for k, state in enumerate(self.exact_states):  # every row is now at step t
            t, hyper = steps[2 * k], steps[2 * k + 1]
            state.stepped_every_row(t, hyper[0], hyper[1])
        for state in self.pending_states:
            state.flush_module = fn._kernels  # (as the two-phase path records)
        return pack_outputs(fn.output_structure, outputs)

    def _not_done(self, fn, code, result):
        """The call wrote nothing (or put back what it wrote): a non-finite update of
        entry ``code`` (the row in ``result[1]``), nan_guard's finding, or a lagging
        exact-mode row (then the two-phase path runs the step, catching the row up)."""
        if code == CATCH_UP:
            return TWO_PHASES
        if code == NOT_FINITE:
            return fn._on_nan()
        from minigrad.call_checks import _not_finite

        err = _not_finite(fn._label(), self.var_labels[code], f" (row {int(result[1])})")
        if fn.on_nan == "raise":
            raise err
        warnings.warn(f"{err} (step skipped)", RuntimeWarning, stacklevel=5)
        return None

    def _thunks_instead(self, fn, storage, err):
        from numba.core.errors import NumbaError

        if isinstance(err, NumbaError):
            self.enabled = False  # cannot type or compile: the two-phase path from now on
            return TWO_PHASES
        ns = getattr(fn._safe_run, "namespace", {})
        flags = {k: v for k, v in ns.items() if k.startswith("jit") and k[3:].isdigit()}
        ns.update(dict.fromkeys(flags, False))  # the thunks raise the reference's error
        try:
            result = fn._run_phases(storage)
        finally:
            ns.update(flags)
        self.fallbacks.append(repr(err))
        warnings.warn(f"jit linker: the compiled step failed ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); its Python thunks "
                      "computed the result", RuntimeWarning, stacklevel=4)
        return result


__all__ = ["FusedStep", "TWO_PHASES", "build"]
