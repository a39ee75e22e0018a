"""The jit linker (``Mode(linker="jit")``, numba backend): compiled segments give the
reference's values, gradients, errors and atomicity; the generated code is cached on disk.

Numba compiles each new segment at its first call (seconds on a cold cache), so the op
table is compiled in a few groups of cases rather than one function per case, and the
training steps use small tables.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg

numba = pytest.importorskip("numba", reason="the jit linker compiles with numba")

JIT = mg.Mode(backend="numba", linker="jit")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plain(v):
    return v.to_dense() if isinstance(v, mg.RowSparse) else np.asarray(v)


def _no_fallbacks(fn):
    assert fn._safe_run.jit_fallbacks == [], fn._safe_run.jit_fallbacks


# --- the op test table, values and gradients ---------------------------------------------


#: one case per emitter family of the gradient-check table (broadcast and keepdims
#: patterns, reductions, gathers); each group is one Numba compile on a cold cache.
#: ``MINIGRAD_JIT_FULL_TABLE=1`` runs all 144 cases (minutes of compiling).
SUBSET = ["unary-sigmoid", "unary-softplus", "unary-log1p", "unary-relu", "add-(3, 1)-(1, 4)",
          "truediv-(3, 4)-()", "pow-(3, 4)-(3, 4)", "maximum", "astype", "sum-None-True",
          "sum-(0, 2)-True", "mean-0-False", "transpose-axes", "expand_dims-many",
          "matmul-(3, 4)-(4, 5)", "cross_entropy", "take-2d", "take-vector-table"]
SUBSET32 = ["unary-tanh", "add-(4,)-(3, 4)", "mean--1-True", "log_softmax--1", "take-1d"]
#: cases per group: a segment's cold compile grows much faster than its size (CPU seconds,
#: cold: the 18 float64 cases as one segment 114.5 s, as 2 of 9 13.8 s, 3 of 6 12.5 s, 6
#: of 3 12.7 s; the 5 float32 cases as one 23.0 s, as 3 + 2 3.3 s)
GROUP_SIZE = 3


def _groups(dtype, label, names):
    return {f"{label}-{k}": (dtype, names[i:i + GROUP_SIZE])
            for k, i in enumerate(range(0, len(names), GROUP_SIZE))}


GROUPS = {**_groups("float64", "float64", SUBSET), **_groups("float32", "float32", SUBSET32)}
if os.environ.get("MINIGRAD_JIT_FULL_TABLE"):
    from test_ops_grad import CASES as _ALL  # noqa: E402

    GROUPS.update(_groups("float64", "all", [c[0] for c in _ALL]))


def _cases(names):
    from test_ops_grad import CASES  # tests/ is on sys.path under pytest

    by_name = {c[0]: c for c in CASES}
    missing = [n for n in names if n not in by_name]
    assert not missing, f"cases renamed in test_ops_grad.py: {missing}"
    return [by_name[n] for n in names]


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_op_table_jit_equals_the_reference(group):
    """Cases of the gradient-check table (broadcasting, keepdims, reductions, row gathers
    with row-sparse gradients, ...): values and gradients of the jit linker equal the
    NumPy reference run by the VM with every rewrite off. A group of cases is one
    compiled function (one Numba compile)."""
    dtype, names = GROUPS[group]
    symbols, outs, feeds, counts = [], [], [], []
    for name, fn, points in _cases(names):
        points = [np.asarray(p).astype(dtype) if np.asarray(p).dtype == np.float64
                  else np.asarray(p) for p in points]
        syms = [mg.tensor(f"{name}{k}", dtype=p.dtype.name, shape=(None,) * p.ndim)
                for k, p in enumerate(points)]
        out = fn(*syms)
        value = mg.function(syms, out, backend="numpy")(*points)
        weights = np.linspace(0.5, 1.5, value.size).reshape(value.shape).astype(out.dtype)
        cost = (out * mg.constant(weights)).sum()
        wrt = [s for s, p in zip(syms, points) if p.dtype.kind == "f"]
        grads = mg.grad(cost, wrt, disconnected="zero")
        symbols += syms
        feeds += points
        outs += [out, *grads]
        counts.append((name, 1 + len(grads)))
    plain = mg.Mode(backend="numpy", linker="vm",
                    exclude=("canonicalize", "specialize", "fuse", "inplace"))
    want = mg.function(symbols, outs, mode=plain)(*feeds)
    f = mg.function(symbols, outs, mode=JIT)
    got = f(*feeds)
    _no_fallbacks(f)
    assert f._safe_run.segments, "nothing was compiled"
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=1e-6)
    k = 0
    for name, n in counts:
        for a, b in zip(got[k:k + n], want[k:k + n]):
            assert _plain(a).dtype == _plain(b).dtype, name
            assert _plain(a).shape == _plain(b).shape, name
            np.testing.assert_allclose(_plain(a), _plain(b), err_msg=name, **tol)
        k += n


def test_integer_and_bool_arithmetic_keep_numpy_dtypes():
    i = mg.tensor("i", dtype="int32", shape=(None,))
    j = mg.lvector("j")
    x = mg.vector("x")
    outs = [i + i, i * j, i / j, (x > 0.5), mg.cast(i, "float32") * 2.0, (i * 3).sum(),
            x.mean(), mg.cast(x > 0.0, "float64") + x]
    iv, jv = np.array([1, 2, -3], dtype=np.int32), np.array([4, 5, 6])
    xv = np.array([0.25, 0.75, -1.0])
    want = mg.function([i, j, x], outs, backend="numpy")(iv, jv, xv)
    f = mg.function([i, j, x], outs, mode=JIT)
    got = f(iv, jv, xv)
    _no_fallbacks(f)
    for a, b in zip(got, want):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)


# --- training steps: FM (CSR, SGD) and the masked-embedding classifier (lazy Adam) -------


def _direct_updates(fn):
    """How many row updates of ``fn`` call their compiled loop directly (direct_updates)."""
    from minigrad.direct_updates import _Direct

    phase = fn._guarded_phase if fn.update_driver is None else fn.update_driver.fallback_guarded
    return sum(isinstance(getattr(s, "call", None), _Direct) for s in phase._steps)


def _fm(mode, fuse=True):
    fm = mg.models.FactorizationMachine(30, 4, seed=0)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = fm.cost(X, y)
    opt = mg.optim.SGD(fm.params, lr=0.1)
    if not fuse:
        mode = mode.excluding("fuse")
    return fm, mg.function([X, y], cost, updates=opt.updates(cost), mode=mode)


def _fm_batches(n=5):
    return [(sp.random(8, 30, density=0.2, format="csr", random_state=k),
             (np.arange(8) % 2).astype(float)) for k in range(n)]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_fm_step_equals_the_reference_and_the_generated_linker(fuse):
    runs = {}
    for label, mode in (("numpy", mg.Mode(backend="numpy")),
                        ("generated", mg.Mode(backend="numba")), ("jit", JIT)):
        fm, step = _fm(mode, fuse)
        losses = [step(*b) for b in _fm_batches()]
        runs[label] = (losses, [p.get_value() for p in fm.params], step)
    _no_fallbacks(runs["jit"][2])
    assert len(runs["jit"][2]._safe_run.segments) == 1  # one compiled call, then thunks
    assert _direct_updates(runs["jit"][2]) == 3  # b, w, V into their compiled loops
    for other in ("numpy", "generated"):
        np.testing.assert_allclose(runs["jit"][0], runs[other][0], rtol=1e-12)
        for a, b in zip(runs["jit"][1], runs[other][1]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def _classifier(mode, dtype="float32", vocab=40):
    from benchmarks.floor import classifier

    model = classifier(vocab, 6, 3, seed=0, dtype=dtype)
    t, m, y = mg.lmatrix("t"), mg.matrix("m", dtype), mg.lvector("y")
    cost = model.cost(t, m, y)
    opt = mg.optim.Adam(model.params, lr=1e-2, sparse="lazy")
    return model, mg.function([t, m, y], cost, updates=opt.updates(cost), mode=mode)


def _emb_batches(dtype="float32", n=5, vocab=40):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, vocab, size=(4, 7))
        mask = (rng.random((4, 7)) < 0.7).astype(dtype)
        out.append((tokens, mask, rng.integers(0, 3, size=4)))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding_step_equals_the_reference(dtype):
    runs = {}
    for label, mode in (("numpy", mg.Mode(backend="numpy")), ("jit", JIT)):
        model, step = _classifier(mode, dtype)
        losses = [step(*b) for b in _emb_batches(dtype)]
        runs[label] = (losses, [p.get_value() for p in model.params], step)
    _no_fallbacks(runs["jit"][2])
    assert _direct_updates(runs["jit"][2]) == 4  # E, M, W, c into their compiled loops
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs["jit"][0], runs["numpy"][0], **tol)
    for a, b in zip(runs["jit"][1], runs["numpy"][1]):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("bad", ["label", "token", "mask shape", "state shape"])
def test_a_failing_call_raises_the_reference_error_and_changes_nothing(bad):
    """A bad label is found inside the compiled segment (after the forward nodes ran):
    the segment's Python thunks then raise the reference's message; no state moved."""
    errors = {}
    for label, mode in (("generated", mg.Mode(backend="numba")), ("jit", JIT)):
        model, step = _classifier(mode)
        batches = _emb_batches()
        step(*batches[0])
        tokens, mask, labels = batches[1]
        if bad == "label":
            labels = labels.copy()
            labels[2] = 3
        elif bad == "token":
            tokens = tokens.copy()
            tokens[1, 1], mask[1, 1] = 40, 1.0
        elif bad == "mask shape":  # (a C-order copy: a strided view would only add a
            mask = np.ascontiguousarray(mask[:, :-1])  # cold compile for its layout)
        else:  # found by PrepareRows, compiled into the segment (numba_jit._prepare_rows)
            state = next(v for v, _ in step.shared if v.name == "E.exp_avg_sq")
            state.set_value(np.zeros((41, 6), np.float32))
        before = [p.get_value().copy() for p in model.params]
        state = [np.array(s.get_value(), copy=True) for s in _optimizer_state(step)]
        with pytest.raises((IndexError, ValueError)) as info:
            step(tokens, mask, labels)
        errors[label] = (type(info.value), str(info.value))
        for a, b in zip(before, [p.get_value() for p in model.params]):
            assert a.tobytes() == b.tobytes()
        for a, b in zip(state, [s.get_value() for s in _optimizer_state(step)]):
            assert a.tobytes() == np.asarray(b).tobytes()
    assert errors["jit"] == errors["generated"]


def _optimizer_state(step):
    return [v for v, _ in step.shared if v.name is None or "." in (v.name or "")]


# --- structure: segments, order, source ------------------------------------------------


def test_uncovered_nodes_split_segments_and_a_covered_graph_is_one_call():
    x = mg.matrix("x")
    covered = mg.function([x], (mg.exp(x) * 2.0).sum(axis=1), mode=JIT)
    split = mg.function([x], mg.exp(mg.max(mg.exp(x) * 2.0, axis=1)).sum(), mode=JIT)
    xv = np.arange(6.0).reshape(2, 3) / 6
    np.testing.assert_allclose(covered(xv), (np.exp(xv) * 2).sum(axis=1))
    np.testing.assert_allclose(split(xv), np.exp((np.exp(xv) * 2).max(axis=1)).sum())
    assert len(covered._safe_run.segments) == 1
    assert len(covered._safe_run.segments[0]) == len(covered.nodes)
    assert len(split._safe_run.segments) == 2  # Max has no emitter: a thunk between
    src = split._safe_run.source
    assert "# segment 0" in src and "# segment 1" in src and "Max" in src
    assert "@njit(cache=True" in src and "def segment1(" in src


def test_a_strided_input_runs_in_the_segment_and_equals_the_reference():
    """A non-contiguous input (a column slice) reaches the compiled segment as it is (its
    own layout signature) and gives the reference's values: on a one-node-chain graph, so
    that this layout costs one small compile."""
    x = mg.matrix("x")
    f = mg.function([x], (mg.exp(x) * 2.0).sum(axis=1), mode=JIT)
    xv = (np.arange(12.0).reshape(3, 4) / 12)[:, ::2]
    assert not xv.flags.c_contiguous
    np.testing.assert_allclose(f(xv), (np.exp(xv) * 2).sum(axis=1), rtol=1e-12)
    _no_fallbacks(f)
    (segment,) = f._safe_run.compiled
    assert any(getattr(t, "layout", "") == "A" for sig in segment.signatures for t in sig)


def test_schedule_keeps_python_thunk_order_and_dependencies():
    from minigrad.linker_jit import schedule

    x = mg.vector("x")
    f = mg.function([x], [mg.exp(x).sum(), mg.max(x), mg.max(x * 2.0)], mode=JIT)
    nodes = f.nodes[: f.n_safe]
    cover = [type(n.op).__name__ != "Max" for n in nodes]
    groups = schedule(nodes, cover)
    order = [i for _, idx in groups for i in idx]
    assert sorted(order) == list(range(len(nodes)))
    position = {i: k for k, i in enumerate(order)}
    for i, node in enumerate(nodes):
        for j, other in enumerate(nodes):
            if set(other.outputs) & set(node.inputs):
                assert position[j] < position[i]
    maxes = [i for i in order if not cover[i]]
    assert maxes == sorted(maxes)


def test_mg_function_does_not_jit():
    x = mg.vector("x")
    f = mg.function([x], mg.tanh(x * 3.0 + 1.0).sum() * 0.5, mode=JIT)
    (segment,) = f._safe_run.compiled
    assert segment.signatures == []  # compiled at the first call, not by mg.function
    f(np.ones(3))
    assert len(segment.signatures) == 1


# --- the on-disk cache -----------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    import minigrad as mg
    x = mg.vector("x")
    f = mg.function([x], (mg.sigmoid(x * 2.0) + 1.5).sum(),
                    mode=mg.Mode(backend="numba", linker="jit"))
    value = float(f(np.linspace(-1, 1, 5)))
    (seg,) = f._safe_run.compiled
    print(json.dumps(dict(value=value, file=f._safe_run.segment_file,
                          hits=sum(seg.stats.cache_hits.values()),
                          misses=sum(seg.stats.cache_misses.values()))))
""")


