"""The CuPy backend: the whole step runs on the GPU.

Inputs are validated on the host and copied to the device once per call; shared
variables move to the device on first use and *stay there* (``SharedVariable._value``
holds the CuPy array; ``get_value()`` returns a host copy), so a training step moves only
its batch and its outputs across the bus. Ops with a CuPy implementation below run on the
device; any other Op falls back to its NumPy ``perform`` through a host round trip, and
its class name is recorded in ``HOST_FALLBACKS`` so the fallback is visible, not silent.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from minigrad.backends import numpy as reference
from minigrad.ops import elemwise, indexing, linalg, nn, reduce, rowsparse, shape, sparse
from minigrad.ops.index_key import thaw_key
from minigrad.prologue import is_checked
from minigrad.types import RowSparse

name = "cupy"
HOST_FALLBACKS = set()
_cp = None


def check_available():
    global _cp
    try:
        from kernels.gpu._cupy import require_cupy

        _cp = require_cupy()
    except ImportError as err:
        raise ImportError(
            f"backend='cupy' is unavailable: {err}. Use backend='numba' or 'numpy'."
        ) from err


def kernels():
    """The kernel module this backend's implementations call."""
    import kernels.gpu as gpu

    return gpu


def cp():
    if _cp is None:
        check_available()
    return _cp


def _is_device(x):
    return hasattr(x, "__cuda_array_interface__")


def to_device(value):
    if isinstance(value, RowSparse):
        return RowSparse(cp().asarray(value.indices), cp().asarray(value.values), value.shape,
                         value._coalesced)
    if isinstance(value, np.ndarray):
        return cp().asarray(value)
    if hasattr(value, "format") and value.format == "csr" and not _is_device(value.data):
        import cupyx.scipy.sparse as cpsp

        return cpsp.csr_matrix(value)
    return value


def to_host(value):
    if isinstance(value, RowSparse) and _is_device(value.values):
        return RowSparse(value.indices.get(), value.values.get(), value.shape, value._coalesced)
    if _is_device(value):
        return value.get()
    if hasattr(value, "format") and hasattr(value, "get"):
        return value.get()
    return value


def load_shared(var):
    """Move a parameter to the device once; later calls find it there."""
    value = var.value  # no flush hooks: a step must cost O(rows touched), see SharedVariable
    if not _is_device(value):
        value = var._value = cp().asarray(value)
    return value


def isfinite_all(value):
    return bool(cp().isfinite(value).all()) if _is_device(value) else reference.isfinite_all(value)


# --------------------------------------------------------------------------------------


@functools.singledispatch
def impl(op, node):
    """Default: run the NumPy ``perform`` on host copies (recorded in HOST_FALLBACKS)."""
    HOST_FALLBACKS.add(type(op).__name__)
    perform = op.perform

    def thunk(inputs):
        return tuple(to_device(o) for o in perform(node, [to_host(x) for x in inputs]))

    return thunk


def make_thunk(node):
    return impl(node.op, node)


def call_context():
    return contextlib.nullcontext()


def device_generic(*op_classes):
    """Run these Ops' ``perform`` directly on device arrays (it is array-module generic)."""
    for cls in op_classes:
        impl.register(cls)(lambda op, node: functools.partial(op.perform, node))


def _cast_out(node, value):
    return value.astype(node.outputs[0].dtype, copy=False)


_CUPY_LAMBDAS = {
    "sigmoid": lambda x: _cp.where(x >= 0, 1 / (1 + _cp.exp(-x)), _cp.exp(x) / (1 + _cp.exp(x))),
    "relu": lambda x: _cp.maximum(x, 0),
    "softplus": lambda x: _cp.logaddexp(0, x),
}


@impl.register(elemwise.Unary)
@impl.register(elemwise.Binary)
def _elemwise(op, node):
    fn = _CUPY_LAMBDAS.get(op.name) or getattr(cp(), op.fn.__name__)
    if any(_is_shape_value(v) for v in node.inputs):  # arithmetic on x.shape: upload it
        return lambda inputs: (_cast_out(node, cp().asarray(fn(*map(to_device, inputs)))),)
    return lambda inputs: (_cast_out(node, cp().asarray(fn(*inputs))),)


