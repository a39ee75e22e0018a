"""Checks once: every index input is range-checked in one prologue, before anything runs.

The graph knows which input indexes which table: a ``Take(table, idx)`` node whose ``idx``
is a declared input and whose ``table`` is a shared variable (possibly read through an
exact-mode ``CatchUpAll``) needs ``0 <= idx < rows(table)``; a ``PickColumns(logits, labels)``
(cross-entropy) needs ``0 <= labels < columns(logits)``, and the number of columns of the
logits is usually known from a shared weight matrix (``r @ W + c``). The prologue checks
each such input once per call against its tightest bound (``kernels._validate.
check_index_range``, the one range check of minigrad and its kernels) and raises the same
``IndexError`` the node would have raised, but *before* any node ran. A CSR batch is
checked whole (structure and column range) by ``CSRType.filter`` at the input boundary.

**The one "already checked" mechanism.** What the prologue established travels as one
mark, in the three places code can look for it; nothing else may skip a check:

* on a **node**: :func:`mark_checked` (the compiled graph's nodes are the compiler's own
  copies), read with :func:`is_checked` by every backend: a marked ``Take`` skips its
  range check, the fused CSR kernels (``FusedCSRGatherSum``, ``FusedCSRScatterGrad``,
  ``...Sums``) run their ``*_trusted`` / ``trusted=True`` variants, and the gradients of
  checked gathers (``TakeGrad``, ``SlotTakeGrad``) build their rows without a scan;
* on a **value**: a ``RowSparse`` made by compiled code from such parts
  (``RowSparse.trusted``) has ``checked`` set; ``RowSparse(...)`` checks its indices
  itself and leaves it unset (so anything a user builds, or mutates and rebuilds, is
  checked again where it enters a kernel);
* on a **kernel call**: ``trusted=True`` (``ParamState.run`` / ``catch_up``, the row and
  fused kernels), passed only for a value that carries the mark (``RowUpdate``:
  ``grad.checked and grad.coalesced``) or rows compiled code made itself (``arange``,
  ``nonzero``); a row update whose gradient is ``PrepareRows``' value (which carries the
  mark) is what ``direct_updates.vouched`` lets skip the kernel wrapper's checks
  (``direct_updates.py``, ``update_driver.py``, ``fused_step.py``).

Kernels called by users take the default (``trusted=False``) and validate everything:
a bad index is a clear error, never an out-of-bounds write (``tests/test_checks_once.py``
checks every public entry point, and counts that a compiled call checks each index once).
"""
from __future__ import annotations

from kernels import _validate as V
from minigrad.variables import SharedVariable


def mark_checked(node):
    """Record that the prologue vouches for ``node``'s index input (see the module note)."""
    node.index_checked = True


def is_checked(node):
    """Whether ``node``'s index input was checked by its call's prologue, so its thunk and
    the kernels it calls skip their own scan (the one test every backend asks)."""
    return bool(getattr(node, "index_checked", False))


def _param_of(var):
    """The shared variable whose rows ``var`` holds (through catch-up nodes), or ``None``."""
    while var.owner is not None and type(var.owner.op).__name__ == "CatchUpAll":
        var = var.owner.inputs[0]
    return var if isinstance(var, SharedVariable) else None


def _param_of_shape(shape_var):
    """The shared variable ``shape_var`` is the shape of (``Shape(param)``), or ``None``."""
    from minigrad.ops.shape import shape_source

    source = shape_source(shape_var)
    return None if source is None else _param_of(source)


