"""``njit`` whose on-disk cache is set up at the function's first compile, not at import.

``numba.njit(cache=True)`` builds the function's cache object as it decorates it: it finds
the cache directory, creates it, proves it writable by creating and deleting a temporary
file, and stats the source file. That is ~0.3 ms per function, ~40 ms for the ~140
kernels and helpers a compiled training step imports, paid by the first ``mg.function`` of
a process even though most of those functions are never called (or are only inlined into
another one) in that process.

This ``njit`` takes the same arguments. With ``cache=True`` it decorates without a cache
and makes the dispatcher a :class:`DeferredCacheDispatcher`, whose every compile (a call
with new types, a caller's typing, an explicit ``compile``) first builds the cache object,
once: a cached version is then loaded exactly as from ``numba.njit(cache=True)`` (same
cache files, same index), and a new one is written the same way.

One thing differs on purpose: the source stamp. Numba stamps a cache with its own source
file's modification time and size only, but a kernel's compiled code also holds every
kernel it calls or inlines from other files (``update_driver.step_rows`` inlines
``direct_rows.adam_plain``, which inlines ``kernels.rules.adam``). Editing one of those
left the caller's cached machine code in use, silently. Here the stamp also holds the
stamps of every ``kernels`` module the function's module imports, transitively (found by
scanning their import lines, so a constant imported by name counts too): an edit anywhere
in that closure makes the cache stale and the function compiles again.
"""
from __future__ import annotations

import functools
import os
import re

import numba
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import CPUDispatcher

_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(kernels[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)"
                     r"|import[ \t]+(kernels[\w.]*))", re.M)
_KERNELS_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_closures: dict[str, tuple] = {}  # module name -> its dependency stamp, once per process


def _module_file(name):
    """The source file of the ``kernels`` module ``name``, found on disk without importing
    anything (``importlib.util.find_spec`` would import the parent packages), or None."""
    parts = name.split(".")
    if parts[0] != "kernels":
        return None
    base = os.path.join(_KERNELS_ROOT, *parts[1:])
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


@functools.lru_cache(maxsize=None)
def _kernel_imports(path):
    """The ``kernels`` modules a source file imports (``from kernels.rules import adam``
    names the submodule ``kernels.rules.adam`` as well as the package)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    names = set()
    for package, imported, plain in _IMPORT.findall(source):
        if plain:
            names.add(plain)
            continue
        names.add(package)
        for name in re.findall(r"\w+", imported.split("#")[0]):
            if _module_file(f"{package}.{name}") is not None:
                names.add(f"{package}.{name}")
    return frozenset(names)


def dependency_stamp(module_name):
    """``(module, mtime_ns, size)`` of ``module_name``'s file and of every ``kernels``
    module it reaches through its imports, sorted: what a kernel's cached code depends on."""
    if module_name in _closures:
        return _closures[module_name]
    seen, todo, stamp = set(), [module_name], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        st = os.stat(path)
        stamp.append((name, st.st_mtime_ns, st.st_size))
        todo.extend(_kernel_imports(path) - seen)
    _closures[module_name] = result = tuple(sorted(stamp))
    return result


class DeferredCacheDispatcher(CPUDispatcher):
    """A CPU dispatcher whose ``cache=True`` takes effect at its first compile."""

    _cache_pending = False  # an instance attribute once decorated with cache=True

    def compile(self, sig):
        if self._cache_pending:
            with global_compiler_lock:  # the lock compile takes (reentrant): one cache
                if self._cache_pending:
                    self.enable_caching()
                    cache_file = self._cache._cache_file
                    cache_file._source_stamp = (cache_file._source_stamp,
                                                dependency_stamp(self.py_func.__module__))
                    self._cache_pending = False
        return super().compile(sig)


def njit(*args, **options):
    """``numba.njit`` (same arguments), with ``cache=True`` deferred to the first compile.

    Eager signatures (``njit("f8(f8)", cache=True)``) compile at decoration, so their
    cache is set up right away, as with ``numba.njit``."""
    if not options.get("cache") or (args and not callable(args[0])):
        return numba.njit(*args, **options)
    options = dict(options, cache=False)

    def decorate(func):
        dispatcher = numba.njit(**options)(func)
        if type(dispatcher) is CPUDispatcher:  # not a plain function (NUMBA_DISABLE_JIT)
            dispatcher.__class__ = DeferredCacheDispatcher
            dispatcher._cache_pending = True
        return dispatcher

    return decorate(args[0]) if args else decorate


__all__ = ["DeferredCacheDispatcher", "dependency_stamp", "njit"]
