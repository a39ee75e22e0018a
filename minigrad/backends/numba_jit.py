"""Numba *source emitters*: the second table of the numba backend, used by the jit linker.

``backends/numba.py`` maps an Op class to a thunk factory (a Python callable per node).
This module maps an Op class to a **source emitter** (in the manner of PyTensor's
``numba_funcify``, but producing text, so that a whole run of nodes becomes one cached
``@njit`` function, see ``minigrad/linker_jit.py``)::

    emit(op, node, ins, outs) -> list of source lines, or None (this node: not covered)

``ins``/``outs`` are :class:`Val` objects naming the values in the generated function.
An emitter is specialised on the node's static facts (rank, dtype, axes, keepdims) and
returns ``None`` for the cases it does not handle, so such a node stays a Python thunk.

How values look inside compiled code (and across a segment boundary):

* a tensor of rank >= 1: a NumPy array; of rank 0: a NumPy *scalar* (``v[()]`` on entry,
  ``np.asarray(v, dtype)`` on exit, so the rest of the pipeline still sees 0-d arrays);
* a CSR matrix: five values ``data, indices, indptr, n_rows, n_cols``;
* a ``RowSparse``: ``indices, values, n_rows`` (rebuilt with ``RowSparse.trusted`` on exit;
  its trailing shape is ``values.shape[1:]``).

Semantics equal ``op.perform``: results are cast once to the declared output dtype, the
checks ``perform`` makes are made (a failing check raises inside the compiled code; the
linker then re-runs the segment's Python thunks, which raise the reference's message).
"""
from __future__ import annotations

import functools

import numpy as np

from minigrad.prologue import is_checked
from minigrad.types import CSRType, RowSparseType, TensorType


class Val:
    """One value of the generated code: its base name and its symbolic variable."""

    def __init__(self, name, var):
        self.name, self.var = name, var
        self.type = var.type

    # --- what it is
    @property
    def is_csr(self):
        return isinstance(self.type, CSRType)

    @property
    def is_rowsparse(self):
        return isinstance(self.type, RowSparseType)

    @property
    def is_scalar(self):
        return isinstance(self.type, TensorType) and self.type.ndim == 0

    @property
    def dtype(self):
        return np.dtype(self.type.dtype).name

    @property
    def ndim(self):
        return self.type.ndim

    # --- its parts in the generated code
    def part(self, what):
        return f"{self.name}_{what}"

    def parts(self):
        """The names standing for this value in a function signature."""
        if self.is_csr:
            return [self.part(p) for p in ("data", "indices", "indptr", "nr", "nc")]
        if self.is_rowsparse:
            return [self.part(p) for p in ("idx", "val", "n")]
        return [self.name]

    def shape(self, axis):
        """Source text of the run-time length of ``axis``."""
        if self.is_csr:
            return self.part("nr" if axis == 0 else "nc")
        if self.is_rowsparse:
            return self.part("n") if axis == 0 else f"{self.part('val')}.shape[{axis}]"
        return f"{self.name}.shape[{axis}]"

    def shape_tuple(self):
        items = [self.shape(a) for a in range(self.ndim)]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


class ShapeVal:
    """A shape *value* (``Shape(x)``: an int64 vector) read as the shape of ``x``: the
    emitters of Ops that take a shape use ``.ndim``, ``.shape(i)`` as they would on ``x``."""

    is_csr = is_rowsparse = False

    def __init__(self, val):
        self.name, self.var = val.name, val.var
        length = val.type.shape[0]
        if length is None:  # a constant shape: its length is its data's
            length = int(np.asarray(val.var.data).size)
        self.ndim = int(length)
        self.is_scalar = self.ndim == 0

    def shape(self, axis):
        return f"{self.name}[{axis}]"

    def shape_tuple(self):
        items = [self.shape(a) for a in range(self.ndim)]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def as_shape(val):
    return ShapeVal(val)


def supported_type(type_):
    """Types a segment can carry: tensors of plain dtypes, CSR matrices, RowSparse."""
    if isinstance(type_, (TensorType, RowSparseType, CSRType)):
        return np.dtype(type_.dtype).kind in "biuf"
    return False


@functools.singledispatch
def emit(op, node, ins, outs):
    """Not covered: the node stays a Python thunk."""
    return None


def covered(node):
    """Whether ``node`` can go into a compiled segment (its emitter says so, its values
    have types a segment carries, and it writes nothing)."""
    from minigrad.undo import writes_early

    if node.op.destroy_map or writes_early(node):
        return False
    if not all(supported_type(v.type) for v in list(node.inputs) + list(node.outputs)):
        return False
    probe_in = [Val(f"i{k}", v) for k, v in enumerate(node.inputs)]
    probe_out = [Val(f"o{k}", v) for k, v in enumerate(node.outputs)]
    try:
        return emit(node.op, node, probe_in, probe_out) is not None
    except Exception:  # an emitter that cannot handle these facts: not covered
        return False


def np_dtype(dtype):
    dtype = np.dtype(dtype).name
    return "np.bool_" if dtype == "bool" else f"np.{dtype}"


def like(dtype):
    """The name of the zero-length array of ``dtype`` a segment receives (Numba helpers
    take a dtype as an array of it; the linker passes each one the code names)."""
    return f"L_{np.dtype(dtype).name}"


def cast(expr, src_dtype, dst_dtype, scalar):
    """``expr`` (of NumPy dtype ``src_dtype``) as ``dst_dtype``; scalars always wrapped
    (Numba's scalar arithmetic widens small integers)."""
    if scalar:
        return f"{np_dtype(dst_dtype)}({expr})"
    if np.dtype(src_dtype) == np.dtype(dst_dtype):
        return expr
    return f"J.astype({expr}, {like(dst_dtype)})"


# --- element-wise ----------------------------------------------------------------------