def _dim(var, axis, depth=0):
    """A callable giving ``var.shape[axis]`` at call time from shared values, or ``None``.

    A tiny shape inference, enough for the bounds of index inputs: static lengths, shared
    variables, element-wise ops (broadcasting), matrix products and row gathers.
    """
    from minigrad.ops.elemwise import Cast, Elemwise
    from minigrad.ops.indexing import Take
    from minigrad.ops.linalg import MatMul
    from minigrad.ops.nn import LogSoftmax, Softmax

    if depth > 20 or axis >= var.ndim:
        return None
    static = var.type.shape[axis] if hasattr(var.type, "shape") else None
    if static is not None:
        return lambda: static
    param = _param_of(var)
    if param is not None:
        return lambda: param.value.shape[axis]
    node = var.owner
    if node is None:
        return None
    if isinstance(node.op, (Softmax, LogSoftmax, Cast)):  # the shape of their input
        return _dim(node.inputs[0], axis, depth + 1)
    if isinstance(node.op, Elemwise):
        offset = var.ndim - axis
        for x in node.inputs:
            if x.ndim >= offset and x.type.shape[x.ndim - offset] != 1:
                found = _dim(x, x.ndim - offset, depth + 1)
                if found is not None:
                    return found
        return None
    if isinstance(node.op, MatMul) and axis == var.ndim - 1 and node.inputs[1].ndim >= 2:
        b = node.inputs[1]
        return _dim(b, b.ndim - 1, depth + 1)
    if isinstance(node.op, Take) or type(node.op).__name__ == "FreshTake":
        table, idx = node.inputs[0], node.inputs[-1]  # FreshTake(param, ..., idx)
        if axis >= idx.ndim:
            return _dim(table, axis - idx.ndim + 1, depth + 1)
    return None


class Prologue:
    """The index checks of one compiled function; call it with the filtered inputs."""

    def __init__(self, nodes, inputs):
        from minigrad.ops.fused import FusedCSRGatherSum, FusedCSRScatterGrad, SlotTakeGrad
        from minigrad.ops.fused_products import FusedCSRGatherSums, FusedCSRScatterSums
        from minigrad.ops.indexing import Take, TakeGrad
        from minigrad.ops.nn import PickColumns
        from minigrad.optim.ops import FreshTake

        position = {var: k for k, var in enumerate(inputs)}
        checks = {}  # input position -> [(bound, message_fn)]
        self.csr_inputs = []  # positions of CSR inputs whose column indices are checked
        checked = set()  # (index variable, shared table) pairs known to be in range
        for node in nodes:
            if isinstance(node.op, (Take, FreshTake)):
                # FreshTake(param, states..., last, step, idx): an exact-mode table's gather
                table, idx = node.inputs[0], node.inputs[-1]
                param = _param_of(table)
                if param is None:
                    continue
                if idx in position:
                    checks.setdefault(position[idx], []).append(
                        (_rows_of(param), _take_message(idx, table, param)))
                elif not (self._csr_columns_in_range(idx, param, position)
                          or _row_sparse_indices_of(idx, param)):
                    continue
                mark_checked(node)
                checked.add((idx, param))
            elif isinstance(node.op, (FusedCSRGatherSum, FusedCSRScatterGrad,
                                      FusedCSRGatherSums, FusedCSRScatterSums)):
                # columns < X.shape[1] (the filter) and X.shape[1] == rows(T) (the op's own
                # O(1) check_columns): the kernels need not scan the batch again
                if self._csr_batch_vouched(node.inputs[getattr(node.op, "first_csr", 0)],
                                           position):
                    mark_checked(node)
            elif isinstance(node.op, PickColumns):
                logits, labels = node.inputs
                columns = _dim(logits, 1)
                if labels in position and columns is not None:
                    checks.setdefault(position[labels], []).append(
                        (columns, _label_message(labels)))
                    mark_checked(node)
        for node in nodes:  # gradients of checked gathers: their indices are the same
            if not isinstance(node.op, (TakeGrad, SlotTakeGrad)):
                continue
            idx, param = node.inputs[1], _param_of_shape(node.inputs[0])
            # the gather itself may have been fused away (FusedCSRGatherSum): the stored
            # columns of a checked CSR batch are valid rows all the same
            if (idx, param) in checked or (
                    param is not None and self._csr_columns_in_range(idx, param, position)):
                mark_checked(node)
        self.checks = sorted(checks.items())

    def _csr_columns_in_range(self, idx, param, position):
        """Whether ``idx = CSRColumns(X, W)`` holds valid rows of ``param``.

        ``CSRColumns`` checks ``X.shape[1] == rows(W)`` before the gather runs, so the
        columns are valid rows of ``W`` when ``X``'s column indices lie below ``X.shape[1]``:
        true by construction for a ``BagOfWords`` of the same table, and checked here once
        per call for a CSR input.
        """
        from minigrad.ops.sparse import CSRColumns

        node = idx.owner
        if node is None or not isinstance(node.op, CSRColumns):
            return False
        X, W_shape = node.inputs
        if _param_of_shape(W_shape) is not param:
            return False
        if X in position:
            if position[X] not in self.csr_inputs:
                self.csr_inputs.append(position[X])
            return True
        source = X.owner
        return (source is not None and type(source.op).__name__ == "BagOfWords"
                and _param_of_shape(source.inputs[2]) is param)

    def _csr_batch_vouched(self, X, position):
        """Whether the CSR batch ``X`` (or the CSR whose pattern it has, ``square(X)``)
        is a function input (validated whole by ``CSRType.filter``) or a ``BagOfWords``
        (which checks its token ids against its table)."""
        while X.owner is not None and getattr(X.owner.op, "same_pattern", False):
            X = X.owner.inputs[0]
        if X in position:
            if position[X] not in self.csr_inputs:
                self.csr_inputs.append(position[X])
            return True
        return X.owner is not None and type(X.owner.op).__name__ == "BagOfWords"

    def __bool__(self):
        return bool(self.checks)

    def __call__(self, values):
        # CSR inputs (``csr_inputs``) need nothing here: ``CSRType.filter`` checked their
        # structure and column range when the call validated its inputs
        for k, bounds in self.checks:
            sizes = [int(bound()) for bound, _ in bounds]
            # one check per input and call, against its tightest bound; the error is the
            # one of the first node the bad value would have failed in
            V.check_index_range(f"input {k}", values[k], min(sizes),
                                message=_first_failing(bounds, sizes))


