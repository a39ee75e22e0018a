"""The tiered linker (``Mode(linker="tiered")``, ``minigrad/tiered.py``): the generated
linker's results until the function is hot, a background child process compiles the jit
segments into the on-disk cache, then the segments are loaded and run; a failing or stuck
child never changes a result and never outlives its parent.

Each test uses a tiny graph (a cold compile in the child takes a few seconds on 2 cores).
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

import minigrad as mg

pytest.importorskip("numba", reason="the tiered linker compiles with numba")

from minigrad import linker_jit, tiered  # noqa: E402

TIERED = mg.Mode(backend="numba", linker="tiered")


@pytest.fixture
def eager_policy(monkeypatch, tmp_path):
    """Tier up after 2 calls; a cache directory of the test's own (a cold compile)."""
    monkeypatch.setattr(tiered.POLICY, "min_calls", 2)
    monkeypatch.setattr(tiered.POLICY, "min_seconds", 0.0)
    monkeypatch.setattr(tiered.POLICY, "nice", 0)
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(linker_jit, "_MODULES", {})
    return tiered.POLICY


def _step(mode, seed=0):
    """A small SGD step: a shared vector, a sigmoid, a sum (one segment)."""
    w = mg.shared(np.linspace(-1.0, 1.0, 6) + seed, name="w")
    x = mg.vector("x")
    cost = (mg.sigmoid(x * w * 2.0) + 1.5).sum()
    return w, mg.function([x], cost, updates=mg.optim.SGD([w], lr=0.1).updates(cost),
                          mode=mode)


def _batches(n):
    rng = np.random.default_rng(3)
    return [rng.standard_normal(6) for _ in range(n)]


def test_a_function_that_is_not_hot_never_builds_a_jit_phase():
    w, f = _step(TIERED)
    for x in _batches(5):
        f(x)
    assert f._safe_run.state == "plain" and f._safe_run.jit is None
    assert f._safe_run.segments == []
    assert "tiered linker: plain (5 calls" in mg.debugprint(f, print_=False)


def test_tiers_up_in_the_background_and_keeps_the_generated_linkers_results(eager_policy):
    w_ref, ref = _step(mg.Mode(backend="numba"))
    w, f = _step(TIERED)
    phase = f._safe_run
    batches = _batches(40)
    states, k = [], 0
    for x in batches:
        k += 1
        assert f(x) == ref(x)  # bitwise, before the swap: the same thunks run
        assert w.get_value().tobytes() == w_ref.get_value().tobytes()
        states.append(phase.state)
        if phase.state == "compiling":
            break
    assert states[:2] == ["plain", "record"], states
    assert phase.state == "compiling" and phase.job.proc is not None
    assert phase.wait(timeout=300) == "jit", phase.why
    assert phase.job.proc.poll() == 0  # the child exited by itself
    for x in batches[k:]:
        np.testing.assert_allclose(f(x), ref(x), rtol=1e-12)
        np.testing.assert_allclose(w.get_value(), w_ref.get_value(), rtol=1e-12)
    assert phase.jit_fallbacks == []
    (segment,) = phase.jit.compiled
    assert len(segment.signatures) == 1
    assert sum(segment.stats.cache_misses.values()) == 0  # loaded, never compiled here
    assert not segment._can_compile
    before = w.get_value().tobytes()  # a bad call after the swap: the reference's error
    with pytest.raises(ValueError) as jit_error:
        f(np.ones(5))
    with pytest.raises(ValueError) as ref_error:
        ref(np.ones(5))
    assert str(jit_error.value) == str(ref_error.value)
    assert w.get_value().tobytes() == before
    text = mg.debugprint(f, print_=False)  # the segments, and that they run compiled
    assert "tiered linker: jit" in text and "segment 0 [compiled]" in text


