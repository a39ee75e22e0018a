"""Triplet-loss embedding with momentum: minigrad exact sparse momentum vs PyTorch dense momentum.

The project's first motivating model (``mg.models.TripletEmbedding``: anchor, positive and
negative ids gathered from one float32 table of ``V x 64``, margin hinge on squared
distances, batch 256 triplets) trained with SGD + momentum 0.9 at V = 2*10^4, 2*10^5,
2*10^6:

* ``minigrad exact Momentum``: ``mg.optim.Momentum(sparse="exact")`` on the row-sparse
  gradient, one process: touched rows only, skipped steps caught up in closed form (the
  dense optimizer's parameters);
* ``minigrad exact Momentum, hogwild 2 workers``: the same step in two lock-free
  ``mg.parallel.hogwild`` processes (each with its own momentum state), reported as the
  time per batch of the pair (batch / total samples per second);
* with ``--compare torch``: ``nn.Embedding`` + ``torch.optim.SGD(momentum=0.9)``, which
  must be dense (``nn.Embedding(sparse=True)`` is refused by SGD with momentum), at 1 and
  at 2 intra-op threads; and, for context, ``sparse=True`` + plain SGD (no momentum: the
  only sparse update torch's SGD takes).

Each library's single-process systems run in a fresh process of their own; first steps
(JIT compile or cache load) are timed apart and kept out of the medians.
"""
from __future__ import annotations

import functools
import importlib.util
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from benchmarks import common

SIZES = (20_000, 200_000, 2_000_000)
QUICK_SIZES = (20_000, 2_000_000)  # the two ends of the range
DIM, BATCH, LR, MOMENTUM, MARGIN = 64, 256, 0.05, 0.9, 1.0
N_CLASSES = 1000  # items fall into classes; triplets: same class vs another class
SETTINGS = {  # repeats, seconds aimed at per timed block, max steps per block, batches
    "full": dict(repeats=7, block_s=0.5, max_steps=50, n_batches=64, hogwild_batches=400),
    "quick": dict(repeats=3, block_s=0.15, max_steps=20, n_batches=16, hogwild_batches=120),
    "smoke": dict(repeats=2, block_s=0.01, max_steps=2, n_batches=2, hogwild_batches=8),
}
SMOKE_SIZES = (2_000,)


def make_triplets(vocab, n, seed=0):
    """``(anchor, positive, negative)`` int64 ids of ``n`` triplets over ``vocab`` items."""
    import minigrad as mg

    labels = np.arange(vocab) % N_CLASSES
    return mg.models.triplets_from_classes(labels, n, seed=seed)


# --- systems: each returns (step(i) -> None, compile_s, objects to keep alive) -------------


def make_minigrad_step(model, params, warmup_batch=None):
    """A compiled exact-momentum step on ``params`` (module level: hogwild pickles it).

    ``warmup_batch``: one training step taken here, so that a hogwild worker pays its JIT
    compile / cache load before the common start signal instead of inside the timing.
    """
    import minigrad as mg

    a, p, n = mg.lvector("anchor"), mg.lvector("positive"), mg.lvector("negative")
    cost = model.cost(a, p, n)
    opt = mg.optim.Momentum(params, lr=LR, momentum=MOMENTUM, sparse="exact")
    fn = mg.function([a, p, n], cost, updates=opt.updates(cost))
    if warmup_batch is not None:
        fn(*warmup_batch)
    return fn


def minigrad_system(vocab, batches):
    import minigrad as mg

    model = mg.models.TripletEmbedding(vocab, DIM, margin=MARGIN, seed=0, dtype="float32")
    fn = make_minigrad_step(model, model.params)

    def step(i):
        fn(*batches[i % len(batches)])

    return step, fn.compile_seconds, model


