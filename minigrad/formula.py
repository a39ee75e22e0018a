"""``mg.pp``: an expression as a one-line formula, Theano style.

``pp(grad(cost, E))`` reads ``TakeGrad(tokens, ...)`` rather than a 60-line tree: the
bookkeeping Ops of :mod:`minigrad.readable` are looked through, Python operators are
written infix with the fewest parentheses precedence allows, row gathers as ``T[idx]``.

A graph is a DAG, and a gradient re-uses forward values many times, so inlining every
use could make the line exponentially long. Sub-expressions used more than once (and
not tiny) are therefore bound once to ``t0``, ``t1``... and variables the user named
(``p.name = "p"``) are printed by name; both are defined after the formula:
``TakeGrad(idx, t0 * 2) where t0 = E[idx] - P``.
"""
from __future__ import annotations

import numpy as np

from minigrad.readable import data_inputs, op_name
from minigrad.readable import look_through as _look_through

ATOM, POW, UNARY, MUL, ADD, CMP = 100, 9, 8, 7, 6, 4

INFIX = {
    "add": ("+", ADD), "sub": ("-", ADD), "mul": ("*", MUL), "true_div": ("/", MUL),
    "pow": ("**", POW), "lt": ("<", CMP), "le": ("<=", CMP), "gt": (">", CMP),
    "ge": (">=", CMP), "eq": ("==", CMP), "neq": ("!=", CMP),
}
#: ops that mean "a + b" or "a * b" whatever representation they add
ROWSPARSE_INFIX = {"RowSparseAdd": "add", "DenseAddRowSparse": "add", "MulReduceLike": "mul"}
BIND_MIN_CHARS = 12


def _shows_new_axes(node):
    """``ExpandDims`` of a non-scalar stays visible as ``x[:, None]``: the broadcast it
    prepares is part of the maths (``t[:, None] * (A - N)``)."""
    return op_name(node.op) == "ExpandDims" and node.inputs[0].ndim >= 1


def look_through(var):
    return _look_through(var, keep=_shows_new_axes)


def _children(var):
    """The variables the formula of ``var`` shows, bookkeeping looked through."""
    node = var.owner
    if node is None:
        return []
    if op_name(node.op) == "CountOf":
        return [look_through(_shape_target(node.inputs[0]))]
    return [look_through(v) for v in data_inputs(node)]


def _shape_target(var):
    """``x`` for ``var = Shape(x)`` (the value a count or a borrowed shape is about)."""
    from minigrad.ops.shape import shape_source

    source = shape_source(var)
    return var if source is None else source


def _constant_text(var):
    data = np.asarray(var.data)
    if data.size == 1 and data.ndim <= 1:
        value = data.reshape(-1)[0].item()
        if not isinstance(value, float):
            return repr(value)
        text = f"{value:.8g}"
        return text + ".0" if text.lstrip("-").isdigit() else text
    if data.size <= 6:
        return np.array2string(data, separator=", ").replace("\n", "")
    return f"constant{data.shape}"


def _leaf_text(var):
    from minigrad.graph import Constant
    from minigrad.variables import SharedVariable

    if isinstance(var, Constant):
        return _constant_text(var)
    if var.name:
        return var.name
    kind = "shared" if isinstance(var, SharedVariable) else "input"
    return f"<{kind} {var.type}>"


def _axes_args(op, x):
    axes = tuple(getattr(op, "axes", ()))
    parts = []
    if axes != tuple(range(x.ndim)):
        parts.append(f"axis={axes[0] if len(axes) == 1 else axes}")
    if getattr(op, "keepdims", False):
        parts.append("keepdims=True")
    return parts


def _key_text(key, scalars=()):
    """A frozen slicing key (see ``ops/shape.py``) as Python subscript text."""
    def bound(b):
        if isinstance(b, tuple) and b and b[0] == "input":
            return scalars[b[1]]
        return "" if b is None else str(b)

    parts = []
    for k in key:
        if k[0] == "slice":
            start, stop, step = (bound(b) for b in k[1:])
            parts.append(f"{start}:{stop}" + (f":{step}" if step else ""))
        elif k[0] == "int":
            parts.append(bound(k[1]))
        elif k[0] == "newaxis":
            parts.append("None")
        else:
            parts.append("...")
    return ", ".join(parts)


