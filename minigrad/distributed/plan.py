"""The batches of a run, fixed up front: who computes a batch may change, what it is not.

Epoch ``e`` visits the rows in the order ``np.random.default_rng([seed, e]).permutation(n)``
cut into consecutive batches of ``batch_size`` (the last one may be smaller). Batches are
numbered across the run; shards use that number to apply each batch at most once. Work is
handed out in *chunks* of consecutive batches: a dead worker's chunk goes to the next
free worker, which is how data is reassigned.
"""
from __future__ import annotations

import numpy as np


def epoch_order(n_rows, seed, epoch):
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n_rows)


def batch_plan(n_rows, epochs, batch_size, seed):
    """List of row-index arrays, one per batch of the run, in run order."""
    plan = []
    for epoch in range(epochs):
        order = epoch_order(n_rows, seed, epoch)
        plan += [order[i:i + batch_size] for i in range(0, n_rows, batch_size)]
    return plan


def chunks(n_batches, chunk_batches):
    """``(first, stop)`` batch ranges of at most ``chunk_batches`` batches."""
    return [(i, min(i + chunk_batches, n_batches)) for i in range(0, n_batches, chunk_batches)]
