"""Masked-embedding text classifier (neural bag of words with learned word weights).

Document vector ``r = sum_w E[w] * M[w] * mask_w`` over the real tokens of a padded
``(batch, length)`` token matrix, ``M`` initialised to ones (Sheikh et al., "Learning
word importance with the neural bag-of-words model", arXiv 1612.03969), then a linear
layer and a softmax.

How padding is kept out of the gradient: :class:`BagOfWords` (a non-differentiable
structural op) turns ``(tokens, mask)`` into a CSR ``(batch, vocab)`` matrix holding one
entry per *real* token (mask != 0) with the mask value as its weight; then
``r = S @ (E[cols] * M[cols])`` with ``cols`` the stored columns of ``S`` (what
``mg.sparse.dot(S, E * M)`` computes after the core pushes the gather through ``E * M``;
the gathers are written out so that ``M``'s broadcast axis (vocab, 1) is reduced on the
gathered rows). Only the rows of the real tokens are read, and the gradients of ``E``
and ``M`` are row-sparse over those rows only: padding positions contribute no index at
all (not even a zero row), so gradient noise or weight decay applied "to the touched
rows" never moves them.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

import minigrad as mg
from minigrad.graph import Apply, Op
from minigrad.ops.sparse import CSRColumns, CSRGatheredDot
from minigrad.types import INT_KINDS, CSRType
from minigrad.variables import as_variable


class BagOfWords(Op):
    """``(tokens, mask, table) -> CSR (batch, table rows)``: one entry per real token.

    ``table`` is read for its row count only (``shape_only_inputs``). Validates, before
    anything runs that could change state: ``mask`` has the shape of ``tokens``
    (``ValueError``) and every real token is a valid row (``IndexError``). Entries whose
    mask is 0 are dropped, whatever their token id. No gradient (structure only).
    """

    __props__ = ("dtype",)
    shape_only_inputs = (2,)

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name

    def make_node(self, tokens, mask, table):
        tokens, mask, table = (as_variable(v) for v in (tokens, mask, table))
        if tokens.ndim != 2 or np.dtype(tokens.dtype).kind not in INT_KINDS:
            raise TypeError(f"tokens must be an integer matrix (batch, length), got {tokens.type}")
        if mask.ndim != 2:
            raise TypeError(f"mask must be a matrix (batch, length), got {mask.type}")
        return Apply(self, [tokens, mask, table], [CSRType(self.dtype, table.type.shape[0])])

    def perform(self, node, inputs):
        tokens, mask, table = inputs
        names = [v.name or default for v, default in zip(node.inputs, ("tokens", "mask"))]
        if mask.shape != tokens.shape:
            raise ValueError(
                f"{names[1]!r} has shape {mask.shape} but {names[0]!r} has shape "
                f"{tokens.shape}; they must match"
            )
        # array-module generic: the same code runs on NumPy and, in backend="cupy", on CuPy
        xp, sparse = _array_modules(tokens)
        n_rows = np.shape(table)[0]
        keep = mask != 0
        cols = tokens[keep]
        if cols.size and (int(cols.min()) < 0 or int(cols.max()) >= n_rows):
            bad = int(cols.min()) if int(cols.min()) < 0 else int(cols.max())
            raise IndexError(
                f"{names[0]!r}: token id {bad} is out of range for a vocabulary of "
                f"{n_rows} (valid: 0..{n_rows - 1})"
            )
        index_dtype = np.int64 if xp is np else np.int32  # cupyx CSR takes int32 indices
        indptr = xp.zeros(tokens.shape[0] + 1, dtype=index_dtype)
        indptr[1:] = xp.cumsum(keep.sum(axis=1))
        data = mask[keep].astype(self.dtype, copy=False)
        out = sparse.csr_matrix((data, cols.astype(index_dtype, copy=False), indptr),
                                shape=(tokens.shape[0], n_rows))
        return (out,)

    def grad(self, inputs, outputs, output_grads):
        return [None, None, None]


def _array_modules(x):
    """``(numpy, scipy.sparse)`` for host arrays, ``(cupy, cupyx.scipy.sparse)`` on a GPU."""
    from minigrad.types import array_module

    xp = array_module(x)
    if xp is np:
        return np, sp
    import cupyx.scipy.sparse as cupy_sparse

    return xp, cupy_sparse


def _register_cupy():
    """Run ``BagOfWords`` on the device in ``backend="cupy"`` (its perform is generic)."""
    from minigrad.backends.cupy import device_generic

    device_generic(BagOfWords)


_register_cupy()


def bag_of_words(tokens, mask, table, dtype=None):
    """Symbolic CSR bag of the real tokens (see :class:`BagOfWords`)."""
    return BagOfWords(dtype or table.dtype)(tokens, mask, table)


class MaskedEmbeddingClassifier:
    """``softmax(W^T (sum_w E[w] * M[w]) + c)`` over the real tokens of each document.

    Parameters (``.params``): ``E`` (vocab, dim) ~ N(0, init_std^2), ``M`` (vocab, 1)
    ones (one learned importance per word; ``vector_mask=True`` gives (vocab, dim)),
    ``W`` (dim, n_classes) Glorot-uniform and ``c`` (n_classes,) zeros. ``E`` and ``M``
    get row-sparse gradients. Holds only shared variables and numbers: picklable.
    """

    def __init__(self, vocab_size, dim, n_classes, seed=0, dtype=None, init_std=0.1,
                 vector_mask=False):
        if vocab_size < 1 or dim < 1 or n_classes < 2:
            raise ValueError(
                f"need vocab_size >= 1, dim >= 1, n_classes >= 2; got {vocab_size}, {dim}, "
                f"{n_classes}"
            )
        dtype = np.dtype(dtype or mg.config.floatX)
        rng = np.random.default_rng(seed)
        self.vocab_size, self.dim, self.n_classes = int(vocab_size), int(dim), int(n_classes)
        self.E = mg.shared(normal_table(rng, (vocab_size, dim), init_std, dtype), name="E")
        self.M = mg.shared(np.ones((vocab_size, dim if vector_mask else 1), dtype), name="M")
        limit = np.sqrt(6.0 / (dim + n_classes))
        self.W = mg.shared(rng.uniform(-limit, limit, (dim, n_classes)).astype(dtype), name="W")
        self.c = mg.shared(np.zeros(n_classes, dtype), name="c")

    @property
    def params(self):
        return [self.E, self.M, self.W, self.c]

    def document_vectors(self, tokens, mask):
        """``r``: (batch, dim) sum of the masked, weighted word vectors.

        With one weight per word, ``r = bag @ (M * E)`` is ``mg.sparse.dot(bag, E,
        scale=M)``: one weighted pass over the gathered rows, never the products.
        """
        bag = bag_of_words(tokens, mask, self.E)
        if self.M.type.shape[1] == 1:
            return mg.sparse.dot(bag, self.E, scale=self.M)
        cols = CSRColumns()(bag, self.E)
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
