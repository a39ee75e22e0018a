"""Row kernels built from one rule definition (issue 13 item 3): a new optimizer is one file.

The five built-in rules (SGD, momentum, Adagrad, RMSprop, Adam) have hand-fused kernels per
backend, because each has a closed-form catch-up or a compiled loop worth its code. A new
rule does not need any of that to be correct. It declares, in its own file:

* ``update(p, *states, g, s, lr, wd, **hyper) -> (p, *states)``: one step at step ``s`` with
  gradient ``g``, written as plain arithmetic valid on NumPy and CuPy arrays *and* on
  scalars (``s``, ``lr`` and ``wd`` may be per-row columns: the NumPy catch-up replays many
  rows' different steps at once; the compiled loop calls it per element);
* its state names (the optimizer's ``layout``, in order) and hyperparameter names;

and calls ``register_rule``, which builds the row kernels and registers them in
``kernels.row_kernels``:

* ``numpy`` and ``cupy``: the generic driver of ``kernels.reference.optim`` (gather the
  rows, catch the lagging ones up by replaying their zero-gradient steps, each with its own
  lr and weight decay from the step history, apply the step, check with the guard,
  scatter), written against the array namespace of the tables;
* ``numba``: a compiled row loop (``CompiledRule``) with the same semantics, generated
  from a template the first time it runs: a small module in minigrad's cache directory
  (``<cache>/rule_drivers/``, written atomically) that imports the rule's module *by name*
  and inlines its ``update`` into the loop, compiled with ``cache=True``. The file is
  named by a hash of the rule's source, so a later process loads the machine code from
  Numba's disk cache, and an edited rule gets a new file (Numba's cache would not see a
  change in the inlined function). The rule's file stays the one place it is written.
  Where the loop cannot be built (``update`` not importable by name, e.g. defined in
  ``__main__`` or a closure; an absent optional state) the NumPy driver runs instead.

Hyperparameters are passed by name: an unknown or missing one is refused with its name.
The exact catch-up by replay is O(k) per row for a row that skipped ``k`` steps; a rule
with a closed form gets a hand-written kernel like the built-in ones when it is worth it.
``minigrad/optim/adamax.py`` is the example.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import re
import time

import numpy as np

from kernels.reference.optim import _drive, _Hyper, _replay, check_history
from kernels.row_kernels import BACKENDS, register_row_kernels

__all__ = ["CompiledRule", "register_rule"]

#: bump when the generated loop's template changes (it is part of the file's hash)
TEMPLATE_VERSION = 2

#: a generated file of a rule that no process has loaded for this long, and that is not
#: the rule's current one, is removed (with its compiled caches) when the current one loads
STALE_AFTER_S = 24 * 3600


def _check_call(name, states, hyper_names, args, hyper):
    n = len(states)
    if len(args) != n + 4:
        raise TypeError(f"{name}_rows takes param, {', '.join(states)}, idx, grad, t, "
                        f"last; got {len(args) + 1} positional arguments")
    unknown, missing = set(hyper) - hyper_names, hyper_names - set(hyper)
    if unknown or missing:
        raise TypeError(f"{name}_rows: unknown hyperparameters {sorted(unknown)}, "
                        f"missing {sorted(missing)} (it takes {sorted(hyper_names)})")


def register_rule(name, update, states, hyper_names, required=None):
    """Build the row kernels of rule ``name`` from ``update`` and register them on every
    backend; returns the NumPy one. ``states``: the state tables' names in the kernel's
    argument order; ``required[i]``: whether state ``i`` must be given (default: all)."""
    states = tuple(states)
    hyper_names = frozenset(hyper_names)
    required = [True] * len(states) if required is None else [bool(r) for r in required]
    n = len(states)

    def rows_kernel(param, *args, lr, weight_decay, history=None, guard=None, trusted=False,
                    **hyper):
        _check_call(name, states, hyper_names, args, hyper)
        tables, (idx, grad, t, last) = list(args[:n]), args[n:]
        h = _Hyper(lr, weight_decay, history)

        def step(rows, g, s, lr=h.lr, wd=h.wd):
            rows[:] = update(*rows, g, s, lr, wd, **hyper)

        def catch_up(rows, lag_from, k):
            _replay(step, rows, lag_from, k, h)

        return _drive(param, tables, idx, grad, t, last, step, catch_up, required,
                      list(states), history, guard, trusted)

    rows_kernel.__name__ = rows_kernel.__qualname__ = f"{name}_rows"
    rows_kernel.__doc__ = (f"The {name!r} rule on rows ``idx`` (built by "
                           f"``kernels.rule_drivers.register_rule`` from {update.__module__}).")
    compiled = CompiledRule(name, update, states, hyper_names, required, rows_kernel)
    for backend in BACKENDS:
        register_row_kernels(backend, {name: compiled if backend == "numba" else rows_kernel})
    return rows_kernel


def cache_dir():
    """``<cache>/rule_drivers``: ``$MINIGRAD_CACHE_DIR`` or ``~/.cache/minigrad``
    (``$XDG_CACHE_HOME`` honoured), as the other generated kernels."""
    root = os.environ.get("MINIGRAD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "minigrad")
    return os.path.join(root, "rule_drivers")


def _mark_used(stem, directory):
    """Record that this process loads ``stem``'s file (``<stem>.used``'s mtime): the age that
    ``remove_stale_files`` goes by. (Not the file's own mtime: Numba stamps its cache with
    it, so touching the file would make every process recompile.)"""
    marker = os.path.join(directory, f"{stem}.used")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(marker, "a"):
            pass
        os.utime(marker)
    except OSError:  # a read-only cache: nothing is removed there either
        pass


def remove_stale_files(name, current, directory=None, max_age_s=None, now=None):
    """Remove the generated files of rule ``name`` other than ``current`` (a file stem) that
    no process has loaded for ``max_age_s`` seconds (``STALE_AFTER_S``): the ``.py``, its
    ``.used`` marker and its ``__pycache__`` entries (bytecode, Numba's index and machine
    code). Returns the stems removed.

    Why it is safe with other processes: an older rule source is still live in a process
    started before the edit (or in another checkout), so only files unused for a day go.
    A process that imports a file touches its marker first, so a remover that reads the
    marker after that keeps the file; one that read it just before may still remove it.
    That costs the loading process nothing: once imported, Numba needs the file no more
    (its cache stamp is read at import; a new signature compiles, in memory, all the same:
    tests/test_rule_stale_files.py), and a reader that opened the file keeps reading it
    (POSIX unlink); a process that finds it gone before writing writes it again, and one
    that finds it gone between writing and importing it compiles in memory, with a warning
    (``import_generated``). Every removal tolerates a file another remover took first.
    Only names ``rule_<name>_<16 hex digits>`` match: another rule whose name starts with
    this one's is never touched."""
    directory = cache_dir() if directory is None else directory
    max_age_s = STALE_AFTER_S if max_age_s is None else max_age_s
    now = time.time() if now is None else now
    pattern = re.compile(rf"rule_{re.escape(name)}_[0-9a-f]{{16}}")
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for entry in entries:
        stem, ext = os.path.splitext(entry)
        if ext != ".py" or stem == current or not pattern.fullmatch(stem):
            continue
        ages = []
        for path in (os.path.join(directory, entry), os.path.join(directory, f"{stem}.used")):
            try:
                ages.append(now - os.stat(path).st_mtime)
            except FileNotFoundError:
                pass
        if not ages or min(ages) < max_age_s:
            continue
        cached = os.path.join(directory, "__pycache__")
        try:
            compiled = [c for c in os.listdir(cached) if c.startswith(f"{stem}.")]
        except OSError:
            compiled = []
        # the caches first, the source last: a remover that stops halfway leaves a source
        # that the next one still finds
        paths = [os.path.join(cached, c) for c in compiled]
        paths += [os.path.join(directory, f"{stem}.used"), os.path.join(directory, entry)]
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:  # another remover took it
                pass
            except OSError:
                break
        else:
            removed.append(stem)
    return removed


