"""mg.parallel.hogwild: training quality with 1 vs 2 workers, fork and spawn, and every
fault (exception, SIGKILL, hang, Ctrl-C) ending in bounded time with no leaked segment
and the caller's parameters untouched.

Fork tests compile their steps with the numpy backend: a forked child must not start
numba's GNU OpenMP pool when the pytest process already runs it (earlier tests may have).
The spawn tests use the default backend, so numba kernels run in workers too.
"""
from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import threading
import time

import numpy as np
import pytest

import minigrad as mg

SHM = "/dev/shm"


# ---------------------------------------------------------------------------------------
# The model: an FM trained by mg.optim.SGD (in-place row updates of the shared tables)


def make_fm_step(model, lr, backend, params):
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = model.cost(X, y)
    updates = mg.optim.SGD(params, lr).updates(cost)
    return mg.function([X, y], cost, updates=updates, backend=backend)


def make_dense_sgd_step(model, lr, params):
    """A plain update pair (W, W - lr*g): not in place; hogwild copies it back."""
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = model.cost(X, y)
    grads = mg.grad(cost, params)
    updates = [(p, p - lr * mg.ops.rowsparse_to_dense(g) if mg.ops.is_row_sparse(g)
                else p - lr * g) for p, g in zip(params, grads)]
    return mg.function([X, y], cost, updates=updates, backend="numpy")


class Faulty:
    """Wraps a step so that worker ``rank`` misbehaves at its step ``after``."""

    def __init__(self, make_inner, fault, rank=1, after=3):
        self.make_inner, self.fault, self.rank, self.after = make_inner, fault, rank, after

    def __call__(self, params):
        inner, count = self.make_inner(params), [0]

        def step(*batch):
            count[0] += 1
            if mg.parallel.worker_rank() == self.rank and count[0] == self.after:
                if self.fault == "raise":
                    raise ValueError("boom in the step")
                if self.fault == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if self.fault == "hang":
                    time.sleep(3600)
            return inner(*batch)

        return step


@pytest.fixture(scope="module")
def ratings():
    r = mg.data.synthetic_ratings(300, 600, n_ratings=6000, seed=0)
    return r.X, r.y


def fm(ratings):
    return mg.models.FactorizationMachine(ratings[0].shape[1], 4, seed=0)


def full_loss(model, ratings):
    X, y = mg.csr_matrix("X"), mg.vector("y")
    return float(mg.function([X, y], model.cost(X, y), backend="numpy")(*ratings))


@pytest.fixture
def no_leak(monkeypatch):
    """Fails the test if a segment hogwild created survives it (the names are recorded,
    since other processes may create and remove their own segments meanwhile)."""
    from minigrad.parallel import shm

    created, create = [], shm.Arena.create.__func__

    def recording(cls, arrays):
        arena = create(cls, arrays)
        created.append(arena.spec.name.lstrip("/"))
        return arena

    monkeypatch.setattr(shm.Arena, "create", classmethod(recording))
    before = set(os.listdir(SHM))
    yield created
    assert not [name for name in created if os.path.exists(os.path.join(SHM, name))]
    assert not (set(os.listdir(SHM)) - before) & set(created)


def run(model, ratings, make_step, n_workers=2, **kw):
    kw.setdefault("epochs", 1)
    kw.setdefault("batch_size", 32)
    return mg.parallel.hogwild(make_step, model.params, ratings, n_workers, progress=False,
                               **kw)


# ---------------------------------------------------------------------------------------
# Training


def test_two_workers_train_as_well_as_one(ratings, no_leak):
    """Also checks the leak fixture sees the segments (params + data per call)."""
    losses = {}
    for n in (1, 2):
        model = fm(ratings)
        step = functools.partial(make_fm_step, model, 0.1, "numpy")
        res = run(model, ratings, step, n, epochs=3, start_method="fork", seed=1)
        assert len(res.losses) == n and all(len(w) > 10 for w in res.losses)
        assert sum(res.samples) == 3 * ratings[0].shape[0]  # "shard": epochs = data passes
        assert res.samples_per_s > 0 and res.wall_s > 0
        assert res.dense_writeback == []  # every optimizer rule updates in place (fused kernel)
        losses[n] = full_loss(model, ratings)  # the trained values came back
    assert len(no_leak) == 4
    start = full_loss(fm(ratings), ratings)
    assert losses[1] < start - 0.02
    assert abs(losses[2] - losses[1]) < 0.01, losses


def test_spawn_with_default_backend(ratings, no_leak):
    model = fm(ratings)
    before = full_loss(model, ratings)
    step = functools.partial(make_fm_step, model, 0.1, None)
    res = run(model, ratings, step, 2, epochs=2, start_method="spawn", sampling="shuffle")
    assert res.start_method == "spawn"
    assert sum(res.samples) == 2 * 2 * ratings[0].shape[0]  # "shuffle": each worker, all rows
    assert full_loss(model, ratings) < before - 0.02


def test_dense_update_is_copied_back(ratings, no_leak):
    model = fm(ratings)
    before = full_loss(model, ratings)
    res = run(model, ratings, functools.partial(make_dense_sgd_step, model, 0.1), 2,
              start_method="fork")
    assert res.dense_writeback == ["fm_b", "fm_w", "fm_V"] and res.notes
    assert full_loss(model, ratings) < before


