"""One eager optimizer step on one parameter: ``opt.apply(param, grad)``.

TEMPORARY: until the optimizer's eager ``apply`` lands on main, an optimizer without it
gets the same step from a compiled one-parameter update (the same fused kernels, built
once per parameter): the gradient ``rows`` at ``ids`` enters as the gradient of
``sum(param[ids] * rows)`` (exactly ``rows``), a dense one as that of ``sum(param * g)``.
"""
from __future__ import annotations

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
