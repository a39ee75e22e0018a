"""``opt.apply(param, grad)``: the eager step. Same kernels and results as the compiled
update (compared bitwise), the dense oracle of test_optim for ndarray gradients, one step
counter per parameter, and bad gradients refused before anything changes."""
from __future__ import annotations

import numpy as np
import pytest
from test_optim import CONFIGS, IDS, make_opt, oracle_step, rel_err

import minigrad as mg


def _snapshot(opt):
    arrays = [p.value.copy() for p in opt.params]
    arrays += [v.value.copy() for s in opt.state for v in s.values()]
    arrays += [last.value.copy() for last in opt.last if last is not None]
    return arrays, [int(s.value) for s in opt.steps], int(opt.t.value)


def _assert_same(before, after):
    (a, sa, ta), (b, sb, tb) = before, after
    assert sa == sb and ta == tb and len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)


@pytest.mark.parametrize("name,hp", CONFIGS, ids=IDS)
def test_apply_dense_matches_oracle(name, hp):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(6, 3))
    P = mg.shared(p0.copy(), name="P")
    opt = make_opt(name, [P], **hp)
    p, st = p0.copy(), {}
    for t in range(1, 26):
        g = rng.normal(size=p0.shape)
        opt.apply(P, g)
        p = oracle_step(name, p, g, st, t, hp)
    assert rel_err(P.get_value(), p) < 1e-12
    assert int(opt.steps[0].value) == 25 and int(opt.t.value) == 25


@pytest.mark.parametrize("sparse", ["exact", "lazy"])
@pytest.mark.parametrize("name,hp", CONFIGS, ids=IDS)
def test_apply_rowsparse_equals_compiled_update(name, hp, sparse):
    """The eager step and the compiled one run the same kernel: bitwise equal results."""
    rng = np.random.default_rng(1)
    V, D = 30, 4
    p0 = rng.normal(size=(V, D))
    A, B = mg.shared(p0.copy(), name="A"), mg.shared(p0.copy(), name="B")
    eager, compiled = make_opt(name, [A], sparse=sparse, **hp), make_opt(name, [B],
                                                                         sparse=sparse, **hp)
    g = mg.RowSparseType("float64", (V, D)).make_variable("g")
    step = mg.function([g], updates=compiled.updates(grads=[g]))
    for t in range(60):
        n = int(rng.integers(0, 6))
        rs = mg.RowSparse(rng.integers(0, V if t > 20 else 5, size=n), rng.normal(size=(n, D)),
                          (V, D))
        eager.apply(A, rs)
        step(rs)
    np.testing.assert_array_equal(A.get_value(), B.get_value())
    for k in eager.state[0]:
        np.testing.assert_array_equal(eager.state[0][k].get_value(),
                                      compiled.state[0][k].get_value())


def test_apply_exact_rowsparse_matches_dense_oracle():
    rng = np.random.default_rng(2)
    V, D = 12, 2
    hp = dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.0)
    p0 = rng.normal(size=(V, D))
    P = mg.shared(p0.copy(), name="P")
    opt = mg.optim.Adam([P], sparse="exact", **hp)
    p, st = p0.copy(), {}
    for t in range(1, 200):
        idx = rng.integers(0, 3 if t < 100 else V, size=2)
        rs = mg.RowSparse(idx, rng.normal(size=(2, D)), (V, D))
        opt.apply(P, rs)
        p = oracle_step("Adam", p, rs.to_dense(), st, t, hp)
    assert rel_err(P.get_value(), p) < 1e-12


def test_apply_counts_steps_per_parameter():
    """Adam's bias correction uses each parameter's own step count (torch keeps ``step``
    per parameter), so applying A's gradient does not advance B."""
    rng = np.random.default_rng(3)
    A, B = mg.shared(np.zeros((4, 2)), name="A"), mg.shared(np.zeros(3), name="B")
    opt = mg.optim.Adam([A, B], lr=0.1)
    for _ in range(3):
        opt.apply(A, rng.normal(size=(4, 2)))
    gb = rng.normal(size=3)
    opt.apply(B, gb)
    assert [int(s.value) for s in opt.steps] == [3, 1]
    # B's first Adam step moves every element by lr * sign(g) (bias-corrected m/sqrt(v))
    np.testing.assert_allclose(B.get_value(), -0.1 * np.sign(gb), rtol=1e-6)