#: each element-wise Op as a call of a cached helper of ``kernels/cpu/jit_ops.py``
UNARY = {
    "neg": "J.negative({0})", "abs": "J.absolute({0})", "sign": "J.sign({0})",
    "exp": "J.exp({0})", "log": "J.log({0})", "log1p": "J.log1p({0})",
    "sqrt": "J.sqrt({0})", "square": "J.square({0})", "tanh": "J.tanh({0})",
    "sigmoid": "J.sigmoid({0})", "relu": "J.maximum({0}, {zero})",
    "softplus": "J.logaddexp({zero}, {0})",
}
BINARY = {
    "add": "J.add({0}, {1})", "sub": "J.subtract({0}, {1})",
    "mul": "J.multiply({0}, {1})", "true_div": "J.true_divide({0}, {1})",
    "pow": "J.power({0}, {1})", "maximum": "J.maximum({0}, {1})",
    "minimum": "J.minimum({0}, {1})", "lt": "J.less({0}, {1})",
    "le": "J.less_equal({0}, {1})", "gt": "J.greater({0}, {1})",
    "ge": "J.greater_equal({0}, {1})", "eq": "J.equal({0}, {1})",
    "neq": "J.not_equal({0}, {1})",
}
_SCALAR_BINARY = {"add": "({0}) + ({1})", "sub": "({0}) - ({1})", "mul": "({0}) * ({1})",
                  "true_div": "({0}) / ({1})", "lt": "({0}) < ({1})",
                  "le": "({0}) <= ({1})", "gt": "({0}) > ({1})", "ge": "({0}) >= ({1})",
                  "eq": "({0}) == ({1})", "neq": "({0}) != ({1})"}


def _natural_dtype(fn, dtypes):
    """The dtype NumPy gives ``fn`` on arrays of these dtypes (what Numba computes in)."""
    with np.errstate(all="ignore"):
        return np.asarray(fn(*[np.ones(1, dtype=d) for d in dtypes])).dtype.name


def elemwise_expr(kind, name, args, in_dtypes, scalar):
    """Source of one element-wise op on argument expressions ``args`` (``None`` if the
    combination is not covered), and the dtype Numba computes it in."""
    from minigrad.ops.elemwise import BINARY_TABLE, UNARY_TABLE

    table, text = (UNARY_TABLE, UNARY) if kind == "unary" else (BINARY_TABLE, BINARY)
    if name not in text:
        return None, None
    kinds = {np.dtype(d).kind for d in in_dtypes}
    if "b" in kinds and name not in ("lt", "le", "gt", "ge", "eq", "neq", "maximum",
                                     "minimum"):
        return None, None  # bool arithmetic (logical in NumPy, integer in Numba)
    if name == "pow" and kinds & set("iu"):
        return None, None  # integer powers: NumPy raises on negative exponents
    if name in ("neg", "abs", "sign") and kinds & set("u"):
        return None, None
    natural = _natural_dtype(table[name][0], in_dtypes)
    if scalar and name in _SCALAR_BINARY:
        return _SCALAR_BINARY[name].format(*args), natural
    if scalar and name == "sigmoid":
        return f"J.sigmoid_scalar({args[0]})", natural
    zero = f"{np_dtype(in_dtypes[0] if np.dtype(in_dtypes[0]).kind == 'f' else 'float64')}(0)"
    if name == "relu":
        zero = f"{np_dtype(in_dtypes[0])}(0)"
    return text[name].format(*args, zero=zero), natural


def _elemwise(kind):
    def emitter(op, node, ins, outs):
        (out,) = outs
        expr, natural = elemwise_expr(kind, op.name, [v.name for v in ins],
                                      [v.dtype for v in ins], out.is_scalar)
        if expr is None:
            return None
        return [f"{out.name} = {cast(expr, natural, out.dtype, out.is_scalar)}"]

    return emitter


def _register_elemwise():
    from minigrad.ops.elemwise import Binary, Cast, Unary

    emit.register(Unary)(_elemwise("unary"))
    emit.register(Binary)(_elemwise("binary"))

    @emit.register(Cast)
    def _cast(op, node, ins, outs):
        (x,), (out,) = ins, outs
        if out.is_scalar:
            return [f"{out.name} = {np_dtype(op.dtype)}({x.name})"]
        return [f"{out.name} = J.astype({x.name}, {like(op.dtype)})"]


def _inner_args(inner, names):
    """The argument expressions and dtypes of one inner node of a fused node: ``names`` maps
    a variable to its ``(expression, dtype)``; a constant becomes a typed literal."""
    from minigrad.backends.numba_fused import _literal

    for var in inner.inputs:
        if var not in names:
            names[var] = (_literal(np.asarray(var.data)), np.asarray(var.data).dtype.name)
    return [names[v][0] for v in inner.inputs], [names[v][1] for v in inner.inputs]


def fused_elemwise_lines(op, ins, out):
    """The inner graph of a ``FusedElemwise``, one statement per inner node (Numba fuses
    the array expressions); scalar constants become typed literals."""
    from minigrad.ops.elemwise import Binary, Cast, Unary

    names = {v: (a.name, a.dtype) for v, a in zip(op.inner_inputs, ins)}
    lines = []
    for k, inner in enumerate(op.inner_nodes):
        args, dtypes = _inner_args(inner, names)
        res = inner.outputs[0]
        target = out.name if res is op.inner_outputs[0] else f"{out.name}_t{k}"
        res_dtype = np.dtype(res.dtype).name
        if isinstance(inner.op, Cast):
            expr = cast(args[0], dtypes[0], res_dtype, out.is_scalar)
        elif isinstance(inner.op, (Unary, Binary)):
            kind = "unary" if isinstance(inner.op, Unary) else "binary"
            expr, natural = elemwise_expr(kind, inner.op.name, args, dtypes, out.is_scalar)
            if expr is None:
                return None
            expr = cast(expr, natural, res_dtype, out.is_scalar)
        else:
            return None  # Where and friends: not covered inside a fused node
        lines.append(f"{target} = {expr}")
        names[res] = (target, res_dtype)
    if op.inner_outputs[0] in op.inner_inputs:
        return None
    loop = fused_loop_lines(op, ins, out)
    if loop is None:
        return lines
    # one loop, no temporaries, when the inputs have one shape (checked at run time);
    # broadcasting inputs take the helper statements
    return loop + ["else:"] + ["    " + line for line in lines]


