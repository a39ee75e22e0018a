"""The parameter-server shard: one Ray actor holding some rows and their optimizer state.

A Ray actor runs its calls one at a time, so every row update is atomic without locks.
Each push is one optimizer step (``opt.apply``, the same fused kernels as the compiled
single-process update) of each parameter the shard holds, empty ones included, so that
every parameter's step counter moves exactly as in one process.

Pushes are tagged ``(worker, batch)``; the shard remembers which batches it has applied
(a bit per batch of the run), so a push that is retried, or a batch redone by another
worker after a failure, is never applied twice. Every ``checkpoint_every`` applied pushes
it writes its rows, optimizer state and that bitmap atomically (one ``.npy`` file per
array, then a checked manifest renamed into place: ``checkpoint_files.py``); a restarted
shard (Ray's ``max_restarts``) resumes from the newest checkpoint, its tables mapped
copy-on-write rather than read into fresh memory (fast for a large shard): it loses at
most the pushes applied since, and it knows exactly which.
"""
from __future__ import annotations

import os
import pickle
import time

import numpy as np

from minigrad.distributed import checkpoint_files, worker_transforms
from minigrad.distributed.proc_times import process_started_at
from minigrad.distributed.rows import read_rows
from minigrad.optim.serialization import CheckpointError

FORMAT = "minigrad-distributed-shard"
# A checkpoint is a delta (the rows pushed since the last one) on top of a full base while
# the rows of all deltas since that base lie on at most this fraction of the tables'
# memory pages, and there are at most MAX_DELTAS of them; then a new base is written. A
# restore maps the base copy-on-write and writes the deltas' rows over it: each page a
# delta row lands on is copied (the cost of a restore, beyond the checksum pass), so
# the bound is on pages, not rows (64 rows of 16 float32 share a 4 KiB page: 2% of the
# rows at random touch 70% of the pages). Copying half of a 1.3 GB shard's pages took
# ~0.75 s here (loaded), against 6 s for writing a new base. A restored shard writes a
# new base next.
DELTA_PAGES = 0.5
MAX_DELTAS = 64


