"""``python -m benchmarks``: run the benchmarks, print one table each, write JSON and REPORT.md.

    python -m benchmarks [--quick] [--smoke] [--compare torch] [--out DIR] [--only NAMES]

A module ``benchmarks.<name>`` takes part when it exists and has ``run``; it is called as
``run(quick=..., compare=..., out_dir=...)`` plus ``smoke=True`` when its ``run`` accepts
it (a module without a smoke mode runs its ``--quick`` mode under ``--smoke``). A module
that raises is reported in its table and the JSON, the others still run, and the exit
status is 1. Every figure printed is measured in this run.

Adding a benchmark: put ``benchmarks/<name>.py`` with ``run`` (and optionally
``table_rows(result) -> [{"case", "system", "value", "lo", "hi", "unit"}]``) beside the
others. ``ORDER`` below only fixes where the known ones come in the report; any other
module with ``run`` is found and runs after them, except those in ``NOT_IN_SUITE``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import pkgutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks import common

ORDER = (  # one name per line, so that a new benchmark is a one-line change
    "embedding",
    "triplet",
    "fm_noise",
    "text",
    "kernels",
    "optim",
    "hogwild",
    "distributed",
    "gpu",
)
NOT_IN_SUITE = {"common", "nan_guard_cost"}  # helpers and stand-alone studies, not suite members
TABLE_COLUMNS = ["case", "system", "value", "lo", "hi", "unit"]
TABLE_HEADERS = ["case", "system", "median", "min", "max", "unit"]


def discover():
    """Benchmark module names: ``ORDER`` first, then any other module in the package."""
    here = Path(__file__).resolve().parent
    found = [m.name for m in pkgutil.iter_modules([str(here)])
             if not m.name.startswith("_") and m.name not in NOT_IN_SUITE]
    return tuple(ORDER) + tuple(sorted(n for n in found if n not in ORDER))


MODULES = discover()


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer sizes/repeats (< 3 min)")
    p.add_argument("--smoke", action="store_true", help="tiny CI mode: seconds, every module")
    p.add_argument("--compare", action="append", default=[], metavar="LIB",
                   help="also run the same workloads in LIB (torch); repeatable or a,b")
    p.add_argument("--out", default="benchmark-results",
                   help="directory for results.json, REPORT.md and the PNG plots")
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
    """Rows of one module's table: the module's own ``table_rows`` or a generic view."""
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
        if r.get("bench") not in (None, name):  # e.g. the kernel a kernels row measured
            case = f"{r['bench']} {case}"
        rows.append({"bench": r.get("bench", name), "case": case,
                     "system": r.get("system", r.get("impl", "")),
                     "value": 1e3 * r["median_s"], "lo": 1e3 * r.get("min_s", r["median_s"]),
                     "hi": 1e3 * r.get("max_s", r["median_s"]), "unit": "ms"})
    return rows


def run_module(name, args, out_dir):
    """``(result or None, table rows, notes, error text or None, load record)``."""
    module, why = find_module(name)
    if module is None:
        return None, [], [f"skipped ({why})"], None, None
    probe = common.LoadProbe()
    try:
        res = call_run(module, args, out_dir)
    except Exception as exc:  # noqa: BLE001 - one broken module must not hide the others
        load = probe.finish()
        rows = [{"case": "", "system": "ERROR", "unit": f"{type(exc).__name__}: {exc}"[:200]}]
        return None, rows, [f"FAILED: {type(exc).__name__}: {exc}"], traceback.format_exc(), load
    load = probe.finish()
    return res, table_rows(name, module, res), list(res.get("notes", [])), None, load


def section(name, rows, notes, load, wall_s):
    """One module's printed block: heading, table (<= 100 columns), notes."""
    head = f"== {name} ({wall_s:.1f} s"
    head += f"; {common.load_note(load)}" if load else ""
    head += ")"
    lines = [wrap(head, "   ")]
    if rows:
        lines.append(common.format_table(rows, TABLE_COLUMNS, TABLE_HEADERS))
    lines += [wrap(f"- {n}", "  ") for n in notes]
    return "\n".join(lines)


