"""``python -m benchmarks --smoke`` runs end to end and writes a well-formed results.json.

No timing is asserted: this only checks that every module present runs and reports in
the agreed shape (figures with medians and spread, environment, plots when possible).
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINE = ("embedding", "fm_noise", "text")  # always present; others are checked if present


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    return proc, out


def test_smoke_run_succeeds_and_prints_one_table(smoke):
    proc, _ = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "bench" in proc.stdout and "median" in proc.stdout
    for name in MINE:
        assert f"\n{name} " in proc.stdout


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
    for row in report["benchmarks"]["fm_noise"]["rows"]:
        assert len(row["precision_per_epoch_mean"]) >= 1
        assert 0 <= row["best_precision_mean"] <= 1 and row["seeds"] >= 2
    assert report["benchmarks"]["fm_noise"]["conclusion"]
    for row in report["benchmarks"]["text"]["rows"]:
        assert 0 <= row["macro_f1"] <= 1 and row["recall"]


def test_plots_written_when_matplotlib_is_installed(smoke):
    _, out = smoke
    report = json.loads((out / "results.json").read_text())
    if importlib.util.find_spec("matplotlib") is None:
        assert not report["plots"]
        pytest.skip("matplotlib not installed: plots are skipped with a note")
    names = {Path(p).name for p in report["plots"]}
    assert {"embedding_step_time.png", "fm_noise_precision.png", "text_recall.png"} <= names
    for p in report["plots"]:
        assert Path(p).stat().st_size > 1000
