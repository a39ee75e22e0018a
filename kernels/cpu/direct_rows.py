"""Plain row loops for the commonest update of a compiled step: lazy Adam (issue 12).

``kernels.cpu.optim._adam`` is one loop for every Adam case (lazy and exact mode, the
closed-form and replayed catch-ups, AMSGrad, guarded or not). For a lazy-mode step that
generality costs about 2x in the element loop: on 2,400 rows x 64 float32 of a 30K-row
table it took ~700 us where the same rule in a plain loop takes ~360 us (the hand-written
floor's loop: ~340 us), most likely because LLVM optimises the row loop of the large
function less well. A lazy step has nothing to catch up, so ``minigrad/direct_updates.py``
calls this loop instead for lazy, non-AMSGrad Adam.

The arithmetic is the rule written once (``kernels/rules/adam.py``), inlined with the same
arguments as ``_adam`` passes, so the results are bitwise those of ``_adam``
(``tests/test_direct_updates.py`` compares every table after several steps). Guarded, it
follows ``_adam``'s one-pass protocol: each row's old values go to row ``i`` of the
guard's scratch as the row is read, the new ones are checked as they are written, and
``status = [rows written, first bad position or -1]`` is written before returning. The
check is a row sum that is finite only if every value is (``_add_row_sum``), with a
value-by-value test of the rare row whose sum is not.

No argument is checked here: the caller (a compiled step) has checked the call
(``PrepareRows``, the prologue, ``check_destinations``). Users call ``kernels.cpu.adam_rows``.
"""
from kernels.cpu.deferred_cache import njit
from kernels.cpu.rows import _not_finite, _prefetch_ahead, _row_not_finite
from kernels.rules import adam as adam_rule

_adam_elem = njit(cache=True, nogil=True, error_model="numpy", inline="always")(
    adam_rule.update)
_adam_scalars = njit(cache=True, nogil=True, error_model="numpy", inline="always")(
    adam_rule.scalars)


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _add_row_sum(acc, p, m, v):
    """``acc + p + m + v`` in any order (``reassoc``: the row's sum vectorises as lane
    sums). Not inlined by Numba, so the flag stays on these additions alone (LLVM inlines
    it): the update's own arithmetic keeps its order and its bits.

    The guarded loop's finiteness test: a sum of floats is finite only if every term is
    (a NaN stays NaN, an inf stays inf or becomes NaN, in any order), so a finite row sum
    proves the row finite for 3 additions per element, where testing each value took 11
    vector instructions per 8 elements. A non-finite sum is only a suspicion (finite
    values near the dtype's maximum can overflow it): the row is then tested value by
    value (``_row_not_finite``)."""
    return acc + ((p + m) + v)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def adam_plain(P, M, V, L, idx, G, t, lr, b1, b2, eps, wd, decoupled, lazy, dist, guard, SP,
               SM, SV, SL, status):
    """Adam on rows ``idx`` of ``P``, ``M``, ``V`` with gradient rows ``G``, prefetching
    ``dist`` rows ahead: ``lazy``, ``torch.optim.SparseAdam``'s formula (``L``/``SL``
    unused); otherwise ``torch.optim.Adam``'s on rows none of which lags, with ``last[r] =
    t`` (saved to ``SL`` when guarded). With ``guard``, the one-pass save-and-check.

    Inlined into its two callers with ``lazy`` a literal, so each compiles to its own
    plain loop (the branches on ``lazy`` fold away)."""
    width = P.shape[1]
    step_size, sqrt_bc2 = _adam_scalars(lr, b1, b2, float(t), lazy)
    q = 1.0 - lr * wd if decoupled else 1.0
    l2 = 0.0 if decoupled else wd
    n = idx.shape[0]
    if guard:
        zero = P.dtype.type(0.0)  # (the row sum in the tables' dtype: no conversions)
        for i in range(n):
            _prefetch_ahead(idx, i, dist, P, M, V)
            r = idx[i]
            if not lazy:
                SL[i] = L[r]
                L[r] = t
            row_sum = zero
            for d in range(width):
                p0, m0, v0 = P[r, d], M[r, d], V[r, d]
                SP[i, d], SM[i, d], SV[i, d] = p0, m0, v0
                P[r, d], M[r, d], V[r, d], _ = _adam_elem(
                    float(p0), float(m0), float(v0), 0.0, float(G[i, d]), b1, b2, eps, l2, q,
                    step_size, sqrt_bc2, lazy, False)
                row_sum = _add_row_sum(row_sum, P[r, d], M[r, d], V[r, d])
            if _not_finite(row_sum) and (_row_not_finite(P, r) or _row_not_finite(M, r)
                                         or _row_not_finite(V, r)):
                status[0], status[1] = i + 1, i
                return i
        status[0], status[1] = n, -1
        return -1
    for i in range(n):
        _prefetch_ahead(idx, i, dist, P, M, V)
        r = idx[i]
        if not lazy:
            L[r] = t
        for d in range(width):
            P[r, d], M[r, d], V[r, d], _ = _adam_elem(
                float(P[r, d]), float(M[r, d]), float(V[r, d]), 0.0, float(G[i, d]), b1, b2,
                eps, l2, q, step_size, sqrt_bc2, lazy, False)
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def lazy_adam(P, M, V, idx, G, t, lr, b1, b2, eps, wd, decoupled, dist, guard, SP, SM, SV,
              status):
    """Lazy Adam (``torch.optim.SparseAdam``'s formula) on rows ``idx``: ``adam_plain``
    with ``lazy`` (``idx`` stands in for the ``last`` arrays it does not touch)."""
    return adam_plain(P, M, V, idx, idx, G, t, lr, b1, b2, eps, wd, decoupled, True, dist,
                      guard, SP, SM, SV, idx, status)


__all__ = ["adam_plain", "lazy_adam"]
