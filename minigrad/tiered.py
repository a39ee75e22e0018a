"""The tiered linker: run on the generated linker first, compile in the background, swap.

``Mode(linker="tiered")`` on the numba backend. A cold Numba compile of a training step's
segments (``linker_jit.py``) takes a few seconds with the helpers cached and half a minute
on a machine where nothing is cached yet; a warm load from the on-disk cache takes a
fraction of a second. So the safe phase of a tiered function goes through these states:

1. **plain**: the generated straight-line phase of the default linker (``linker.py``),
   the very same thunks, counting calls and their time. Most functions (tests, one-off
   evaluations) never leave this state and never pay anything;
2. **record**: once the function proved hot (``POLICY.min_calls`` calls *and*
   ``POLICY.min_seconds`` seconds spent in them), its jit phase is built with every
   segment switched off (its thunks run: same values), and one call records the Numba
   types of every segment's arguments;
3. **compiling**: a child process (``tier_worker.py``, at a lower priority, one at a time
   per process) compiles the segments for those types, which writes Numba's on-disk
   cache; the function keeps running its thunks meanwhile;
4. **binding**: at the first call boundary after the child succeeded, each segment's
   machine code is *loaded* from the cache (never compiled in this process: compiling is
   switched off); then each call binds one of the helper addresses the segments call
   through (``backends/jit_calls.py``: a load from Numba's cache each), so no call stalls
   on all of them, and runs the generated phase;
5. **jit**: every address bound, the segments run from then on.

A child that fails, or runs past ``POLICY.timeout_s``, is killed and logged (logger
``minigrad.tiered``); the function then stays on its thunks for good. Children are killed
when the interpreter exits and exit by themselves when their parent dies. A segment whose
cache entry cannot be loaded stays on its thunks.

Results are those of the generated linker before the swap and those of the jit linker
after it (the same values up to the last unit of ``exp``/``log``, as ``Mode(linker="jit")``).
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time

log = logging.getLogger("minigrad.tiered")

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tier_worker.py")


class Policy:
    """When a function tiers up, and how long its background compile may take.

    ``min_calls`` and ``min_seconds`` must both be reached (seconds: time spent in the
    function's safe phase); ``timeout_s`` bounds the child; ``nice`` is its priority.
    """

    def __init__(self, min_calls=20, min_seconds=2.0, timeout_s=600.0, nice=10):
        self.min_calls, self.min_seconds = int(min_calls), float(min_seconds)
        self.timeout_s, self.nice = float(timeout_s), int(nice)

    def __repr__(self):
        return (f"Policy(min_calls={self.min_calls}, min_seconds={self.min_seconds}, "
                f"timeout_s={self.timeout_s}, nice={self.nice})")


#: the process-wide policy (tests and benchmarks may set its fields)
POLICY = Policy()


# --- the background compiles: one child at a time, killed at exit -----------------------


class _Job:
    def __init__(self, path, module, signatures):
        self.path, self.module, self.signatures = path, module, signatures
        self.proc = self.started = self.stderr = None
        self.pid = os.getpid()
        self.result = None  # None: not finished; then ("ok", info) or ("failed", why)

    def start(self):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr,
                                     close_fds=True)
        payload = pickle.dumps({"sys_path": list(sys.path), "path": self.path,
                                "module": self.module, "signatures": self.signatures,
                                "nice": POLICY.nice})
        self.proc.stdin.write(len(payload).to_bytes(8, "little") + payload)
        self.proc.stdin.flush()  # stdin stays open: the child exits when it closes
        self.started = time.monotonic()

    def poll(self):
        """Advance: ``None`` while running, else ``self.result``."""
        if self.result is not None or self.proc is None:
            return self.result
        if os.getpid() != self.pid:  # a forked copy: the child is not ours to wait for
            self.result = ("failed", "forked process")
            return self.result
        code = self.proc.poll()
        if code is None:
            if time.monotonic() - self.started > POLICY.timeout_s:
                self.kill()
                self._finish(("failed", f"timed out after {POLICY.timeout_s:.0f} s"))
            return self.result
        out = self.proc.stdout.read().decode(errors="replace").strip().splitlines()
        try:
            info = __import__("json").loads(out[-1]) if out else {}
        except ValueError:
            info = {}
        if code == 0 and info.get("compiled"):
            self._finish(("ok", info))
        else:
            self._finish(("failed", f"exit status {code}: {info.get('errors') or self._tail()}"))
        return self.result

    def _tail(self):
        self.stderr.seek(0)
        return self.stderr.read()[-2000:].decode(errors="replace").strip()

    def _finish(self, result):
        self.result = result
        self._close()
        if result[0] != "ok":
            log.warning("background compile of %s failed (%s); the function stays on the "
                        "generated linker", os.path.basename(self.path), result[1])

    def _close(self):
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Queue:
    """At most one child per process: a training step and one compile share the CPU."""

    def __init__(self):
        self.waiting, self.running = [], None

    def submit(self, job):
        self.waiting.append(job)
        self.advance()

    def advance(self):
        if self.running is not None and self.running.poll() is not None:
            self.running = None
        while self.running is None and self.waiting:
            job = self.waiting.pop(0)
            try:
                job.start()
            except OSError as err:
                job._finish(("failed", f"could not start the compiler process: {err}"))
                continue
            self.running = job

    def kill_all(self):
        self.waiting.clear()
        if self.running is not None and self.running.pid == os.getpid():
            self.running.kill()
        self.running = None


QUEUE = _Queue()
atexit.register(QUEUE.kill_all)


# --- the tiered safe phase -------------------------------------------------------------


class TieredPhase:
    """The safe phase of a tiered function (see the module docstring): callable like the
    phase it wraps, ``state`` says where it is (``plain``, ``record``, ``compiling``,
    ``binding``, ``jit`` or ``plain for good``)."""

    def __init__(self, plain, build_jit):
        self.plain, self._build_jit = plain, build_jit
        self.state, self.calls, self.seconds = "plain", 0, 0.0
        self.jit = self.job = self._binding = None
        self.why = None  # why the phase stays plain for good

    # what the linker's users read (tests, debugprint)
    @property
    def current(self):
        # "binding": the segments are switched on but not all their helpers bound yet
        return self.jit if self.state in ("record", "compiling", "jit") else self.plain

    @property
    def source(self):
        return self.current.source

    @property
    def segments(self):
        return getattr(self.jit, "segments", [])

    @property
    def jit_fallbacks(self):
        return getattr(self.jit, "jit_fallbacks", [])

    def __call__(self, *values):
        state = self.state
        if state == "jit" or state == "plain for good":
            return self.current(*values)
        if state == "plain":
            start = time.perf_counter()
            result = self.plain(*values)
            self.calls += 1
            self.seconds += time.perf_counter() - start
            if self.calls >= POLICY.min_calls and self.seconds >= POLICY.min_seconds:
                self._build()
            return result
        if state == "record":
            self.jit.namespace["_rec"] = True
            try:
                result = self.jit(*values)
            finally:
                self.jit.namespace["_rec"] = False
            self._submit()
            return result
        self.poll()  # compiling: swap once the child is done; binding: bind one helper
        return self.current(*values)

    def _give_up(self, why):
        self.state, self.why = "plain for good", why
        self.jit = None

    def _build(self):
        try:
            self.jit = self._build_jit()
        except Exception as err:  # an emitter or the cache failed: stay on the thunks
            log.warning("tiered linker: building the jit phase failed (%s: %s)",
                        type(err).__name__, err)
            self._give_up(f"build failed: {err}")
            return
        if not self.jit.segments:
            self._give_up("no node has a compiled form")
        elif self.jit.segment_file is None:
            self._give_up("no on-disk cache to compile into")
        else:
            self.state = "record"

    def _submit(self):
        types = self.jit.arg_types
        if len(types) < len(self.jit.segments):  # a failed call: record on the next one
            return
        if any(t is None for t in types.values()):
            self._give_up("a segment argument has no Numba type")
            return
        module = self.jit.compiled[0].py_func.__module__
        signatures = {f"segment{k}": types[k] for k in range(len(self.jit.segments))}
        self.job = _Job(self.jit.segment_file, module, signatures)
        self.state = "compiling"
        QUEUE.submit(self.job)

    def poll(self):
        """Swap to the compiled segments if the background compile is done (one helper
        address bound per poll, then ``jit``)."""
        if self.state == "binding":
            return self._bind_one()
        if self.state != "compiling":
            return self.state
        QUEUE.advance()
        result = self.job.poll()
        if result is None:
            return self.state
        if result[0] != "ok":
            self._give_up(result[1])
            return self.state
        loaded = self._load()
        if not loaded:
            self._give_up("the compiled segments were not found in the cache")
            return self.state
        self._binding = self._bind_steps()
        self.state = "binding"
        return self.state

    def _bind_steps(self):
        from minigrad.backends.jit_calls import bind_steps

        for k, dispatcher in enumerate(self.jit.compiled):
            if self.jit.namespace.get(f"jit{k}"):
                yield from bind_steps(dispatcher)

    def _bind_one(self):
        try:
            done = next(self._binding, None) is None
        except Exception as err:  # a helper that cannot be loaded: stay on the thunks
            log.warning("tiered linker: binding a helper of the segments failed (%s: %s)",
                        type(err).__name__, err)
            self._give_up(f"binding failed: {err}")
            return self.state
        if done:
            self.state, self._binding = "jit", None
        return self.state

    def _load(self):
        """Each segment's machine code from the cache (compiling is then switched off, so
        a call with other argument types runs the thunks instead of compiling here)."""
        ns, loaded = self.jit.namespace, 0
        for k, dispatcher in enumerate(self.jit.compiled):
            sig = self.jit.arg_types[k]
            if tuple(sig) in dispatcher.overloads:  # a jit function of this process has it
                ns[f"jit{k}"] = True
                loaded += 1
                continue
            try:
                cres = dispatcher._cache.load_overload(sig, dispatcher.targetctx)
            except Exception as err:
                log.warning("tiered linker: loading segment %d failed (%s)", k, err)
                cres = None
            if cres is None:
                continue
            if not cres.objectmode:
                dispatcher.targetctx.insert_user_function(cres.entry_point, cres.fndesc,
                                                          [cres.library])
            dispatcher.add_overload(cres)
            dispatcher.disable_compile()
            ns[f"jit{k}"] = True
            loaded += 1
        return loaded

    def wait(self, timeout=None):
        """Block until the background compile ends (tests, benchmarks); the state after."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.poll()
            if state == "binding":
                continue
            if state != "compiling" or (deadline is not None and time.monotonic() > deadline):
                return state
            time.sleep(0.05)


__all__ = ["POLICY", "Policy", "TieredPhase"]
