"""The Numba backend: one table from Op class to an implementation factory.

``impl(op, node)`` returns ``thunk(inputs) -> outputs`` for one node (the manner of
PyTensor's ``numba_funcify``). Ops registered here call the compiled kernels of
``kernels.cpu`` directly; every other Op runs its NumPy ``perform`` (already vectorised
NumPy, and the definition the registered versions are tested against). This file is the
only place where the numba backend chooses a kernel.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from minigrad.backends import numpy as reference
from minigrad.ops import rowsparse, sparse
from minigrad.ops.indexing import Take, TakeGrad, check_index_range
from minigrad.prologue import is_checked
from minigrad.types import RowSparse

name = "numba"
to_device = reference.to_device
to_host = reference.to_host
isfinite_all = reference.isfinite_all
load_shared = reference.load_shared


def check_available():
    try:
        import numba  # noqa: F401

        import kernels.cpu  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"backend='numba' needs numba and the kernels package ({err}); "
            "install minigrad with its dependencies or use backend='numpy'"
        ) from err


def kernels():
    """The kernel module this backend's implementations call."""
    import kernels.cpu as cpu

    return cpu


@functools.singledispatch
def impl(op, node):
    return reference.impl(op, node)


def make_thunk(node):
    if not _optimizer_ops_registered:
        _register_optimizer_ops()
    return impl(node.op, node)


def call_context():
    return contextlib.nullcontext()


#: gathers of at most this many scalars use NumPy's fancy indexing: for a few hundred
#: short rows the compiled kernel's argument checks cost more than the copy
SMALL_GATHER = 2048


