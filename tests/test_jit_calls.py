"""Jit segments call their helpers through addresses (``minigrad/backends/jit_calls.py``).

Nothing of a helper is linked into a segment; each segment's module holds one address per
helper it calls, bound per process. These tests check that the mechanism is the one in
use, that a segment whose addresses are not bound yet (a fresh process loading it from
the cache) binds them and gives the same values, that helper exceptions propagate, and
that the generated source is the same in every process (else the cache misses).
Graphs are tiny: each new segment is a Numba compile.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minigrad as mg

numba = pytest.importorskip("numba", reason="the jit linker compiles with numba")

from minigrad.backends import jit_calls  # noqa: E402
from minigrad.fgraph import FunctionGraph  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JIT = mg.Mode(backend="numba", linker="jit")  # also under MINIGRAD_BACKEND=numpy


@pytest.fixture(scope="module")
def step():
    """A small training step on the jit linker, called once (compiled or loaded)."""
    rng = np.random.default_rng(0)
    W = mg.shared(rng.standard_normal((4, 3)), name="W")
    b = mg.shared(np.zeros(3), name="b")
    x, y = mg.matrix("x"), mg.lvector("y")
    cost = mg.nn.cross_entropy(mg.dot(x, W) + b, y)
    updates = mg.optim.SGD([W, b], 0.1).updates(cost)
    fn = mg.function([x, y], cost, updates=updates, mode=JIT)
    ref = mg.function([x, y], cost, mode=mg.Mode(backend="numpy"))
    data = (rng.standard_normal((5, 4)), np.array([0, 2, 1, 1, 0]))
    first_ref = ref(*data)
    first = fn(*data)
    assert fn._safe_run.jit_fallbacks == [], fn._safe_run.jit_fallbacks
    return fn, ref, data, float(first), float(first_ref), (W, b)


def test_segments_link_no_helper(step):
    fn = step[0]
    source = fn._safe_run.source
    assert "from minigrad.backends.jit_calls import F, J" in source
    assert "from kernels.cpu" not in source  # the plain-call import is gone
    for dispatcher in fn._safe_run.compiled:
        assert dispatcher.overloads, "the segment did not compile"
        for cres in dispatcher.overloads.values():
            linked = [lib.name for lib in cres.library._linking_libraries]
            assert linked in ([], ["nrt"]), f"helpers linked in: {linked}"
            mod = cres.library._get_module_for_linking()
            names = [gv.name for gv in mod.global_variables]
            assert any(n.startswith(jit_calls.ADDR) for n in names), names


def test_first_call_matches_reference(step):
    _, _, _, first, first_ref, _ = step
    assert first == pytest.approx(first_ref, rel=1e-12)


def _address_slots(dispatcher):
    for name, address_of in jit_calls.segment_globals(dispatcher, jit_calls.ADDR):
        yield ctypes.c_void_p.from_address(address_of(name))


def test_unbound_segment_binds_at_its_call_and_gives_the_same_values(step, monkeypatch):
    fn, ref, data, _, _, params = step
    dispatcher = fn._safe_run.compiled[0]
    slots = list(_address_slots(dispatcher))
    assert slots and all(s.value for s in slots), "addresses should be bound after a call"
    saved = [p.get_value().copy() for p in params]
    expected = float(ref(*data))
    bound = []
    real_bind = jit_calls.bind
    monkeypatch.setattr(jit_calls, "bind", lambda d: bound.append(d) or real_bind(d))
    for s in slots:  # as a fresh process finds them after loading the cache
        s.value = None
    got = float(fn(*data))
    assert bound == [dispatcher]
    assert all(s.value for s in slots)
    assert got == pytest.approx(expected, rel=1e-12)
    assert fn._safe_run.jit_fallbacks == []
    for p, v in zip(params, saved):  # the step ran once (SGD moved the parameters)
        assert not np.array_equal(p.get_value(), v)


def _recorded_helpers(dispatcher):
    """The ``(module, qualname, argtypes, symbol)`` each helper call of a segment recorded."""
    for name, address_of in jit_calls.segment_globals(dispatcher, jit_calls.SIG):
        yield jit_calls.recorded_helper(address_of(name))


def test_binding_ignores_the_compiling_process_unique_id(step):
    """A segment cached by another process records its helpers' mangled names with that
    process's unique ids (``...B2v2B56...``); this process's helper, loaded from its own
    cache, may be ``...B2v1B56...``. Binding looks up this process's symbol: it used to
    fail ("has no symbol") and leave the function on its thunks for good."""
    recorded = list(_recorded_helpers(step[0]._safe_run.compiled[0]))
    assert recorded
    for module, qualname, argtypes, target in recorded:
        # the ABI tag "B<length>v<id>B": another process's id
        other = re.sub(r"B(\d+)v(\d+)B", lambda m: f"B{len(str(int(m[2]) + 1)) + 1}v"
                       f"{int(m[2]) + 1}B", target, count=1)
        assert other != target, target
        here = jit_calls.helper_address(module, qualname, argtypes, target)
        assert here and jit_calls.helper_address(module, qualname, argtypes, other) == here
    with pytest.raises(RuntimeError, match="unknown helper module"):
        jit_calls.helper_address("os", "system", (), "x")


def _unbound_broadcast_segment():
    """A fresh one-helper segment, checked to refuse running before it is bound."""
    from numba import njit

    broadcast = jit_calls.helpers("kernels.cpu.jit_ops").broadcast_1d

    @njit
    def segment(g, n):
        return broadcast(g, n)

    with pytest.raises(RuntimeError, match="not bound"):
        segment(np.arange(3.0), 3)
    return segment


def _check_broadcast_segment(segment):
    g = np.arange(3.0)
    np.testing.assert_array_equal(segment(g, 3), g)
    np.testing.assert_array_equal(segment(g[:1], 4), np.zeros(4))
    with pytest.raises(ValueError, match="cannot broadcast"):
        segment(g, 5)  # raised inside the helper's code, through the caller's status code


def test_helper_exception_propagates_through_the_address():
    segment = _unbound_broadcast_segment()
    assert jit_calls.bind(segment) == 1
    _check_broadcast_segment(segment)


def test_segment_call_raises_other_runtime_errors_unchanged():
    class Boom:
        def __call__(self, *args):
            raise RuntimeError("something else")

    seg = jit_calls.BoundSegment(Boom())
    with pytest.raises(RuntimeError, match="something else"):
        seg(1)


def test_leaves_in_creation_order_not_object_addresses():
    a, b = mg.vector("a"), mg.vector("b")
    s = [mg.shared(np.ones(3), name=f"s{i}") for i in range(12)]
    out = a * s[4] + b * s[1] + s[5] * s[0]
    for k in (11, 3, 9, 7, 2, 10, 6, 8):
        out = out + s[k]
    fg = FunctionGraph([b, a], [out], clone=False)
    assert fg.leaves() == [b, a] + [s[k] for k in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)]


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import minigrad as mg
    from minigrad.backends import helper_bundle, jit_calls
    helper_bundle.MIN_HELPERS = int(sys.argv[2])  # bundle even this tiny segment's helpers
    used = []
    real = jit_calls.bind_from_bundle
    jit_calls.bind_from_bundle = lambda slots: used.append(real(slots)) or used[-1]
    x = mg.matrix("x")
    junk = [mg.vector() for _ in range(int(sys.argv[1]))]  # other object addresses
    w = mg.shared(np.linspace(-1, 1, 12).reshape(4, 3), name="w")
    y = mg.sigmoid(mg.dot(x, w)).sum() + (x * x).mean()
    f = mg.function([x], [y, mg.grad(y, w)], mode=mg.Mode(backend="numba", linker="jit"))
    helpers_at_compile = "kernels.cpu.jit_ops" in sys.modules
    out = f(np.linspace(0, 1, 20).reshape(5, 4))
    helpers_at_call = "kernels.cpu.jit_ops" in sys.modules
    again = f(np.linspace(0, 1, 20).reshape(5, 4))  # a bundle is started at a 2nd call
    assert float(again[0]) == float(out[0])
    d = f._safe_run.compiled[0]
    helper_bundle.wait()  # a bundle being written beside the call (it would at exit too)
    print(json.dumps({"file": f._safe_run.segment_file, "y": float(out[0]),
                      "g": np.asarray(out[1]).tolist(),
                      "hits": sum(d.stats.cache_hits.values()),
                      "fallbacks": len(f._safe_run.jit_fallbacks),
                      "from_bundle": any(used), "helpers_at_compile": helpers_at_compile,
                      "helpers_at_call": helpers_at_call,
                      "prepared": not jit_calls._UNPREPARED, "bundles": sorted(
                          os.listdir(helper_bundle.bundle_dir())
                          if os.path.isdir(helper_bundle.bundle_dir()) else [])}))
""").replace("import json, sys", "import json, os, sys")