def test_unpicklable_make_step_fails_before_starting(ratings, no_leak):
    model = fm(ratings)
    with pytest.raises(TypeError, match="picklable"):
        run(model, ratings, lambda params: None)
    assert mp.active_children() == []


# ---------------------------------------------------------------------------------------
# Faults: each raises in bounded time, leaks nothing and leaves the parameters untouched


def assert_untouched(model, snapshot):
    for p, v in zip(model.params, snapshot):
        np.testing.assert_array_equal(p.get_value(), v)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_exception_in_step(ratings, no_leak, start_method):
    model = fm(ratings)
    snapshot = [p.get_value() for p in model.params]
    step = Faulty(functools.partial(make_fm_step, model, 0.1, "numpy"), "raise")
    with pytest.raises(mg.parallel.WorkerError, match="worker 1 raised") as info:
        run(model, ratings, step, epochs=50, start_method=start_method)
    err = info.value
    assert err.rank == 1 and err.exitcode == 1
    assert "ValueError: boom in the step" in err.worker_traceback
    assert "boom in the step" in str(err)
    assert_untouched(model, snapshot)
    assert mp.active_children() == []


def _failure(model, ratings, step, expected, **kw):
    """The error of a run that must fail. How fast failures arrive is measured in
    ``benchmarks/`` and bounded (hard timeouts, no hang) in ``test_faults.py``: wall-clock
    assertions here would flake on a loaded machine."""
    with pytest.raises(expected) as info:
        run(model, ratings, step, epochs=200, start_method="fork", **kw)
    return info.value


def test_sigkill_of_a_worker(ratings, no_leak):
    model = fm(ratings)
    snapshot = [p.get_value() for p in model.params]
    step = Faulty(functools.partial(make_fm_step, model, 0.1, "numpy"), "kill", after=20)
    err = _failure(model, ratings, step, mg.parallel.WorkerError)
    assert err.rank == 1 and err.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(err)
    assert_untouched(model, snapshot)
    assert mp.active_children() == []


def test_hang_past_worker_timeout(ratings, no_leak):
    model = fm(ratings)
    snapshot = [p.get_value() for p in model.params]
    step = Faulty(functools.partial(make_fm_step, model, 0.1, "numpy"), "hang", rank=0)
    err = _failure(model, ratings, step, mg.parallel.WorkerError, worker_timeout=1.0,
                   startup_timeout=60.0)  # start-up is slow on a loaded box
    assert err.rank == 0 and "hung" in str(err) and err.exitcode is None
    assert "made no progress for worker_timeout=1.0 s" in str(err)
    assert_untouched(model, snapshot)
    assert mp.active_children() == []


def test_ctrl_c_stops_all_workers(ratings, no_leak):
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (started in the background by a "
                    "shell without job control): Ctrl-C cannot reach it")
    model = fm(ratings)
    snapshot = [p.get_value() for p in model.params]

    def press_ctrl_c():
        # once both workers run: while the parent forks one it ignores SIGINT for that
        # instant (so the child inherits the ignore), and a press then would be lost
        deadline = time.monotonic() + 60.0
        while len(mp.active_children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        for child in mp.active_children():  # a terminal sends SIGINT to the whole group
            os.kill(child.pid, signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    step = functools.partial(make_fm_step, model, 0.1, "numpy")
    _failure(model, ratings, step, KeyboardInterrupt)
    assert_untouched(model, snapshot)
    assert mp.active_children() == []


def test_checkpoint_every_saves_loadable_snapshots(ratings, no_leak, tmp_path):
    """``checkpoint_every``: snapshots written atomically while training, loadable by
    ``mg.load`` into a fresh model, and no temporary file left behind."""
    model = fm(ratings)
    path = tmp_path / "hogwild.npz"
    step = functools.partial(make_fm_step, model, 0.1, "numpy")
    run(model, ratings, step, 2, epochs=3, start_method="fork", seed=1,
        checkpoint_every=0.0, checkpoint_path=path)
    assert path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hogwild.npz"]
    fresh = fm(ratings)
    before = [p.get_value() for p in fresh.params]
    mg.load(path, fresh.params)
    after = [p.get_value() for p in fresh.params]
    assert all(np.isfinite(a).all() for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))  # trained values
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint_path"):
        run(model, ratings, step, 1, checkpoint_every=1.0)


@pytest.mark.parametrize("dataset, message", [
    ((np.zeros((0, 2)), np.zeros(0)), "dataset has no rows"),
    ((np.zeros((3, 2)), np.zeros(4)), "same number of rows"),
    ((), "at least one array"),
])
def test_bad_dataset_is_refused_before_any_worker_starts(dataset, message):
    """The checks hogwild shares with mg.distributed.train (parallel/arguments.py)."""
    W = mg.shared(np.zeros((2, 1)), name="W")
    with pytest.raises(ValueError, match=message):
        mg.parallel.hogwild(lambda params: None, [W], dataset, n_workers=1, epochs=1,
                            batch_size=1)