#: scalar forms of the element-wise Ops inside one fused loop (``{zero}``: a typed 0)
SCALAR_UNARY = {
    "neg": "-({0})", "abs": "np.abs({0})", "sign": "np.sign({0})", "exp": "np.exp({0})",
    "log": "np.log({0})", "log1p": "np.log1p({0})", "sqrt": "np.sqrt({0})",
    "square": "({0}) * ({0})", "tanh": "np.tanh({0})", "sigmoid": "J.sigmoid_scalar({0})",
    "relu": "np.maximum({0}, {zero})", "softplus": "J.logaddexp({zero}, {0})",
}
# (np.logaddexp and np.empty would link a Numba library into the segment: helpers instead)
SCALAR_BINARY = dict(_SCALAR_BINARY, pow="np.power({0}, {1})", maximum="np.maximum({0}, {1})",
                     minimum="np.minimum({0}, {1})")


def fused_loop_lines(op, ins, out):
    """``if <inputs of one shape>:`` and one loop computing the inner graph per element
    (rank 1 or 2, float output, float/int values), or ``None`` (the helper statements)."""
    from minigrad.ops.elemwise import Binary, Cast, Unary

    arrays = [a for a in ins if not a.is_scalar]
    if (out.is_scalar or out.ndim not in (1, 2) or out.dtype not in ("float32", "float64")
            or not arrays or any(a.ndim != out.ndim for a in arrays)):
        return None
    index = ", ".join(f"{out.name}_i{a}" for a in range(out.ndim))
    names = {v: (f"{a.name}[{index}]" if not a.is_scalar else a.name, a.dtype)
             for v, a in zip(op.inner_inputs, ins)}
    body = []
    for k, inner in enumerate(op.inner_nodes):
        args, dtypes = _inner_args(inner, names)
        res_dtype = np.dtype(inner.outputs[0].dtype).name
        if np.dtype(res_dtype).kind not in "fiu" or any(np.dtype(d).kind not in "fiu"
                                                       for d in dtypes):
            return None  # bool values: the helpers keep NumPy's rules
        if isinstance(inner.op, Cast):
            expr = args[0]
        elif isinstance(inner.op, Unary) and inner.op.name in SCALAR_UNARY:
            if inner.op.name in ("neg", "abs", "sign") and np.dtype(dtypes[0]).kind == "u":
                return None
            zero = np_dtype(dtypes[0] if np.dtype(dtypes[0]).kind == "f" else "float64")
            if inner.op.name == "relu":
                zero = np_dtype(dtypes[0])
            expr = SCALAR_UNARY[inner.op.name].format(*args, zero=f"{zero}(0)")
        elif isinstance(inner.op, Binary) and inner.op.name in SCALAR_BINARY:
            if inner.op.name == "pow" and {np.dtype(d).kind for d in dtypes} & set("iu"):
                return None
            expr = SCALAR_BINARY[inner.op.name].format(*args)
        else:
            return None
        target = f"{out.name}_e{k}"
        body.append(f"{target} = {np_dtype(res_dtype)}({expr})")
        names[inner.outputs[0]] = (target, res_dtype)
    first = arrays[0].name
    same = " and ".join(f"{a.name}.shape == {first}.shape" for a in arrays[1:]) or "True"
    lines = [f"if {same}:",
             f"    {out.name} = J.empty({first}.shape, {like(out.dtype)})"]
    pad = "    "
    for axis in range(out.ndim):
        lines.append(f"{pad}for {out.name}_i{axis} in range({first}.shape[{axis}]):")
        pad += "    "
    lines += [pad + line for line in body]
    lines.append(f"{pad}{out.name}[{index}] = {names[op.inner_outputs[0]][0]}")
    return lines


# --- reductions and broadcasting -------------------------------------------------------


def reduce_like_lines(g, x, out, target_dtype):
    """``sum_to_shape(g, shape of x)``: lead axes summed away, then each axis where ``x``
    has length 1 and ``g`` not summed with keepdims (decided at run time)."""
    if x.is_scalar:
        if g.is_scalar:
            return [f"{out.name} = {np_dtype(target_dtype)}({g.name})"]
        return [f"{out.name} = {np_dtype(target_dtype)}(J.sum_all({g.name}))"]
    if g.is_scalar or x.ndim > g.ndim:
        return None
    lines, cur = [], g.name
    small = np.dtype(g.dtype).kind == "f"  # rank-2 float sums: the plain-loop helpers
    for k in range(g.ndim - x.ndim):
        fn = "J.sum_axis_2d" if small and g.ndim - k == 2 else "J.sum_axis"
        lines.append(f"{out.name}_l{k} = {fn}({cur}, 0)")
        cur = f"{out.name}_l{k}"
    for i in range(x.ndim):
        nxt = f"{out.name}_a{i}"
        summed = (f"J.sum_keep_1d({cur})" if x.ndim == 1
                  else f"J.sum_keep_2d({cur}, {i})" if small and x.ndim == 2
                  else f"J.sum_keep({cur}, {i})")
        lines += [f"if {x.shape(i)} == 1 and {cur}.shape[{i}] != 1:",
                  f"    {nxt} = {summed}",
                  "else:",
                  f"    {nxt} = {cur}"]
        cur = nxt
    lines.append(f"{out.name} = {cast(cur, g.dtype, target_dtype, False)}")
    return lines


