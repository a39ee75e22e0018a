"""The floor: each training step hand-written as one Numba function, with exactly the
semantics of the compiled minigrad step, to say how far minigrad is from its arithmetic.

* :func:`embedding_step`: the seed's masked-embedding classifier (``E``, ``M`` both
  ``(V, D)``, ``M`` ones-initialised, ``W`` ``(D, C)``, ``c`` ``(C,)``), softmax
  cross-entropy averaged over the batch, ``mg.optim.Adam(sparse="lazy")``: lazy Adam
  (``torch.optim.SparseAdam``'s formula) on the touched rows of ``E`` and ``M``, dense Adam
  (``torch.optim.Adam``'s) on ``W`` and ``c``. The backward writes straight into
  de-duplicated rows through a V-long slot map (no sort), as the fused minigrad path does.
* :func:`fm_step`: the factorization machine of ``mg.models.FactorizationMachine`` (logistic
  loss on the logits, mean over the batch), plain SGD on the touched rows of ``w``, ``V``
  and on ``b``.

``tests/test_floor.py`` checks that both give the parameters of the minigrad step after a
few steps (float32 summation order aside). ``python -m benchmarks.floor [--quick]
[--compare torch]`` times minigrad (with and without the ``"fuse"`` rewrites), the floor
and torch eager on the same batches in one run (interleaved blocks, medians) and prints the
ratios; ``python -m benchmarks`` runs it as its ``floor`` table.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from kernels.cpu.rows import _prefetch_row

# --- the masked-embedding classifier ----------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefetch_token(tokens, mask, flat, E, M):
    """Ask for the ``E`` and ``M`` rows of token ``flat`` (row-major position) if it is a
    real token (``EmbeddingFloor(prefetch=True)``)."""
    B, L = tokens.shape
    if flat < B * L:
        b, j = flat // L, flat % L
        tok = tokens[b, j]
        if mask[b, j] != 0 and 0 <= tok < E.shape[0]:
            _prefetch_row(E, tok)
            _prefetch_row(M, tok)


@njit(cache=True, nogil=True, error_model="numpy")
def _embedding_step(tokens, mask, labels, E, M, W, c, mE, vE, mM, vM, mW, vW, mc, vc, t,
                    slot, lr, b1, b2, eps, ahead):
    B, L = tokens.shape
    V, D = E.shape
    C = W.shape[1]
    for b in range(B):
        for j in range(L):
            if mask[b, j] != 0 and (tokens[b, j] < 0 or tokens[b, j] >= V):
                raise IndexError("token id out of range")
        if labels[b] < 0 or labels[b] >= C:
            raise IndexError("label out of range")
    # forward: r[b] = sum over real tokens of mask * E[w] * M[w]; collect distinct words
    r = np.zeros((B, D), dtype=E.dtype)
    uniq = np.empty(B * L, dtype=np.int64)
    n = 0
    for b in range(B):
        for j in range(L):
            if ahead > 0:
                _prefetch_token(tokens, mask, b * L + j + ahead, E, M)
            w = mask[b, j]
            if w == 0:
                continue
            tok = tokens[b, j]
            if slot[tok] < 0:
                slot[tok] = n
                uniq[n] = tok
                n += 1
            for d in range(D):
                r[b, d] += w * E[tok, d] * M[tok, d]
    # logits, softmax cross-entropy (mean over the batch) and its gradient
    gl = np.empty((B, C), dtype=E.dtype)
    loss = 0.0
    for b in range(B):
        z = np.empty(C, dtype=E.dtype)
        zmax = -np.inf
        for k in range(C):
            acc = c[k]
            for d in range(D):
                acc += r[b, d] * W[d, k]
            z[k] = acc
            zmax = max(zmax, acc)
        total = 0.0
        for k in range(C):
            total += np.exp(z[k] - zmax)
        log_total = np.log(total) + zmax
        loss -= z[labels[b]] - log_total
        for k in range(C):
            gl[b, k] = (np.exp(z[k] - log_total) - (1.0 if k == labels[b] else 0.0)) / B
    # dense gradients of the head, and the gradient reaching each document vector
    gW = np.zeros((D, C), dtype=E.dtype)
    gc = np.zeros(C, dtype=E.dtype)
    gr = np.zeros((B, D), dtype=E.dtype)
    for b in range(B):
        for k in range(C):
            g = gl[b, k]
            gc[k] += g
            for d in range(D):
                gW[d, k] += r[b, d] * g
                gr[b, d] += g * W[d, k]
    # backward into the distinct rows (slot map), from the old E and M
    gE = np.zeros((n, D), dtype=E.dtype)
    gM = np.zeros((n, D), dtype=E.dtype)
    for b in range(B):
        for j in range(L):
            if ahead > 0:
                _prefetch_token(tokens, mask, b * L + j + ahead, E, M)
            w = mask[b, j]
            if w == 0:
                continue
            tok = tokens[b, j]
            s = slot[tok]
            for d in range(D):
                g = w * gr[b, d]
                gE[s, d] += g * M[tok, d]
                gM[s, d] += g * E[tok, d]
    for i in range(n):
        slot[uniq[i]] = -1
    # lazy Adam (SparseAdam's formula) on the touched rows, in float64 per element
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    lazy_step, sqrt_bc2 = lr * np.sqrt(bc2) / bc1, np.sqrt(bc2)
    for P, Mo, Vo, G in ((E, mE, vE, gE), (M, mM, vM, gM)):
        for i in range(n):
            if ahead > 0 and i + ahead < n:
                _prefetch_row(Mo, uniq[i + ahead])
                _prefetch_row(Vo, uniq[i + ahead])
            row = uniq[i]
            for d in range(D):
                g = float(G[i, d])
                m = b1 * float(Mo[row, d]) + (1.0 - b1) * g
                v = b2 * float(Vo[row, d]) + (1.0 - b2) * g * g
                Mo[row, d], Vo[row, d] = m, v
                P[row, d] = float(P[row, d]) - lazy_step * (m / (np.sqrt(v) + eps))
    # dense Adam (torch.optim.Adam's formula) on W and c
    dense_step = lr / bc1
    for d in range(D):
        for k in range(C):
            g = float(gW[d, k])
            m = b1 * float(mW[d, k]) + (1.0 - b1) * g
            v = b2 * float(vW[d, k]) + (1.0 - b2) * g * g
            mW[d, k], vW[d, k] = m, v
            W[d, k] = float(W[d, k]) - dense_step * (m / (np.sqrt(v) / sqrt_bc2 + eps))
    for k in range(C):
        g = float(gc[k])
        m = b1 * float(mc[k]) + (1.0 - b1) * g
        v = b2 * float(vc[k]) + (1.0 - b2) * g * g
        mc[k], vc[k] = m, v
        c[k] = float(c[k]) - dense_step * (m / (np.sqrt(v) / sqrt_bc2 + eps))
    return loss / B


class EmbeddingFloor:
    """Parameters, Adam state and slot map of the floor classifier step.

    ``step(tokens, mask, labels)`` is one ``mg.optim.Adam(lr, sparse="lazy")`` step of
    ``mg.models.MaskedEmbeddingClassifier`` with ``M`` (V, D); returns the loss.
    ``prefetch``: the loops over tokens ask for the ``E``, ``M`` rows of the token 16 ahead,
    and the Adam loop for the ``m``, ``v`` rows 16 ahead (the software prefetch minigrad's
    kernels use on big tables; the same trick, fair for a hand-written step).
    """

    def __init__(self, E, M, W, c, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, prefetch=False):
        self.ahead = 16 if prefetch else 0
        self.E, self.M, self.W, self.c = (np.array(a) for a in (E, M, W, c))
        self.state = [np.zeros_like(a) for a in (self.E, self.E, self.M, self.M, self.W,
                                                 self.W, self.c, self.c)]
        self.t = 0
        self.slot = np.full(self.E.shape[0], -1, dtype=np.int32)
        self.lr, (self.b1, self.b2), self.eps = float(lr), map(float, betas), float(eps)
        self.b1, self.b2 = float(betas[0]), float(betas[1])

    def step(self, tokens, mask, labels):
        self.t += 1
        return _embedding_step(tokens, mask, labels, self.E, self.M, self.W, self.c,
                               *self.state, self.t, self.slot, self.lr, self.b1, self.b2,
                               self.eps, self.ahead)

    @property
    def params(self):
        return [self.E, self.M, self.W, self.c]


# --- the factorization machine ------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy")
def _fm_step(indptr, indices, data, y, b, w, V, slot, lr):
    n_rows = indptr.shape[0] - 1
    n_features, k = V.shape
    for j in range(indices.shape[0]):
        if indices[j] < 0 or indices[j] >= n_features:
            raise IndexError("feature index out of range")
    xv = np.zeros(k, dtype=V.dtype)
    ds = np.empty(n_rows, dtype=V.dtype)
    xvs = np.empty((n_rows, k), dtype=V.dtype)
    loss = 0.0
    uniq = np.empty(indices.shape[0], dtype=np.int64)
    n = 0
    for r in range(n_rows):
        xv[:] = 0.0
        lin = 0.0
        sq = 0.0
        for j in range(indptr[r], indptr[r + 1]):
            col, x = indices[j], data[j]
            if slot[col] < 0:
                slot[col] = n
                uniq[n] = col
                n += 1
            lin += x * w[col, 0]
            for f in range(k):
                xv[f] += x * V[col, f]
                sq += x * x * V[col, f] * V[col, f]
        pair = 0.0
        for f in range(k):
            pair += xv[f] * xv[f]
            xvs[r, f] = xv[f]
        s = b[0] + lin + 0.5 * (pair - sq)
        # softplus(s) - y * s, stably; its derivative is sigmoid(s) - y
        loss += max(s, 0.0) + np.log1p(np.exp(-abs(s))) - y[r] * s
        sig = 1.0 / (1.0 + np.exp(-s)) if s >= 0 else np.exp(s) / (1.0 + np.exp(s))
        ds[r] = (sig - y[r]) / n_rows
    gw = np.zeros(n, dtype=V.dtype)
    gV = np.zeros((n, k), dtype=V.dtype)
    gb = 0.0
    for r in range(n_rows):
        g = ds[r]
        gb += g
        for j in range(indptr[r], indptr[r + 1]):
            col, x = indices[j], data[j]
            s = slot[col]
            gw[s] += g * x
            for f in range(k):
                gV[s, f] += g * (x * xvs[r, f] - x * x * V[col, f])
    for i in range(n):
        col = uniq[i]
        slot[col] = -1
        w[col, 0] -= lr * gw[i]
        for f in range(k):
            V[col, f] -= lr * gV[i, f]
    b[0] -= lr * gb
    return loss / n_rows


class FMFloor:
    """Parameters and slot map of the floor FM step: ``step(X_csr, y)`` is one
    ``mg.optim.SGD(lr)`` step of ``mg.models.FactorizationMachine.cost(X, y)``."""

    def __init__(self, b, w, V, lr):
        self.b, self.w, self.V = (np.array(a) for a in (b, w, V))
        self.lr = float(lr)
        self.slot = np.full(self.V.shape[0], -1, dtype=np.int32)

    def step(self, X, y):
        if X.shape[1] != self.V.shape[0]:
            raise ValueError(f"X has {X.shape[1]} columns, the model {self.V.shape[0]}")
        return _fm_step(X.indptr, X.indices, X.data.astype(self.V.dtype, copy=False),
                        y.astype(self.V.dtype, copy=False), self.b, self.w, self.V,
                        self.slot, self.lr)

    @property
    def params(self):
        return [self.b, self.w, self.V]


# --- the comparison: minigrad (fused and not), floor, torch eager; one run ----------------

EMB = dict(vocab=30_000, batch=32, length=100, dim=64, n_classes=5, lr=1e-3)
FM = dict(k=16, batch=256, lr=0.05)


#: the minigrad rows: label -> (fuse rewrites on?, linker); "minigrad jit" is
#: ``Mode(linker="jit")`` (compiled Numba segments, ``minigrad/linker_jit.py``)
VARIANTS = {"minigrad": (True, "generated"), "minigrad jit": (True, "jit"),
            "minigrad unfused": (False, "generated")}
#: the smoke run (part of the test suite) skips the jit row: its Numba compile on a cold
#: cache would cost the suite more than the rest of the smoke run
SMOKE_VARIANTS = {k: v for k, v in VARIANTS.items() if v[1] != "jit"}


def _compile(inputs, cost, updates, fuse, linker="generated"):
    """``mg.function`` with the ``"fuse"`` rewrites on or off, and the given linker."""
    import minigrad as mg

    return mg.function(inputs, cost, updates=updates,
                       mode=mg.Mode(exclude=() if fuse else ("fuse",), linker=linker))


def classifier(vocab, dim, n_classes, **kw):
    """The seed's model, ``M`` of shape (vocab, dim), spelled as this checkout takes it."""
    import inspect

    import minigrad as mg

    cls = mg.models.MaskedEmbeddingClassifier
    if "mask_kind" in inspect.signature(cls).parameters:
        kw["mask_kind"] = "per_dimension"
    else:
        kw["vector_mask"] = True
    return cls(vocab, dim, n_classes, **kw)


