"""``mg.distributed`` throughput: 1 and 2 workers x 1 and 2 shards, next to one process and
Hogwild on the same task, for the factorization machine and the masked-embedding
classifier (per-dimension mask), with rows/s, bytes moved per sample, pull latency and the
time a SIGKILLed shard takes to come back.

Ray only ever starts in a new loopback-only network namespace: ``run`` re-executes this
module there (``python -m benchmarks.distributed --inner OUT``) and reads its JSON. For
each model and table size every system trains the same model (Adagrad, lr 0.05, batch
512, float32, row width 16) on the same synthetic data; samples/s are over the training
phase after each worker's first chunk (actor start-up and JIT warm-up excluded, reported
as ``startup_s`` / ``warmup_s``). Sizes: V = 10^5 rows (``--quick``), 10^6 and 10^7 (full).
Float32 and width 16 so that a 10^7-row run fits this 23 GB box with room to spare: the
masked classifier's two tables are 2 x 640 MB, with Adagrad state 2.6 GB on the shards,
plus the caller's copy, the copy in transit through the object store and the exported
result (~6.5 GB at the peak of a run, one run at a time).
``python -m benchmarks.distributed [--quick]``.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import minigrad as mg

K, LR, BATCH, DTYPE = 16, 0.05, 512, np.float32
N_CLASSES = 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"quick": (100_000,), "full": (1_000_000, 10_000_000)}
# samples per run: enough chunks after the warm-up for a rate, small enough for --quick
SAMPLES = {"quick": {"fm": 12_000, "masked": 12_000},
           "full": {"fm": 120_000, "masked": 60_000}}
CHUNK = 4  # batches per chunk: the warm-up (each worker's first chunk) stays short
# (workers, shards). Every train call starts its own actors (5-10 s on 2 shared cores), so
# --quick, part of the suite's 3-minute budget, runs the two ends of the grid and the
# shard kill on the FM and 2 x 2 on the masked classifier; the full run does the whole
# grid and the kill for both.
CONFIGS = {"quick": {"fm": ((1, 1), (2, 2)), "masked": ((2, 2),)},
           "full": {m: ((1, 1), (1, 2), (2, 1), (2, 2)) for m in ("fm", "masked")}}
RECOVERY = {"quick": ("fm",), "full": ("fm", "masked")}


def _optimizer():
    return functools.partial(mg.optim.Adagrad, lr=LR)


class FMCost:
    """``make_cost`` for the FM (picklable: a module-level class holding the model)."""

    def __init__(self, n_features):
        self.model = mg.models.FactorizationMachine(n_features, K, seed=0, dtype=DTYPE)

    def __call__(self, params):
        X, y = mg.csr_matrix("X", dtype=DTYPE), mg.vector("y", dtype=DTYPE)
        return [X, y], self.model.cost(X, y)


class MaskedCost:
    """``make_cost`` for ``MaskedEmbeddingClassifier`` (per-dimension mask, the default)."""

    def __init__(self, vocab):
        self.model = mg.models.MaskedEmbeddingClassifier(vocab, K, N_CLASSES, seed=0,
                                                         dtype=DTYPE)

    def __call__(self, params):
        tok, mask = mg.lmatrix("tokens"), mg.matrix("mask", dtype=DTYPE)
        y = mg.lvector("labels")
        return [tok, mask, y], self.model.cost(tok, mask, y)


def task(model, V, n):
    """``(make_cost factory, dataset)``: ~V table rows, n samples (same seed every call)."""
    if model == "fm":
        r = mg.data.synthetic_ratings(V // 5, V - V // 5, n_ratings=n, seed=0, k=8,
                                      dtype=DTYPE)
        X = r.X.tocsr()
        return (lambda: FMCost(X.shape[1])), (X, r.y.astype(DTYPE))
    docs = mg.data.synthetic_documents(n, V, N_CLASSES, seed=0, length=(5, 40), dtype=DTYPE)
    return (lambda: MaskedCost(V)), (docs.tokens, docs.mask, docs.labels)


def _compiled_step(cost_obj, params):
    inputs, cost = cost_obj(params)
    return mg.function(inputs, cost, updates=_optimizer()(params).updates(cost))


def single_process(make, data, epochs):
    cost_obj = make()
    step = _compiled_step(cost_obj, cost_obj.model.params)
    from minigrad.distributed import plan

    batches = plan.batch_plan(data[0].shape[0], epochs, BATCH, 0)
    step(*[c[batches[0]] for c in data])  # compile outside the timing
    # the median over blocks of batches: one burst of load on the shared box then moves
    # one block, not the baseline every ratio is taken against
    rates, train_s = [], 0.0
    for block in np.array_split(np.arange(1, len(batches)), 5):
        t0 = time.perf_counter()
        for b in block:
            step(*[c[batches[b]] for c in data])
        dt = time.perf_counter() - t0
        train_s += dt
        rates.append(sum(len(batches[b]) for b in block) / max(dt, 1e-9))
    return {"system": "single-process", "samples_per_s": float(np.median(rates)),
            "samples_per_s_min": float(np.min(rates)), "samples_per_s_max": float(np.max(rates)),
            "train_s": train_s}


def hogwild(make, data, epochs, n_workers=2):
    cost_obj = make()
    res = mg.parallel.hogwild(functools.partial(_compiled_step, cost_obj),
                              cost_obj.model.params, data, n_workers, epochs, BATCH,
                              progress=False)
    return {"system": f"hogwild x{n_workers}", "samples_per_s": res.samples_per_s,
            "train_s": res.train_s, "startup_s": res.startup_s}


def distributed(make, data, epochs, n_workers, n_shards, **kw):
    cost_obj = make()
    res = mg.distributed.train(cost_obj, cost_obj.model.params, data, _optimizer(),
                               n_workers=n_workers, n_shards=n_shards, epochs=epochs,
                               batch_size=BATCH, staleness=1, progress=False,
                               chunk_batches=CHUNK, **kw)
    return {"system": f"distributed {n_workers}w x {n_shards}s",
            "n_workers": n_workers, "n_shards": n_shards,
            "samples_per_s": res.samples_per_s,
            "rows_per_s": res.samples_per_s * res.rows_pushed / max(res.samples, 1),
            "warmup_s": res.warmup_s,
            "bytes_per_sample": res.bytes_per_sample, "pull_p50_ms": 1e3 * res.pull_p50_s,
            "pull_p99_ms": 1e3 * res.pull_p99_s, "train_s": res.train_s,
            "startup_s": res.startup_s, "wall_s": res.wall_s, "final_loss": res.final_loss,
            "recoveries": res.recoveries}, res


def checkpoint_interval(V):
    """Pushes between shard checkpoints: a checkpoint writes the whole shard (rows and
    optimizer state, ~V/S x 136 B here), so bigger tables checkpoint less often."""
    return 10 if V <= 100_000 else 50 if V <= 1_000_000 else 100


def recovery(ray, make, data, epochs, every=10):
    """SIGKILL shard-0 mid-run. ``recovery_s``: from the kill until the new process has
    restored the checkpoint and serves calls (the actor's constructor returned);
    ``resumed_s``: until it applied its first push; the parts: failure detection and
    spawn, the new process's imports, the restore."""
    record = {}

    def kill():
        deadline = time.monotonic() + 120
        try:
            target = None
            while target is None and time.monotonic() < deadline:
                for e in ray.util.list_named_actors(all_namespaces=True):
                    if e["namespace"] == "minigrad" and e["name"].endswith("-shard-0"):
                        target = ray.get_actor(e["name"], namespace="minigrad")
                time.sleep(0.05)
            while ray.get(target.info.remote())["applied_batches"] < every * 3 // 2:
                time.sleep(0.01)
            pid = ray.get(target.info.remote())["pid"]
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            while time.monotonic() < deadline:
                try:
                    info = ray.get(target.info.remote(), timeout=30)
                except ray.exceptions.RayActorError:
                    time.sleep(0.01)
                    continue
                if info["pid"] != pid and info["first_push_at"] is not None:
                    record.update(recovery_parts(t_kill, info))
                    return
                time.sleep(0.01)
        except Exception as err:  # noqa: BLE001 - reported in the row
            record["recovery_error"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    row, res = distributed(make, data, 2 * epochs, 2, 2, checkpoint_every=every)
    thread.join(60)
    if "recovery_s" not in record:
        record.setdefault("recovery_error", "the shard was not killed and back before the end")
    written = [i["checkpoint_s"] for i in res.shard_info if "checkpoint_s" in i]
    row.update(system=f"distributed 2w x 2s, shard-0 SIGKILLed, ckpt every {every}",
               lost_pushes=res.lost_pushes,
               checkpoint_every=every,
               checkpoints=sum(i.get("checkpoints", 0) for i in res.shard_info),
               delta_checkpoints=sum(i.get("delta_checkpoints", 0) for i in res.shard_info),
               checkpoint_s=sum(written) if written else None, **record)
    return row


def recovery_parts(t_kill, info):
    """Seconds from ``t_kill`` to the restarted actor's milestones (see ``recovery``)."""
    out = {"recovery_s": info["started_at"] - t_kill,
           "constructor_s": info["started_at"] - info["init_at"]}
    if info.get("first_push_at") is not None:
        out["resumed_s"] = info["first_push_at"] - t_kill
    if info.get("born_at") is not None:
        out["detect_spawn_s"] = info["born_at"] - t_kill
        out["imports_s"] = info["init_at"] - info["born_at"]
    return out


def inner_recovery(out, sizes, models=("fm", "masked"), every=None):
    """Only what checkpoints change: 2w x 2s without checkpoints, then with them and a
    SIGKILLed shard (``--recovery 1e6,1e7``): the restore split and the cost of writing
    checkpoints on samples/s, without the rest of the grid; ``every`` (``--every 20``):
    the kill run again with that checkpoint interval."""
    from minigrad.distributed import ray_setup

    rows = []
    with ray_setup.local_ray(num_cpus=2) as ray:
        for V in sizes:
            for model in models:
                make, data = task(model, V, SAMPLES["full"][model])
                case = {"model": model, "V": V, "samples": int(data[0].shape[0])}
                found = [distributed(make, data, 2, 2, 2)[0],
                         recovery(ray, make, data, 1, checkpoint_interval(V))]
                if every:  # a shorter interval: delta checkpoints (few pages each)
                    found.append(recovery(ray, make, data, 1, every))
                for r in found:
                    r.update(case, vs_single_process=float("nan"))
                rows += found
                del make, data
                gc.collect()
                _write(out, rows)
    _write(out, rows)


def inner(out, mode, models=("fm", "masked")):
    from minigrad.distributed import ray_setup

    if mode.startswith("recovery:"):
        _, sizes, every = (mode + ":").split(":")[:3]
        return inner_recovery(out, [int(float(v)) for v in sizes.split(",")],
                              every=int(every) if every else None)
    epochs, rows = 1, []
    with ray_setup.local_ray(num_cpus=2) as ray:
        for V in SIZES[mode]:
            for model in models:
                make, data = task(model, V, SAMPLES[mode][model])
                case = {"model": model, "V": V, "samples": int(data[0].shape[0])}
                found = [single_process(make, data, epochs), hogwild(make, data, epochs)]
                for w, s in CONFIGS[mode][model]:
                    found.append(distributed(make, data, epochs, w, s)[0])
                if model in RECOVERY[mode]:
                    found.append(recovery(ray, make, data, epochs, checkpoint_interval(V)))
                base = found[0]["samples_per_s"]
                for r in found:
                    r.update(case, vs_single_process=r["samples_per_s"] / base)
                rows += found
                del make, data
                gc.collect()  # the 10^7-row copies of this case go before the next
                _write(out, rows)
    _write(out, rows)


def _write(out, rows):
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"rows": rows}, f, default=float)
    os.replace(tmp, out)