def test_fresh_process_loads_binds_and_runs_the_cached_segment(tmp_path):
    """Three processes on one cache: the first compiles the segment and binds its helpers
    one by one; the second loads the segment, binds one by one (its helpers' mangled names
    are not the first process's) and writes the helpers' bundle in a thread; the third
    binds from the bundle. Same bits in all three.

    No compile imports the helpers' module; only the first process, which compiles the
    segment, makes the helpers' intrinsics, and the third never imports the helpers."""
    import json

    env = dict(os.environ, MINIGRAD_CACHE_DIR=str(tmp_path),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs = []
    for junk in (0, 37, 5):
        out = subprocess.run([sys.executable, "-c", _CHILD, str(junk), "1"],
                             env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second, third = runs
    assert first["file"] == second["file"] == third["file"]  # the same source everywhere
    assert first["fallbacks"] == second["fallbacks"] == third["fallbacks"] == 0
    assert second["hits"] == third["hits"] == 1  # loaded from the cache, not compiled
    assert not first["from_bundle"] and first["bundles"] == []  # a compile writes none
    assert not second["from_bundle"] and len(second["bundles"]) == 1
    assert third["from_bundle"]
    assert not any(run["helpers_at_compile"] for run in runs)
    assert first["prepared"] and not second["prepared"] and not third["prepared"]
    assert not third["helpers_at_call"]
    assert second["y"] == first["y"] and second["g"] == first["g"]
    assert third["y"] == first["y"] and third["g"] == first["g"]


# --- helper bundles, in this process --------------------------------------------------


@pytest.fixture
def bundles(tmp_path, monkeypatch):
    """Bundles on for any segment (the step's few helpers), written under ``tmp_path``."""
    from minigrad.backends import helper_bundle

    monkeypatch.setattr(helper_bundle, "MIN_HELPERS", 1)
    monkeypatch.setattr(helper_bundle, "_DISABLED", False)
    monkeypatch.setattr(helper_bundle, "bundle_dir", lambda: str(tmp_path / "bundles"))
    return helper_bundle


def _run_from(params, values, fn, data):
    for p, v in zip(params, values):
        p.set_value(v.copy())
    out = float(fn(*data))
    return out, [p.get_value().copy() for p in params]


def test_bundle_binds_to_the_same_bits_and_a_damaged_one_is_never_loaded(step, bundles,
                                                                           monkeypatch):
    fn, ref, data, _, _, params = step
    dispatcher = fn._safe_run.compiled[0]
    start = [p.get_value().copy() for p in params]
    monkeypatch.setattr(bundles, "_DISABLED", True)
    for s in _address_slots(dispatcher):
        s.value = None
    one_by_one = _run_from(params, start, fn, data)
    singles = [s.value for s in _address_slots(dispatcher)]
    monkeypatch.setattr(bundles, "_DISABLED", False)
    path = jit_calls.write_bundle(dispatcher)
    assert path and os.path.isfile(path)
    for s in _address_slots(dispatcher):
        s.value = None
    from_bundle = _run_from(params, start, fn, data)
    bundled = [s.value for s in _address_slots(dispatcher)]
    assert all(bundled) and not set(bundled) & set(singles)  # the bundle's own code ran
    assert from_bundle[0] == one_by_one[0]
    for a, b in zip(from_bundle[1], one_by_one[1]):
        np.testing.assert_array_equal(a, b)
    assert fn._safe_run.jit_fallbacks == []

    import pickle

    labels = [bundles.helper_label(*rec[:3]) for _, rec in jit_calls.helper_slots(dispatcher)]
    monkeypatch.setattr(bundles, "_LOADED", {})  # as a fresh process would read it
    raw = bytearray(open(path, "rb").read())
    obj = pickle.loads(bytes(raw))["object"]
    at = raw.find(obj[len(obj) // 2:len(obj) // 2 + 64])
    assert at > 0
    raw[at] ^= 0xFF  # one flipped byte in the object code: the file still unpickles
    with open(path, "wb") as fh:
        fh.write(raw)
    assert bundles.load(labels) is None
    with open(path, "wb") as fh:
        fh.write(b"not a bundle")
    assert bundles.load(labels) is None
    assert bundles.load(labels[:1] + ["kernels.cpu.jit_ops.other(int64)"]) is None  # no file
    for s in _address_slots(dispatcher):
        s.value = None
    expected = float(ref(*data))
    assert float(fn(*data)) == pytest.approx(expected, rel=1e-12)  # bound one by one
    assert fn._safe_run.jit_fallbacks == []


def test_bundle_key_names_the_helpers_and_their_order_does_not_matter(bundles):
    a, b = "kernels.cpu.jit_ops.exp(float64)", "kernels.cpu.jit_ops.log(float64)"
    assert bundles.bundle_key([a, b]) == bundles.bundle_key([b, a, a])
    assert bundles.bundle_key([a, b]) != bundles.bundle_key([a])


def test_helper_exception_propagates_from_a_bundle(bundles):
    segment = _unbound_broadcast_segment()
    assert jit_calls.write_bundle(segment)  # one helper: MIN_HELPERS is 1 here
    assert jit_calls.bind(segment) == 1
    (slot, _), = jit_calls.helper_slots(segment)
    single = jit_calls.helper_address(*jit_calls.helper_slots(segment)[0][1])
    assert ctypes.c_void_p.from_address(slot).value not in (None, single)  # the bundle's
    _check_broadcast_segment(segment)
