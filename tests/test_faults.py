"""Fault injection (issue 15): each attack runs in its own process group, under a hard
timeout that kills the whole group, and must leave no process, no ``/dev/shm`` segment and
no temporary file behind.

A fault that would crash or hang the test runner itself (an abort from concurrent kernel
launches, a segfault, a worker outliving a SIGKILLed parent) can only be observed from
outside, so every case here is a small script run by :func:`run_isolated`:

* a new session (``start_new_session``) makes the script and everything it starts one
  process group; after the run the group must be empty (``/proc`` is scanned), and on a
  timeout the group is SIGKILLed so nothing leaks even when the test fails;
* the script records the shared-memory segments hogwild creates (``SEGMENTS`` file), and
  every one of them must be gone afterwards (other processes' segments are ignored);
* scratch files live in pytest's ``tmp_path``, which must hold only what the case expects.

Linux only (``/proc``, ``/dev/shm``); skipped elsewhere.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHM = "/dev/shm"

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.path.isdir(SHM) and os.path.isdir("/proc")),
    reason="fault injection needs Linux /proc and /dev/shm",
)

#: prepended to every script: records hogwild's segments, exposes the scratch dir
PRELUDE = """
import os, sys, time, signal, functools
import numpy as np
SCRATCH = os.environ["FAULT_SCRATCH"]
def _record_segments():
    from minigrad.parallel import shm
    create = shm.Arena.create.__func__
    def recording(cls, arrays):
        arena = create(cls, arrays)
        with open(os.path.join(SCRATCH, "SEGMENTS"), "a") as f:
            f.write(arena.spec.name.lstrip("/") + "\\n")
        return arena
    shm.Arena.create = classmethod(recording)
_record_segments()
def mark(name):
    open(os.path.join(SCRATCH, name), "w").close()
"""


def _group_members(pgid):
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # field 5: pgrp; skip zombies
            members.append(int(entry))
    return members


def _wait_until(predicate, limit_s, poll_s=0.1):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


class Isolated:
    """A script running in its own process group, with its scratch directory."""

    def __init__(self, code, scratch, env=None):
        self.scratch = str(scratch)
        full_env = dict(os.environ, PYTHONPATH=ROOT, FAULT_SCRATCH=self.scratch,
                        PYTHONFAULTHANDLER="1", **(env or {}))
        full_env.pop("CI", None)
        script = os.path.join(self.scratch, "case.py")  # a file: spawn children import it
        with open(script, "w") as f:
            f.write(PRELUDE + textwrap.dedent(code))
        # output to files, not pipes: a surviving grandchild would hold a pipe open and
        # make reading it hang, which is the very fault some cases look for
        self._out = open(os.path.join(self.scratch, "stdout.txt"), "w+")
        self._err = open(os.path.join(self.scratch, "stderr.txt"), "w+")
        self.proc = subprocess.Popen(
            [sys.executable, script], cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=self._err, text=True, start_new_session=True)
        self.pgid = self.proc.pid

    def output(self):
        self._out.seek(0)
        self._err.seek(0)
        return self._out.read(), self._err.read()

    def wait_for_file(self, name, limit_s):
        path = os.path.join(self.scratch, name)
        if not _wait_until(lambda: os.path.exists(path) or self.proc.poll() is not None,
                           limit_s):
            self.kill_group()
            pytest.fail(f"{name!r} never appeared within {limit_s} s")
        if not os.path.exists(path):
            out, err = self.output()
            pytest.fail(f"the script ended before {name!r}: rc={self.proc.returncode}\n{err}")

    def finish(self, limit_s):
        try:
            self.proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.proc.wait()
            out, err = self.output()
            pytest.fail(f"timed out after {limit_s} s (group killed)\n{out}\n{err}")
        return (self.proc.returncode, *self.output())

    def kill_group(self):
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def segments(self):
        try:
            with open(os.path.join(self.scratch, "SEGMENTS")) as f:
                return [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def assert_clean(self, limit_s=10.0, expect_segments=True):
        """No process of the group and no recorded segment survives (waits up to
        ``limit_s`` for the stragglers, then kills them so the suite never leaks)."""
        gone = _wait_until(lambda: not _group_members(self.pgid), limit_s)
        survivors = _group_members(self.pgid)
        self.kill_group()
        names = self.segments()
        if expect_segments:
            assert names, "the script created no segment: the case did not run"
        left = [n for n in names if os.path.exists(os.path.join(SHM, n))]
        for n in left:  # clean up for the next test, then fail
            os.unlink(os.path.join(SHM, n))
        assert gone, f"processes still alive {limit_s} s later: {survivors}"
        assert not left, f"segments left in /dev/shm: {left}"


def run_isolated(tmp_path, code, limit_s=120, env=None):
    """Run ``code`` to completion in its own group; return ``(rc, stdout, stderr)``."""
    case = Isolated(code, tmp_path, env)
    rc, out, err = case.finish(limit_s)
    gone = _wait_until(lambda: not _group_members(case.pgid), 10.0)
    case.kill_group()
    assert gone, "the script left processes behind"
    return rc, out, err


# A hogwild run whose workers are slow enough to be caught mid-training or mid-start-up.
HOGWILD = """
import minigrad as mg

