"""What a compiled call checks around the graph it runs (issue 15).

``compile.py`` keeps the VM; the policies of a *call* live here so that they survive any
reshaping of the compiler (interpreted thunks today, generated code later):

* **one call at a time** (:data:`CALL_LOCK`): compiled functions may be called from several
  threads; calls, flushes and ``set_value`` are serialized by one process-wide re-entrant
  lock, so a step counter never loses an increment and two steps never interleave their
  row updates. Parallel speed-up comes from processes (``mg.parallel.hogwild``) or from the
  kernels' own threads, not from calling one model from many Python threads;
* **output structure**: a variable, a list, a tuple or a dict of variables comes back with
  the same structure; anything else is refused when compiling;
* **empty batches**: a step on an empty input is refused before anything runs; a function
  without updates runs on it and returns what NumPy defines (a mean over no rows is NaN)
  without NumPy's raw warnings (:func:`quiet_empty_batch`);
* **destinations**: every array an in-place node will write is checked (host or device
  array, C-contiguous, writeable, the variable's dtype) before the first write;
* **non-finite updates** (:class:`GuardedPhase`): an optimizer's row kernel saves the
  rows it overwrites into its node's scratch and checks them as it writes;
  any other in-place node's rows are snapshotted and checked here. When a NaN or inf
  appears, every write of the call is restored (in reverse order), so a non-finite update
  never reaches a parameter and a failed call changes nothing.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import warnings
import weakref

import numpy as np

from minigrad.graph import Variable
from minigrad.types import RowSparse, array_module

#: serializes compiled calls, flushes and set_value process-wide (see the module note)
CALL_LOCK = threading.RLock()


# --- output structure -----------------------------------------------------------------


def split_outputs(outputs):
    """``(structure, variables)``: how to rebuild the result, and the flat list of outputs.

    A non-variable output (a dict inside a list, a string, an array) is refused here: it
    would otherwise become a constant object array holding the symbolic variable.
    """
    if outputs is None:
        return ("none", None), []
    if isinstance(outputs, dict):
        keys = list(outputs)
        items = [(repr(k), outputs[k]) for k in keys]
        structure = ("dict", keys)
    elif isinstance(outputs, (list, tuple)):
        items = [(str(i), o) for i, o in enumerate(outputs)]
        structure = (type(outputs).__name__, None)
    else:
        items = [("0", outputs)]
        structure = ("single", None)
    for label, out in items:
        if not isinstance(out, Variable):
            raise TypeError(
                f"output {label} is a {type(out).__name__}, not a symbolic variable; outputs "
                "are a variable, or a list, tuple or dict of variables"
            )
    return structure, [o for _, o in items]


def pack_outputs(structure, values):
    """Rebuild the caller's structure from the flat list of computed ``values``."""
    kind, keys = structure
    if kind == "none":
        return None
    if kind == "single":
        return values[0]
    if kind == "dict":
        return dict(zip(keys, values))
    if kind == "tuple":
        return tuple(values)
    return list(values)


# --- inputs ----------------------------------------------------------------------------


def check_not_empty(inputs, values, label):
    """Refuse a step on an empty batch: it has no defined gradient (a mean over nothing is
    NaN) and must not move any parameter or step counter."""
    for i, (var, value) in enumerate(zip(inputs, values)):
        shape = getattr(value, "shape", ())
        if len(shape) and shape[0] == 0:
            name = f"input {i}" + (f" ({var.name!r})" if var.name else "")
            raise ValueError(
                f"{label}: {name} is an empty batch (shape {tuple(shape)}); a step on no "
                "data is undefined (its mean cost is NaN), so nothing was run or changed"
            )


def has_empty_batch(values):
    """Whether some input value has no rows (length 0 along its first axis)."""
    for value in values:
        shape = getattr(value, "shape", ())
        if len(shape) and shape[0] == 0:
            return True
    return False


