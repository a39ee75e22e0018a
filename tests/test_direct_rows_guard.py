"""The guarded plain Adam loop's finiteness test, at kernel level (``kernels/cpu/direct_rows``).

Guarded, ``adam_plain`` proves a row finite by one sum of its new values (``_add_row_sum``:
finite only if every term is) and tests the row value by value only when that sum is not
finite. Three things can go wrong and each has a case here: a NaN or inf that the sum
misses (in any of the three tables, also an inf cancelled by a -inf), a finite row whose
sum overflows raising a false alarm, and a bad row reported at the wrong position (or with
the rows before it not saved). Both dtypes, lazy (``lazy_adam``) and dense
(``update_driver.dense_adam``) mode, the signatures the compiled steps use (no new compile).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the loops are Numba kernels")

from kernels.cpu import direct_rows, update_driver  # noqa: E402

HYPER = dict(t=3, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False)


def _tables(dtype, rows=12, width=20):
    rng = np.random.default_rng(5)
    P = rng.normal(size=(rows, width)).astype(dtype)
    M = (rng.normal(size=(rows, width)) * 0.1).astype(dtype)
    V = rng.uniform(0.1, 1.0, size=(rows, width)).astype(dtype)
    L = np.full(rows, HYPER["t"] - 1, dtype=np.int64)
    return [P, M, V, L]


def _step(tables, idx, G, lazy, guard):
    """One call of the loop on ``tables`` (changed in place); ``(returned, status, saved)``."""
    P, M, V, L = tables
    n, width = idx.shape[0], P.shape[1]
    SP, SM, SV = (np.full((n, width), -7, dtype=P.dtype) for _ in range(3))
    SL, status = np.full(n, -7, dtype=np.int64), np.array([0, -1], dtype=np.int64)
    h = HYPER
    if lazy:
        code = direct_rows.lazy_adam(P, M, V, idx, G, h["t"], h["lr"], h["b1"], h["b2"],
                                     h["eps"], h["wd"], h["decoupled"], 0, guard, SP, SM, SV,
                                     status)
    else:
        code = update_driver.dense_adam(P, M, V, L, idx, G, h["t"], h["lr"], h["b1"],
                                        h["b2"], h["eps"], h["wd"], h["decoupled"], 0, guard,
                                        SP, SM, SV, SL, status)
    return code, status, (SP, SM, SV, SL)


CASES = [(np.float32, True), (np.float64, True), (np.float32, False), (np.float64, False)]


@pytest.mark.parametrize("dtype, lazy", CASES)
def test_a_finite_row_whose_sum_overflows_is_not_an_error(dtype, lazy):
    """Values near the dtype's maximum: the row sum is inf, every value is finite. The
    guarded call finishes, and every table equals the unguarded call's, bitwise."""
    big = np.finfo(dtype).max
    guarded = _tables(dtype)
    for table in (guarded[0], guarded[2]):  # P and V of rows 4 and 9: p + v overflows
        table[[4, 9], :5] = big * 0.75  # (a large V keeps the step small: P stays finite)
    plain = [t.copy() for t in guarded]
    idx = np.array([1, 4, 6, 9], dtype=np.int64)
    G = np.random.default_rng(1).normal(size=(4, guarded[0].shape[1])).astype(dtype)
    with np.errstate(over="ignore"):
        assert np.isinf(guarded[0][4] + guarded[2][4]).any()  # the suspicion
    code, status, _ = _step(guarded, idx, G, lazy, True)
    assert code == -1 and status.tolist() == [4, -1]
    _step(plain, idx, G, lazy, False)
    for g, p in zip(guarded, plain):
        assert np.isfinite(g).all() if g.dtype.kind == "f" else True
        np.testing.assert_array_equal(g.view(np.uint8), p.view(np.uint8))