def embedding_systems(torch, n_batches, vocab=EMB["vocab"], variants=VARIANTS, sparse="lazy",
                      floors=("floor",)):
    """``{label: (step(i), n_nodes)}`` for the masked-embedding step, same batches.

    ``sparse="exact"``: minigrad's optimizer in exact mode (the dense optimizer's result:
    lagging rows of ``E`` and ``M`` are caught up as they are read and updated); the floor
    and torch rows stay the lazy step they are (exact and lazy differ only in the lagging
    rows' catch-up, which is the work this mode adds)."""
    import minigrad as mg
    from benchmarks.embedding import make_batches

    batches = make_batches(vocab, n_batches)
    systems = {}
    for label, (fuse, linker) in variants.items():
        model = classifier(vocab, EMB["dim"], EMB["n_classes"], seed=0, dtype="float32")
        tokens, mask, labels = mg.lmatrix("t"), mg.matrix("m", "float32"), mg.lvector("y")
        cost = model.cost(tokens, mask, labels)
        opt = mg.optim.Adam(model.params, lr=EMB["lr"], sparse=sparse)
        fn = _compile([tokens, mask, labels], cost, opt.updates(cost), fuse, linker)
        systems[label] = ((lambda i, fn=fn: fn(*batches[i % n_batches])), len(fn.nodes))
        if len(systems) == 1:  # (every variant starts from the same seed)
            init = [p.get_value() for p in model.params]
    for label in floors:  # "floor", "floor prefetch"
        fl = EmbeddingFloor(*init, lr=EMB["lr"], prefetch=label == "floor prefetch")
        systems[label] = (lambda i, fl=fl: fl.step(*batches[i % n_batches]), 1)
    if torch is not None:
        for sparse in (False, True):
            twin = TorchVectorMaskEmbedding(torch, init, sparse, EMB["lr"])
            data = [tuple(torch.from_numpy(a) for a in b) for b in batches]
            label = "torch SparseAdam" if sparse else "torch dense Adam"
            systems[label] = ((lambda i, twin=twin, data=data: twin.step(*data[i % n_batches])),
                              None)
    return systems