class CompiledRule:
    """The Numba row kernel of a registered rule: the NumPy driver's arguments and
    semantics (lazy and exact mode, the replayed catch-up with each skipped step's lr and
    weight decay, the guard), one compiled loop over the rows with the rule's ``update``
    inlined per element. The loop is built on first use (``loop()``); ``fallback`` (the
    NumPy driver) serves what it cannot (see the module docstring)."""

    def __init__(self, name, update, states, hyper_names, required, fallback):
        self.name, self.update, self.states = name, update, tuple(states)
        self.hyper_names, self.required, self.fallback = hyper_names, required, fallback
        params = list(inspect.signature(update).parameters)
        #: the hyperparameters in ``update``'s positional order (the loop passes them so)
        self.hyper_order = tuple(params[len(self.states) + 5:])
        self._loop = None
        self._unavailable = None  # why the loop cannot be built (then: the fallback)
        self.__name__ = f"{name}_rows"

    def __repr__(self):
        return f"CompiledRule({self.name!r})"

    def source(self):
        """The generated module's source, or None (``update`` not importable by name)."""
        module, qualname = self.update.__module__, self.update.__qualname__
        if module == "__main__" or "<" in qualname or "." in qualname or \
                set(self.hyper_order) != set(self.hyper_names):
            return None
        n = len(self.states)
        S = [f"S{j}" for j in range(n)]
        SS = [f"SS{j}" for j in range(n)]
        H = [f"h{j}" for j in range(len(self.hyper_order))]
        # the update's arguments: one per element (p, states, g, step, lr, wd, hyper)
        n_args = n + 5 + len(H)
        inline = ', inline="always"' if n_args <= 30 else ""  # (CPython: star-args above)
        elems = ", ".join(f"float({a}[r, d])" for a in ["P", *S])
        targets = ", ".join(f"{a}[r, d]" for a in ["P", *S])
        bad = " | ".join(f"_not_finite({a}[r, d])" for a in ["P", *S])
        saves = "\n".join(f"            _save_row({a}, {b}, r, i)"
                          for a, b in zip(["P", *S], ["SP", *SS]))
        hyper = ", ".join(H)
        sig = ", ".join(["P", *S, "idx", "G", "has_grad", "t", "last", "exact", "lr", "wd",
                         "has_h", "lr_h", "wd_h", "base", *H, "dist", "guard", "SP", *SS,
                         "SL", "status"])
        third = S[1] if n > 1 else "P"
        return f'''"""Generated by kernels.rule_drivers (template {TEMPLATE_VERSION}): the
compiled row loop of rule {self.name!r}, whose update is {module}.{qualname}. Do not
edit: the rule's file is the one place the rule is written (this file is named by a hash
of its source)."""
import importlib

from numba import njit

from kernels.cpu.optim import _save_row, _stop
from kernels.cpu.rows import _not_finite, _prefetch_ahead

_update = njit(cache=CACHE, nogil=True, error_model="numpy"{inline})(
    importlib.import_module({module!r}).{qualname})


@njit(cache=CACHE, nogil=True, error_model="numpy")
def rows({sig}):
    n = idx.shape[0]
    width = P.shape[1]
    for i in range(n):
        _prefetch_ahead(idx, i, dist, P, {S[0] if n else "P"}, {third})
        r = idx[i]
        if guard:
{saves}
            if exact:
                SL[i] = last[r]
        if exact:
            L = last[r]
            k = (t - 1 if has_grad else t) - L
            # the skipped steps replayed step-major, each with its own lr and weight decay
            for s in range(L + 1, L + k + 1):
                lr_s = lr_h[s - base] if has_h else lr
                wd_s = wd_h[s - base] if has_h else wd
                for d in range(width):
                    {targets} = _update({elems}, 0.0, float(s), lr_s, wd_s, {hyper})
            last[r] = t
        if has_grad:
            for d in range(width):
                {targets} = _update({elems}, float(G[i, d]), float(t), lr, wd, {hyper})
        if guard:
            bad = False
            for d in range(width):
                bad |= {bad}
            if bad:
                return _stop(guard, status, i + 1, i)
    return _stop(guard, status, n, -1)
'''

    def loop(self):
        """The compiled loop (generated, imported and cached on first use), or None."""
        if self._loop is None and self._unavailable is None:
            try:
                text = self.source()
                rule_source = inspect.getsource(self.update) if text is not None else ""
            except (OSError, TypeError) as err:  # no source to hash (e.g. built by exec)
                text, rule_source = None, str(err)
            if text is None:
                self._unavailable = "update is not importable by name"
                return None
            from minigrad.backends.generated_module import import_generated

            digest = hashlib.sha1((rule_source + text).encode()).hexdigest()[:16]
            stem, directory = f"rule_{self.name}_{digest}", cache_dir()
            _mark_used(stem, directory)
            module, path = import_generated(directory, f"{stem}.py", f"minigrad_{stem}",
                                            text, f"the compiled loop of rule {self.name!r}")
            self._loop = module.rows
            if path is not None:
                remove_stale_files(self.name, stem, directory)
        return self._loop

    def __call__(self, param, *args, lr, weight_decay, history=None, guard=None,
                 trusted=False, **hyper):
        _check_call(self.name, self.states, self.hyper_names, args, hyper)
        n = len(self.states)
        tables, (idx, grad, t, last) = list(args[:n]), args[n:]
        loop = None
        if all(type(a) is np.ndarray for a in [param, *tables]):
            loop = self.loop()
        if loop is None:
            return self.fallback(param, *args, lr=lr, weight_decay=weight_decay,
                                 history=history, guard=guard, trusted=trusted, **hyper)
        from kernels.cpu.optim import (
            _NO_LAST,
            _NO_SAVED_LAST,
            _NO_STATUS,
            _NO_STEPS,
            _prefetch_distance,
            check_rows_args,
        )

        p2, s2, idx, grad, t = check_rows_args(param, tables, idx, grad, t, last,
                                               self.required, list(self.states), trusted)
        exact = last is not None
        has_h = exact and history is not None
        if has_h:
            check_history(history, t - (grad is not None), last=None if trusted else last,
                          idx=idx)
        empty = np.zeros((0, p2.shape[1]), dtype=p2.dtype)
        if guard is not None:
            saved, saved_last = guard.buffers([p2, *s2], last, idx)
            checks = (True, *saved[:n + 1], saved_last, guard.status)
        else:
            checks = (False, *[empty] * (n + 1), _NO_SAVED_LAST, _NO_STATUS)
        lr_h = history.lr if has_h else _NO_STEPS
        wd_h = history.wd if has_h else _NO_STEPS
        values = [hyper[k] if isinstance(hyper[k], (bool, np.bool_)) else float(hyper[k])
                  for k in self.hyper_order]
        return loop(p2, *s2, idx, empty if grad is None else grad, grad is not None, int(t),
                    last if exact else _NO_LAST, exact, float(lr), float(weight_decay), has_h,
                    lr_h, wd_h, history.base if has_h else 0, *values,
                    _prefetch_distance(p2), *checks)
