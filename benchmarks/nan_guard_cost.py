"""Cost of the default NaN policy on the training steps (issue 15, item 12).

Each step is compiled twice, ``nan_guard=None`` (the default: every update is checked on the
rows it writes, and undone if not finite) and ``nan_guard=False`` (no check), with the
default and the jit linker:

* ``fm``: the FM SGD step of ``benchmarks/floor.py`` (k=16, batch 256, float64);
* ``embedding``: the masked-embedding step (float32, batch 32 x 100 Zipf tokens, dim 64)
  with lazy or exact Adam, at the given vocabulary sizes.

The two functions of a pair alternate (interleaved blocks, so load on the machine hits
both alike) and the median seconds per step of each is reported with their ratio. Run:

    python -m benchmarks.nan_guard_cost [--cases fm,embedding] [--vocab 30000,300000]
        [--linkers generated,jit] [--blocks 15] [--steps 20] [--clock wall|cpu]
        [--policy default|true]

``--policy true`` compares ``nan_guard=True`` (outputs and gradients checked as well)
with ``nan_guard=False`` instead.

Not part of the default suite: it measures one policy, printed, never asserted.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _embedding_step(vocab, sparse, nan_guard, linker, batches):
    import minigrad as mg

    model = mg.models.MaskedEmbeddingClassifier(vocab, 64, 5, seed=0, dtype="float32")
    tokens, mask, labels = mg.lmatrix("tokens"), mg.matrix("mask", "float32"), mg.lvector("y")
    cost = model.cost(tokens, mask, labels)
    opt = mg.optim.Adam(model.params, 1e-3, sparse=sparse)
    step = mg.function([tokens, mask, labels], cost, updates=opt.updates(cost),
                       nan_guard=nan_guard, mode=mg.Mode(linker=linker))
    return lambda i: step(*batches[i % len(batches)])


def _fm_step(nan_guard, linker, batches, n_features):
    import minigrad as mg
    from benchmarks.floor import FM

    model = mg.models.FactorizationMachine(n_features, FM["k"], seed=0)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = model.cost(X, y)
    step = mg.function([X, y], cost, updates=mg.optim.SGD(model.params, FM["lr"]).updates(cost),
                       nan_guard=nan_guard, mode=mg.Mode(linker=linker))
    return lambda i: step(*batches[i % len(batches)])


#: the clocks a run can time with: wall clock, or this process's CPU time (on a loaded
#: machine CPU time is less disturbed by other processes; it misses time spent waiting)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(steps, blocks, per_block, clock="wall"):
    """Median seconds per step of each of ``steps`` ({key: step(i)}), blocks alternating."""
    now = CLOCKS[clock]
    keys = list(steps)
    for key in keys:  # JIT / cache load outside the timings
        for i in range(3):
            steps[key](i)
    times = {k: [] for k in keys}
    for b in range(blocks):
        for key in (keys if b % 2 else keys[::-1]):
            t0 = now()
            for i in range(per_block):
                steps[key](i)
            times[key].append((now() - t0) / per_block)
    return {k: statistics.median(v) for k, v in times.items()}


def _report(label, med, policy=None):
    on, off = med[policy], med[False]
    print(f"{label:34s}: guarded {on * 1e6:9.1f} us/step, unguarded {off * 1e6:9.1f} "
          f"us/step, ratio {on / off:.3f}", flush=True)
    return on / off


def run(cases=("fm", "embedding"), vocabs=(30_000, 300_000), linkers=("generated", "jit"),
        sparse_modes=("lazy", "exact"), blocks=15, per_block=20, clock="wall", policy=None):
    """``{label: guarded/unguarded}`` for every case asked for (printed as it goes);
    ``policy``: the guarded function's ``nan_guard`` (None, the default, or True: outputs
    and gradients checked too)."""
    import minigrad as mg

    print(f"backend {mg.config.backend}, {blocks} interleaved blocks of {per_block} steps, "
          f"{clock} clock, guarded = nan_guard={policy}")
    ratios = {}
    if "fm" in cases:
        from benchmarks.floor import FM
        from benchmarks.hogwild import _task

        X, y = _task(True)
        n = FM["batch"]
        batches = [(X[i * n:(i + 1) * n], y[i * n:(i + 1) * n]) for i in range(32)]
        for linker in linkers:
            steps = {g: _fm_step(g, linker, batches, X.shape[1]) for g in (policy, False)}
            label = f"FM SGD, {linker} linker"
            ratios[label] = _report(label, interleaved(steps, blocks, per_block, clock), policy)
    if "embedding" in cases:
        from benchmarks.embedding import make_batches

        for vocab in vocabs:
            batches = make_batches(vocab, 16)
            for sparse in sparse_modes:
                for linker in linkers:
                    steps = {g: _embedding_step(vocab, sparse, g, linker, batches)
                             for g in (policy, False)}
                    label = f"emb V={vocab} Adam {sparse}, {linker}"
                    ratios[label] = _report(label, interleaved(steps, blocks, per_block, clock),
                                            policy)
    return ratios


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="fm,embedding")
    p.add_argument("--vocab", default="30000,300000")
    p.add_argument("--linkers", default="generated,jit")
    p.add_argument("--sparse", default="lazy,exact")
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    p.add_argument("--policy", choices=("default", "true"), default="default",
                   help="the guarded function's nan_guard: None (default) or True")
    args = p.parse_args(argv)
    run(args.cases.split(","), [int(v) for v in args.vocab.split(",")],
        args.linkers.split(","), args.sparse.split(","), args.blocks, args.steps, args.clock,
        policy=None if args.policy == "default" else True)
    return np.nan


if __name__ == "__main__":
    main()