class TorchVectorMaskEmbedding:
    """The seed's model in PyTorch (``M`` per dimension, (V, D)), from given ``init``."""

    def __init__(self, torch, init, sparse, lr):
        E, M, W, c = (torch.from_numpy(np.array(a)) for a in init)
        self.torch = torch
        self.E = torch.nn.Embedding.from_pretrained(E, freeze=False, sparse=sparse)
        self.M = torch.nn.Embedding.from_pretrained(M, freeze=False, sparse=sparse)
        self.W, self.c = W.requires_grad_(), c.requires_grad_()
        tables = [self.E.weight, self.M.weight]
        if sparse:
            self.opts = [torch.optim.SparseAdam(tables, lr=lr), torch.optim.Adam([self.W, self.c],
                                                                                 lr=lr)]
        else:
            self.opts = [torch.optim.Adam(tables + [self.W, self.c], lr=lr)]

    def step(self, tokens, mask, labels):
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        r = (self.E(tokens) * self.M(tokens) * mask[..., None]).sum(1)
        loss = self.torch.nn.functional.cross_entropy(r @ self.W + self.c, labels)
        loss.backward()
        for opt in self.opts:
            opt.step()
        return loss


def fm_systems(torch, n_batches, quick, smoke=False):
    """``{label: (step(i), n_nodes)}`` for the FM SGD step (float64, as the Hogwild task)."""
    import minigrad as mg
    from benchmarks.hogwild import _task, _torch_fm, _torch_fm_params

    if smoke:  # a small task of the same kind: the smoke run checks the plumbing only
        r = mg.data.synthetic_ratings(500, 800, n_ratings=2 * FM["batch"] * n_batches, seed=0,
                                      k=8, n_extra=2)
        X, y = r.X.tocsr(), r.y
    else:
        X, y = _task(quick)
    batches = [(X[i * FM["batch"]:(i + 1) * FM["batch"]], y[i * FM["batch"]:(i + 1) * FM["batch"]])
               for i in range(n_batches)]
    systems = {}
    for label, (fuse, linker) in (SMOKE_VARIANTS if smoke else VARIANTS).items():
        model = mg.models.FactorizationMachine(X.shape[1], FM["k"], seed=0)
        Xs, ys = mg.csr_matrix("X"), mg.vector("y")
        cost = model.cost(Xs, ys)
        fn = _compile([Xs, ys], cost, mg.optim.SGD(model.params, FM["lr"]).updates(cost), fuse,
                      linker)
        systems[label] = ((lambda i, fn=fn: fn(*batches[i % n_batches])), len(fn.nodes))
        if len(systems) == 1:
            init = [p.get_value() for p in model.params]
    fl = FMFloor(*init, lr=FM["lr"])
    systems["floor"] = (lambda i: fl.step(*batches[i % n_batches]), 1)
    if torch is not None:
        params = _torch_fm_params(X.shape[1])
        opt = torch.optim.SGD(params, lr=FM["lr"])
        loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
        data = []
        for Xb, yb in batches:
            rows = np.repeat(np.arange(Xb.shape[0]), np.diff(Xb.indptr))
            data.append((torch.from_numpy(rows), torch.from_numpy(Xb.indices.astype(np.int64)),
                         torch.from_numpy(Xb.data), Xb.shape[0], torch.from_numpy(yb)))

        def torch_step(i):
            rows, cols, vals, nb, yb = data[i % n_batches]
            opt.zero_grad()
            loss_fn(_torch_fm(params, rows, cols, vals, nb), yb).backward()
            opt.step()

        systems["torch eager"] = (torch_step, None)
    return systems


