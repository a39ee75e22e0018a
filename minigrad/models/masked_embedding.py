"""Masked-embedding text classifier (neural bag of words with learned word importance).

Document vector ``r = sum_w mask_w * E[w] * M[w]`` (element-wise product) over the real
tokens of a padded ``(batch, length)`` token matrix, then a linear layer and a softmax.
``E`` and ``M`` both have shape ``(vocab, dim)`` and ``M`` starts at ones: the model
learns a weight for every *dimension* of every word (the seed's model, after Sheikh et
al., "Learning word importance with the neural bag-of-words model", arXiv 1612.03969).
``mask_kind="per_word"`` offers the cheaper variant with one scalar weight per word
(``M`` of shape ``(vocab, 1)``); it is an option, never the default.

How padding is kept out of the gradient: :class:`~minigrad.ops.bag.BagOfWords` (a
non-differentiable structural op) turns ``(tokens, mask)`` into a CSR ``(batch, vocab)``
matrix ``S`` holding one entry per *real* token (mask != 0) with the mask value as its
weight; then ``r = S @ (E[cols] * M[cols])`` with ``cols`` the stored columns of ``S``
(per dimension), or ``mg.sparse.dot(S, E, scale=M)`` (per word: one weighted pass). Only
the rows of the real tokens are read, and the gradients of ``E`` and ``M`` are row-sparse
over those rows only: padding positions contribute no index at all (not even a zero row),
so gradient noise or weight decay applied "to the touched rows" never moves them.
"""
from __future__ import annotations

import warnings

import numpy as np

import minigrad as mg
from minigrad.ops.bag import BagOfWords, bag_of_words
from minigrad.ops.sparse import CSRGatheredDot, csr_columns

__all__ = ["BagOfWords", "MaskedEmbeddingClassifier", "bag_of_words", "log_inverse_frequency",
           "MASK_KINDS"]

MASK_KINDS = ("per_dimension", "per_word")


class MaskedEmbeddingClassifier:
    """``softmax(W^T (sum_w E[w] * M[w]) + c)`` over the real tokens of each document.

    Parameters (``.params``): ``E`` (vocab, dim) ~ N(0, init_std^2); ``M`` ones, of shape
    (vocab, dim) with ``mask_kind="per_dimension"`` (the default: one weight per word and
    dimension) or (vocab, 1) with ``mask_kind="per_word"`` (one scalar importance per
    word); ``W`` (dim, n_classes) Glorot-uniform and ``c`` (n_classes,) zeros. ``E`` and
    ``M`` get row-sparse gradients. Holds only shared variables and numbers: picklable.

    ``vector_mask`` is the deprecated spelling of the same choice (``True`` = per
    dimension, ``False`` = per word); it warns and may not contradict ``mask_kind``.
    """

    def __init__(self, vocab_size, dim, n_classes, seed=0, dtype=None, init_std=0.1,
                 mask_kind=None, vector_mask=None):
        if vocab_size < 1 or dim < 1 or n_classes < 2:
            raise ValueError(
                f"need vocab_size >= 1, dim >= 1, n_classes >= 2; got {vocab_size}, {dim}, "
                f"{n_classes}"
            )
        mask_kind = _resolve_mask_kind(mask_kind, vector_mask)
        dtype = np.dtype(dtype or mg.config.floatX)
        rng = np.random.default_rng(seed)
        self.vocab_size, self.dim, self.n_classes = int(vocab_size), int(dim), int(n_classes)
        self.mask_kind = mask_kind
        self.E = mg.shared(normal_table(rng, (vocab_size, dim), init_std, dtype), name="E")
        mask_width = dim if mask_kind == "per_dimension" else 1
        self.M = mg.shared(np.ones((vocab_size, mask_width), dtype), name="M")
        limit = np.sqrt(6.0 / (dim + n_classes))
        self.W = mg.shared(rng.uniform(-limit, limit, (dim, n_classes)).astype(dtype), name="W")
        self.c = mg.shared(np.zeros(n_classes, dtype), name="c")

    @property
    def params(self):
        return [self.E, self.M, self.W, self.c]

    def document_vectors(self, tokens, mask):
        """``r``: (batch, dim) sum of the masked, weighted word vectors.

        Per dimension: the rows of ``E`` and ``M`` for the stored tokens are gathered,
        multiplied and summed per document (``E * M`` is never formed for the whole
        vocabulary). Per word: ``r = bag @ (M * E)`` is ``mg.sparse.dot(bag, E, scale=M)``,
        one weighted pass over the gathered rows.
        """
        bag = bag_of_words(tokens, mask, self.E)
        if self.mask_kind == "per_word":
            return mg.sparse.dot(bag, self.E, scale=self.M)
        cols = csr_columns(bag, self.E)
        return CSRGatheredDot()(bag, self.E[cols] * self.M[cols])

    def logits(self, tokens, mask):
        return self.document_vectors(tokens, mask) @ self.W + self.c

    def predict(self, tokens, mask):
        """Class probabilities, (batch, n_classes)."""
        return mg.softmax(self.logits(tokens, mask), axis=-1)

    def cost(self, tokens, mask, labels, class_weights=None):
        """Mean cross-entropy ``-w[y] log p(y | doc)`` over the batch.

        ``class_weights``: ``None``, a per-class array/variable (e.g.
        :func:`log_inverse_frequency`). The mean is over rows (not divided by the sum of
        the weights, unlike PyTorch's ``CrossEntropyLoss(weight=...)``).
        """
        weights = None
        if class_weights is not None:
            weights = class_weights
            if not isinstance(weights, mg.Variable):
                weights = mg.constant(np.asarray(weights, dtype=self.E.dtype))
        return mg.nn.cross_entropy(self.logits(tokens, mask), labels, weights)


def _resolve_mask_kind(mask_kind, vector_mask):
    """``mask_kind`` from the new argument and the deprecated ``vector_mask`` flag."""
    if vector_mask is not None:
        warnings.warn("MaskedEmbeddingClassifier(vector_mask=...) is deprecated; use "
                      "mask_kind='per_dimension' (the default) or mask_kind='per_word'",
                      DeprecationWarning, stacklevel=3)
        implied = "per_dimension" if vector_mask else "per_word"
        if mask_kind is not None and mask_kind != implied:
            raise ValueError(f"vector_mask={vector_mask!r} contradicts mask_kind={mask_kind!r}")
        mask_kind = implied
    mask_kind = "per_dimension" if mask_kind is None else mask_kind
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"mask_kind must be one of {MASK_KINDS}, got {mask_kind!r}")
    return mask_kind


def normal_table(rng, shape, std, dtype):
    """N(0, std^2) values drawn directly in ``dtype`` (float32 tables of 10^8 entries are
    drawn without a float64 temporary twice their size)."""
    draw_dtype = np.float32 if dtype == np.float32 else np.float64
    table = rng.standard_normal(shape, dtype=draw_dtype)
    table *= draw_dtype(std)
    return table.astype(dtype, copy=False)


def log_inverse_frequency(labels, n_classes):
    """Class weights ``log(N_total / N_y)`` (0 for a class that never occurs).

    Frequent classes get small weights and rare ones large; a class making up the whole
    data set gets 0. Returned as float64 NumPy array of length ``n_classes``.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    counts = np.bincount(labels.astype(np.int64), minlength=n_classes).astype(np.float64)
    out = np.zeros(n_classes)
    seen = counts > 0
    out[seen] = np.log(labels.size / counts[seen])
    return out
