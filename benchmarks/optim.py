"""Row-sparse Adam step time vs table size: minigrad lazy and exact (constant lr and under
a cosine schedule), dense Adam, torch dense Adam + ``CosineAnnealingLR`` and
``torch.optim.SparseAdam`` (+ the same scheduler).

Each step updates 5,000 distinct rows (unsorted, so coalescing is included) of a float32
``V x 64`` table, V in 3*10^4, 3*10^5, 3*10^6. Reported: median (min, max) seconds per step
over repeats of a few steps each, after warm-up; the JIT warm-up (compile + first call) is a
separate row. Targets: a flat sparse step time across V (within 1.3x) that beats
SparseAdam; exact mode under the cosine schedule within 1.3x of exact with a constant lr and
within 2x of lazy. ``python -m benchmarks.optim [--full] [--no-torch]``.
"""
from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from benchmarks import common

WIDTH, TOUCHED = 64, 5000
SIZES = (30_000, 300_000, 3_000_000)
N_BATCHES = 8


def _batches(V, rng):
    out = []
    for _ in range(N_BATCHES):
        idx = rng.choice(V, size=TOUCHED, replace=False).astype(np.int64)
        out.append((idx, rng.standard_normal((TOUCHED, WIDTH), dtype=np.float32)))
    return out


#: the schedule of the "cosine" rows (torch: CosineAnnealingLR(T_max=COSINE_T_MAX))
COSINE_T_MAX = 1000


def _minigrad_step(V, mode, table, cosine=False):
    import minigrad as mg

    E = mg.shared(table.copy(), name="E")
    lr = mg.optim.schedules.CosineAnnealingLR(1e-3, T_max=COSINE_T_MAX) if cosine else 1e-3
    opt = mg.optim.Adam([E], lr=lr, sparse=mode if mode != "dense" else "lazy")
    if mode == "dense":
        g = mg.matrix("g", dtype="float32")
    else:
        g = mg.RowSparseType("float32", (V, WIDTH)).make_variable("g")
    t0 = time.perf_counter()
    f = mg.function([g], updates=opt.updates(grads=[g]))
    compile_s = time.perf_counter() - t0
    dense_buf = np.zeros((V, WIDTH), dtype=np.float32) if mode == "dense" else None

    def step(batch):
        idx, vals = batch
        if dense_buf is None:
            f(mg.RowSparse(idx, vals, (V, WIDTH)))
        else:  # the densified gradient: scatter, step, clear (clearing is not timed apart)
            dense_buf[idx] = vals
            f(dense_buf)
            dense_buf[idx] = 0
    return step, compile_s, (E, opt)


def _torch_step(torch, V, table, dense=False, cosine=False):
    p = torch.nn.Parameter(torch.from_numpy(table.copy()))
    opt = (torch.optim.Adam if dense else torch.optim.SparseAdam)([p], lr=1e-3)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=COSINE_T_MAX)
             if cosine else None)
    dense_buf = torch.zeros((V, WIDTH), dtype=torch.float32) if dense else None

    def step(batch):
        idx, vals = batch
        if dense:
            ti = torch.from_numpy(idx)
            dense_buf[ti] = torch.from_numpy(vals)
            p.grad = dense_buf
            opt.step()
            dense_buf[ti] = 0
        else:
            p.grad = torch.sparse_coo_tensor(torch.from_numpy(idx)[None],
                                             torch.from_numpy(vals), (V, WIDTH))
            opt.step()
        if sched is not None:
            sched.step()
    return step, 0.0, (p, opt)


def _measure(step, batches, warmup, repeats, per_repeat):
    t0 = time.perf_counter()
    step(batches[0])
    first_s = time.perf_counter() - t0
    for i in range(warmup):
        step(batches[(i + 1) % N_BATCHES])
    times = common.time_blocks(lambda i: step(batches[i % N_BATCHES]), repeats, per_repeat)
    return first_s, times