def run(quick=True, compare=(), out_dir=None, smoke=False, recovery_sizes=None,
        recovery_every=None):
    """Rows per system; Ray runs in a loopback-only namespace (a child process)."""
    name = "distributed"
    notes = [f"FM k={K} and MaskedEmbeddingClassifier dim {K} (per-dimension mask, "
             f"{N_CLASSES} classes), float32, Adagrad lr={LR}, batch {BATCH}, staleness 1, "
             "1 epoch; samples/s over the training phase (after each worker's first chunk); "
             "rows/s = gradient rows pushed per second; B/sample = ids and rows pulled and "
             "pushed; recovery = SIGKILL of shard-0 (after 1.5 checkpoint intervals) until its "
             "new process has restored the newest checkpoint, resumed = until its first push "
             "applied; checkpoint_every 10 / 50 / 100 pushes at V = 1e5 / 1e6 / 1e7"]
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"name": name, "rows": [], "notes": ["ray not installed: skipped "
                                                    "(pip install 'minigrad[distributed]')"]}
    if smoke:
        return {"name": name, "rows": [], "notes": ["smoke mode: skipped (a Ray start-up "
                                                    "alone is ~10 s here); run --quick"]}
    from minigrad.distributed import isolation, netns

    mode = (f"recovery:{recovery_sizes}:{recovery_every or ''}" if recovery_sizes
            else "quick" if quick else "full")
    tmp = tempfile.mkdtemp(prefix="mg-bench-dist-")
    try:
        out = os.path.join(tmp, "rows.json")
        cmd = netns.loopback_command([sys.executable, "-m", "benchmarks.distributed",
                                      "--inner", out, "--mode", mode, "--mark", tmp])
        if cmd is None:
            return {"name": name, "rows": [], "notes": ["no loopback-only network namespace "
                                                        "possible here (unshare): skipped"]}
        env = dict(os.environ,
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the rows file and the namespace mark
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
            extra += (f"; recovery {r['recovery_s']:.2f} s (resumed "
                      f"{r.get('resumed_s', float('nan')):.2f} s; detect+spawn "
                      f"{r.get('detect_spawn_s', float('nan')):.2f}, imports "
                      f"{r.get('imports_s', float('nan')):.2f}, restore "
                      f"{r['constructor_s']:.2f}), lost {r['lost_pushes']} pushes")
        if r.get("checkpoint_s") is not None:
            extra += (f"; {r['checkpoints']} checkpoints ({r.get('delta_checkpoints', 0)} "
                      f"deltas) took {r['checkpoint_s']:.1f} s")
        if "recovery_error" in r:
            extra += f"; recovery not measured: {r['recovery_error']}"
        ratio = r.get("vs_single_process", float("nan"))
        versus = "no single-process run" if ratio != ratio else f"x{ratio:.2f} vs 1 process"
        out.append({"bench": "distributed", "case": f"{r['model']} V={r['V']:.0e}",
                    "system": r["system"],
                    "value": r["samples_per_s"], "lo": r.get("samples_per_s_min",
                                                             r["samples_per_s"]),
                    "hi": r.get("samples_per_s_max", r["samples_per_s"]),
                    "unit": f"samples/s ({versus}{extra})"})
    return out


def _main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--recovery", default=None, metavar="V,V",
                   help="only 2w x 2s without / with checkpoints and a shard kill at these "
                   "table sizes (e.g. 1e6,1e7)")
    p.add_argument("--every", type=int, default=None,
                   help="with --recovery: the kill run again at this checkpoint interval")
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
    res = run(quick=args.quick, recovery_sizes=args.recovery, recovery_every=args.every)
    for r in table_rows(res):
        print(f"{r['case']:<16}{r['system']:<40}{r['value']:>10,.0f}  {r['unit']}")
    for n in res["notes"]:
        print("note:", n)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    _main()