#: row-sparse Ops whose value has the row count of their first input
_SAME_ROWS = ("RowSparseWithValues", "RowSparseCoalesce", "RowSparseReduceColumns",
              "RowSparseAdd")
#: row-sparse producers and the position of the table shape they take
_SHAPE_INPUT = {"TakeGrad": 0, "SlotTakeGrad": 0, "FusedCSRScatterGrad": 2}


def _row_sparse_indices_of(idx, param):
    """Whether ``idx`` is ``RowSparseIndices(rs)`` of a row-sparse value shaped like
    ``param`` (built from ``Shape(param)``): a ``RowSparse`` keeps its indices in
    ``[0, rows)`` (checked when it is built), so a gather of ``param`` by them is in range
    (``(V * g)[rows of g]``, the FM's gradient through ``V ** 2``)."""
    node = idx.owner
    if node is None or type(node.op).__name__ != "RowSparseIndices":
        return False
    node = node.inputs[0].owner
    while node is not None and type(node.op).__name__ in _SAME_ROWS:
        node = node.inputs[0].owner
    if node is None or type(node.op).__name__ not in _SHAPE_INPUT:
        return False
    return _param_of_shape(node.inputs[_SHAPE_INPUT[type(node.op).__name__]]) is param


def _first_failing(bounds, sizes):
    """``message(bad, _)`` of the first bound ``bad`` is outside (a negative value fails
    them all: the first one's)."""
    def message(bad, _):
        for (_, node_message), n in zip(bounds, sizes):
            if bad < 0 or bad >= n:
                return node_message(bad, n)
        raise AssertionError("check_index_range reported a value inside every bound")

    return message


def _rows_of(param):
    return lambda: param.value.shape[0]


def _take_message(idx, table, param):
    idx_name = idx.name or "index"
    table_name = table.name or param.name or "the table"

    def message(bad, n):
        return (f"index {idx_name!r}: value {bad} is out of range for {table_name} "
                f"with {n} rows (valid: 0..{n - 1})")

    return message


def _label_message(labels):
    name = labels.name or "labels"

    def message(bad, n):
        return f"{name}: label {bad} is out of range for {n} classes (valid: 0..{n - 1})"

    return message