def run(quick: bool, compare: set, out_dir=None, smoke=False) -> dict:
    torch = common.torch_or_none(compare)
    repeats, per_repeat, warmup = (3, 3, 3) if quick else (7, 5, 10)
    if smoke:
        repeats, per_repeat, warmup = 1, 1, 1
    sizes = SIZES[:1] if smoke else SIZES
    notes = [
        f"float32 tables V x {WIDTH}; {TOUCHED} distinct unsorted rows per step; Adam lr=1e-3",
        f"median of {repeats} repeats x {per_repeat} steps after {warmup} warm-up steps; "
        "'first_call_s' is the first step (JIT compile or cache load) and is not in the median",
        "exact: dense-Adam-equivalent rows (catch-up of skipped steps); lazy: SparseAdam "
        "semantics; dense: minigrad dense Adam fed the densified gradient",
    ]
    if torch is None:
        notes.append("torch.optim.SparseAdam not measured (torch missing or not in compare)")
    rows = []
    rng = np.random.default_rng(0)
    for V in sizes:
        table = rng.standard_normal((V, WIDTH), dtype=np.float32)
        batches = _batches(V, rng)
        impls = [("minigrad lazy", _minigrad_step, (V, "lazy", table)),
                 ("minigrad exact", _minigrad_step, (V, "exact", table)),
                 ("minigrad exact cos", _minigrad_step, (V, "exact", table, True))]
        if not quick or V <= 300_000:
            impls.append(("minigrad dense", _minigrad_step, (V, "dense", table)))
        if torch is not None:
            impls.append(("torch SparseAdam", _torch_step, (torch, V, table)))
            impls.append(("torch SparseAdam cos", _torch_step, (torch, V, table, False, True)))
            if not quick or V <= 300_000:
                impls.append(("torch Adam cos", _torch_step, (torch, V, table, True, True)))
        for name, make, args in impls:
            step, compile_s, keep = make(*args)
            first_s, times = _measure(step, batches, warmup, repeats, per_repeat)
            rows.append({"impl": name, "table_rows": V, "width": WIDTH, "touched": TOUCHED,
                         "compile_s": compile_s, "first_call_s": first_s,
                         **common.summarize(times)})
            del step, keep
            gc.collect()
        del table
        gc.collect()
    _ratios(rows, notes)
    result = {"name": "optim", "rows": rows, "notes": notes,
              "environment": common.environment()}
    if out_dir is not None:
        common.write_json(f"{out_dir}/optim.json", result)
    return result


def _ratios(rows, notes):
    by = {(r["impl"], r["table_rows"]): r["median_s"] for r in rows}
    for impl in ("minigrad lazy", "minigrad exact"):
        ts = [by[k] for k in by if k[0] == impl]
        if len(ts) > 1:
            notes.append(f"{impl}: largest/smallest table step time = {max(ts) / min(ts):.2f}x")
    for V in sorted({k[1] for k in by}):
        cos, const = by.get(("minigrad exact cos", V)), by.get(("minigrad exact", V))
        lazy, sparse = by.get(("minigrad lazy", V)), by.get(("torch SparseAdam", V))
        if cos and const and lazy:
            notes.append(f"V={V:,}: exact+cosine / exact constant = {cos / const:.2f}x "
                         f"(target <= 1.3), exact+cosine / lazy = {cos / lazy:.2f}x "
                         f"(target <= 2)")
        if lazy and sparse:
            notes.append(f"V={V:,}: torch SparseAdam / minigrad lazy = {sparse / lazy:.2f}x "
                         f"(target > 1)")
    for r in rows:
        torch_s = by.get(("torch SparseAdam", r["table_rows"]))
        r["vs_torch_sparseadam"] = (torch_s / r["median_s"]) if torch_s else None
        dense_s = by.get(("minigrad dense", r["table_rows"]))
        r["vs_dense"] = (dense_s / r["median_s"]) if dense_s else None


def format_table(result):
    head = (f"{'impl':<22}{'table rows':>12}{'median ms':>11}{'min ms':>9}{'max ms':>9}"
            f"{'first ms':>10}{'x dense':>9}{'x SparseAdam':>14}")
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['impl']:<22}{r['table_rows']:>12,}{r['median_s'] * 1e3:>11.2f}"
            f"{r['min_s'] * 1e3:>9.2f}{r['max_s'] * 1e3:>9.2f}{r['first_call_s'] * 1e3:>10.1f}"
            f"{common.fmt(r['vs_dense']):>9}{common.fmt(r['vs_torch_sparseadam']):>14}")
    return "\n".join(lines + [""] + [f"- {n}" for n in result["notes"]])


