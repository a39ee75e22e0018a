"""``mg.distributed`` throughput: 1 and 2 workers x 1 and 2 shards, next to one process and
Hogwild on the same FM task, with bytes moved per sample, pull latency and the time a
killed shard takes to come back.

Ray only ever starts in a new loopback-only network namespace: ``run`` re-executes this
module there (``python -m benchmarks.distributed --inner OUT``) and reads its JSON. All
systems train the same factorization machine (Adagrad, lr 0.05, batch 512) on the same
synthetic ratings; samples/s are over the training phase after each worker's first chunk
(actor start-up and JIT warm-up excluded, reported as ``startup_s`` / ``warmup_s``).
``python -m benchmarks.distributed [--quick]``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import minigrad as mg

K, LR, BATCH = 16, 0.05, 512
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _task(mode):
    """(X, y) with ~V features: V = 1e5 quick, 1e6 full (users + items)."""
    n_users, n_items, n = {"quick": (20_000, 80_000, 15_000),
                           "full": (200_000, 800_000, 120_000)}[mode]
    r = mg.data.synthetic_ratings(n_users, n_items, n_ratings=n, seed=0, k=8)
    return r.X.tocsr(), r.y


def _optimizer():
    return functools.partial(mg.optim.Adagrad, lr=LR)


class FMCost:
    """``make_cost`` for the FM (picklable: a module-level class holding the model)."""

    def __init__(self, n_features):
        self.model = mg.models.FactorizationMachine(n_features, K, seed=0)

    def __call__(self, params):
        X, y = mg.csr_matrix("X"), mg.vector("y")
        return [X, y], self.model.cost(X, y)


def _hogwild_step(fm, params):
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = fm.model.cost(X, y)
    return mg.function([X, y], cost, updates=_optimizer()(params).updates(cost))


def single_process(X, y, epochs):
    fm = FMCost(X.shape[1])
    step = _hogwild_step(fm, fm.model.params)
    from minigrad.distributed import plan

    batches = plan.batch_plan(X.shape[0], epochs, BATCH, 0)
    step(X[batches[0]], y[batches[0]])  # compile outside the timing
    t0 = time.perf_counter()
    for rows in batches[1:]:
        step(X[rows], y[rows])
    train_s = time.perf_counter() - t0
    n = sum(len(b) for b in batches[1:])
    return {"system": "single-process", "samples_per_s": n / train_s, "train_s": train_s}


def hogwild(X, y, epochs, n_workers=2):
    fm = FMCost(X.shape[1])
    res = mg.parallel.hogwild(functools.partial(_hogwild_step, fm), fm.model.params, (X, y),
                              n_workers, epochs, BATCH, progress=False)
    return {"system": f"hogwild x{n_workers}", "samples_per_s": res.samples_per_s,
            "train_s": res.train_s, "startup_s": res.startup_s}


def distributed(X, y, epochs, n_workers, n_shards, **kw):
    fm = FMCost(X.shape[1])
    res = mg.distributed.train(fm, fm.model.params, (X, y), _optimizer(), n_workers=n_workers,
                               n_shards=n_shards, epochs=epochs, batch_size=BATCH,
                               staleness=1, progress=False, **kw)
    return {"system": f"distributed {n_workers}w x {n_shards}s",
            "n_workers": n_workers, "n_shards": n_shards,
            "samples_per_s": res.samples_per_s,
            "rows_per_s": res.samples_per_s * res.rows_pushed / max(res.samples, 1),
            "warmup_s": res.warmup_s,
            "bytes_per_sample": res.bytes_per_sample, "pull_p50_ms": 1e3 * res.pull_p50_s,
            "pull_p99_ms": 1e3 * res.pull_p99_s, "train_s": res.train_s,
            "startup_s": res.startup_s, "final_loss": res.final_loss,
            "recoveries": res.recoveries}, res


def recovery(ray, X, y, epochs):
    """SIGKILL shard-0 mid-run; seconds from the kill until it answers from a new process."""
    record = {}

    def kill():
        deadline = time.monotonic() + 60
        try:
            target = None
            while target is None and time.monotonic() < deadline:
                for e in ray.util.list_named_actors(all_namespaces=True):
                    if e["namespace"] == "minigrad" and e["name"].endswith("-shard-0"):
                        target = ray.get_actor(e["name"], namespace="minigrad")
                time.sleep(0.05)
            while ray.get(target.info.remote())["applied_batches"] < 10:
                time.sleep(0.01)
            pid = ray.get(target.info.remote())["pid"]
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            while time.monotonic() < deadline:
                try:
                    info = ray.get(target.info.remote(), timeout=30)
                    if info["pid"] != pid:
                        record.update(recovery_s=time.time() - t_kill,
                                      restore_s=info["restore_s"])
                        return
                except ray.exceptions.RayActorError:
                    pass
                time.sleep(0.01)
        except Exception as err:  # noqa: BLE001 - reported in the row
            record["recovery_error"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    row, res = distributed(X, y, 2 * epochs, 2, 2, checkpoint_every=10)
    thread.join(60)
    if "recovery_s" not in record:
        record.setdefault("recovery_error", "the shard was not killed and back before the end")
    row.update(system="distributed 2w x 2s, shard-0 SIGKILLed", lost_pushes=res.lost_pushes,
               **record)
    return row


def inner(out, mode):
    from minigrad.distributed import ray_setup

    X, y = _task(mode)
    epochs = 1
    configs = [(1, 1), (2, 2)] if mode == "quick" else [(1, 1), (1, 2), (2, 1), (2, 2)]
    rows = [single_process(X, y, epochs), hogwild(X, y, epochs)]
    with ray_setup.local_ray(num_cpus=2) as ray:
        for w, s in configs:
            rows.append(distributed(X, y, epochs, w, s)[0])
        rows.append(recovery(ray, X, y, epochs))
    for r in rows:
        r["V"] = X.shape[1]
        r["rows"] = X.shape[0]
    with open(out, "w") as f:
        json.dump({"rows": rows}, f, default=float)


def run(quick=True, compare=(), out_dir=None, smoke=False):
    """Rows per system; Ray runs in a loopback-only namespace (a child process)."""
    name = "distributed"
    notes = [f"FM k={K}, Adagrad lr={LR}, batch {BATCH}, staleness 1, 1 epoch; samples/s over "
             "the training phase; rows/s = gradient rows pushed per second"]
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"name": name, "rows": [], "notes": ["ray not installed: skipped "
                                                    "(pip install 'minigrad[distributed]')"]}
    if smoke:
        return {"name": name, "rows": [], "notes": ["smoke mode: skipped (a Ray start-up "
                                                    "alone is ~10 s here); run --quick"]}
    from minigrad.distributed import isolation, netns

    tmp = tempfile.mkdtemp(prefix="mg-bench-dist-")
    out = os.path.join(tmp, "rows.json")
    cmd = netns.loopback_command([sys.executable, "-m", "benchmarks.distributed", "--inner",
                                  out, "--mode", "quick" if quick else "full", "--mark", tmp])
    if cmd is None:
        return {"name": name, "rows": [], "notes": ["no loopback-only network namespace "
                                                    "possible here (unshare): skipped"]}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT,
                              timeout=1800)
    finally:
        isolation.reap_namespace_of(tmp)
    if proc.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"distributed benchmark failed (rc {proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    with open(out) as f:
        rows = json.load(f)["rows"]
    base = next(r for r in rows if r["system"] == "single-process")["samples_per_s"]
    for r in rows:
        r["vs_single_process"] = r["samples_per_s"] / base
    notes.append("Ray ran in a new loopback-only network namespace bound to 127.0.0.1")
    return {"name": name, "rows": rows, "notes": notes}


def table_rows(res):
    out = []
    for r in res.get("rows", []):
        extra = ""
        if "pull_p50_ms" in r:
            extra = (f"; {r['rows_per_s']:,.0f} rows/s, {r['bytes_per_sample']:,.0f} B/sample, "
                     f"pull p50 {r['pull_p50_ms']:.1f} / p99 {r['pull_p99_ms']:.1f} ms")
        if "recovery_s" in r:
            extra += f"; recovery {r['recovery_s']:.2f} s, lost {r['lost_pushes']} pushes"
        if "recovery_error" in r:
            extra += f"; recovery not measured: {r['recovery_error']}"
        out.append({"bench": "distributed", "case": f"V={r['V']:.0e}", "system": r["system"],
                    "value": r["samples_per_s"], "lo": r["samples_per_s"],
                    "hi": r["samples_per_s"],
                    "unit": f"samples/s (x{r['vs_single_process']:.2f} vs 1 process{extra})"})
    return out


def _main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--inner", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="quick", help=argparse.SUPPRESS)
    p.add_argument("--mark", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inner:
        from minigrad.distributed import netns

        if args.mark:  # the parent reaps this namespace afterwards
            with open(os.path.join(args.mark, "netns"), "w") as f:
                f.write(str(netns.namespace_inode()))
        netns.bring_loopback_up()
        from benchmarks import distributed as this  # by reference: FMCost must pickle

        this.inner(args.inner, args.mode)
        return
    t0 = time.perf_counter()
    res = run(quick=args.quick)
    for r in table_rows(res):
        print(f"{r['system']:<42}{r['value']:>12,.0f}  {r['unit']}")
    for n in res["notes"]:
        print("note:", n)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    _main()
