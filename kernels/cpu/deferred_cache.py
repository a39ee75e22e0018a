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
cache files, same index, same source stamp), and a new one is written the same way.
"""
from __future__ import annotations

import numba
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import CPUDispatcher


class DeferredCacheDispatcher(CPUDispatcher):
    """A CPU dispatcher whose ``cache=True`` takes effect at its first compile."""

    _cache_pending = False  # an instance attribute once decorated with cache=True

    def compile(self, sig):
        if self._cache_pending:
            with global_compiler_lock:  # the lock compile takes (reentrant): one cache
                if self._cache_pending:
                    self.enable_caching()
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


__all__ = ["DeferredCacheDispatcher", "njit"]
