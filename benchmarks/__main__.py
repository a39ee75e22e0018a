"""``python -m benchmarks``: run every benchmark module present, print one table, write JSON.

    python -m benchmarks [--quick] [--smoke] [--compare torch] [--out DIR] [--only NAMES]

A module ``benchmarks.<name>`` takes part when it exists and has ``run``; it is called as
``run(quick=..., compare=..., out_dir=...)`` plus ``smoke=True`` when its ``run`` accepts
it (a module without a smoke mode runs its ``--quick`` mode under ``--smoke``). A module
that raises is reported in the table and the JSON, the others still run, and the exit
status is 1. Every figure printed is measured in this run.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks import common

MODULES = ("embedding", "fm_noise", "text", "kernels", "optim", "hogwild", "gpu", "distributed")
TABLE_COLUMNS = ["bench", "case", "system", "value", "lo", "hi", "unit"]
TABLE_HEADERS = ["bench", "case", "system", "median", "min", "max", "unit"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer sizes/repeats (< 3 min)")
    p.add_argument("--smoke", action="store_true", help="tiny CI mode: seconds, every module")
    p.add_argument("--compare", action="append", default=[], metavar="LIB",
                   help="also run the same workloads in LIB (torch); repeatable or a,b")
    p.add_argument("--out", default="benchmark-results", help="directory for JSON and PNGs")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help=f"comma-separated subset of {','.join(MODULES)}")
    args = p.parse_args(argv)
    args.compare = {c.strip() for item in args.compare for c in item.split(",") if c.strip()}
    names = MODULES if args.only is None else tuple(n.strip() for n in args.only.split(","))
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(MODULES)}")
    args.names = names
    return args


def find_module(name):
    """``benchmarks.<name>`` if it exists and has ``run``, else ``(None, reason)``."""
    if importlib.util.find_spec(f"benchmarks.{name}") is None:
        return None, "module not present in this checkout"
    module = importlib.import_module(f"benchmarks.{name}")
    if not callable(getattr(module, "run", None)):
        return None, "module has no run()"
    return module, None


def call_run(module, args, out_dir):
    kwargs = dict(quick=args.quick or args.smoke, compare=set(args.compare), out_dir=out_dir)
    params = inspect.signature(module.run).parameters
    if args.smoke and "smoke" in params:
        kwargs["smoke"] = True
    out = module.run(**kwargs)
    if args.smoke and "smoke" not in params:
        out.setdefault("notes", []).append("no smoke mode in this module: ran its quick mode")
    return out


def table_rows(name, module, res):
    """Rows for the one printed table: the module's own ``table_rows`` or a generic view."""
    own = getattr(module, "table_rows", None)
    if callable(own):
        return own(res)
    rows = []
    for r in res.get("rows", []):
        if "median_s" not in r:
            continue
        skip = {"bench", "impl", "system"} | {k for k in r if k.endswith("_s")}
        case = " ".join(f"{k}={v}" for k, v in r.items()
                        if k not in skip and not isinstance(v, (float, list, dict)))
        rows.append({"bench": r.get("bench", name), "case": case,
                     "system": r.get("system", r.get("impl", "")),
                     "value": 1e3 * r["median_s"], "lo": 1e3 * r.get("min_s", r["median_s"]),
                     "hi": 1e3 * r.get("max_s", r["median_s"]), "unit": "ms"})
    return rows


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    report = {"mode": mode, "compare": sorted(args.compare), "argv": list(argv or sys.argv[1:]),
              "benchmarks": {}, "skipped": {}, "errors": {}, "wall_s": {}}
    table, notes = [], []
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    bar = common.progress(args.names, desc="benchmarks", leave=True, position=0)
    for name in bar:
        bar.set_postfix_str(name)
        module, why = find_module(name)
        if module is None:
            report["skipped"][name] = why
            notes.append(f"{name}: skipped ({why})")
            continue
        start = time.perf_counter()
        try:
            res = call_run(module, args, out_dir)
        except Exception as exc:  # noqa: BLE001 - one broken module must not hide the others
            report["errors"][name] = traceback.format_exc()
            notes.append(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            table.append({"bench": name, "case": "", "system": "ERROR", "unit": str(exc)[:60]})
            continue
        finally:
            report["wall_s"][name] = time.perf_counter() - start
        report["benchmarks"][name] = res
        table += table_rows(name, module, res)
        notes += [f"{name}: {n}" for n in res.get("notes", [])]
    bar.close()
    common.torch_or_none(args.compare)  # record the thread count the torch rows ran with
    report["environment"] = common.environment()
    report["environment"]["load_average_before"] = load_before
    if load_before and max(load_before[0], report["environment"]["load_average"][0]) > (
            0.5 + (os.cpu_count() or 1) * 0.5):
        notes.append(f"machine was busy (load average {load_before[0]:.1f} before, "
                     f"{report['environment']['load_average'][0]:.1f} after, "
                     f"{os.cpu_count()} cores): timings include contention")
    if common.pyplot_or_none() is None:
        notes.append(common.NO_MATPLOTLIB)
    report["plots"] = [p for r in report["benchmarks"].values() for p in r.get("plots", [])]
    path = common.write_json(out_dir / "results.json", report)

    env = report["environment"]
    print(f"minigrad benchmarks ({mode}) on {env['cpu_model']}, {env['cpus_usable']} cores, "
          f"threads {env['threads']}, commit {env['git']['commit']}")
    print(common.format_table(table, TABLE_COLUMNS, TABLE_HEADERS))
    for n in notes:
        print(f"- {n}")
    print("wall time per module (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in report["wall_s"].items()))
    plots = f"; plots: {', '.join(report['plots'])}" if report["plots"] else ""
    print(f"results: {path}{plots}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