def eval_reads(V=2_000_000, batch=256, repeats=101, rule="Momentum", clock="wall",
               trained=False, warm_steps=300):
    """Issue 13's evaluation-read case: a function that only gathers rows of a table that an
    exact-mode optimizer trains, called after each training step. Returns median seconds
    of the evaluation call, exact and lazy, interleaved (target: exact within 2x).
    ``rule``: the optimizer (issue 13's case is Momentum; "Adam" shows the Adam read).
    ``clock``: "wall" or "cpu" (this process's CPU time: less noise on a shared box).
    ``trained``: read only rows some training step touched (after ``warm_steps`` steps), so
    every read row has state (m, v) and its own lag; otherwise rows are drawn from the
    whole table, most of which no step ever touched (their state is zero)."""
    import minigrad as mg

    make = {"Momentum": lambda E, mode: mg.optim.Momentum([E], lr=1e-3, momentum=0.9,
                                                          sparse=mode),
            "Adam": lambda E, mode: mg.optim.Adam([E], lr=1e-3, sparse=mode)}[rule]
    timer = {"wall": time.perf_counter, "cpu": time.process_time}[clock]

    rng = np.random.default_rng(1)
    out = {}
    setups = {}
    for mode in ("exact", "lazy"):
        E = mg.shared(rng.standard_normal((V, 32)).astype(np.float32), name="E")
        idx = mg.lvector("idx")
        cost = (E[idx] ** 2).sum()
        opt = make(E, mode)
        train = mg.function([idx], cost, updates=opt.updates(cost))
        evaluate = mg.function([idx], E[idx])
        # steady state of a long run: every page of the state tables is resident (fresh
        # np.zeros pages would make each first touch of a row a page fault, ~1 us each)
        for var in [*opt.state[0].values(), *[x for x in opt.last if x is not None]]:
            var.value[...] = var.value
        setups[mode] = (train, evaluate)
        out[mode] = []
    seen = None
    if trained:
        steps = rng.integers(0, V, size=(warm_steps, batch))
        for rows in steps:
            for train, _ in setups.values():
                train(rows)
        seen = np.unique(steps)
    for r in range(repeats + 1):
        for mode, (train, evaluate) in setups.items():
            train(rng.integers(0, V, size=batch))
            rows = (rng.integers(0, V, size=batch) if seen is None
                    else seen[rng.integers(0, seen.shape[0], size=batch)])
            t0 = timer()
            evaluate(rows)
            if r:  # the first round includes the JIT
                out[mode].append(timer() - t0)
    return {mode: float(np.median(ts)) for mode, ts in out.items()}


