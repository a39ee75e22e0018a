"""Hogwild! (Niu et al., 2011): several processes update shared parameters without locks.

The parent copies the parameters (and the data set) once into shared memory, starts the
workers (``worker.py``), and supervises them: it aggregates progress, and a worker that
raises, dies or stops making progress ends the run with :class:`WorkerError` within
seconds. Row-sparse in-place updates from different workers rarely touch the same rows,
which is why the races cost little and the speed-up is close to linear.

Failure semantics: the caller's parameters are written only after every worker finished;
on any failure (``WorkerError``, Ctrl-C, any other exception) they keep exactly the values
they had before the call (with ``checkpoint_every``, the newest checkpoint file holds the
last snapshot). No shared-memory segment outlives the call, on success or failure.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait

import numpy as np

from minigrad.parallel.arguments import check_dataset, check_params, positive_int
from minigrad.parallel.shm import Arena, flatten_columns
from minigrad.parallel.worker import GO, ONE_THREAD_ENV, STOP, WorkerConfig, worker_main


class WorkerError(RuntimeError):
    """A Hogwild worker raised, died or hung; the other workers have been stopped.

    ``rank``, ``exitcode`` (``None`` for a hang: the parent killed it), ``reason`` and
    ``worker_traceback`` (the formatted traceback from the worker, if it raised).
    """

    def __init__(self, rank, exitcode, reason, worker_traceback=None):
        self.rank, self.exitcode, self.reason = rank, exitcode, reason
        self.worker_traceback = worker_traceback
        message = f"hogwild worker {rank} {reason} (exit code {_describe_exit(exitcode)})"
        if worker_traceback:
            message += "\n--- traceback in the worker ---\n" + worker_traceback.rstrip()
        super().__init__(message)


@dataclass
class HogwildResult:
    """What a run measured. ``samples_per_s`` is the total over workers during training
    (from the common start signal to the last worker's end; start-up and compilation
    excluded, reported as ``startup_s``); ``wall_s`` is the whole call."""

    losses: list  # one list of per-step losses per worker
    samples: list  # samples processed per worker
    worker_samples_per_s: list
    samples_per_s: float
    wall_s: float
    train_s: float
    startup_s: float
    n_workers: int
    start_method: str
    dense_writeback: list = field(default_factory=list)  # names of params copied back whole
    notes: list = field(default_factory=list)

    @property
    def final_loss(self):
        """Mean loss of each worker's last 10% of steps, averaged over workers."""
        tails = [w[-max(1, len(w) // 10):] for w in self.losses if w]
        return float(np.mean([np.mean(t) for t in tails])) if tails else float("nan")


def hogwild(make_step, params, dataset, n_workers, epochs, batch_size, seed=0, progress=True,
            worker_timeout=None, *, start_method=None, sampling="shard", startup_timeout=None,
            report_every=0.1, checkpoint_every=None, checkpoint_path=None):
    """Train with ``n_workers`` lock-free processes; returns a :class:`HogwildResult`.

    Each worker calls ``step = make_step(params)`` (its own compiled step and optimizer
    state) and ``loss = step(*batch)`` on batches of ``dataset`` (a tuple of row-aligned
    arrays, CSR allowed). ``make_step`` and ``params`` are pickled together, so
    ``make_step`` must be picklable (a module-level function, a ``functools.partial``, a
    model method...). To share optimizer accumulators too, create the optimizer in the
    parent and list its state variables in ``params``.

    ``sampling="shard"``: each epoch the workers split one permutation of the rows, so
    ``epochs`` counts passes over the data whatever ``n_workers``; ``"shuffle"``: each
    worker passes over all rows each epoch in its own order (seeded by ``seed``, rank).
    ``start_method``: ``None`` picks the platform default, except that ``"fork"`` becomes
    ``"spawn"`` when this process already runs numba's GNU OpenMP pool (not fork-safe).
    ``worker_timeout``: seconds a worker may go without finishing a step, and also to
    start (imports, unpickling, ``make_step``) unless ``startup_timeout`` says otherwise;
    with neither, start-up is bounded by 120 s and training is not. Workers notice a
    dead parent (even SIGKILLed) within about a second, unlink the shared memory and exit.
    ``checkpoint_every`` (seconds) with ``checkpoint_path``: atomically save a snapshot
    of the shared parameters through ``mg.save`` while training.
    """
    t_call = time.perf_counter()
    if startup_timeout is None:
        startup_timeout = worker_timeout if worker_timeout is not None else 120.0
    params = check_params(params)
    columns = check_dataset(dataset)
    _check_args(n_workers, epochs, batch_size, sampling, checkpoint_every, checkpoint_path)
    ctx = mp.get_context(_start_method(start_method))
    cfg = WorkerConfig(int(n_workers), int(epochs), int(batch_size), int(seed), sampling,
                       float(report_every))
    payload = _pickle_step(make_step, params)
    values = [p.get_value(borrow=True) for p in params]  # runs flush hooks first
    flat, column_specs = flatten_columns(columns)

    arenas, workers = [], []
    try:
        arenas.append(Arena.create(values + [np.zeros(2, np.int8)]))  # + GO/STOP flags
        arenas.append(Arena.create(flat))
        *views, control = arenas[0].views
        args = (cfg, payload, arenas[0].spec, arenas[1].spec, column_specs)
        forked = ctx.get_start_method() == "fork"
        for rank in range(cfg.n_workers):
            # a forked child inherits the read ends of the pipes made so far (its own
            # included): it closes them, so its writes fail once the parent is gone
            inherited = [w.conn.fileno() for w in workers] if forked else []
            workers.append(_Worker.start(ctx, rank, args, inherited))
        n_rows = columns[0].shape[0]
        total = n_rows * cfg.epochs * (cfg.n_workers if sampling == "shuffle" else 1)
        sup = _Supervisor(workers, control, worker_timeout, startup_timeout,
                          _Checkpointer(checkpoint_every, checkpoint_path, params, views),
                          [p.name or f"param{i}" for i, p in enumerate(params)])
        with _progress_bar(progress, total, cfg.n_workers) as bar:
            sup.run(bar)
        _write_back(params, views)
        return sup.result(t_call, ctx.get_start_method())
    finally:
        with _sigint_ignored():  # a second Ctrl-C must not leak segments
            _stop_all(workers, arenas[0].views[-1] if arenas else None)
            for arena in arenas:
                arena.destroy()


# ---------------------------------------------------------------------------------------
# Parent side: starting, watching and stopping workers


class _Worker:
    def __init__(self, rank, process, conn):
        self.rank, self.process, self.conn = rank, process, conn
        self.started = time.perf_counter()
        self.last_heard = self.started
        self.ready = self.done = False
        self.losses, self.samples, self.stats = [], 0, {}

    @classmethod
    def start(cls, ctx, rank, args, inherited=()):
        recv, send = ctx.Pipe(duplex=False)
        fds = (*inherited, recv.fileno()) if ctx.get_start_method() == "fork" else ()
        process = ctx.Process(target=worker_main, name=f"hogwild-worker-{rank}", daemon=True,
                              args=(rank, *args, send, os.getpid(), fds))
        with _environ(ONE_THREAD_ENV), _sigint_ignored():  # inherited through fork/exec
            process.start()
        send.close()  # only the worker holds the write end: its death means EOF here
        return cls(rank, process, recv)


class _Supervisor:
    """Polls the workers' pipes and process sentinels; raises ``WorkerError`` on failure."""

    POLL_S = 0.05

    def __init__(self, workers, control, worker_timeout, startup_timeout, checkpointer, names):
        self.workers, self.control, self.names = workers, control, names
        self.worker_timeout, self.startup_timeout = worker_timeout, startup_timeout
        self.checkpointer = checkpointer
        self.t_go = self.t_end = None

    def run(self, bar):
        by_conn = {w.conn: w for w in self.workers}
        by_sentinel = {w.process.sentinel: w for w in self.workers}
        while not all(w.done for w in self.workers):
            waiting = [w.conn for w in self.workers if not w.done and not w.conn.closed]
            waiting += [w.process.sentinel for w in self.workers if not w.done]
            for obj in wait(waiting, timeout=self.POLL_S):
                if obj in by_conn:
                    bar.update(self._drain(by_conn[obj]))
                else:
                    self._exited(by_sentinel[obj], bar)
            self._maybe_go()
            self._check_hangs()
            self.checkpointer.maybe_save()
        self.t_end = time.perf_counter()

    def _drain(self, w):
        """Handle every message waiting on ``w``'s pipe; returns new samples."""
        new = 0
        try:
            while not w.conn.closed and w.conn.poll():
                new += self._handle(w, w.conn.recv())
        except (EOFError, OSError, pickle.UnpicklingError):
            w.conn.close()  # the worker is gone; its sentinel tells how
        return new

    def _handle(self, w, msg):
        w.last_heard = time.perf_counter()
        kind = msg[0]
        if kind == "progress":
            w.samples += msg[2]
            w.losses.extend(msg[3])
            return msg[2]
        if kind == "ready":
            w.ready = True
        elif kind == "done":
            w.done, w.stats = True, msg[2]
        elif kind == "error":
            w.process.join(10.0)  # for its exit code: it is on its way out (slow when loaded)
            raise WorkerError(w.rank, w.process.exitcode, "raised an exception", msg[2])
        return 0

    def _exited(self, w, bar):
        bar.update(self._drain(w))  # read what it sent before it went
        if not w.done:
            w.process.join(1.0)
            raise WorkerError(w.rank, w.process.exitcode, "died before finishing")

    def _maybe_go(self):
        if self.t_go is None and all(w.ready for w in self.workers):
            self.t_go = time.perf_counter()
            for w in self.workers:
                w.last_heard = self.t_go
            self.control[GO] = 1

    def _check_hangs(self):
        now = time.perf_counter()
        for w in self.workers:
            if w.done:
                continue
            if self.t_go is None:
                if not w.ready and now - w.started > self.startup_timeout:
                    raise WorkerError(w.rank, None, f"did not build its step within "
                                      f"startup_timeout={self.startup_timeout} s (hung)")
            elif self.worker_timeout is not None and now - w.last_heard > self.worker_timeout:
                raise WorkerError(w.rank, None, f"made no progress for "
                                  f"worker_timeout={self.worker_timeout} s (hung)")

    def result(self, t_call, start_method):
        train_s = max(self.t_end - self.t_go, 1e-9)
        samples = [w.samples for w in self.workers]
        per_worker = [w.samples / max(w.stats.get("train_s", 0.0), 1e-9) for w in self.workers]
        moved = sorted(set().union(*(w.stats.get("dense", ()) for w in self.workers)))
        dense = [self.names[i] for i in moved]
        notes = [f"updates of {', '.join(dense)} were not in place: copied back whole after "
                 "each step (a row-sparse gradient through mg.optim updates rows in place)"
                 ] if dense else []
        return HogwildResult(
            losses=[w.losses for w in self.workers], samples=samples,
            worker_samples_per_s=per_worker, samples_per_s=sum(samples) / train_s,
            wall_s=time.perf_counter() - t_call, train_s=train_s,
            startup_s=self.t_go - self.workers[0].started, n_workers=len(self.workers),
            start_method=start_method, dense_writeback=dense, notes=notes,
        )


def _stop_all(workers, control, grace_s=0.5, kill_after_s=1.0):
    """Ask, then terminate, then kill: bounded at about ``grace_s + kill_after_s`` s."""
    if control is not None:
        control[STOP] = 1
    deadline = time.perf_counter() + grace_s
    for w in workers:
        w.process.join(max(0.0, deadline - time.perf_counter()))
    for w in workers:
        if w.process.is_alive():
            w.process.terminate()
    deadline = time.perf_counter() + kill_after_s
    for w in workers:
        w.process.join(max(0.0, deadline - time.perf_counter()))
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()
        w.process.close()


def _write_back(params, views):
    """Copy the trained values into the caller's arrays (aliases of them see the result)."""
    for p, view in zip(params, views):
        current = p.get_value(borrow=True)
        if current.shape == view.shape and current.dtype == view.dtype and \
                current.flags.writeable:
            np.copyto(current, view)
        else:
            p.set_value(np.array(view), borrow=True)


class _Checkpointer:
    def __init__(self, every_s, path, params, views):
        self.every_s, self.path, self.params, self.views = every_s, path, params, views
        self.last = time.perf_counter()

    def maybe_save(self):
        if self.every_s is None or time.perf_counter() - self.last < self.every_s:
            return
        import minigrad as mg

        # A copy of racing memory: each row is as some worker left it at that instant.
        snapshot = [mg.shared(v, name=p.name) for p, v in zip(self.params, self.views)]
        mg.save(self.path, snapshot)  # atomic: temporary file, fsync, rename
        self.last = time.perf_counter()


# ---------------------------------------------------------------------------------------
# Checks and small helpers


def _check_args(n_workers, epochs, batch_size, sampling, checkpoint_every, checkpoint_path):
    for name, v in (("n_workers", n_workers), ("epochs", epochs), ("batch_size", batch_size)):
        positive_int(name, v)
    if sampling not in ("shard", "shuffle"):
        raise ValueError(f"sampling must be 'shard' or 'shuffle', got {sampling!r}")
    if checkpoint_every is not None and checkpoint_path is None:
        raise ValueError("checkpoint_every needs checkpoint_path")


def _pickle_step(make_step, params):
    """Pickle ``(make_step, params)`` in one go, with empty placeholders for the values:
    workers get the arrays from shared memory, so big tables are never pickled."""
    saved = [(p._value, p._flush_hooks) for p in params]
    try:
        for p, (value, _) in zip(params, saved):
            p._value = np.empty((0,) * value.ndim, dtype=value.dtype)
            p._flush_hooks = []  # the parent's optimizer hooks stay here
        return pickle.dumps((make_step, params), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise TypeError(
            f"hogwild needs a picklable make_step (a module-level function, a "
            f"functools.partial, a method of a picklable object): {err}"
        ) from err
    finally:
        for p, (value, hooks) in zip(params, saved):
            p._value, p._flush_hooks = value, hooks


def _start_method(requested):
    if requested is None:
        requested = mp.get_start_method(allow_none=True) or mp.get_context().get_start_method()
        if requested == "fork" and _numba_fork_unsafe():
            return "spawn"
        return requested
    if requested == "fork" and _numba_fork_unsafe():
        warnings.warn(FORK_UNSAFE, RuntimeWarning, stacklevel=3)
    return requested


FORK_UNSAFE = (
    "start_method='fork' while this process runs numba's GNU OpenMP thread pool: a worker "
    "that calls a parallel numba kernel is aborted (SIGTERM). Use start_method='spawn' or "
    "'forkserver', the numpy backend in workers, or NUMBA_THREADING_LAYER=workqueue."
)


def _numba_fork_unsafe():
    """True when numba's GNU OpenMP pool is running in this process (fork would abort)."""
    numba = sys.modules.get("numba")
    if numba is None:
        return False
    try:
        from numba.np.ufunc import parallel

        if not parallel._is_initialized or numba.threading_layer() != "omp":
            return False
        from numba.np.ufunc import omppool

        return omppool.openmp_vendor == "GNU"
    except (ImportError, AttributeError, ValueError):
        return False


def _describe_exit(code):
    if code is None:
        return "None: still running when stopped"
    if code < 0:
        try:
            return f"{code}, killed by {signal.Signals(-code).name}"
        except ValueError:
            return str(code)
    return str(code)


@contextmanager
def _environ(values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _sigint_ignored():
    """Ignore Ctrl-C for a moment (main thread only: elsewhere signals are not ours)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextmanager
def _progress_bar(progress, total, n_workers):
    enabled = progress and not os.environ.get("CI") and sys.stderr.isatty()
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="samples", unit_scale=True, desc=f"hogwild x{n_workers}")
    try:
        yield bar
    finally:
        bar.close()


class _NoBar:
    def update(self, n):
        pass
