"""Exact-mode Adam: a row the step's read caught up the general way is not caught up again.

``kernels.cpu.fresh.fresh_adam`` keeps the rows whose catch-up has no closed form (a tiny
``v`` where ``m`` is not 0) on the history, and the step's update (``_adam_exact``) takes
them instead of recomputing (kernels/cpu/caught_up.py). These tests run the same training
with the kept rows taken and with them ignored (``take`` given no history: the two
catch-ups of before) and require every table, ``last`` and the losses bitwise equal; that
the kept rows are really taken (a corrupted copy changes the result); that a row written
between the read and the update is recomputed; and that a call failing after the read
leaves everything bitwise unchanged.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the kept rows are the Numba kernels' (kernels/cpu)")

import kernels.cpu.caught_up as caught_up  # noqa: E402
import kernels.cpu.optim as cpu_optim  # noqa: E402
import minigrad as mg  # noqa: E402
from minigrad.optim import schedules  # noqa: E402

JIT = mg.Mode(backend="numba", linker="jit")
NUMBA = mg.Mode(backend="numba")  # (whatever MINIGRAD_BACKEND says: these are its kernels)
V, D = 48, 4

CASES = {
    "adam": (mg.optim.Adam, dict(lr=0.05)),
    "adamw_schedule": (mg.optim.AdamW, dict(lr=schedules.ExponentialLR(0.05, 0.99),
                                           weight_decay=0.1)),
    "amsgrad": (mg.optim.Adam, dict(lr=0.05, amsgrad=True)),
}


def _model(case, mode=NUMBA, nan_guard=None):
    """``((E[idx] @ w) * sc - y) ** 2``: ``sc`` (an input) scales some rows' gradients to
    ~1e-9, so their ``v`` is tiny (the read's general catch-up)."""
    cls, kw = CASES[case]
    rng = np.random.default_rng(0)
    E = mg.shared(rng.standard_normal((V, D)).astype(np.float32), name="E")
    w = mg.shared(rng.standard_normal(D).astype(np.float32), name="w")
    idx, sc, y = mg.lvector("idx"), mg.vector("sc", "float32"), mg.vector("y", "float32")
    cost = ((((E[idx] @ w) * sc) - y) ** 2).mean()
    opt = cls([E, w], sparse="exact", **kw)
    fn = mg.function([idx, sc, y], cost, updates=opt.updates(cost), mode=mode,
                     nan_guard=nan_guard)
    return fn, opt


def _batches(n=60):
    r = np.random.default_rng(1)
    out = []
    for t in range(n):
        idx = r.choice(8, 4) if t < n // 3 else r.integers(0, V, 6)  # long gaps, then many
        sc = np.where(idx % 3 == 0, 1e-9, 1.0).astype(np.float32)  # every 3rd row tiny
        out.append((idx, sc, r.standard_normal(idx.shape[0]).astype(np.float32)))
    return out


def _everything(opt):
    """Every table (parameter, states, ``last``) and step counter, read without a flush."""
    out = [v._value.copy() for ps in opt.param_states for v in ps.table_vars(True)]
    return out + [np.array(ps.step._value) for ps in opt.param_states]


def _assert_bitwise(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


@pytest.fixture
def taken(monkeypatch):
    """``take`` counting the kept rows it hands over; ``state["mode"]``: "on" (as the
    kernels do), "off" (ignore them: the update recomputes), "corrupt" (hand over a
    changed copy of the caught-up rows)."""
    state = {"mode": "on", "rows": 0}
    real = caught_up.take

    def take(history, key, dtype, width):
        kept = real(history, key, dtype, width)
        state["rows"] += kept[0].shape[0]
        if state["mode"] == "off":
            return real(None, key, dtype, width)
        if state["mode"] == "corrupt" and kept[0].shape[0]:
            return (*kept[:-1], kept[-1] + np.asarray(1.0, dtype))
        return kept

    monkeypatch.setattr(cpu_optim, "take", take)
    return state


@pytest.mark.parametrize("mode", [NUMBA, JIT], ids=["default", "jit"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kept_rows_give_the_recomputed_catch_up_bitwise(taken, case, mode):
    results = {}
    for m in ("off", "on"):
        taken["mode"], taken["rows"] = m, 0
        fn, opt = _model(case, mode)
        losses = [float(fn(*b)) for b in _batches()]
        results[m] = (np.array(losses), _everything(opt))
    assert taken["rows"] > 0, "no row took the read's general catch-up: the test tests nothing"
    assert results["on"][0].tobytes() == results["off"][0].tobytes()
    _assert_bitwise(results["on"][1], results["off"][1])


def test_kept_rows_are_taken(taken):
    """The check above can fail: a changed copy of the kept rows changes the tables."""
    out = {}
    for m in ("on", "corrupt"):
        taken["mode"] = m
        fn, opt = _model("adam")
        for b in _batches():
            fn(*b)
        out[m] = _everything(opt)[0]
    assert not np.array_equal(out["on"], out["corrupt"])


@pytest.mark.parametrize("written", [False, True])
def test_a_row_written_after_the_read_is_caught_up_again(taken, written):
    """An evaluation read keeps rows; the table is then written behind the optimizer's
    back (``written``) before an update that reads nothing (``ParamState.run``, as
    ``RowUpdate`` calls it): that update must not take the kept, stale, result. With
    a corrupted copy handed over, the update equals the recomputing one exactly when the
    rows were written (they are recomputed), and differs when not (they are taken)."""
    import kernels.cpu as cpu

    results = {}
    for m in ("off", "corrupt"):
        taken["mode"] = "on"
        fn, opt = _model("adam")
        E, ps = opt.param_states[0].param, opt.param_states[0]
        idx = mg.lvector("i")
        read = mg.function([idx], E[idx], mode=NUMBA)
        for b in _batches():
            fn(*b)
        every = np.arange(V)
        read(every)  # keeps the lagging tiny-v rows, at the table's step
        assert ps.history.caught_up is not None
        tables = [v._value for v in ps.table_vars(True)]
        if written:
            tables[0][every] *= np.float32(1.5)  # (raw: no flush, no change of last)
        grad = np.full((V, D), 1e-3, dtype=np.float32)
        taken["mode"] = m
        ps.run(cpu, tables, every, grad, int(ps.step._value) + 1, 0.05, 0.0, True)
        results[m] = _everything(opt)
    if written:
        _assert_bitwise(results["corrupt"], results["off"])
    else:
        assert not np.array_equal(results["corrupt"][0], results["off"][0])


def test_failed_call_after_the_read_leaves_everything_and_the_next_step_bitwise():
    ref, ref_opt = _model("adam", JIT, nan_guard=True)
    fn, opt = _model("adam", JIT, nan_guard=True)
    batches = _batches()
    for b in batches[:-1]:
        ref(*b)
        fn(*b)
    before = _everything(opt)
    idx, sc, y = batches[-1]
    with np.errstate(over="ignore"):
        inf_y = y * np.float32(1e38) * np.float32(1e38)
    with pytest.raises(FloatingPointError), np.errstate(all="ignore"):
        fn(idx, sc, inf_y)  # the read runs, then the cost is inf (nan_guard raises)
    _assert_bitwise(_everything(opt), before)
    assert float(fn(*batches[-1])) == float(ref(*batches[-1]))
    _assert_bitwise(_everything(opt), _everything(ref_opt))
