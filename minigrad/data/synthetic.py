"""Synthetic data sets that look like the sparse problems minigrad is built for.

Both generators are fully vectorised and deterministic per ``seed`` so that
benchmarks and tests can ask for millions of rows (or millions of items /
vocabulary words) without Python loops, and get the same data every time.

* :func:`synthetic_ratings` - like/dislike ratings with a one-hot
  ``[users | items | extra fields]`` design matrix (a factorisation-machine /
  embedding-bag style problem where only a few parameter rows are touched per
  example).
* :func:`synthetic_documents` - padded token-id matrices with a Zipf word law
  and class-indicative words (a bag-of-words / embedding classification problem).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

__all__ = [
    "Ratings",
    "Documents",
    "synthetic_ratings",
    "synthetic_documents",
    "zipf_cdf",
    "sample_zipf",
]


class Ratings(NamedTuple):
    """A like/dislike rating data set.

    Unpacks as ``X, y, user, item, rating, n_users, n_items``; most code only
    needs ``X, y`` (``X, y, *_ = ratings``) or the attributes.

    X: ``scipy.sparse.csr_matrix`` (n_ratings, n_users + n_items [+ extra]) with
        exactly one 1 in the user block and one in the item block per row (plus
        one per extra field), columns sorted within each row.
    y: (n_ratings,) float array in {0, 1}; 1 means "like".
    user, item: (n_ratings,) int64 compact indices (column of the user is
        ``user``, column of the item is ``n_users + item``).
    rating: (n_ratings,) float64; the real-valued rating ``y`` was thresholded
        from (latent score for synthetic data, stars for MovieLens).
    n_users, n_items: sizes of the user and item blocks of ``X``.
    """

    X: sp.csr_matrix
    y: np.ndarray
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    n_users: int
    n_items: int


class Documents(NamedTuple):
    """A padded token-id classification data set; unpacks as ``tokens, mask, labels``.

    tokens: (n_docs, L) int64, 0 is padding and never a real token.
    mask: (n_docs, L) float, 1.0 where ``tokens`` holds a real token, else 0.0.
    labels: (n_docs,) int64 in ``[0, n_classes)``.
    """

    tokens: np.ndarray
    mask: np.ndarray
    labels: np.ndarray


# ----------------------------------------------------------------------------
# Zipf sampling
# ----------------------------------------------------------------------------


def zipf_cdf(n: int, exponent: float = 1.0) -> np.ndarray:
    """CDF of a finite Zipf law ``p(rank r) ~ 1 / r**exponent`` for ranks 1..n.

    Precomputing the CDF once lets :func:`sample_zipf` draw any number of
    samples by inverse-CDF (``searchsorted``), which is fast for millions of
    outcomes, unlike ``rng.choice(p=...)`` which rebuilds it on every call.
    """
    if n <= 0:
        raise ValueError(f"zipf_cdf needs n >= 1, got {n}")
    weights = np.arange(1, n + 1, dtype=np.float64) ** -float(exponent)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


def sample_zipf(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """Draw ``size`` zero-based ranks (0 = most frequent) from a precomputed Zipf CDF."""
    ranks = np.searchsorted(cdf, rng.random(size), side="right")
    # rng.random() < 1 and cdf[-1] == 1, but guard against float round-off.
    return np.minimum(ranks, cdf.size - 1).astype(np.int64, copy=False)


# ----------------------------------------------------------------------------
# Ratings
# ----------------------------------------------------------------------------


def synthetic_ratings(
    n_users: int,
    n_items: int,
    density: float = 0.01,
    seed: int = 0,
    k: int = 8,
    n_extra: int = 0,
    dtype=np.float64,
    *,
    n_ratings: int | None = None,
    popularity: float = 1.0,
    extra_levels: int = 8,
    noise: float = 0.5,
) -> Ratings:
    """Like/dislike ratings from a low-rank preference model with Zipf item popularity.

    The generative story, chosen to mimic real recommender data:

    * which items get rated follows a power law (``p(item of rank r) ~ r**-popularity``;
      the ranks are randomly permuted over item ids), so a few items get most
      ratings and most item rows of an embedding table are rarely touched;
    * users are uniform;
    * the latent rating is ``<U_u, V_i> + b_i + sum of extra-field effects + noise``
      with rank-``k`` Gaussian factors and a Gaussian item bias;
    * ``y = 1`` ("like") when the latent rating is above its median, so about
      half the ratings are positive.

    Args:
        n_users, n_items: sizes of the user and item blocks.
        density: fraction of the ``n_users x n_items`` matrix that is rated;
            ignored if ``n_ratings`` is given.  Pairs are drawn with replacement,
            so a (user, item) pair can occasionally repeat.
        seed: seed of the NumPy generator; the output is a pure function of the
            arguments.
        k: rank of the user / item factors.
        n_extra: number of extra categorical fields (e.g. context); each has
            ``extra_levels`` one-hot columns after the item block and adds a small
            random effect to the latent rating, so each row holds ``2 + n_extra`` ones.
        dtype: float dtype of ``X.data`` and ``y``.
        n_ratings: exact number of rows (overrides ``density``).
        popularity: Zipf exponent of item popularity.
        extra_levels: number of levels of each extra field.
        noise: standard deviation of the Gaussian rating noise.

    Returns:
        :class:`Ratings` ``(X, y, user, item, rating, n_users, n_items)``.
    """
    _check_positive(n_users=n_users, n_items=n_items, k=k, extra_levels=extra_levels)
    if n_extra < 0:
        raise ValueError(f"n_extra must be >= 0, got {n_extra}")
    n = _n_ratings(n_users, n_items, density, n_ratings)
    rng = np.random.default_rng(seed)

    user = rng.integers(0, n_users, size=n, dtype=np.int64)
    item_of_rank = rng.permutation(n_items).astype(np.int64)
    item = item_of_rank[sample_zipf(rng, zipf_cdf(n_items, popularity), n)]
    extra = rng.integers(0, extra_levels, size=(n, n_extra), dtype=np.int64)

    rating = _latent_rating(rng, user, item, extra, extra_levels, k, noise)
    y = (rating > np.median(rating)).astype(dtype) if n else np.zeros(0, dtype)
    X = _one_hot_design(user, item, extra, n_users, n_items, extra_levels, dtype)
    return Ratings(X, y, user, item, rating, int(n_users), int(n_items))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _n_ratings(n_users: int, n_items: int, density: float, n_ratings: int | None) -> int:
    if n_ratings is not None:
        if n_ratings < 0:
            raise ValueError(f"n_ratings must be >= 0, got {n_ratings}")
        return int(n_ratings)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return max(1, int(round(density * n_users * n_items)))


def _factors_for(rng: np.random.Generator, ids: np.ndarray, k: int, scale: float):
    """Random rows only for the ids that occur, so 3M items don't need a 3M x k table.

    Returns the per-occurrence rows (``len(ids) x k``).
    """
    unique, inverse = np.unique(ids, return_inverse=True)
    table = rng.standard_normal((unique.size, k)) * scale
    return table[inverse]


def _latent_rating(rng, user, item, extra, extra_levels: int, k: int, noise: float):
    """Real-valued preference: low-rank interaction + item bias + extra effects + noise."""
    n = user.size
    u = _factors_for(rng, user, k, k**-0.25)
    v = _factors_for(rng, item, k, k**-0.25)
    rating = np.einsum("ij,ij->i", u, v)
    rating += _factors_for(rng, item, 1, 1.0)[:, 0]
    if extra.shape[1]:
        field_effects = rng.standard_normal((extra.shape[1], extra_levels)) * 0.3
        rating += field_effects[np.arange(extra.shape[1]), extra].sum(axis=1)
    rating += rng.standard_normal(n) * noise
    return rating


def _one_hot_design(user, item, extra, n_users, n_items, extra_levels, dtype) -> sp.csr_matrix:
    """CSR ``[users | items | extra fields]`` with a fixed number of ones per row.

    Built directly from ``indptr``/``indices`` (no COO sort), which is what makes
    10^6+ rows cheap.  Columns come out sorted because the blocks are ordered.
    """
    n, n_extra = extra.shape
    per_row = 2 + n_extra
    offsets = n_users + n_items + extra_levels * np.arange(n_extra, dtype=np.int64)
    cols = np.empty((n, per_row), dtype=np.int64)
    cols[:, 0] = user
    cols[:, 1] = n_users + item
    cols[:, 2:] = offsets + extra
    n_cols = n_users + n_items + extra_levels * n_extra
    index_dtype = np.int32 if max(n_cols, n * per_row) < 2**31 else np.int64
    indptr = np.arange(0, n * per_row + 1, per_row, dtype=index_dtype)
    data = np.ones(n * per_row, dtype=dtype)
    X = sp.csr_matrix((data, cols.ravel().astype(index_dtype), indptr), shape=(n, n_cols))
    X.has_sorted_indices = True
    return X


# ----------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------


def synthetic_documents(
    n_docs: int,
    vocab_size: int,
    n_classes: int,
    seed: int = 0,
    length: int | tuple[int, int] = (5, 40),
    imbalance: float | Sequence[float] = 1.0,
    dtype=np.float64,
    *,
    exponent: float = 1.0,
    words_per_class: int = 5,
    signal: float = 0.15,
    task_seed: int = 0,
) -> Documents:
    """Padded token documents with a Zipf word law and class-indicative words.

    * Real tokens are ids ``1..vocab_size-1`` (id 0 is padding); id ``r`` has
      Zipf rank ``r``, so id 1 is the most frequent word, as in a vocabulary
      built by frequency.
    * Each class owns ``words_per_class`` distinct mid-frequency words; every
      token of a document of class ``c`` is, with probability ``signal``,
      replaced by a uniform draw from class ``c``'s words.  A bag-of-words model
      can therefore learn the labels well above chance, but not trivially.
    * Class ``c`` has probability proportional to ``imbalance**-c`` (1.0 gives
      balanced classes, 2.0 halves each successive class), or ``imbalance`` can
      be an explicit probability vector of length ``n_classes``.

    Args:
        n_docs, vocab_size, n_classes: sizes (``vocab_size`` includes the padding id).
        seed: seed of the NumPy generator.
        length: ``(min, max)`` inclusive uniform range of document lengths, or an
            int mean length (lengths ``1 + Poisson(mean - 1)``).
        imbalance: see above.
        dtype: float dtype of ``mask``.
        exponent: Zipf exponent of the background word law.
        words_per_class: number of indicative words per class.
        signal: per-token probability of emitting a class word.
        task_seed: seed that picks the class words, i.e. the task itself.  It is
            separate from ``seed`` so that calls with different ``seed`` values
            are independent samples of the *same* task (e.g. train and test sets).

    Returns:
        :class:`Documents` ``(tokens, mask, labels)``; ``L`` is the longest length drawn.
    """
    _check_positive(n_docs=n_docs, n_classes=n_classes, words_per_class=words_per_class)
    n_real = vocab_size - 1
    if n_real < n_classes * words_per_class:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for {n_classes} classes x "
            f"{words_per_class} class words (+ padding id 0)"
        )
    if not 0.0 <= signal <= 1.0:
        raise ValueError(f"signal must be in [0, 1], got {signal}")
    rng = np.random.default_rng(seed)

    labels = rng.choice(n_classes, size=n_docs, p=class_probabilities(n_classes, imbalance))
    lengths = _doc_lengths(rng, n_docs, length)
    task_rng = np.random.default_rng(task_seed)
    class_words = _class_words(task_rng, n_real, n_classes, words_per_class)

    flat_labels = np.repeat(labels, lengths)
    flat = 1 + sample_zipf(rng, zipf_cdf(n_real, exponent), flat_labels.size)
    boosted = rng.random(flat.size) < signal
    pick = rng.integers(0, words_per_class, size=int(boosted.sum()))
    flat[boosted] = class_words[flat_labels[boosted], pick]

    mask = np.arange(lengths.max())[None, :] < lengths[:, None]
    tokens = np.zeros(mask.shape, dtype=np.int64)
    tokens[mask] = flat  # row-major fill matches np.repeat order
    return Documents(tokens, mask.astype(dtype), labels.astype(np.int64))


def class_probabilities(n_classes: int, imbalance: float | Sequence[float]) -> np.ndarray:
    """Class prior: ``imbalance**-c`` normalised, or a given vector normalised."""
    if np.ndim(imbalance) == 0:
        if imbalance <= 0:
            raise ValueError(f"imbalance must be positive, got {imbalance}")
        p = float(imbalance) ** -np.arange(n_classes, dtype=np.float64)
    else:
        p = np.asarray(imbalance, dtype=np.float64)
        if p.shape != (n_classes,) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(
                f"imbalance vector must have {n_classes} non-negative entries with a "
                f"positive sum, got {imbalance!r}"
            )
    return p / p.sum()


def _doc_lengths(rng: np.random.Generator, n_docs: int, length) -> np.ndarray:
    if np.ndim(length) == 0:
        if length < 1:
            raise ValueError(f"mean length must be >= 1, got {length}")
        return 1 + rng.poisson(float(length) - 1.0, size=n_docs).astype(np.int64)
    lo, hi = (int(v) for v in length)
    if not 1 <= lo <= hi:
        raise ValueError(f"length range must satisfy 1 <= min <= max, got {length!r}")
    return rng.integers(lo, hi + 1, size=n_docs, dtype=np.int64)


def _class_words(rng, n_real: int, n_classes: int, words_per_class: int) -> np.ndarray:
    """Distinct mid-frequency token ids per class, shape (n_classes, words_per_class).

    Very frequent ids (stop-word like) are skipped when the vocabulary allows,
    so the class signal is not drowned by background counts of the same word.
    """
    needed = n_classes * words_per_class
    start = min(20, n_real - needed)
    stop = min(n_real, start + max(20 * needed, 1000))
    ids = 1 + start + rng.choice(stop - start, size=needed, replace=False)
    return ids.reshape(n_classes, words_per_class).astype(np.int64)
