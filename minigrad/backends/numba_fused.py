"""Numba implementations of the fused Ops (``minigrad/ops/fused.py``; the rewrites that
introduce them are in ``minigrad/rewrite_fusion.py``), loaded with the Numba backend.

The backward kernels de-duplicate rows through a V-long int32 slot map that is all -1
between calls. Each thunk keeps a small pool of them per table size: a call takes one
(``list.pop`` is atomic), uses it and puts it back, so two threads calling the same
compiled function never share a map, and a step costs O(rows touched), not O(V), once the
first call has allocated it.
"""
from __future__ import annotations

import numpy as np

from minigrad.backends.numba import impl
from minigrad.ops.fused import (
    FusedCSRGatherSum,
    FusedCSRScatterGrad,
    FusedElemwise,
    SlotTakeGrad,
)
from minigrad.ops.fused_products import FusedCSRGatherSums, FusedCSRScatterSums
from minigrad.prologue import is_checked
from minigrad.types import RowSparse


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
    cpu = _cpu()
    kernel = cpu.csr_gather_mul_sum_trusted if is_checked(node) else cpu.csr_gather_mul_sum

    def thunk(inputs):
        X, table, factor = op.arrays(node, inputs)
        return (kernel(X.indptr, X.indices, X.data, table, factor),)

    return thunk


@impl.register
def _scatter_grad(op: FusedCSRScatterGrad, node):
    cpu, maps = _cpu(), SlotMaps()
    kernel = cpu.csr_scatter_grad_rows_trusted if is_checked(node) else cpu.csr_scatter_grad_rows

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
    """Rows that exist already are de-duplicated by ``kernels.cpu.coalesce_rows`` (sort and
    segment sums, parallel): measured 1.2-2x faster than the slot map on 10^3-10^4
    materialised rows (``slot_coalesce_rows``), so the slot map is kept for the fused
    scatter, where it saves materialising the rows at all. Indices the prologue checked
    (``index_checked``) are not scanned again."""
    import kernels.cpu as cpu
    from kernels.cpu.rows import coalesce_rows_trusted

    coalesce = coalesce_rows_trusted if is_checked(node) else cpu.coalesce_rows
    make = RowSparse.trusted if is_checked(node) else RowSparse

    def thunk(inputs):
        shape, idx, values = op.arrays(node, inputs)
        unique, summed = coalesce(idx, values)
        return (make(unique, summed, shape, coalesced=True),)

    return thunk


@impl.register
def _gather_sums(op: FusedCSRGatherSums, node):
    """Several products sharing one gather: one pass, each table row read once."""
    cpu, trusted = _cpu(), is_checked(node)

    def thunk(inputs):
        Xs, table, datas = op.arrays(node, inputs)
        return tuple(cpu.csr_gather_sums(Xs[0].indptr, Xs[0].indices, datas, table,
                                         op.powers, trusted=trusted))

    return thunk


@impl.register
def _scatter_sums(op: FusedCSRScatterSums, node):
    """Their gradient, straight into de-duplicated rows through a pooled slot map."""
    cpu, maps, trusted = _cpu(), SlotMaps(), is_checked(node)

    def thunk(inputs):
        Xs, table, datas, grads = op.arrays(node, inputs)
        slot = maps.take(table.shape[0])
        try:
            unique, rows = cpu.csr_scatter_sums(Xs[0].indptr, Xs[0].indices, datas, grads,
                                                table, op.coefs, op.powers, slot, trusted)
        finally:  # the kernel validates first and resets what it touched: the map is clean
            maps.give(table.shape[0], slot)
        return (op.value(table, unique, rows),)

    return thunk


# --- FusedElemwise: the inner graph generated as one Numba loop -------------------------

#: scalar expression of each element-wise Op (``{0}``, ``{1}``, ``{2}`` are its arguments)
UNARY_EXPR = {
    "neg": "-({0})", "abs": "np.abs({0})", "sign": "np.sign({0})", "exp": "np.exp({0})",
    "log": "np.log({0})", "log1p": "np.log1p({0})", "sqrt": "np.sqrt({0})",
    "square": "({0}) * ({0})", "tanh": "np.tanh({0})", "sigmoid": "_sigmoid({0})",
    "relu": "np.maximum({0}, 0)", "softplus": "np.logaddexp(0.0, {0})",
}
BINARY_EXPR = {
    "add": "({0}) + ({1})", "sub": "({0}) - ({1})", "mul": "({0}) * ({1})",
    "true_div": "({0}) / ({1})", "pow": "np.power({0}, {1})",
    "maximum": "np.maximum({0}, {1})", "minimum": "np.minimum({0}, {1})",
    "lt": "({0}) < ({1})", "le": "({0}) <= ({1})", "gt": "({0}) > ({1})",
    "ge": "({0}) >= ({1})", "eq": "({0}) == ({1})", "neq": "({0}) != ({1})",
}

_PRELUDE = '''"""Generated by minigrad (backends/numba_fused.py) from a FusedElemwise graph."""
import numpy as np
from numba import njit


@njit(inline="always")
def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + np.exp(-x))
    e = np.exp(x)
    return e / (1.0 + e)

'''


def scalar_expression(node, args):
    """The scalar expression computing ``node``'s output from argument names ``args``."""
    from minigrad.ops.elemwise import Binary, Cast, Unary, Where

    op = node.op
    if isinstance(op, Unary):
        return UNARY_EXPR[op.name].format(*args)
    if isinstance(op, Binary):
        return BINARY_EXPR[op.name].format(*args)
    if isinstance(op, Cast):
        return args[0]
    if isinstance(op, Where):
        cast = _cast(node.outputs[0].dtype)
        return f"{cast}({args[1]}) if ({args[0]}) else {cast}({args[2]})"
    raise NotImplementedError(f"no scalar expression for {op}")


