"""Linkers: how the ordered nodes of a compiled graph become one callable per phase.

A compiled step runs in two phases (see ``compile.py``): the *safe* phase computes every
non-destructive node (nothing is written: an exception there leaves all state as it was),
and the *destructive* phase runs the in-place updates. Each phase is a list of
``(thunk, input_slots, output_slots)`` entries; a linker turns such a list into
``run(*live_in) -> live_out``.

* :func:`vm_phase` is the plain interpreter: a loop over thunks reading and writing a list
  of value slots. Easy to read, and the reference for the generated form.
* :func:`generated_phase` writes the same program as the source of one straight-line Python
  function: each value is a local variable, each thunk a global of the generated module,
  no per-node loop, list indexing or slot bookkeeping::

      def safe_phase(v0, v1, v2):
          (v3,) = t0((v0, v1))        # Take
          (v4,) = t1((v3, v2))        # Binary{mul}
          return (v3, v4)

  The source is registered with ``linecache`` so a traceback through it shows the line
  (and the node in its comment), and ``source`` keeps it for ``debugprint``/reading.
"""
from __future__ import annotations

import itertools
import linecache

_serial = itertools.count()


def vm_phase(entries, live_in, live_out, n_slots, constants=None):
    """A loop over thunks: ``run(*values_of_live_in) -> tuple(values_of_live_out)``.

    ``constants``: ``{slot: value}`` bound once, read by the thunks like any slot.
    """
    entries = [(thunk, list(ins), list(outs)) for thunk, ins, outs, _label in entries]
    live_in, live_out = list(live_in), list(live_out)
    constants = dict(constants or {})

    def run(*values):
        storage = [None] * n_slots
        for s, v in constants.items():
            storage[s] = v
        for s, v in zip(live_in, values):
            storage[s] = v
        for thunk, ins, outs in entries:
            results = thunk([storage[i] for i in ins])
            for s, r in zip(outs, results):
                storage[s] = r
        return tuple(storage[s] for s in live_out)

    run.source = None
    return run


def thunk_call_line(k, ins, outs, label):
    """The generated line that runs thunk ``t<k>`` on slots ``ins`` into slots ``outs``:
    ``    (v4,) = t1((v3, v2))  # Binary{mul}``."""
    args = ", ".join(f"v{s}" for s in ins)
    args = f"({args},)" if len(ins) == 1 else f"({args})"
    targets = ", ".join(f"v{s}" for s in outs)
    targets = f"({targets},)" if len(outs) == 1 else f"({targets})"
    return f"    {targets} = t{k}({args})  # {_comment(label)}"


def generated_phase(entries, live_in, live_out, name="phase", constants=None):
    """The same program as generated straight-line Python (see the module docstring).

    ``constants``: ``{slot: value}``; each becomes the global ``v<slot>`` of the generated
    module, so the code reads it like a local value, without an argument.
    """
    namespace = {f"v{s}": v for s, v in (constants or {}).items()}
    lines = [f"def {name}({', '.join(f'v{s}' for s in live_in)}):"]
    for k, (thunk, ins, outs, label) in enumerate(entries):
        namespace[f"t{k}"] = thunk
        lines.append(thunk_call_line(k, ins, outs, label))
    results = ", ".join(f"v{s}" for s in live_out)
    lines.append(f"    return ({results}{',' if len(live_out) == 1 else ''})")
    source = "\n".join(lines) + "\n"
    filename = f"<minigrad generated {name} #{next(_serial)}>"
    code = compile(source, filename, "exec")
    # tracebacks and inspect.getsource find the generated text (never evicted: small)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(code, namespace)  # noqa: S102 - our own generated source, no user text in it
    run = namespace[name]
    run.source = source
    return run


def _comment(label):
    return " ".join(str(label).split())[:80]
