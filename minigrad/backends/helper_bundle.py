"""One object file holding every helper a jit segment calls, so a fresh process binds a
segment with one load instead of one Numba cache load per helper.

A jit segment calls its ``@njit`` helpers through addresses (``jit_calls.py``), bound at its
first call in a process. Bound one at a time, each helper is a load from Numba's on-disk
cache: its index and data files, its type information, its LLVM bitcode (kept for
linking), its object code, its symbols. The embedding step's segment calls 31 helpers:
~0.15-0.2 s of a warm first call that is otherwise Numba's own start-up (~0.3 s).

A *bundle* is the machine code of a set of helpers made once: the helpers' LLVM modules
(already optimised by Numba) linked into one module, each helper's entry point renamed to
a name of the bundle's own (``mgh_<key>_<n>``) and everything else made internal, so
nothing in it can clash with a symbol Numba loads or compiles in the same process; then
dead-code removal and code generation only (Numba's optimisation does not run again). It
is written atomically under ``<cache>/helper_bundles/`` (``$MINIGRAD_CACHE_DIR``), named by
a hash of the helpers (module, name, argument types), of the kernels' sources, of the
Numba and llvmlite versions and of the CPU Numba generates code for, and carries a SHA-256
of its contents, checked before it is loaded: a stale, foreign or damaged file is never
given to the JIT, it is ignored.

A bundle is written (``jit_calls.bind``) by a process that *loaded* a segment from the
cache and had to bind its helpers one by one, when it calls at least :data:`MIN_HELPERS`
helpers (in a thread, beside its training loop: :func:`build_in_background`), and by the
tiered linker's background compiler. Code generation of a training step's helpers costs
1.8-2.6 s of CPU, once: the process that compiles a segment (a first run, a test suite
with fresh graphs) never spends it on top of the compile; the second run does, in the
background; every later one binds in one load. Helpers that need what a bundle cannot give (a Numba
environment object, dynamic globals, functions to re-run at load) make the whole set fall
back to binding one at a time. ``MINIGRAD_JIT_BUNDLES=0`` (read at import) switches
bundles off: every segment binds helper by helper, and none is written.

The trade, measured (``docs/compiler.md``): writing the embedding step's bundle costs
1.8 s of CPU (31 helpers), the FM step's 2.6 s (39), once, in a thread of the second
process; every later process saves ~0.2 s of CPU (0.5 s of wall time on a loaded box)
at its first call.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import threading

log = logging.getLogger("minigrad.jit")

MIN_HELPERS = 12  # fewer helpers bind fast enough one by one (~5-7 ms each)
FORMAT = 1
# key -> (library, {label: address}): each bundle is loaded once per process (its symbols
# must not be defined twice in the JIT), and stays alive (called through raw addresses)
_LOADED = {}
_DISABLED = os.environ.get("MINIGRAD_JIT_BUNDLES", "1") == "0"


def bundle_dir():
    from minigrad.backends.numba_fused import cache_dir

    return os.path.join(os.path.dirname(cache_dir()), "helper_bundles")


def helper_label(module_name, qualname, argtypes):
    """The text that identifies one helper overload in a bundle (same in every process)."""
    return f"{module_name}.{qualname}({', '.join(str(t) for t in argtypes)})"


def _codegen():
    from numba.core.registry import cpu_target

    ctx = cpu_target.target_context
    ctx.refresh()  # the runtime's symbols (NRT, helperlib) are known before any load
    return ctx.codegen()


_CONTEXT = []


def _context():
    """What every bundle key of this process shares (computed once: it reads the kernels'
    sources)."""
    if not _CONTEXT:
        import llvmlite
        import numba

        from minigrad.linker_jit import kernel_sources_digest

        _CONTEXT.append((f"format {FORMAT}", numba.__version__, llvmlite.__version__,
                         repr(_codegen().magic_tuple()), kernel_sources_digest()))
    return _CONTEXT[0]


def bundle_key(labels):
    """The file name stem of the bundle of the helpers ``labels``."""
    h = hashlib.sha1()
    for part in (*_context(), *sorted(set(labels))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _path(key):
    return os.path.join(bundle_dir(), f"helpers_{key}.bundle")


def _digest(entries, obj, bitcode):
    h = hashlib.sha256(repr(sorted(entries.items())).encode())
    h.update(obj)
    h.update(bitcode)
    return h.hexdigest()


def load(labels):
    """``{label: address}`` of the helpers ``labels`` from their bundle in this process, or
    None when there is no usable bundle (absent, damaged, made for other sources)."""
    if _DISABLED or not labels:
        return None
    key = bundle_key(labels)
    if key in _LOADED:
        return _pick(_LOADED[key][1], labels)
    try:
        with open(_path(key), "rb") as fh:
            data = _PlainUnpickler(fh).load()
    except Exception:  # absent, or not a bundle: bind helper by helper
        return None
    try:
        entries, obj, bitcode = data["entries"], data["object"], data["bitcode"]
        if (data.get("format") != FORMAT or data.get("key") != key
                or data.get("sha256") != _digest(entries, obj, bitcode)
                or not set(labels) <= set(entries)):
            return None
    except (TypeError, KeyError, AttributeError):
        return None
    library = _codegen().unserialize_library((f"minigrad_helpers_{key}", "object",
                                              (obj, bitcode)))
    addresses = {label: library.get_pointer_to_function(symbol)
                 for label, symbol in entries.items()}
    _LOADED[key] = (library, addresses)
    return _pick(addresses, labels)


class _PlainUnpickler(pickle.Unpickler):
    """A bundle file holds only dicts, strings, ints and bytes: no class is ever loaded."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"a helper bundle names no class ({module}.{name})")


