"""The worker actor: pull the rows of a batch, run the compiled step on them, push.

A worker builds its graph once (``make_cost(params)`` on its own unpickled copy of the
parameters, whose values are only ever the small local tables), compiles two functions:
the ids function (the row ids each batch touches) and the step (cost and gradients, no
updates), and then for each batch of a chunk:

1. computes the unique row ids of each table group and asks every shard for the rows it
   owns (all shards at once); the dense shard sends its parameters whole;
2. writes the rows into the local tables (``n_unique`` rows) and rewrites the batch's id
   inputs into local positions, runs the step, and maps the gradients' rows back to
   global ids;
3. splits them by owner shard and pushes ``(ids, rows)`` to each (an empty push too: every
   push is one optimizer step, as in one process), keeping at most ``staleness`` pushes
   in flight per shard (``0``: wait for each one).

Failures inside a shard call come back as ``DistributedError`` naming the shard.
"""
from __future__ import annotations

import collections
import pickle
import time

import numpy as np

from minigrad.distributed import sharding, worker_transforms
from minigrad.distributed.errors import DistributedError
from minigrad.distributed.proc_times import process_started_at


class Worker:
    """``ray.remote`` wraps this class (see ``train.py``)."""

    def __init__(self, rank, payload, signature, meta, dataset, shards, dense_shard,
                 staleness, plan, transforms=()):
        import minigrad as mg

        self.init_at, self.born_at = time.time(), process_started_at()
        self.rank, self.name = rank, f"worker-{rank}"
        self.shards, self.dense_shard = list(shards), dense_shard
        self.shard_names = [f"shard-{s}" for s in range(len(self.shards))]
        self.staleness, self.plan, self.columns = int(staleness), plan, list(dataset)
        # ClipGradNorm / GradientNoise of the factory: on the whole gradient, before the split
        self.transforms = list(transforms)
        make_cost, self.params = pickle.loads(payload)
        for p, (shape, dtype) in zip(self.params, meta):  # the row counts, not the rows
            sharding.put_stand_in(p, sharding.stand_in(shape, dtype))
        inputs, cost = make_cost(self.params)
        self.input_names = [v.name or f"input {i}" for i, v in enumerate(inputs)]
        self.layout = sharding.analyse(list(inputs), cost, self.params)
        if self.layout.signature() != signature:
            raise RuntimeError(f"{self.name}: make_cost built a different graph here than in "
                               f"the driver: {self.layout.signature()} != {signature}")
        self.meta = meta  # per param: (shape, dtype)
        self.step = mg.function(list(inputs), [cost, *self.layout.grads])
        self.ids_fn = None
        if self.layout.id_vars:
            self.ids_fn = mg.function([inputs[i] for i in self.layout.id_inputs],
                                      self.layout.id_vars)
        self.stand_ins = {t: sharding.stand_in(*meta[t]) for t in self.layout.tables}
        self.stats = collections.Counter()
        self.pull_s = []
        self.inflight = [collections.deque() for _ in range(len(self.shards) + 1)]
        self.started_at = time.time()

    def info(self):
        import os

        return {"name": self.name, "pid": os.getpid(), "started_at": self.started_at,
                "init_at": self.init_at, "born_at": self.born_at}

    # --- one chunk of batches ------------------------------------------------------
    def run(self, first, stop):
        """Train on batches ``first..stop-1`` of the plan; returns losses and counters."""
        t0 = time.perf_counter()
        losses, samples = [], 0
        self.stats.clear()
        self.pull_s = []
        for b in range(first, stop):
            rows = self.plan[b]
            batch = [c[rows] for c in self.columns]
            losses.append(self._one_batch(b, batch))
            samples += int(rows.shape[0])
        self._drain_all()
        return {"losses": losses, "samples": samples, "busy_s": time.perf_counter() - t0,
                "stats": dict(self.stats), "pull_s": self.pull_s}

    def _one_batch(self, b, batch):
        params, layout, n = self.params, self.layout, len(self.shards)
        uniques = self._unique_ids(batch)
        # 1. pull: every shard at once
        t0 = time.perf_counter()
        positions = [sharding.split_by_shard(u, n) for u in uniques]
        requests = []
        for s, shard in enumerate(self.shards):
            ids = []
            for gi, g in enumerate(layout.groups):
                local = sharding.local_rows(uniques[gi][positions[gi][s]], n)
                ids += [local] * len(g.tables)
            self.stats["bytes_pulled"] += sum(i.nbytes for i in ids)
            requests.append(shard.pull.remote(ids))
        if layout.dense:
            requests.append(self.dense_shard.pull.remote([None] * len(layout.dense)))
        replies = self._get(requests, list(range(len(requests))))
        self.pull_s.append(time.perf_counter() - t0)
        # 2. local tables, local ids, the step
        for gi, g in enumerate(layout.groups):
            for k, t in enumerate(g.tables):
                shape, dtype = self.meta[t]
                parts = [replies[s][self._slot(gi, k)] for s in range(n)]
                local = sharding.assemble(parts, uniques[gi].shape[0], shape[1:], dtype,
                                          positions[gi])
                self.stats["bytes_pulled"] += local.nbytes
                params[t].set_value(local, borrow=True)
        if layout.dense:
            for t, value in zip(layout.dense, replies[-1]):
                params[t].set_value(value, borrow=True)
        inputs = list(batch)
        for gi, g in enumerate(layout.groups):
            for i in g.inputs:
                inputs[i] = sharding.remap_input(batch[i], uniques[gi])
        cost, *grads = self.step(*inputs)
        if self.transforms:  # batch b is the run's b-th update: the noise's step
            grads = worker_transforms.apply(grads, self.transforms, b)
        # 3. push
        self._push(b, uniques, grads)
        return float(cost)

    def _slot(self, gi, k):
        return sum(len(g.tables) for g in self.layout.groups[:gi]) + k

    def _unique_ids(self, batch):
        if self.ids_fn is None:
            return []
        for t, fake in self.stand_ins.items():
            sharding.put_stand_in(self.params[t], fake)
        values = self.ids_fn(*[batch[i] for i in self.layout.id_inputs])
        values = values if isinstance(values, (list, tuple)) else [values]
        uniques = [sharding.group_unique_ids(g, values) for g in self.layout.groups]
        for g, u in zip(self.layout.groups, uniques):
            if u.shape[0] and (u[0] < 0 or u[-1] >= g.n_rows):
                bad = int(u[0]) if u[0] < 0 else int(u[-1])
                names = [self.input_names[i] for i in g.inputs]
                tables = [self.params[t].name or f"param{t}" for t in g.tables]
                raise IndexError(f"{self.name}: {'/'.join(names)}: row id {bad} is out of "
                                 f"range for {', '.join(tables)} with {g.n_rows} rows "
                                 f"(valid: 0..{g.n_rows - 1})")
        return uniques

    def _push(self, b, uniques, grads):
        from minigrad.types import RowSparse

        layout, n = self.layout, len(self.shards)
        per_shard = [[] for _ in range(n)]
        for gi, g in enumerate(layout.groups):
            for t in g.tables:
                # one row per id on the wire (a gather repeats ids): the shard's apply
                # would coalesce them the same way, in the same order
                rs = grads[t].coalesce()
                global_ids = uniques[gi][rs.indices]
                for s, pos in enumerate(sharding.split_by_shard(global_ids, n)):
                    ids = sharding.local_rows(global_ids[pos], n)
                    rows = np.ascontiguousarray(rs.values[pos])
                    per_shard[s].append((ids, rows))
                    self.stats["bytes_pushed"] += ids.nbytes + rows.nbytes
                    self.stats["rows_pushed"] += int(ids.shape[0])
        targets = list(enumerate(self.shards))
        for s, shard in targets:
            self._send(s, shard.push.remote(self.rank, b, per_shard[s]))
        if layout.dense:
            dense = []
            for t in layout.dense:
                g = grads[t]
                if isinstance(g, RowSparse):  # a table held whole: global ids already
                    dense.append((g.indices, np.ascontiguousarray(g.values)))
                    self.stats["bytes_pushed"] += g.indices.nbytes + g.values.nbytes
                else:
                    dense.append(np.asarray(g))
                    self.stats["bytes_pushed"] += np.asarray(g).nbytes
            self._send(n, self.dense_shard.push.remote(self.rank, b, dense))
        self.stats["pushes"] += len(targets) + bool(layout.dense)

    def _send(self, s, ref):
        """Keep at most ``staleness`` pushes in flight to shard ``s``."""
        q = self.inflight[s]
        q.append(ref)
        while len(q) > self.staleness:
            self._settle(s, q.popleft())

    def _settle(self, s, ref):
        applied = self._get([ref], [s])[0]
        if not applied:
            self.stats["duplicates"] += 1

    def _drain_all(self):
        for s, q in enumerate(self.inflight):
            while q:
                self._settle(s, q.popleft())

    def _get(self, refs, shard_ids):
        """``ray.get`` that turns a shard's failure into ``DistributedError`` naming it."""
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            s = _failed(refs, shard_ids)
            raise DistributedError(self._shard_name(s), "raised an exception",
                                   str(err)) from None
        except ray.exceptions.RayActorError as err:
            s = _failed(refs, shard_ids)
            raise DistributedError(self._shard_name(s), f"died and could not be restarted "
                                   f"({type(err).__name__})", str(err)) from None

    def _shard_name(self, s):
        if s is None:
            return "a shard"
        return "shard-dense" if s >= len(self.shards) else self.shard_names[s]


def _failed(refs, shard_ids):
    """Which of ``refs`` failed (the first that raises when fetched alone)."""
    import ray

    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    ready = set(ready)
    for ref, s in zip(refs, shard_ids):
        if ref not in ready:
            continue
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - we only want to know which one
            return s
    return None
