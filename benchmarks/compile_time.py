"""Where compile and first-call time go, for the embedding and FM training steps.

Each measurement runs in a fresh child process (first calls are per process), so that
``import minigrad``, Numba's own start-up and the on-disk caches count as a user sees them:

* **compile**: ``mg.function`` split into ``Function.compile_phases`` (setup, rewrites,
  linking), for the first function of the process (it pays the backend's kernel imports)
  and for a second, identical one; ``import numba`` is timed apart, before it (a plain
  script pays it in its first ``mg.function``);
* **first call** with a *warm* cache (everything compiled by an earlier process, and the
  jit segments' helper bundle written by the process after it): the seconds, how much of
  it is Numba loading compiled code (events ``numba:compile``) and binding the segments'
  helper addresses;
* ``--compile-only --repeat N``: only the compile, in N fresh processes per case and
  linker (interleaved), with medians and minimums of its wall and CPU time and of
  ``import minigrad``, and the ``@njit`` dispatchers the first compile made (each costs
  Numba ~0.1-0.3 ms to make; their modules are imported at the first use of a kernel);
* **first call with a cold cache** (``--cold``): a fresh ``NUMBA_CACHE_DIR`` and
  ``MINIGRAD_CACHE_DIR``, so every kernel, helper and segment compiles. Split per compiled
  function (time inside its ``numba:compile`` event, its callees' compiles excluded),
  then, with the helpers now cached, the segments alone (``segment*``): for each, the
  seconds under LLVM's lock and in type inference (Numba's ``cres.metadata``).

    python -m benchmarks.compile_time [--cases embedding,fm] [--linkers generated,jit]
                                      [--cold] [--top 12] [--json]
                                      [--compile-only [--repeat 5]]

A cold run compiles for a minute or more on a 2-core box; it never touches the caches of
the calling process (its directories are temporary and removed afterwards).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from numba.core import event

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import minigrad as mg
t_import = time.perf_counter() - t0
t0 = time.perf_counter()
import numba  # imported by the first mg.function of a plain script; timed apart here
t_numba = time.perf_counter() - t0
from benchmarks.compile_time import build_case, CompileListener, event, watch_cache_loads
from benchmarks.compile_time import watch_binds

case, linker = sys.argv[1], sys.argv[2]
listener = CompileListener()
event.register("numba:compile", listener)
loads = watch_cache_loads()
binds = watch_binds()
inputs, cost, updates, batches = build_case(case)
f = mg.function(inputs, cost, updates=updates, mode=mg.Mode(linker=linker))
inputs2, cost2, updates2, _ = build_case(case)
again = mg.function(inputs2, cost2, updates=updates2, mode=mg.Mode(linker=linker))
t = time.perf_counter(); c = time.process_time()
f(*batches[0])
first, first_cpu = time.perf_counter() - t, time.process_time() - c
t = time.perf_counter(); f(*batches[1]); second = time.perf_counter() - t
segments = []
for k, disp in enumerate(getattr(f._safe_run, "compiled", None) or []):
    for cres in disp.overloads.values():
        md = cres.metadata or {}
        times = md.get("pipeline_times", {}).get("nopython", {})
        typing = sum(v.init + v.run + v.finalize for n, v in times.items() if "type_inf" in n)
        segments.append(dict(segment=k, llvm_s=md.get("timers", {}).get("llvm_lock"),
                             typing_s=typing if times else None,
                             cache_hits=sum(disp.stats.cache_hits.values())))
print(json.dumps(dict(case=case, linker=linker, import_s=t_import, import_numba_s=t_numba,
                      binds=binds,
                      compile_first=f.compile_phases, compile_again=again.compile_phases,
                      nodes=len(f.nodes), first_call_s=first, first_call_cpu_s=first_cpu,
                      second_call_s=second, numba=listener.summary(), segments=segments,
                      cache_loads=loads)))
"""

_COMPILE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import minigrad as mg
t_import = time.perf_counter() - t0
t0 = time.perf_counter()
import numba  # timed apart, as in the full child
t_numba = time.perf_counter() - t0
from numba.core import dispatcher
from benchmarks.compile_time import build_case

made = []
init = dispatcher.Dispatcher.__init__
def counted(self, py_func, *args, **kwargs):
    init(self, py_func, *args, **kwargs)
    made.append(py_func.__module__)
