"""``mg.Mode``: how ``mg.function`` compiles a graph (which backend, which rewrites).

A mode is a small immutable value, so a test or a benchmark switches a rewrite off by
passing a mode, never by editing the global rewrite database::

    f = mg.function([x], y, mode=mg.Mode(exclude=("fuse",)))        # no fusion
    g = mg.function([x], y, mode=mg.Mode(backend="numpy"))            # the reference
    h = mg.function([x], y, mode=mg.Mode().excluding("merge_take_grads"))

``include``/``exclude`` are rewrite tags (a rewriter's name, its phase or any tag it was
registered with; see ``minigrad/rewrite.py``). ``backend=None`` means ``mg.config.backend``
at compile time. ``linker`` chooses how the compiled nodes run: ``"generated"`` (each
phase of the step is one generated straight-line Python function, the default) or ``"vm"``
(a loop over thunks, the simplest form, kept for comparison and debugging) or ``"jit"``
(numba backend: runs of nodes with a Numba emitter compiled as whole ``@njit`` functions,
cached on disk; other backends use ``"generated"``) or ``"tiered"`` (numba backend:
``"generated"`` until the function proved hot, then the ``"jit"`` segments, compiled in a
background process and loaded from the on-disk cache; see ``minigrad/tiered.py``); see
``minigrad/linker.py`` and ``minigrad/linker_jit.py``.

Why ``"generated"`` stays the default (measured in ``docs/compiler.md``, "The default
stays generated"): ``"jit"`` compiles each new graph at its first call (2.4-3.6 s of CPU
for a training step, with its helpers cached), which tests and one-off functions cannot
afford; and the jit segments do not compute the generated linker's bits (50 embedding
steps: 24 of the 50 costs and 30,500 of the 1.92M elements of ``E`` differ; it is the
reductions' order and the fused kernels, not only ``exp``/``log``), so any default that
picks the linker by timing (``"tiered"``) or by what is on disk (jit where a segment is
cached) would make a script's results depend on when or where it ran. A training loop
asks for the fast step with ``mg.Mode(linker="jit")`` (or ``"tiered"``); from a warm cache
its first call costs what the generated linker's does (~0.45 s of CPU, Numba's start-up)
once a second process has written the helpers' bundle (``backends/helper_bundle.py``).
"""
from __future__ import annotations

LINKERS = ("generated", "vm", "jit", "tiered")


def _tags(value, what):
    if isinstance(value, str):
        value = (value,)
    try:
        tags = tuple(value)
    except TypeError:
        raise TypeError(f"Mode {what} must be a tag or a sequence of tags, got {value!r}") from None
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"Mode {what}: rewrite tags are strings, got {tag!r}")
    return tags


class Mode:
    """Backend and rewrite selection for ``mg.function(..., mode=)``."""

    __slots__ = ("backend", "include", "exclude", "linker")

    def __init__(self, backend=None, include=(), exclude=(), linker="generated"):
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"Mode backend must be a name such as 'numpy', got {backend!r}")
        if linker not in LINKERS:
            raise ValueError(f"Mode linker must be one of {LINKERS}, got {linker!r}")
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "include", _tags(include, "include"))
        object.__setattr__(self, "exclude", _tags(exclude, "exclude"))
        object.__setattr__(self, "linker", linker)

    def __setattr__(self, name, value):
        raise AttributeError("Mode is immutable; use including()/excluding()/with_backend()")

    def including(self, *tags):
        return Mode(self.backend, self.include + tags, self.exclude, self.linker)

    def excluding(self, *tags):
        return Mode(self.backend, self.include, self.exclude + tags, self.linker)

    def with_backend(self, backend):
        return Mode(backend, self.include, self.exclude, self.linker)

    def with_linker(self, linker):
        return Mode(self.backend, self.include, self.exclude, linker)

    def _key(self):
        return (self.backend, self.include, self.exclude, self.linker)

    def __eq__(self, other):
        return isinstance(other, Mode) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (f"Mode(backend={self.backend!r}, include={self.include!r}, "
                f"exclude={self.exclude!r}, linker={self.linker!r})")


def resolve_mode(mode=None, backend=None):
    """The mode of one ``mg.function`` call: ``mode=``, with ``backend=`` as a shorthand."""
    if mode is None:
        return Mode(backend=backend)
    if isinstance(mode, str):
        raise TypeError(f"mode must be an mg.Mode, got the string {mode!r} "
                        "(for a backend, pass backend= or mg.Mode(backend=...))")
    if not isinstance(mode, Mode):
        raise TypeError(f"mode must be an mg.Mode, got {mode!r}")
    if backend is not None and mode.backend is not None and backend != mode.backend:
        raise ValueError(f"backend={backend!r} contradicts mode.backend={mode.backend!r}")
    if backend is not None:
        mode = mode.with_backend(backend)
    return mode
