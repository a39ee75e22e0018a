"""Compiled segments call their helpers through an address, so LLVM compiles each helper once.

A jit segment (``minigrad/linker_jit.py``) calls ``@njit`` helpers of ``kernels/cpu/jit_ops.py``
and ``kernels/cpu/fused.py``. A plain call makes Numba *link* the helper's LLVM module into
the segment's, then optimise (O3) and generate machine code for the whole: every helper,
and what it calls (sorting, allocation, ...), is compiled again for every segment, even when
the helper itself comes from Numba's on-disk cache. On the embedding step that was 47 linked
libraries, 84 functions and ~4 s of a 6 s first call with every helper cached.

Here each helper call of a segment is an intrinsic that

* at typing, compiles (or loads from the cache) the helper for the argument types, as a
  plain call would, and takes its return type;
* in the generated code, loads the helper's address from a global variable of the
  segment's own module, ``minigrad.addr.<module>.<symbol>`` (null until bound), raises
  ``RuntimeError(UNBOUND)`` when it is null, and otherwise calls the helper's Numba-ABI
  entry point through it: exceptions raised in the helper propagate as from a plain call;
* nothing is linked: the segment's module holds its own code only.

The addresses are per process, so they are *not* in the (cached) machine code. Beside each
address global the module holds a constant, ``minigrad.sig.<...>``, naming the helper and
its argument types (hex of a pickle made by this module, written into Numba's own cache
entry). :func:`bind` reads these back from a loaded or compiled segment, loads each helper
for its types and writes the addresses. :class:`BoundSegment` does that at a segment's first
call: the first helper call of an unbound overload raises before the helper runs, and
everything before it is pure glue of the segment (the safe phase writes nothing), so the
call is simply repeated once bound.

Helpers with default arguments (the user-facing wrappers of ``fused.py``) are not
addressed: the generated code does not call them, and if it did they would be linked in
as before.
"""
from __future__ import annotations

import ctypes
import importlib
import inspect
import os
import pickle
import re
import types as pytypes

from minigrad.backends import helper_bundle

ADDR, SIG = "minigrad.addr.", "minigrad.sig."
UNBOUND = "minigrad: a jit segment's helper address is not bound"

_HELPER_MODULES = ("kernels.cpu.jit_ops", "kernels.cpu.fused")