dispatcher.Dispatcher.__init__ = counted
case, linker = sys.argv[1], sys.argv[2]
inputs, cost, updates, _ = build_case(case)
made.clear()
t, c = time.perf_counter(), time.process_time()
f = mg.function(inputs, cost, updates=updates, mode=mg.Mode(linker=linker))
first, first_cpu = time.perf_counter() - t, time.process_time() - c
inputs, cost, updates, _ = build_case(case)
t = time.perf_counter()
mg.function(inputs, cost, updates=updates, mode=mg.Mode(linker=linker))
again = time.perf_counter() - t
print(json.dumps(dict(case=case, linker=linker, import_s=t_import, import_numba_s=t_numba,
                      first_s=first, first_cpu_s=first_cpu, again_s=again,
                      phases=f.compile_phases, dispatchers=len(made))))
"""


def build_case(case):
    """``(inputs, cost, updates, batches)`` of the benchmark step ``case``: the seed's
    masked-embedding classifier at V=30K with lazy Adam, or the FM with SGD."""
    import minigrad as mg
    from benchmarks import floor

    if case == "embedding":
        from benchmarks.embedding import make_batches

        e = floor.EMB
        model = floor.classifier(e["vocab"], e["dim"], e["n_classes"], seed=0, dtype="float32")
        tokens, mask, labels = mg.lmatrix("t"), mg.matrix("m", "float32"), mg.lvector("y")
        cost = model.cost(tokens, mask, labels)
        updates = mg.optim.Adam(model.params, lr=e["lr"], sparse="lazy").updates(cost)
        return [tokens, mask, labels], cost, updates, make_batches(e["vocab"], 2)
    if case == "fm":
        from benchmarks.hogwild import _task

        X, y = _task(True)
        b = floor.FM["batch"]
        model = mg.models.FactorizationMachine(X.shape[1], floor.FM["k"], seed=0)
        Xs, ys = mg.csr_matrix("X"), mg.vector("y")
        cost = model.cost(Xs, ys)
        updates = mg.optim.SGD(model.params, floor.FM["lr"]).updates(cost)
        return [Xs, ys], cost, updates, [(X[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
                                         for i in range(2)]
    raise ValueError(f"unknown case {case!r}: 'embedding' or 'fm'")


class CompileListener(event.Listener):
    """A ``numba.core.event`` listener: seconds per compiled function inside its
    ``numba:compile`` events, inclusive and without the nested compiles of its callees
    (a cache load is an event too, a short one)."""

    def __init__(self):
        self.stack, self.inclusive, self.own = [], {}, {}

    def on_start(self, ev):
        self.stack.append([ev.data.get("dispatcher"), time.perf_counter(), 0.0])

    def on_end(self, ev):
        disp, start, nested = self.stack.pop()
        dt = time.perf_counter() - start
        py = getattr(disp, "py_func", None)
        name = f"{getattr(py, '__module__', '?')}.{getattr(py, '__qualname__', disp)}"
        self.inclusive[name] = self.inclusive.get(name, 0.0) + dt
        self.own[name] = self.own.get(name, 0.0) + dt - nested
        if self.stack:
            self.stack[-1][2] += dt

    def summary(self):
        return {name: [self.own[name], self.inclusive[name]] for name in self.own}


def watch_cache_loads():
    """``{"n": loads, "s": seconds}``, kept up to date: Numba loading compiled code from its
    on-disk cache (no ``numba:compile`` event covers a load). The first load of a process
    also pays Numba's lazy set-up of its typing and lowering registries."""
    from numba.core import caching

    totals = {"n": 0, "s": 0.0}
    load = caching.Cache.load_overload

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return load(self, *args, **kwargs)
        finally:
            totals["n"] += 1
            totals["s"] += time.perf_counter() - start

    caching.Cache.load_overload = timed
    return totals


def watch_binds():
    """``{"n": segments bound, "s": seconds, "bundled": bound from a helper bundle}``, kept
    up to date: the helper address binding of jit segments (``jit_calls.bind``)."""
    from minigrad.backends import jit_calls

    totals = {"n": 0, "s": 0.0, "bundled": 0}
    bind, from_bundle = jit_calls.bind, jit_calls.bind_from_bundle

    def timed(dispatcher):
        start = time.perf_counter()
        try:
            return bind(dispatcher)
        finally:
            totals["n"] += 1
            totals["s"] += time.perf_counter() - start

    def counted(slots):
        ok = from_bundle(slots)
        totals["bundled"] += bool(ok)
        return ok

    jit_calls.bind, jit_calls.bind_from_bundle = timed, counted
    return totals


def run_child(case, linker, env_extra=None, code=_CHILD):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", code, case, linker], env=env, cwd=root,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{case}/{linker}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _short(name):
    return name.replace("minigrad_jit_", "").split(".")[-1] if "segment" in name else name