def _child(cache_dir):
    import json

    env = dict(os.environ, MINIGRAD_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_segments_from_disk(tmp_path):
    cold = _child(tmp_path)
    warm = _child(tmp_path)
    assert cold["file"] == warm["file"] and os.path.dirname(cold["file"]).startswith(
        str(tmp_path))
    assert cold["misses"] == 1 and cold["hits"] == 0
    assert warm["hits"] == 1 and warm["misses"] == 0  # no compile in the second process
    assert cold["value"] == warm["value"]


def test_file_name_covers_the_source_and_the_kernels_it_calls(monkeypatch):
    from minigrad import linker_jit

    source = "def segment0(a):\n    return a\n"
    name, _ = linker_jit.file_name(source)
    assert linker_jit.file_name(source)[0] == name
    assert linker_jit.file_name(source + "\n")[0] != name
    monkeypatch.setattr(linker_jit, "_DIGEST", ["a changed kernels/cpu/jit_ops.py"])
    assert linker_jit.file_name(source)[0] != name


def test_unwritable_cache_falls_back_to_memory_with_a_warning(tmp_path, monkeypatch):
    from minigrad import linker_jit

    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(blocker))
    monkeypatch.setattr(linker_jit, "_MODULES", {})
    x = mg.vector("x")
    with pytest.warns(RuntimeWarning, match="not cached on disk"):
        f = mg.function([x], (x * 4.0 - 1.0).sum(), mode=JIT)
    assert f._safe_run.segment_file is None
    assert f(np.arange(3.0)) == pytest.approx(9.0)
