"""``StepHistory``: what an exact-mode catch-up needs to know about the steps a row skipped.

With a schedule (or a shared lr changed between calls) every skipped step has its own lr
and weight decay, so catching a row up after ``k`` skipped steps needs those values. The
history keeps, per step ``s`` (1-based; index 0 unused):

* ``lr[s]``, ``wd[s]``: float64, 16 bytes a step;
* for rules whose zero-gradient step is *linear* in the row's state (SGD and Momentum
  with weight decay, RMSprop's momentum buffer, AdamW's decoupled decay) a 2x2 matrix
  ``A_s = matrix(lr[s], wd[s])`` and the products of aligned blocks of ``2**l`` steps,
  ``M_l[b] = A_{(b+1)2^l - 1} ... A_{b 2^l}`` (later steps on the left), one level per
  power of two: 64 bytes a step in all.

``range_product`` then multiplies the skipped range ``[a, e]`` out of at most
``2 log2(e - a + 1)`` stored blocks: O(log k) per row instead of O(k), and numerically as
safe as multiplying the steps one by one (only forward products, no inverse, so no
``mu**-t`` overflow and no prefix product that underflows). Adam's drift is not linear;
it keeps ``lr_max``, ``lrwd_max`` and ``wd_max`` (running maxima) to bound the rest of a drift sum,
and, given a ``series`` (``kernels.rules.adam.SeriesBlocks``), the same aligned blocks of
the sums its closed-form catch-up needs (``sblocks``: 7 floats a block, 112 bytes a step),
so a row's catch-up reads O(log k) blocks instead of walking its k skipped steps.

Recording step ``s`` again (a retried call) overwrites it and everything after it, so a
failed call that recorded its step leaves nothing wrong behind.

**Compaction.** Storage is indexed by ``s - base``: ``lr[s - base]``, and the blocks are
aligned on ``s - base`` (every query and every kernel subtracts ``base``). ``restart``
(after a flush or a load: no row lags) moves ``base`` to the step and shrinks the storage
back to 64 steps; ``compact(min_last)`` (called by the owner when the storage is full,
with the smallest ``last`` of its rows) drops the first half of the window when no row
needs it, so a run keeps about ``2 * (n - min_last)`` steps (at least ``COMPACT_MIN``),
not every step since the start.
"""
from __future__ import annotations

import numpy as np

__all__ = ["StepHistory", "range_product"]

#: the window is not compacted below this many steps (each compaction costs one O(V) min
#: over the owner's ``last`` array, so it runs at most once per COMPACT_MIN / 2 steps)
COMPACT_MIN = 4096