def report(res, label, top):
    ms = {k: round(v * 1e3, 1) for k, v in res["compile_first"].items()}
    ms2 = {k: round(v * 1e3, 1) for k, v in res["compile_again"].items()}
    numba = res["numba"]
    in_numba = sum(own for own, _ in numba.values())
    print(f"{res['case']} / {res['linker']} ({label}): {res['nodes']} nodes; import "
          f"minigrad {res['import_s']:.2f} s, numba {res['import_numba_s']:.2f} s; compile ms "
          f"first {sum(ms.values()):.1f} {ms}, again {sum(ms2.values()):.1f} {ms2}")
    binds = res["binds"]
    bound = (f"; binding {binds['s']:.3f} s for {binds['n']} segment(s), "
             f"{binds['bundled']} from a helper bundle" if binds["n"] else "")
    print(f"  first call {res['first_call_s']:.3f} s (CPU {res['first_call_cpu_s']:.2f} s; "
          f"compiling {in_numba:.3f} s; {res['cache_loads']['n']} loads from Numba's cache "
          f"{res['cache_loads']['s']:.3f} s{bound}), second call "
          f"{res['second_call_s'] * 1e3:.2f} ms")
    for name, (own, incl) in sorted(numba.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"    {own:8.3f} s own {incl:8.3f} s incl  {_short(name)}")
    for seg in res["segments"]:
        llvm = "-" if seg["llvm_s"] is None else f"{seg['llvm_s']:.2f}"
        typing = "-" if seg["typing_s"] is None else f"{seg['typing_s']:.2f}"
        print(f"  segment {seg['segment']}: LLVM lock {llvm} s, type inference {typing} s, "
              f"cache hits {seg['cache_hits']}")


def compile_only(cases, linkers, repeat):
    """The first ``mg.function`` of a process, ``repeat`` fresh processes per case and
    linker, interleaved (one of each in turn, so load on the machine hits all alike)."""
    import statistics

    configs = [(c, k) for c in cases for k in linkers]
    for case, linker in configs:  # warm every cache first (segments, kernels)
        run_child(case, linker)
    runs = {cfg: [] for cfg in configs}
    for _ in range(repeat):
        for cfg in configs:
            runs[cfg].append(run_child(*cfg, code=_COMPILE_CHILD))
    print(f"first mg.function of a process, {repeat} processes each (ms; median / min)")
    for (case, linker), rs in runs.items():
        def col(key, rs=rs):
            values = [r[key] * 1e3 for r in rs]
            return f"{statistics.median(values):6.1f} / {min(values):6.1f}"
        phases = {k: round(statistics.median(r["phases"][k] * 1e3 for r in rs), 1)
                  for k in rs[0]["phases"]}
        print(f"  {case:9s} {linker:9s} compile {col('first_s')}, CPU {col('first_cpu_s')}, "
              f"a second one {col('again_s')}; import minigrad {col('import_s')}, "
              f"numba {col('import_numba_s')}; phases {phases}; "
              f"{rs[0]['dispatchers']} dispatchers made")
    return runs


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="embedding,fm")
    p.add_argument("--linkers", default="generated,jit")
    p.add_argument("--cold", action="store_true",
                   help="also the first call with empty Numba and minigrad caches")
    p.add_argument("--top", type=int, default=12, help="compiled functions listed")
    p.add_argument("--json", action="store_true", help="print the raw results too")
    p.add_argument("--compile-only", action="store_true",
                   help="only the first compile of a process, --repeat processes each")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    if args.compile_only:
        runs = compile_only(args.cases.split(","), args.linkers.split(","), args.repeat)
        if args.json:
            print(json.dumps([r for rs in runs.values() for r in rs]))
        return
    results = []
    for case in args.cases.split(","):
        for linker in args.linkers.split(","):
            run_child(case, linker)  # make sure the caches are warm: the segment compiles,
            run_child(case, linker)  # then a process loading it writes its helper bundle
            results.append((run_child(case, linker), "warm caches"))
            if not args.cold:
                continue
            scratch = tempfile.mkdtemp(prefix="minigrad-compile-time-")
            try:
                env = {"NUMBA_CACHE_DIR": os.path.join(scratch, "numba"),
                       "MINIGRAD_CACHE_DIR": os.path.join(scratch, "minigrad")}
                results.append((run_child(case, linker, env), "cold caches"))
                if linker == "jit":  # helpers cached now; the segments compile again
                    env["MINIGRAD_CACHE_DIR"] = os.path.join(scratch, "minigrad2")
                    results.append((run_child(case, linker, env),
                                    "helpers cached, segments cold"))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    for res, label in results:
        report(res, label, args.top)
    if args.json:
        print(json.dumps([dict(r, label=label) for r, label in results]))


if __name__ == "__main__":
    main()