def reduce_lines(x, out, axes, keepdims, fn="sum"):
    """``np.sum``/``np.mean`` over static ``axes`` with ``keepdims`` (sums one axis at a
    time, highest first; a mean divides the sum by the count in the output dtype)."""
    if x.is_scalar:
        return [f"{out.name} = {np_dtype(out.dtype)}({x.name})"]
    acc = out.dtype if fn == "mean" else x.dtype
    if len(axes) == x.ndim:
        lines = [f"{out.name}_s = J.sum_all({cast(x.name, x.dtype, acc, False)})"]
        if fn == "mean":
            lines.append(f"{out.name}_s = {out.name}_s0 / {x.name}.size")
            lines[0] = lines[0].replace(f"{out.name}_s =", f"{out.name}_s0 =", 1)
        if keepdims:
            shape = "(" + "1, " * x.ndim + ")"
            lines.append(f"{out.name} = J.full({shape}, {out.name}_s, {like(out.dtype)})")
        else:
            lines.append(f"{out.name} = {np_dtype(out.dtype)}({out.name}_s)")
        return lines
    cur = cast(x.name, x.dtype, acc, False)
    lines = []
    for k, a in enumerate(sorted(axes, reverse=True)):
        rank2 = x.ndim - k == 2 and np.dtype(acc).kind == "f"
        lines.append(f"{out.name}_r{k} = {'J.sum_axis_2d' if rank2 else 'J.sum_axis'}"
                     f"({cur}, {a})")
        cur = f"{out.name}_r{k}"
    if fn == "mean":
        count = " * ".join(x.shape(a) for a in axes)
        lines.append(f"{out.name}_m = J.true_divide({cur}, {count})")
        cur = f"{out.name}_m"
    if keepdims:
        for k, a in enumerate(sorted(axes)):
            rank1 = x.ndim - len(axes) + k == 1
            lines.append(f"{out.name}_k{k} = "
                         f"{'J.expand_dims_1d' if rank1 else 'J.expand_dims'}({cur}, {a})")
            cur = f"{out.name}_k{k}"
    lines.append(f"{out.name} = J.astype({cur}, {like(out.dtype)})"
                 if fn == "mean" or np.dtype(x.dtype).kind != "f" else f"{out.name} = {cur}")
    return lines


def _register_reductions():
    from minigrad.ops.elemwise import MulReduceLike, ReduceLike
    from minigrad.ops.reduce import CountOf, Mean, Sum
    from minigrad.ops.shape import BroadcastLike, ExpandDims, Shape, Transpose

    @emit.register(ReduceLike)
    def _reduce_like(op, node, ins, outs):
        g, x = ins[0], as_shape(ins[1])
        return reduce_like_lines(g, x, outs[0], outs[0].dtype)

    @emit.register(MulReduceLike)
    def _mul_reduce_like(op, node, ins, outs):
        a, b, x = ins[0], ins[1], as_shape(ins[2])
        (out,) = outs
        scalar = a.is_scalar and b.is_scalar
        expr, natural = elemwise_expr("binary", "mul", [a.name, b.name], [a.dtype, b.dtype],
                                      scalar)
        if expr is None:
            return None
        prod = Val(f"{out.name}_p", node.outputs[0])
        prod.type = TensorType(natural, (None,) * max(a.ndim, b.ndim))
        lines = [f"{prod.name} = {cast(expr, natural, natural, scalar)}"]
        rest = reduce_like_lines(prod, x, out, out.dtype)
        return None if rest is None else lines + rest

    @emit.register(Sum)
    def _sum(op, node, ins, outs):
        return reduce_lines(ins[0], outs[0], op.axes, op.keepdims, "sum")

    @emit.register(Mean)
    def _mean(op, node, ins, outs):
        return reduce_lines(ins[0], outs[0], op.axes, op.keepdims, "mean")

    @emit.register(CountOf)
    def _count(op, node, ins, outs):
        x = as_shape(ins[0])
        if x.is_scalar and op.axes:
            return None
        count = " * ".join(f"np.int64({x.shape(a)})" for a in op.axes) or "1"
        return [f"{outs[0].name} = np.int64({count})"]

    @emit.register(BroadcastLike)
    def _broadcast_like(op, node, ins, outs):
        g, x = ins[0], as_shape(ins[1])
        (out,) = outs
        if x.is_scalar:
            return [f"{out.name} = {g.name}"] if g.is_scalar else None
        if g.ndim > x.ndim:
            return None
        if g.is_scalar:
            return [f"{out.name} = J.full({x.shape_tuple()}, {g.name}, {like(out.dtype)})"]
        plain = {(1, 1): f"J.broadcast_1d({g.name}, {x.shape(0)})",
                 (2, 2): f"J.broadcast_2d({g.name}, {x.shape(0)}, {x.shape(1)})",
                 (1, 2): f"J.broadcast_row({g.name}, {x.shape(0)}, {x.shape(1)})"}
        if (g.ndim, x.ndim) in plain:  # rank-specialised loops (small to compile)
            return [f"{out.name} = {plain[g.ndim, x.ndim]}"]
        return [f"{out.name} = J.broadcast_to({g.name}, {x.shape_tuple()})"]

    @emit.register(Shape)
    def _shape(op, node, ins, outs):
        (x,), (out,) = ins, outs
        if x.is_scalar:
            return [f"{out.name} = J.zeros((0,), {like('int64')})"]
        return [f"{out.name} = J.shape_vector({x.shape_tuple()})"]

    @emit.register(ExpandDims)
    def _expand_dims(op, node, ins, outs):
        (x,), (out,) = ins, outs
        if x.is_scalar:
            shape = "(" + "1, " * len(op.axes) + ")"
            return [f"{out.name} = J.full({shape}, {x.name}, {like(out.dtype)})"]
        lines, cur = [], x.name
        for k, a in enumerate(op.axes):
            fn = "J.expand_dims_1d" if x.ndim + k == 1 and a in (0, 1) else "J.expand_dims"
            lines.append(f"{out.name}_e{k} = {fn}({cur}, {a})")
            cur = f"{out.name}_e{k}"
        return lines + [f"{out.name} = {cur}"]

    @emit.register(Transpose)
    def _transpose(op, node, ins, outs):
        (x,), (out,) = ins, outs
        if x.is_scalar or x.ndim < 2:
            return [f"{out.name} = {x.name}"]
        if tuple(op.axes) == (1, 0):
            return [f"{out.name} = J.transpose_2d({x.name})"]
        return [f"{out.name} = J.transpose({x.name}, {tuple(op.axes)!r})"]