def wrap(text, indent):
    """``text`` folded to the table width, continuation lines indented."""
    import textwrap

    return textwrap.fill(text, common.TABLE_WIDTH, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    report = {"mode": mode, "compare": sorted(args.compare), "argv": list(argv or sys.argv[1:]),
              "benchmarks": {}, "skipped": {}, "errors": {}, "wall_s": {}, "load": {},
              "tables": {}, "notes": {}}
    suite_probe = common.LoadProbe()
    bar = common.progress(args.names, desc="benchmarks", leave=True, position=0)
    for name in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        res, rows, notes, error, load = run_module(name, args, out_dir)
        report["wall_s"][name] = time.perf_counter() - start
        if res is None and error is None:
            report["skipped"][name] = notes[0]
            continue
        if error is not None:
            report["errors"][name] = error
        else:
            report["benchmarks"][name] = res
        report["load"][name], report["tables"][name], report["notes"][name] = load, rows, notes
    bar.close()
    common.torch_or_none(args.compare)  # record the thread count the torch rows ran with
    report["environment"] = common.environment()
    report["environment"]["suite_load"] = suite_probe.finish()
    suite_notes = []
    if common.pyplot_or_none() is None:
        suite_notes.append(common.NO_MATPLOTLIB)
    report["plots"] = [p for r in report["benchmarks"].values() for p in r.get("plots", [])]
    report["suite_notes"] = suite_notes
    path = common.write_json(out_dir / "results.json", report)
    report_path = write_report(out_dir / "REPORT.md", report)

    env = report["environment"]
    print(wrap(f"minigrad benchmarks ({mode}) on {env['cpu_model']}, {env['cpus_usable']} "
               f"cores, commit {(env['git']['commit'] or '?')[:12]}; "
               f"{common.threads_line(env)}", "  "))
    for name in report["tables"]:
        print()
        print(section(name, report["tables"][name], report["notes"][name],
                      report["load"][name], report["wall_s"][name]))
    print()
    for n in suite_notes + [f"{k}: {v}" for k, v in report["skipped"].items()]:
        print(wrap(f"- {n}", "  "))
    total = sum(report["wall_s"].values())
    print(wrap("wall time per module (s): "
               + ", ".join(f"{k} {v:.1f}" for k, v in report["wall_s"].items())
               + f"; total {total:.1f}", "  "))
    print(wrap(f"results: {path}; report: {report_path}", "  "))
    return 1 if report["errors"] else 0


def write_report(path, report):
    """``REPORT.md``: environment, then per module its load, table, notes and plots."""
    env = report["environment"]
    out_dir = Path(path).parent
    lines = [f"# minigrad benchmark report ({report['mode']})", "",
             f"`python -m benchmarks {' '.join(report['argv'])}`", "",
             f"- machine: {env['cpu_model']}, {env['cpus_usable']} usable cores "
             f"({env['cpu_count']} online), {env['platform']}",
             f"- {common.threads_line(env)}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
             f"- commit {env['git']['commit']}{' (dirty tree)' if env['git']['dirty'] else ''}",
             f"- whole run: {common.load_note(env['suite_load'])}",
             "- figures are medians over repeats (min and max beside them); ratios taken in "
             "the same run carry to other machines better than absolute times, which hold "
             "for this machine only", ""]
    for n in report.get("suite_notes", []):
        lines.append(f"- {n}")
    for name, rows in report["tables"].items():
        load = report["load"].get(name)
        lines += [f"## {name}", "",
                  f"{report['wall_s'][name]:.1f} s; " + (common.load_note(load) if load else ""),
                  ""]
        if load and load.get("busy"):
            lines += ["> **Taken on a busy machine**: other processes competed for the cores, "
                      "so these timings include contention.", ""]
        if rows:
            lines += [common.markdown_table(rows, TABLE_COLUMNS, TABLE_HEADERS), ""]
        lines += [f"- {n}" for n in report["notes"].get(name, [])]
        res = report["benchmarks"].get(name, {})
        for plot in res.get("plots", []):
            rel = Path(plot)
            try:
                rel = rel.resolve().relative_to(out_dir.resolve())
            except ValueError:
                pass
            lines += ["", f"![{name}: {rel.stem}]({rel.as_posix()})"]
        if name in report["errors"]:
            lines += ["", "```", report["errors"][name].rstrip(), "```"]
        lines.append("")
    for name, why in report["skipped"].items():
        lines.append(f"- {name}: {why}")
    Path(path).write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
