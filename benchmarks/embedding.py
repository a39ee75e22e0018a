"""Masked-embedding training step: dense vs row-sparse Adam as the vocabulary grows.

One step of :class:`minigrad.models.MaskedEmbeddingClassifier` (float32, batch 32 x 100
Zipf tokens from ``mg.data.synthetic_documents``, dim 64, 5 classes) at vocabularies
3*10^4, 3*10^5, 3*10^6, first for the seed's model (``M`` of shape (vocab, dim): a weight
per word and dimension, the default), then for the cheaper ``mask_kind="per_word"``
variant (``M`` of shape (vocab, 1)), on both sides alike, for:

* ``minigrad dense``: the row-sparse gradients of ``E`` and ``M`` densified before a dense
  Adam (what a framework without row-sparse gradients does: O(V) per step);
* ``minigrad lazy`` / ``minigrad exact``: ``mg.optim.Adam(sparse="lazy"|"exact")`` on the
  row-sparse gradients (O(rows touched) per step);
* with ``--compare torch``: ``nn.Embedding`` + ``torch.optim.Adam`` (dense) and
  ``nn.Embedding(sparse=True)`` + ``SparseAdam`` (the embedding tables; plain Adam for the
  linear layer), on the same batches with the same thread count (2 = Numba's here), and
  at 1 thread for the smallest vocabulary.

``--quick`` skips the dense systems at 3*10^6 rows (seconds per step, gigabytes of state)
and runs the per-word variant at the smallest and largest vocabulary only.

Reported per (system, vocabulary): median seconds per step over repeats (min/max spread),
the graph compile time and the first step (JIT compile or cache load) apart from it.
Targets from the issue are printed as measured ratios, never asserted.
"""
from __future__ import annotations

import functools
import gc
import importlib.util
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from benchmarks import common

SIZES = (30_000, 300_000, 3_000_000)
BATCH, LENGTH, DIM, N_CLASSES = 32, 100, 64, 5
LR = 1e-3
SETTINGS = {  # repeats, seconds aimed at per timed block, max steps per block, batches;
    # the minigrad linker: "jit" (compiled segments, the fast step; its compile or cache
    # load is the first step, reported apart), "generated" in the smoke run (part of the
    # test suite: no cold whole-phase compile there)
    "full": dict(repeats=7, block_s=1.0, max_steps=50, n_batches=64, linker="jit"),
    "quick": dict(repeats=3, block_s=0.25, max_steps=20, n_batches=16, linker="jit"),
    "smoke": dict(repeats=2, block_s=0.01, max_steps=2, n_batches=2, linker="generated"),
}
SMOKE_SIZES = (2_000,)


def make_batches(vocab, n_batches, seed=0):
    """``n_batches`` batches ``(tokens, mask, labels)`` of 32 documents of 100 tokens."""
    import minigrad as mg

    docs = mg.data.synthetic_documents(BATCH * n_batches, vocab, N_CLASSES, seed=seed,
                                       length=(LENGTH, LENGTH), dtype=np.float32)
    return [tuple(a[i * BATCH:(i + 1) * BATCH] for a in docs) for i in range(n_batches)]


# --- systems: each returns (step(i) -> None, compile_s) ----------------------------------


def minigrad_step(vocab, mode, batches, backend=None, mask_kind="per_dimension",
                  linker="generated"):
    """A compiled minigrad step; ``mode``: "dense" (densified gradients), "lazy", "exact";
    ``linker``: ``mg.Mode(linker=...)``."""
    import minigrad as mg
    from minigrad.ops.rowsparse import is_row_sparse

    model = mg.models.MaskedEmbeddingClassifier(vocab, DIM, N_CLASSES, seed=0, dtype="float32",
                                                mask_kind=mask_kind)
    tokens, mask, labels = mg.lmatrix("tokens"), mg.matrix("mask", "float32"), mg.lvector("y")
    cost = model.cost(tokens, mask, labels)
    if mode == "dense":
        grads = [g.to_dense() if is_row_sparse(g) else g for g in mg.grad(cost, model.params)]
        updates = mg.optim.Adam(model.params, lr=LR).updates(grads=grads)
    else:
        updates = mg.optim.Adam(model.params, lr=LR, sparse=mode).updates(cost)
    fn = mg.function([tokens, mask, labels], cost, updates=updates,
                     mode=mg.Mode(backend=backend, linker=linker))

    def step(i):
        fn(*batches[i % len(batches)])

    return step, fn.compile_seconds, model


def torch_step(torch, vocab, sparse, batches, mask_kind="per_dimension"):
    """The same model in PyTorch: dense Adam, or SparseAdam on ``sparse=True`` embeddings."""
    model = common.TorchMaskedEmbedding(torch, vocab, DIM, N_CLASSES, sparse, LR,
                                        mask_kind=mask_kind)
    data = [tuple(torch.from_numpy(a) for a in batch) for batch in batches]

    def step(i):
        model.step(*data[i % len(data)])

    return step, 0.0, model