@contextlib.contextmanager
def quiet_empty_batch():
    """Around a call on an empty batch (no updates): NumPy's "Mean of empty slice" and
    0/0 warnings are what the NaN result already says; they are not passed on."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        yield


# --- destinations ----------------------------------------------------------------------


def check_destinations(targets, storage, label, checked=None):
    """Every array an in-place node will write, checked before the first write.

    ``targets``: ``(shared variable, slot)`` pairs. ``set_value`` keeps these invariants;
    this catches a value assigned behind its back (or a view handed in by other code) so
    that the destructive phase can never stop half way on an unwritable table.

    ``checked``: a list (one entry per target, kept by the caller between calls) of weak
    references to the arrays that passed; an array that is *the same object* as the one
    that passed last time is not checked again (~1.5 us a table: 20 us of the embedding
    step). Every way of replacing a shared value (``set_value``, a worker's view, a load)
    gives it a new object, which is checked; a weak reference dies with its array, so a
    new array can never pass for a freed one that had the same ``id``. (Only a flag
    flipped in place on the checked array itself, ``a.flags.writeable = False``, is not
    seen; the write then still lands in the array's own, valid memory.)
    """
    for k, (var, s) in enumerate(targets):
        value = storage[s]
        if checked is not None and checked[k]() is value:
            continue
        device = hasattr(value, "__cuda_array_interface__")
        if not (device or isinstance(value, np.ndarray)):
            raise TypeError(f"{label}: {var} holds a {type(value).__name__}, not an array")
        problem = None
        if value.dtype != _np_dtype(var.type.dtype):  # dtype objects: no str() per call
            problem = f"has dtype {value.dtype}, expected {var.type.dtype}"
        elif not value.flags.c_contiguous:
            problem = "is not C-contiguous"
        elif not device and not value.flags.writeable:
            problem = "is read-only"
        if problem:
            raise ValueError(
                f"{label}: {var} {problem}, so it cannot be updated in place; nothing was "
                f"changed (give it a fresh array with {var}.set_value(...))"
            )
        if checked is not None:
            checked[k] = _weak(value)


def _dead():
    return None


def destination_record(targets):
    """The ``checked`` list of :func:`check_destinations` for ``targets``: nothing yet."""
    return [_dead] * len(targets)


def _weak(value):
    try:
        return weakref.ref(value)
    except TypeError:  # an array type without weak references: checked at every call
        return _dead


_DTYPES = {}


def _np_dtype(name):
    dtype = _DTYPES.get(name)
    if dtype is None:
        dtype = _DTYPES[name] = np.dtype(name)
    return dtype


# --- guarded destructive phase ---------------------------------------------------------


def _touched_rows(node_inputs):
    """Row indices an in-place row update writes: those of its row-sparse input."""
    for value in node_inputs:
        if isinstance(value, RowSparse):
            return value.indices
    return None  # unknown: the whole table is snapshotted


def _finite(xp, a):
    return a.dtype.kind != "f" or bool(xp.isfinite(a).all())


def _rows_finite(table, rows, kernels=None):
    """``table[rows]`` all finite, with the kernel module of the call's backend."""
    if table.dtype.kind != "f":
        return True
    if rows is None:
        return _finite(array_module(table), table)
    if isinstance(table, np.ndarray) and hasattr(kernels, "rows_finite"):
        return kernels.rows_finite(table, rows)
    xp = array_module(table)
    return bool(xp.isfinite(xp.take(table, rows, axis=0)).all())


class _Snapshot:
    """Saved rows (or a whole table) of a node that does not check its own writes."""

    __slots__ = ("table", "rows", "saved")

    def __init__(self, table, rows):
        self.table, self.rows = table, rows
        self.saved = table.copy() if rows is None else array_module(table).take(table, rows,
                                                                                 axis=0)

    def restore(self):
        if self.rows is None:
            self.table[...] = self.saved
        else:
            self.table[self.rows] = self.saved


def _not_finite(label, var, where=""):
    return FloatingPointError(
        f"{label}: the update of {var}{where} is not finite (NaN or inf); the step was "
        "undone and no shared variable was changed (nan_guard=False skips this check)"
    )


class _RowUpdateStep:
    """A row update whose kernel saves and checks the rows it writes (``RowUpdate``):
    its own ``RowGuard`` (built once, with the function) is the node's undo record. The
    op is called directly with the function's kernel module and the guard: the same call
    its backend thunk makes, plus the guard; or, where ``direct_updates`` covers the node
    (``direct=True``), straight into its compiled row loop without re-checking what the
    call's prologue and ``PrepareRows`` checked."""

    __slots__ = ("op", "ins", "outs", "kernels", "guard", "var", "call")

    def __init__(self, node, ins, outs, kernels, direct=False):
        from kernels.row_guard import RowGuard
        from minigrad.direct_updates import direct_update

        self.op, self.ins, self.outs, self.kernels = node.op, ins, outs, kernels
        self.guard, self.var = RowGuard(), node.inputs[0]
        self.call = (direct and direct_update(node, kernels)) or functools.partial(
            node.op.run, kernels)

    def run(self, storage, label):
        results = self.call([storage[i] for i in self.ins], self.guard)
        if self.guard.status[1] >= 0:
            raise _not_finite(label, self.var, f" (row {self.guard.bad_row()})")
        for s, r in zip(self.outs, results):
            storage[s] = r

    def restore(self):
        self.guard.restore()

    def release(self):
        self.guard.release()


class _SnapshotStep:
    """Any other in-place node: copy the rows it will overwrite in each destroyed table
    (``rows`` of a row-sparse input, else the whole table), run it, check those rows."""

    __slots__ = ("node", "thunk", "ins", "outs", "kernels", "destroyed", "snapshots")

    def __init__(self, node, thunk, ins, outs, kernels):
        self.node, self.thunk, self.ins, self.outs, self.kernels = node, thunk, ins, outs, kernels
        self.destroyed = sorted(set(node.op.destroy_map.values()))
        self.snapshots = []

    def run(self, storage, label):
        values = [storage[i] for i in self.ins]
        rows = _touched_rows(values)
        self.snapshots = snapshots = []
        for pos in self.destroyed:
            snapshots.append(_Snapshot(values[pos], rows))
        results = self.thunk(values)
        for pos in self.destroyed:
            if not _rows_finite(values[pos], rows, self.kernels):
                raise _not_finite(label, self.node.inputs[pos])
        for s, r in zip(self.outs, results):
            storage[s] = r

    def restore(self):
        for snapshot in reversed(self.snapshots):
            snapshot.restore()
        self.snapshots = []

    def release(self):
        self.snapshots = []


class GuardedPhase:
    """The destructive phase of one function with the NaN guard on, built once.

    Optimizer row updates check themselves: their kernels save the old rows into the
    node's ``RowGuard`` and check the new ones as they write them (no gather, no second
    scan). Other in-place nodes are snapshotted and scanned here. Per call this costs one
    Python call per node on top of the node's own work; the saved rows are O(rows
    touched) and the restore (in reverse write order) runs only on failure. A failure
    raises ``FloatingPointError`` naming the table (the state is then exactly as before
    the call); any other exception also undoes every write of the phase and propagates.
    """

    def __init__(self, nodes, program, kernels=None, direct=False):
        self._steps = [
            _RowUpdateStep(node, ins, outs, kernels, direct)
            if getattr(node.op, "checks_own_writes", False)
            else _SnapshotStep(node, thunk, ins, outs, kernels)
            for node, (thunk, ins, outs) in zip(nodes, program)
        ]

    def __call__(self, storage, label):
        steps = self._steps
        ran = 0
        try:
            for step in steps:
                step.run(storage, label)
                ran += 1
        except BaseException:
            for step in reversed(steps[: ran + 1]):  # the failed step, then those before
                step.restore()
            raise
        for step in steps:
            step.release()


def dense_updates_finite(update_slots, storage):
    """Whether every float value about to replace a shared variable is finite."""
    for _target, s, in_place in update_slots:
        if in_place:
            continue
        value = storage[s]
        if getattr(getattr(value, "dtype", None), "kind", "") == "f" and not _finite(
            array_module(value), value
        ):
            return False
    return True