#: the clocks a run can time with: wall time, or the process's CPU time (on a shared box
#: the CPU time of a single-threaded step is what the step costs, whatever else runs; a
#: torch row at 2 threads then counts both threads' CPU)
CLOCKS = {"wall": "perf_counter", "cpu": "process_time"}


def measure(systems, torch, repeats, per_block, clock="wall"):
    """Interleaved blocks: every repeat times each system once; medians per step.

    torch systems are timed with 1 and with 2 intra-op threads in the same rounds.
    """
    import time

    now = getattr(time, CLOCKS[clock])

    variants = []
    for label, (step, nodes) in systems.items():
        threads = (1, 2) if label.startswith("torch") else (None,)
        for n in threads:
            variants.append((label if n is None else f"{label} ({n} thr)", step, n, nodes))
    for _, step, n, _ in variants:  # warm-up (JIT, caches) apart from the timings
        if n is not None:
            torch.set_num_threads(n)
        for i in range(3):
            step(i)
    times = {v[0]: [] for v in variants}
    counter = 3
    for _ in range(repeats):
        for label, step, n, _ in variants:
            if n is not None:
                torch.set_num_threads(n)
            start = now()
            for _ in range(per_block):
                step(counter)
                counter += 1
            times[label].append((now() - start) / per_block)
    return {label: dict(median_s=float(np.median(times[label])), nodes=nodes)
            for label, _, _, nodes in variants}


