"""User-facing variables: symbolic inputs, constants, shared parameters.

``TensorVariable`` adds NumPy-like operators (``+``, ``@``, ``.sum()``, ``table[idx]``...)
that build graph nodes. ``SharedVariable`` is a leaf whose value lives across calls of
compiled functions (a parameter); ``mg.function`` reads it and ``updates`` write it.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from minigrad.config import config
from minigrad.graph import Constant, Variable
from minigrad.types import CSRType, RowSparse, RowSparseType, TensorType


def _ops():
    import minigrad.ops as ops  # the ops import this module; resolve at call time

    return ops


class TensorVariable(Variable):
    """A dense symbolic array with NumPy-style operators."""

    shape = property(lambda self: _ops().shape_of(self))
    T = property(lambda self: _ops().transpose(self))
    size = property(lambda self: _ops().prod_shape(self))

    def __add__(self, other):
        return _ops().add(self, other)

    def __radd__(self, other):
        return _ops().add(other, self)

    def __sub__(self, other):
        return _ops().sub(self, other)

    def __rsub__(self, other):
        return _ops().sub(other, self)

    def __mul__(self, other):
        return _ops().mul(self, other)

    def __rmul__(self, other):
        return _ops().mul(other, self)

    def __truediv__(self, other):
        return _ops().true_div(self, other)

    def __rtruediv__(self, other):
        return _ops().true_div(other, self)

    def __pow__(self, other):
        return _ops().pow(self, other)

    def __rpow__(self, other):
        return _ops().pow(other, self)

    def __matmul__(self, other):
        return _ops().matmul(self, other)

    def __rmatmul__(self, other):
        return _ops().matmul(other, self)

    def __neg__(self):
        return _ops().neg(self)

    def __abs__(self):
        return _ops().abs(self)

    def __lt__(self, other):
        return _ops().lt(self, other)

    def __le__(self, other):
        return _ops().le(self, other)

    def __gt__(self, other):
        return _ops().gt(self, other)

    def __ge__(self, other):
        return _ops().ge(self, other)

    def eq(self, other):
        """Element-wise ``==`` (``__eq__`` stays identity so variables can key dicts)."""
        return _ops().eq(self, other)

    def neq(self, other):
        return _ops().neq(self, other)

    __hash__ = Variable.__hash__

    def __getitem__(self, key):
        return _ops().getitem(self, key)

    def sum(self, axis=None, keepdims=False):
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops().max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return _ops().reshape(self, shape)

    def astype(self, dtype):
        return _ops().cast(self, dtype)

    def transpose(self, *axes):
        return _ops().transpose(self, axes or None)

    def dot(self, other):
        return _ops().dot(self, other)

    def __iter__(self):
        raise TypeError("symbolic variables cannot be iterated; index them instead")

    def __bool__(self):
        raise TypeError("a symbolic variable has no truth value until the graph runs")


class TensorConstant(Constant, TensorVariable):
    __hash__ = Variable.__hash__


class CSRVariable(Variable):
    """A symbolic scipy CSR matrix (input of ``mg.sparse.dot``)."""

    shape = property(lambda self: _ops().shape_of(self))


class RowSparseVariable(Variable):
    """Symbolic row-sparse gradient; ``to_dense()`` densifies, ``+`` accumulates."""

    def to_dense(self):
        return _ops().rowsparse_to_dense(self)

    def __add__(self, other):
        return _ops().add(self, other)

    __radd__ = __add__

    def __mul__(self, other):
        return _ops().mul(self, other)

    __rmul__ = __mul__

    def __neg__(self):
        return _ops().mul(self, -1.0)

    def __sub__(self, other):
        return _ops().add(self, _ops().neg(other))

    def __truediv__(self, other):
        return _ops().mul(self, _ops().true_div(1.0, other))


class SharedVariable(TensorVariable):
    """A parameter: a leaf whose value persists across calls and can be updated.

    ``get_value`` first runs any *flush hooks* (an exact-mode sparse optimizer registers
    one so that rows with pending catch-up steps are brought up to date before anyone
    reads them), then returns a copy unless ``borrow=True``.
    """

    def __init__(self, type, value, name=None):
        super().__init__(type, name=name)
        self._value = value
        self._flush_hooks = []

    def add_flush_hook(self, hook):
        if hook not in self._flush_hooks:
            self._flush_hooks.append(hook)

    def flush(self):
        from minigrad.call_checks import CALL_LOCK  # catch-ups never race a compiled step

        with CALL_LOCK:
            for hook in list(self._flush_hooks):
                hook()

    def get_value(self, borrow=False):
        """The current value; a host (NumPy) copy unless ``borrow=True``.

        With ``borrow=True`` the stored array itself is returned (a CuPy array while a
        ``backend="cupy"`` function keeps the parameter resident on the GPU).
        """
        self.flush()
        value = self._value
        if borrow:
            return value
        if hasattr(value, "__cuda_array_interface__"):
            return value.get()
        return value.copy()

    def set_value(self, value, borrow=False):
        """Replace the value (validated and cast by the variable's type).

        The invariant every in-place update relies on holds after this call: the stored
        array is C-contiguous, writeable and owns (or borrows) memory nobody else marked
        read-only. ``borrow=True`` keeps the caller's array only when it already is such
        an array; a read-only, Fortran-ordered or strided one is copied, so an optimizer
        can never half-apply a step on a table it cannot write (issue 15, item 4).
        """
        name = self.name or "shared variable"
        new = self.type.filter(value, name=name)
        if hasattr(new, "__cuda_array_interface__"):
            pass  # a CuPy array: device memory, always writeable
        elif not borrow and new is value:
            new = np.array(new, copy=True, order="C")
        elif not (new.flags.c_contiguous and new.flags.writeable):
            new = np.array(new, copy=True, order="C")
        from minigrad.call_checks import CALL_LOCK

        with CALL_LOCK:
            self.flush()
            self._value = new

    @property
    def value(self):
        """Direct (borrowed) access used by the compiled function and optimizers."""
        return self._value

    def clone(self):
        return self


TensorType.variable_class = TensorVariable
CSRType.variable_class = CSRVariable
RowSparseType.variable_class = RowSparseVariable


# ---------------------------------------------------------------------------------------
# Constructors


def _float_dtype(dtype):
    return np.dtype(dtype or config.floatX).name


def tensor(name=None, dtype=None, shape=(None, None)):
    """A symbolic input of the given dtype and shape (``None`` = any length)."""
    return TensorType(_float_dtype(dtype), shape).make_variable(name)


def scalar(name=None, dtype=None):
    return tensor(name, dtype, ())


def vector(name=None, dtype=None):
    return tensor(name, dtype, (None,))


def matrix(name=None, dtype=None):
    return tensor(name, dtype, (None, None))


def tensor3(name=None, dtype=None):
    return tensor(name, dtype, (None, None, None))


def iscalar(name=None):
    return tensor(name, "int32", ())


def ivector(name=None):
    return tensor(name, "int32", (None,))


def imatrix(name=None):
    return tensor(name, "int32", (None, None))


def lscalar(name=None):
    return tensor(name, "int64", ())


def lvector(name=None):
    return tensor(name, "int64", (None,))


def lmatrix(name=None):
    return tensor(name, "int64", (None, None))


def csr_matrix(name=None, dtype=None, n_cols=None):
    """A symbolic sparse input, fed a ``scipy.sparse`` CSR matrix or array."""
    return CSRType(_float_dtype(dtype), n_cols).make_variable(name)


def _static_shape(arr):
    # Axes of length 1 broadcast; every other length may change with set_value.
    return tuple(1 if s == 1 else None for s in arr.shape)


def shared(value, name=None, dtype=None):
    """A parameter holding ``value`` (copied) across calls of compiled functions."""
    if isinstance(value, (SharedVariable,)):
        raise TypeError("shared() needs an array, got a shared variable")
    # C order: in-place row updates need C-contiguous, writeable tables (see set_value)
    arr = np.array(value, dtype=dtype, copy=True, order="C")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"shared(): unsupported dtype {arr.dtype}")
    if arr.dtype.kind == "f" and dtype is None and np.asarray(value).dtype.kind != "f":
        arr = arr.astype(config.floatX)
    # Length-1 axes are static (they broadcast, as in Theano); other lengths may change.
    typ = TensorType(arr.dtype, _static_shape(arr))
    return SharedVariable(typ, arr, name=name)


def constant(value, name=None, dtype=None):
    """A constant node. Python floats become ``floatX``; ints stay integers."""
    if isinstance(value, Variable):
        return value
    if isinstance(value, float) and dtype is None:
        dtype = config.floatX
    arr = np.asarray(value, dtype=dtype)
    if isinstance(value, int) and not isinstance(value, bool) and dtype is None:
        arr = np.asarray(value, dtype="int64")
    typ = TensorType(arr.dtype, _static_shape(arr) if arr.ndim else ())
    const = TensorConstant(typ, arr, name=name)
    const.tag["weak"] = isinstance(value, (int, float)) and not isinstance(value, bool)
    return const


def as_variable(x, name=None):
    """Wrap Python numbers and arrays as constants; pass variables through."""
    if isinstance(x, Variable):
        return x
    if sp.issparse(x) or isinstance(x, RowSparse):
        raise TypeError(f"cannot use a {type(x).__name__} as a constant; use an input")
    return constant(x, name=name)