def _typer(dispatcher, typingctx, args):
    from llvmlite import ir
    from numba.core import cgutils, types

    # intrinsics see literal types first; the helper gets the plain ones, as a plain call
    # gives it (and as its cached overloads have them)
    fnty = typingctx.resolve_value_type(dispatcher)
    sig = typingctx.resolve_function_type(fnty, tuple(types.unliteral(a) for a in args), {})
    if sig is None:
        return None
    cres = dispatcher.overloads[tuple(sig.args)]
    target = cres.fndesc.llvm_func_name
    blob = pickle.dumps((dispatcher.py_func.__module__, dispatcher.py_func.__qualname__,
                         tuple(sig.args), target))
    text = blob.hex().encode() + b"\0"

    def codegen(context, builder, signature, llargs):
        module = builder.module
        key = f"{module.name}.{target}"
        voidp = ir.IntType(8).as_pointer()
        try:
            slot = module.get_global(ADDR + key)
        except KeyError:
            slot = ir.GlobalVariable(module, voidp, name=ADDR + key)
            slot.initializer = ir.Constant(voidp, None)
            const = ir.Constant(ir.ArrayType(ir.IntType(8), len(text)), bytearray(text))
            meta = ir.GlobalVariable(module, const.type, name=SIG + key)
            meta.global_constant = True
            meta.initializer = const
        address = builder.load(slot)
        with builder.if_then(cgutils.is_null(builder, address), likely=False):
            context.call_conv.return_user_exc(builder, RuntimeError, (UNBOUND,))
        values = [context.cast(builder, v, have, want)
                  for v, have, want in zip(llargs, signature.args, sig.args)]
        fn_type = context.call_conv.get_function_type(sig.return_type, sig.args)
        status, result = context.call_conv.call_function(
            builder, builder.bitcast(address, fn_type.as_pointer()), sig.return_type,
            sig.args, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return result

    return sig.return_type(*args), codegen


def addressed(dispatcher):
    """An intrinsic calling ``dispatcher`` (an ``@njit`` function without default
    arguments) through its address, with the same parameters."""
    from numba.extending import intrinsic

    params = list(inspect.signature(dispatcher.py_func).parameters)
    tup = ", ".join(params) + ("," if len(params) == 1 else "")
    namespace = {"_typer": _typer, "_dispatcher": dispatcher}
    exec(f"def {dispatcher.py_func.__name__}(typingctx, {', '.join(params)}):\n"  # noqa: S102
         f"    return _typer(_dispatcher, typingctx, ({tup}))\n", namespace)
    return intrinsic(namespace[dispatcher.py_func.__name__])


def _addressable(obj):
    from numba.core.registry import CPUDispatcher

    if not isinstance(obj, CPUDispatcher):
        return False
    sig = inspect.signature(obj.py_func)
    return all(p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD
               for p in sig.parameters.values())


class _Mirror(pytypes.ModuleType):
    """The attributes of another module, its helpers addressed, each made at its first
    use: making all of them costs ~30 ms, a segment uses a dozen. The module itself is
    imported at the first use too (``kernels.cpu.jit_ops`` has ~70 ``@njit`` helpers: a
    segment loaded from the cache and bound from its bundle never needs it). Numba must
    find the helpers made before it types a segment (an intrinsic made while typing is not
    in the typing context yet), hence :func:`prepare`."""

    def __init__(self, module_name):
        super().__init__(f"minigrad.backends.jit_calls[{module_name}]")
        self._source_name = module_name

    def source(self):
        """The mirrored module (imported now if it was not)."""
        return importlib.import_module(self._source_name)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        obj = getattr(self.source(), name)
        value = addressed(obj) if _addressable(obj) else obj
        setattr(self, name, value)
        return value


def mirror(module_name):
    """The helpers of ``module_name`` addressed (what the generated segments import as
    ``J`` and ``F``)."""
    return _Mirror(module_name)


def prepare(namespace):
    """Called by a generated segment module (its globals, ``namespace``) as it is imported:
    every ``J.<name>`` and ``F.<name>`` it uses is made before Numba first *compiles* one
    of its segments (:func:`prepare_now`, from a ``numba:compile`` event), not now. A
    segment loaded from Numba's cache is never typed, so a process that only loads its
    segments never makes the intrinsics nor imports the helper modules."""
    _UNPREPARED[id(namespace)] = namespace
    if not _LISTENING:
        from numba.core import event

        event.register("numba:compile", _before_compile_listener())
        _LISTENING.append(True)


def prepare_now(namespace):
    """Make every ``J.<name>`` and ``F.<name>`` the generated module (its globals,
    ``namespace``) uses."""
    _UNPREPARED.pop(id(namespace), None)
    path = namespace.get("__file__")
    text = None
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            text = None
    for alias, module_name in (("J", "kernels.cpu.jit_ops"), ("F", "kernels.cpu.fused")):
        mod = helpers(module_name)
        names = (re.findall(rf"\b{alias}\.([A-Za-z_][A-Za-z0-9_]*)", text) if text is not None
                 else [n for n in vars(mod.source()) if not n.startswith("__")])
        for name in set(names):
            getattr(mod, name)


#: the globals of generated modules imported but not prepared yet, by id (their modules
#: are kept alive by the linker's module table and ``sys.modules``)
_UNPREPARED = {}
_LISTENING = []


def _before_compile_listener():
    from numba.core import event

    class BeforeCompile(event.Listener):
        """Prepares a generated module as Numba starts compiling one of its segments:
        after its cache lookup missed, before the compiler refreshes its typing context
        (which is what makes the new intrinsics visible to the typing)."""

        def on_start(self, ev):
            if not _UNPREPARED:
                return
            py_func = getattr(ev.data.get("dispatcher"), "py_func", None)
            namespace = getattr(py_func, "__globals__", None)
            if namespace is not None and id(namespace) in _UNPREPARED:
                prepare_now(namespace)

        def on_end(self, ev):
            pass

    return BeforeCompile()


_MIRRORS = {}


def helpers(module_name):
    """The addressed mirror of ``module_name`` (one per process)."""
    if module_name not in _MIRRORS:
        _MIRRORS[module_name] = mirror(module_name)
    return _MIRRORS[module_name]


def __getattr__(name):  # ``from minigrad.backends.jit_calls import J, F``
    if name == "J":
        return helpers("kernels.cpu.jit_ops")
    if name == "F":
        return helpers("kernels.cpu.fused")
    raise AttributeError(name)


# --- binding: writing this process's helper addresses into a segment ------------------


def helper_overload(module_name, qualname, argtypes):
    """The helper's compile result for ``argtypes`` in this process (compiled, or loaded
    from Numba's cache)."""
    if module_name not in _HELPER_MODULES:
        raise RuntimeError(f"jit segment names an unknown helper module {module_name!r}")
    helper = getattr(importlib.import_module(module_name), qualname)
    helper.compile(argtypes)
    return helper.overloads[tuple(argtypes)]


def helper_address(module_name, qualname, argtypes, target):
    """This process's address of the helper a segment recorded as ``(module, qualname,
    argument types, symbol)``, compiling or loading the helper's overload.

    The recorded symbol is only a label: a mangled name carries the compiling process's
    unique id of the function (``...B2v2B56...`` where this process, loading the helper
    from its own cache, may have ``...B2v1B56...``), so this process's own name is used."""
    cres = helper_overload(module_name, qualname, argtypes)
    symbol = cres.fndesc.llvm_func_name
    address = cres.library.get_pointer_to_function(symbol)
    if not address:
        raise RuntimeError(f"helper {qualname}{argtypes} has no symbol {symbol} "
                           f"(compiled as {target})")
    return address


def helper_slots(dispatcher):
    """``[(slot address, (module, qualname, argument types, symbol))]``: each helper call
    slot of every overload of the segment ``dispatcher`` and the helper it calls."""
    return [(address_of(ADDR + name[len(SIG):]), recorded_helper(address_of(name)))
            for name, address_of in segment_globals(dispatcher, SIG)]


def bind(dispatcher):
    """Write the helper addresses of every overload of the segment ``dispatcher``;
    returns how many were written.

    With :data:`helper_bundle.MIN_HELPERS` distinct helpers or more, from their bundle
    when there is one (one load, ``helper_bundle.py``); otherwise one helper at a time.
    A segment loaded from the cache (not compiled by this process) that had to bind one
    helper at a time then writes the bundle for the next process, in a thread started at
    its next call, beside the training loop: code generation of the helpers, 1.8-2.6 s of
    CPU once, spent by the second process that runs a segment, never by a compile (nor by
    a test suite that compiles its graphs afresh)."""
    slots = helper_slots(dispatcher)
    big = len({helper_bundle.helper_label(*rec[:3]) for _, rec in slots}) \
        >= helper_bundle.MIN_HELPERS
    if big and bind_from_bundle(slots):
        return len(slots)
    for slot, rec in slots:
        ctypes.c_void_p.from_address(slot).value = helper_address(*rec)
    if big and sum(dispatcher.stats.cache_hits.values()):
        _PENDING.append((os.getpid(), dispatcher))  # written from the segment's next call on
    return len(slots)


# segments whose helper bundle is to be written in the background: started at a segment's
# next call, once the call that bound them (and its other first-time cache loads, which
# take Numba's compiler lock too) is over; by the process that bound them only (forked
# Hogwild workers would otherwise each write the same bundle)
_PENDING = []


def _start_pending():
    while _PENDING:
        pid, dispatcher = _PENDING.pop()
        if pid == os.getpid():
            write_bundle(dispatcher, background=True)


def write_bundle(dispatcher, background=False):
    """Write the bundle of the helpers the segment ``dispatcher`` calls (their code
    generation: 1.8-2.6 s of CPU for a training step); returns its path, or None when it
    was not written (too few helpers, a helper that cannot be bundled, an unwritable
    cache). ``background=True``: in a thread (``helper_bundle.build_in_background``),
    returns the thread."""
    recs = {helper_bundle.helper_label(*rec[:3]): rec for _, rec in helper_slots(dispatcher)}
    if len(recs) < helper_bundle.MIN_HELPERS:
        return None
    try:
        helpers = {label: helper_overload(*rec[:3]) for label, rec in recs.items()}
        if background:
            return helper_bundle.build_in_background(helpers)
        return helper_bundle.build(helpers)
    except Exception as err:  # a bundle is only a faster bind: never fail a call
        helper_bundle.log.warning("jit linker: helper bundle not built (%s: %s)",
                                  type(err).__name__, err)
        return None


def bind_from_bundle(slots):
    """Write every slot's address from the helpers' bundle; False (nothing written) when
    there is no usable bundle."""
    labels = [helper_bundle.helper_label(*rec[:3]) for _, rec in slots]
    try:
        addresses = helper_bundle.load(labels)
    except Exception as err:
        helper_bundle.log.warning("jit linker: helper bundle not loaded (%s: %s)",
                                  type(err).__name__, err)
        addresses = None
    if not addresses:
        return False
    for (slot, _), label in zip(slots, labels):
        ctypes.c_void_p.from_address(slot).value = addresses[label]
    return True


def bind_steps(dispatcher):
    """:func:`bind` one helper at a time: a generator that yields after each address it
    wrote (each is a load from Numba's cache, ~10 ms), so that the tiered linker can spread
    them over calls instead of stalling one call for all of them. A bundle, when there is
    one, binds every helper at the first step."""
    slots = helper_slots(dispatcher)
    distinct = {helper_bundle.helper_label(*rec[:3]) for _, rec in slots}
    if len(distinct) >= helper_bundle.MIN_HELPERS and bind_from_bundle(slots):
        yield len(slots)
        return
    for slot, rec in slots:
        ctypes.c_void_p.from_address(slot).value = helper_address(*rec)
        yield rec[1]


def segment_globals(dispatcher, prefix):
    """``(name, address_of)`` for each global whose name starts with ``prefix`` in every
    overload of segment ``dispatcher``; ``address_of(name)`` gives the address of any
    global of that overload's module (its helper slot ``ADDR + key`` beside ``SIG + key``)."""
    for cres in list(dispatcher.overloads.values()):
        library = cres.library
        address_of = library.codegen._engine._ee.get_global_value_address
        module = library._get_module_for_linking()  # its globals, also when loaded from cache
        for gv in module.global_variables:
            if gv.name.startswith(prefix):
                yield gv.name, address_of


def recorded_helper(address):
    """The ``(module, qualname, argument types, symbol)`` a segment recorded at
    ``address`` (the text of a ``SIG`` global) for one helper call."""
    return pickle.loads(bytes.fromhex(ctypes.string_at(address).decode()))


class BoundSegment:
    """A compiled segment, callable like its dispatcher, that binds its helpers' addresses
    at the first call of each overload (see the module docstring)."""

    __slots__ = ("dispatcher",)

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher

    def __call__(self, *args):
        try:
            result = self.dispatcher(*args)
        except RuntimeError as err:
            if str(err) != UNBOUND:
                raise
        else:
            if _PENDING:
                _start_pending()
            return result
        bind(self.dispatcher)
        return self.dispatcher(*args)

    def __getattr__(self, name):  # py_func, overloads, ... for the linker and tiered
        return getattr(self.dispatcher, name)


__all__ = ["BoundSegment", "UNBOUND", "addressed", "bind", "bind_steps", "helpers", "mirror",
           "prepare", "prepare_now", "write_bundle"]