SETTINGS = {  # repeats (interleaved rounds), steps per block (embedding, FM), batches
    "full": dict(repeats=9, blocks=(50, 100), n_batches=(16, 32)),
    "quick": dict(repeats=3, blocks=(10, 20), n_batches=(8, 16)),
    "smoke": dict(repeats=1, blocks=(2, 2), n_batches=(2, 2)),
}
CASES = {"embedding": "masked-embedding Adam step (V=30K, 32x100, D=64, C=5, float32)",
         "fm": "FM SGD step (k=16, batch 256, float64)"}


def _print(name, rows):
    base = rows["floor"]["median_s"]
    mine = rows["minigrad"]["median_s"]
    print(f"\n{CASES[name]}: median s/step (interleaved blocks)")
    print(f"{'system':28s} {'ms/step':>9s} {'/floor':>8s} {'minigrad/x':>11s} {'nodes':>6s}")
    for label, row in rows.items():
        t = row["median_s"]
        nodes = "" if row["nodes"] is None else str(row["nodes"])
        print(f"{label:28s} {t * 1e3:9.3f} {t / base:8.2f} {mine / t:11.2f} {nodes:>6s}")


def run(quick=False, compare=(), out_dir=None, smoke=False, verbose=False, only=None,
        clock="wall", sparse="lazy"):
    """Time both steps in one run; ``{"rows": [...], "notes": [...], "ratios": [...]}``.

    ``out_dir`` is accepted for the suite's calling convention (this module plots nothing).
    ``only``: ``"embedding"`` or ``"fm"`` to time that step alone; ``clock``: a key of
    :data:`CLOCKS`.
    """
    from benchmarks import common

    settings = SETTINGS["smoke" if smoke else ("quick" if quick else "full")]
    torch = common.torch_or_none(compare)
    rows, ratios = [], []
    vocab = 2_000 if smoke else EMB["vocab"]
    variants = SMOKE_VARIANTS if smoke else VARIANTS
    builders = {"embedding": lambda n: embedding_systems(torch, n, vocab, variants, sparse),
                "fm": lambda n: fm_systems(torch, n, quick, smoke)}
    for k, (case, build) in enumerate(builders.items()):
        if only is not None and case != only:
            continue
        timed = measure(build(settings["n_batches"][k]), torch, settings["repeats"],
                        settings["blocks"][k], clock)
        if verbose:
            _print(case, timed)
        base, mine = timed["floor"]["median_s"], timed["minigrad"]["median_s"]
        for label, row in timed.items():
            rows.append({"bench": "floor", "case": case, "system": label, **row,
                         "over_floor": row["median_s"] / base})
            if label != "minigrad":
                ratios.append({"ratio": f"{case}: minigrad / {label}",
                               "value": mine / row["median_s"]})
    notes = (["smoke run: V=2000 and a small FM task; figures check the plumbing only"]
             if smoke else [])
    notes += [f"one process, systems timed in interleaved blocks (medians, {clock} clock); "
              "warm-up steps (JIT, caches) excluded; 'minigrad unfused' = "
              "mg.Mode(exclude=('fuse',)); 'minigrad jit' = mg.Mode(linker='jit') (compiled "
              "Numba segments); torch rows at 1 and 2 intra-op threads",
             "targets (issue 12): embedding <= 1.5x floor; FM <= 2x floor and >= 3x faster "
             "than torch eager"]
    notes += [f"{r['ratio']} = {r['value']:.2f}" for r in ratios]
    if "torch" in set(compare or ()) and torch is None:
        notes.append("--compare torch: torch is not installed, PyTorch rows skipped")
    return common.result("floor", rows, notes, ratios=ratios)


