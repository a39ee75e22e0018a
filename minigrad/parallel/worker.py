"""What runs inside a Hogwild worker process (the parent side is ``hogwild.py``).

A worker unpickles ``(make_step, params)`` in one go (so a model reachable from
``make_step`` holds the very ``params`` objects), points each parameter at its view of the
shared-memory arena, builds its step, reports ``ready``, waits for ``go`` and trains
lock-free on its own batches. It talks to the parent through its own pipe: ``ready``,
``progress`` (losses of several steps at once, so IPC never dominates the step time),
``done`` or ``error`` (with the formatted traceback).
"""
from __future__ import annotations

import ctypes
import gc
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np

from minigrad.data.batching import batches
from minigrad.parallel.shm import Arena, rebuild_columns

#: environment that keeps each worker's BLAS on one thread (2 workers on 2 cores, no
#: oversubscription); applied before the worker imports BLAS. Numba is capped with
#: ``numba.set_num_threads(1)`` instead: changing NUMBA_NUM_THREADS in the environment of a
#: process whose thread pool is running makes Numba's next compilation raise.
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


_RANK = None

#: the parent's flags, an int8 array after the parameters in their arena (plain shared
#: memory rather than multiprocessing Events: those are named semaphores in /dev/shm)
GO, STOP = 0, 1


def worker_rank():
    """This process's Hogwild worker rank (0-based), or ``None`` outside a worker."""
    return _RANK


@dataclass(frozen=True)
class WorkerConfig:
    n_workers: int
    epochs: int
    batch_size: int
    seed: int
    sampling: str  # "shard" | "shuffle"
    report_every: float


#: how often a worker checks that its parent is still alive (seconds)
PARENT_POLL_S = 0.25
#: exit code of a worker that found its parent dead
ORPHANED = 3


