"""The README's example and the example scripts run as documented."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Fifteen lines\n\n```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    mg = namespace["mg"]
    assert isinstance(mg.grad(namespace["cost"], namespace["E"]).type, mg.RowSparseType)


def mg_backend():
    import minigrad as mg

    return mg.config.backend


EXAMPLES = [
    ("tutorial.py", []),
    ("fm_gradient_noise.py", ["--epochs", "1"]),
    ("text_classifier.py", ["--epochs", "1", "--dim", "8"]),  # the width is not what runs
]
BACKGROUND_JOBS = {  # run beside the rest of the suite (tests/background_lane.py)
    f"example-{script}": dict(argv=[sys.executable, str(ROOT / "examples" / script), *args],
                              cwd=ROOT, timeout=240)
    for script, args in EXAMPLES
}


@pytest.mark.parametrize("script", [
    pytest.param(script, marks=pytest.mark.background(f"example-{script}"))
    for script, _ in EXAMPLES])
def test_example_scripts_run(script, background):
    proc = background.result(f"example-{script}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip()


def test_readme_schedule_example_runs_after_the_fifteen_lines():
    text = (ROOT / "README.md").read_text()
    first = re.search(r"## Fifteen lines\n\n```python\n(.*?)```", text, re.S).group(1)
    sched = re.search(r"## Learning-rate schedules\n\n```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(first + sched, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["opt"].current_lr() == 0.0  # linear warm-up starts at 0
    toks = namespace["rng"].integers(0, 100_000, (64, 20))
    namespace["step"](toks, toks[:, 0] % 2)
    assert 0.0 < namespace["opt"].current_lr() < 1e-3
