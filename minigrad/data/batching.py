"""Mini-batching and splitting of row-aligned arrays (NumPy arrays and SciPy CSR).

Everything here works on "row containers": NumPy arrays (indexed along axis 0)
and SciPy sparse CSR matrices / arrays (row slicing by index arrays is cheap for
CSR).  Several containers are batched together and stay aligned, e.g.
``for Xb, yb in batches(X, y, batch_size=256)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

__all__ = ["batches", "train_test_split"]


def batches(
    *arrays,
    batch_size: int,
    shuffle: bool = True,
    seed: int | np.random.Generator | None = 0,
    drop_last: bool = False,
) -> Iterator[tuple]:
    """Yield aligned mini-batches ``(a[idx], b[idx], ...)`` covering every row once.

    Args:
        *arrays: NumPy arrays / array-likes and/or SciPy sparse matrices or arrays
            (CSR recommended), all with the same number of rows.
        batch_size: rows per batch (the last batch may be smaller unless
            ``drop_last``).
        shuffle: visit rows in a random permutation (else in order, as cheap
            slices / views).
        seed: an int (the same int always gives the same order, so runs are
            reproducible) or an ``np.random.Generator`` (its state advances, so
            passing the same generator to successive epochs gives new orders).
        drop_last: skip a final incomplete batch.

    Returns:
        An iterator of tuples, one entry per input array, even for one input.

    Raises:
        ValueError: immediately (not on first ``next``) for no arrays, a
            non-positive ``batch_size`` or unequal row counts.
    """
    arrays = _as_row_containers(arrays)
    n = _common_length(arrays)
    _check_batch_size(batch_size)
    order = _permutation(n, seed) if shuffle else None
    return _iterate(arrays, n, int(batch_size), order, drop_last)


def _iterate(arrays, n, batch_size, order, drop_last) -> Iterator[tuple]:
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        rows = slice(start, end) if order is None else order[start:end]
        yield tuple(_take(a, rows) for a in arrays)


def train_test_split(*arrays, test_fraction: float = 0.2, seed: int | np.random.Generator = 0):
    """Randomly split row-aligned arrays into train and test parts.

    Returns ``[a_train, a_test, b_train, b_test, ...]`` (scikit-learn order), so
    ``X_tr, X_te, y_tr, y_te = train_test_split(X, y)``.  The test part gets
    ``round(n * test_fraction)`` rows (at least 1, leaving at least 1 for train).
    """
    arrays = _as_row_containers(arrays)
    n = _common_length(arrays)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 rows to split, got {n}")
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    order = _permutation(n, seed)
    test_rows, train_rows = np.sort(order[:n_test]), np.sort(order[n_test:])
    out = []
    for a in arrays:
        out.extend((_take(a, train_rows), _take(a, test_rows)))
    return out


def _as_row_containers(arrays) -> list:
    if not arrays:
        raise ValueError("expected at least one array")
    out = []
    for a in arrays:
        if sp.issparse(a):
            # COO etc. cannot be row-indexed; CSR row slicing is the cheap path.
            out.append(a if a.format in ("csr", "csc", "lil", "dok") else a.tocsr())
        else:
            out.append(np.asarray(a) if not hasattr(a, "shape") else a)
    return out


def _common_length(arrays) -> int:
    lengths = []
    for a in arrays:
        if len(a.shape) == 0:
            raise ValueError("cannot batch a 0-d array (it has no rows)")
        lengths.append(a.shape[0])
    if len(set(lengths)) > 1:
        raise ValueError(
            f"all arrays must have the same number of rows (first dimension), got {lengths}"
        )
    return int(lengths[0])


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")


def _permutation(n: int, seed) -> np.ndarray:
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.permutation(n)


def _take(a, rows):
    return a[rows]
