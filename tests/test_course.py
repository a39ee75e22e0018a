"""The course under docs/course runs end to end and its pasted outputs are the real ones.

``docs/course/run_course.py`` executes every ```python block of each chapter in order (one
namespace per chapter) and compares what it printed with the ```text block after it.
After changing a chapter or the code it prints, paste the new outputs with
``python docs/course/run_course.py --write`` and read the diff.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "docs" / "course"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run_course = _load("run_course", COURSE / "run_course.py")
CHAPTERS = run_course.chapters()


def test_there_are_five_chapters():
    assert [p.name[:2] for p in CHAPTERS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_and_outputs_match(chapter):
    bad = run_course.mismatches(chapter)
    assert not bad, "\n".join(
        f"{chapter.name}:{line}: pasted output differs (run `python docs/course/run_course.py "
        f"--write` and read the diff)\n--- pasted\n{want}\n--- got\n{got}"
        for line, want, got in bad)


def test_every_python_block_is_followed_by_its_output_or_prints_nothing():
    for chapter in CHAPTERS:
        blocks = run_course.blocks_of(chapter.read_text())
        assert blocks, chapter
        assert all(b.code.strip() for b in blocks)


def test_runner_detects_a_wrong_pasted_output(tmp_path):
    fake = tmp_path / "01-fake.md"
    fake.write_text("```python\nprint(1 + 1)\n```\n\n```text\n3\n```\n")
    assert run_course.mismatches(fake) == [(1, "3\n", "2\n")]
    run_course.write(fake)
    assert run_course.mismatches(fake) == []
    assert "```text\n2\n```" in fake.read_text()


def test_figures_are_drawn_from_the_chapters(tmp_path):
    """``docs/render_figures.py`` makes every picture the chapters show (DOT text here,
    so no Graphviz is needed) and every one of them is committed as a PNG."""
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "render_figures.py"), "--dot",
                           str(tmp_path)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = sorted(p.stem for p in tmp_path.glob("*.dot"))
    assert made and made == sorted(p.stem for p in (COURSE / "figures").glob("*.png"))
    referenced = set()
    for chapter in CHAPTERS:
        referenced |= {line.split("figures/")[1].split(".png")[0]
                       for line in chapter.read_text().splitlines() if "figures/" in line}
    assert referenced <= set(made), referenced - set(made)
    if shutil.which("dot"):
        for dot_file in tmp_path.glob("*.dot"):
            subprocess.run(["dot", "-Tsvg", "-o", str(dot_file.with_suffix(".svg")),
                            str(dot_file)], check=True, capture_output=True, timeout=60)