def torch_system(torch, vocab, batches, sparse):
    """``nn.Embedding`` + SGD: momentum (dense) or, with ``sparse``, plain sparse SGD."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(vocab, DIM, sparse=sparse)
    with torch.no_grad():
        table.weight.normal_(std=0.1)
    opt = torch.optim.SGD(table.parameters(), lr=LR, momentum=0.0 if sparse else MOMENTUM)
    data = [torch.from_numpy(np.stack(b, axis=1)) for b in batches]

    def step(i):
        ids = data[i % len(data)]
        opt.zero_grad(set_to_none=True)
        rows = table(ids)
        a, p, n = rows[:, 0], rows[:, 1], rows[:, 2]
        d_ap, d_an = ((a - p) ** 2).sum(1), ((a - n) ** 2).sum(1)
        torch.relu(d_ap - d_an + MARGIN).mean().backward()
        opt.step()

    return step, 0.0, (table, opt)


SYSTEMS = {  # label: (library, threads or None for the default, argument)
    "minigrad exact Momentum": ("minigrad", None, None),
    "torch dense Momentum, 1 thread": ("torch", 1, False),
    "torch dense Momentum, 2 threads": ("torch", 2, False),
    "torch sparse SGD (no momentum), 1 thread": ("torch", 1, True),
}
HOGWILD = "minigrad exact Momentum, hogwild 2 workers"


@functools.lru_cache(maxsize=1)
def _cached_batches(vocab, n_batches):
    a, p, n = make_triplets(vocab, BATCH * n_batches)
    return [(a[s:s + BATCH], p[s:s + BATCH], n[s:s + BATCH])
            for s in range(0, BATCH * n_batches, BATCH)]


def measure_system(label, vocab, settings):
    """Run in a child process: build one system at one vocabulary and time it."""
    library, threads, arg = SYSTEMS[label]
    batches = _cached_batches(vocab, settings["n_batches"])
    if library == "minigrad":
        make = functools.partial(minigrad_system, vocab, batches)
    else:
        import torch

        torch.set_num_threads(threads)
        make = functools.partial(torch_system, torch, vocab, batches, arg)
    row = common.measure_step(make, settings)
    return {"bench": "triplet", "system": label, "vocab": vocab, "threads": threads, **row}


def measure_hogwild(vocab, settings, n_workers=2):
    """Two lock-free workers on one shared table: per-batch time of the pair."""
    import minigrad as mg

    model = mg.models.TripletEmbedding(vocab, DIM, margin=MARGIN, seed=0, dtype="float32")
    data = make_triplets(vocab, BATCH * settings["hogwild_batches"], seed=1)
    warmup = tuple(column[:BATCH] for column in data)
    res = mg.parallel.hogwild(functools.partial(make_minigrad_step, model,
                                                warmup_batch=warmup), model.params,
                              data, n_workers, epochs=1, batch_size=BATCH, seed=0,
                              progress=False)
    per_batch = BATCH / res.samples_per_s
    per_worker = [BATCH / s for s in res.worker_samples_per_s if s]
    return {"bench": "triplet", "system": HOGWILD, "vocab": vocab, "threads": 1,
            "median_s": per_batch, "min_s": min(per_worker) / n_workers if per_worker
            else per_batch, "max_s": max(per_worker) / n_workers if per_worker else per_batch,
            "repeats": 1, "samples_per_s": res.samples_per_s, "startup_s": res.startup_s,
            "start_method": res.start_method, "dense_writeback": res.dense_writeback,
            "first_step_s": None, "compile_s": None}


def systems_for(compare):
    labels = ["minigrad exact Momentum"]
    notes = []
    if "torch" in set(compare or ()):
        if importlib.util.find_spec("torch") is not None:
            labels += [k for k, v in SYSTEMS.items() if v[0] == "torch"]
        else:
            notes.append("--compare torch: torch is not installed, PyTorch rows skipped")
    return labels, notes


def ratios(rows):
    t = {(r["system"], r["vocab"]): r["median_s"] for r in rows}
    out = []
    for v in sorted({r["vocab"] for r in rows}):
        mine = t.get(("minigrad exact Momentum", v))
        for other in ("torch dense Momentum, 1 thread", "torch dense Momentum, 2 threads"):
            if mine and (other, v) in t:
                out.append(f"{other} / minigrad exact Momentum @V={v:,}: "
                           f"{t[(other, v)] / mine:.1f}x")
        if mine and (HOGWILD, v) in t:
            out.append(f"hogwild 2 workers throughput / 1 process @V={v:,}: "
                       f"{mine / t[(HOGWILD, v)]:.2f}x")
    sizes = sorted(v for s, v in t if s == "minigrad exact Momentum")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        out.append(f"minigrad exact Momentum V={hi:,} / V={lo:,}: "
                   f"{t[('minigrad exact Momentum', hi)] / t[('minigrad exact Momentum', lo)]:.2f}x"
                   " (flat = O(rows touched), not O(V))")
    return out


def plot(rows, out_dir):
    series = {}
    for system in dict.fromkeys(r["system"] for r in rows):
        pts = sorted((r["vocab"], r["median_s"] * 1e3, r["min_s"] * 1e3, r["max_s"] * 1e3)
                     for r in rows if r["system"] == system)
        series[system] = tuple(np.array(c) for c in zip(*pts))
    return common.plot_lines(out_dir, "triplet_step_time", series, "vocabulary size",
                             "ms per batch", f"Triplet embedding + momentum (float32, "
                             f"batch {BATCH}, dim {DIM})", logx=True, logy=True)


def run(quick=False, compare=(), out_dir=None, smoke=False):
    mode = "smoke" if smoke else ("quick" if quick else "full")
    settings = SETTINGS[mode]
    sizes = SMOKE_SIZES if smoke else (QUICK_SIZES if quick else SIZES)
    labels, notes = systems_for(compare)
    notes.insert(0, f"float32 V x {DIM} table, batch {BATCH} triplets (classes of items), "
                 f"margin {MARGIN}, SGD lr={LR} momentum={MOMENTUM}; median over "
                 f"{settings['repeats']} blocks; first step (JIT/cache load) not in the median")
    rows = []
    bar = common.progress(total=len(sizes) * (len(labels) + 1), desc="triplet")
    context = multiprocessing.get_context("spawn")
    by_library = {}
    for label in labels:
        by_library.setdefault(SYSTEMS[label][0], []).append(label)
    for group in by_library.values():  # one fresh process per library: pools never meet
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            for vocab in sizes:
                for label in group:
                    bar.set_postfix_str(f"{label} V={vocab}")
                    rows.append(pool.submit(measure_system, label, vocab, settings).result())
                    bar.update()
    # hogwild start-up (a V x 64 copy into shared memory, a momentum buffer per worker)
    # takes ~20 s at 2*10^6 rows on a loaded 2-core box: the quick suite runs it at the
    # smallest size only
    for vocab in sizes[:1] if quick else sizes:
        bar.set_postfix_str(f"hogwild V={vocab}")
        rows.append(measure_hogwild(vocab, settings))
        bar.update()
    bar.close()
    order = labels + [HOGWILD]
    rows.sort(key=lambda r: (r["vocab"], order.index(r["system"])))
    summary = ratios(rows)
    notes += summary
    start_method = next(r["start_method"] for r in rows if r["system"] == HOGWILD)
    notes.append(f"hogwild: {start_method} workers, 1 thread each, "
                 f"{settings['hogwild_batches']} batches shared per run; start-up (copy to "
                 "shared memory, compile, one warm-up step per worker) excluded; min/max: the "
                 "slower/faster worker")
    return common.result("triplet", rows, notes, [plot(rows, out_dir)], ratios=summary,
                         cpu_count=os.cpu_count())


def table_rows(res):
    out = []
    for r in res["rows"]:
        out.append({"case": f"V={r['vocab']:,} step", "system": r["system"],
                    "value": 1e3 * r["median_s"], "lo": 1e3 * r["min_s"],
                    "hi": 1e3 * r["max_s"], "unit": "ms per batch"})
    first = {}
    for r in res["rows"]:
        if r.get("first_step_s") is not None:
            first.setdefault(r["system"], r)
    for system, r in first.items():
        out.append({"case": f"V={r['vocab']:,} compile+1st step", "system": system,
                    "value": 1e3 * (r["compile_s"] + r["first_step_s"]), "unit": "ms"})
    return out