def _is_shape_value(var):
    """A value computed on the host from shapes (``Shape``, a slice of it)."""
    while var.owner is not None and isinstance(var.owner.op, shape.Subtensor):
        var = var.owner.inputs[0]
    return var.owner is not None and isinstance(var.owner.op, shape.Shape)


@impl.register
def _where(op: elemwise.Where, node):
    return lambda inputs: (_cast_out(node, cp().where(*inputs)),)


@impl.register
def _cast(op: elemwise.Cast, node):
    return lambda inputs: (inputs[0].astype(op.dtype),)


_sum_to_shape = elemwise.sum_to_shape  # array-module generic


@impl.register
def _reduce_like(op: elemwise.ReduceLike, node):
    return lambda inputs: (_sum_to_shape(inputs[0], shape.shape_tuple(inputs[1])),)


@impl.register
def _mul_reduce_like(op: elemwise.MulReduceLike, node):
    # the same device operations as an unfused multiply + ReduceLike
    dtype = node.outputs[0].dtype
    return lambda inputs: (
        _sum_to_shape(inputs[0] * inputs[1], shape.shape_tuple(inputs[2])).astype(dtype,
                                                                                copy=False),
    )


@impl.register(reduce.Sum)
@impl.register(reduce.Mean)
@impl.register(reduce.Max)
def _reduce(op, node):
    fn = getattr(cp(), type(op).__name__.lower())
    return lambda inputs: (
        _cast_out(node, cp().asarray(fn(inputs[0], axis=op.axes, keepdims=op.keepdims))),
    )


@impl.register(reduce.CountOf)
@impl.register(shape.ProdShape)
def _shape_info(op, node):
    # Only a shape is read (no transfer); the tiny result goes to the device.
    return lambda inputs: tuple(cp().asarray(o) for o in op.perform(node, inputs))


@impl.register
def _shape(op: shape.Shape, node):
    # A shape value stays on the host: the ops taking it need it there (no device sync)
    return functools.partial(op.perform, node)


@impl.register
def _reshape(op: shape.Reshape, node):
    return lambda inputs: (inputs[0].reshape(op.shape),)


@impl.register
def _reshape_like(op: shape.ReshapeLike, node):
    return lambda inputs: (inputs[0].reshape(shape.shape_tuple(inputs[1])),)


@impl.register
def _transpose(op: shape.Transpose, node):
    return lambda inputs: (inputs[0].transpose(op.axes),)


@impl.register
def _expand_dims(op: shape.ExpandDims, node):
    return lambda inputs: (cp().expand_dims(inputs[0], op.axes),)


@impl.register
def _subtensor(op: shape.Subtensor, node):
    key = thaw_key(op.key)
    return lambda inputs: (inputs[0][key],)


@impl.register
def _flatten_batch(op: linalg.FlattenBatch, node):
    return lambda inputs: (inputs[0].reshape(-1, inputs[0].shape[-1]),)


@impl.register
def _broadcast_like(op: shape.BroadcastLike, node):
    return lambda inputs: (
        cp().array(cp().broadcast_to(inputs[0], shape.shape_tuple(inputs[1]))),)


@impl.register
def _concatenate(op: shape.Concatenate, node):
    return lambda inputs: (_cast_out(node, cp().concatenate(inputs, axis=op.axis)),)


@impl.register
def _split_like(op: shape.SplitLike, node):
    def thunk(inputs):
        g, refs = inputs[0], inputs[1:]
        bounds = np.cumsum([r.shape[op.axis] for r in refs])[:-1].tolist()
        return tuple(cp().ascontiguousarray(p) for p in cp().split(g, bounds, axis=op.axis))

    return thunk


@impl.register
def _subtensor_grad(op: shape.SubtensorGrad, node):
    def thunk(inputs):
        x_shape, gz = inputs
        out = cp().zeros(shape.shape_tuple(x_shape), dtype=node.outputs[0].dtype)
        out[thaw_key(op.key)] = gz
        return (out,)

    return thunk