def test_apply_then_compiled_step_continue_the_same_state():
    V, D = 8, 2
    rng = np.random.default_rng(4)
    P = mg.shared(rng.normal(size=(V, D)), name="P")
    Q = mg.shared(P.get_value(), name="Q")
    opt_p = mg.optim.Momentum([P], lr=0.1, momentum=0.9)
    opt_q = mg.optim.Momentum([Q], lr=0.1, momentum=0.9)
    g = mg.RowSparseType("float64", (V, D)).make_variable("g")
    step_p = mg.function([g], updates=opt_p.updates(grads=[g]))
    for t in range(20):
        rs = mg.RowSparse([t % V], rng.normal(size=(1, D)), (V, D))
        (opt_p.apply(P, rs) if t % 2 else step_p(rs))
        opt_q.apply(Q, rs)
    np.testing.assert_array_equal(P.get_value(), Q.get_value())


def test_apply_transforms_eager():
    rng = np.random.default_rng(5)
    V, D = 10, 3
    A, B = mg.shared(np.ones((V, D)), name="A"), mg.shared(np.ones((V, D)), name="B")
    noise = [mg.optim.GradientNoise(eta=0.1, seed=3), mg.optim.clip_grad_norm(max_norm=0.5)]
    eager = mg.optim.SGD([A], lr=0.1, transforms=noise)
    compiled = mg.optim.SGD([B], lr=0.1, transforms=noise)
    g = mg.RowSparseType("float64", (V, D)).make_variable("g")
    step = mg.function([g], updates=compiled.updates(grads=[g]))
    for _ in range(5):
        rs = mg.RowSparse(rng.integers(0, V, size=3), rng.normal(size=(3, D)), (V, D))
        eager.apply(A, rs)
        step(rs)
    np.testing.assert_allclose(A.get_value(), B.get_value(), rtol=1e-13, atol=1e-15)


class _NoEager:
    def __call__(self, grads, step):
        return grads


BAD = [
    ("shape", lambda V, D: np.zeros((V + 1, D)), ValueError, "shape"),
    ("rs-shape", lambda V, D: mg.RowSparse([0], np.zeros((1, D)), (V + 1, D)), ValueError,
     "shape"),
    ("dtype", lambda V, D: np.full((V, D), "x"), TypeError, "dtype"),
    ("nan", lambda V, D: np.full((V, D), np.nan), FloatingPointError, "non-finite"),
    ("inf-rows", lambda V, D: mg.RowSparse([1], np.full((1, D), np.inf), (V, D)),
     FloatingPointError, "non-finite"),
    ("list", lambda V, D: [[0.0] * D] * V, TypeError, "ndarray or mg.RowSparse"),
]


@pytest.mark.parametrize("sparse", ["exact", "lazy"])
@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_apply_bad_gradient_changes_nothing(case, sparse):
    _, make, err, words = case
    V, D = 6, 2
    rng = np.random.default_rng(6)
    E = mg.shared(rng.normal(size=(V, D)), name="E")
    opt = mg.optim.Adam([E], lr=0.1, sparse=sparse)
    for _ in range(3):
        opt.apply(E, mg.RowSparse([0, 2], rng.normal(size=(2, D)), (V, D)))
    before = _snapshot(opt)
    with pytest.raises(err, match=words) as info:
        opt.apply(E, make(V, D))
    assert "'E'" in str(info.value)
    _assert_same(before, _snapshot(opt))


def test_apply_refusals_name_the_problem():
    E = mg.shared(np.zeros((4, 2)), name="E")
    other = mg.shared(np.zeros((4, 2)), name="other")
    opt = mg.optim.SGD([E], lr=0.1)
    with pytest.raises(ValueError, match="not a parameter"):
        opt.apply(other, np.zeros((4, 2)))
    with pytest.raises(TypeError, match="no eager form"):
        mg.optim.SGD([E], lr=0.1, transforms=[_NoEager()]).apply(E, np.zeros((4, 2)))
    rs = mg.RowSparse([1], np.zeros((1, 2)), (4, 2))
    rs.indices[0] = 7  # corrupted after construction
    before = E.value.copy()
    with pytest.raises(IndexError, match="'E'.*7"):
        opt.apply(E, rs)
    np.testing.assert_array_equal(E.value, before)


