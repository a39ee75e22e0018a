"""GPU: the masked-embedding training step with ``backend="cupy"`` vs PyTorch on CUDA.

The same step as ``benchmarks/embedding.py`` (the default per-dimension model, ``M`` of
shape (vocab, dim); float32, batch 32 x 100 Zipf tokens, dim 64, 5 classes, Adam) at
vocabularies 3*10^4, 3*10^5, 3*10^6, all on the device: minigrad dense (gradients
densified), lazy and exact row-sparse Adam, and, when torch with CUDA is installed,
``nn.Embedding`` + Adam and ``sparse=True`` + SparseAdam. Each step ends with a device
synchronisation, so times are wall-clock per step. Skipped (with the reason) where CuPy or
a CUDA device is missing.
"""
from __future__ import annotations

import time

from benchmarks import common
from benchmarks.embedding import BATCH, DIM, LENGTH, LR, N_CLASSES, make_batches, minigrad_step

SIZES = (30_000, 300_000, 3_000_000)
SETTINGS = {"full": (7, 30), "quick": (3, 15), "smoke": (1, 2)}  # repeats, steps per repeat


def _minigrad(vocab, mode, batches):
    import cupy

    step, _, model = minigrad_step(vocab, mode, batches, backend="cupy")

    def synced(i):
        step(i)
        cupy.cuda.Device().synchronize()

    synced.model = model  # keep the parameters alive while timing
    return synced


def _torch(torch, vocab, sparse, batches):
    model = common.TorchMaskedEmbedding(torch, vocab, DIM, N_CLASSES, sparse, LR)
    for module in (model.E, model.M, model.linear):
        module.to("cuda")  # in place: the optimizers keep pointing at the same parameters
    data = [tuple(torch.from_numpy(a).cuda() for a in b) for b in batches]

    def step(i):
        model.step(*data[i % len(data)])
        torch.cuda.synchronize()

    return step


def _time(step, repeats, per_repeat):
    t0 = time.perf_counter()
    step(0)
    first = time.perf_counter() - t0
    step(1)
    times = common.time_blocks(lambda i: step(i + 2), repeats, per_repeat)
    row = common.summarize(times)
    row["first_step_s"] = first
    return row


def run(quick=False, compare=(), out_dir=None, smoke=False):
    try:
        from minigrad.backends import get_backend

        get_backend("cupy")
    except ImportError as err:
        return common.result("gpu", [], [f"skipped: {err}"])
    import cupy

    mode = "smoke" if smoke else ("quick" if quick else "full")
    repeats, per_repeat = SETTINGS[mode]
    torch = common.torch_or_none(compare)
    if torch is not None and not torch.cuda.is_available():
        torch = None
    rows, notes = [], [
        f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}",
        f"float32, batch {BATCH} x {LENGTH} Zipf tokens, dim {DIM}, {N_CLASSES} classes, "
        f"Adam lr={LR}; per-step wall time with a device sync; first step (kernel "
        "compilation) reported apart",
    ]
    sizes = (2_000,) if smoke else SIZES
    for vocab in common.progress(sizes, desc="gpu"):
        batches = make_batches(vocab, 8)
        systems = {f"minigrad cupy {m} Adam": (_minigrad, m) for m in ("dense", "lazy", "exact")}
        if torch is not None:
            systems["torch cuda dense Adam"] = (lambda v, s, b: _torch(torch, v, s, b), False)
            systems["torch cuda SparseAdam"] = (lambda v, s, b: _torch(torch, v, s, b), True)
        for label, (make, arg) in systems.items():
            row = _time(make(vocab, arg, batches), repeats, per_repeat)
            rows.append({"bench": "gpu_embedding", "system": label, "vocab": vocab, **row})
            cupy.get_default_memory_pool().free_all_blocks()
    by = {(r["system"], r["vocab"]): r["median_s"] for r in rows}
    for vocab in sizes:
        lazy = by.get(("minigrad cupy lazy Adam", vocab))
        for other in ("minigrad cupy dense Adam", "torch cuda dense Adam", "torch cuda SparseAdam"):
            if lazy and by.get((other, vocab)):
                notes.append(f"{other} / minigrad cupy lazy @V={vocab}: "
                             f"{by[(other, vocab)] / lazy:.2f}x")
    from minigrad.backends.cupy import HOST_FALLBACKS

    notes.append(f"ops run on the host (round trip): {sorted(HOST_FALLBACKS) or 'none'}")
    return common.result("gpu", rows, notes)


if __name__ == "__main__":
    import sys

    out = run(quick="--quick" in sys.argv, compare={"torch"} if "--compare" in sys.argv else ())
    for r in out["rows"]:
        print(f"{r['system']:28s} V={r['vocab']:>9,d}  median {r['median_s'] * 1e3:8.3f} ms  "
              f"first {r['first_step_s']:.2f} s")
    print("\n".join(out["notes"]))