class _Printer:
    """Renders one formula. ``atoms`` maps variables to labels printed instead of their
    formula (the readable ``debugprint`` defines them on their own lines); those used are
    collected in ``referenced``."""

    def __init__(self, root, bind=True, atoms=None, max_chars=None, too_long=None):
        self.root, self.bind, self.max_chars = root, bind, max_chars
        self.too_long = set() if too_long is None else too_long
        self.bound, self.defs, self.counter = {}, [], 0
        self.atoms, self.referenced = atoms or {}, []
        self.uses = self._count_uses(root) if bind else {}

    @staticmethod
    def _count_uses(root):
        uses, seen, stack = {}, set(), [root]
        while stack:
            var = stack.pop()
            if var in seen:
                continue
            seen.add(var)
            for child in _children(var):
                uses[child] = uses.get(child, 0) + 1
                stack.append(child)
        return uses

    def text(self, var, depth=0):
        """(text, precedence) of ``var``, binding it to a name where that is shorter."""
        if self.max_chars is None:
            return self._text(var, depth)
        var = look_through(var)
        if var in self.atoms and var is not self.root:
            return self._text(var, depth)  # printed as its label, however long its formula
        if var in self.too_long:
            raise TooLong
        try:
            return self._text(var, depth)
        except TooLong:
            self.too_long.add(var)  # and so are all its ancestors: the next call stops early
            raise

    def _text(self, var, depth):
        var = look_through(var)
        if var.owner is None:
            return _leaf_text(var), ATOM
        if var in self.bound:
            return self.bound[var], ATOM
        if var in self.atoms and var is not self.root:
            if var not in self.referenced:
                self.referenced.append(var)
            return self.atoms[var], ATOM
        if var is not self.root and (var.name or depth > 100 or (
                self.uses.get(var, 0) > 1 and len(self._body(var, depth)[0]) > BIND_MIN_CHARS)):
            name = var.name or f"t{self.counter}"
            if not var.name:
                self.counter += 1
            self.bound[var] = name
            body, _ = self._body(var, 0)
            self.defs.append(f"{name} = {body}")
            return name, ATOM
        text, prec = self._body(var, depth)
        if self.max_chars is not None and len(text) > self.max_chars:
            raise TooLong  # the caller wanted a short formula or none: stop early
        return text, prec

    def _arg(self, var, depth, min_prec):
        text, prec = self.text(var, depth + 1)
        return f"({text})" if prec < min_prec else text

    def _body(self, var, depth):
        node = var.owner
        op, name = node.op, op_name(node.op)
        kids = _children(var)
        infix = INFIX.get(getattr(op, "name", None)) if len(kids) == 2 else None
        if name in ROWSPARSE_INFIX and name != "MulReduceLike":
            infix = INFIX[ROWSPARSE_INFIX[name]]
        if infix is not None and len(kids) == 2:
            sym, prec = infix
            if sym == "**":
                left, right = self._arg(kids[0], depth, ATOM), self._arg(kids[1], depth, UNARY)
            else:
                right_min = prec + 1 if sym in ("-", "/") or prec == CMP else prec
                left, right = self._arg(kids[0], depth, prec), self._arg(kids[1], depth, right_min)
            return f"{left} {sym} {right}", prec
        if getattr(op, "name", None) == "neg":
            return "-" + self._arg(kids[0], depth, UNARY), UNARY
        if name == "MatMul":
            a, b = self._arg(kids[0], depth, MUL), self._arg(kids[1], depth, MUL + 1)
            return f"{a} @ {b}", MUL
        if name == "Transpose" and tuple(op.axes) == tuple(reversed(range(len(op.axes)))):
            return self._arg(kids[0], depth, ATOM) + ".T", ATOM
        if name == "Take":
            return f"{self._arg(kids[0], depth, ATOM)}[{self.text(kids[1], depth + 1)[0]}]", ATOM
        if name in ("Subtensor", "DynamicSubtensor"):
            scalars = [self.text(k, depth + 1)[0] for k in kids[1:]]
            return f"{self._arg(kids[0], depth, ATOM)}[{_key_text(op.key, scalars)}]", ATOM
        if name in ("ReduceLike", "MulReduceLike"):  # only those that surely reduce get here
            from minigrad.readable import definite_reduction

            axes = definite_reduction(node.inputs[0], node.inputs[-1])
            inner = (f"{self._arg(kids[0], depth, MUL)} * {self._arg(kids[1], depth, MUL + 1)}"
                     if name == "MulReduceLike" else self.text(kids[0], depth + 1)[0])
            args = [inner]
            if len(axes) != len(node.inputs[0].type.shape):
                args.append(f"axis={axes[0] if len(axes) == 1 else axes}")
            target_ndim = node.inputs[-1].type.shape[0]  # the length of the shape value
            if target_ndim and target_ndim == node.inputs[0].ndim:
                args.append("keepdims=True")
            return f"sum({', '.join(args)})", ATOM
        if name in ("SubtensorGrad", "DynamicSubtensorGrad"):
            scalars = [self.text(k, depth + 1)[0] for k in kids[1:]]
            return f"{name}[{_key_text(op.key, scalars)}]({self.text(kids[0], depth + 1)[0]})", ATOM
        if name == "ExpandDims":
            subscript = [":"] * var.ndim
            for a in op.axes:
                subscript[a] = "None"
            while subscript and subscript[-1] == ":":
                subscript.pop()
            return f"{self._arg(kids[0], depth, ATOM)}[{', '.join(subscript)}]", ATOM
        if name == "CountOf":
            x = look_through(_shape_target(node.inputs[0]))
            base = self._arg(x, depth, ATOM)
            if tuple(op.axes) == tuple(range(x.ndim)):
                return f"{base}.size", ATOM
            if len(op.axes) == 1:
                return f"{base}.shape[{op.axes[0]}]", ATOM
            return " * ".join(f"{base}.shape[{a}]" for a in op.axes), MUL
        if name in ("Sum", "Mean", "Max"):
            args = [self.text(kids[0], depth + 1)[0], *_axes_args(op, node.inputs[0])]
            return f"{name.lower()}({', '.join(args)})", ATOM
        if hasattr(op, "name") and isinstance(op.name, str) and name in ("Unary", "Binary"):
            label = op.name
        else:
            label = str(op)
        args = ", ".join(self.text(k, depth + 1)[0] for k in kids)
        out = f"[{var.index}]" if len(node.outputs) > 1 else ""
        return f"{label}({args}){out}", ATOM


