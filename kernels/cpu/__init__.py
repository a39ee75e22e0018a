"""Numba CPU kernels, same names and signatures as ``kernels.reference``.

The kernels live in submodules (``rows``, ``optim``, ``fused``, ``fresh``) that are imported
at the first use of one of their names (``kernels.cpu.gather_rows`` imports ``rows`` only):
each ``@njit`` function costs Numba a dispatcher as its module is imported, and a
compile that needs the row kernels should not pay for the optimizer or fused ones.

The kernels' ``prange`` loops use Numba's ``workqueue`` threading layer unless
``NUMBA_THREADING_LAYER`` says otherwise: GNU OpenMP (the default layer of the PyPI wheels)
aborts any process that forks after using it, and ``mg.parallel.hogwild`` forks workers.
"""
import importlib as _importlib
import os as _os
from importlib.util import find_spec as _find_spec

if "NUMBA_THREADING_LAYER" not in _os.environ:
    import numba as _numba

    _numba.config.THREADING_LAYER = "workqueue"

#: the public kernels and the submodule each lives in; a name missing here is still found
#: (every submodule is imported and searched), this is only what keeps the others unloaded
_WHERE = {
    **dict.fromkeys(("gather_rows", "scatter_add_rows", "coalesce_rows", "bag_sum",
                     "csr_dense_dot", "csr_t_dense_dot_rows", "segment_sum", "csr_scale_rows",
                     "csr_row_dots", "csr_gathered_dot", "rows_finite"), "rows"),
    **dict.fromkeys(("sgd_rows", "momentum_rows", "adagrad_rows", "rmsprop_rows",
                     "adam_rows"), "optim"),
    **dict.fromkeys(("csr_gather_mul_sum", "csr_scatter_grad_rows", "slot_coalesce_rows",
                     "new_slot_map", "csr_gather_mul_sum_trusted",
                     "csr_scatter_grad_rows_trusted"), "fused"),
    **dict.fromkeys(("gather_lagging", "fresh_linear"), "fresh"),
}
#: the submodules whose ``__all__`` this package re-exports, in the order they were starred
_EXPORTING = ("rows", "optim", "fused", "fresh")


def _submodule(name):
    return _importlib.import_module(f"{__name__}.{name}")


def __getattr__(name):
    if name == "__all__":  # ``from kernels.cpu import *``: every submodule's names
        names = [n for sub in _EXPORTING for n in _submodule(sub).__all__]
        globals()["__all__"] = names
        return names
    if name.startswith("__"):
        raise AttributeError(name)
    where = _WHERE.get(name)
    if where is None and _find_spec(f"{__name__}.{name}") is not None:
        return _submodule(name)  # ``from kernels.cpu import jit_ops``: that module only
    for sub in dict.fromkeys((where, *_EXPORTING) if where else _EXPORTING):
        module = _submodule(sub)
        if name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
