"""``trusted=True`` kernel calls (from compiled code): the O(rows) index checks are skipped,
the O(1) ones still run, so a table of the wrong shape, dtype or layout is still refused
with the full check's message (never a read out of bounds), and a good call gives the same
bits as the checked one."""
import numpy as np
import pytest

import kernels.reference as reference
from kernels.reference.history import StepHistory
from kernels.reference.optim import trusted_rows_args
from kernels.rules import momentum as momentum_rule

MODULES = [reference]
try:
    import kernels.cpu as cpu

    MODULES.append(cpu)
except ImportError:  # pragma: no cover - Numba missing
    pass


def _history(t):
    h = StepHistory(lambda lr, wd: momentum_rule.matrix(lr, 0.9, 0.0, False, wd))
    h.restart(0)
    for s in range(1, t + 1):
        h.record(s, 0.1 / s, 0.01)
    return h


def _tables(rng, V=12, width=3):
    return rng.standard_normal((V, width)), rng.standard_normal((V, width)) * 0.1


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("with_grad", [True, False])
def test_trusted_equals_checked(module, with_grad):
    rng = np.random.default_rng(0)
    P, B = _tables(rng)
    last = rng.integers(0, 5, P.shape[0]).astype(np.int64)
    idx = np.array([1, 4, 5, 9], dtype=np.int64)
    g = rng.standard_normal((4, 3)) if with_grad else None
    t = 7
    h = _history(t)
    out = []
    for trusted in (False, True):
        p, b, la = P.copy(), B.copy(), last.copy()
        module.momentum_rows(p, b, idx, g, t, la, 0.1 / t, 0.9, 0.0, False, 0.01, history=h,
                             trusted=trusted)
        out.append((p, b, la))
    for a, b in zip(*out):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_trusted_still_refuses_bad_tables(module):
    rng = np.random.default_rng(1)
    P, B = _tables(rng)
    idx = np.array([0, 2], dtype=np.int64)
    g = np.ones((2, 3))
    last = np.zeros(P.shape[0], dtype=np.int64)
    h = _history(1)
    bad_cases = {
        "short state": (P, B[:5], last),
        "float32 state": (P, B.astype(np.float32), last),
        "strided param": (np.asfortranarray(P), B, last),
        "short last": (P, B, last[:3]),
        "missing state": (P, None, last),
    }
    for name, (p, b, la) in bad_cases.items():
        before = [None if a is None else a.copy() for a in (p, b, la)]
        with pytest.raises((ValueError, TypeError)):
            module.momentum_rows(p, b, idx, g, 1, la, 0.1, 0.9, 0.0, False, 0.01, history=h,
                                 trusted=True)
        for a, x in zip((p, b, la), before):
            assert a is None or np.array_equal(a, x), name


def test_trusted_rows_args_falls_back_on_anything_unusual():
    P = np.zeros((4, 2))
    idx = np.array([0, 1], dtype=np.int64)
    assert trusted_rows_args(P, [P.copy()], idx, None, 1, None, [True]) is not None
    assert trusted_rows_args(P, [P.copy()], idx.astype(np.int32), None, 1, None, [True]) is None
    assert trusted_rows_args(P, [P.copy()], [0, 1], None, 1, None, [True]) is None
    assert trusted_rows_args(P, [None], idx, None, 1, None, [True]) is None
    assert trusted_rows_args(P, [P.copy()], idx, np.zeros((3, 2)), 1, None, [True]) is None
    assert trusted_rows_args(P, [P.copy()], idx, None, 0, None, [True]) is None
    ro = P.copy()
    ro.flags.writeable = False
    assert trusted_rows_args(ro, [P.copy()], idx, None, 1, None, [True]) is None