class Step:
    def __init__(self, model, phase):
        self.model, self.phase = model, phase

    def __call__(self, params):
        if self.phase == "startup":
            mark(f"building-{mg.parallel.worker_rank()}")
            time.sleep(3600)  # make_step hangs: the parent is killed meanwhile
        X, y = mg.csr_matrix("X"), mg.vector("y")
        cost = self.model.cost(X, y)
        f = mg.function([X, y], cost, updates=mg.optim.SGD(params, 0.01).updates(cost),
                        backend="numpy")

        def step(*batch):
            mark(f"training-{mg.parallel.worker_rank()}")
            time.sleep(0.01)
            return f(*batch)

        return step

if __name__ == "__main__":
    r = mg.data.synthetic_ratings(200, 300, n_ratings=4000, seed=0)
    model = mg.models.FactorizationMachine(r.X.shape[1], 4, seed=0)
    t0 = time.monotonic()
    try:
        mg.parallel.hogwild(Step(model, PHASE), model.params, (r.X, r.y), 2, epochs=1000,
                            batch_size=16, progress=False, start_method=METHOD, **KW)
    except mg.parallel.WorkerError as err:
        print("WorkerError", "did not build its step" in str(err), time.monotonic() - t0)
"""


def _hogwild_script(phase, method, **kw):
    return f"PHASE, METHOD, KW = {phase!r}, {method!r}, {kw!r}\n" + HOGWILD


# ----------------------------------------------------------- item 17: parent SIGKILL


@pytest.mark.parametrize("phase, method", [("training", "fork"), ("startup", "fork"),
                                           ("startup", "spawn"), ("training", "spawn")])
def test_parent_sigkill_leaves_no_worker_and_no_segment(tmp_path, phase, method):
    case = Isolated(_hogwild_script(phase, method), tmp_path)
    marker = "training" if phase == "training" else "building"
    case.wait_for_file(f"{marker}-1", limit_s=90)
    case.wait_for_file(f"{marker}-0", limit_s=30)
    os.kill(case.pgid, signal.SIGKILL)  # the parent only: the workers must notice
    case.proc.wait()
    case.assert_clean(limit_s=10.0)


# ---------------------------------------------- item 18: worker_timeout bounds start-up


def test_hang_in_make_step_is_bounded_by_worker_timeout(tmp_path):
    code = _hogwild_script("startup", "fork", worker_timeout=2.0)
    rc, out, err = run_isolated(tmp_path, code, limit_s=90)
    assert rc == 0, err
    kind, named, elapsed = out.split()
    assert kind == "WorkerError" and named == "True"
    assert float(elapsed) < 60  # not the 120 s start-up default (a bound, not a timing)


# ------------------------------------------- item 2: concurrent calls from several threads


def test_threads_calling_compiled_functions_and_kernels_do_not_abort(tmp_path):
    code = """
    import threading
    import minigrad as mg
    try:
        import kernels.cpu as K  # Numba's parallel launches are the case in point
    except ImportError:
        import kernels.reference as K
    E = mg.shared(np.random.default_rng(0).random((40000, 64)), name="E")
    i = mg.lvector("i")
    gather = mg.function([i], E[i].sum())
    W = mg.shared(np.zeros((100, 4)), name="W")
    c = W[i].sum()
    opt = mg.optim.Adam([W], 0.01, sparse="exact")
    step = mg.function([i], c, updates=opt.updates(c))
    idx = np.arange(40000)
    errors = []
    def work():
        try:
            for _ in range(10):
                gather(idx)
                K.gather_rows(E.get_value(borrow=True), idx)  # a parallel launch
                for _ in range(50):
                    step(np.array([1, 2, 3]))
        except Exception as err:
            errors.append(repr(err))
    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(errors, int(opt.t.value))
    """
    rc, out, err = run_isolated(tmp_path, code, limit_s=300)
    assert rc == 0, f"rc={rc} (an abort is -6)\n{err[-2000:]}"
    assert out.split() == ["[]", "2000"]


# ------------------------------------------------ item 20: SIGKILL in the middle of a save


def test_sigkill_mid_save_leaves_a_temporary_the_next_save_removes(tmp_path):
    code = """
    import minigrad as mg
    E = mg.shared(np.zeros((4000, 1000)), name="E")  # 32 MB: a save takes a while
    path = os.path.join(SCRATCH, "ckpt.npz")
    mark("saving")
    while True:
        mg.save(path, [E])
    """
    case = Isolated(code, tmp_path)
    case.wait_for_file("saving", limit_s=60)
    assert _wait_until(lambda: any(n.startswith(".ckpt.npz.tmp-") for n in os.listdir(tmp_path)),
                       30, poll_s=0.005)
    os.kill(case.pgid, signal.SIGKILL)
    case.proc.wait()
    case.assert_clean(expect_segments=False)
    stale = [n for n in os.listdir(tmp_path) if n.startswith(".ckpt.npz.tmp-")]
    assert stale, "the kill did not land mid-save (no temporary file to clean)"
    import numpy as np

    import minigrad as mg

    E = mg.shared(np.ones((3, 2)), name="E")
    mg.save(tmp_path / "ckpt.npz", [E])
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".ckpt.npz.tmp-")]
    mg.load(tmp_path / "ckpt.npz", [E])


# ------------------------------------- every other class: one hostile script, no crash


ATTACKS = """
import warnings
import scipy.sparse as sp
import minigrad as mg
try:
    import kernels.cpu as K