@impl.register
def _take(op: Take, node):
    gather_rows = kernels().gather_rows
    # the call prologue already range-checked this index against this table (compile.py)
    checked = is_checked(node)

    from kernels.cpu.rows import gather_rows_unchecked as unchecked_gather

    def thunk(inputs):
        table, idx = inputs
        if not checked:
            check_index_range(idx, table.shape[0], node)
        flat = np.ascontiguousarray(idx.reshape(-1))
        small = flat.shape[0] * (table.size // max(table.shape[0], 1)) <= SMALL_GATHER
        if small or not table.flags.c_contiguous:
            # fancy indexing reads only the rows (np.take would copy a strided table)
            return (table[flat].reshape(idx.shape + table.shape[1:]),)
        if checked and flat.dtype == np.int64 and table.dtype.kind == "f":
            rows = unchecked_gather(table, flat)
        else:
            rows = gather_rows(table, flat)
        return (rows.reshape(idx.shape + table.shape[1:]),)

    return thunk


@impl.register
def _take_grad(op: TakeGrad, node):
    dtype = node.outputs[0].dtype
    if not is_checked(node):
        return reference.impl(op, node)  # perform: RowSparse checks the indices

    def thunk(inputs):
        shape, idx, gz = inputs
        shape = tuple(shape.tolist())
        values = np.asarray(gz, dtype=dtype).reshape((-1,) + shape[1:])
        indices = np.asarray(idx, dtype=np.int64).reshape(-1)
        return (RowSparse.trusted(indices, values, shape),)

    return thunk


# ---- sparse products (mg.sparse.dot): kernels.cpu instead of the reference kernels


@impl.register
def _csr_gathered_dot(op: sparse.CSRGatheredDot, node):
    cpu, dtype = kernels(), node.outputs[0].dtype

    def thunk(inputs):
        X, rows = inputs
        rows = rows.astype(np.result_type(X.data, rows), copy=False)
        return (cpu.csr_gathered_dot(X.indptr, X.data, rows).astype(dtype, copy=False),)

    return thunk


@impl.register
def _csr_gathered_dot_grad_rows(op: sparse.CSRGatheredDotGradRows, node):
    cpu = kernels()

    def thunk(inputs):
        X, gz = inputs
        data = X.data.astype(gz.dtype, copy=False)
        return (cpu.csr_scale_rows(X.indptr, data, np.ascontiguousarray(gz)),)

    return thunk


@impl.register
def _csr_scaled_gathered_dot(op: sparse.CSRScaledGatheredDot, node):
    cpu, dtype = kernels(), node.outputs[0].dtype

    def thunk(inputs):
        X, rows, scale = inputs
        data = X.data * np.reshape(scale, -1)
        rows = rows.astype(np.result_type(data, rows), copy=False)
        return (cpu.csr_gathered_dot(X.indptr, data, rows).astype(dtype, copy=False),)

    return thunk


@impl.register
def _csr_scaled_dot_grad_rows(op: sparse.CSRScaledDotGradRows, node):
    cpu = kernels()

    def thunk(inputs):
        X, scale, gz = inputs
        data = (X.data * np.reshape(scale, -1)).astype(gz.dtype, copy=False)
        return (cpu.csr_scale_rows(X.indptr, data, np.ascontiguousarray(gz)),)

    return thunk


@impl.register
def _csr_scaled_dot_grad_scale(op: sparse.CSRScaledDotGradScale, node):
    cpu = kernels()

    def thunk(inputs):
        X, gz, rows, scale_shape = inputs
        dots = cpu.csr_row_dots(X.indptr, X.data.astype(gz.dtype, copy=False),
                                np.ascontiguousarray(gz),
                                np.ascontiguousarray(rows, dtype=gz.dtype))
        return (dots.reshape(tuple(scale_shape.tolist())),)

    return thunk


# ---- row-sparse values: compiled scatter-add and coalesce


@impl.register
def _rs_to_dense(op: rowsparse.RowSparseToDense, node):
    cpu = kernels()

    def thunk(inputs):
        (rs,) = inputs
        out = np.zeros(rs.shape, dtype=rs.values.dtype)
        if len(rs.indices):
            cpu.scatter_add_rows(out, rs.indices, rs.values)
        return (out,)

    return thunk


@impl.register
def _dense_add_rs(op: rowsparse.DenseAddRowSparse, node):
    cpu, dtype = kernels(), node.outputs[0].dtype

    def thunk(inputs):
        dense, rs = inputs
        out = np.array(np.broadcast_to(dense, rs.shape), dtype=dtype)
        if len(rs.indices):
            cpu.scatter_add_rows(out, rs.indices, rs.values)
        return (out,)

    return thunk


@impl.register
def _rs_coalesce(op: rowsparse.RowSparseCoalesce, node):
    cpu = kernels()

    def thunk(inputs):
        (rs,) = inputs
        if rs._coalesced:
            return (rs,)
        if not len(rs.indices):
            return (RowSparse(rs.indices, rs.values, rs.shape, coalesced=True),)
        idx, vals = cpu.coalesce_rows(rs.indices, rs.values)
        return (RowSparse.trusted(idx, vals, rs.shape, coalesced=True),)

    return thunk


# ---- optimizer nodes (minigrad/optim/ops.py): the fused row kernels of kernels.cpu


_optimizer_ops_registered = False


def _register_optimizer_ops():
    """Registered on first use: ``minigrad.optim.ops`` imports this module while it loads."""
    global _optimizer_ops_registered
    from minigrad.optim.ops import CatchUpAll, FreshTake, PrepareRows, RowUpdate

    _optimizer_ops_registered = True

    @impl.register(RowUpdate)
    def _row_update(op, node):
        cpu = kernels()
        return lambda inputs: op.run(cpu, inputs)

    @impl.register(CatchUpAll)
    @impl.register(FreshTake)
    def _catch_up(op, node):
        cpu = kernels()
        return lambda inputs: op.run(cpu, node, inputs)

    @impl.register(PrepareRows)
    def _prepare_rows(op, node):
        from kernels.cpu.rows import coalesce_rows_trusted

        def thunk(inputs):
            grad, param, *tables = inputs
            op.check_shapes(node, grad, param, tables)
            if grad._coalesced or not len(grad.indices):
                idx, vals = grad.indices, grad.values
            else:  # a RowSparse keeps its indices in range (checked when it was built)
                idx, vals = coalesce_rows_trusted(grad.indices, grad.values)
            vals = np.ascontiguousarray(vals, dtype=param.dtype)
            # the parts of a RowSparse value, coalesced: nothing new to check
            return (RowSparse.trusted(idx, vals, grad.shape, coalesced=True),)

        return thunk



from minigrad.backends import numba_fused  # noqa: E402,F401  (fused Ops, fusion rewrites)
