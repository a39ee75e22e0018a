"""Triplet-loss embedding trained with exact sparse momentum, in one process and under Hogwild.

    python examples/triplet_embedding.py [--items 20000] [--dim 32] [--epochs 2] [--workers 2]

The project's first motivating model: items (products, users, words...) fall into groups;
triplets ``(anchor, positive, negative)`` take two items of one group and one of another,
and ``mg.models.TripletEmbedding`` learns one table in which the anchor sits closer to the
positive than to the negative by a margin. All three ids are gathered from the same table,
so its gradient is row-sparse (at most ``3 * batch`` rows).

Momentum is where sparse updates usually stop: PyTorch's ``torch.optim.SGD(momentum=...)``
refuses ``nn.Embedding(sparse=True)`` gradients, so momentum means a dense update of the
whole table every step. ``mg.optim.Momentum(sparse="exact")`` moves only the touched rows
and catches the others up in closed form when they are next touched (or at ``flush``):
the parameters of the dense optimizer at the cost of a sparse one. Under
``mg.parallel.hogwild`` each worker process owns its momentum state and updates the
shared table without locks.

Prints the fraction of held-out triplets still violated (negative not farther than the
positive) before and after, and the throughput of both runs.
"""
from __future__ import annotations

import argparse
import functools
import time

import numpy as np

import minigrad as mg


def make_step(model, lr, momentum, params):
    """One compiled exact-momentum step (module level, so hogwild can pickle it)."""
    a, p, n = mg.lvector("anchor"), mg.lvector("positive"), mg.lvector("negative")
    cost = model.cost(a, p, n)
    opt = mg.optim.Momentum(params, lr=lr, momentum=momentum, sparse="exact")
    return mg.function([a, p, n], cost, updates=opt.updates(cost))


def violation_rate(model, triplets):
    a, p, n = mg.lvector("a"), mg.lvector("p"), mg.lvector("n")
    return float(mg.function([a, p, n], model.violations(a, p, n))(*triplets))


def single_process(model, triplets, args):
    step = make_step(model, args.lr, args.momentum, model.params)
    start, seen = time.perf_counter(), 0
    for epoch in range(args.epochs):
        for batch in mg.data.batches(*triplets, batch_size=args.batch_size, seed=epoch):
            step(*batch)
            seen += batch[0].size
    return seen / (time.perf_counter() - start)


def hogwild(model, triplets, args):
    res = mg.parallel.hogwild(functools.partial(make_step, model, args.lr, args.momentum),
                              model.params, triplets, args.workers, args.epochs,
                              args.batch_size, seed=0, progress=False)
    return res.samples_per_s, res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--groups", type=int, default=500)
    p.add_argument("--triplets", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    labels = np.random.default_rng(0).integers(0, args.groups, args.items)
    train = mg.models.triplets_from_classes(labels, args.triplets, seed=1)
    held_out = mg.models.triplets_from_classes(labels, 20_000, seed=2)
    print(f"{args.items:,} items in {args.groups} groups, {args.triplets:,} training triplets, "
          f"dim {args.dim}, Momentum(lr={args.lr}, momentum={args.momentum}, sparse='exact')")
    for label, runner in (("one process", single_process), (f"hogwild x{args.workers}", hogwild)):
        model = mg.models.TripletEmbedding(args.items, args.dim, seed=0, dtype="float32")
        before = violation_rate(model, held_out)
        out = runner(model, train, args)
        rate = out[0] if isinstance(out, tuple) else out
        print(f"{label:>12}: held-out violations {before:.3f} -> "
              f"{violation_rate(model, held_out):.3f}, {rate:,.0f} triplets/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
