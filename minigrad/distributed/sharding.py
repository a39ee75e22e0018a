"""Which parameters are sharded tables, which inputs carry their row ids, and how rows move.

The graph already says it: a table whose gradient is row-sparse reaches the cost only
through row gathers, and each gather's ``TakeGrad`` names the index variable. The inputs
among that variable's ancestors carry the table's row ids (``X`` for ``sparse.dot(X, V)``,
``tokens`` for an embedding). Tables that share an id-carrying input form one *group*:
one set of unique ids per batch serves all of them (FM's ``w`` and ``V`` are indexed by
the columns of the same ``X``).

Per batch a worker computes the group's ids with a small compiled function (run against
zero-cost broadcast stand-ins of the full tables: only their row count is read), pulls
the unique rows into a local table of ``n_unique`` rows and rewrites the id-carrying
inputs into local positions (:func:`remap_input`). The driver checks once, on a real
batch, that the rewrite is faithful (the local ids map back to the global ones); a group
whose ids are not plain copies of input values (``idx + 1``, say) is not remapped: its
tables are then pulled whole from the dense shard, which is correct but slow, and noted.

Rows are spread by ``id % n_shards`` (a Zipf head of small ids lands evenly), and shard
``s`` stores global row ``g`` at local row ``g // n_shards``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from minigrad.graph import ancestors, toposort
from minigrad.types import RowSparseType


@dataclass
class Group:
    """Tables indexed by the same inputs: ``tables`` (param positions), ``inputs``
    (positions in the cost's input list), ``n_rows`` (their common row count) and
    ``id_outputs`` (positions of their index variables in the ids function's outputs)."""

    tables: list
    inputs: list
    n_rows: int
    id_outputs: list = field(default_factory=list)


@dataclass
class Layout:
    """The split of the parameters: ``groups`` of row-sharded tables and ``dense``
    positions (held whole on the dense shard; includes tables that cannot be remapped)."""

    groups: list
    dense: list
    id_vars: list  # index variables, the outputs of the ids function
    id_inputs: list  # positions of the inputs the ids function takes (carriers and masks)
    grads: list  # the gradient variables of all parameters, in order
    notes: list = field(default_factory=list)

    @property
    def tables(self):
        return sorted(t for g in self.groups for t in g.tables)

    def signature(self):
        """A picklable summary, to check that every process sees the same split."""
        return ([(g.tables, g.inputs, g.n_rows) for g in self.groups], self.dense)


def analyse(inputs, cost, params, whole=()):
    """The :class:`Layout` of ``params`` for the graph ``(inputs, cost)``; the tables in
    ``whole`` (positions) are held whole on the dense shard.

    Raises ``mg.DisconnectedInputError`` for a parameter the cost does not depend on
    (as single-process training would).
    """
    from minigrad.grad import grad
    from minigrad.ops.indexing import TakeGrad

    grads = grad(cost, list(params))
    position = {v: i for i, v in enumerate(inputs)}
    parent = {}  # union-find over ("t", table) and ("i", input) keys

    def find(k):
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    id_vars, table_ids, dense, notes = [], {}, [], []
    for i, (p, g) in enumerate(zip(params, grads)):
        if not isinstance(g.type, RowSparseType) or i in whole:
            dense.append(i)
            continue
        idx = [node.inputs[1] for node in toposort([g]) if isinstance(node.op, TakeGrad)]
        sources = sorted({position[v] for v in ancestors(idx)
                          if v in position and _carries_ids(v)})
        if not idx or not sources:
            dense.append(i)
            notes.append(f"{p.name or f'param{i}'}: row ids come from no input; held whole")
            continue
        table_ids[i] = idx
        for s in sources:
            parent[find(("t", i))] = find(("i", s))
        find(("t", i))
    members = {}
    for i in table_ids:
        members.setdefault(find(("t", i)), []).append(i)
    groups = []
    for tables in members.values():
        root = find(("t", tables[0]))
        group_inputs = sorted(s for k, s in parent if k == "i" and find(("i", s)) == root)
        rows = {params[t].get_value(borrow=True).shape[0] for t in tables}
        if len(rows) != 1:
            names = [params[t].name for t in tables]
            dense.extend(tables)
            notes.append(f"tables {names} share id inputs but differ in rows {sorted(rows)}; "
                         "held whole")
            continue
        group = Group(sorted(tables), group_inputs, rows.pop())
        for t in group.tables:
            for v in table_ids[t]:
                if v not in id_vars:
                    id_vars.append(v)
                group.id_outputs.append(id_vars.index(v))
        group.id_outputs = sorted(set(group.id_outputs))
        groups.append(group)
    # the ids function takes every input its outputs depend on: the id carriers and
    # whatever shapes them (the mask that says which tokens of a row are real)
    id_inputs = sorted({position[v] for v in ancestors(id_vars) if v in position})
    return Layout(groups, sorted(dense), id_vars, id_inputs, grads, notes)


def _carries_ids(var):
    """Row ids can only come in an integer array or as the column ids of a CSR matrix (a
    float input such as a mask may shape them, but holds none)."""
    from minigrad.types import CSRType, TensorType

    if isinstance(var.type, CSRType):
        return True
    return isinstance(var.type, TensorType) and np.dtype(var.type.dtype).kind in "iu"


# ---------------------------------------------------------------------------------------
# Per batch: ids, remapping, splitting by shard


def stand_in(shape, dtype):
    """A read-only broadcast array of ``shape`` costing one row of memory: what the ids
    function needs of a table (its row count), never its values."""
    return np.broadcast_to(np.zeros((1,) + tuple(shape[1:]), dtype=dtype), tuple(shape))


def put_stand_in(param, array):
    """Make ``array`` (a stand-in) the value of ``param`` without a copy.

    Only for the private, optimizer-free copies of the parameters a worker or the driver
    unpickles: ``set_value`` would (rightly, for a parameter an optimizer writes) copy a
    read-only broadcast array into a real ``V``-row table, which is what a stand-in
    exists to avoid. Nothing ever writes these values.
    """
    param._value = array


def group_unique_ids(group, id_values):
    """Sorted unique global row ids of ``group`` in one batch (int64)."""
    parts = [np.asarray(id_values[k]).reshape(-1) for k in group.id_outputs]
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return np.unique(ids.astype(np.int64, copy=False))


def remap_input(value, unique):
    """``value`` (an int array or a CSR matrix of column ids) in positions of ``unique``.

    Ids absent from ``unique`` (masked-out padding, which the graph drops anyway) are
    clipped to a valid position so that no range check trips over them.
    """
    last = max(unique.shape[0] - 1, 0)
    if sp.issparse(value):
        X = value.tocsr()
        cols = np.minimum(np.searchsorted(unique, X.indices), last)
        out = type(X)((X.data, cols.astype(X.indices.dtype), X.indptr),
                      shape=(X.shape[0], unique.shape[0]))
        out.has_sorted_indices = X.has_sorted_indices  # positions keep the order of ids
        return out
    arr = np.asarray(value)
    pos = np.searchsorted(unique, arr.astype(np.int64, copy=False))
    return np.clip(pos, 0, last).astype(arr.dtype, copy=False)


def owner(global_ids, n_shards):
    return global_ids % n_shards


def local_rows(global_ids, n_shards):
    return global_ids // n_shards


def shard_slice(table, shard, n_shards):
    """The rows of ``table`` that shard ``shard`` stores, in its local order (a copy)."""
    return np.ascontiguousarray(table[shard::n_shards])


def shard_row_count(n_rows, shard, n_shards):
    return len(range(shard, n_rows, n_shards))


def split_by_shard(global_ids, n_shards):
    """For each shard, the positions (into ``global_ids``) of the ids it owns, in order."""
    own = owner(global_ids, n_shards)
    return [np.flatnonzero(own == s) for s in range(n_shards)]


def assemble(tables_parts, n_unique, row_shape, dtype, positions):
    """One local table of ``n_unique`` rows from the parts each shard returned."""
    out = np.empty((n_unique,) + tuple(row_shape), dtype=dtype)
    for pos, part in zip(positions, tables_parts):
        if pos.shape[0]:
            out[pos] = part
    return out