def worker_main(rank, cfg, payload, param_spec, data_spec, columns, conn, parent_pid=None,
                inherited_fds=()):
    """Process target. Exit code 0 when done or stopped, 1 after reporting an error, 3 when
    the parent died (the worker then unlinks the segments and leaves at once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C
    _close_inherited(inherited_fds)
    if parent_pid is not None:
        _die_with_parent(parent_pid, [param_spec.name, data_spec.name])
    _one_thread()
    arenas, failed = [], False
    try:
        _run(rank, cfg, payload, param_spec, data_spec, columns, conn, arenas)
    except BaseException:
        failed = True
        try:
            conn.send(("error", rank, traceback.format_exc()))
        except (OSError, ValueError):
            pass
    _release(arenas)  # _run's frame is gone: nothing references the views any more
    if failed:
        sys.exit(1)


def _run(rank, cfg, payload, param_spec, data_spec, columns, conn, arenas):
    global _RANK
    _RANK = rank
    make_step, params = pickle.loads(payload)
    arenas.extend([Arena.attach(param_spec), Arena.attach(data_spec)])
    *views, control = arenas[0].views
    for p, view in zip(params, views):
        p._value = view  # no flush, no copy: the compiled step reads this very array
    data = rebuild_columns(arenas[1].views, columns)
    step = make_step(params)
    conn.send(("ready", rank))
    while not control[GO]:
        if control[STOP]:
            return
        time.sleep(0.005)
    _train(rank, cfg, step, params, views, data, conn, control)


def _train(rank, cfg, step, params, views, data, conn, control):
    losses, n_new, n_total, dense = [], 0, 0, set()
    t0 = last = time.perf_counter()
    for batch in _batches(rank, cfg, data):
        losses.append(_as_float(step(*batch)))
        dense |= _rebind(params, views)
        n_new += batch[0].shape[0]
        now = time.perf_counter()
        if now - last >= cfg.report_every:
            conn.send(("progress", rank, n_new, losses))
            losses, n_total, n_new, last = [], n_total + n_new, 0, now
            if control[STOP]:
                _flush(params)
                return
    train_s = time.perf_counter() - t0
    _flush(params)
    conn.send(("progress", rank, n_new, losses))
    conn.send(("done", rank, {"samples": n_total + n_new, "train_s": train_s, "dense": dense}))


def _batches(rank, cfg, data):
    """``"shard"``: each epoch one permutation (seeded by seed, epoch) is dealt round-robin
    to the workers, so together they pass over the data once per epoch; ``"shuffle"``:
    every worker shuffles the whole data set itself (seeded by seed, rank)."""
    rng = np.random.default_rng([cfg.seed, rank])
    n = data[0].shape[0]
    for epoch in range(cfg.epochs):
        if cfg.sampling == "shuffle":
            yield from batches(*data, batch_size=cfg.batch_size, seed=rng)
            continue
        mine = np.random.default_rng([cfg.seed, epoch]).permutation(n)[rank:: cfg.n_workers]
        for (rows,) in batches(mine, batch_size=cfg.batch_size, seed=rng):
            yield tuple(column[rows] for column in data)


def _flush(params):
    """Exact-mode optimizers: catch this worker's pending rows up, in shared memory, before
    the parent reads the parameters (their flush hooks are this worker's)."""
    for p in params:
        p.flush()


def _rebind(params, views):
    """Keep every parameter in shared memory after a step.

    In-place optimizer updates (``destroy_map``, as ``mg.optim`` emits) write the view
    itself. A plain update pair ``(W, W - lr * g)`` makes the compiled step assign a new
    array instead; it is copied back whole (correct, but a dense write that can undo
    other workers' concurrent updates), and the result names those parameters. Returns
    the indices of the parameters copied back.
    """
    moved = set()
    for i, (p, view) in enumerate(zip(params, views)):
        if p._value is not view:
            np.copyto(view, p._value, casting="same_kind")
            p._value = view
            moved.add(i)
    return moved


def _as_float(loss):
    try:
        return float(np.asarray(loss).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return float("nan")


def _one_thread():
    # BLAS: spawn children got ONE_THREAD_ENV before importing it. Numba: a runtime cap.
    os.environ.update(ONE_THREAD_ENV)
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError, RuntimeError):
        pass


def _close_inherited(fds):
    """Close the pipe ends a forked worker inherited from the parent (its own read end and
    the other workers'): holding them, it would never see EPIPE if the parent died."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _die_with_parent(parent_pid, segment_names):
    """Make sure this worker does not outlive the process that started the run.

    Two mechanisms: ``PR_SET_PDEATHSIG`` (Linux: the kernel sends SIGKILL when the parent
    dies, even if this process is stuck in C code holding the GIL), and a watchdog thread
    that polls the parent every ``PARENT_POLL_S`` s (every platform, and the case where the
    parent died before the signal was armed). The watchdog unlinks the run's segments:
    their owner is gone, so nobody else would.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    direct = os.getppid() == parent_pid  # fork/spawn: the parent; forkserver: not

    def parent_alive():
        if direct:
            return os.getppid() == parent_pid
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch():
        while parent_alive():
            time.sleep(PARENT_POLL_S)
        _unlink(segment_names)
        os._exit(ORPHANED)

    if not parent_alive():  # died while this process was starting
        _unlink(segment_names)
        os._exit(ORPHANED)
    threading.Thread(target=watch, name="hogwild-parent-watch", daemon=True).start()


def _unlink(names):
    from multiprocessing import shared_memory

    for name in names:
        try:
            seg = shared_memory.SharedMemory(name=name)
        except (FileNotFoundError, OSError, ValueError):
            continue
        try:
            seg.unlink()  # also unregisters it from the resource tracker
        except (FileNotFoundError, OSError):
            pass
        finally:
            try:
                seg.close()
            except (BufferError, OSError):
                pass


def _release(arenas):
    # Drop every reference to the views before unmapping, so close() finds no exports.
    gc.collect()
    for arena in arenas:
        arena.close()
