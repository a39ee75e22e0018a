"""``mg.optim.Adamax`` in row-sparse mode against ``torch.optim.Adamax`` (skipped without
torch; the dense steps are compared in tests/test_optim_adamax.py).

torch has no sparse Adamax: it steps every row with the densified gradient (zeros where a
row is not touched). Exact mode must give those rows, however long a row was left (the
replayed zero-gradient steps, each with the lr and weight decay of its step, here from a
schedule). Lazy mode steps the touched rows only, with the current step's bias correction
and lr, so a row touched at every step equals torch's and a row never touched keeps its
value (torch decays it)."""
from __future__ import annotations

import numpy as np
import pytest
from test_optim_adamax import _touched

import minigrad as mg
from minigrad.optim import schedules as S

torch = pytest.importorskip("torch", reason="the comparison with torch.optim.Adamax")

B1, B2, EPS, WD = 0.9, 0.99, 1e-8, 0.01
N_ROWS, WIDTH = 5, 3


def _run(mode, n, backend):
    """minigrad's table after ``n`` row-sparse steps, and torch's after the same steps on
    the densified gradients, the lr set each step to minigrad's ``current_lr()``."""
    rng = np.random.default_rng(7)
    p0 = rng.normal(size=(N_ROWS, WIDTH))
    P = mg.shared(p0.copy(), name="P")
    opt = mg.optim.Adamax([P], lr=S.CosineAnnealingWarmRestarts(0.02, T_0=90, eta_min=1e-3),
                          betas=(B1, B2), eps=EPS, weight_decay=WD, sparse=mode)
    g = mg.RowSparseType("float64", (N_ROWS, WIDTH)).make_variable("g")
    step = mg.function([g], updates=opt.updates(grads=[g]), backend=backend)
    tp = torch.nn.Parameter(torch.tensor(p0.copy()))
    topt = torch.optim.Adamax([tp], lr=0.02, betas=(B1, B2), eps=EPS, weight_decay=WD)
    for t in range(1, n + 1):
        idx = _touched(t, n)
        vals = rng.normal(size=(len(idx), WIDTH))
        for group in topt.param_groups:
            group["lr"] = opt.current_lr()
        step(mg.RowSparse(idx, vals, (N_ROWS, WIDTH)))
        dense = np.zeros((N_ROWS, WIDTH))
        dense[idx] = vals
        tp.grad = torch.tensor(dense)
        topt.step()
    return p0, P.get_value(), tp.detach().numpy()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_exact_mode_equals_dense_torch_adamax(backend):
    """Rows touched every step, every 5th, at steps 1-2 then the last (a 247-step gap), and
    never (moved by weight decay alone): all equal torch's dense Adamax."""
    if backend == "numba":
        pytest.importorskip("numba", reason="the compiled loop needs Numba")
    p0, got, want = _run("exact", 250, backend)
    assert np.abs(want - p0).min() > 1e-4  # every row moved, the never-touched ones too
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_lazy_mode_equals_torch_on_rows_touched_every_step():
    p0, got, want = _run("lazy", 60, "numba" if _has_numba() else "numpy")
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-14)  # every step
    np.testing.assert_array_equal(got[3:], p0[3:])  # never touched: lazy leaves them
    assert np.abs(got[1] - want[1]).max() > 1e-6  # every 5th step: lazy differs


def _has_numba():
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
