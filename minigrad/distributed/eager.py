"""One eager optimizer step on one parameter: ``opt.apply(param, grad)``.

TEMPORARY: until the optimizer's eager ``apply`` lands on main, an optimizer without it
gets the same step from a compiled one-parameter update (the same fused kernels, built
once per parameter): the gradient ``rows`` at ``ids`` enters as the gradient of
``sum(param[ids] * rows)`` (exactly ``rows``), a dense one as that of ``sum(param * g)``.
"""
from __future__ import annotations

import numpy as np

_COMPILED = {}


def apply_step(opt, param, grad):
    apply = getattr(opt, "apply", None)
    if apply is not None:
        return apply(param, grad)
    return _compiled_step(opt, param, grad)


def _compiled_step(opt, param, grad):
    import minigrad as mg
    from minigrad.types import RowSparse

    sparse = isinstance(grad, RowSparse)
    key = (id(opt), id(param), sparse)
    fn = _COMPILED.get(key)
    if fn is None:
        dtype = param.type.dtype
        if sparse:
            ids = mg.lvector("ids")
            rows = mg.tensor("rows", dtype=dtype, shape=(None,) * param.ndim)
            inputs, cost = [ids, rows], (param[ids] * rows).sum()
        else:
            g = mg.tensor("g", dtype=dtype, shape=(None,) * param.ndim)
            inputs, cost = [g], (param * g).sum()
        grads = [mg.grad(cost, q) if q is param else mg.grad(cost, q, disconnected="zero")
                 for q in opt.params]
        if len(opt.params) > 1:
            raise NotImplementedError("the temporary eager adapter takes one-parameter "
                                      "optimizers")
        fn = _COMPILED[key] = mg.function(inputs, [], updates=opt.updates(grads=grads))
    if sparse:
        fn(grad.indices, grad.values)
    else:
        fn(grad)


def read_rows(opt, param, ids):
    """``param``'s rows ``ids`` as the dense optimizer would hold them now.

    In ``sparse="exact"`` mode an untouched row lags; a single-process step catches up the
    rows its forward pass gathers (``CatchUpRows``) and only those. A shard must do the
    same for the rows a worker pulls: catching up every row at each pull (a flush) would
    apply the skipped steps in many pieces instead of one closed form, which is the same
    value mathematically but not bit for bit. Same kernel call as ``CatchUpRows``.
    """
    i = next(k for k, p in enumerate(opt.params) if p is param)
    last = opt.last[i] if getattr(opt, "last", None) is not None else None
    table = param.value
    if last is not None and ids.shape[0]:
        steps = getattr(opt, "steps", None)
        t = int((steps[i] if steps is not None else opt.t).value)
        rows = np.unique(ids)
        rows = rows[last.value[rows] < t]
        if rows.shape[0] and t > 0:
            from minigrad.optim.base import _module_for

            states = {k: v.value for k, v in opt.state[i].items()}
            kernel = getattr(_module_for(table), opt.kernel)
            kernel(table, *[states.get(k) for k in opt.layout], rows.astype(np.int64), None,
                   t, last.value, *opt.hyper())
    return table[ids]