@pytest.mark.parametrize("dtype, lazy", CASES)
@pytest.mark.parametrize("where", ["p", "m", "v", "p inf, m -inf"])
def test_a_non_finite_value_in_any_table_stops_at_its_row(dtype, lazy, where):
    """A NaN or inf in one table of the third row written (also an inf and a -inf whose
    sum is NaN): the loop returns that position, ``status`` says three rows were written,
    and the scratch holds the old values of exactly those rows."""
    tables = _tables(dtype)
    P, M, V, L = tables
    r = 7
    if where == "p":
        P[r, 3] = np.nan
    elif where == "m":
        M[r, 0] = np.inf
    elif where == "v":
        V[r, -1] = np.inf
    else:
        P[r, 2], M[r, 2] = np.inf, -np.inf
    old = [t.copy() for t in tables]
    idx = np.array([0, 2, r, 9, 11], dtype=np.int64)
    G = np.full((5, P.shape[1]), 0.01, dtype=dtype)
    code, status, (SP, SM, SV, SL) = _step(tables, idx, G, lazy, True)
    assert code == 2 and status.tolist() == [3, 2]
    written = idx[:3]
    for saved, before in zip((SP, SM, SV), old[:3]):
        np.testing.assert_array_equal(saved[:3].view(np.uint8),
                                      before[written].view(np.uint8))
    assert not np.isfinite(np.stack([P[r], M[r], V[r]])).all()
    for table, before in zip(tables[:3], old[:3]):  # rows after the bad one: untouched
        np.testing.assert_array_equal(table[idx[3:]], before[idx[3:]])
    if not lazy:
        assert SL[:3].tolist() == old[3][written].tolist()
        assert L[written].tolist() == [HYPER["t"]] * 3


# --- the momentum / SGD loop of the driver (update_driver.momentum_plain) ----------------

MOMENTUM_CASES = [(np.float32, 0.0, False), (np.float32, 0.9, True), (np.float64, 0.9, False),
                  (np.float64, 0.0, True)]


def _momentum(tables, idx, G, mu, exact, guard):
    """One ``momentum_plain`` call (``B`` is ``P`` itself for plain SGD, as the fused step
    passes it); ``(returned, status, saved)``."""
    P, B, _, L = tables
    n, width = idx.shape[0], P.shape[1]
    SP, SB = (np.full((n, width), -7, dtype=P.dtype) for _ in range(2))
    SL, status = np.full(n, -7, dtype=np.int64), np.array([0, -1], dtype=np.int64)
    code = update_driver.momentum_plain(P, B if mu else P, L, idx, G, HYPER["t"], exact,
                                        0.05, mu, 0.1, True, 0.01, 2, guard, SP,
                                        SB if mu else SP[:0], SL, status)
    return code, status, (SP, SB, SL)


@pytest.mark.parametrize("dtype, mu, exact", MOMENTUM_CASES)
def test_momentum_guarded_loop_is_bitwise_the_plain_one_and_stops_at_a_bad_row(dtype, mu,
                                                                               exact):
    """The guarded and the plain loop are written apart: finite, they give the same bits;
    a NaN in the third row written (in ``P``, or in the buffer) stops the guarded loop
    there, with the old values of exactly the rows written in the scratch."""
    idx = np.array([0, 2, 7, 9, 11], dtype=np.int64)
    G = np.random.default_rng(2).normal(size=(5, 20)).astype(dtype)
    guarded, plain = _tables(dtype), _tables(dtype)
    code, status, _ = _momentum(guarded, idx, G, mu, exact, True)
    assert code == -1 and status.tolist() == [5, -1]
    assert _momentum(plain, idx, G, mu, exact, False)[0] == -1
    for g, p in zip(guarded, plain):
        np.testing.assert_array_equal(g.view(np.uint8), p.view(np.uint8))
    for bad_table in ([0, 1] if mu else [0]):
        tables = _tables(dtype)
        tables[bad_table][7, 4] = np.nan
        old = [t.copy() for t in tables]
        code, status, (SP, SB, SL) = _momentum(tables, idx, G, mu, exact, True)
        assert code == 2 and status.tolist() == [3, 2]
        written = idx[:3]
        np.testing.assert_array_equal(SP[:3].view(np.uint8), old[0][written].view(np.uint8))
        if mu:
            np.testing.assert_array_equal(SB[:3].view(np.uint8),
                                          old[1][written].view(np.uint8))
        if exact:
            assert SL[:3].tolist() == old[3][written].tolist()
        for table, before in zip(tables[:2], old[:2]):  # rows after the bad one: untouched
            np.testing.assert_array_equal(table[idx[3:]], before[idx[3:]])
