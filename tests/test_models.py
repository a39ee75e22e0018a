"""mg.models: gradients (finite differences, PyTorch), row-sparse types, learning, bad input.

Everything runs in float64 for the gradient checks; models are built fresh per test so
that the shared parameters of one test never leak into another.
"""
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

import minigrad as mg
from minigrad.models import FactorizationMachine, MaskedEmbeddingClassifier, log_inverse_frequency

# ----------------------------------------------------------------------------- helpers


def sgd_updates(params, cost, lr):
    """SGD update pairs: mg.optim.SGD when it exists, else plain symbolic ``p - lr * g``."""
    try:
        return mg.optim.SGD(params, lr=lr).updates(cost)
    except (ImportError, AttributeError):
        grads = mg.grad(cost, params)
        return [(p, p - g * lr) for p, g in zip(params, grads)]


def dense(g):
    return g.to_dense() if isinstance(g, mg.RowSparse) else np.asarray(g)


def check_grads_fd(model, inputs, values, cost_of, n_directions=4, seed=0, rtol=1e-6):
    """Symbolic gradients of every parameter vs central differences along random directions."""
    cost = cost_of(model, *inputs)
    grads = mg.grad(cost, model.params)
    f_cost = mg.function(inputs, cost, backend="numpy")
    f_grad = mg.function(inputs, grads, backend="numpy")
    analytic = [dense(g) for g in f_grad(*values)]
    rng = np.random.default_rng(seed)
    base = [p.get_value() for p in model.params]
    eps = 1e-6
    for _ in range(n_directions):
        dirs = [rng.standard_normal(b.shape) for b in base]
        for p, b, d in zip(model.params, base, dirs):
            p.set_value(b + eps * d)
        plus = float(f_cost(*values))
        for p, b, d in zip(model.params, base, dirs):
            p.set_value(b - eps * d)
        minus = float(f_cost(*values))
        for p, b in zip(model.params, base):
            p.set_value(b)
        numeric = (plus - minus) / (2 * eps)
        symbolic = sum(float(np.sum(g * d)) for g, d in zip(analytic, dirs))
        assert symbolic == pytest.approx(numeric, rel=rtol, abs=1e-7)
    return analytic


def random_csr(n_rows, n_cols, density, seed, values="normal"):
    rng = np.random.default_rng(seed)
    X = sp.random(n_rows, n_cols, density=density, format="csr", random_state=rng)
    if values == "normal":
        X.data = rng.standard_normal(X.data.shape)
    return X


def fm_inputs():
    return mg.csr_matrix("X", "float64"), mg.vector("y", "float64")


def me_inputs():
    return mg.lmatrix("tokens"), mg.matrix("mask", "float64"), mg.lvector("labels")


def small_docs(seed=0, batch=6, length=7, vocab=30):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, size=(batch, length))
    lengths = rng.integers(1, length + 1, size=batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float64)
    tokens[mask == 0] = 0
    labels = rng.integers(0, 3, size=batch)
    return tokens, mask, labels


def perturbed_fm(n_features=20, k=3, seed=0):
    """An FM with non-zero w and b so every term of the gradient is exercised."""
    fm = FactorizationMachine(n_features, k, seed=seed, dtype="float64", init_std=0.5)
    rng = np.random.default_rng(seed + 1)
    fm.w.set_value(rng.standard_normal((n_features, 1)) * 0.3)
    fm.b.set_value(np.array([0.2]))
    return fm


# ----------------------------------------------------------------- gradient correctness


@pytest.mark.parametrize("loss,l2", [("logistic", 0.0), ("squared", 0.0), ("logistic", 0.3)])
def test_fm_gradients_match_finite_differences(loss, l2):
    fm = perturbed_fm()
    X = random_csr(9, 20, 0.25, seed=1)
    y = (np.random.default_rng(2).random(9) > 0.5).astype(np.float64)
    check_grads_fd(fm, fm_inputs(), (X, y), lambda m, X, y: m.cost(X, y, loss=loss, l2=l2))