class Shard:
    """State and calls of one shard; ``ray.remote`` wraps it (see ``train.py``).

    ``slices``: the initial arrays (already cut to this shard's rows), ``names`` their
    labels, ``optimizer``: the pickled factory, ``n_batches``: batches in the whole run,
    ``checkpoint_every`` (pushes, or ``None``) and ``checkpoint_file`` (the manifest,
    ``<dir>/<name>.json``; the data files lie next to it: ``checkpoint_files.py``).
    """

    def __init__(self, name, slices, names, optimizer, n_batches, checkpoint_every=None,
                 checkpoint_file=None):
        import minigrad as mg

        t0 = time.time()
        self.name, self.names = name, list(names)
        self.scalar = [np.ndim(v) == 0 for v in slices]  # kept as (1,): apply needs an axis
        self.every, self.file = checkpoint_every, checkpoint_file
        self.generation = 0
        factory = pickle.loads(optimizer)
        self.applied = np.zeros(int(n_batches), dtype=bool)
        self.counters = {"pushes": 0, "duplicates": 0, "rows_pushed": 0, "rows_pulled": 0,
                         "checkpoints": 0, "checkpoint_s": 0.0}
        self.since_checkpoint = 0
        self.restored_from = None
        # what changed since the last checkpoint: the local row ids each push wrote per
        # parameter; ``dirty_all`` after a dense push (every row stepped)
        self.dirty, self.dirty_all = [[] for _ in slices], False
        self.deltas = 0  # on top of the newest base
        self.pages = [None] * len(slices)  # per table: pages the deltas since it wrote
        if self.file and checkpoint_files.exists(self.file):
            self._restore(slices, factory)
        else:
            self.params = [mg.shared(np.reshape(v, (1,)) if s else v, name=f"{name}/{n}")
                           for v, s, n in zip(slices, self.scalar, self.names)]
            # one optimizer per parameter: each push is one step of each, so every step
            # counter matches single-process training whatever the optimizer counts
            # ... without the leading ClipGradNorm / GradientNoise: here they would see only
            # this shard's slice; the workers apply them (``worker_transforms.py``)
            self.opts = [worker_transforms.without_leading(factory([p]))
                         for p in self.params]
        self.started_at, self.restore_s = time.time(), time.time() - t0
        self.init_at, self.born_at = t0, process_started_at()
        self.first_push_at = None  # the first push this process applied (recovery timing)

    # --- the calls workers make ------------------------------------------------------
    def pull(self, ids):
        """Rows of each parameter: ``ids[k]`` local row ids, or ``None`` for all of it."""
        out = []
        for opt, p, idx in zip(self.opts, self.params, ids):
            if idx is None:
                out.append(p.get_value(borrow=True))  # whole: every pending row caught up
            else:
                out.append(read_rows(opt, p, idx))  # exact mode: catch up these rows only
                self.counters["rows_pulled"] += int(idx.shape[0])
        return out

    def push(self, worker, batch, grads):
        """Apply one step. ``grads[k]``: ``(ids, rows)`` for a row-sparse gradient of
        parameter ``k`` (``ids`` local), or an ndarray. Returns False for a duplicate."""
        from minigrad.types import RowSparse

        if self.applied[batch]:
            self.counters["duplicates"] += 1
            return False
        prepared = []
        for k, (p, g) in enumerate(zip(self.params, grads)):
            if isinstance(g, tuple):
                ids, rows = g
                prepared.append(RowSparse(np.asarray(ids, np.int64), rows, p.value.shape))
            else:
                prepared.append(np.reshape(g, (1,)) if self.scalar[k] else g)
        self._check(prepared, worker, batch)
        for k, g in enumerate(prepared):
            if isinstance(g, RowSparse):
                self.dirty[k].append(g.indices)
            else:
                self.dirty_all = True
        for opt, p, g in zip(self.opts, self.params, prepared):
            opt.apply(p, g)
            if isinstance(g, RowSparse):
                self.counters["rows_pushed"] += int(g.indices.shape[0])
        self.applied[batch] = True
        if self.first_push_at is None:
            self.first_push_at = time.time()
        self.counters["pushes"] += 1
        self.since_checkpoint += 1
        if self.every and self.since_checkpoint >= self.every:
            self.checkpoint()
        return True

    def _check(self, grads, worker, batch):
        """Every gradient is checked before the first one is applied (a push is atomic)."""
        from minigrad.types import RowSparse

        if len(grads) != len(self.params):
            raise ValueError(f"{self.name}: push from worker {worker} (batch {batch}) has "
                             f"{len(grads)} gradients for {len(self.params)} parameters")
        for p, g, label in zip(self.params, grads, self.names):
            n_rows = p.value.shape[0]
            if isinstance(g, RowSparse):
                idx = g.indices
                bad = idx.shape[0] and (int(idx.min()) < 0 or int(idx.max()) >= n_rows)
                if bad or g.values.shape[1:] != p.value.shape[1:]:
                    raise ValueError(f"{self.name}: bad row-sparse gradient for {label!r} "
                                     f"from worker {worker} (batch {batch})")
            elif np.shape(g) != p.value.shape:
                raise ValueError(f"{self.name}: gradient of shape {np.shape(g)} for {label!r} "
                                 f"of shape {p.value.shape} from worker {worker}")

    # --- checkpoints -----------------------------------------------------------------
    def checkpoint(self):
        """Write rows, optimizer state and the applied-batch bitmap (``checkpoint_files``:
        one ``.npy`` per array, then the manifest atomically): only the rows pushed since
        the last checkpoint when that is enough (:meth:`_delta`), else everything."""
        from minigrad.optim.base import STATE_FORMAT_VERSION

        if not self.file:
            return None
        t0 = time.perf_counter()
        opt_meta = []
        for opt in self.opts:
            opt.flush()  # exact mode: every row caught up to the current step
            opt_meta.append({"optimizer": type(opt).__name__, "version": STATE_FORMAT_VERSION,
                             "t": int(opt.t.value), "steps": [int(s.value) for s in opt.steps]})
        counters = dict(self.counters, checkpoints=self.counters["checkpoints"] + 1)
        meta = {"format": FORMAT, "name": self.name, "opts": opt_meta, "counters": counters}
        generation = self.generation + 1
        delta = self._delta()
        if delta is not None:
            rows, self.pages = delta
            checkpoint_files.append(self.file, rows, {"applied": self.applied}, meta,
                                    generation)
            self.deltas += 1
            counters["delta_checkpoints"] = counters.get("delta_checkpoints", 0) + 1
        else:
            checkpoint_files.write(self.file, self._tables(), meta, generation)
            self.deltas, self.pages = 0, [None] * len(self.params)
        self.generation = generation
        self.dirty, self.dirty_all = [[] for _ in self.params], False
        counters["checkpoint_s"] = counters.get("checkpoint_s", 0.0) + time.perf_counter() - t0
        self.counters = counters
        self.since_checkpoint = 0
        return self.file

    def _tables(self):
        """Every array of a full checkpoint, borrowed: ``state_dict()`` would first copy
        every table (as slow as writing it, for a table of 10^7 rows)."""
        arrays = {}
        for i, (opt, p) in enumerate(zip(self.opts, self.params)):
            arrays[f"param/{i}"] = p.get_value(borrow=True)
            for j, states in enumerate(opt.state):
                arrays.update({f"opt/{i}/{j}.{k}": v.value for k, v in states.items()})
        arrays["applied"] = self.applied
        return arrays

    def _delta(self):
        """``({array: (ids, rows)}, pages)``: the rows pushed since the last checkpoint, of
        every table and its state tables, and the pages the deltas since the base have
        touched (per table); or ``None`` when a full checkpoint is due.

        Only pushes change rows when no parameter keeps exact-mode bookkeeping (a flush
        or an exact pull's catch-up moves rows no push named) and no push was dense.
        """
        if self.generation == 0 or self.dirty_all or self.deltas >= MAX_DELTAS:
            return None
        if any(ps.last is not None for opt in self.opts for ps in opt.param_states):
            return None
        rows, pages, touched, total = {}, [], 0, 0
        for i, (opt, p, dirty) in enumerate(zip(self.opts, self.params, self.dirty)):
            table = p.get_value(borrow=True)
            ids = np.unique(np.concatenate(dirty)) if dirty else np.zeros(0, np.int64)
            rows[f"param/{i}"] = (ids, table[ids])
            for j, states in enumerate(opt.state):
                for k, v in states.items():
                    if v.value.ndim == 0 or v.value.shape[0] != table.shape[0]:
                        return None  # a state not kept per row: only a full one holds it
                    rows[f"opt/{i}/{j}.{k}"] = (ids, v.value[ids])
            mask = _touched_pages(self.pages[i], table, ids)
            pages.append(mask)
            touched, total = touched + int(mask.sum()), total + mask.shape[0]
        if touched > DELTA_PAGES * total:
            return None
        return rows, pages

    def _restore(self, slices, factory):
        """Parameters, optimizer state, applied-batch bitmap and counters from the newest
        checkpoint, its rows and state tables mapped copy-on-write (not copied): what
        makes a restart of a large shard fast. Every check passes before it is used."""
        import minigrad as mg

        saved = checkpoint_files.read(self.file)
        arrays, meta = saved.arrays, saved.meta
        if meta.get("format") != FORMAT or meta.get("name") != self.name:
            raise CheckpointError(f"{self.file} is not a checkpoint of {self.name}")
        for i, (v, label) in enumerate(zip(slices, self.names)):
            want, dtype = (1,) if np.ndim(v) == 0 else np.shape(v), np.asarray(v).dtype
            got = arrays.get(f"param/{i}")
            if got is None or got.shape != want or got.dtype != dtype:
                raise CheckpointError(
                    f"{self.file}: rows of {label!r} do not match {self.name} (want {want} "
                    f"{dtype}, got {None if got is None else (got.shape, got.dtype)})")
        if "applied" not in arrays or arrays["applied"].shape != self.applied.shape:
            raise CheckpointError(f"{self.file}: no applied-batch bitmap of "
                                  f"{self.applied.shape[0]} batches")
        self.params, self.opts, dicts = [], [], []
        for i, label in enumerate(self.names):
            rows = arrays[f"param/{i}"]
            p = mg.shared(np.zeros((0,) + rows.shape[1:], rows.dtype),
                          name=f"{self.name}/{label}")
            # built over zero rows: a fresh optimizer would allocate and fill every state
            # table only for the checkpoint's to replace them
            opt = worker_transforms.without_leading(factory([p]))
            state = {}
            for j, states in enumerate(opt.state):
                for k, var in states.items():
                    key = f"opt/{i}/{j}.{k}"
                    empty = var.value
                    want = ((rows.shape[0],) + empty.shape[1:] if empty.ndim and
                            empty.shape[0] == 0 else empty.shape)
                    got = arrays.get(key)
                    if got is None or got.shape != want or got.dtype != empty.dtype:
                        raise CheckpointError(
                            f"{self.file}: optimizer state {key} of {label!r} is "
                            f"{None if got is None else (got.shape, str(got.dtype))}, "
                            f"expected {(want, str(empty.dtype))}")
                    state[f"{j}.{k}"] = got
            om = meta["opts"][i]
            sd = {k: v for k, v in om.items() if v is not None}
            sd["state"] = state
            self.params.append(p)
            self.opts.append(opt)
            dicts.append((rows, sd))
        for p, opt, (rows, sd) in zip(self.params, self.opts, dicts):
            p.set_value(rows, borrow=True)  # writeable, C order: kept, not copied
            for j, states in enumerate(opt.state):
                for k, var in states.items():
                    var.set_value(sd["state"][f"{j}.{k}"], borrow=True)
            t, steps = opt.check_state_dict(sd)  # the shapes now those of the tables
            opt.t.set_value(np.int64(t))
            for ps, step in zip(opt.param_states, steps):
                ps.restart(step)
        self.applied = arrays["applied"].astype(bool)
        self.counters = dict(meta["counters"])
        self.generation = saved.generation
        # the restore copied every page its deltas wrote: a new base comes next
        self.deltas = MAX_DELTAS if saved.deltas else 0
        self.restored_from = self.file

    # --- the calls the driver makes --------------------------------------------------
    def export(self):
        """The current values (exact-mode rows caught up), in the caller's shapes."""
        if self.file:
            self.checkpoint()
        return [np.reshape(p.get_value(), ()) if s else p.get_value()
                for p, s in zip(self.params, self.scalar)]

    def info(self):
        import ray

        return {"name": self.name, "pid": os.getpid(), "started_at": self.started_at,
                "init_at": self.init_at, "born_at": self.born_at,
                "first_push_at": self.first_push_at,
                "node_id": ray.get_runtime_context().get_node_id(),
                "restore_s": self.restore_s, "restored_from": self.restored_from,
                "applied_batches": int(self.applied.sum()),
                "missing_batches": np.flatnonzero(~self.applied).tolist(), **self.counters}



def _touched_pages(mask, table, ids):
    """``mask`` (or a new one) with the memory pages of ``table``'s rows ``ids`` set."""
    import mmap

    row_bytes = max(1, int(np.prod(table.shape[1:], dtype=np.int64)) * table.dtype.itemsize)
    n_pages = -(-table.shape[0] * row_bytes // mmap.PAGESIZE) or 1
    mask = np.zeros(n_pages, dtype=bool) if mask is None else mask.copy()
    mask[ids * row_bytes // mmap.PAGESIZE] = True
    mask[((ids + 1) * row_bytes - 1) // mmap.PAGESIZE] = True  # a row across two pages
    return mask