# --- measurement -------------------------------------------------------------------------


SYSTEMS = {  # label: (library, builder argument)
    "minigrad dense Adam": ("minigrad", "dense"),
    "minigrad lazy Adam": ("minigrad", "lazy"),
    "minigrad exact Adam": ("minigrad", "exact"),
    "torch dense Adam": ("torch", False),
    "torch SparseAdam": ("torch", True),
}
MASK_KINDS = ("per_dimension", "per_word")  # the seed's model first
SHORT = {"per_dimension": "per-dim", "per_word": "per-word"}


@functools.lru_cache(maxsize=1)
def _cached_batches(vocab, n_batches):
    return make_batches(vocab, n_batches)


def measure_system(label, vocab, settings, compare, mask_kind="per_dimension", threads=None):
    """Run in a child process: build one system at one vocabulary and time it."""
    library, arg = SYSTEMS[label]
    batches = _cached_batches(vocab, settings["n_batches"])
    if library == "minigrad":
        make = functools.partial(minigrad_step, vocab, arg, batches, mask_kind=mask_kind,
                                 linker=settings.get("linker", "generated"))
    else:
        torch = common.torch_or_none(compare)
        if threads is not None:
            torch.set_num_threads(threads)
        threads = torch.get_num_threads()
        make = functools.partial(torch_step, torch, vocab, arg, batches, mask_kind)
    row = common.measure_step(make, settings)
    gc.collect()
    return {"bench": "embedding", "system": label, "vocab": vocab, "mask_kind": mask_kind,
            "threads": threads, **row}


def cases(mode, found):
    """``[(library, threads, [(label, vocab, mask_kind), ...])]``: what runs, grouped by
    the fresh process it runs in (one per library and thread count)."""
    sizes = SMOKE_SIZES if mode == "smoke" else SIZES
    groups = {}
    for kind in MASK_KINDS:
        kind_sizes = sizes if mode == "full" or kind == "per_dimension" else (
            sizes[0], sizes[-1])
        for vocab in kind_sizes:
            for library, labels in found.items():
                for label in labels:
                    dense = SYSTEMS[label][1] in ("dense", False)
                    if dense and mode == "quick" and vocab >= 3_000_000:
                        continue
                    groups.setdefault((library, None), []).append((label, vocab, kind))
    if "torch" in found:  # torch at 1 thread too, at the smallest vocabulary
        groups[("torch", 1)] = [(label, sizes[0], "per_dimension") for label in found["torch"]]
    return [(lib, threads, items) for (lib, threads), items in groups.items()]


def libraries(compare):
    """``{library: [labels]}`` for the libraries available in this run, and notes."""
    found, notes = {}, []
    if _optim_available():
        found["minigrad"] = [k for k, v in SYSTEMS.items() if v[0] == "minigrad"]
    else:
        notes.append("mg.optim.Adam is not available in this checkout: minigrad rows skipped")
    if "torch" in set(compare or ()):
        if importlib.util.find_spec("torch") is not None:
            found["torch"] = [k for k, v in SYSTEMS.items() if v[0] == "torch"]
        else:
            notes.append("--compare torch: torch is not installed, PyTorch rows skipped")
    return found, notes


def _optim_available():
    try:
        import minigrad as mg

        return hasattr(mg.optim, "Adam")
    except ImportError:
        return False


def ratios(rows):
    """The issue's targets as measured ratios, per mask kind (default thread count)."""
    out = []
    for kind in MASK_KINDS:
        mine = [r for r in rows if r.get("mask_kind", "per_dimension") == kind
                and not r.get("one_thread")]
        for r in _ratios_one_kind(mine):
            r["ratio"] = f"{SHORT[kind]}: {r['ratio']}"
            r["mask_kind"] = kind
            out.append(r)
    t1 = {r["system"]: r["median_s"] for r in rows if r.get("one_thread")}
    t = {(r["system"], r["vocab"], r.get("mask_kind")): r["median_s"] for r in rows
         if not r.get("one_thread")}
    for label, v in t1.items():
        vocab = min(r["vocab"] for r in rows if r.get("one_thread"))
        lazy = t.get(("minigrad lazy Adam", vocab, "per_dimension"))
        if lazy:
            out.append({"ratio": f"per-dim: {label} (1 thread) / minigrad lazy @V={vocab}",
                        "value": v / lazy, "target": 1, "op": ">=", "met": v / lazy >= 1,
                        "mask_kind": "per_dimension"})
    return out