class StepHistory:
    """Per-step lr / weight decay (and block products of the rule's step matrix)."""

    def __init__(self, matrix=None, capacity=64, series=None):
        self.matrix = matrix  # (lr, wd) -> (a11, a12, a21, a22), or None
        self.series = series  # kernels.rules.adam.SeriesBlocks, or None
        self.n = 0  # steps recorded: 1..n
        self.base = 0  # storage index of step s: s - base (steps <= base are forgotten)
        self.lr_max = self.lrwd_max = self.wd_max = 0.0
        # rows a read of the current step caught up, for its update (kernels/cpu/caught_up.py)
        self.caught_up = self.kept_buffer = None
        self._allocate(max(64, int(capacity)))

    # --- storage -------------------------------------------------------------------
    def _allocate(self, cap):
        """Capacity ``cap`` (a power of two) steps; keeps what is recorded."""
        cap = 1 << int(np.ceil(np.log2(cap)))
        lr, wd = np.zeros(cap), np.zeros(cap)
        n_levels = int(np.log2(cap)) + 1
        offsets = np.zeros(n_levels + 1, dtype=np.int64)
        for level in range(n_levels):
            offsets[level + 1] = offsets[level] + (cap >> level)
        blocks = np.zeros((int(offsets[-1]), 4)) if self.matrix is not None else None
        sblocks = None
        if self.series is not None:
            sblocks = np.zeros((int(offsets[-1]), self.series.width))
            self.series.levels(n_levels)
        if hasattr(self, "lr"):
            n = self.n - self.base + 1
            lr[:n], wd[:n] = self.lr[:n], self.wd[:n]
            for new, old in ((blocks, self.blocks), (sblocks, self.sblocks)):
                if new is None:
                    continue
                for level in range(len(self.offsets) - 1):
                    size = self.offsets[level + 1] - self.offsets[level]
                    src = old[self.offsets[level]:self.offsets[level] + size]
                    new[offsets[level]:offsets[level] + size] = src
        # blocks not yet complete hold zeros: a query only ever uses blocks that lie
        # wholly inside recorded, skipped steps
        self.lr, self.wd, self.offsets, self.blocks, self.cap = lr, wd, offsets, blocks, cap
        self.sblocks = sblocks

    @property
    def n_levels(self):
        return len(self.offsets) - 1

    # --- recording -----------------------------------------------------------------
    def record(self, step, lr, wd):
        """Step ``step`` uses ``lr`` and ``wd``; forgets any later step (a retried call)."""
        step = int(step)
        if step <= self.base or step > self.n + 1:
            raise ValueError(f"step {step} recorded out of order (history holds "
                             f"{self.base + 1}..{self.n})")
        while step - self.base >= self.cap:
            self._allocate(2 * self.cap)
        i = step - self.base
        self.lr[i], self.wd[i] = lr, wd
        self.n = step
        self.lr_max = max(self.lr_max, float(lr))
        self.lrwd_max = max(self.lrwd_max, float(lr) * float(wd))
        self.wd_max = max(self.wd_max, float(wd))
        if self.sblocks is not None:
            self._record_series(step, i, float(lr), float(wd))
        if self.blocks is None:
            return
        blocks, off = self.blocks, self.offsets
        blocks[off[0] + i] = self.matrix(float(lr), float(wd))
        b = i
        for level in range(1, self.n_levels):
            if (b & 1) == 0:  # this step does not complete a block of the next level
                break
            b >>= 1
            hi, lo = blocks[off[level - 1] + 2 * b + 1], blocks[off[level - 1] + 2 * b]
            blocks[off[level] + b] = _mul(hi, lo)

    def _record_series(self, step, i, lr, wd):
        series, sblocks, off = self.series, self.sblocks, self.offsets
        sblocks[off[0] + i] = series.leaf(step, lr, wd)
        b = i
        for level in range(1, self.n_levels):
            if (b & 1) == 0:  # this step does not complete a block of the next level
                break
            b >>= 1
            lo, hi = sblocks[off[level - 1] + 2 * b], sblocks[off[level - 1] + 2 * b + 1]
            sblocks[off[level] + b] = series.combine(lo, hi, level)

    def at(self, step):
        """``(lr, wd)`` recorded for ``step`` (``base <= step <= n``; the step a restart
        moved ``base`` to keeps its values when they were recorded)."""
        i = int(step) - self.base
        return float(self.lr[i]), float(self.wd[i])

    def restart(self, step):
        """Forget everything; the next recorded step is ``step + 1`` (after a flush or a
        load every row is up to date at ``step``, so older steps are never needed). The
        storage shrinks back to its first size, with ``base = step``."""
        step = int(step)
        self.caught_up = None
        keep = self.at(step) if self.base <= step <= self.n else (0.0, 0.0)
        self.n = self.base = step
        self.lr_max = self.lrwd_max = self.wd_max = 0.0
        del self.lr  # nothing recorded is kept: allocate afresh
        self._allocate(64)
        self.lr[0], self.wd[0] = keep

    def restart_at(self, step, lr, wd):
        """``restart(step)`` after a step that brought *every* row up to date at ``step``
        with ``lr`` / ``wd`` (a dense-semantics step, ``minigrad/update_driver.py``): no
        earlier step can be needed, and ``at(step)`` gives that step's values. O(1) when
        nothing was recorded since the last restart (the storage is all zeros then)."""
        step = int(step)
        self.caught_up = None
        if self.n != self.base or step <= self.base:
            self.restart(step)
        else:
            self.n = self.base = step
            self.lr_max = self.lrwd_max = self.wd_max = 0.0
        self.lr[0], self.wd[0] = lr, wd

    def compact(self, min_last):
        """Drop the first half of the storage window when no row needs it: rows last
        updated at ``min_last`` or later read steps ``> min_last`` only. Called by the
        owner when the window is full; returns whether it moved ``base``.

        The window ``[base, base + cap)`` keeps its block alignment when it moves by
        ``half = cap / 2`` steps: each level's blocks shift down by ``half >> level``
        (the one block spanning the whole window is dropped: it would now straddle)."""
        half = self.cap // 2
        if self.cap < COMPACT_MIN or int(min_last) - self.base < half:
            return False
        n = self.n - self.base + 1
        self.lr[:n - half], self.wd[:n - half] = self.lr[half:n], self.wd[half:n]
        self.lr[n - half:], self.wd[n - half:] = 0.0, 0.0
        for table in (self.blocks, self.sblocks):
            if table is None:
                continue
            for level in range(self.n_levels):
                size = self.cap >> level
                lo = int(self.offsets[level])
                shift = half >> level
                if shift == 0:  # the top block: it covered the dropped half too
                    table[lo:lo + size] = 0.0
                    continue
                table[lo:lo + size - shift] = table[lo + shift:lo + size].copy()
                table[lo + size - shift:lo + size] = 0.0
        self.base += half
        return True


def _mul(x, y):
    """2x2 matrices stored as ``(a11, a12, a21, a22)``: ``x @ y``."""
    return np.array([x[0] * y[0] + x[1] * y[2], x[0] * y[1] + x[1] * y[3],
                     x[2] * y[0] + x[3] * y[2], x[2] * y[1] + x[3] * y[3]])


def range_product(history, a, e):
    """``A_e ... A_a`` for each row's range ``[a[i], e[i]]`` (empty when ``a > e``: the
    identity), vectorised over rows: ``(n, 4)`` float64. O(log(e - a)) block products."""
    a = np.asarray(a, dtype=np.int64) - history.base  # storage steps
    e = np.asarray(e, dtype=np.int64) - history.base
    n = a.shape[0]
    out = np.zeros((n, 4))
    out[:, 0] = out[:, 3] = 1.0
    blocks, off = history.blocks, history.offsets
    top = history.n_levels - 1
    active = a <= e
    while bool(active.any()):
        rows = active.nonzero()[0]
        s, end = a[rows], e[rows]
        level = np.zeros(rows.shape[0], dtype=np.int64)
        grow = np.ones(rows.shape[0], dtype=bool)
        for lv in range(1, top + 1):
            size = np.int64(1) << lv
            grow &= (s % size == 0) & (s + size - 1 <= end)
            if not bool(grow.any()):
                break
            level[grow] = lv
        blk = blocks[off[level] + (s >> level)]
        cur = out[rows]
        out[rows] = np.stack([
            blk[:, 0] * cur[:, 0] + blk[:, 1] * cur[:, 2],
            blk[:, 0] * cur[:, 1] + blk[:, 1] * cur[:, 3],
            blk[:, 2] * cur[:, 0] + blk[:, 3] * cur[:, 2],
            blk[:, 2] * cur[:, 1] + blk[:, 3] * cur[:, 3],
        ], axis=1)
        a[rows] = s + (np.int64(1) << level)
        active = a <= e
    return out
