"""The compiled row loop of a rule registered through ``kernels.rule_drivers.register_rule``
(``CompiledRule``, the numba backend's kernel) against the NumPy driver built from the same
``update``: lazy and exact mode (a schedule's lr and weight decay per skipped step, gaps
of thousands of steps), both dtypes, a catch-up without a gradient, the guard's stop and
restore; the loop comes from a generated file in the cache directory and a second process
loads it from Numba's disk cache; a rule that cannot be imported by name falls back to
the NumPy driver."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kernels import row_kernels
from kernels.reference.history import StepHistory

pytest.importorskip("numba", reason="the compiled loop needs Numba")
import minigrad.optim.adamax  # noqa: E402,F401  (registers the rule)
from kernels.row_guard import RowGuard  # noqa: E402
from kernels.rule_drivers import CompiledRule  # noqa: E402

HYPER = dict(beta1=0.9, beta2=0.99, eps=1e-8)
V, D, T = 30, 5, 2500


@pytest.fixture(scope="module")
def kernels():
    compiled = row_kernels._TABLE[("adamax", "numba")]
    assert isinstance(compiled, CompiledRule) and compiled.loop() is not None
    return compiled, compiled.fallback


def _history(with_wd):
    h = StepHistory()
    h.restart(0)
    for s in range(1, T + 1):  # a decaying, restarting lr (and a weight decay per step)
        h.record(s, 0.01 * (0.5 + 0.5 * np.cos(np.pi * (s % 400) / 400)),
                 0.01 * (s % 3) if with_wd else 0.0)
    return h


@pytest.fixture(scope="module")
def history():
    return _history(True)


@pytest.fixture(scope="module")
def history_no_wd():
    """For float32: with L2 decay a long zero-gradient replay drives p to oscillate around
    0 by about lr (u decays to eps), which amplifies each rounding; both loops are then
    right to float32 rounding but not close to each other."""
    return _history(False)


def _tables(rng, dtype):
    P = rng.normal(size=(V, D))
    m = rng.normal(size=(V, D)) * 0.1
    u = rng.random((V, D)) + 0.1
    m[3], u[3] = 0.0, 0.0  # never touched
    last = rng.integers(0, T, V).astype(np.int64)
    last[:5] = 0  # gaps of up to T steps
    last[5:8] = T - 1  # no gap
    return [a.astype(dtype) for a in (P, m, u)], last


def _call(fn, tables, idx, G, t, last, h, wd, guard=None):
    lr, w = (h.at(t) if last is not None else (0.01, wd))
    return fn(*tables, idx, G, t, last, lr=lr, weight_decay=w, history=h, guard=guard,
              **HYPER)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["exact", "exact-catch-up", "lazy"])
def test_compiled_loop_equals_the_numpy_driver(kernels, history, history_no_wd, mode, dtype):
    compiled, driver = kernels
    if dtype == np.float32:
        history = history_no_wd
    rng = np.random.default_rng(1)
    base, last = _tables(rng, dtype)
    idx = np.sort(rng.choice(V, 20, replace=False)).astype(np.int64)
    G = None if mode == "exact-catch-up" else rng.normal(size=(20, D)).astype(dtype)
    lasts = None if mode == "lazy" else last
    got, want = [a.copy() for a in base], [a.copy() for a in base]
    got_last, want_last = (None, None) if lasts is None else (last.copy(), last.copy())
    assert _call(compiled, got, idx, G, T, got_last, history, 0.01) == -1
    assert _call(driver, want, idx, G, T, want_last, history, 0.01) == -1
    # float32: the loop computes each element in float64 and rounds once a step, the
    # NumPy driver in float32 throughout (2,500 replayed steps: a few ulp apart)
    rtol, atol = (1e-13, 1e-300) if dtype == np.float64 else (1e-5, 1e-7)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    if lasts is not None:
        np.testing.assert_array_equal(got_last, want_last)
    assert not np.array_equal(got[0][idx], base[0][idx])
    untouched = np.setdiff1d(np.arange(V), idx)
    for a, b in zip(got, base):
        np.testing.assert_array_equal(a[untouched], b[untouched])


def test_guarded_compiled_loop_stops_and_restores(kernels, history):
    """A gradient whose update overflows in one row: the loop stops there, says so, and
    ``restore()`` gives back every table and ``last`` bitwise."""
    compiled, _ = kernels
    rng = np.random.default_rng(2)
    tables, last = _tables(rng, np.float64)
    idx = np.array([0, 5, 12, 19], dtype=np.int64)
    G = rng.normal(size=(4, D))
    G[2, 1] = np.inf
    before = [a.copy() for a in tables] + [last.copy()]
    guard = RowGuard()
    assert _call(compiled, tables, idx, G, T, last, history, 0.0, guard) == 2
    assert guard.bad_row() == 12 and guard.written == 3
    guard.restore()
    for a, b in zip(tables + [last], before):
        np.testing.assert_array_equal(a, b)


def _not_importable_update(p, m, u, g, s, lr, wd, beta1, beta2, eps):
    return p - lr * g, m, u


def test_a_rule_not_importable_by_name_runs_the_numpy_driver():
    calls = []

    def fallback(*args, **kwargs):
        calls.append(1)
        return -1

    def local_update(p, m, u, g, s, lr, wd, beta1, beta2, eps):  # a closure: no import
        return p - lr * g, m, u

    rule = CompiledRule("local", local_update, ("m", "u"), frozenset(HYPER), [True, True],
                        fallback)
    assert rule.loop() is None
    P = np.ones((2, 2))
    rule(P, P.copy(), P.copy(), np.array([0]), np.ones((1, 2)), 1, None, lr=0.1,
         weight_decay=0.0, **HYPER)
    assert calls == [1]


#: a user's rule file: the one place the rule is written
_USER_RULE = """
import numpy as np