except ImportError:  # no Numba: the reference kernels validate the same way
    import kernels.reference as K
from minigrad.optim.serialization import CheckpointError
results = {}
def attack(name, expected, fn):
    try:
        fn()
    except expected:
        results[name] = "ok"
    except BaseException as err:
        results[name] = f"wrong error {type(err).__name__}: {err}"
    else:
        results[name] = "no error"

E = mg.shared(np.arange(12.0).reshape(6, 2), name="E")
i = mg.ivector("i")
g = mg.function([i], E[i])
attack("7 int wrap", ValueError, lambda: g(np.array([2**32 + 1])))
attack("7 bool index", TypeError, lambda: g(np.array([True])))
x = mg.vector("x", dtype="float32")
attack("14 lossy downcast", ValueError, lambda: mg.function([x], x * 1.0)(np.array([1e-50])))
X = mg.csr_matrix("X")
W = mg.shared(np.ones((4, 2)), name="W")
h = mg.function([X], mg.sparse.dot(X, W), backend="numpy")
bad = sp.csr_matrix((np.ones(3), np.array([0, 1, 2]), np.array([0, 3, 1, 3])), shape=(3, 4))
attack("10 decreasing indptr", ValueError, lambda: h(bad))
attack("15 dict in list", TypeError, lambda: mg.function([x], [{"s": x.sum()}]))
attack("15 asarray rowsparse", TypeError,
       lambda: np.asarray(mg.RowSparse([0], np.ones((1, 2)), (3, 2))))
o = np.zeros((10, 2))
o.flags.writeable = False
attack("3 read-only out", ValueError, lambda: K.scatter_add_rows(o, np.array([1]), np.ones((1, 2))))
T = mg.shared(np.ones((4, 2)), name="T")
c = (T[i] * mg.constant(np.full(2, 1e300))).sum()
f = mg.function([i], c, updates=mg.optim.SGD([T], 1e10).updates(c))
attack("8 overflow", FloatingPointError, lambda: f(np.array([1], np.int32)))
assert (T.get_value() == 1).all()
A = mg.shared(np.ones((10, 2)), name="A")
cost = A[i].mean()
opt = mg.optim.Adam([A], 0.1, sparse="exact")
step = mg.function([i], cost, updates=opt.updates(cost))
with warnings.catch_warnings():
    warnings.simplefilter("error")
    attack("13 empty batch", ValueError, lambda: step(np.array([], np.int32)))
bomb = os.path.join(SCRATCH, "bomb.npz")
import zipfile
with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
    with z.open("payload.npy", "w", force_zip64=True) as fh:
        for _ in range(64):
            fh.write(bytes(1 << 20))
attack("19 zip bomb", CheckpointError, lambda: mg.load(bomb, [A]))
os.unlink(bomb)
print(results)
bad = {k: v for k, v in results.items() if v != "ok"}
sys.exit(1 if bad else 0)
"""


def test_hostile_inputs_raise_clear_errors_in_a_fresh_process(tmp_path):
    rc, out, err = run_isolated(tmp_path, ATTACKS, limit_s=180)
    assert rc == 0, f"rc={rc}\n{out}\n{err[-3000:]}"
    assert sorted(os.listdir(tmp_path)) == ["case.py", "stderr.txt", "stdout.txt"]