#: ``--vocab``'s rows: the jit step (the fast one) and the floor, at each vocabulary
FLAT_VARIANTS = {"minigrad jit": (True, "jit")}


def flat(vocabs, clock="cpu", sparse="lazy", quick=False):
    """The embedding step's growth with the vocabulary (issue 12: within 1.2x from 3*10^4
    to 3*10^6 rows): the jit step and the floor (plain, and with the prefetch minigrad's
    kernels use: ``EmbeddingFloor(prefetch=True)``) timed at each size in turn (one size's
    tables at a time: 4.6 GB of tables and Adam state each at 3*10^6), printed with their
    ratio and each one's time over its time at the first size. Both touch the same rows
    (same batches); what grows is the cost of reaching them in memory, and the number of
    distinct rows a Zipf batch has (more at a larger vocabulary)."""
    import gc

    settings = SETTINGS["quick" if quick else "full"]
    out = {}
    for vocab in vocabs:
        systems = embedding_systems(None, settings["n_batches"][0], vocab, FLAT_VARIANTS,
                                    sparse, floors=("floor", "floor prefetch"))
        out[vocab] = measure(systems, None, settings["repeats"], settings["blocks"][0], clock)
        del systems
        gc.collect()
    first = out[vocabs[0]]
    print(f"\nembedding step by vocabulary ({clock} clock, median ms/step, interleaved "
          f"blocks; /first = over the time at V={vocabs[0]})")
    labels = ("minigrad jit", "floor", "floor prefetch")
    print(f"{'V':>9s}" + "".join(f" {k:>15s}" for k in labels) + f" {'jit/floor':>10s} "
          f"{'jit/floor pf':>13s}" + "".join(f" {k + '/first':>21s}" for k in labels))
    for vocab, rows in out.items():
        t = [rows[k]["median_s"] for k in labels]
        print(f"{vocab:9d}" + "".join(f" {x * 1e3:15.3f}" for x in t) + f" {t[0] / t[1]:10.3f}"
              f" {t[0] / t[2]:13.3f}"
              + "".join(f" {x / first[k]['median_s']:21.3f}" for x, k in zip(t, labels)))
    return out