def test_apply_read_only_parameter_refused_before_any_write():
    E = mg.shared(np.ones((5, 2)), name="E")
    opt = mg.optim.Adam([E], lr=0.1, sparse="exact")
    opt.apply(E, mg.RowSparse([0], np.ones((1, 2)), (5, 2)))
    frozen = np.ones((5, 2))
    frozen.flags.writeable = False
    E.set_value(frozen, borrow=True)  # set_value keeps its invariant: a writeable copy
    assert E.value.flags.writeable and E.value is not frozen
    E._value = frozen  # bypass set_value: apply must still refuse before writing
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="read-only"):
        opt.apply(E, mg.RowSparse([3], np.ones((1, 2)), (5, 2)))
    _assert_same(before, _snapshot(opt))


def test_apply_rank1_and_dense_and_rowsparse_mix_in_exact_mode():
    rng = np.random.default_rng(7)
    b = mg.shared(rng.normal(size=5), name="b")
    E = mg.shared(rng.normal(size=(5, 2)), name="E")
    opt = mg.optim.RMSprop([b, E], lr=0.01, momentum=0.5)
    st_b, pb = {}, b.get_value()
    st_e, pe = {}, E.get_value()
    hp = dict(lr=0.01, momentum=0.5)
    for t in range(1, 30):
        gb = rng.normal(size=5)
        opt.apply(b, gb)
        pb = oracle_step("RMSprop", pb, gb, st_b, t, hp)
        ge = rng.normal(size=(5, 2)) if t % 3 else mg.RowSparse([t % 5], rng.normal(size=(1, 2)),
                                                               (5, 2))
        opt.apply(E, ge)
        pe = oracle_step("RMSprop", pe, ge if isinstance(ge, np.ndarray) else ge.to_dense(),
                         st_e, t, hp)
    assert rel_err(b.get_value(), pb) < 1e-12 and rel_err(E.get_value(), pe) < 1e-12


def test_lazy_optimizer_refuses_mixing_dense_and_lazy_rowsparse():
    E = mg.shared(np.zeros((4, 2)), name="E")
    opt = mg.optim.Adam([E], lr=0.1, sparse="lazy")
    opt.apply(E, mg.RowSparse([1], np.ones((1, 2)), (4, 2)))
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="mix two update rules"):
        opt.apply(E, np.ones((4, 2)))
    _assert_same(before, _snapshot(opt))


KERNEL_NONE = [
    ("adam_rows", lambda p: (p, None, None), (0.1, 0.9, 0.999, 1e-8, 0.0, False)),
    ("adam_rows", lambda p: (p, np.zeros_like(p), None), (0.1, 0.9, 0.999, 1e-8, 0.0, False)),
    ("momentum_rows", lambda p: (p, None), (0.1, 0.9, 0.0, False, 0.0)),
    ("adagrad_rows", lambda p: (p, None), (0.1, 1e-10, 0.0)),
    ("rmsprop_rows", lambda p: (p, np.zeros_like(p), None, None),
     (0.1, 0.9, 1e-8, 0.5, False, 0.0)),
    ("rmsprop_rows", lambda p: (p, np.zeros_like(p), None, None),
     (0.1, 0.9, 1e-8, 0.0, True, 0.0)),
    ("rmsprop_rows", lambda p: (p, None, None, None), (0.1, 0.9, 1e-8, 0.0, False, 0.0)),
]


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("case", KERNEL_NONE, ids=[f"{c[0]}-{i}" for i, c in
                                                   enumerate(KERNEL_NONE)])
def test_kernel_refuses_missing_state_table(impl, case):
    """Issue 15 item 1: a None state table the hyperparameters need raises, never writes."""
    module = pytest.importorskip(f"kernels.{impl}", reason="numba missing")
    name, tables, hyper = case
    p = np.ones((1000, 64))
    idx = np.arange(0, 1000, 7)
    g = np.ones((len(idx), 64))
    args = tables(p)
    with pytest.raises(ValueError, match="required"):
        getattr(module, name)(*args, idx, g, 1, None, *hyper)
    assert (p == 1).all()
