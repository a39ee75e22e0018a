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
[--compare torch]`` times minigrad, the floor and torch eager on the same batches in one
run (interleaved blocks, medians) and prints the ratios.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# --- the masked-embedding classifier ----------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy")
def _embedding_step(tokens, mask, labels, E, M, W, c, mE, vE, mM, vM, mW, vW, mc, vc, t,
                    slot, lr, b1, b2, eps):
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
    ``mg.models.MaskedEmbeddingClassifier(vector_mask=True)``; returns the loss.
    """

    def __init__(self, E, M, W, c, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
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
                               self.eps)

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
