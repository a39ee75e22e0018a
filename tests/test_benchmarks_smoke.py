"""``python -m benchmarks --smoke`` runs end to end and writes a well-formed results.json.

No timing is asserted: this only checks that every module present runs and reports in
the agreed shape (figures with medians and spread, environment, plots when possible).
The smoke run takes ~45 s on a quiet 2-core box and ~4 min when other processes keep both
cores busy; the timeout leaves room for the latter. It runs in the background lane, beside
the rest of the suite, and these tests read its output at the end of the run.
"""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINE = ("embedding", "triplet", "fm_noise", "text")  # always present; others if present


BACKGROUND_JOBS = {  # run beside the rest of the suite (tests/background_lane.py)
    "benchmarks-smoke": dict(
        argv=[sys.executable, "-m", "benchmarks", "--smoke", "--out", "{job_dir}"], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")),
        timeout=540),
}
pytestmark = pytest.mark.background("benchmarks-smoke")


@pytest.fixture(scope="module")
def smoke(background):
    return background.result("benchmarks-smoke"), Path(background.job_dir("benchmarks-smoke"))


def test_smoke_run_succeeds_and_prints_one_table_per_module(smoke):
    proc, _ = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "median" in proc.stdout
    for name in MINE:
        assert f"\n== {name} (" in proc.stdout
    too_wide = [line for line in proc.stdout.splitlines() if len(line) > 100]
    assert not too_wide, too_wide[:3]
    # stderr is a pipe here, not a terminal: no progress bars (carriage returns) in it
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr


def test_report_md_has_every_table_and_plot(smoke):
    _, out = smoke
    report = json.loads((out / "results.json").read_text())
    text = (out / "REPORT.md").read_text()
    for name in report["tables"]:
        assert f"\n## {name}\n" in text
        assert name in report["load"] and "load_before" in report["load"][name]
    for name in MINE:
        assert "| case | system | median |" in text.split(f"## {name}\n", 1)[1]
    for plot in report["plots"]:
        assert f"]({Path(plot).name})" in text
    assert "BUSY MACHINE" in text or "quiet machine" in text


def test_results_json_schema(smoke):
    _, out = smoke
    report = json.loads((out / "results.json").read_text())
    assert report["mode"] == "smoke"
    env = report["environment"]
    for key in ("cpu_model", "cpu_count", "threads", "versions", "git"):
        assert key in env
    assert "numba_threads" in env["threads"] and "OMP_NUM_THREADS" in env["threads"]
    assert env["versions"]["numpy"]
    assert not report["errors"], report["errors"]
    for name, res in report["benchmarks"].items():
        assert res["name"] == name and isinstance(res["rows"], list), name
    for name in MINE:
        res = report["benchmarks"][name]
        assert res["name"] == name and res["rows"] and isinstance(res["notes"], list)
    for row in report["benchmarks"]["embedding"]["rows"]:
        for key in ("system", "vocab", "median_s", "min_s", "max_s", "repeats",
                    "compile_s", "first_step_s"):
            assert key in row
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
    fm_rows = report["benchmarks"]["fm_noise"]["rows"]
    assert {r["optimizer"] for r in fm_rows} == {"SGD", "Momentum", "Adam"}
    assert {r["eta"] for r in fm_rows} == {0.0, 0.01, 0.3, 1.0}
    for row in fm_rows:
        for key in ("train_precision", "test_precision", "train_accuracy", "test_accuracy"):
            assert len(row[f"{key}_per_epoch_mean"]) >= 1
        assert 0 <= row["best_test_precision_mean"] <= 1 and row["seeds"] >= 2
        assert len(row["epochs_to_train_precision_1"]) == row["seeds"]
    conclusion = report["benchmarks"]["fm_noise"]["conclusion"]
    assert len(conclusion) == 3 and all("REPRODUCES" in c or "NOT" in c for c in conclusion)
    movies = report["benchmarks"]["fm_noise"]["fixed_movies"]["movies"]
    assert len(movies) == 20 and {m["group"] for m in movies} == {"liked", "mixed", "disliked"}
    for row in report["benchmarks"]["text"]["rows"]:
        assert 0 <= row["macro_f1"] <= 1 and row["recall"]


def test_plots_written_when_matplotlib_is_installed(smoke):
    _, out = smoke
    report = json.loads((out / "results.json").read_text())
    if importlib.util.find_spec("matplotlib") is None:
        assert not report["plots"]
        pytest.skip("matplotlib not installed: plots are skipped with a note")
    names = {Path(p).name for p in report["plots"]}
    assert {"embedding_step_time.png", "fm_noise_precision.png", "fm_noise_movies.png",
            "text_recall.png", "triplet_step_time.png"} <= names
    for p in report["plots"]:
        assert Path(p).stat().st_size > 1000
