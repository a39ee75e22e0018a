"""``BagOfWords``: a padded ``(batch, length)`` token matrix as a CSR bag of its real tokens.

The masked-embedding classifier (``mg.models.MaskedEmbeddingClassifier``) and the word2vec
example reach their tables through this op followed by a CSR product, so padding never
appears in a gradient: a masked-out position contributes no index at all (not even a zero
row), and gradient noise or weight decay applied "to the touched rows" never moves it.
Structural, so it has no gradient.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from minigrad.graph import Apply, Op
from minigrad.types import INT_KINDS, CSRType
from minigrad.variables import as_variable


class BagOfWords(Op):
    """``(tokens, mask, shape_of(table)) -> CSR (batch, table rows)``: one entry per real
    token (``bag_of_words(tokens, mask, table)``).

    The table matters for its row count only, so its data is not read. Validates, before
    anything runs that could change state: ``mask`` has the shape of ``tokens``
    (``ValueError``) and every real token is a valid row (``IndexError``). Entries whose
    mask is 0 are dropped, whatever their token id. No gradient (structure only).
    """

    __props__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name

    def make_node(self, tokens, mask, table_shape):
        from minigrad.ops.shape import check_shape_input, static_shape

        tokens, mask, table_shape = (as_variable(v) for v in (tokens, mask, table_shape))
        check_shape_input(table_shape, self, "table")
        if tokens.ndim != 2 or np.dtype(tokens.dtype).kind not in INT_KINDS:
            raise TypeError(f"tokens must be an integer matrix (batch, length), got {tokens.type}")
        if mask.ndim != 2:
            raise TypeError(f"mask must be a matrix (batch, length), got {mask.type}")
        return Apply(self, [tokens, mask, table_shape],
                     [CSRType(self.dtype, static_shape(table_shape)[0])])

    def perform(self, node, inputs):
        tokens, mask, table_shape = inputs
        names = [v.name or default for v, default in zip(node.inputs, ("tokens", "mask"))]
        if mask.shape != tokens.shape:
            raise ValueError(
                f"{names[1]!r} has shape {mask.shape} but {names[0]!r} has shape "
                f"{tokens.shape}; they must match"
            )
        # array-module generic: the same code runs on NumPy and, in backend="cupy", on CuPy
        xp, sparse = _array_modules(tokens)
        n_rows = int(table_shape[0])
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
    from minigrad.ops.shape import shape_of

    table = as_variable(table)
    return BagOfWords(dtype or table.dtype)(tokens, mask, shape_of(table))
