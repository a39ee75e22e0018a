"""Benchmark of the row kernels, above all ``scatter_add_rows`` (the sparse-gradient hot path).

``run(quick, compare, out_dir)`` returns ``{"name": "kernels", "rows": [...], "notes": [...]}``
where every row is a flat JSON-able dict (one measured figure). ``python -m
benchmarks.kernels [--quick] [--compare torch]`` prints the same rows as a table.

What is measured and why:

* ``copy``: ``np.copyto`` of a large array, the machine's practical memory bandwidth, so
  every GB/s below can be read as a fraction of what the hardware can do;
* ``jit``: the first call of each Numba kernel (a compile, or a load from Numba's on-disk
  cache when ``cache_hit`` is true) -- paid once per process, so it is kept out of the timings;
* ``scatter_add``: 10^5 float32 updates of width 64 into tables of 10^4..10^7 rows, for
  ``np.add.at``, ``kernels.reference``, ``kernels.cpu`` (Numba) and, with ``compare`` holding
  "torch", ``torch.Tensor.index_add_`` on the same memory with the same thread count;
* a few other kernels (numba vs reference) at one size;
* on a CUDA machine (``kernels.gpu`` imports): CuPy vs ``torch`` CUDA scatter-add and the
  device copy bandwidth.

GB/s counts the bytes a scatter must move: read the values, read and write each touched
``out`` row (duplicates counted per update), read the indices.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

WIDTH = 64
N_UPDATES = 10**5
DTYPE = np.float32  # the fast path
SIZES_FULL = [10**4, 10**5, 10**6, 10**7]
SIZES_QUICK = [10**4, 10**6]


# --- timing helpers ---------------------------------------------------------------------------


def _times(fn, repeats, sync=None):
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    if sync:
        sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - start)
    return out


def _row(bench, impl, times, n_bytes=None, **extra):
    """One figure: median/min/max seconds and, when ``n_bytes`` is known, GB/s at the median."""
    median = float(np.median(times))
    row = {"bench": bench, "impl": impl, **extra}
    row.update(median_s=median, min_s=float(min(times)), max_s=float(max(times)))
    if n_bytes is not None:
        row["gb_per_s"] = n_bytes / median / 1e9
    return row


def _scatter_bytes(n_updates, width, itemsize):
    """Bytes moved by a scatter-add: values read + out rows read and written + indices."""
    return 3 * n_updates * width * itemsize + 8 * n_updates


# --- CPU ----------------------------------------------------------------------------------------


def _copy_row(quick, repeats):
    """Memory bandwidth of a plain large copy: the physical reference for the GB/s figures."""
    n = (64 if quick else 256) * 2**20 // 4
    src = np.ones(n, dtype=DTYPE)
    dst = np.empty_like(src)
    times = _times(lambda: np.copyto(dst, src), repeats)
    return _row("copy", "numpy", times, 2 * src.nbytes, n_bytes_copied=src.nbytes)


def _jit_rows():
    """Time each Numba kernel's first call on tiny inputs, which compiles or loads the cache."""
    import kernels.cpu as cpu
    from kernels.cpu import rows

    table = np.ones((8, WIDTH), DTYPE)
    idx = np.array([1, 3, 3], np.int64)
    vals = np.ones((3, WIDTH), DTYPE)
    indptr = np.array([0, 2, 3], np.int64)
    calls = {
        "_scatter_add": lambda: cpu.scatter_add_rows(table, idx, vals),
        "_gather_range": lambda: cpu.gather_rows(table, idx),
        "_sum_runs_range": lambda: cpu.coalesce_rows(idx, vals),
        "_bag_sum_range": lambda: cpu.bag_sum(table, idx.reshape(1, 3), np.ones((1, 3), DTYPE)),
        "_csr_dense_dot_range": lambda: cpu.csr_dense_dot(indptr, idx, vals[:, 0], table),
        "_weighted_sum_runs_range": lambda: cpu.csr_t_dense_dot_rows(indptr, idx, vals[:, 0],
                                                                     table[:2]),
    }
    out = []
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        seconds = time.perf_counter() - start
        stats = getattr(rows, name).stats
        hit = sum(stats.cache_hits.values()) > 0
        out.append(_row("jit", "numba", [seconds], kernel=name, cache_hit=hit))
    return out


def _torch_cpu():
    """``torch`` with the same thread count as Numba, or None when it is not installed."""
    try:
        import numba
        import torch
    except ImportError:
        return None
    torch.set_num_threads(numba.get_num_threads())
    return torch