def table_rows(res):
    """One row per (step, system): ms per step, and its ratio to the floor in the unit."""
    return [{"bench": "floor", "case": f"{r['case']} step", "system": r["system"],
             "value": 1e3 * r["median_s"], "lo": None, "hi": None,
             "unit": f"ms ({r['over_floor']:.2f}x floor"
                     + (f", {r['nodes']} nodes)" if r["nodes"] is not None else ")")}
            for r in res["rows"]]


def main(argv=None):
    import argparse
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compare", default="", help="'torch' to add torch eager rows")
    parser.add_argument("--only", choices=sorted(CASES), help="time this step alone")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="'cpu': the process's CPU time (a shared box)")
    parser.add_argument("--sparse", choices=("lazy", "exact"), default="lazy",
                        help="the embedding step's Adam mode (the floor stays lazy)")
    parser.add_argument("--vocab", help="comma-separated vocabularies (e.g. "
                        "30000,300000,3000000): the embedding step's growth with V, jit and "
                        "floor rows only")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}")
    if args.vocab:
        flat([int(float(v)) for v in args.vocab.split(",")], args.clock, args.sparse,
             args.quick)
        print(f"load average after: {os.getloadavg()}")
        return
    run(args.quick, args.compare.split(","), verbose=True, only=args.only, clock=args.clock,
        sparse=args.sparse)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