def _cast(dtype):
    return "bool" if dtype == "bool" else f"np.{dtype}"


def elemwise_source(op):
    """Python source of a module defining ``kernel(n, a0, s0, a1, s1, ...)``: one Numba loop
    over the flattened inputs computing the inner graph per element (``scalar``)."""
    names = {v: f"a{i}" for i, v in enumerate(op.inner_inputs)}
    constants, body = [], []
    for k, node in enumerate(op.inner_nodes):
        args = []
        for var in node.inputs:
            if var not in names:  # a scalar constant, a module global (frozen by Numba)
                value = np.asarray(var.data)
                names[var] = f"c{len(constants)}"
                constants.append(f"{names[var]} = {_literal(value)}")
            args.append(names[var])
        out = node.outputs[0]
        names[out] = f"t{k}"
        body.append(f"    t{k} = {_cast(out.dtype)}({scalar_expression(node, args)})")
    params = ", ".join(names[v] for v in op.inner_inputs)
    strided = ", ".join(f"{names[v]}[i * s{k}]" for k, v in enumerate(op.inner_inputs))
    kernel_params = ", ".join(f"{names[v]}, s{k}" for k, v in enumerate(op.inner_inputs))
    out_dtype = op.inner_outputs[0].dtype
    lines = [_PRELUDE, *constants, "", "",
             '@njit(cache=CACHE, nogil=True, error_model="numpy", inline="always")',
             f"def scalar({params}):", *body, f"    return {names[op.inner_outputs[0]]}",
             "", "",
             '@njit(cache=CACHE, nogil=True, error_model="numpy")',
             f"def kernel(n, {kernel_params}):",
             "    # every input is flat: n values (stride 1) or one broadcast value (stride 0)",
             f"    out = np.empty(n, dtype=np.{'bool_' if out_dtype == 'bool' else out_dtype})",
             "    for i in range(n):",
             f"        out[i] = scalar({strided})",
             "    return out", ""]
    return "\n".join(lines)


def _literal(value):
    """Source text of a NumPy scalar (``np.float32(0.9)``, ``np.float64(float('inf'))``)."""
    if value.dtype == bool:
        return repr(bool(value))
    item = value.item()
    text = repr(item) if np.isfinite(item) else f"float({str(item)!r})"
    return f"np.{value.dtype}({text})"


def cache_dir():
    """Where generated kernels live (Numba's on-disk cache needs a real file):
    ``$MINIGRAD_CACHE_DIR`` or ``~/.cache/minigrad`` (``$XDG_CACHE_HOME`` honoured)."""
    import os

    root = os.environ.get("MINIGRAD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "minigrad")
    return os.path.join(root, "fused_elemwise")


_KERNELS = {}


def elemwise_kernel(op):
    """The compiled loop of ``op``'s inner graph, cached by signature (memory and disk)."""
    kernel = _KERNELS.get(op.signature)
    if kernel is None:
        kernel = _KERNELS[op.signature] = _load_kernel(elemwise_source(op))
    return kernel


def _load_kernel(source):
    import hashlib

    from minigrad.backends.generated_module import import_generated

    digest = hashlib.sha1(source.encode()).hexdigest()[:20]
    module, _ = import_generated(cache_dir(), f"fused_{digest}.py",
                                 f"minigrad_fused_{digest}", source, "fused kernel")
    return module.kernel


def flat_arguments(inputs):
    """``(shape, [value, stride, ...])``: each input flattened to the broadcast shape, or
    kept as its one value (stride 0) when it has a single element.

    The common case (every input of one shape, or a scalar, C-contiguous) costs one
    ``reshape`` per input; only true broadcasting pays for ``np.broadcast_to`` and a copy.
    """
    arrays = [x if type(x) is np.ndarray else np.asarray(x) for x in inputs]
    shape = None
    for a in arrays:
        if a.size != 1:
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                shape = np.broadcast_shapes(*(b.shape for b in arrays))
                break
    if shape is None:  # all single values
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    else:  # scalars of a higher rank (1, 1, 1) can widen the result's rank
        ndim = max(a.ndim for a in arrays)
        if ndim != len(shape):
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
    args = []
    for a in arrays:
        if a.size == 1:
            args += [a.reshape(1), 0]
        elif a.shape == shape and a.flags.c_contiguous:
            args += [a.reshape(-1), 1]
        else:  # one copy of its broadcast (or of a strided view)
            args += [np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1), 1]
    return shape, args


@impl.register
def _fused_elemwise(op: FusedElemwise, node):
    dtype, kernel = node.outputs[0].dtype, []  # loaded at the first call, not at compile

    def thunk(inputs):
        if not kernel:
            kernel.append(elemwise_kernel(op))
        try:
            shape, args = flat_arguments(inputs)
        except ValueError:  # shapes that do not broadcast: the reference names the culprit
            return op.perform(node, inputs)
        n = 1
        for length in shape:
            n *= length
        try:
            out = kernel[0](n, *args)
        except TypeError:  # a value of another dtype than declared: the reference
            return op.perform(node, inputs)
        return (out.reshape(shape).astype(dtype, copy=False),)

    return thunk


__all__ = ["SlotMaps", "cache_dir", "elemwise_kernel", "elemwise_source"]