def _scatter_impls(out, idx, values, repeats, torch):
    """``{impl: (call, repeats)}`` for one table; add.at-based ones get fewer repeats (slow)."""
    import kernels.cpu as cpu
    import kernels.reference as ref

    slow = max(2, repeats // 3)
    impls = {
        "numpy.add.at": (lambda: np.add.at(out, idx, values), slow),
        "reference": (lambda: ref.scatter_add_rows(out, idx, values), slow),
        "numba": (lambda: cpu.scatter_add_rows(out, idx, values), repeats),
    }
    if torch is not None:
        t_out, t_idx, t_val = (torch.from_numpy(a) for a in (out, idx, values))
        impls["torch.index_add_"] = (lambda: t_out.index_add_(0, t_idx, t_val), repeats)
    return impls


def _scatter_rows(sizes, repeats, compare, notes):
    """scatter_add of N_UPDATES rows into tables of each size, for every CPU implementation."""
    torch = _torch_cpu() if "torch" in compare else None
    if "torch" in compare and torch is None:
        notes.append("torch requested but not importable: skipped")
    rng = np.random.default_rng(0)
    values = rng.standard_normal((N_UPDATES, WIDTH)).astype(DTYPE)
    n_bytes = _scatter_bytes(N_UPDATES, WIDTH, values.itemsize)
    rows = []
    for n_rows in sizes:
        shape = {"table_rows": n_rows, "width": WIDTH, "n_updates": N_UPDATES, "dtype": "float32"}
        out = np.zeros((n_rows, WIDTH), DTYPE)
        idx = rng.integers(0, n_rows, N_UPDATES)
        for impl, (fn, reps) in _scatter_impls(out, idx, values, repeats, torch).items():
            rows.append(_row("scatter_add", impl, _times(fn, reps), n_bytes, **shape))
    return rows


def _other_kernel_rows(repeats):
    """The remaining kernels, numba vs reference, at one mid-sized shape (10^5 x 64 float32)."""
    import kernels.cpu as cpu
    import kernels.reference as ref

    rng = np.random.default_rng(1)
    n_rows, batch, length = 10**5, 4096, 32
    table = rng.standard_normal((n_rows, WIDTH)).astype(DTYPE)
    idx = rng.integers(0, n_rows, N_UPDATES)
    values = rng.standard_normal((N_UPDATES, WIDTH)).astype(DTYPE)
    tokens = rng.integers(0, n_rows, (batch, length))
    mask = (rng.random((batch, length)) < 0.8).astype(DTYPE)
    indptr = np.arange(0, batch * length + 1, length)
    data, cols, grad = mask.ravel(), tokens.ravel(), table[:batch]
    cases = {
        "gather": lambda m: m.gather_rows(table, idx),
        "coalesce": lambda m: m.coalesce_rows(idx, values),
        "bag_sum": lambda m: m.bag_sum(table, tokens, mask),
        "csr_dense_dot": lambda m: m.csr_dense_dot(indptr, cols, data, table),
        "csr_t_dense_dot_rows": lambda m: m.csr_t_dense_dot_rows(indptr, cols, data, grad),
        "segment_sum": lambda m: m.segment_sum(values, idx, n_rows),
    }
    rows = []
    for bench, call in cases.items():
        for impl, mod in (("reference", ref), ("numba", cpu)):
            times = _times(lambda mod=mod, call=call: call(mod), repeats)
            rows.append(_row(bench, impl, times, table_rows=n_rows, width=WIDTH))
    return rows


# --- GPU -----------------------------------------------------------------------------------------


def _cuda_torch(compare):
    """``torch`` when it was asked for and sees a CUDA device, else None."""
    if "torch" not in compare:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _gpu_copy_row(cp, repeats):
    """Device-to-device copy bandwidth: the GPU's physical reference."""
    src = cp.ones(256 * 2**20, dtype=cp.float32)
    dst = cp.empty_like(src)
    times = _times(lambda: cp.copyto(dst, src), repeats, cp.cuda.Device().synchronize)
    return _row("copy", "cupy", times, 2 * src.nbytes, n_bytes_copied=src.nbytes)


def _gpu_scatter_rows(gpu, cp, torch, n_rows, values, repeats):
    """CuPy (and torch CUDA) scatter-add into one table of ``n_rows`` rows."""
    rng = np.random.default_rng(n_rows)
    out = cp.zeros((n_rows, WIDTH), DTYPE)
    idx = cp.asarray(rng.integers(0, n_rows, N_UPDATES))
    n_bytes = _scatter_bytes(N_UPDATES, WIDTH, 4)
    shape = {"table_rows": n_rows, "width": WIDTH, "n_updates": N_UPDATES, "dtype": "float32"}
    sync = cp.cuda.Device().synchronize
    times = _times(lambda: gpu.scatter_add_rows(out, idx, values), repeats, sync)
    rows = [_row("scatter_add", "cupy", times, n_bytes, **shape)]
    if torch is not None:
        t_out, t_idx, t_val = (torch.as_tensor(a, device="cuda") for a in (out, idx, values))
        times = _times(lambda: t_out.index_add_(0, t_idx, t_val), repeats, sync)
        rows.append(_row("scatter_add", "torch.cuda.index_add_", times, n_bytes, **shape))
    return rows


def _gpu_rows(sizes, repeats, compare, notes):
    """CuPy scatter-add vs torch CUDA ``index_add_`` and the device copy bandwidth."""
    try:
        import kernels.gpu as gpu
    except ImportError as exc:
        notes.append(f"gpu part skipped: {exc}")
        return []
    import cupy as cp

    torch = _cuda_torch(compare)
    rng = np.random.default_rng(0)
    values = cp.asarray(rng.standard_normal((N_UPDATES, WIDTH)).astype(DTYPE))
    rows = [_gpu_copy_row(cp, repeats)]
    for n_rows in sizes:
        rows += _gpu_scatter_rows(gpu, cp, torch, n_rows, values, repeats)
    return rows


# --- entry points --------------------------------------------------------------------------------


def run(quick: bool, compare: set[str], out_dir) -> dict:
    """Run the benchmark; return the figures and write ``kernels.json`` into ``out_dir``."""
    repeats = 3 if quick else 7
    sizes = SIZES_QUICK if quick else SIZES_FULL
    notes = [
        f"float32, width {WIDTH}, {N_UPDATES} updates; indices uniform at random",
        "gb_per_s = (3 * n_updates * width * 4 + 8 * n_updates) / median_s "
        "(values read, out rows read+written, indices read)",
        f"cpu threads: {os.cpu_count()}; jit rows time the first call (compile or cache load)",
    ]
    rows = [_copy_row(quick, repeats)]
    rows += _jit_rows()
    rows += _scatter_rows(sizes, repeats, compare, notes)
    rows += _other_kernel_rows(repeats)
    rows += _gpu_rows(sizes, repeats, compare, notes)
    result = {"name": "kernels", "rows": rows, "notes": notes}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "kernels.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result):
    """Plain-text table of the rows, with GB/s and, for scatter_add, the speed-up vs add.at."""
    base = {
        (r["table_rows"], r["bench"]): r["median_s"]
        for r in result["rows"]
        if r["impl"] == "numpy.add.at"
    }
    copy_bw = next((r["gb_per_s"] for r in result["rows"] if r["bench"] == "copy"), None)
    head = f"{'bench':<22}{'impl':<23}{'size':>19}{'median ms':>11}{'GB/s':>8}  note"
    lines = [head]
    for r in result["rows"]:
        size = r.get("table_rows", r.get("kernel", ""))
        gbs = f"{r['gb_per_s']:.1f}" if "gb_per_s" in r else ""
        note = ""
        key = (r.get("table_rows"), r["bench"])
        on_cpu = r["impl"] != "cupy" and "cuda" not in r["impl"]
        if key in base and on_cpu and r["impl"] != "numpy.add.at":
            note = f"{base[key] / r['median_s']:.1f}x add.at;"
        if r["bench"] == "scatter_add" and copy_bw and r["impl"] == "numba":
            note += f" {100 * r['gb_per_s'] / copy_bw:.0f}%copy"
        if r["bench"] == "jit":
            note = "cache hit" if r["cache_hit"] else "compiled"
        ms = 1e3 * r["median_s"]
        lines.append(f"{r['bench']:<22}{r['impl']:<23}{size!s:>19}{ms:>11.3f}{gbs:>8}  {note}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    compare = {"torch"} if "--no-torch" not in argv else set()
    result = run(quick="--quick" in argv, compare=compare, out_dir=None)
    print(format_table(result))


if __name__ == "__main__":
    main()
