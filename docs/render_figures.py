"""Draw the course's pictures from the very graphs its chapters build.

    python docs/render_figures.py            # writes docs/course/figures/*.png (needs Graphviz)
    python docs/render_figures.py --dot DIR  # writes the DOT text only (no Graphviz needed)

Each figure names a chapter and a variable of that chapter's namespace after its code
blocks ran (``docs/course/run_course.py`` runs them), so a picture cannot drift from the
code shown next to it.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "course" / "figures"

#: (file stem, chapter prefix, expression evaluated in the chapter's namespace, readable?)
FIGURE_SPECS = [
    ("ch2-forward", "02", "cost", False),
    ("ch2-gradient", "02", "gE", True),
    ("ch2-gradient-full", "02", "gE", False),
    ("ch2-step", "02", "step", True),
]


def _namespaces():
    """{chapter prefix: the chapter's namespace after all its blocks ran}."""
    sys.path.insert(0, str(ROOT / "docs" / "course"))
    import run_course

    spaces = {}
    for path in run_course.chapters():
        prefix = path.name[:2]
        if any(spec[1] == prefix for spec in FIGURE_SPECS):
            run_course.run_chapter(path)
            spaces[prefix] = run_course.LAST_NAMESPACE
    return spaces


def dot_texts():
    """{file stem: DOT text} for every figure."""
    import minigrad as mg

    spaces = _namespaces()
    return {stem: mg.to_dot(eval(expr, spaces[chapter]), readable=readable)  # noqa: S307
            for stem, chapter, expr, readable in FIGURE_SPECS}


def main(argv):
    from minigrad.dot import write_or_render

    if "--dot" in argv:
        out = Path(argv[argv.index("--dot") + 1])
        suffix = ".dot"
    else:
        out, suffix = FIGURES, ".png"
    out.mkdir(parents=True, exist_ok=True)
    for stem, text in dot_texts().items():
        write_or_render(text, out / f"{stem}{suffix}")
        print(f"wrote {out / (stem + suffix)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's minigrad, installed or not
    sys.exit(main(sys.argv[1:]))