def adam_catch_up(gaps=(10, 60, 600, 5000), rows=5000, V=300_000, width=64, repeats=5,
                  tiny_v=False):
    """Exact Adam's catch-up alone, closed form (``_adam_series``, what the kernel uses)
    against the step-by-step replay (``_adam_replay``, its fallback), on the same rows
    of a float32 table with nonzero m, v, interleaved: median seconds per call of
    ``rows`` rows whose gaps are uniform in ``[1, 2 * gap)``, per mean gap. ``tiny_v``:
    ``sqrt(v)`` near ``eps`` (rows whose gradients were small), where that series does
    not apply and the closed form is the shifted series (``_adam_series_shifted``); the
    replay is what the kernel did for these rows before it."""
    from numba import njit

    from kernels.cpu import optim as ko

    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-3
    none = np.zeros(1)
    blocks, offsets = np.zeros((1, 4)), np.zeros(2, dtype=np.int64)
    rho_pow = np.ones((1, 6))
    logs = ko.series_logs(b1, b2, False, ko.adam_drift_tol(np.float32))

    @njit
    def drive(P, M, Vt, VM, idx, lasts, t, series, ratio, tol):
        for i in range(idx.shape[0]):
            k = t - 1 - lasts[i]
            if series:
                ko._adam_catch_up(P, M, Vt, VM, idx[i], lasts[i], k, lr, 0.0, b1, b2, eps,
                                  False, False, ratio, tol, lr, False, none, none, blocks,
                                  offsets, 1, False, False, blocks, rho_pow, logs)
            else:
                ko._adam_replay(P, M, Vt, VM, idx[i], lasts[i], k, lr, 0.0, b1, b2, eps,
                                False, False, ratio, tol, lr, False, none, none, False)

    rng = np.random.default_rng(0)
    P = rng.standard_normal((V, width)).astype(np.float32)
    M = (rng.standard_normal((V, width)) * 0.01).astype(np.float32)
    Vt = (rng.random((V, width)) * 1e-4 + 1e-6).astype(np.float32)
    if tiny_v:
        Vt *= np.float32(1e-12)
    VM = np.zeros((0, width), dtype=np.float32)
    _, ratio = ko.adam_drift_ratio(1.0, b1, b2, 0.0, False)
    tol, t = ko.adam_drift_tol(np.float32), 10_000
    out = {}
    for gap in gaps:
        times = {True: [], False: []}
        for rep in range(repeats + 1):
            for series in (True, False):
                idx = np.sort(rng.choice(V, rows, replace=False))
                lasts = np.maximum(0, t - 1 - rng.integers(1, 2 * gap, rows))
                tables = [a.copy() for a in (P, M, Vt)]
                t0 = time.perf_counter()
                drive(*tables, VM, idx, lasts.astype(np.int64), t, series, ratio, tol)
                if rep:  # the first round includes the JIT
                    times[series].append(time.perf_counter() - t0)
        out[gap] = (float(np.median(times[True])), float(np.median(times[False])))
    return out


def adamax_step(V=300_000, rows=TOUCHED, width=WIDTH, repeats=15, max_lag=8):
    """A registered rule's step (``mg.optim.Adamax``, built by ``register_rule`` from one
    ``update``): the NumPy driver against the compiled loop (``CompiledRule``) on the same
    calls, interleaved: median seconds per step of ``rows`` sorted rows of a float32
    ``V x width`` table, lazy and exact (rows lagging 0..``max_lag`` steps, replayed with
    each step's lr from the history). Returns ``{mode: (numpy_s, compiled_s)}``."""
    import minigrad.optim.adamax  # noqa: F401  (registers the rule)
    from kernels import row_kernels
    from kernels.reference.history import StepHistory

    compiled = row_kernels._TABLE[("adamax", "numba")]
    driver = compiled.fallback
    hyper = dict(beta1=0.9, beta2=0.999, eps=1e-8)
    rng = np.random.default_rng(0)
    P = rng.standard_normal((V, width)).astype(np.float32)
    m = (rng.standard_normal((V, width)) * 0.01).astype(np.float32)
    u = (rng.random((V, width)) + 0.1).astype(np.float32)
    t = 1000
    h = StepHistory()
    h.restart(0)
    for s in range(1, t + 1):
        h.record(s, 1e-3 * (0.5 + 0.5 * np.cos(np.pi * s / t)), 0.0)
    out = {}
    for mode in ("lazy", "exact"):
        times = {"numpy": [], "compiled": []}
        for rep in range(repeats + 1):
            for name, fn in (("numpy", driver), ("compiled", compiled)):
                idx = np.sort(rng.choice(V, rows, replace=False)).astype(np.int64)
                G = rng.standard_normal((rows, width)).astype(np.float32)
                last = None
                if mode == "exact":
                    last = np.full(V, t - 1, dtype=np.int64)
                    last[idx] -= rng.integers(0, max_lag + 1, rows)
                t0 = time.perf_counter()
                fn(P, m, u, idx, G, t, last, lr=1e-3, weight_decay=0.0,
                   history=h if last is not None else None, trusted=True, **hyper)
                if rep:  # the first round includes the JIT (or the cache load)
                    times[name].append(time.perf_counter() - t0)
        out[mode] = (float(np.median(times["numpy"])), float(np.median(times["compiled"])))
    return out


