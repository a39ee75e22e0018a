"""CuPy implementations of the fused Ops (``minigrad/ops/fused.py``), loaded with the CuPy
backend so that the graphs the ``"fuse"`` rewrites produce run on the device end to end.

The sparse-path Ops call ``kernels.gpu.fused``; ``FusedElemwise`` runs its inner nodes
through the CuPy backend's own element-wise thunks, one after the other, on the device
(a generated ``cupy.ElementwiseKernel`` per inner graph would make it one launch; not done
yet). Untested on machines without CUDA: ``tests/test_fused.py`` runs them with a device.
"""
from __future__ import annotations

from minigrad.backends.cupy import impl, to_device
from minigrad.ops.fused import (
    FusedCSRGatherSum,
    FusedCSRScatterGrad,
    FusedElemwise,
    SlotTakeGrad,
)
from minigrad.types import RowSparse


def _gpu():
    import kernels.gpu.fused as gpu

    return gpu


@impl.register
def _gather_sum(op: FusedCSRGatherSum, node):
    def thunk(inputs):
        X, table, factor = op.arrays(node, inputs)
        return (_gpu().csr_gather_mul_sum(X.indptr, X.indices, X.data, table, factor),)

    return thunk


@impl.register
def _scatter_grad(op: FusedCSRScatterGrad, node):
    def thunk(inputs):
        X, gz, shape, factor, out_width = op.arrays(node, inputs)
        unique, rows = _gpu().csr_scatter_grad_rows(X.indptr, X.indices, X.data, gz, shape[0],
                                                    factor, out_width)
        return (op.value(shape, unique, rows),)

    return thunk


@impl.register
def _slot_take_grad(op: SlotTakeGrad, node):
    def thunk(inputs):
        shape, idx, values = op.arrays(node, inputs)
        unique, summed = _gpu().slot_coalesce_rows(idx, values, shape[0])
        return (RowSparse(unique, summed, shape, coalesced=True),)

    return thunk


@impl.register
def _fused_elemwise(op: FusedElemwise, node):
    steps = [(impl(inner.op, inner), inner) for inner in op.inner_nodes]
    constants = {v: to_device(v.data) for inner in op.inner_nodes for v in inner.inputs
                 if v.owner is None and v not in op.inner_inputs}  # on the device once

    def thunk(inputs):
        values = dict(constants)
        values.update(zip(op.inner_inputs, inputs))
        for run, inner in steps:
            args = [values[v] for v in inner.inputs]
            for var, value in zip(inner.outputs, run(args)):
                values[var] = value
        return tuple(values[o] for o in op.inner_outputs)

    return thunk


from minigrad.backends import cupy_fused_products  # noqa: E402,F401  (several products)
