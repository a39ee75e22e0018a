"""Cost of the default NaN policy on the embedding training step (issue 15, item 12).

The same masked-embedding step (float32, batch 32 x 100 Zipf tokens, dim 64, exact or lazy
Adam) compiled twice, ``nan_guard=None`` (the default: every update is checked on the rows
it writes, and undone if not finite) and ``nan_guard=False`` (no check). Steps alternate
between the two functions (interleaved blocks, so load on the machine hits both alike) and
the median seconds per step of each is reported with their ratio. Run directly:

    python -m benchmarks.nan_guard_cost [--vocab 300000] [--blocks 15] [--steps 20]

Not part of the default suite: it measures one policy, printed, never asserted.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def build(vocab, sparse, nan_guard, batches):
    import minigrad as mg

    model = mg.models.MaskedEmbeddingClassifier(vocab, 64, 5, seed=0, dtype="float32")
    tokens, mask, labels = mg.lmatrix("tokens"), mg.matrix("mask", "float32"), mg.lvector("y")
    cost = model.cost(tokens, mask, labels)
    opt = mg.optim.Adam(model.params, 1e-3, sparse=sparse)
    step = mg.function([tokens, mask, labels], cost, updates=opt.updates(cost),
                       nan_guard=nan_guard)
    step(*batches[0])  # JIT / cache load outside the timings
    return step


def main(argv=None):
    import minigrad as mg
    from benchmarks.embedding import make_batches

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=300_000)
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    batches = make_batches(args.vocab, 16)
    print(f"backend {mg.config.backend}, vocab {args.vocab}, {args.blocks} interleaved "
          f"blocks of {args.steps} steps")
    for sparse in ("lazy", "exact"):
        steps = {g: build(args.vocab, sparse, g, batches) for g in (None, False)}
        times = {g: [] for g in steps}
        for b in range(args.blocks):
            for g in ((None, False) if b % 2 else (False, None)):
                t0 = time.perf_counter()
                for k in range(args.steps):
                    steps[g](*batches[k % len(batches)])
                times[g].append((time.perf_counter() - t0) / args.steps)
        on, off = statistics.median(times[None]), statistics.median(times[False])
        print(f"Adam {sparse:5s}: guarded {on * 1e3:7.3f} ms/step, unguarded "
              f"{off * 1e3:7.3f} ms/step, ratio {on / off:.3f}")
    return np.nan


if __name__ == "__main__":
    main()