# --- linear algebra, softmax family ----------------------------------------------------


def _register_nn():
    from minigrad.ops.linalg import MatMul
    from minigrad.ops.nn import LogSoftmax, PickColumns, PickColumnsGrad

    @emit.register(MatMul)
    def _matmul(op, node, ins, outs):
        a, b = ins
        (out,) = outs
        if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype not in ("float32",
                                                                              "float64"):
            return None
        return [f"if {a.name}.shape[1] != {b.name}.shape[0]:",
                "    raise ValueError('matmul: shapes do not align')",
                f"{out.name} = J.dot({a.name}, {b.name})"]

    @emit.register(LogSoftmax)
    def _log_softmax(op, node, ins, outs):
        (x,), (out,) = ins, outs
        if x.ndim != 2 or op.axis not in (-1, 1):
            return None
        return [f"if {x.name}.shape[1] == 0:",
                "    raise ValueError('log_softmax of an empty axis')",
                f"{out.name} = J.log_softmax_rows({x.name})"]

    @emit.register(PickColumns)
    def _pick(op, node, ins, outs):
        x, labels = ins
        return [f"if J.labels_ok({labels.name}, {x.name}.shape[0], {x.name}.shape[1]) != 0:",
                "    raise IndexError('label out of range or wrong count')",
                f"{outs[0].name} = J.pick_columns({x.name}, {labels.name})"]

    @emit.register(PickColumnsGrad)
    def _pick_grad(op, node, ins, outs):
        x, labels, gz = as_shape(ins[0]), ins[1], ins[2]
        (out,) = outs
        if gz.is_scalar or x.ndim != 2:
            return None
        return [f"if J.labels_ok({labels.name}, {x.shape(0)}, {x.shape(1)}) != 0 "
                f"or {gz.name}.shape[0] != {x.shape(0)}:",
                "    raise IndexError('label out of range or wrong count')",
                f"{out.name} = J.pick_columns_grad({x.shape(0)}, {x.shape(1)}, "
                f"{labels.name}, {gz.name}, {like(out.dtype)})"]


# --- sparse: CSR, row gathers, row-sparse values ---------------------------------------


def _table_2d(v, dtype):
    """Source of ``v`` as a 2-D table of ``dtype`` (a vector as a column)."""
    expr = v.name if v.ndim == 2 else f"J.rows_of({v.name}, 1)"
    return cast(expr, v.dtype, dtype, False)


