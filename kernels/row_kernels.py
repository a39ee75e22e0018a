"""The fused optimizer row kernels, by rule and backend: one table, no names looked up.

An optimizer class names its rule (``Adam.rule = "adam"``); each backend's kernel module
registers the function that runs that rule on its arrays, next to where it is defined,
in the manner of the compiler's backend tables (``impl.register(Op)``)::

    register_row_kernels("numba", {"adam": adam_rows, ...})   # end of kernels/cpu/optim.py

``row_kernel(rule, module)`` returns the entry for the backend of a kernel module
(``kernels.reference`` -> "numpy", ``kernels.cpu`` -> "numba", ``kernels.gpu`` -> "cupy"),
importing that backend's optimizer module on first use (``kernels.cpu`` needs Numba,
``kernels.gpu`` CuPy, so nothing is imported before it is asked for). Before this table
the kernel was found with ``getattr(module, "adam_rows")``: a renamed function broke at
run time, and nothing listed which rule ran where. Adding an optimizer now means its
rule file, its kernels registered here by their backend modules, and its class.
"""
from __future__ import annotations

import importlib

__all__ = ["BACKENDS", "fresh_read", "register_fresh_reads", "register_row_kernels",
           "row_kernel", "rules_of"]

#: backend -> the module whose import registers its fused reads (``fresh_read``)
FRESH_MODULES = {"numba": "kernels.cpu.fresh"}

#: backend -> the module whose import registers its row kernels
BACKENDS = {"numpy": "kernels.reference.optim", "numba": "kernels.cpu.optim",
            "cupy": "kernels.gpu.optim"}
#: kernel package (what ``kernel_module()`` / ``module_for()`` return) -> backend
_BACKEND_OF_PACKAGE = {"kernels.reference": "numpy", "kernels.cpu": "numba",
                       "kernels.gpu": "cupy"}

_TABLE: dict[tuple[str, str], object] = {}
_FRESH: dict[tuple[str, str], object] = {}
_FRESH_LOADED: set = set()
_BACKEND_CACHE = {}  # module object -> backend (a kernel call looks it up every time)


def register_row_kernels(backend, kernels):
    """Record ``{rule: function}`` as the row kernels of ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (known: {sorted(BACKENDS)})")
    for rule, fn in kernels.items():
        if not callable(fn):
            raise TypeError(f"row kernel of {rule!r} on {backend} is not callable: {fn!r}")
        _TABLE[(rule, backend)] = fn


def backend_of(module):
    """The backend name of a kernel package or of one of its submodules."""
    name = getattr(module, "__name__", "")
    for package, backend in _BACKEND_OF_PACKAGE.items():
        if name == package or name.startswith(package + "."):
            return backend
    raise TypeError(f"{name or module!r} is not a kernel module (known: "
                    f"{sorted(_BACKEND_OF_PACKAGE)})")


def row_kernel(rule, module):
    """The fused row kernel of ``rule`` for the backend of kernel module ``module``.
    Looked up at every call (two dict reads), so a test that swaps a table entry sees
    every later call."""
    backend = _BACKEND_CACHE.get(module)
    if backend is None:
        backend = _BACKEND_CACHE[module] = backend_of(module)
    fn = _TABLE.get((rule, backend))
    if fn is None:
        importlib.import_module(BACKENDS[backend])  # registers that backend's kernels
        fn = _TABLE.get((rule, backend))
    if fn is None:
        have = sorted(r for r, b in _TABLE if b == backend)
        raise NotImplementedError(f"no row kernel for rule {rule!r} on backend {backend} "
                                  f"(it has: {have})")
    return fn


def rules_of(backend):
    """The rules with a row kernel registered on ``backend`` (its module imported)."""
    importlib.import_module(BACKENDS[backend])
    return sorted(r for r, b in _TABLE if b == backend)


def register_fresh_reads(backend, reads):
    """Record ``{rule: function}`` as the fused exact-mode reads of ``backend``: ``fn(tables,
    last, flat, t, history, hyper) -> (bad, out)``, the gathered rows caught up in one
    pass (``out`` None: the read does not apply, the caller takes the general path)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (known: {sorted(BACKENDS)})")
    for rule, fn in reads.items():
        if not callable(fn):
            raise TypeError(f"fresh read of {rule!r} on {backend} is not callable: {fn!r}")
        _FRESH[(rule, backend)] = fn


def fresh_read(rule, module):
    """The fused read of ``rule`` on the backend of kernel module ``module``, or None (the
    general path: ``gather_lagging`` then the rule's row kernel on the lagging rows)."""
    backend = _BACKEND_CACHE.get(module)
    if backend is None:
        backend = _BACKEND_CACHE[module] = backend_of(module)
    if backend not in _FRESH_LOADED:
        if backend in FRESH_MODULES:
            importlib.import_module(FRESH_MODULES[backend])
        _FRESH_LOADED.add(backend)
    return _FRESH.get((rule, backend))