def _ratios_one_kind(rows):
    t = {(r["system"], r["vocab"]): r["median_s"] for r in rows}
    vocabs = sorted({r["vocab"] for r in rows})
    out = []
    if not vocabs:
        return out

    def add(name, num, den, target, higher_is_better=True):
        if num in t and den in t:
            value = t[num] / t[den]
            met = value >= target if higher_is_better else value <= target
            out.append({"ratio": name, "value": value, "target": target,
                        "op": ">=" if higher_is_better else "<=", "met": bool(met)})

    lo, hi = vocabs[0], vocabs[-1]
    for mode in ("lazy", "exact"):
        sparse = f"minigrad {mode} Adam"
        add(f"torch dense / minigrad {mode} @V={lo}", ("torch dense Adam", lo), (sparse, lo), 20)
        add(f"minigrad dense / minigrad {mode} @V={lo}", ("minigrad dense Adam", lo),
            (sparse, lo), 1)
        if hi != lo:
            add(f"minigrad {mode} V={hi} / V={lo}", (sparse, hi), (sparse, lo), 1.3,
                higher_is_better=False)
        for v in vocabs:
            add(f"torch SparseAdam / minigrad {mode} @V={v}", ("torch SparseAdam", v),
                (sparse, v), 1)
    return out


def plot(rows, out_dir, kind="per_dimension"):
    series = {}
    rows = [r for r in rows if r.get("mask_kind", "per_dimension") == kind
            and not r.get("one_thread")]
    for system in dict.fromkeys(r["system"] for r in rows):
        pts = sorted((r["vocab"], r["median_s"] * 1e3, r["min_s"] * 1e3, r["max_s"] * 1e3)
                     for r in rows if r["system"] == system)
        series[system] = tuple(np.array(c) for c in zip(*pts))
    if not series:
        return None
    name = "embedding_step_time" + ("" if kind == "per_dimension" else "_per_word")
    shape = "(V, dim)" if kind == "per_dimension" else "(V, 1)"
    return common.plot_lines(out_dir, name, series, "vocabulary size",
                             "ms per training step", f"Masked-embedding step, M {shape} "
                             f"(float32, batch {BATCH}x{LENGTH}, dim {DIM})", logx=True,
                             logy=True)


def run(quick=False, compare=(), out_dir=None, smoke=False):
    mode = "smoke" if smoke else ("quick" if quick else "full")
    settings = SETTINGS[mode]
    notes = [f"float32, batch {BATCH} x {LENGTH} Zipf tokens, dim {DIM}, {N_CLASSES} classes, "
             f"Adam lr={LR}; per-dim: M (V, {DIM}) (the default model), per-word: M (V, 1); "
             f"median over {settings['repeats']} blocks of steps_per_repeat steps; "
             "first_step_s (JIT/cache load) is not in the median",
             f"minigrad rows: mg.Mode(linker={settings['linker']!r})"]
    found, more = libraries(compare)
    notes += more + [
        "each library (and thread count) runs in its own fresh process, one after the other: "
        "an idle OpenMP pool of one library spinning next to the other's threads distorts "
        "timings 10-100x"]
    if quick:
        notes.append("quick: no dense systems at V=3,000,000; per-word at the smallest and "
                     "largest V only")
    groups = cases(mode, found)
    rows = []
    bar = common.progress(total=sum(len(items) for _, _, items in groups), desc="embedding")
    context = multiprocessing.get_context("spawn")
    for _library, threads, items in groups:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            for label, vocab, kind in items:
                bar.set_postfix_str(f"{label} V={vocab} {SHORT[kind]}")
                row = pool.submit(measure_system, label, vocab, settings, set(compare or ()),
                                  kind, threads).result()
                row["one_thread"] = threads == 1
                rows.append(row)
                bar.update()
    bar.close()
    order = list(SYSTEMS)
    rows.sort(key=lambda r: (MASK_KINDS.index(r["mask_kind"]), r["one_thread"], r["vocab"],
                             order.index(r["system"])))
    summary = ratios(rows)
    notes += [common.ratio_note(s) for s in summary]
    plots = [plot(rows, out_dir, kind) for kind in MASK_KINDS] if rows else []
    return common.result("embedding", rows, notes, plots, ratios=summary)


def _label(r):
    if r["system"].startswith("torch"):
        n = r.get("threads")
        return f"{r['system']} ({n} thr)" if n else r["system"]
    return r["system"]


def table_rows(res):
    """Step time per (mask kind, system, vocabulary), then one first-step (JIT) row per
    system (its first measurement in this run, in a fresh process)."""
    out = []
    for r in res["rows"]:
        kind = SHORT[r.get("mask_kind", "per_dimension")]
        out.append({"bench": "embedding", "case": f"{kind} V={r['vocab']:,}",
                    "system": _label(r), "value": 1e3 * r["median_s"],
                    "lo": 1e3 * r["min_s"], "hi": 1e3 * r["max_s"], "unit": "ms"})
    first = {}
    for r in res["rows"]:
        first.setdefault(_label(r), r)
    for system, r in first.items():
        kind = SHORT[r.get("mask_kind", "per_dimension")]
        out.append({"bench": "embedding", "case": f"{kind} V={r['vocab']:,} 1st step",
                    "system": system, "value": 1e3 * (r["compile_s"] + r["first_step_s"]),
                    "unit": f"ms (graph compile {1e3 * r['compile_s']:.0f} ms)"
                    if r["system"].startswith("minigrad") else "ms"})
    return out