def _pick(addresses, labels):
    picked = {label: addresses.get(label) for label in labels}
    return picked if all(picked.values()) else None


def _symbol_table(symbols, like):
    """The bitcode Numba keeps beside an object file (it is parsed at every load): here
    only what ``get_pointer_to_function`` consults, a definition per entry point, since
    nothing ever links against a bundle. The object code holds the real functions."""
    import llvmlite.binding as ll

    stub = ll.parse_assembly("".join(f'define void @"{name}"() {{\n  ret void\n}}\n'
                                     for name in symbols))
    stub.triple, stub.data_layout = like.triple, like.data_layout
    return stub.as_bitcode()


def _usable(cres, module):
    """Can this helper's code run from a bundle? (No dynamic global, load-time initialiser
    or unresolved symbol: things only Numba's own load sets up. Environment objects are
    checked on the bundle, once the unused wrappers that read them are gone.)"""
    if getattr(cres, "reload_init", None):
        return False
    for gv in module.global_variables:
        if gv.name.startswith(("numba.dynamic.globals", ".numba.unresolved")):
            return False
    for fn in module.functions:
        if fn.name.startswith(".numba.unresolved"):
            return False
    return True


def build(helpers):
    """Write the bundle of ``helpers``, ``{label: compile result}`` (each helper compiled
    or loaded in this process); returns its path, or None when a helper cannot be bundled
    or nothing could be written. Costs code generation of all the helpers (1.8-2.6 s of
    CPU for a training step's segment)."""
    if _DISABLED or not helpers:
        return None
    import llvmlite.binding as ll

    labels = sorted(helpers)
    key = bundle_key(labels)
    path = _path(key)
    if os.path.exists(path):
        return path
    names = {label: f"mgh_{key}_{n}" for n, label in enumerate(labels)}
    by_library = {}
    for label in labels:
        cres = helpers[label]
        by_library.setdefault(id(cres.library), (cres, []))[1].append(label)
    bundle = None
    for cres, lib_labels in by_library.values():
        module = cres.library._get_module_for_linking().clone()
        if not _usable(cres, module):
            return None
        for label in lib_labels:
            fn = module.get_function(helpers[label].fndesc.llvm_func_name)
            fn.linkage = "external"
            fn.name = names[label]
        if bundle is None:
            bundle = ll.parse_assembly("")
            bundle.triple, bundle.data_layout = module.triple, module.data_layout
        bundle.link_in(module)
    keep = set(names.values())
    for fn in bundle.functions:
        if not fn.is_declaration and fn.name not in keep:
            fn.linkage = "internal"
    for gv in bundle.global_variables:
        if not gv.is_declaration:
            gv.linkage = "internal"
    codegen = _codegen()
    pb = ll.create_pass_builder(codegen._tm, ll.create_pipeline_tuning_options())
    mpm = ll.create_new_module_pass_manager()
    mpm.add_global_dead_code_eliminate_pass()  # the unused wrappers go before codegen
    mpm.add_strip_dead_prototype_pass()
    mpm.run(bundle, pb)
    for fn in bundle.functions:  # an environment object is set by Numba's own load only
        if not fn.is_declaration and "NumbaEnv" in str(fn):
            return None
    obj = codegen._tm.emit_object(bundle)
    bitcode = _symbol_table(names.values(), bundle)
    data = {"format": FORMAT, "key": key, "entries": names, "object": obj,
            "bitcode": bitcode, "sha256": _digest(names, obj, bitcode)}
    try:
        os.makedirs(bundle_dir(), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=bundle_dir(), prefix=".tmp-", suffix=".bundle")
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)  # readers see the whole file or none
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        log.info("jit linker: helper bundle not written (%s)", err)
        return None
    return path


# --- building beside the training loop --------------------------------------------------

_WRITERS = []  # threads writing a bundle (at most one per key)
_WRITING = set()


def build_in_background(helpers):
    """:func:`build` in a thread, so the training loop does not wait for the code
    generation: LLVM runs without the GIL (llvmlite's calls release it), under Numba's
    compiler lock (a compile or a cache load in the meantime waits for it: jit_calls starts
    the thread at a segment's second call, after the first-time loads of the first). The
    thread is joined before a ``fork`` (a child must not inherit the lock held) and at
    interpreter exit (a bundle is written whole or not at all). Returns the thread, or
    None."""
    if _DISABLED or not helpers:
        return None
    key = bundle_key(helpers)
    if key in _WRITING or os.path.exists(_path(key)):
        return None
    _WRITING.add(key)
    thread = threading.Thread(target=_write, args=(helpers, key), daemon=False,
                              name=f"minigrad-helper-bundle-{key[:8]}")
    _WRITERS.append(thread)
    thread.start()
    return thread


def _write(helpers, key):
    from numba.core.compiler_lock import global_compiler_lock

    try:
        with global_compiler_lock:
            build(helpers)
    except Exception as err:  # a bundle is only a faster bind: never fail anything
        log.warning("jit linker: helper bundle not built (%s: %s)", type(err).__name__, err)
    finally:
        _WRITING.discard(key)


def wait(timeout=None):
    """Wait for the bundles being written in this process (tests, benchmarks, fork)."""
    for thread in list(_WRITERS):
        if thread is not threading.current_thread():
            thread.join(timeout)
    _WRITERS[:] = [t for t in _WRITERS if t.is_alive()]


os.register_at_fork(before=wait)

__all__ = ["MIN_HELPERS", "build", "build_in_background", "bundle_dir", "bundle_key",
           "helper_label", "load", "wait"]