@pytest.mark.parametrize("mask_kind", ["per_dimension", "per_word"])
@pytest.mark.parametrize("weighted", [False, True])
def test_classifier_gradients_match_finite_differences(mask_kind, weighted):
    model = MaskedEmbeddingClassifier(30, 4, 3, seed=3, dtype="float64", mask_kind=mask_kind)
    rng = np.random.default_rng(4)
    model.M.set_value(1 + 0.3 * rng.standard_normal(model.M.get_value().shape))
    model.c.set_value(rng.standard_normal(3) * 0.1)
    tokens, mask, labels = small_docs()
    weights = np.array([0.5, 1.0, 2.0]) if weighted else None
    check_grads_fd(model, me_inputs(), (tokens, mask, labels),
                   lambda m, t, k, y: m.cost(t, k, y, class_weights=weights))


def test_fm_pairwise_term_equals_explicit_pairs():
    fm = perturbed_fm(n_features=8, k=3)
    X = random_csr(5, 8, 0.5, seed=5)
    Xs = mg.csr_matrix("X", "float64")
    scores = mg.function([Xs], fm.predict(Xs))(X)
    Xd, V, w, b = X.toarray(), fm.V.get_value(), fm.w.get_value()[:, 0], fm.b.get_value()[0]
    expected = b + Xd @ w
    for i in range(8):
        for j in range(i + 1, 8):
            expected = expected + V[i] @ V[j] * Xd[:, i] * Xd[:, j]
    np.testing.assert_allclose(scores, expected, rtol=1e-10, atol=1e-12)


