"""Triplet-loss embedding: one table, anchors pulled towards positives, away from negatives.

For a batch of id triplets ``(a, p, n)`` gathered from one table ``E`` (vocab, dim):

    loss = mean_i max(0, |E[a_i] - E[p_i]|^2 - |E[a_i] - E[n_i]|^2 + margin)

(the hinge of Weinberger & Saul's large-margin nearest neighbours and of FaceNet,
Schroff et al. 2015, on squared Euclidean distances). This is the project's first
motivating model: the three id columns are stacked and gathered in *one* row gather, so
the gradient of ``E`` is row-sparse over the at most ``3 * batch`` rows of the batch.
With momentum that matters most: PyTorch's ``nn.Embedding(sparse=True)`` is refused by
``torch.optim.SGD(momentum=...)``, so momentum there means a dense O(vocab * dim) update
per step, while ``mg.optim.Momentum(sparse="exact")`` moves only the touched rows and
catches up the rest in closed form (the same parameters as the dense optimizer).
"""
from __future__ import annotations

import numpy as np

import minigrad as mg
from minigrad.models.masked_embedding import normal_table


class TripletEmbedding:
    """A table ``E`` (n_items, dim) trained with the triplet margin loss.

    ``margin`` (> 0) is the gap the loss asks between the negative and the positive
    squared distances. ``E`` is initialised N(0, init_std^2) from ``seed``. Holds only
    a shared variable and numbers, so it pickles (``mg.parallel.hogwild``).
    """

    def __init__(self, n_items, dim, margin=1.0, seed=0, dtype=None, init_std=0.1):
        if n_items < 2 or dim < 1:
            raise ValueError(f"need n_items >= 2 and dim >= 1, got {n_items}, {dim}")
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        dtype = np.dtype(dtype or mg.config.floatX)
        rng = np.random.default_rng(seed)
        self.n_items, self.dim, self.margin = int(n_items), int(dim), float(margin)
        self.E = mg.shared(normal_table(rng, (n_items, dim), init_std, dtype), name="E")

    @property
    def params(self):
        return [self.E]

    def embed(self, ids):
        """Symbolic rows ``E[ids]`` (any integer rank)."""
        return self.E[ids]

    def distances(self, anchor, positive, negative):
        """``(d_ap, d_an)``: squared distances anchor-positive and anchor-negative, (batch,).

        The three id vectors are stacked into a (batch, 3) matrix and gathered once.
        """
        rows = self.E[mg.stack([anchor, positive, negative], axis=1)]
        a, p, n = rows[:, 0], rows[:, 1], rows[:, 2]
        return ((a - p) ** 2).sum(axis=1), ((a - n) ** 2).sum(axis=1)

    def cost(self, anchor, positive, negative, margin=None):
        """Mean hinge ``max(0, d_ap - d_an + margin)`` over the batch (margin: the model's
        unless given)."""
        margin = self.margin if margin is None else float(margin)
        d_ap, d_an = self.distances(anchor, positive, negative)
        return mg.relu(d_ap - d_an + margin).mean()

    def violations(self, anchor, positive, negative):
        """Symbolic fraction of triplets whose negative is not farther than the positive
        (``d_an <= d_ap``): the error rate the loss drives down."""
        d_ap, d_an = self.distances(anchor, positive, negative)
        return mg.cast(d_an <= d_ap, self.E.dtype).mean()


def triplets_from_classes(labels, n_triplets, seed=0):
    """``(anchor, positive, negative)`` id vectors drawn from items with class ``labels``.

    Anchor uniform over the items whose class has at least two members, positive another
    item of its class, negative an item of another class; int64, deterministic in
    ``seed``. This is the usual way triplets are built from labelled items (classes could
    be users' sessions, co-clicked products, word contexts).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size < 2:
        raise ValueError("labels must be a vector of at least two items")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    if classes.size < 2:
        raise ValueError("triplets need at least two classes")
    usable = counts >= 2
    if not usable.any():
        raise ValueError("triplets need a class with at least two items")
    # anchor: an item of a usable class (classes weighted by size), positive: another one
    weights = np.where(usable, counts, 0).astype(np.float64)
    cls = rng.choice(classes.size, size=n_triplets, p=weights / weights.sum())
    first = rng.integers(0, counts[cls])
    second = (first + rng.integers(1, counts[cls])) % counts[cls]
    anchor = order[starts[cls] + first]
    positive = order[starts[cls] + second]
    # negative: uniform over the items outside the anchor's class (skip its block)
    pick = rng.integers(0, labels.size - counts[cls])
    pick = np.where(pick >= starts[cls], pick + counts[cls], pick)
    negative = order[pick]
    return anchor.astype(np.int64), positive.astype(np.int64), negative.astype(np.int64)
