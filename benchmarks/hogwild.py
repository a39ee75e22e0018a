"""Hogwild scaling: samples/s and final loss with 1, 2, ... workers on one FM task,
next to PyTorch ``share_memory()`` + ``torch.multiprocessing`` Hogwild on the same model.

Both sides: the same factorization machine (logistic loss) on the same synthetic ratings,
plain SGD touching only the rows of each batch, one thread per worker, workers started
together and timed from that common start (process start-up and compilation excluded,
reported separately). ``python -m benchmarks.hogwild [--quick] [--compare torch]``.
"""
from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np

import minigrad as mg

K, LR, BATCH = 16, 0.05, 256


def _task(quick):
    n_users, n_items = (20_000, 50_000) if quick else (50_000, 200_000)
    r = mg.data.synthetic_ratings(n_users, n_items, n_ratings=200_000 if quick else 600_000,
                                  seed=0, k=8, n_extra=2)
    return r.X.tocsr(), r.y


# --- minigrad -------------------------------------------------------------------------


def make_step(model, params, linker="generated"):
    """One compiled SGD step; ``mg.optim.SGD`` writes the touched rows in place.
    ``linker="jit"``: the safe phase as one cached Numba function (``mg.Mode``)."""
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = model.cost(X, y)
    return mg.function([X, y], cost, updates=mg.optim.SGD(params, LR).updates(cost),
                       mode=mg.Mode(linker=linker))


def full_loss(model, X, y):
    Xs, ys = mg.csr_matrix("X"), mg.vector("y")
    return float(mg.function([Xs, ys], model.cost(Xs, ys))(X, y))


def run_minigrad(X, y, n_workers, epochs, linker="generated"):
    if linker == "jit":  # compile (or load) the cached segment once here, not per worker
        spare = mg.models.FactorizationMachine(X.shape[1], K, seed=1)
        make_step(spare, spare.params, linker)(X[:BATCH], y[:BATCH])
    model = mg.models.FactorizationMachine(X.shape[1], K, seed=0)
    res = mg.parallel.hogwild(functools.partial(make_step, model, linker=linker),
                              model.params, (X, y), n_workers, epochs, BATCH, seed=0,
                              progress=False)
    return {"samples_per_s": res.samples_per_s, "startup_s": res.startup_s,
            "train_s": res.train_s, "final_loss": full_loss(model, X, y),
            "start_method": res.start_method}


# --- PyTorch --------------------------------------------------------------------------


def _torch_fm_params(n_features):
    """``[b, w, V]`` as shared leaf tensors (the same initialisation as the minigrad FM)."""
    import torch

    V = np.random.default_rng(0).standard_normal((n_features, K)) * 0.01
    params = [torch.zeros(1, dtype=torch.float64), torch.zeros(n_features, 1, dtype=torch.float64),
              torch.from_numpy(V)]
    return [p.share_memory_().requires_grad_() for p in params]


def _torch_fm(params, rows, cols, vals, n):
    """FM logits with sparse embedding gradients (``torch.optim.SGD`` takes those)."""
    import torch
    from torch.nn.functional import embedding

    b, w, V = params
    xw = embedding(cols, w, sparse=True)[:, 0] * vals
    xv = embedding(cols, V, sparse=True) * vals[:, None]
    lin = torch.zeros(n, dtype=xw.dtype).index_add_(0, rows, xw)
    s1 = torch.zeros(n, K, dtype=xv.dtype).index_add_(0, rows, xv)
    s2 = torch.zeros(n, K, dtype=xv.dtype).index_add_(0, rows, xv * xv)
    return b + lin + 0.5 * (s1 * s1 - s2).sum(1)


def _torch_batches(X, y, rank, n_workers, epochs, seed=0):
    import torch

    for epoch in range(epochs):
        mine = np.random.default_rng([seed, epoch]).permutation(X.shape[0])[rank::n_workers]
        for start in range(0, len(mine), BATCH):
            batch = mine[start:start + BATCH]
            Xb = X[batch]
            rows = np.repeat(np.arange(Xb.shape[0]), np.diff(Xb.indptr))
            yield (torch.from_numpy(rows), torch.from_numpy(Xb.indices.astype(np.int64)),
                   torch.from_numpy(Xb.data), Xb.shape[0], torch.from_numpy(y[batch]))


def _torch_worker(params, X, y, rank, n_workers, epochs, barrier, out):
    import torch

    torch.set_num_threads(1)
    opt = torch.optim.SGD(params, lr=LR)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    barrier.wait()
    t0, n = time.perf_counter(), 0
    for rows, cols, vals, nb, yb in _torch_batches(X, y, rank, n_workers, epochs):
        opt.zero_grad()
        loss_fn(_torch_fm(params, rows, cols, vals, nb), yb).backward()
        opt.step()
        n += nb
    out.put((rank, n, t0, time.perf_counter()))


def run_torch(X, y, n_workers, epochs):
    import torch
    import torch.multiprocessing as tmp

    params = _torch_fm_params(X.shape[1])
    ctx = tmp.get_context("fork" if "fork" in tmp.get_all_start_methods() else "spawn")
    barrier, out = ctx.Barrier(n_workers), ctx.SimpleQueue()
    procs = [ctx.Process(target=_torch_worker,
                         args=(params, X, y, r, n_workers, epochs, barrier, out))
             for r in range(n_workers)]
    with _one_thread_env():
        for p in procs:
            p.start()
    reports = [out.get() for _ in procs]
    for p in procs:
        p.join()
    t0, t1 = min(r[2] for r in reports), max(r[3] for r in reports)
    with torch.no_grad():
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        cols = torch.from_numpy(X.indices.astype(np.int64))
        logits = _torch_fm(params, torch.from_numpy(rows), cols, torch.from_numpy(X.data),
                           X.shape[0])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y))
    return {"samples_per_s": sum(r[1] for r in reports) / (t1 - t0), "train_s": t1 - t0,
            "final_loss": float(loss), "start_method": ctx.get_start_method()}