def update(p, v, g, s, lr, wd, rho):
    v = rho * v + (1.0 - rho) * np.abs(g)
    return p * (1.0 - lr * wd) - lr * g / (v + 1.0), v
"""

_CHILD = """
import json, sys
import numpy as np
from kernels.rule_drivers import register_rule
from kernels import row_kernels
import user_rule
register_rule("user_rule", user_rule.update, ("v",), ("rho",))
rule = row_kernels._TABLE[("user_rule", "numba")]
P, v = np.ones((4, 3)), np.zeros((4, 3))
rule(P, v, np.array([1, 2]), np.full((2, 3), 0.5), 1, None, lr=0.1, weight_decay=0.01,
     rho=0.9)
loop = rule.loop()
print(json.dumps({"file": sys.modules[loop.__module__].__file__,
                  "hits": sum(loop.stats.cache_hits.values()),
                  "misses": sum(loop.stats.cache_misses.values()), "p": P.tolist()}))
"""


def test_the_loop_is_cached_on_disk_across_processes(tmp_path):
    """Two fresh processes, one cache directory, a rule in a user's file: the first
    compiles the generated loop (a file under ``<cache>/rule_drivers``), the second loads
    it from Numba's disk cache; both give the rows of the rule's formula."""
    (tmp_path / "user_rule.py").write_text(_USER_RULE)
    env = {**os.environ, "MINIGRAD_CACHE_DIR": str(tmp_path / "cache")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, str(tmp_path), env.get("PYTHONPATH", "")])
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                             text=True, timeout=300, cwd=root)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["file"] == second["file"]
    assert first["file"].startswith(os.path.join(str(tmp_path), "cache", "rule_drivers"))
    assert first["misses"] >= 1 and first["hits"] == 0
    assert second["hits"] >= 1 and second["misses"] == 0
    v = 0.1 * 0.5
    want = 1.0 * (1 - 0.1 * 0.01) - 0.1 * 0.5 / (v + 1.0)
    assert first["p"] == second["p"]
    np.testing.assert_allclose(first["p"][1], [want] * 3, rtol=1e-15)
    assert first["p"][0] == [1.0, 1.0, 1.0]