def _register_sparse():
    from minigrad.ops.bag import BagOfWords
    from minigrad.ops.fused import (
        FusedCSRGatherSum,
        FusedCSRScatterGrad,
        FusedElemwise,
        SlotTakeGrad,
    )
    from minigrad.ops.indexing import Take, TakeGrad
    from minigrad.ops.rowsparse import RowSparseIndices, RowSparseValues
    from minigrad.ops.sparse import (
        CSRColumns,
        CSRGatheredDot,
        CSRGatheredDotGradRows,
        Square,
    )
    from minigrad.optim.ops import AllRows, PrepareRows

    @emit.register(FusedElemwise)
    def _fused(op, node, ins, outs):
        return fused_elemwise_lines(op, ins, outs[0])

    @emit.register(Square)
    def _square(op, node, ins, outs):
        (X,), (out,) = ins, outs
        return [f"{out.part('data')} = J.multiply({X.part('data')}, {X.part('data')})",
                *(f"{out.part(p)} = {X.part(p)}" for p in ("indices", "indptr", "nr", "nc"))]

    @emit.register(CSRColumns)
    def _columns(op, node, ins, outs):
        X, W = ins[0], as_shape(ins[1])
        if W.is_scalar:
            return None
        return [f"if {X.part('nc')} != {W.shape(0)}:",
                "    raise ValueError('sparse.dot: columns and rows differ')",
                f"{outs[0].name} = J.as_int64({X.part('indices')})"]

    @emit.register(CSRGatheredDotGradRows)
    def _scale_rows(op, node, ins, outs):
        X, gz = ins
        (out,) = outs
        if gz.ndim not in (1, 2):
            return None
        fn = "J.csr_scale_rows" if gz.ndim == 2 else "J.csr_scale_rows_1d"
        return [f"if {gz.name}.shape[0] != {X.part('nr')}:",
                "    raise ValueError('gradient rows and CSR rows differ')",
                f"{out.name} = {fn}({X.part('indptr')}, "
                f"{cast(X.part('data'), X.dtype, gz.dtype, False)}, "
                f"J.contiguous({gz.name}))"]

    @emit.register(CSRGatheredDot)
    def _gathered_dot(op, node, ins, outs):
        X, rows = ins
        (out,) = outs
        if rows.ndim not in (1, 2) or rows.dtype[0] != "f":
            return None
        fn = "J.csr_gathered_dot" if rows.ndim == 2 else "J.csr_gathered_dot_1d"
        # as the kernel: computed in the rows' dtype, then cast to the output's
        return [f"if {rows.name}.shape[0] != {X.part('data')}.shape[0]:",
                "    raise ValueError('rows and stored entries differ')",
                f"{out.name}_d = {fn}({X.part('indptr')}, "
                f"{cast(X.part('data'), X.dtype, rows.dtype, False)}, {rows.name})",
                f"{out.name} = {cast(out.name + '_d', rows.dtype, out.dtype, False)}"]

    @emit.register(FusedCSRGatherSum)
    def _gather_sum(op, node, ins, outs):
        X, table, *rest = ins
        (out,) = outs
        dt = out.dtype
        if table.ndim != 2 or dt not in ("float32", "float64"):
            return None
        t, f = _table_2d(table, dt), (_table_2d(rest[0], dt) if rest else None)
        lines = [f"if {X.part('nc')} != {table.shape(0)}:",
                 "    raise ValueError('sparse.dot: columns and rows differ')",
                 f"{out.name}_t = {t}"]
        if f is None:
            lines += [f"{out.name}_f = J.zeros((1, 1), {like(dt)})",
                      f"{out.name}_u = False"]
        else:
            lines += [f"{out.name}_f = {f}", f"{out.name}_u = True",
                      f"if {out.name}_t.shape[1] == 1 and {out.name}_f.shape[1] > 1:",
                      f"    {out.name}_t, {out.name}_f = {out.name}_f, {out.name}_t",
                      f"if {out.name}_f.shape[1] != 1 and "
                      f"{out.name}_f.shape[1] != {out.name}_t.shape[1]:",
                      "    raise ValueError('factor width must be 1 or the table width')",
                      f"if {out.name}_f.shape[0] != {out.name}_t.shape[0]:",
                      "    raise ValueError('factor rows and table rows differ')"]
        lines += [f"{out.name} = J.zeros(({X.part('nr')}, {out.name}_t.shape[1]), {like(dt)})",
                  f"F._gather_mul_sum({X.part('indptr')}, {X.part('indices')}, "
                  f"{cast(X.part('data'), X.dtype, dt, False)}, {out.name}_t, {out.name}_f, "
                  f"{out.name}_u, {out.name})"]
        return lines

    @emit.register(FusedCSRScatterGrad)
    def _scatter_grad(op, node, ins, outs):
        X, gz, table, *rest = ins
        table = as_shape(table)
        (out,) = outs
        dt = out.dtype
        if table.ndim not in (1, 2) or gz.ndim != 2 or dt not in ("float32", "float64"):
            return None
        width = "1" if table.ndim == 1 else table.shape(1)
        f = _table_2d(rest[0], dt) if rest else None
        lines = [f"if {X.part('nc')} != {table.shape(0)}:",
                 "    raise ValueError('sparse.dot: columns and rows differ')",
                 f"if {gz.name}.shape[0] != {X.part('nr')}:",
                 "    raise ValueError('gradient rows and CSR rows differ')",
                 f"{out.name}_g = J.contiguous({cast(gz.name, gz.dtype, dt, False)})",
                 f"{out.name}_w = {width}"]
        if f is None:
            lines += [f"{out.name}_f = J.zeros((1, 1), {like(dt)})",
                      f"{out.name}_u = False",
                      f"if {out.name}_w != {out.name}_g.shape[1]:",
                      "    raise ValueError('gradient width and table width differ')"]
        else:
            lines += [f"{out.name}_f = {f}", f"{out.name}_u = True",
                      f"if {out.name}_f.shape[0] != {table.shape(0)}:",
                      "    raise ValueError('factor rows and table rows differ')",
                      f"if not (({out.name}_w == 1 and {out.name}_f.shape[1] == "
                      f"{out.name}_g.shape[1]) or ({out.name}_w == {out.name}_g.shape[1] and "
                      f"{out.name}_f.shape[1] in (1, {out.name}_w))):",
                      "    raise ValueError('scatter shapes do not fit')"]
        lines += [f"{out.name}_s = slot_{out.name}",  # provided by the linker
                  f"{out.part('idx')}, {out.name}_v = F._scatter_grad({X.part('indptr')}, "
                  f"{X.part('indices')}, {cast(X.part('data'), X.dtype, dt, False)}, "
                  f"{out.name}_g, {out.name}_f, {out.name}_u, {out.name}_w, {out.name}_s)",
                  f"{out.part('n')} = {table.shape(0)}"]
        if table.ndim == 1:
            lines.append(f"{out.part('val')} = J.flat({out.name}_v)")
        else:
            lines.append(f"{out.part('val')} = {out.name}_v")
        return lines

    @emit.register(SlotTakeGrad)
    def _slot_take_grad(op, node, ins, outs):
        table, idx, rows = as_shape(ins[0]), ins[1], ins[2]
        (out,) = outs
        if table.is_scalar or rows.is_scalar or table.ndim > 2 or out.dtype[0] != "f":
            return None
        width = "1" if table.ndim == 1 else table.shape(1)
        return [f"{out.name}_r = J.rows_of("
                f"{cast(rows.name, rows.dtype, out.dtype, False)}, {width})",
                f"if {out.name}_r.shape[0] != {idx.name}.shape[0]:",
                "    raise ValueError('gradient rows and indices differ')",
                f"if not J.index_in_range({idx.name}, {table.shape(0)}):",
                "    raise IndexError('index out of range')",
                f"{out.part('idx')}, {out.name}_v = J.coalesce_stable("
                f"J.as_int64({idx.name}), {out.name}_r)",
                f"{out.part('n')} = {table.shape(0)}",
                f"{out.part('val')} = " + (f"J.flat({out.name}_v)" if table.ndim == 1
                                           else f"{out.name}_v")]

    @emit.register(TakeGrad)
    def _take_grad(op, node, ins, outs):
        table, idx, gz = as_shape(ins[0]), ins[1], ins[2]
        (out,) = outs
        if table.is_scalar or gz.is_scalar or table.ndim > 2 or idx.is_scalar:
            return None
        gz_cast = cast(gz.name, gz.dtype, out.dtype, False)
        lines = [f"{out.part('idx')} = J.as_int64(J.flat({idx.name}))",
                 f"{out.part('val')} = " + (f"J.flat({gz_cast})" if table.ndim == 1 else
                                            f"J.rows_of({gz_cast}, {table.shape(1)})"),
                 f"if {out.part('val')}.shape[0] != {out.part('idx')}.shape[0]:",
                 "    raise ValueError('gradient rows and indices differ')",
                 f"{out.part('n')} = {table.shape(0)}"]
        if not is_checked(node):
            lines += [f"if not J.index_in_range({out.part('idx')}, {out.part('n')}):",
                      "    raise IndexError('index out of range')"]
        return lines

    @emit.register(Take)
    def _take(op, node, ins, outs):
        table, idx = ins
        (out,) = outs
        if table.is_scalar or idx.is_scalar or table.ndim > 2:
            return None
        lines = []
        if not is_checked(node):
            lines += [f"if not J.index_in_range({idx.name}, {table.shape(0)}):",
                      "    raise IndexError('index out of range')"]
        if idx.ndim == 1:
            return lines + [f"{out.name} = J.take_rows({table.name}, {idx.name})"]
        shape = [idx.shape(a) for a in range(idx.ndim)] + [table.shape(a)
                                                           for a in range(1, table.ndim)]
        return lines + [f"{out.name} = J.reshape(J.take_rows({table.name}, J.flat({idx.name})),"
                        f" ({', '.join(shape)},))"]

    @emit.register(RowSparseIndices)
    def _rs_indices(op, node, ins, outs):
        return [f"{outs[0].name} = {ins[0].part('idx')}"]

    @emit.register(RowSparseValues)
    def _rs_values(op, node, ins, outs):
        return [f"{outs[0].name} = {ins[0].part('val')}"]

    @emit.register(AllRows)
    def _all_rows(op, node, ins, outs):
        (g,), (out,) = ins, outs
        if g.is_scalar:
            return None
        return [f"{out.part('idx')} = J.arange({g.name}.shape[0])",
                f"{out.part('val')} = J.contiguous({g.name})",
                f"{out.part('n')} = {g.name}.shape[0]"]

    def _rows_in_range(producer):
        """Whether the producer's rows lie in ``[0, n)`` by construction, ``n`` its row
        count (checked equal to the parameter's below): ``AllRows`` (``arange(n)``), and
        the distinct columns of a CSR batch the input boundary checked whole, or the
        indices of a gather the prologue checked (``node.index_checked``,
        ``prologue.py``), whose kernels compare the batch's width with ``n`` first."""
        name = type(producer.op).__name__
        return name == "AllRows" or (name in _VOUCHED_ROWS
                                     and is_checked(producer))

    @emit.register(PrepareRows)
    def _prepare_rows(op, node, ins, outs):
        """``PrepareRows`` on a gradient whose producer coalesces it (``COALESCED``): the
        shape checks of ``check_shapes``, the range check of the ``RowSparse``
        constructor, the cast to the parameter's dtype; no sort. The destructive phase
        calls the row loops on its result without re-checking (``direct_updates.py``)."""
        grad, param, *tables = ins
        (out,) = outs
        producer = node.inputs[0].owner
        if (producer is None or type(producer.op).__name__ not in COALESCED
                or param.ndim < 1 or param.ndim > 2 or grad.ndim != param.ndim):
            return None
        lines = [f"if {grad.part('n')} != {param.shape(0)}:",
                 "    raise ValueError('row-sparse gradient and parameter differ in shape')"]
        if param.ndim == 2:
            lines += [f"if {grad.part('val')}.shape[1] != {param.shape(1)}:",
                      "    raise ValueError('row-sparse gradient and parameter differ in shape')"]
        for t in tables:
            same = [f"{t.shape(a)} != {param.shape(a)}" for a in range(t.ndim)] \
                if t.ndim > 1 else [f"{t.shape(0)} != {param.shape(0)}"]
            if t.ndim > 1 and t.ndim != param.ndim:
                same = ["True"]
            lines += [f"if {' or '.join(same)}:",
                      "    raise ValueError('optimizer state and parameter differ in shape')"]
        if not _rows_in_range(producer):
            lines += [f"if not J.index_in_range({grad.part('idx')}, {param.shape(0)}):",
                      "    raise IndexError('row index out of range')"]
        lines += [f"{out.part('idx')} = {grad.part('idx')}",
                  f"{out.part('val')} = J.contiguous("
                  f"{cast(grad.part('val'), grad.dtype, out.dtype, False)})",
                  f"{out.part('n')} = {grad.part('n')}"]
        return lines

    @emit.register(BagOfWords)
    def _bag(op, node, ins, outs):
        tokens, mask, table = ins[0], ins[1], as_shape(ins[2])
        (out,) = outs
        if table.is_scalar:
            return None
        return [f"if {tokens.name}.shape != {mask.name}.shape:",
                "    raise ValueError('mask and tokens differ in shape')",
                f"{out.part('data')}, {out.part('indices')}, {out.part('indptr')} = "
                f"J.bag_of_words({tokens.name}, {mask.name}, {table.shape(0)}, "
                f"{like(op.dtype)})",
                f"{out.part('nr')} = {tokens.name}.shape[0]",
                f"{out.part('nc')} = {table.shape(0)}"]