def interleaved(sizes=SIZES, rounds=10, steps=3):
    """minigrad lazy, exact and exact under the cosine schedule at each size, stepped in
    turn (a round of ``steps`` steps each, ``rounds`` rounds after 3 warm-up steps), so a
    loaded machine slows all three alike. Returns ``{V: {name: median s/step}}``."""
    out = {}
    for V in sizes:
        rng = np.random.default_rng(0)
        table = rng.standard_normal((V, WIDTH), dtype=np.float32)
        batches = _batches(V, rng)
        steps_of = {name: _minigrad_step(*args)[0] for name, args in (
            ("lazy", (V, "lazy", table)), ("exact", (V, "exact", table)),
            ("exact cos", (V, "exact", table, True)))}
        for step in steps_of.values():
            for i in range(3):
                step(batches[i])
        times = {name: [] for name in steps_of}
        for r in range(rounds):
            for name, step in steps_of.items():
                t0 = time.perf_counter()
                for j in range(steps):
                    step(batches[(r * steps + j) % N_BATCHES])
                times[name].append((time.perf_counter() - t0) / steps)
        out[V] = {name: float(np.median(ts)) for name, ts in times.items()}
        del steps_of, table
        gc.collect()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", action="store_true",
                        help="only the evaluation-read timing (V=2M, exact vs lazy)")
    parser.add_argument("--trained", action="store_true",
                        help="with --reads: read only rows that training has touched")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="with --reads: the clock of the evaluation call")
    parser.add_argument("--full", action="store_true", help="more repeats, dense at 3e6 too")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default=None, help="directory for optim.json")
    parser.add_argument("--catch-up", action="store_true",
                        help="only exact Adam's catch-up: closed form vs replay, per gap")
    parser.add_argument("--adamax", action="store_true",
                        help="only a registered rule's step (Adamax): NumPy driver vs compiled")
    parser.add_argument("--interleaved", action="store_true",
                        help="only minigrad lazy / exact / exact+cosine, stepped in turn")
    args = parser.parse_args()
    if args.interleaved:
        for V, t in interleaved().items():
            print(f"V={V:>9,}: lazy {t['lazy'] * 1e3:.2f} ms, exact {t['exact'] * 1e3:.2f} "
                  f"ms, exact+cos {t['exact cos'] * 1e3:.2f} ms; exact+cos / exact "
                  f"{t['exact cos'] / t['exact']:.2f}x (target <= 1.3), exact+cos / lazy "
                  f"{t['exact cos'] / t['lazy']:.2f}x (target <= 2)")
        return
    if args.adamax:
        for mode, (numpy_s, compiled_s) in adamax_step().items():
            print(f"Adamax step ({mode}), {TOUCHED} x {WIDTH} float32 rows of 300,000: NumPy "
                  f"driver {numpy_s * 1e3:.2f} ms, compiled {compiled_s * 1e3:.2f} ms, "
                  f"{numpy_s / compiled_s:.1f}x")
        return
    if args.catch_up:
        for tiny_v in (False, True):
            for gap, (series, replay) in adam_catch_up(tiny_v=tiny_v).items():
                print(f"exact Adam catch-up, 5000 rows x 64 float32{', tiny v' if tiny_v else ''}"
                      f", mean gap {gap:>5}: closed form {series * 1e3:.2f} ms, replay "
                      f"{replay * 1e3:.2f} ms, {replay / series:.1f}x")
        return
    if args.reads:
        for rule in ("Momentum", "Adam"):
            got = eval_reads(rule=rule, clock=args.clock, trained=args.trained)
            which = "trained rows" if args.trained else "any rows"
            print(f"eval call after a training step, V=2M x 32 float32, {rule}, {which}, "
                  f"{args.clock} clock: exact "
                  f"{got['exact'] * 1e3:.3f} ms, lazy {got['lazy'] * 1e3:.3f} ms, ratio "
                  f"{got['exact'] / got['lazy']:.2f}x (target <= 2)")
        return
    result = run(quick=not args.full, compare=set() if args.no_torch else {"torch"},
                 out_dir=args.out)
    print(format_table(result))


if __name__ == "__main__":
    main()