@impl.register
def _matmul(op: linalg.MatMul, node):
    return lambda inputs: (_cast_out(node, cp().matmul(*inputs)),)


def _logsumexp(x, axis, keepdims):
    m = cp().max(x, axis=axis, keepdims=True)
    out = cp().log(cp().sum(cp().exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else cp().squeeze(out, axis=axis)


@impl.register
def _softmax(op: nn.Softmax, node):
    return lambda inputs: (cp().exp(inputs[0] - _logsumexp(inputs[0], op.axis, True)),)


@impl.register
def _log_softmax(op: nn.LogSoftmax, node):
    return lambda inputs: (inputs[0] - _logsumexp(inputs[0], op.axis, True),)


@impl.register
def _lse(op: nn.LogSumExp, node):
    return lambda inputs: (_logsumexp(inputs[0], op.axis, op.keepdims),)


def _check_range(values, n, node, what):
    if values.size and (int(values.min()) < 0 or int(values.max()) >= n):
        bad = int(values.min()) if int(values.min()) < 0 else int(values.max())
        raise IndexError(
            f"{what} {node.inputs[1].name or 'index'!r}: value {bad} is out of range "
            f"(valid: 0..{n - 1})"
        )


@impl.register
def _pick(op: nn.PickColumns, node):
    def thunk(inputs):
        x, labels = inputs
        _check_range(labels, x.shape[1], node, "label")
        return (x[cp().arange(x.shape[0]), labels],)

    return thunk


@impl.register
def _pick_grad(op: nn.PickColumnsGrad, node):
    def thunk(inputs):
        x_shape, labels, gz = inputs
        x_shape = shape.shape_tuple(x_shape)
        out = cp().zeros(x_shape, dtype=node.outputs[0].dtype)
        out[cp().arange(x_shape[0]), labels] = gz
        return (out,)

    return thunk


@impl.register
def _take(op: indexing.Take, node):
    # the call prologue checked this index on the host, before the upload: no device-to-
    # host synchronisation for it here (compile.py, prologue.py)
    checked = is_checked(node)

    def thunk(inputs):
        table, idx = inputs
        if not checked:
            _check_range(idx, table.shape[0], node, "index")
        return (cp().take(table, idx, axis=0),)

    return thunk


@impl.register
def _take_grad(op: indexing.TakeGrad, node):
    def thunk(inputs):
        table_shape, idx, gz = inputs
        table_shape = shape.shape_tuple(table_shape)
        values = gz.astype(node.outputs[0].dtype, copy=False).reshape((-1,) + table_shape[1:])
        return (RowSparse(idx.reshape(-1), values, table_shape),)

    return thunk


def _gpu_kernels():
    import kernels.gpu as gpu

    return gpu


@impl.register
def _rs_to_dense(op: rowsparse.RowSparseToDense, node):
    def thunk(inputs):
        (rs,) = inputs
        out = cp().zeros(rs.shape, dtype=rs.values.dtype)
        if rs.indices.size:
            _gpu_kernels().scatter_add_rows(out, rs.indices, rs.values)
        return (out,)

    return thunk


@impl.register
def _dense_add_rs(op: rowsparse.DenseAddRowSparse, node):
    def thunk(inputs):
        dense, rs = inputs
        out = cp().array(cp().broadcast_to(dense, rs.shape), dtype=node.outputs[0].dtype)
        if rs.indices.size:
            _gpu_kernels().scatter_add_rows(out, rs.indices, rs.values.astype(out.dtype))
        return (out,)

    return thunk


@impl.register
def _rs_add(op: rowsparse.RowSparseAdd, node):
    def thunk(inputs):
        a, b = inputs
        return (RowSparse(cp().concatenate([a.indices, b.indices]),
                          cp().concatenate([a.values, b.values.astype(a.values.dtype)]), a.shape),)

    return thunk


@impl.register(rowsparse.RowSparseIndices)
@impl.register(rowsparse.RowSparseValues)
@impl.register(rowsparse.RowSparseWithValues)
def _rs_parts(op, node):
    return lambda inputs: op.perform(node, inputs)


@impl.register
def _rs_coalesce(op: rowsparse.RowSparseCoalesce, node):
    def thunk(inputs):
        (rs,) = inputs
        if rs._coalesced:
            return (rs,)
        idx, vals = _gpu_kernels().coalesce_rows(rs.indices, rs.values)
        return (RowSparse(idx, vals, rs.shape, coalesced=True),)

    return thunk


@impl.register
def _csr_columns(op: sparse.CSRColumns, node):
    def thunk(inputs):
        X, W_shape = inputs
        if X.shape[1] != int(W_shape[0]):
            raise ValueError(
                f"sparse.dot: {node.inputs[0].name or 'X'} has {X.shape[1]} columns but "
                f"{shape.value_name(node.inputs[1], 'W')} has {int(W_shape[0])} rows"
            )
        return (X.indices.astype(cp().int64),)

    return thunk


def _row_of(X):
    """Row number of each stored entry of a CSR matrix, computed on the device."""
    return cp().searchsorted(X.indptr[1:], cp().arange(X.nnz), side="right")


def _weighted_rows_sum(X, weights, rows, dtype):
    """``out[i] = sum over stored (i, k) of weights[k] * rows[k]`` (atomic scatter-add)."""
    out = cp().zeros((X.shape[0],) + rows.shape[1:], dtype=dtype)
    if X.nnz:
        w = weights.astype(dtype).reshape((-1,) + (1,) * (rows.ndim - 1))
        _gpu_kernels().scatter_add_rows(out, _row_of(X), (w * rows).astype(dtype))
    return out


@impl.register
def _csr_gathered_dot(op: sparse.CSRGatheredDot, node):
    dtype = node.outputs[0].dtype
    return lambda inputs: (_weighted_rows_sum(inputs[0], inputs[0].data, inputs[1], dtype),)


@impl.register
def _csr_gathered_dot_grad(op: sparse.CSRGatheredDotGradRows, node):
    def thunk(inputs):
        X, gz = inputs
        data = X.data.astype(gz.dtype).reshape((-1,) + (1,) * (gz.ndim - 1))
        return (data * gz[_row_of(X)],)

    return thunk


@impl.register
def _square(op: sparse.Square, node):
    def thunk(inputs):
        import cupyx.scipy.sparse as cpsp

        X = inputs[0]
        return (cpsp.csr_matrix((X.data * X.data, X.indices, X.indptr), shape=X.shape),)

    return thunk


@impl.register
def _csr_scaled_dot(op: sparse.CSRScaledGatheredDot, node):
    dtype = node.outputs[0].dtype

    def thunk(inputs):
        X, rows, scale = inputs
        return (_weighted_rows_sum(X, X.data * scale.reshape(-1), rows, dtype),)

    return thunk


@impl.register
def _csr_scaled_dot_grad_rows(op: sparse.CSRScaledDotGradRows, node):
    def thunk(inputs):
        X, scale, gz = inputs
        data = (X.data * scale.reshape(-1)).astype(gz.dtype)
        return (_gpu_kernels().csr_scale_rows(X.indptr, data, cp().ascontiguousarray(gz)),)

    return thunk


@impl.register
def _csr_scaled_dot_grad_scale(op: sparse.CSRScaledDotGradScale, node):
    def thunk(inputs):
        X, gz, rows, scale_shape = inputs
        dots = _gpu_kernels().csr_row_dots(X.indptr, X.data.astype(gz.dtype),
                                           cp().ascontiguousarray(gz), rows.astype(gz.dtype))
        return (dots.reshape(shape.shape_tuple(scale_shape)),)

    return thunk


@impl.register
def _rs_reduce_columns(op: rowsparse.RowSparseReduceColumns, node):
    def thunk(inputs):
        rs, x_shape = inputs
        trailing = shape.shape_tuple(x_shape)[1:]
        rows = _sum_to_shape(rs.values, (rs.values.shape[0],) + trailing)
        return (RowSparse(rs.indices, rows, (rs.shape[0],) + trailing, rs._coalesced),)

    return thunk
from minigrad.backends import cupy_fused  # noqa: E402,F401  (fused Ops on the device)