def _products_lines(name, Xs, n_table_rows, dt):
    """Checks of the CSR batches of a fused multi-product node, and their values in
    ``dt``: ``(lines, names)``. Two products: ``names`` are the two value vectors (what the
    two-product kernels of ``kernels/cpu/fused`` take); otherwise one name, ``<name>_d``,
    the values stacked ``(K, nnz)`` (what the general kernels take)."""
    first = Xs[0]
    lines = []
    for X in Xs:
        lines += [f"if {X.part('nc')} != {n_table_rows}:",
                  "    raise ValueError('sparse.dot: columns and rows differ')"]
        if X is not first:
            lines += [f"if not J.same_pattern({first.part('indptr')}, {first.part('indices')}, "
                      f"{X.part('indptr')}, {X.part('indices')}):",
                      "    raise ValueError('fused CSR products need one sparsity pattern')"]
    values = [cast(X.part('data'), X.dtype, dt, False) for X in Xs]
    if len(Xs) == 2:
        for i, v in enumerate(values):
            lines.append(f"{name}_d{i} = {v}")
        return lines, [f"{name}_d0", f"{name}_d1"]
    lines.append(f"{name}_d = J.zeros(({len(Xs)}, {first.part('data')}.shape[0]), {like(dt)})")
    lines += [f"J.put_row({name}_d, {i}, {v})" for i, v in enumerate(values)]
    return lines, [f"{name}_d"]