def test_fm_gradients_match_torch():
    torch = pytest.importorskip("torch", reason="PyTorch reference is optional")
    fm = perturbed_fm()
    X = random_csr(9, 20, 0.25, seed=6)
    y = (np.random.default_rng(7).random(9) > 0.5).astype(np.float64)
    Xs, ys = fm_inputs()
    cost = fm.cost(Xs, ys, l2=0.1)
    out = mg.function([Xs, ys], [cost] + mg.grad(cost, fm.params))(X, y)

    b, w, V = (torch.tensor(p.get_value(), requires_grad=True) for p in fm.params)
    Xt, yt = torch.tensor(X.toarray()), torch.tensor(y)
    s = b + (Xt @ w)[:, 0] + 0.5 * ((Xt @ V) ** 2 - (Xt ** 2) @ (V ** 2)).sum(1)
    data = torch.nn.functional.binary_cross_entropy_with_logits(s, yt)
    occurrences = torch.tensor(np.bincount(X.indices, minlength=20).astype(np.float64))
    penalty = (occurrences * ((V ** 2).sum(1) + (w ** 2).sum(1))).sum() / 9
    total = data + 0.1 * penalty
    total.backward()
    assert float(out[0]) == pytest.approx(total.item(), rel=1e-10)
    for g, t in zip(out[1:], (b, w, V)):
        np.testing.assert_allclose(dense(g), t.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mask_kind,mask_width", [("per_dimension", 4), ("per_word", 1)])
def test_classifier_gradients_match_torch(mask_kind, mask_width):
    torch = pytest.importorskip("torch", reason="PyTorch reference is optional")
    model = MaskedEmbeddingClassifier(30, 4, 3, seed=8, dtype="float64", mask_kind=mask_kind)
    model.M.set_value(1 + 0.3 * np.random.default_rng(9).standard_normal((30, mask_width)))
    tokens, mask, labels = small_docs(seed=10)
    weights = np.array([0.3, 1.0, 2.5])
    syms = me_inputs()
    cost = model.cost(*syms, class_weights=weights)
    out = mg.function(list(syms), [cost] + mg.grad(cost, model.params))(tokens, mask, labels)

    E, M, W, c = (torch.tensor(p.get_value(), requires_grad=True) for p in model.params)
    tok = torch.tensor(tokens)
    r = (E[tok] * M[tok] * torch.tensor(mask)[..., None]).sum(1)
    nll = torch.nn.functional.cross_entropy(r @ W + c, torch.tensor(labels), reduction="none")
    total = (torch.tensor(weights)[torch.tensor(labels)] * nll).mean()
    total.backward()
    assert float(out[0]) == pytest.approx(total.item(), rel=1e-10)
    for g, t in zip(out[1:], (E, M, W, c)):
        np.testing.assert_allclose(dense(g), t.grad.numpy(), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------- row-sparse gradients


def test_fm_gradients_are_row_sparse_over_batch_features():
    fm = FactorizationMachine(1000, 4, dtype="float64")
    Xs, ys = fm_inputs()
    cost = fm.cost(Xs, ys, l2=0.01)
    g_b, g_w, g_V = mg.grad(cost, fm.params)
    assert isinstance(g_w.type, mg.RowSparseType) and isinstance(g_V.type, mg.RowSparseType)
    X = random_csr(4, 1000, 0.003, seed=11)
    vals = mg.function([Xs, ys], [g_w, g_V])(X, np.ones(4))
    for g in vals:
        assert isinstance(g, mg.RowSparse) and g.shape[0] == 1000
        assert set(g.indices.tolist()) == set(X.indices.tolist())


@pytest.mark.parametrize("mask_kind", ["per_dimension", "per_word"])
def test_classifier_gradients_are_row_sparse_and_skip_padding(mask_kind):
    model = MaskedEmbeddingClassifier(50, 4, 3, dtype="float64", mask_kind=mask_kind)
    syms = me_inputs()
    cost = model.cost(*syms)
    g_E, g_M, g_W, g_c = mg.grad(cost, model.params)
    assert isinstance(g_E.type, mg.RowSparseType) and isinstance(g_M.type, mg.RowSparseType)
    assert isinstance(g_W.type, mg.TensorType)
    tokens = np.array([[5, 7, 0, 0], [7, 9, 3, 0]])
    # a masked-out position holding a real id (3) must be ignored just like padding
    mask = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=np.float64)
    gE, gM = mg.function(list(syms), [g_E, g_M])(tokens, mask, np.array([0, 2]))
    for g, shape in ((gE, (50, 4)), (gM, model.M.get_value().shape)):
        assert isinstance(g, mg.RowSparse) and g.shape == shape
        assert set(g.indices.tolist()) == {5, 7, 9}  # no padding 0, no masked-out 3
        assert np.abs(g.values).sum() > 0


def test_classifier_default_mask_weights_every_dimension():
    """API.md section 5: M has the shape of E and starts at ones (the seed's model)."""
    model = MaskedEmbeddingClassifier(40, 6, 3, seed=1, dtype="float64")
    assert model.mask_kind == "per_dimension"
    assert model.M.get_value().shape == model.E.get_value().shape == (40, 6)
    np.testing.assert_array_equal(model.M.get_value(), np.ones((40, 6)))
    per_word = MaskedEmbeddingClassifier(40, 6, 3, seed=1, mask_kind="per_word")
    assert per_word.M.get_value().shape == (40, 1)
    # the forward pass is sum_w mask_w * E[w] * M[w], dimension by dimension
    rng = np.random.default_rng(2)
    M = rng.uniform(0.5, 1.5, (40, 6))
    model.M.set_value(M)
    tokens, mask, _ = small_docs(seed=3, vocab=40)
    t, m = mg.lmatrix("t"), mg.matrix("m", "float64")
    r = mg.function([t, m], model.document_vectors(t, m), backend="numpy")(tokens, mask)
    E = model.E.get_value()
    expected = (E[tokens] * M[tokens] * mask[..., None]).sum(1)
    np.testing.assert_allclose(r, expected, rtol=1e-12)


@pytest.mark.parametrize("flag,kind", [(True, "per_dimension"), (False, "per_word")])
def test_classifier_vector_mask_is_a_deprecated_alias(flag, kind):
    with pytest.warns(DeprecationWarning, match="mask_kind"):
        model = MaskedEmbeddingClassifier(10, 3, 2, vector_mask=flag)
    assert model.mask_kind == kind
    with pytest.raises(ValueError, match="contradicts"), pytest.warns(DeprecationWarning):
        MaskedEmbeddingClassifier(10, 3, 2, vector_mask=flag,
                                  mask_kind="per_word" if flag else "per_dimension")


def test_classifier_rejects_unknown_mask_kind():
    with pytest.raises(ValueError, match="mask_kind must be one of"):
        MaskedEmbeddingClassifier(10, 3, 2, mask_kind="scalar")


def test_bag_of_words_op_lives_in_ops():
    from minigrad.ops.bag import BagOfWords

    assert mg.models.BagOfWords is BagOfWords


# ----------------------------------------------------------------------------- learning


def test_fm_learns_synthetic_ratings():
    data = mg.data.synthetic_ratings(200, 300, n_ratings=12000, seed=0, k=4, noise=0.2)
    X_tr, X_te, y_tr, y_te = mg.data.train_test_split(data.X, data.y, seed=0)
    fm = FactorizationMachine(X_tr.shape[1], 4, seed=0, dtype="float64", init_std=0.1)
    Xs, ys = fm_inputs()
    cost = fm.cost(Xs, ys, l2=1e-4)
    step = mg.function([Xs, ys], cost, updates=sgd_updates(fm.params, cost, lr=0.5))
    score = mg.function([Xs], fm.predict(Xs))
    for epoch in range(10):
        for Xb, yb in mg.data.batches(X_tr, y_tr, batch_size=64, seed=epoch):
            step(Xb, yb)
    accuracy = np.mean((score(X_te) > 0) == (y_te > 0.5))
    assert accuracy > 0.70, accuracy  # chance is ~0.5


def test_classifier_learns_synthetic_documents():
    train = mg.data.synthetic_documents(2000, 2000, 5, seed=0, length=(10, 30))
    test = mg.data.synthetic_documents(500, 2000, 5, seed=1, length=(10, 30))
    model = MaskedEmbeddingClassifier(2000, 16, 5, seed=0, dtype="float64")
    syms = me_inputs()
    cost = model.cost(*syms)
    step = mg.function(list(syms), cost, updates=sgd_updates(model.params, cost, lr=0.2))
    proba = mg.function(list(syms[:2]), model.predict(*syms[:2]))
    for epoch in range(5):
        for batch in mg.data.batches(*train, batch_size=32, seed=epoch):
            step(*batch)
    accuracy = np.mean(proba(test.tokens, test.mask).argmax(1) == test.labels)
    assert accuracy > 0.6, accuracy  # chance is 0.2


# --------------------------------------------------------------------------- class weights


def test_log_inverse_frequency_formula():
    labels = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(log_inverse_frequency(labels, 4),
                               [np.log(6 / 3), np.log(6 / 1), np.log(6 / 2), 0.0])
    with pytest.raises(ValueError, match="labels"):
        log_inverse_frequency(np.array([0, 4]), 4)


def test_class_weights_scale_each_example_loss():
    model = MaskedEmbeddingClassifier(30, 4, 3, seed=1, dtype="float64")
    tokens, mask, labels = small_docs(seed=2)
    weights = log_inverse_frequency(labels, 3) + 0.5
    syms = me_inputs()
    per_example = -mg.log_softmax(model.logits(*syms[:2]), axis=-1)
    nll = mg.function(list(syms[:2]), per_example)(tokens, mask)[np.arange(len(labels)), labels]
    plain = mg.function(list(syms), model.cost(*syms))(tokens, mask, labels)
    weighted = mg.function(list(syms), model.cost(*syms, class_weights=weights))(
        tokens, mask, labels)
    assert float(plain) == pytest.approx(nll.mean(), rel=1e-12)
    assert float(weighted) == pytest.approx((weights[labels] * nll).mean(), rel=1e-12)


# ------------------------------------------------------------------------------ bad input


def _snapshot(model):
    return [p.get_value() for p in model.params]


def _assert_unchanged(model, before):
    for p, b in zip(model.params, before):
        np.testing.assert_array_equal(p.get_value(), b)


def _classifier_step():
    model = MaskedEmbeddingClassifier(20, 4, 3, dtype="float64")
    syms = me_inputs()
    cost = model.cost(*syms)
    return model, mg.function(list(syms), cost, updates=sgd_updates(model.params, cost, 0.5))


@pytest.mark.parametrize(
    "tokens,mask,labels,error,match",
    [
        ([[1, 20]], [[1.0, 1.0]], [0], IndexError, "token id 20 is out of range"),
        ([[1, -1]], [[1.0, 1.0]], [0], IndexError, "token id -1 is out of range"),
        ([[1, 2]], [[1.0, 1.0, 0.0]], [0], ValueError, "mask.*shape"),
        ([[1, 2]], [[1.0], [1.0]], [0], ValueError, "mask.*shape"),
        ([[1, 2]], [[1.0, 1.0]], [3], IndexError, "label 3 is out of range"),
        ([[1, 2]], [[1.0, 1.0]], [-1], IndexError, "label -1 is out of range"),
    ],
)
def test_classifier_bad_input_raises_and_changes_nothing(tokens, mask, labels, error, match):
    model, step = _classifier_step()
    step(np.array([[1, 2]]), np.array([[1.0, 1.0]]), np.array([1]))  # a good step first
    before = _snapshot(model)
    with pytest.raises(error, match=match):
        step(np.array(tokens), np.array(mask), np.array(labels))
    _assert_unchanged(model, before)


def test_classifier_masked_out_ids_are_not_range_checked():
    """An out-of-range id under mask 0 is padding: ignored, not an error."""
    model, step = _classifier_step()
    step(np.array([[1, 99]]), np.array([[1.0, 0.0]]), np.array([1]))


@pytest.mark.parametrize("n_cols", [10, 12])
def test_fm_csr_with_wrong_columns_raises_and_changes_nothing(n_cols):
    fm = FactorizationMachine(11, 2, dtype="float64")
    Xs, ys = fm_inputs()
    cost = fm.cost(Xs, ys, l2=0.1)
    step = mg.function([Xs, ys], cost, updates=sgd_updates(fm.params, cost, 0.5))
    step(random_csr(3, 11, 0.5, seed=0), np.ones(3))
    before = _snapshot(fm)
    with pytest.raises(ValueError, match=f"{n_cols} columns"):
        step(random_csr(3, n_cols, 0.5, seed=1), np.ones(3))
    _assert_unchanged(fm, before)


def test_fm_rejects_unknown_loss():
    fm = FactorizationMachine(5, 2)
    with pytest.raises(ValueError, match="loss"):
        fm.cost(*fm_inputs(), loss="hinge")


# -------------------------------------------------------------------- pickling and dtypes


def test_models_pickle_with_their_parameters():
    for model in (FactorizationMachine(10, 2, seed=3), MaskedEmbeddingClassifier(10, 2, 2)):
        clone = pickle.loads(pickle.dumps(model))
        for a, b in zip(model.params, clone.params):
            np.testing.assert_array_equal(a.get_value(), b.get_value())
        assert [p.name for p in clone.params] == [p.name for p in model.params]


def test_models_honour_dtype_and_floatx():
    fm = FactorizationMachine(10, 2, dtype="float32")
    me = MaskedEmbeddingClassifier(10, 2, 2, dtype="float32")
    assert {p.dtype for p in fm.params + me.params} == {"float32"}
    old = mg.config.floatX
    try:
        mg.config.floatX = "float32"
        assert FactorizationMachine(3, 2).V.dtype == "float32"
    finally:
        mg.config.floatX = old