class _one_thread_env:
    """Spawned torch workers read these before importing torch."""

    VARS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def __enter__(self):
        self.old = {k: os.environ.get(k) for k in self.VARS}
        os.environ.update(self.VARS)

    def __exit__(self, *exc):
        for k, v in self.old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# --- what the machine itself allows -----------------------------------------------------


def _spin(n, out):
    t0 = time.perf_counter()
    s = 0
    for i in range(n):
        s += i * i
    out.put(time.perf_counter() - t0)


def machine_ceiling(n_workers, n=3_000_000):
    """Speed-up of n independent pure-Python loops over one: what the cores deliver now
    (on a shared VM two vCPUs can give much less than 2x)."""
    import multiprocessing as mp

    def total_rate(k):
        out = mp.SimpleQueue()
        procs = [mp.Process(target=_spin, args=(n, out)) for _ in range(k)]
        for p in procs:
            p.start()
        times = [out.get() for _ in procs]
        for p in procs:
            p.join()
        return k * n / max(times)

    return total_rate(n_workers) / total_rate(1)


# --- suite ----------------------------------------------------------------------------


def run(quick=True, compare=(), out_dir=None, smoke=False):
    """Rows: one per (library, n_workers), median samples/s over repeats and final loss."""
    X, y = _task(quick or smoke)
    epochs, repeats = (1, 1) if smoke else ((1, 2) if quick else (3, 3))
    counts = sorted({1, 2, os.cpu_count() or 1}) if not (quick or smoke) else [1, 2]
    runners = {"minigrad": run_minigrad}
    if not smoke:  # the smoke run checks the plumbing: no cold whole-phase compile there
        runners["minigrad jit"] = functools.partial(run_minigrad, linker="jit")
    notes = [f"FM k={K} on synthetic ratings: {X.shape[0]} rows, {X.shape[1]} features, "
             f"batch {BATCH}, SGD lr={LR}, {epochs} epoch(s) shared by the workers; "
             f"samples/s from the common start, median of {repeats}; os.cpu_count()="
             f"{os.cpu_count()}"]
    if "torch" in compare:
        try:
            import torch  # noqa: F401

            runners["torch"] = run_torch
        except ImportError:
            notes.append("torch not installed: PyTorch Hogwild baseline skipped")
    rows, ceilings = [], {n: machine_ceiling(n) if n > 1 else 1.0 for n in counts}
    for lib, runner in runners.items():
        for n in counts:
            runs = [runner(X, y, n, epochs) for _ in range(repeats)]
            sps = [r["samples_per_s"] for r in runs]
            rows.append({"library": lib, "n_workers": n, "samples_per_s": float(np.median(sps)),
                         "samples_per_s_min": min(sps), "samples_per_s_max": max(sps),
                         "final_loss": float(np.median([r["final_loss"] for r in runs])),
                         "startup_s": runs[0].get("startup_s"),
                         "start_method": runs[0]["start_method"]})
    for row in rows:
        base = next(r for r in rows if r["library"] == row["library"] and r["n_workers"] == 1)
        row["speedup_vs_1"] = row["samples_per_s"] / base["samples_per_s"]
        row["machine_ceiling"] = ceilings[row["n_workers"]]
    notes.append("machine_ceiling: speed-up of independent pure-Python processes measured "
                 "in this run, the most any Hogwild can get here")
    return {"name": "hogwild", "rows": rows, "notes": notes}


def _print_table(result):
    print(f"{'library':<14}{'workers':>8}{'samples/s':>12}{'speed-up':>10}{'ceiling':>9}"
          f"{'final loss':>12}{'start-up s':>12}")
    for r in result["rows"]:
        start = "" if r["startup_s"] is None else f"{r['startup_s']:.2f}"
        print(f"{r['library']:<14}{r['n_workers']:>8}{r['samples_per_s']:>12,.0f}"
              f"{r['speedup_vs_1']:>9.2f}x{r['machine_ceiling']:>8.2f}x"
              f"{r['final_loss']:>12.4f}{start:>12}")
    for note in result["notes"]:
        print("note:", note)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compare", action="append", default=[])
    args = parser.parse_args()
    t0 = time.perf_counter()
    _print_table(run(quick=args.quick, compare=set(args.compare)))
    print(f"total {time.perf_counter() - t0:.1f} s")


def table_rows(res):
    """Rows for the suite's printed table: throughput per (library, workers)."""
    return [
        {"bench": "hogwild", "case": f"workers={r['n_workers']} ({r['start_method']})",
         "system": r["library"], "value": r["samples_per_s"],
         "lo": r.get("samples_per_s_min", r["samples_per_s"]),
         "hi": r.get("samples_per_s_max", r["samples_per_s"]),
         "unit": f"samples/s (x{r['speedup_vs_1']:.2f} vs 1 worker, final loss "
                 f"{r['final_loss']:.4f})"}
        for r in res.get("rows", []) if "samples_per_s" in r
    ]
