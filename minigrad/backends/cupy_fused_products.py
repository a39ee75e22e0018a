"""CuPy thunks of the multi-product fused Ops (``minigrad/ops/fused_products.py``), so the
factorization machine's fused step runs on the device end to end (without them the CuPy
backend would run these Ops' NumPy ``perform`` through a host round trip).

Loaded by ``backends/cupy_fused.py``; the kernels are in ``kernels/gpu/fused_products.py``.
"""
from __future__ import annotations

from minigrad.backends.cupy import impl
from minigrad.ops.fused_products import FusedCSRGatherSums, FusedCSRScatterSums


def _gpu():
    import kernels.gpu.fused_products as gpu

    return gpu


@impl.register
def _gather_sums(op: FusedCSRGatherSums, node):
    def thunk(inputs):
        Xs, table, datas = op.arrays(node, inputs)
        return tuple(_gpu().csr_gather_sums(Xs[0].indptr, Xs[0].indices, datas, table,
                                            op.powers))

    return thunk


@impl.register
def _scatter_sums(op: FusedCSRScatterSums, node):
    def thunk(inputs):
        Xs, table, datas, grads = op.arrays(node, inputs)
        unique, rows = _gpu().csr_scatter_sums(Xs[0].indptr, Xs[0].indices, datas, grads,
                                               table, op.coefs, op.powers)
        return (op.value(table, unique, rows),)

    return thunk
