"""``mg.distributed.train``: the driver of an asynchronous sharded parameter server on Ray.

The driver checks everything it can before Ray starts (parameters, data, that
``make_cost`` and ``optimizer`` pickle and build), works out the split of the parameters
(``sharding.analyse``), starts the shard actors (rows and optimizer state), then the
worker actors, and hands out chunks of a fixed batch plan (``plan.py``) to whichever
worker is free. It only reads results: the caller's parameters are written once, after
every chunk is done and every shard has exported its rows; on any failure they keep the
values they had.

Failures: a shard (``max_restarts``, its calls retried by Ray) comes back from its newest
checkpoint; a worker that dies is restarted by Ray and its unfinished chunk is handed out
again (to it or another worker; the shards drop batches they already applied). An
exception in user code, a shard that cannot come back, or every worker gone ends the
run with ``DistributedError`` naming the actor, with its traceback. All actors are killed
before the call returns; a local Ray started here is shut down and every process left in
its network namespace is ended.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from minigrad.distributed import checkpoint_files, netns, plan, ray_setup, sharding
from minigrad.distributed.errors import DistributedError
from minigrad.distributed.shard import Shard
from minigrad.distributed.worker import Worker
from minigrad.parallel.arguments import check_dataset, check_params, positive_int


@dataclass
class DistributedResult:
    """What a run measured. ``samples_per_s``: total over workers, from the moment every
    worker has finished its first chunk (the warm-up, ``warmup_s``: Numba compiles the
    step's and the shards' kernels there) to the last chunk done; actor start-up (Ray
    workers, building the step) is ``startup_s``; ``wall_s`` is the whole call. Pull
    latencies (``pull_p50_s``/``pull_p99_s``) are taken after the warm-up too."""

    losses: list  # one list of per-batch losses per worker
    samples_per_s: float
    warmup_s: float
    wall_s: float
    recoveries: int  # actor restarts + chunks handed out again
    recovery_events: list
    pushes: int
    duplicates_dropped: int
    lost_pushes: int  # pushes applied then lost to a shard restart (all shards)
    bytes_pulled: int
    bytes_pushed: int
    bytes_per_sample: float
    rows_pushed: int
    pull_p50_s: float
    pull_p99_s: float
    startup_s: float
    train_s: float
    n_workers: int
    n_shards: int
    samples: int
    shard_info: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    # set when the call ran in a child namespace: its inode and how many processes were
    # still in it when the child exited (killed then; 0 when Ray shut down cleanly)
    isolation: dict | None = None

    @property
    def final_loss(self):
        """Mean loss of each worker's last 10% of batches, averaged over workers."""
        tails = [w[-max(1, len(w) // 10):] for w in self.losses if w]
        return float(np.mean([np.mean(t) for t in tails])) if tails else float("nan")


def train(make_cost, params, dataset, optimizer, n_workers=2, n_shards=2, epochs=1,
          batch_size=256, staleness=1, address=None, seed=0, progress=True,
          checkpoint_every=None, checkpoint_path=None, *, max_restarts=3, chunk_batches=8,
          num_cpus=None, shard_options=None, worker_options=None):
    """Train ``params`` on ``dataset`` with ``n_workers`` workers and ``n_shards`` shards.

    ``make_cost(params) -> (inputs, cost)``: the symbolic inputs (one per column of
    ``dataset``, in order) and scalar cost; picklable, no optimizer inside.
    ``optimizer(params) -> mg.optim.Optimizer``: a picklable factory, e.g.
    ``functools.partial(mg.optim.Adam, lr=1e-3)``; each shard builds one per parameter.
    ``staleness``: pushes in flight per worker and shard (0: synchronous).
    ``checkpoint_every``: pushes between atomic shard checkpoints (in
    ``checkpoint_path``, a directory; a temporary one when not given). Without it a
    restarted shard starts again from the initial rows.
    ``address=None`` starts a local Ray bound to loopback inside a loopback-only network
    namespace (this process's if it is one, else a child process in a new one); an
    already initialised Ray in this process is used as it is; any other ``address`` is
    passed to ``ray.init``. Returns a :class:`DistributedResult`; the parameters hold the
    trained values (untouched after a failure).
    ``shard_options`` / ``worker_options``: extra Ray actor options (``resources=...``,
    ``scheduling_strategy=...``) to place shards and workers on a real cluster.
    """
    t_call = time.perf_counter()
    params = check_params(params, float_only=True)
    columns = check_dataset(dataset)
    cfg = _Config(int(positive_int("n_workers", n_workers)),
                  int(positive_int("n_shards", n_shards)), int(positive_int("epochs", epochs)),
                  int(positive_int("batch_size", batch_size)),
                  _non_negative("staleness", staleness), int(seed), bool(progress),
                  _optional_positive("checkpoint_every", checkpoint_every), checkpoint_path,
                  int(_non_negative("max_restarts", max_restarts)),
                  int(positive_int("chunk_batches", chunk_batches)), num_cpus,
                  dict(shard_options or {}), dict(worker_options or {}))
    payload = _pickle_model(make_cost, params)
    factory, on_workers = _pickle_optimizer(optimizer)
    ray_setup.import_ray_or_raise()
    ray = sys.modules.get("ray")
    if address is None and not (ray is not None and ray.is_initialized()):
        if not netns.only_loopback():
            from minigrad.distributed import isolation

            return isolation.train_in_namespace(
                make_cost, params, dataset, optimizer, cfg.as_kwargs(), t_call)
        with ray_setup.local_ray(num_cpus=num_cpus) as ray:
            return _Run(ray, cfg, params, columns, payload, factory, on_workers, t_call).execute()
    if ray is not None and ray.is_initialized():
        return _Run(ray, cfg, params, columns, payload, factory, on_workers, t_call).execute()
    with ray_setup.connected_ray(address) as ray:
        return _Run(ray, cfg, params, columns, payload, factory, on_workers, t_call).execute()


@dataclass
class _Config:
    n_workers: int
    n_shards: int
    epochs: int
    batch_size: int
    staleness: int
    seed: int
    progress: bool
    checkpoint_every: int | None
    checkpoint_path: str | None
    max_restarts: int
    chunk_batches: int
    num_cpus: int | None
    shard_options: dict
    worker_options: dict

    def as_kwargs(self):
        return {"n_workers": self.n_workers, "n_shards": self.n_shards, "epochs": self.epochs,
                "batch_size": self.batch_size, "staleness": self.staleness,
                "seed": self.seed, "progress": self.progress,
                "checkpoint_every": self.checkpoint_every,
                "checkpoint_path": self.checkpoint_path, "max_restarts": self.max_restarts,
                "chunk_batches": self.chunk_batches, "num_cpus": self.num_cpus,
                "shard_options": self.shard_options, "worker_options": self.worker_options}


class _Run:
    """One training run on a connected Ray: actors, the chunk loop, the write-back."""

    POLL_S = 0.1

    def __init__(self, ray, cfg, params, columns, payload, factory, on_workers, t_call):
        self.ray, self.cfg, self.params, self.columns = ray, cfg, params, columns
        self.payload, self.factory, self.t_call = payload, factory, t_call
        # the leading ClipGradNorm / GradientNoise transforms: the workers apply them to
        # the whole gradient before the split by shard (``worker_transforms.py``)
        self.on_workers = on_workers
        self.run_id = uuid.uuid4().hex[:8]
        self.actors, self.notes, self.events, self.pinned = [], [], [], []
        self.tmp_dir = None

    def execute(self):
        try:
            return self._execute()
        finally:
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor, no_restart=True)
            if self.tmp_dir is not None:
                shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _execute(self):
        cfg, ray = self.cfg, self.ray
        n_rows = self.columns[0].shape[0]
        batches = plan.batch_plan(n_rows, cfg.epochs, cfg.batch_size, cfg.seed)
        layout, meta = self._layout(batches[0])
        values = [p.get_value(borrow=True) for p in self.params]
        ckpt_dir = self._checkpoint_dir()
        # shards
        actor = ray.remote(Shard)
        shards = []
        for s in range(cfg.n_shards):
            slices = [sharding.shard_slice(values[t], s, cfg.n_shards) for t in layout.tables]
            names = [self._name(t) for t in layout.tables]
            shards.append(self._start(actor, f"shard-{s}", slices, names, ckpt_dir,
                                      len(batches)))
        dense_shard = None
        if layout.dense:
            dense_shard = self._start(actor, "shard-dense", [values[t] for t in layout.dense],
                                      [self._name(t) for t in layout.dense], ckpt_dir,
                                      len(batches))
        # workers
        wactor = ray.remote(Worker)
        data_ref, plan_ref = ray.put(list(self.columns)), ray.put(batches)
        self.pinned += [data_ref, plan_ref]  # held until the end (worker restarts read them)
        workers = []
        for rank in range(cfg.n_workers):
            w = wactor.options(name=f"mg-{self.run_id}-worker-{rank}", namespace="minigrad",
                               **{"max_restarts": cfg.max_restarts, "max_task_retries": 0,
                                  "num_cpus": 0, **cfg.worker_options}).remote(
                rank, self.payload, layout.signature(), meta, data_ref, shards, dense_shard,
                cfg.staleness, plan_ref, self.on_workers)
            self.actors.append(w)
            workers.append(w)
        t_start = time.perf_counter()
        all_shards = shards + ([dense_shard] if dense_shard else [])
        shard_names = [f"shard-{s}" for s in range(cfg.n_shards)] + (
            ["shard-dense"] if dense_shard else [])
        self._ready(all_shards, shard_names)
        self._ready(workers, [f"worker-{r}" for r in range(cfg.n_workers)])
        t_go = time.perf_counter()
        loop = _ChunkLoop(ray, workers, plan.chunks(len(batches), cfg.chunk_batches), cfg,
                          n_rows * cfg.epochs, self.events)
        loop.run()
        t_end = time.perf_counter()
        # results: export first, write back only when everything is in hand
        exported = self._call_all(all_shards, shard_names, "export")
        info = self._call_all(all_shards, shard_names, "info")
        info_workers = self._info_or_none(workers)  # idle now: answers at once
        new_values = [None] * len(self.params)
        for t in layout.tables:
            new_values[t] = np.empty_like(values[t])
        for s, parts in enumerate(exported[:cfg.n_shards]):
            for t, part in zip(layout.tables, parts):
                new_values[t][s::cfg.n_shards] = part
        if dense_shard is not None:
            for t, part in zip(layout.dense, exported[-1]):
                new_values[t] = part
        restarts = self._restarts()
        _write_back(self.params, new_values)
        return self._result(loop, info, info_workers, restarts, len(batches), t_start, t_go,
                            t_end)

    # --- pieces ----------------------------------------------------------------------
    def _name(self, t):
        return self.params[t].name or f"param{t}"

    def _layout(self, first_batch):
        """The split, from a private copy of the model (the caller's is never touched),
        with every group's id remapping checked on the first batch."""
        make_cost, copies = pickle.loads(self.payload)
        for p, orig in zip(copies, self.params):
            sharding.put_stand_in(p, sharding.stand_in(*_shape_dtype(orig)))
        inputs, cost = make_cost(copies)
        inputs = list(inputs)
        if len(inputs) != len(self.columns):
            raise ValueError(f"make_cost returned {len(inputs)} inputs but dataset has "
                             f"{len(self.columns)} columns")
        layout = sharding.analyse(inputs, cost, copies)
        whole = _unfaithful_groups(layout, inputs, copies, self.params,
                                   [c[first_batch] for c in self.columns])
        if whole:
            layout = sharding.analyse(inputs, cost, copies, whole=set(whole))
            layout.notes.append(f"row ids of {[self._name(t) for t in whole]} are not "
                                "plain input values: those tables are pulled whole")
        self.notes += layout.notes
        meta = [_shape_dtype(p) for p in self.params]
        return layout, meta

    def _checkpoint_dir(self):
        if not self.cfg.checkpoint_every:
            return None
        if self.cfg.checkpoint_path is None:
            self.tmp_dir = tempfile.mkdtemp(prefix="mg-dist-ckpt-")
            return self.tmp_dir
        path = os.fspath(self.cfg.checkpoint_path)
        os.makedirs(path, exist_ok=True)
        return path

    def _start(self, actor, name, slices, names, ckpt_dir, n_batches):
        file = None if ckpt_dir is None else os.path.join(ckpt_dir, f"{name}.json")
        if file is not None:
            checkpoint_files.remove(file)  # a fresh run starts from the caller's parameters
        # the rows go through the object store under a reference this driver holds for the
        # whole run: a restarted shard re-reads its constructor arguments (Ray would free
        # an argument it put there itself once the first construction is done)
        rows_ref = self.ray.put(slices)
        self.pinned.append(rows_ref)
        handle = actor.options(name=f"mg-{self.run_id}-{name}", namespace="minigrad",
                               **{"max_restarts": self.cfg.max_restarts,
                                  "max_task_retries": -1, "num_cpus": 0,
                                  **self.cfg.shard_options}).remote(
            name, rows_ref, names, self.factory, n_batches, self.cfg.checkpoint_every, file)
        self.actors.append(handle)
        return handle

    def _ready(self, actors, names):
        """Wait until every actor is built (its constructor ran: step compiled, rows in)."""
        return self._call_all(actors, names, "info", "failed to start")

    def _call_all(self, actors, names, method, what=None):
        refs = [getattr(a, method).remote() for a in actors]
        try:
            return self.ray.get(refs)
        except (self.ray.exceptions.RayTaskError, self.ray.exceptions.RayActorError) as err:
            i = _first_failed(self.ray, refs)
            name = "an actor" if i is None else names[i]
            raise DistributedError(name, what or f"{method} failed", str(err)) from None

    def _info_or_none(self, actors):
        """``info()`` of each actor, ``None`` for one that no longer answers (given up)."""
        out = []
        for ref in [a.info.remote() for a in actors]:
            try:
                out.append(self.ray.get(ref, timeout=30))
            except Exception:  # noqa: BLE001 - a dead worker: nothing to report
                out.append(None)
        return out

    def _restarts(self):
        """Restarts per actor, from Ray's own actor table (GCS)."""
        counts = {}
        try:
            from ray._private import state

            table = state.actors()
        except Exception:  # noqa: BLE001 - an internal API: report none rather than fail
            return counts
        for entry in table.values():
            name = entry.get("Name") or ""
            if name.startswith(f"mg-{self.run_id}-") and entry.get("NumRestarts"):
                counts[name[len(f"mg-{self.run_id}-"):]] = int(entry["NumRestarts"])
        return counts

    def _result(self, loop, info, info_workers, restarts, n_batches, t_start, t_go, t_end):
        train_s = max(t_end - t_go, 1e-9)
        stats = loop.stats
        samples = sum(loop.samples)
        pulls = np.asarray(loop.pull_s) if loop.pull_s else np.full(1, np.nan)
        rate, warm_s = samples / train_s, 0.0
        if loop.t_warm is not None and samples > loop.samples_at_warm and t_end > loop.t_warm:
            rate = (samples - loop.samples_at_warm) / (t_end - loop.t_warm)
            warm_s = loop.t_warm - t_go
        else:
            self.notes.append("too few chunks to leave out the warm-up: samples_per_s "
                              "includes each worker's first chunk (JIT compiles)")
        events = list(self.events)
        for name, n in sorted(restarts.items()):
            # the newest process of the actor: when it was created (``born_at``), when its
            # constructor began and when it was ready (``time.time()`` seconds)
            now = next((i for i in [*info, *info_workers] if i and i["name"] == name), None)
            now = now or {}
            events.append({"actor": name, "kind": "restart", "count": n,
                           "restore_s": now.get("restore_s"), "ready_at": now.get("started_at"),
                           "born_at": now.get("born_at"), "init_at": now.get("init_at"),
                           "restored_from_checkpoint": bool(now.get("restored_from"))})
        lost = sum(n_batches - i["applied_batches"] for i in info)
        return DistributedResult(
            losses=loop.losses, samples_per_s=rate, warmup_s=warm_s,
            wall_s=time.perf_counter() - self.t_call,
            recoveries=sum(restarts.values()) + len(loop.reassigned), recovery_events=events,
            pushes=sum(i["pushes"] for i in info),
            duplicates_dropped=sum(i["duplicates"] for i in info), lost_pushes=int(lost),
            bytes_pulled=int(stats.get("bytes_pulled", 0)),
            bytes_pushed=int(stats.get("bytes_pushed", 0)),
            bytes_per_sample=(stats.get("bytes_pulled", 0) + stats.get("bytes_pushed", 0))
            / max(samples, 1),
            rows_pushed=int(stats.get("rows_pushed", 0)),
            pull_p50_s=float(np.percentile(pulls, 50)),
            pull_p99_s=float(np.percentile(pulls, 99)),
            startup_s=t_go - t_start, train_s=train_s, n_workers=self.cfg.n_workers,
            n_shards=self.cfg.n_shards, samples=samples, shard_info=info,
            notes=self.notes,
        )


class _ChunkLoop:
    """Hands chunks to free workers (two in flight each), collects their results, and
    hands a dead worker's chunk out again."""

    PER_WORKER = 2
    POLL_S = 0.1
    UNAVAILABLE_S = 60.0  # a worker restarting for longer is given up

    def __init__(self, ray, workers, chunks, cfg, total_samples, events):
        self.ray, self.workers, self.cfg, self.events = ray, workers, cfg, events
        self.todo = list(reversed(chunks))  # pop() takes the next one
        self.inflight = {}  # ref -> (worker index, chunk)
        self.failures = [0] * len(workers)
        self.alive = [True] * len(workers)
        self.losses = [[] for _ in workers]
        self.samples = [0] * len(workers)
        self.pull_s, self.stats = [], {}
        self.total = total_samples
        # warm-up: each worker's first chunk (Numba compiles the step's and the shards'
        # kernels there); throughput and latencies are taken after it
        self.first_done = [False] * len(workers)
        self.cooldown = [0.0] * len(workers)  # a restarting worker gets no chunk until then
        self.unavailable_since = [None] * len(workers)
        self.reassigned = set()
        self.t_warm = self.samples_at_warm = None

    def run(self):
        with _progress_bar(self.cfg.progress, self.total, len(self.workers)) as bar:
            self._fill()
            while self.inflight or self.todo:
                if not self.inflight:  # every live worker is restarting: wait for one
                    time.sleep(self.POLL_S)
                else:
                    ready, _ = self.ray.wait(list(self.inflight), num_returns=1,
                                             timeout=self.POLL_S)
                    for ref in ready:
                        bar.update(self._collect(ref))
                self._fill()

    def _fill(self):
        load = [0] * len(self.workers)
        for w, _ in self.inflight.values():
            load[w] += 1
        now = time.monotonic()
        for w in sorted(range(len(self.workers)), key=lambda i: load[i]):
            if now < self.cooldown[w]:
                continue
            while self.todo and self.alive[w] and load[w] < self.PER_WORKER:
                chunk = self.todo.pop()
                self.inflight[self.workers[w].run.remote(*chunk)] = (w, chunk)
                load[w] += 1

    def _collect(self, ref):
        w, chunk = self.inflight.pop(ref)
        ray = self.ray
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, DistributedError):
                raise DistributedError(cause.actor, f"{cause.reason} (seen by worker-{w})",
                                       cause.remote_traceback) from None
            raise DistributedError(f"worker-{w}", "raised an exception", str(err)) from None
        except ray.exceptions.RayActorError as err:
            self.todo.append(chunk)  # handed out again first; shards drop repeats
            if chunk not in self.reassigned:
                self.reassigned.add(chunk)
                self.events.append({"actor": f"worker-{w}", "kind": "chunk reassigned",
                                    "chunk": list(chunk), "at": time.time()})
            now = time.monotonic()
            if isinstance(err, ray.exceptions.ActorUnavailableError):  # Ray is restarting it
                self.unavailable_since[w] = self.unavailable_since[w] or now
                self.cooldown[w] = now + 0.2
                gone = now - self.unavailable_since[w] > self.UNAVAILABLE_S
            else:
                self.failures[w] += 1
                gone = self.failures[w] > self.cfg.max_restarts
            if gone:
                self.alive[w] = False
                if not any(self.alive):
                    raise DistributedError(f"worker-{w}", "died and every worker is gone "
                                           f"({type(err).__name__})", str(err)) from None
            return 0
        self.unavailable_since[w] = None
        self.losses[w] += out["losses"]
        self.samples[w] += out["samples"]
        if self.t_warm is not None:
            self.pull_s += out["pull_s"]
        self.first_done[w] = True
        if self.t_warm is None and all(self.first_done):
            self.t_warm, self.samples_at_warm = time.perf_counter(), sum(self.samples)
        for k, v in out["stats"].items():
            self.stats[k] = self.stats.get(k, 0) + v
        return out["samples"]


# ---------------------------------------------------------------------------------------
# Checks and helpers


def _unfaithful_groups(layout, inputs, copies, params, batch):
    """Tables of groups whose id inputs do not remap faithfully on ``batch``."""
    import minigrad as mg

    if not layout.id_vars:
        return []
    fn = mg.function([inputs[i] for i in layout.id_inputs], layout.id_vars)

    def ids_of(args, n_rows):
        for g, n in zip(layout.groups, n_rows):
            for t in g.tables:
                shape, dtype = _shape_dtype(params[t])
                sharding.put_stand_in(copies[t], sharding.stand_in((n,) + shape[1:], dtype))
        out = fn(*[args[i] for i in layout.id_inputs])
        return out if isinstance(out, (list, tuple)) else [out]

    global_ids = ids_of(batch, [g.n_rows for g in layout.groups])
    uniques = [sharding.group_unique_ids(g, global_ids) for g in layout.groups]
    local_batch = list(batch)
    for g, u in zip(layout.groups, uniques):
        for i in g.inputs:
            local_batch[i] = sharding.remap_input(batch[i], u)
    local_ids = ids_of(local_batch, [max(u.shape[0], 1) for u in uniques])
    bad = []
    for g, u in zip(layout.groups, uniques):
        for k in g.id_outputs:
            want = np.asarray(global_ids[k]).reshape(-1)
            got = np.asarray(local_ids[k]).reshape(-1)
            if want.shape != got.shape or (u.shape[0] and not np.array_equal(u[got], want)):
                bad += g.tables
                break
    return sorted(set(bad))


def _shape_dtype(p):
    v = p.get_value(borrow=True)
    return tuple(v.shape), v.dtype


def _write_back(params, values):
    for p, v in zip(params, values):
        current = p.get_value(borrow=True)
        if current.shape == np.shape(v) and current.flags.writeable:
            np.copyto(current, v)
        else:
            p.set_value(np.array(v), borrow=True)


def _first_failed(ray, refs):
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    ready = set(ready)
    for i, ref in enumerate(refs):
        if ref in ready:
            try:
                ray.get(ref)
            except Exception:  # noqa: BLE001 - only which one
                return i
    return None


def _non_negative(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    return int(v)


def _optional_positive(name, v):
    return None if v is None else int(positive_int(name, v))


def _pickle_model(make_cost, params):
    """Pickle ``(make_cost, params)`` together with empty placeholder values (the rows
    travel separately, cut per shard), so a model reachable from ``make_cost`` sees the
    same shared variables in the worker."""
    saved = [(p._value, p._flush_hooks) for p in params]
    try:
        for p, (value, _) in zip(params, saved):
            p._value = np.empty((0,) * np.ndim(value), dtype=value.dtype)
            p._flush_hooks = []
        return pickle.dumps((make_cost, params), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise TypeError(f"make_cost must be picklable (a module-level function, a "
                        f"functools.partial, a method of a picklable object): {err}") from err
    finally:
        for p, (value, hooks) in zip(params, saved):
            p._value, p._flush_hooks = value, hooks


def _pickle_optimizer(optimizer):
    """Check that ``optimizer`` pickles and builds on a one-row stand-in; return its bytes
    and the ``ClipGradNorm`` / ``GradientNoise`` transforms it starts with (the workers
    apply them to the whole gradient; see ``worker_transforms.py``)."""
    import minigrad as mg
    from minigrad.distributed import worker_transforms

    if not callable(optimizer):
        raise TypeError(f"optimizer must be a factory optimizer(params) -> Optimizer, "
                        f"got {optimizer!r}")
    try:
        blob = pickle.dumps(optimizer, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise TypeError(f"optimizer must be a picklable factory such as "
                        f"functools.partial(mg.optim.Adam, lr=1e-3): {err}") from err
    opt = optimizer([mg.shared(np.zeros((1, 1)), name="probe")])
    if not hasattr(opt, "state_dict"):
        raise TypeError(f"optimizer(params) must return an mg.optim optimizer, got {opt!r}")
    return blob, worker_transforms.leading(opt)


@contextlib.contextmanager
def _progress_bar(progress, total, n_workers):
    """One tqdm bar on a terminal, nothing otherwise."""
    if not (progress and sys.stderr.isatty()):
        yield _NoBar()
        return
    from tqdm import tqdm

    bar = tqdm(total=total, unit="sample", desc=f"distributed x{n_workers}", leave=False)
    try:
        yield bar
    finally:
        bar.close()


class _NoBar:
    def update(self, n):
        pass