def _int_tuple(values):
    return "(" + ", ".join(str(int(v)) for v in values) + ("," if len(values) == 1 else "") + ")"


def _register_fused_products():
    from minigrad.ops.fused_products import FusedCSRGatherSums, FusedCSRScatterSums

    @emit.register(FusedCSRGatherSums)
    def _gather_sums(op, node, ins, outs):
        table, *Xs = ins
        dt = outs[0].dtype
        if table.ndim != 2 or dt not in ("float32", "float64"):
            return None
        name = outs[0].name + "_all"
        first = Xs[0]
        lines, datas = _products_lines(name, Xs, table.shape(0), dt)
        rows = f"({first.part('nr')}, {table.shape(1)})"
        tab = cast(table.name, table.dtype, dt, False)
        if len(Xs) == 2:  # one pass, no stacked copies (kernels/cpu/fused._gather_sums2)
            lines += [f"{out.name} = J.zeros({rows}, {like(dt)})" for out in outs]
            lines.append(f"F._gather_sums2({first.part('indptr')}, {first.part('indices')}, "
                         f"{', '.join(datas)}, {int(op.powers[0])}, {int(op.powers[1])}, "
                         f"{tab}, {outs[0].name}, {outs[1].name})")
            return lines
        lines += [f"{name}_o = J.zeros(({len(Xs)}, {first.part('nr')}, {table.shape(1)}), "
                  f"{like(dt)})",
                  f"F._gather_sums({first.part('indptr')}, {first.part('indices')}, {datas[0]}, "
                  f"J.shape_vector({_int_tuple(op.powers)}), {tab}, {name}_o)"]
        lines += [f"{out.name} = {name}_o[{i}]" for i, out in enumerate(outs)]
        return lines

    @emit.register(FusedCSRScatterSums)
    def _scatter_sums(op, node, ins, outs):
        K = len(op.powers)
        shape, table = as_shape(ins[0]), ins[1]
        Xs, grads = ins[2:2 + K], ins[2 + K:]
        (out,) = outs
        dt = out.dtype
        if table.ndim != 2 or shape.ndim != 2 or dt not in ("float32", "float64"):
            return None
        n, first = out.name, Xs[0]
        lines = [f"if {table.shape(0)} != {shape.shape(0)} or "
                 f"{table.shape(1)} != {shape.shape(1)}:",
                 "    raise ValueError('table and shape differ')"]
        more, datas = _products_lines(n, Xs, shape.shape(0), dt)
        lines += more
        for g in grads:
            lines += [f"if {g.name}.shape[0] != {first.part('nr')} or not ("
                      f"{g.name}.shape[1] == 1 or {g.name}.shape[1] == {table.shape(1)}):",
                      "    raise ValueError('gradient and batch or table differ in shape')"]
        if all(m == 0 for m in op.powers):  # no term is as wide as the table by itself
            narrow = " and ".join(f"{g.name}.shape[1] == 1" for g in grads)
            lines += [f"if {table.shape(1)} != 1 and {narrow}:",
                      "    raise ValueError('gradient rows narrower than the table')"]
        tab = cast(table.name, table.dtype, dt, False)
        lines.append(f"{n}_s = slot_{n}")  # provided by the linker
        if K == 2:  # each gradient as it is, width 1 or the table's (fused._scatter_sums2)
            g0, g1 = (f"J.contiguous({cast(g.name, g.dtype, dt, False)})" for g in grads)
            lines += [f"{out.part('idx')}, {out.part('val')} = F._scatter_sums2("
                      f"{first.part('indptr')}, {first.part('indices')}, {', '.join(datas)}, "
                      f"{g0}, {g1}, {np_dtype(dt)}({float(op.coefs[0])!r}), "
                      f"{np_dtype(dt)}({float(op.coefs[1])!r}), "
                      f"{int(op.powers[0])}, {int(op.powers[1])}, {tab}, {n}_s)",
                      f"{out.part('n')} = {shape.shape(0)}"]
            return lines
        lines.append(f"{n}_g = J.zeros(({K}, {first.part('nr')}, {table.shape(1)}), {like(dt)})")
        lines += [f"J.put_grad({n}_g, {i}, {cast(g.name, g.dtype, dt, False)})"
                  for i, g in enumerate(grads)]
        coefs = "(" + ", ".join(repr(float(c)) for c in op.coefs) + ("," if K == 1 else "") + ")"
        lines += [f"{out.part('idx')}, {out.part('val')} = F._scatter_sums("
                  f"{first.part('indptr')}, {first.part('indices')}, {datas[0]}, {n}_g, "
                  f"J.values_vector({coefs}, {like(dt)}), "
                  f"J.shape_vector({_int_tuple(op.powers)}), {tab}, {n}_s)",
                  f"{out.part('n')} = {shape.shape(0)}"]
        return lines


#: row-sparse producers whose rows are in range once their batch or gather was checked
_VOUCHED_ROWS = {"FusedCSRScatterGrad", "FusedCSRScatterSums", "SlotTakeGrad"}

#: which RowSparse outputs are coalesced (sorted unique indices), per Op class name
COALESCED = {"FusedCSRScatterGrad", "FusedCSRScatterSums", "SlotTakeGrad", "AllRows",
             "PrepareRows"}

_register_elemwise()
_register_reductions()
_register_nn()
_register_sparse()
_register_fused_products()

__all__ = ["COALESCED", "Val", "covered", "emit", "supported_type"]