class TooLong(Exception):
    """Raised by ``render(..., max_chars=n)`` as soon as the formula exceeds ``n``."""


def render(var, bind=True, atoms=None, max_chars=None, too_long=None):
    """(formula text, the ``atoms`` it used) of ``var``; ``TooLong`` past ``max_chars``.

    ``too_long``: a set shared by calls with the same ``atoms`` and ``max_chars``,
    remembering the variables whose formula is already known to be too long."""
    printer = _Printer(look_through(var), bind=bind, atoms=atoms, max_chars=max_chars,
                       too_long=too_long)
    text, _ = printer.text(var)
    if printer.defs:
        text += "  where  " + "; ".join(printer.defs)
    return text, printer.referenced


def pp_string(var, bind=True) -> str:
    """The one-line formula of ``var`` (see the module docstring)."""
    return render(var, bind=bind)[0]


def pp(var, file=None, print_=True) -> str:
    """Print (and return) ``var`` as a one-line formula, e.g. ``sum((A - P) ** 2, axis=1)``."""
    from minigrad.graph import Variable

    if not isinstance(var, Variable):
        raise TypeError(f"mg.pp needs a symbolic variable, got {type(var).__name__}; "
                        "for a compiled function use mg.debugprint(f)")
    from minigrad.deep_recursion import call_deep

    text = call_deep(pp_string, var)
    if print_:
        print(text, file=file)
    return text