def test_a_failing_child_leaves_the_function_on_the_generated_linker(eager_policy, monkeypatch,
                                                                      tmp_path, caplog):
    bad = tmp_path / "bad_worker.py"
    bad.write_text("import sys\nsys.stderr.write('no compiler here')\nsys.exit(1)\n")
    monkeypatch.setattr(tiered, "WORKER", str(bad))
    w_ref, ref = _step(mg.Mode(backend="numba"))
    w, f = _step(TIERED)
    for x in _batches(4):
        f(x), ref(x)
    with caplog.at_level("WARNING", logger="minigrad.tiered"):
        assert f._safe_run.wait(timeout=60) == "plain for good"
    assert "no compiler here" in f._safe_run.why and "failed" in caplog.text
    for x in _batches(3):
        assert f(x) == ref(x)
    assert w.get_value().tobytes() == w_ref.get_value().tobytes()


def test_a_child_past_its_timeout_is_killed(eager_policy, monkeypatch, tmp_path):
    slow = tmp_path / "slow_worker.py"
    slow.write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(tiered, "WORKER", str(slow))
    monkeypatch.setattr(tiered.POLICY, "timeout_s", 0.5)
    w, f = _step(TIERED)
    for x in _batches(3):
        f(x)
    proc = f._safe_run.job.proc
    assert f._safe_run.wait(timeout=30) == "plain for good"
    assert "timed out" in f._safe_run.why
    assert proc.poll() is not None  # killed and reaped


def test_the_worker_exits_when_its_parent_closes_stdin(tmp_path):
    """The child's watchdog: end of stdin (the parent closed it, or died) ends the child,
    even in the middle of its work (here an import that would take a minute)."""
    module = tmp_path / "slow_module.py"
    module.write_text("import time\ntime.sleep(60)\n")
    job = pickle.dumps({"sys_path": [], "path": str(module), "module": "slow_module_x",
                        "signatures": {}, "nice": 0})
    proc = subprocess.Popen([sys.executable, tiered.WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(len(job).to_bytes(8, "little") + job)
    proc.stdin.flush()
    time.sleep(0.5)
    start = time.monotonic()
    proc.stdin.close()
    try:
        code = proc.wait(timeout=20)
    finally:
        proc.kill()
    assert code == 3 and time.monotonic() - start < 20


def test_other_backends_ignore_tiering():
    w, f = _step(mg.Mode(backend="numpy", linker="tiered"))
    assert not isinstance(f._safe_run, tiered.TieredPhase)
    assert f(np.ones(6)) == pytest.approx(
        float((1 / (1 + np.exp(-(np.linspace(-1.0, 1.0, 6) * 2.0))) + 1.5).sum()))


def test_mode_accepts_the_tiered_linker():
    assert mg.Mode(linker="tiered").linker == "tiered"
    assert "tiered" in repr(mg.Mode(linker="tiered"))
    assert os.path.exists(tiered.WORKER)


def test_binding_the_helpers_is_spread_over_calls_on_the_generated_linker():
    """After the load, each call binds one helper address (a cache load) and runs the
    generated phase; the segments run once every address is bound. A helper that cannot
    be bound leaves the function on the generated linker."""
    calls = []

    class FakeJit:
        compiled = ["segment"]
        namespace = {"jit0": True}

        def __call__(self, *values):
            calls.append(("jit", values))
            return "jit"

    def plain(*values):
        calls.append(("plain", values))
        return "plain"

    phase = tiered.TieredPhase(plain, FakeJit)
    phase.jit, phase.state = FakeJit(), "binding"
    bound = []

    def steps():
        for key in ("a", "b", "c"):
            bound.append(key)
            yield key

    phase._binding = steps()
    results = [phase(k) for k in range(5)]
    assert results == ["plain", "plain", "plain", "jit", "jit"]
    assert bound == ["a", "b", "c"] and phase.state == "jit"

    def broken():
        yield "a"
        raise RuntimeError("no such helper")

    phase = tiered.TieredPhase(plain, FakeJit)
    phase.jit, phase.state, phase._binding = FakeJit(), "binding", broken()
    assert [phase(k) for k in range(3)] == ["plain", "plain", "plain"]
    assert phase.state == "plain for good" and "no such helper" in phase.why
