"""Numba implementations of the fused Ops (``minigrad/ops/fused.py``; the rewrites that
introduce them are in ``minigrad/rewrite_fusion.py``), loaded with the Numba backend.

The backward kernels de-duplicate rows through a V-long int32 slot map that is all -1
between calls. Each thunk keeps a small pool of them per table size: a call takes one
(``list.pop`` is atomic), uses it and puts it back, so two threads calling the same
compiled function never share a map, and a step costs O(rows touched), not O(V), once the
first call has allocated it.
"""
from __future__ import annotations

from minigrad.backends.numba import impl
from minigrad.ops.fused import FusedCSRGatherSum, FusedCSRScatterGrad, SlotTakeGrad


def _cpu():
    import kernels.cpu.fused as cpu

    return cpu


class SlotMaps:
    """Per-thunk pool of slot maps (V-long int32, all -1 when in the pool)."""

    def __init__(self):
        self.free = {}

    def take(self, n_rows):
        pool = self.free.setdefault(n_rows, [])
        try:
            return pool.pop()
        except IndexError:
            return _cpu().new_slot_map(n_rows)

    def give(self, n_rows, slot):
        self.free.setdefault(n_rows, []).append(slot)


@impl.register
def _gather_sum(op: FusedCSRGatherSum, node):
    kernel = _cpu().csr_gather_mul_sum

    def thunk(inputs):
        X, table, factor = op.arrays(node, inputs)
        return (kernel(X.indptr, X.indices, X.data, table, factor),)

    return thunk


@impl.register
def _scatter_grad(op: FusedCSRScatterGrad, node):
    kernel, maps = _cpu().csr_scatter_grad_rows, SlotMaps()

    def thunk(inputs):
        X, gz, shape, factor, out_width = op.arrays(node, inputs)
        slot = maps.take(shape[0])
        try:
            unique, rows = kernel(X.indptr, X.indices, X.data, gz, shape[0], factor,
                                  out_width, slot)
        finally:  # the kernel validates first and resets what it touched: the map is clean
            maps.give(shape[0], slot)
        return (op.value(shape, unique, rows),)

    return thunk


@impl.register
def _slot_take_grad(op: SlotTakeGrad, node):
    kernel, maps = _cpu().slot_coalesce_rows, SlotMaps()

    def thunk(inputs):
        from minigrad.types import RowSparse

        shape, idx, values = op.arrays(node, inputs)
        slot = maps.take(shape[0])
        try:
            unique, summed = kernel(idx, values, shape[0], slot)
        finally:
            maps.give(shape[0], slot)
        return (RowSparse(unique, summed, shape, coalesced=True),)

    return thunk


__all__ = ["SlotMaps"]
